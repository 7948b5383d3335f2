-- The probe test component's record of the events it handled (see components/testing/probe).
CREATE TABLE probe_effects (
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    attempt BIGINT NOT NULL
);
CREATE INDEX probe_effects_topic ON probe_effects (topic);

-- Assessments are kept from the payment service's events (`payment.screened`): the assessment
-- answers the payment service with its record sealed (HMAC-SHA256 of the record's text) under
-- this key, and the event handler keeps only a record whose seal it verifies. Only this
-- database holds the key: the payment service carries records but can neither alter one nor
-- make one up. 256 bits, from gen_random_uuid()'s strong random source.
--
-- The key is never shown: the settings' reads and writes name their columns.

ALTER TABLE fraud_settings ADD COLUMN record_key TEXT NOT NULL
    DEFAULT encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex');

-- A record carries its model's rule versions only while the model is not among the eight first
-- kept last (`fraud_models`), which every assessment reads by this index.
CREATE INDEX fraud_models_by_first_assessed ON fraud_models (first_assessed_at DESC);

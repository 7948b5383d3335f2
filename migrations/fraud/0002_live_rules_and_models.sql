-- What every assessment reads and writes about the rules, kept once instead of made again for
-- each payment:
-- - fraud_live_rules: the rule versions in force (active rules, SHADOW or ENFORCE), as the one
--   document an assessment reads. Building it from the rules for each assessment (an aggregate
--   of JSON objects over a join) was half of the assessment's time in the database.
-- - fraud_models: the rule versions each model evaluated (`model_version`, the digest of a set
--   of rule versions), written by the first assessment of that model. Each assessment kept its
--   own copy before (some 3 kB of JSON for 20 rules, compressed on every insert); new ones
--   leave `fraud_assessments.rules_evaluated` empty and the reads take the model's.
--
-- Invariants kept here:
-- - fraud_live_rules.rules is, at the end of every statement that changes fraud_rules or
--   fraud_rule_versions, what fraud_live_rules_now() reads from them then:
--   statement triggers on both tables rewrite it, whatever the statement was;
-- - two transactions changing rules at once leave the document of the one that commits last,
--   and that one includes both changes: the trigger first locks the document's row, which waits
--   for the other transaction's end, and then reads the rules with a new snapshot (each
--   statement of a PL/pgSQL function takes one under READ COMMITTED), which sees its commit;
-- - a model's row is never changed: the digest names the rule versions and their modes, and a
--   rule's name and component never change.

CREATE TABLE fraud_live_rules (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    -- By priority (highest first), then name and version: rule_id, rule_name, rule_type,
    -- version, mode, rule_condition, risk_score_impact (text).
    rules JSON NOT NULL
);

-- The document as the rules are now.
CREATE FUNCTION fraud_live_rules_now() RETURNS json
    LANGUAGE sql STABLE AS $$
    SELECT coalesce(json_agg(json_build_object('rule_id', r.rule_id, 'rule_name', r.rule_name,
               'rule_type', r.rule_type, 'version', v.version, 'mode', v.mode,
               'rule_condition', v.rule_condition, 'risk_score_impact', v.risk_score_impact::text)
               ORDER BY r.priority DESC, r.rule_name, v.version), '[]'::json)
    FROM fraud_rules r JOIN fraud_rule_versions v USING (rule_id)
    WHERE r.is_active AND v.mode IN ('SHADOW', 'ENFORCE')
$$;

CREATE FUNCTION fraud_live_rules_refresh() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM fraud_live_rules FOR UPDATE;
    UPDATE fraud_live_rules SET rules = fraud_live_rules_now();
    RETURN NULL;
END
$$;

INSERT INTO fraud_live_rules (rules) VALUES (fraud_live_rules_now());

CREATE TRIGGER fraud_rules_live
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fraud_rules
    FOR EACH STATEMENT EXECUTE FUNCTION fraud_live_rules_refresh();

CREATE TRIGGER fraud_rule_versions_live
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fraud_rule_versions
    FOR EACH STATEMENT EXECUTE FUNCTION fraud_live_rules_refresh();

CREATE TABLE fraud_models (
    model_version VARCHAR(50) PRIMARY KEY,
    -- Each rule version evaluated: rule_id, rule_name, version, component, mode.
    rules_evaluated JSONB NOT NULL,
    first_assessed_at TIMESTAMP NOT NULL
);

INSERT INTO fraud_models (model_version, rules_evaluated, first_assessed_at)
SELECT DISTINCT ON (model_version) model_version, rules_evaluated, assessed_at
FROM fraud_assessments
WHERE model_version IS NOT NULL
ORDER BY model_version, assessed_at;

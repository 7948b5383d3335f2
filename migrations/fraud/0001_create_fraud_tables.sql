-- The fraud service's tables, as in the Fraud Detection Service section of the database schema
-- spec, with the additions of components/FRAUD.md: rule versions (one lifecycle for
-- declarative rules and rule components), the thresholds the risk team sets, each payer's
-- recent activity, and what the service learns from events (accounts, users).
-- This runs as the service's own role with search_path = fraud_schema, so names are unqualified.
--
-- Differences from the spec, and why:
-- - fraud_assessments: payment_id is UNIQUE (one assessment per payment: asking again answers
--   the first); the payment's parties, amount and currency, its features (what the rules saw,
--   for backtests) and the rule versions evaluated are kept with it; model_version is a digest
--   of the set of rule versions. The payments' later outcomes are not copied here: a backtest
--   asks the payment service for them when it runs.
-- - fraud_alerts: payment_id (what the analyst acts on) and updated_at; resolved_by is the
--   admin API key's id (an administrator is a key, not a user).
-- - fraud_rules: rule_condition and risk_score_impact are those of the newest version; the
--   versions themselves, each SHADOW, ENFORCE or RETIRED, are fraud_rule_versions.
-- - CHECK constraints on every column holding a fixed set of names; composite indexes for the
--   assessment's feature query and the listings instead of the spec's single-column ones.

-- The thresholds: one row.
CREATE TABLE fraud_settings (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    -- risk_level: LOW below medium_score, MEDIUM from it, HIGH from high_score, CRITICAL from
    -- critical_score.
    medium_score DECIMAL(5, 2) NOT NULL DEFAULT 30,
    high_score DECIMAL(5, 2) NOT NULL DEFAULT 60,
    critical_score DECIMAL(5, 2) NOT NULL DEFAULT 85,
    -- recommendation: APPROVE below review_score, REVIEW from it, DECLINE from decline_score.
    review_score DECIMAL(5, 2) NOT NULL DEFAULT 50,
    decline_score DECIMAL(5, 2) NOT NULL DEFAULT 80,
    -- An enforced rule that failed to evaluate: REVIEW the payment, or IGNORE the rule.
    errored_rule VARCHAR(20) NOT NULL DEFAULT 'REVIEW' CHECK (errored_rule IN ('REVIEW', 'IGNORE')),
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_by VARCHAR(64),
    CHECK (0 < medium_score AND medium_score <= high_score AND high_score <= critical_score AND critical_score <= 100),
    CHECK (0 < review_score AND review_score <= decline_score AND decline_score <= 100)
);
INSERT INTO fraud_settings DEFAULT VALUES;

CREATE TABLE fraud_rules (
    rule_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_name VARCHAR(100) UNIQUE NOT NULL,
    rule_type VARCHAR(50) NOT NULL CHECK (rule_type IN ('DECLARATIVE', 'COMPONENT')),
    rule_condition JSONB NOT NULL,
    risk_score_impact DECIMAL(5, 2) NOT NULL CHECK (risk_score_impact >= 0 AND risk_score_impact <= 100),
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    priority INTEGER NOT NULL DEFAULT 0,
    description TEXT,
    created_by VARCHAR(64),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX idx_fraud_rules_active ON fraud_rules (is_active, priority DESC);

-- Every version of every rule, immutable but for its mode: at most one ENFORCE and one SHADOW
-- version per rule (the live one and its candidate); the others RETIRED.
CREATE TABLE fraud_rule_versions (
    rule_id UUID NOT NULL REFERENCES fraud_rules (rule_id),
    version INTEGER NOT NULL CHECK (version > 0),
    rule_condition JSONB NOT NULL,
    risk_score_impact DECIMAL(5, 2) NOT NULL CHECK (risk_score_impact >= 0 AND risk_score_impact <= 100),
    mode VARCHAR(20) NOT NULL CHECK (mode IN ('SHADOW', 'ENFORCE', 'RETIRED')),
    created_by VARCHAR(64),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    mode_changed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (rule_id, version)
);

CREATE UNIQUE INDEX one_enforced_version ON fraud_rule_versions (rule_id) WHERE mode = 'ENFORCE';
CREATE UNIQUE INDEX one_shadow_version ON fraud_rule_versions (rule_id) WHERE mode = 'SHADOW';

CREATE TABLE fraud_assessments (
    assessment_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id UUID NOT NULL UNIQUE,
    user_id UUID,
    payer_account_id UUID NOT NULL,
    payee_account_id UUID NOT NULL,
    amount DECIMAL(19, 4) NOT NULL,
    currency VARCHAR(3) NOT NULL,
    risk_score DECIMAL(5, 2) NOT NULL CHECK (risk_score >= 0 AND risk_score <= 100),
    risk_level VARCHAR(50) NOT NULL CHECK (risk_level IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    recommendation VARCHAR(50) NOT NULL CHECK (recommendation IN ('APPROVE', 'REVIEW', 'DECLINE')),
    -- Every rule that fired or failed: its name, version, mode, score and reason.
    risk_factors JSONB NOT NULL DEFAULT '[]',
    model_version VARCHAR(50),
    -- The rule versions evaluated, and the features they saw.
    rules_evaluated JSONB NOT NULL DEFAULT '[]',
    features JSONB NOT NULL,
    assessed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- The pairs already paid, and the listings.
CREATE INDEX idx_fraud_assessments_pair ON fraud_assessments (user_id, payee_account_id);
CREATE INDEX idx_fraud_assessments_assessed_at ON fraud_assessments (assessed_at DESC, assessment_id DESC);
CREATE INDEX idx_fraud_assessments_risk_level ON fraud_assessments (risk_level, assessed_at DESC);

CREATE TABLE fraud_alerts (
    alert_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    assessment_id UUID NOT NULL REFERENCES fraud_assessments (assessment_id),
    payment_id UUID NOT NULL,
    alert_type VARCHAR(50) NOT NULL CHECK (alert_type IN ('HIGH_RISK', 'REVIEW_REQUIRED')),
    severity VARCHAR(50) NOT NULL CHECK (severity IN ('LOW', 'MEDIUM', 'HIGH', 'CRITICAL')),
    description TEXT,
    status VARCHAR(50) NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'INVESTIGATING', 'RESOLVED', 'FALSE_POSITIVE')),
    resolved_at TIMESTAMP,
    resolved_by VARCHAR(64),
    resolution_notes TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (assessment_id),
    CHECK ((status IN ('RESOLVED', 'FALSE_POSITIVE')) = (resolved_at IS NOT NULL))
);

CREATE INDEX idx_fraud_alerts_status ON fraud_alerts (status, created_at DESC, alert_id DESC);
CREATE INDEX idx_fraud_alerts_created_at ON fraud_alerts (created_at DESC, alert_id DESC);
CREATE INDEX idx_fraud_alerts_payment ON fraud_alerts (payment_id);

-- What the service hears of accounts and users (account.opened, user.verified): their age
-- and verification, never asked per payment.
CREATE TABLE fraud_accounts (
    account_id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    opened_at TIMESTAMP NOT NULL
);

CREATE TABLE fraud_users (
    user_id UUID PRIMARY KEY,
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- The payer's recent payments as counters per five minutes, written with each assessment, so
-- that an assessment reads at most a day's buckets (288) of its payer instead of every payment
-- the payer made that day: a payer making thousands of payments a day is assessed as fast as
-- one making a few. The features "in the last hour" and "in the last day" are then counted to
-- five minutes (the bucket a window starts in is counted whole). Each five minutes of a payer
-- is split over eight rows (by the payment's id), so that a payer's concurrent payments do not
-- all wait on one row's lock.
CREATE TABLE fraud_payer_activity (
    user_id UUID NOT NULL,
    -- The start of the five minutes.
    bucket TIMESTAMP NOT NULL,
    shard SMALLINT NOT NULL CHECK (shard >= 0 AND shard < 8),
    payments INTEGER NOT NULL CHECK (payments > 0),
    amount DECIMAL(24, 4) NOT NULL,
    round_payments INTEGER NOT NULL CHECK (round_payments >= 0),
    PRIMARY KEY (user_id, bucket, shard)
);

-- The account service's tables, as in the Account Service section of the database schema spec,
-- with the additions of components/LEDGER.md.
-- This runs as the service's own role with search_path = account_schema, so names are unqualified.
--
-- Differences from the spec, and why:
-- - accounts.balance_sequence: the balance event sequence the snapshot is at, so an event
--   delivered late never overwrites a newer balance.
-- - CHECK constraints on every column holding a fixed set of names, and on the shapes the
--   service relies on (see each table); account_limits.current_usage is NOT NULL.
-- - UNIQUE (account_id, limit_type): an account has one limit of each type.
-- - The spec's idx_account_number is left out: the UNIQUE constraint on account_number already
--   indexes it. Likewise account_limits' idx_account_id: UNIQUE (account_id, limit_type) leads
--   with account_id.

CREATE TABLE accounts (
    account_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The owner; the nil UUID for the platform's system accounts.
    user_id UUID NOT NULL,
    account_number VARCHAR(50) UNIQUE NOT NULL,
    account_type VARCHAR(50) NOT NULL DEFAULT 'PRIMARY',
    currency VARCHAR(3) NOT NULL DEFAULT 'USD',
    status VARCHAR(50) NOT NULL DEFAULT 'ACTIVE',
    -- Eventually consistent: the balance service's figure as of balance_sequence.
    balance_snapshot DECIMAL(19, 4) DEFAULT 0.0000,
    balance_last_updated_at TIMESTAMP,
    balance_sequence BIGINT NOT NULL DEFAULT 0,
    -- Mirrors of the account_limits rows (NULL for system accounts, which have none).
    daily_transfer_limit DECIMAL(19, 4),
    monthly_transfer_limit DECIMAL(19, 4),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    closed_at TIMESTAMP,
    CONSTRAINT accounts_account_type_check
        CHECK (account_type IN ('PRIMARY', 'SAVINGS', 'BUSINESS', 'FUNDING', 'FEES')),
    CONSTRAINT accounts_status_check CHECK (status IN ('ACTIVE', 'FROZEN', 'CLOSED')),
    -- MP, two ISO 7064 MOD 97-10 check digits, twelve digits (the service computes the check).
    CONSTRAINT accounts_account_number_check CHECK (account_number ~ '^MP[0-9]{14}$'),
    -- The system types belong to the nil UUID and nothing else does: no user can own the
    -- platform's side of the ledger, and no system account hides among a user's.
    CONSTRAINT accounts_system_owner_check CHECK (
        (account_type IN ('FUNDING', 'FEES')) = (user_id = '00000000-0000-0000-0000-000000000000')
    ),
    -- User accounts carry both limits, the daily one within the monthly; system accounts none.
    CONSTRAINT accounts_transfer_limits_check CHECK (
        CASE WHEN account_type IN ('FUNDING', 'FEES')
            THEN daily_transfer_limit IS NULL AND monthly_transfer_limit IS NULL
            ELSE daily_transfer_limit > 0 AND monthly_transfer_limit >= daily_transfer_limit
        END
    ),
    -- closed_at is set exactly when the account is closed.
    CONSTRAINT accounts_closed_at_check CHECK ((status = 'CLOSED') = (closed_at IS NOT NULL))
);
CREATE INDEX idx_accounts_user_id ON accounts (user_id);
CREATE INDEX idx_accounts_status ON accounts (status);
CREATE INDEX idx_accounts_created_at ON accounts (created_at);
-- One FUNDING and one FEES account per currency. Opening one twice at the same moment inserts
-- one row; the other insert finds the key taken and reads that row back.
CREATE UNIQUE INDEX idx_accounts_system_account_per_currency ON accounts (currency, account_type)
    WHERE account_type IN ('FUNDING', 'FEES');

CREATE TABLE account_limits (
    limit_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id UUID NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
    limit_type VARCHAR(50) NOT NULL,
    limit_amount DECIMAL(19, 4) NOT NULL,
    period_type VARCHAR(50) NOT NULL,
    -- What has been counted in the current period. A period that has ended is rolled over (usage
    -- back to 0, the period holding the present) when a posting next counts against it.
    current_usage DECIMAL(19, 4) NOT NULL DEFAULT 0.0000,
    period_start_at TIMESTAMP NOT NULL,
    period_end_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT account_limits_account_id_limit_type_key UNIQUE (account_id, limit_type),
    CONSTRAINT account_limits_limit_type_check CHECK (limit_type IN ('DAILY_TRANSFER', 'MONTHLY_TRANSFER')),
    CONSTRAINT account_limits_period_type_check CHECK (period_type IN ('DAY', 'MONTH')),
    -- Each limit type counts over its own calendar period.
    CONSTRAINT account_limits_period_of_type_check CHECK (
        (limit_type = 'DAILY_TRANSFER' AND period_type = 'DAY')
        OR (limit_type = 'MONTHLY_TRANSFER' AND period_type = 'MONTH')
    ),
    CONSTRAINT account_limits_limit_amount_check CHECK (limit_amount > 0),
    -- Usage may exceed a limit an administrator has since lowered, but is never negative.
    CONSTRAINT account_limits_current_usage_check CHECK (current_usage >= 0),
    CONSTRAINT account_limits_period_check CHECK (period_end_at > period_start_at)
);
CREATE INDEX idx_account_limits_limit_type ON account_limits (limit_type);
CREATE INDEX idx_account_limits_period_end_at ON account_limits (period_end_at);

CREATE TABLE account_statements (
    statement_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id UUID NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
    statement_period_start TIMESTAMP NOT NULL,
    statement_period_end TIMESTAMP NOT NULL,
    opening_balance DECIMAL(19, 4) NOT NULL,
    closing_balance DECIMAL(19, 4) NOT NULL,
    total_debits DECIMAL(19, 4) DEFAULT 0.0000,
    total_credits DECIMAL(19, 4) DEFAULT 0.0000,
    transaction_count INTEGER DEFAULT 0,
    generated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    file_path VARCHAR(500),
    CONSTRAINT account_statements_period_check CHECK (statement_period_end > statement_period_start)
);
CREATE INDEX idx_account_statements_account_id ON account_statements (account_id);
CREATE INDEX idx_account_statements_period_end ON account_statements (statement_period_end);

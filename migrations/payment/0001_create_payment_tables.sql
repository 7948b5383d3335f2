-- The payment service's tables, as in the Payment Service section of the database schema spec,
-- with the additions of components/PAYMENTS.md: payments (and refunds, which are payments
-- back), their metadata, the retried steps, and the idempotency keys that make a retried
-- request safe.
-- This runs as the service's own role with search_path = payment_schema, so names are unqualified.
--
-- Differences from the spec, and why:
-- - payments.idempotency_key is not UNIQUE: keys are scoped to the caller and expire after a
--   day (the IETF draft's semantics), so uniqueness lives in idempotency_keys' primary key.
-- - payer_user_id, payee_user_id: who may see a payment, without asking the account service.
-- - capture_method, refund_of, refunded_amount, posting_requested_at: manual capture, refunds
--   (a refund is a payment back, never more in all than the original's amount, kept by a
--   CHECK), and the sweeper's clock.
-- - CHECK constraints on every column holding a fixed set of names; the spec's indexes on
--   single columns become the listings' composite ones.

CREATE TABLE payments (
    payment_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The client's key, as sent. Keys are scoped to the caller and kept for a day in
    -- idempotency_keys, whose primary key makes them unique while kept.
    idempotency_key VARCHAR(255) NOT NULL,
    payer_account_id UUID NOT NULL,
    payee_account_id UUID NOT NULL,
    amount DECIMAL(19, 4) NOT NULL CHECK (amount > 0),
    currency VARCHAR(3) NOT NULL,
    payment_type VARCHAR(50) NOT NULL DEFAULT 'TRANSFER' CHECK (payment_type IN ('TRANSFER', 'REFUND')),
    status VARCHAR(50) NOT NULL DEFAULT 'INITIATED' CHECK (status IN (
        'INITIATED', 'REQUIRES_REVIEW', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED',
        'REFUNDED', 'PARTIALLY_REFUNDED')),
    description TEXT,
    reference VARCHAR(255),
    initiated_by UUID NOT NULL,
    failure_reason VARCHAR(255),
    error_code VARCHAR(50),
    error_message TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP,
    cancelled_at TIMESTAMP,
    -- Who may see it: the payer's and the payee's owners (the payee's is unknown for a payment
    -- refused before its accounts were authorized).
    payer_user_id UUID NOT NULL,
    payee_user_id UUID,
    -- AUTOMATIC: processed at once; MANUAL: held (INITIATED) until captured or cancelled.
    capture_method VARCHAR(20) NOT NULL DEFAULT 'AUTOMATIC' CHECK (capture_method IN ('AUTOMATIC', 'MANUAL')),
    -- A refund's original payment.
    refund_of UUID REFERENCES payments (payment_id),
    -- What refunds not failed have taken from this payment: never more than its amount.
    refunded_amount DECIMAL(19, 4) NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0 AND refunded_amount <= amount),
    -- When the posting was last asked for (payment.processing).
    posting_requested_at TIMESTAMP,
    CHECK ((payment_type = 'REFUND') = (refund_of IS NOT NULL))
);

CREATE INDEX idx_payments_payer_user ON payments (payer_user_id, created_at DESC, payment_id DESC);
CREATE INDEX idx_payments_payee_user ON payments (payee_user_id, created_at DESC, payment_id DESC);
CREATE INDEX idx_payments_created_at ON payments (created_at DESC, payment_id DESC);
CREATE INDEX idx_payments_payer_account ON payments (payer_account_id);
CREATE INDEX idx_payments_payee_account ON payments (payee_account_id);
CREATE INDEX idx_payments_refund_of ON payments (refund_of) WHERE refund_of IS NOT NULL;
-- The sweeper's work: payments whose posting or capture is still awaited.
CREATE INDEX idx_payments_in_progress ON payments (status, updated_at) WHERE status IN ('INITIATED', 'PROCESSING');

CREATE TABLE payment_metadata (
    metadata_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id UUID NOT NULL REFERENCES payments (payment_id) ON DELETE CASCADE,
    metadata_key VARCHAR(100) NOT NULL,
    metadata_value TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (payment_id, metadata_key)
);

CREATE TABLE payment_retries (
    retry_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id UUID NOT NULL REFERENCES payments (payment_id) ON DELETE CASCADE,
    retry_attempt INTEGER NOT NULL,
    retry_reason VARCHAR(255),
    retry_status VARCHAR(50) NOT NULL,
    error_message TEXT,
    retried_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (payment_id, retry_attempt)
);

CREATE INDEX idx_payment_retries_status ON payment_retries (retry_status);

-- One row per idempotency key and caller: the request's fingerprint and the first answer,
-- replayed to a request that repeats it. Purged a day after it was written.
CREATE TABLE idempotency_keys (
    scope VARCHAR(64) NOT NULL,
    idempotency_key VARCHAR(255) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    payment_id UUID,
    response_status SMALLINT NOT NULL,
    response_body TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (scope, idempotency_key)
);

CREATE INDEX idx_idempotency_keys_created_at ON idempotency_keys (created_at);

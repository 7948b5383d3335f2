-- The notification service: the messages it sends, the templates it renders them with, and
-- what it knows of the people it sends to (mirrored from the user and account services'
-- events, never asked per message). `components/NOTIFICATIONS.md` is the contract.

-- How to reach a user, and what they agreed to receive (event user.contact_changed).
CREATE TABLE recipients (
    user_id UUID PRIMARY KEY,
    email VARCHAR(255) NOT NULL,
    phone_number VARCHAR(20),
    email_notifications_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    sms_notifications_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    push_notifications_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    locale VARCHAR(35) NOT NULL DEFAULT 'en',
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Whose an account is (event account.opened): a payment names accounts, a message a user.
CREATE TABLE account_owners (
    account_id UUID PRIMARY KEY,
    user_id UUID NOT NULL
);

-- The URLs a user registered to receive their notifications as signed webhooks. The secret
-- signs each delivery (HMAC-SHA256, as the receiver checks it), so it is kept to sign with; the
-- API shows it once, when the endpoint is made.
CREATE TABLE webhook_endpoints (
    endpoint_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL,
    url VARCHAR(2048) NOT NULL,
    secret VARCHAR(100) NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_webhook_endpoints_user ON webhook_endpoints (user_id) WHERE is_active;

-- Each template name and channel, and the template component that renders it. The spec's
-- subject and body templates live in that component (its versions are the templates'
-- versions: deployed, canaried, rolled back by ops); `variables` lists what it is given.
CREATE TABLE notification_templates (
    template_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    template_name VARCHAR(100) NOT NULL,
    template_type VARCHAR(50) NOT NULL CHECK (template_type IN ('SECURITY', 'TRANSACTIONAL', 'ACCOUNT')),
    channel VARCHAR(50) NOT NULL CHECK (channel IN ('EMAIL', 'SMS', 'PUSH', 'IN_APP', 'WEBHOOK')),
    component VARCHAR(32) NOT NULL DEFAULT 'templates',
    variables JSONB NOT NULL DEFAULT '[]',
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (template_name, channel)
);
CREATE INDEX idx_notification_templates_type ON notification_templates (template_type);

INSERT INTO notification_templates (template_name, template_type, channel, variables) VALUES
    ('verification_code', 'SECURITY', 'EMAIL', '["code", "expires_at", "purpose"]'),
    ('phone_verification_code', 'SECURITY', 'SMS', '["code", "expires_at"]'),
    ('password_changed', 'SECURITY', 'EMAIL', '["changed_at", "sessions_revoked"]'),
    ('password_changed', 'SECURITY', 'PUSH', '["changed_at", "sessions_revoked"]'),
    ('password_changed', 'SECURITY', 'IN_APP', '["changed_at", "sessions_revoked"]'),
    ('account_frozen', 'ACCOUNT', 'EMAIL', '["account_id"]'),
    ('account_frozen', 'ACCOUNT', 'IN_APP', '["account_id"]'),
    ('payment_sent', 'TRANSACTIONAL', 'EMAIL', '["amount", "currency", "payment_id", "description"]'),
    ('payment_sent', 'TRANSACTIONAL', 'PUSH', '["amount", "currency", "payment_id", "description"]'),
    ('payment_sent', 'TRANSACTIONAL', 'IN_APP', '["amount", "currency", "payment_id", "description"]'),
    ('payment_received', 'TRANSACTIONAL', 'EMAIL', '["amount", "currency", "payment_id", "description"]'),
    ('payment_received', 'TRANSACTIONAL', 'PUSH', '["amount", "currency", "payment_id", "description"]'),
    ('payment_received', 'TRANSACTIONAL', 'IN_APP', '["amount", "currency", "payment_id", "description"]'),
    ('payment_failed', 'TRANSACTIONAL', 'EMAIL', '["amount", "currency", "payment_id", "description", "reason"]'),
    ('payment_failed', 'TRANSACTIONAL', 'IN_APP', '["amount", "currency", "payment_id", "description", "reason"]'),
    ('payment_refunded', 'TRANSACTIONAL', 'EMAIL', '["amount", "currency", "payment_id", "description", "refunded"]'),
    ('payment_refunded', 'TRANSACTIONAL', 'IN_APP', '["amount", "currency", "payment_id", "description", "refunded"]');

-- One message to one user on one channel. Its id is derived from the event, the user, the
-- template and the channel, so an event handled twice makes it once. It is rendered when it
-- is first delivered (`template_version` says by which version), from `variables`;
-- `secret_variables` (a code) are kept only until it is sent or failed, and then its rendered
-- text is redacted too.
CREATE TABLE notifications (
    notification_id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    notification_type VARCHAR(50) NOT NULL,
    channel VARCHAR(50) NOT NULL CHECK (channel IN ('EMAIL', 'SMS', 'PUSH', 'IN_APP', 'WEBHOOK')),
    subject VARCHAR(255),
    message TEXT,
    html_message TEXT,
    status VARCHAR(50) NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'DELIVERED', 'FAILED')),
    sent_at TIMESTAMP,
    delivered_at TIMESTAMP,
    read_at TIMESTAMP,
    failure_reason TEXT,
    retry_count INTEGER NOT NULL DEFAULT 0,
    metadata JSONB,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    event_id UUID NOT NULL,
    template_name VARCHAR(100) NOT NULL,
    template_component VARCHAR(32) NOT NULL,
    template_version BIGINT,
    locale VARCHAR(35) NOT NULL DEFAULT 'en',
    destination VARCHAR(255),
    critical BOOLEAN NOT NULL DEFAULT FALSE,
    variables JSONB NOT NULL,
    secret_variables JSONB,
    next_attempt_at TIMESTAMP
);
CREATE INDEX idx_notifications_user ON notifications (user_id, created_at DESC, notification_id DESC);
CREATE INDEX idx_notifications_status ON notifications (status);
CREATE INDEX idx_notifications_created_at ON notifications (created_at);
CREATE INDEX idx_notifications_channel ON notifications (channel);
CREATE INDEX idx_notifications_due ON notifications (next_attempt_at) WHERE status = 'PENDING';

-- How deliveries are retried: `max_attempts` tries in all, waiting `retry_base_ms` after the
-- first failure, doubling up to `retry_max_ms`. Ops set it (`PATCH /settings`).
CREATE TABLE notification_settings (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    max_attempts INTEGER NOT NULL DEFAULT 8 CHECK (max_attempts BETWEEN 1 AND 50),
    retry_base_ms INTEGER NOT NULL DEFAULT 2000 CHECK (retry_base_ms BETWEEN 10 AND 3600000),
    retry_max_ms INTEGER NOT NULL DEFAULT 3600000 CHECK (retry_max_ms BETWEEN 10 AND 86400000),
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO notification_settings DEFAULT VALUES;

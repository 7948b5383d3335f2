-- Password reset by a code sent to the account's email address: its codes are kept beside the
-- verification codes under channel RESET, so that a reset code never verifies an address and a
-- verification code never resets a password.
ALTER TABLE user_verification_codes DROP CONSTRAINT user_verification_codes_channel_check;
ALTER TABLE user_verification_codes
    ADD CONSTRAINT user_verification_codes_channel_check CHECK (channel IN ('EMAIL', 'PHONE', 'RESET'));

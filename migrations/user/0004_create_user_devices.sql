-- The devices each user has logged in from, by a hash of what identifies the device (the
-- client's `device_info.device_id`, else its User-Agent): a login from a device not seen
-- before, by a user who has logged in before, publishes `user.new_device_login`.
CREATE TABLE user_devices (
    user_id UUID NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    device_hash CHAR(64) NOT NULL,
    first_seen_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_seen_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (user_id, device_hash)
);

-- Two more messages: a login from a new device (security: it ignores opt-outs), and a payment
-- held for the risk team's review (to the payer).
INSERT INTO notification_templates (template_name, template_type, channel, variables) VALUES
    ('new_device_login', 'SECURITY', 'EMAIL', '["logged_in_at", "user_agent", "ip_address"]'),
    ('new_device_login', 'SECURITY', 'PUSH', '["logged_in_at", "user_agent", "ip_address"]'),
    ('new_device_login', 'SECURITY', 'IN_APP', '["logged_in_at", "user_agent", "ip_address"]'),
    ('payment_under_review', 'TRANSACTIONAL', 'EMAIL', '["amount", "currency", "payment_id", "description"]'),
    ('payment_under_review', 'TRANSACTIONAL', 'IN_APP', '["amount", "currency", "payment_id", "description"]');

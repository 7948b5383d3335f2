-- Appends a batch of records with one statement (the delivery of a batch of events): each one
-- as audit_append appends it, in the batch's order within its chain. The chains' heads are
-- taken in chain order, so two batches never wait on each other in a cycle. Returns how many
-- records were appended (an event recorded already is not appended again).
CREATE FUNCTION audit_append_batch(p_records jsonb) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    r record;
    appended integer := 0;
BEGIN
    FOR r IN
        SELECT x.*
        FROM jsonb_array_elements(p_records) WITH ORDINALITY AS e(item, position),
             LATERAL jsonb_to_record(e.item) AS x(
                 event_id text, event_type text, service_name text, entity_type text, entity_id text,
                 user_id uuid, action text, old_values jsonb, new_values jsonb, metadata jsonb,
                 ip_address text, user_agent text, occurred_at bigint, chain smallint)
        ORDER BY x.chain, e.position
    LOOP
        IF audit_append(r.event_id, r.event_type, r.service_name, r.entity_type, r.entity_id, r.user_id,
            r.action, r.old_values, r.new_values, r.metadata, r.ip_address, r.user_agent,
            'epoch'::timestamp + r.occurred_at * interval '1 microsecond', r.chain) THEN
            appended := appended + 1;
        END IF;
    END LOOP;
    RETURN appended;
END
$$;

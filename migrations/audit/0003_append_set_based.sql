-- A record to append, as audit_append_batch reads it from its JSON.
CREATE TYPE audit_record AS (
    event_id text,
    event_type text,
    service_name text,
    entity_type text,
    entity_id text,
    user_id uuid,
    action text,
    old_values jsonb,
    new_values jsonb,
    metadata jsonb,
    ip_address text,
    user_agent text,
    occurred_at timestamp,
    chain smallint
);

-- Appends a batch of records (the delivery of a batch of events) with the same few statements
-- however many it holds, where 0002 ran audit_append once per record (a lock, an insert in a
-- subtransaction of its own and an update of the head, each). Returns how many records were
-- appended.
--
-- Invariants kept here:
-- - the heads of the batch's chains are locked first, in chain order: appends to a chain are
--   serialised, and two batches never wait on each other in a cycle;
-- - an event recorded already (event_id at occurred_at), or twice in the batch, is appended
--   once: looked for after the heads are locked, so no other append records it in between (an
--   event's chain is fixed by its subject);
-- - each fresh record takes the next position of its chain, in the batch's order, and links to
--   the row before it (audit_row_digest, as verification computes it); each head moves to the
--   last row of its chain, in the same transaction as the rows;
-- - a month without a partition gets one (23514: no partition for a row), then the insert is
--   tried once more.
CREATE OR REPLACE FUNCTION audit_append_batch(p_records jsonb) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    chains smallint[];
    head_positions bigint[];
    head_hashes text[];
    fresh audit_record[];
    r audit_record;
    slot integer;
    positions bigint[] := '{}';
    previous_hashes text[] := '{}';
    row_hashes text[] := '{}';
BEGIN
    SELECT array_agg(DISTINCT x.chain ORDER BY x.chain) INTO chains
    FROM jsonb_to_recordset(p_records) AS x(chain smallint);
    IF chains IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(h.position ORDER BY h.chain), array_agg(h.row_hash ORDER BY h.chain)
    INTO head_positions, head_hashes
    FROM (SELECT chain, position, row_hash FROM audit_chain_heads
          WHERE chain = ANY (chains) ORDER BY chain FOR UPDATE) AS h;
    IF coalesce(array_length(head_positions, 1), 0) <> array_length(chains, 1) THEN
        RAISE EXCEPTION 'no audit chain among %', chains USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT array_agg(ROW(x.event_id, x.event_type, x.service_name, x.entity_type, x.entity_id, x.user_id,
                         x.action, x.old_values, x.new_values, x.metadata, x.ip_address, x.user_agent,
                         x.at, x.chain)::audit_record
                     ORDER BY x.chain, x.position)
    INTO fresh
    FROM (SELECT DISTINCT ON (x.event_id, at) x.*, at, e.position
          FROM jsonb_array_elements(p_records) WITH ORDINALITY AS e(item, position),
               LATERAL jsonb_to_record(e.item) AS x(
                   event_id text, event_type text, service_name text, entity_type text, entity_id text,
                   user_id uuid, action text, old_values jsonb, new_values jsonb, metadata jsonb,
                   ip_address text, user_agent text, occurred_at bigint, chain smallint),
               LATERAL (SELECT 'epoch'::timestamp + x.occurred_at * interval '1 microsecond') AS t(at)
          ORDER BY x.event_id, at, e.position) AS x
    WHERE NOT EXISTS (SELECT 1 FROM audit_logs AS l WHERE l.event_id = x.event_id AND l.occurred_at = x.at);
    IF fresh IS NULL THEN
        RETURN 0;
    END IF;

    FOREACH r IN ARRAY fresh LOOP
        slot := array_position(chains, r.chain);
        previous_hashes := previous_hashes || head_hashes[slot];
        head_positions[slot] := head_positions[slot] + 1;
        head_hashes[slot] := audit_row_digest(head_hashes[slot], r.event_id, r.event_type, r.service_name,
            r.entity_type, r.entity_id, r.user_id, r.action, r.old_values, r.new_values, r.metadata,
            r.ip_address, r.user_agent, r.occurred_at, r.chain, head_positions[slot]);
        positions := positions || head_positions[slot];
        row_hashes := row_hashes || head_hashes[slot];
    END LOOP;

    FOR attempt IN 1..2 LOOP
        BEGIN
            INSERT INTO audit_logs (event_id, event_type, service_name, entity_type, entity_id, user_id,
                action, old_values, new_values, metadata, ip_address, user_agent, occurred_at,
                chain, chain_position, previous_hash, row_hash)
            SELECT f.event_id, f.event_type, f.service_name, f.entity_type, f.entity_id, f.user_id, f.action,
                f.old_values, f.new_values, f.metadata, f.ip_address, f.user_agent, f.occurred_at, f.chain,
                u.chain_position, u.previous_hash, u.row_hash
            FROM unnest(fresh) WITH ORDINALITY AS f
            JOIN unnest(positions, previous_hashes, row_hashes) WITH ORDINALITY
                AS u(chain_position, previous_hash, row_hash, ordinality) USING (ordinality);
            EXIT;
        EXCEPTION WHEN check_violation THEN
            IF attempt = 2 THEN
                RAISE;
            END IF;
            PERFORM audit_create_partition(month)
            FROM (SELECT DISTINCT date_trunc('month', f.occurred_at) AS month FROM unnest(fresh) AS f) AS months;
        END;
    END LOOP;

    UPDATE audit_chain_heads AS h SET position = moved.position, row_hash = moved.row_hash
    FROM unnest(chains, head_positions, head_hashes) AS moved(chain, position, row_hash)
    WHERE h.chain = moved.chain AND h.position <> moved.position;
    RETURN array_length(fresh, 1);
END
$$;

-- The audit service's tables, as in the Audit Service section of the database schema spec, with
-- a hash chain that makes a changed, removed or inserted row detectable.
-- This runs as the service's own role with search_path = audit_schema, so names are unqualified.
--
-- Differences from the spec, and why:
-- - event_type, entity_type and action are VARCHAR(200), not 100: a topic may be 200 characters
--   (the platform's outbox allows that), and the audit trail must take every event as it is.
-- - event_id is unique together with occurred_at (see the constraint below).
-- - Each row belongs to one of 16 hash chains (columns chain .. recorded_at).
--
-- The chains: row N of a chain stores row_hash = sha256(previous_hash || its content), where
-- previous_hash is row N-1's row_hash (64 zeros for row 1). audit_chain_heads holds each
-- chain's last position and hash. Sixteen chains rather than one, so that concurrent writers do
-- not all queue behind a single head; the service puts every row of one entity in the same
-- chain, so an entity's history is one unbroken sequence. A change to a stored row breaks its
-- own hash, a removed row leaves a gap in positions and a broken link. Someone able to rewrite
-- every later row and the head as well is beyond what the chains alone can show: anchoring the
-- heads outside this database is what would close that.

CREATE TABLE audit_logs (
    log_id UUID NOT NULL DEFAULT gen_random_uuid(),
    event_id VARCHAR(255) NOT NULL,
    event_type VARCHAR(200) NOT NULL,
    service_name VARCHAR(100) NOT NULL,
    entity_type VARCHAR(200),
    entity_id VARCHAR(255),
    user_id UUID,
    action VARCHAR(200) NOT NULL,
    old_values JSONB,
    new_values JSONB,
    metadata JSONB,
    ip_address VARCHAR(45),
    user_agent TEXT,
    occurred_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    chain SMALLINT NOT NULL CHECK (chain BETWEEN 0 AND 15),
    chain_position BIGINT NOT NULL CHECK (chain_position >= 1),
    previous_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL,
    recorded_at TIMESTAMP NOT NULL DEFAULT clock_timestamp(),
    -- A unique constraint on a partitioned table must include the partition key. occurred_at is
    -- the event's own time, carried by every delivery of it, so a redelivered event maps to the
    -- same pair and is still refused.
    PRIMARY KEY (log_id, occurred_at),
    UNIQUE (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- Monthly partitions, named audit_logs_YYYY_MM, created by audit_create_partition below.
CREATE INDEX idx_audit_logs_event_type ON audit_logs (event_type);
CREATE INDEX idx_audit_logs_service_name ON audit_logs (service_name);
CREATE INDEX idx_audit_logs_entity_type ON audit_logs (entity_type);
CREATE INDEX idx_audit_logs_entity_id ON audit_logs (entity_id);
CREATE INDEX idx_audit_logs_user_id ON audit_logs (user_id);
-- With log_id: the listing pages newest first on (occurred_at, log_id).
CREATE INDEX idx_audit_logs_occurred_at ON audit_logs (occurred_at, log_id);

-- Cold storage for months older than a year. A month moves here whole (its partition is
-- detached from audit_logs and attached here), rows untouched, so the chains verify across
-- both tables. Identical columns, constraints and indexes, so a partition attaches to either
-- parent without being rebuilt.
CREATE TABLE audit_logs_archived (LIKE audit_logs INCLUDING ALL) PARTITION BY RANGE (occurred_at);

-- The whole trail, live and archived: what the service lists and verifies.
CREATE VIEW audit_trail AS
    SELECT * FROM audit_logs
    UNION ALL
    SELECT * FROM audit_logs_archived;

-- The last row of each chain: every append locks its chain's row here.
CREATE TABLE audit_chain_heads (
    chain SMALLINT PRIMARY KEY CHECK (chain BETWEEN 0 AND 15),
    position BIGINT NOT NULL,
    row_hash TEXT NOT NULL
);

-- The previous_hash of the first row of every chain.
CREATE FUNCTION audit_genesis_hash() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN repeat('0', 64);

INSERT INTO audit_chain_heads (chain, position, row_hash)
SELECT chain, 0, audit_genesis_hash() FROM generate_series(0, 15) AS chain;

-- One field of the hashed content: its length in characters, a colon and the text, or '~'
-- for NULL. Length-prefixed, so no value can pass for two fields or for another split of the
-- same characters, and NULL never equals an empty string ('0:').
CREATE FUNCTION audit_field(value text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN value IS NULL THEN '~' ELSE length(value) || ':' || value END;

-- The hash of a row: sha256 over the previous row's hash and the row's content, as lower-case
-- hex. The one definition used both to append and to verify, so the two cannot disagree.
-- JSONB renders in its normalised form (keys sorted, no insignificant whitespace), the time as
-- whole microseconds since the epoch, so no session setting changes the text that is hashed.
-- The leading 'audit-v1' names this layout, should it ever need to change.
-- PL/pgSQL rather than SQL: concat_ws and convert_to are only STABLE, so PostgreSQL would not
-- inline an IMMUTABLE SQL function using them, and its SQL-function path costs ~100 µs a row
-- against ~12 µs here. (The conversion to UTF-8 never varies, so IMMUTABLE holds.)
CREATE FUNCTION audit_row_digest(
    previous_hash text,
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
    chain smallint,
    chain_position bigint
) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN encode(sha256(convert_to(concat_ws('|',
        'audit-v1',
        audit_field(previous_hash),
        audit_field(event_id),
        audit_field(event_type),
        audit_field(service_name),
        audit_field(entity_type),
        audit_field(entity_id),
        audit_field(user_id::text),
        audit_field(action),
        audit_field(old_values::text),
        audit_field(new_values::text),
        audit_field(metadata::text),
        audit_field(ip_address),
        audit_field(user_agent),
        audit_field((extract(epoch FROM occurred_at) * 1000000)::bigint::text),
        audit_field(chain::text),
        audit_field(chain_position::text)
    ), 'UTF8')), 'hex');
END
$$;

-- Makes sure audit_logs has the partition of the month holding `instant`; returns its name
-- when it had to be made, NULL when it was there. A month already moved to the archive comes
-- back to audit_logs (a very late event belongs to it): that way the event is checked against
-- the month's unique key like any other; the next maintenance archives the month again.
-- Partitions change under one advisory lock (here and in audit_archive), so writers and hosts
-- doing this at the same moment take turns, and the later one finds the work done.
CREATE FUNCTION audit_create_partition(instant timestamp) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    first_day timestamp := date_trunc('month', instant);
    partition_name text := 'audit_logs_' || to_char(first_day, 'YYYY_MM');
    bounds text := format('FOR VALUES FROM (%L) TO (%L)',
        to_char(first_day, 'YYYY-MM-DD'), to_char(first_day + interval '1 month', 'YYYY-MM-DD'));
    existing regclass;
    parent regclass;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('audit_partitions'));
    existing := to_regclass(partition_name);
    SELECT i.inhparent INTO parent FROM pg_inherits AS i WHERE i.inhrelid = existing;
    IF parent = 'audit_logs'::regclass THEN
        RETURN NULL;
    ELSIF parent = 'audit_logs_archived'::regclass THEN
        EXECUTE format('ALTER TABLE audit_logs_archived DETACH PARTITION %I', partition_name);
        EXECUTE format('ALTER TABLE audit_logs ATTACH PARTITION %I %s', partition_name, bounds);
    ELSE
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_logs %s', partition_name, bounds);
    END IF;
    RETURN partition_name;
END
$$;

-- Creates the partitions of the current month (UTC) and of the `months_ahead` months after
-- it, those that are missing; returns the names made. Safe to run any number of times.
CREATE FUNCTION audit_ensure_partitions(months_ahead integer) RETURNS SETOF text
    LANGUAGE plpgsql AS $$
DECLARE
    this_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    made text;
BEGIN
    FOR ahead IN 0..months_ahead LOOP
        made := audit_create_partition(this_month + make_interval(months => ahead));
        IF made IS NOT NULL THEN
            RETURN NEXT made;
        END IF;
    END LOOP;
END
$$;

-- Appends one event's row to chain `p_chain` in one round trip; returns false, changing nothing,
-- when the event (event_id at occurred_at) is already recorded.
--
-- Invariants kept here:
-- - the head row is locked first, so appends to one chain are serialised: each row takes the
--   next position and links to the row before it, and the head always names the last row;
-- - the head moves only when a row was inserted;
-- - a month without a partition gets one (23514: no partition for the row), then the insert
--   is tried once more.
CREATE FUNCTION audit_append(
    p_event_id text,
    p_event_type text,
    p_service_name text,
    p_entity_type text,
    p_entity_id text,
    p_user_id uuid,
    p_action text,
    p_old_values jsonb,
    p_new_values jsonb,
    p_metadata jsonb,
    p_ip_address text,
    p_user_agent text,
    p_occurred_at timestamp,
    p_chain smallint
) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    head_position bigint;
    head_hash text;
    new_position bigint;
    new_hash text;
    inserted uuid;
BEGIN
    SELECT position, row_hash INTO head_position, head_hash
    FROM audit_chain_heads WHERE chain = p_chain FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no audit chain %', p_chain USING ERRCODE = 'invalid_parameter_value';
    END IF;
    new_position := head_position + 1;
    new_hash := audit_row_digest(head_hash, p_event_id, p_event_type, p_service_name, p_entity_type,
        p_entity_id, p_user_id, p_action, p_old_values, p_new_values, p_metadata, p_ip_address,
        p_user_agent, p_occurred_at, p_chain, new_position);

    FOR attempt IN 1..2 LOOP
        BEGIN
            INSERT INTO audit_logs (event_id, event_type, service_name, entity_type, entity_id, user_id,
                action, old_values, new_values, metadata, ip_address, user_agent, occurred_at,
                chain, chain_position, previous_hash, row_hash)
            VALUES (p_event_id, p_event_type, p_service_name, p_entity_type, p_entity_id, p_user_id,
                p_action, p_old_values, p_new_values, p_metadata, p_ip_address, p_user_agent, p_occurred_at,
                p_chain, new_position, head_hash, new_hash)
            ON CONFLICT (event_id, occurred_at) DO NOTHING
            RETURNING log_id INTO inserted;
            EXIT;
        EXCEPTION WHEN check_violation THEN
            IF attempt = 2 THEN
                RAISE;
            END IF;
            PERFORM audit_create_partition(p_occurred_at);
        END;
    END LOOP;

    IF inserted IS NULL THEN
        RETURN false;
    END IF;
    UPDATE audit_chain_heads SET position = new_position, row_hash = new_hash WHERE chain = p_chain;
    RETURN true;
END
$$;

-- Moves every audit_logs partition whose whole month ended more than `older_than` ago (UTC) to
-- audit_logs_archived; returns the names moved. Safe to run any number of times, from several
-- hosts at once (the partitions' advisory lock, see audit_create_partition).
CREATE FUNCTION audit_archive(older_than interval) RETURNS SETOF text
    LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamp := (now() AT TIME ZONE 'UTC') - older_than;
    part record;
    lower_bound text;
    upper_bound text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('audit_partitions'));
    FOR part IN
        SELECT c.relname::text AS name, to_date(substr(c.relname, 12), 'YYYY_MM')::timestamp AS first_day
        FROM pg_inherits AS i
        JOIN pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_logs'::regclass
          AND c.relname ~ '^audit_logs_[0-9]{4}_[0-9]{2}$'
          AND to_date(substr(c.relname, 12), 'YYYY_MM') + interval '1 month' <= horizon
        ORDER BY c.relname
    LOOP
        lower_bound := to_char(part.first_day, 'YYYY-MM-DD');
        upper_bound := to_char(part.first_day + interval '1 month', 'YYYY-MM-DD');
        -- A constraint matching the bounds lets ATTACH skip its validating scan of the month,
        -- which would otherwise run while DETACH's lock holds back every reader and writer of
        -- audit_logs. It is checked here, before that lock is taken, and dropped once attached.
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT audit_archive_bounds '
            'CHECK (occurred_at >= %L AND occurred_at < %L)', part.name, lower_bound, upper_bound);
        EXECUTE format('ALTER TABLE audit_logs DETACH PARTITION %I', part.name);
        EXECUTE format('ALTER TABLE audit_logs_archived ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            part.name, lower_bound, upper_bound);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT audit_archive_bounds', part.name);
        RETURN NEXT part.name;
    END LOOP;
END
$$;

SELECT audit_ensure_partitions(3);

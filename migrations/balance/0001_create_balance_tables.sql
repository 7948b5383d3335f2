-- The balance service's tables, as in the Balance Service section of the database schema spec,
-- with the additions of components/LEDGER.md.
-- This runs as the service's own role with search_path = balance_schema, so names are unqualified.
--
-- A balance is event-sourced: balance_events is the append-only history of every account, one
-- row per ledger entry, numbered 1, 2, ... per account and chained (each event's balance_before
-- is the previous one's balance_after). balance_snapshots are checkpoints of that history;
-- balance_accounts holds one row per account, the row every change to the account locks.
--
-- Differences from the spec, and why:
-- - balance_events.balance_before and balance_after are NOT NULL: every event carries its place
--   in the chain, which the ledger check verifies; entry_id, sequence and posted_at are NOT NULL
--   for the same reason (every event comes from a ledger entry).
-- - The spec's idx_account_id on balance_events and balance_snapshots is left out: the UNIQUE
--   (account_id, sequence) constraint and idx_balance_snapshots_account_sequence start with
--   account_id and serve the same lookups.

-- One row per account the service has seen. Every reservation, hold and applied posting locks
-- its accounts' rows here (SELECT ... FOR UPDATE, several in account_id order), which is what
-- keeps a non-system account's available balance from going below zero under any concurrency.
CREATE TABLE balance_accounts (
    account_id UUID PRIMARY KEY,
    -- Set when the row is made and never changed: every event and reservation of the account
    -- is in this currency.
    currency VARCHAR(3) NOT NULL,
    -- A platform account (FUNDING, FEES), whose balance may be negative.
    system BOOLEAN NOT NULL DEFAULT FALSE,
    -- The sequence of the account's last event (0: none yet).
    last_sequence BIGINT NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    events_since_snapshot INTEGER NOT NULL DEFAULT 0 CHECK (events_since_snapshot >= 0),
    last_snapshot_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
-- The sweeper looks for accounts with events since a snapshot that is old or missing.
CREATE INDEX idx_balance_accounts_snapshot_due ON balance_accounts (last_snapshot_at NULLS FIRST)
    WHERE events_since_snapshot > 0;

CREATE TABLE balance_snapshots (
    snapshot_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id UUID NOT NULL,
    balance DECIMAL(19, 4) NOT NULL,
    available_balance DECIMAL(19, 4) NOT NULL,
    reserved_balance DECIMAL(19, 4) DEFAULT 0.0000,
    currency VARCHAR(3) NOT NULL,
    snapshot_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    -- The balance_events.event_id of the last event the snapshot includes.
    last_event_id VARCHAR(255),
    -- The sequence of that event: the snapshot's balance is the replay of events 1 ..= this.
    last_sequence BIGINT NOT NULL CHECK (last_sequence >= 1)
);
-- A balance reads the account's latest snapshot, then the events after it.
CREATE INDEX idx_balance_snapshots_account_sequence ON balance_snapshots (account_id, last_sequence DESC);
CREATE INDEX idx_balance_snapshots_snapshot_at ON balance_snapshots (snapshot_at);

CREATE TABLE balance_events (
    event_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id UUID NOT NULL,
    -- The ledger entry's type: a CREDIT adds to the balance, a DEBIT takes from it.
    event_type VARCHAR(50) NOT NULL CHECK (event_type IN ('DEBIT', 'CREDIT')),
    -- Where the event came from: 'transaction' (a transaction.posted event).
    event_source VARCHAR(100) NOT NULL,
    amount DECIMAL(19, 4) NOT NULL CHECK (amount > 0),
    currency VARCHAR(3) NOT NULL,
    balance_before DECIMAL(19, 4) NOT NULL,
    balance_after DECIMAL(19, 4) NOT NULL,
    transaction_id UUID,
    payment_id UUID,
    -- The id of the bus event (transaction.posted) the entry arrived in.
    kafka_event_id VARCHAR(255),
    occurred_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    -- 1, 2, ... per account: the event's place in the account's chain.
    sequence BIGINT NOT NULL CHECK (sequence >= 1),
    -- The ledger entry this event applies: one event per entry, even if a posting arrives twice.
    entry_id UUID NOT NULL,
    -- The transaction's created_at: the ledger check's cut-off compares against it.
    posted_at TIMESTAMP NOT NULL,
    CONSTRAINT balance_events_account_sequence_key UNIQUE (account_id, sequence),
    CONSTRAINT balance_events_entry_id_key UNIQUE (entry_id),
    -- An event moves the balance by exactly its signed amount.
    CONSTRAINT balance_events_moves_by_amount CHECK (
        balance_after - balance_before = CASE event_type WHEN 'CREDIT' THEN amount ELSE -amount END
    )
);
CREATE INDEX idx_balance_events_event_type ON balance_events (event_type);
CREATE INDEX idx_balance_events_occurred_at ON balance_events (occurred_at);
CREATE INDEX idx_balance_events_transaction_id ON balance_events (transaction_id);
CREATE INDEX idx_balance_events_payment_id ON balance_events (payment_id);

-- Reservations (a client's hold on funds before paying) and holds (a posting's debit, captured
-- for its transaction). ACTIVE -> CAPTURED | RELEASED | EXPIRED; a CAPTURED one counts against
-- the available balance until the posting's debit is applied (settled_at) or the posting is
-- known never to have committed (RELEASED).
CREATE TABLE balance_reservations (
    reservation_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id UUID NOT NULL,
    payment_id UUID NOT NULL,
    amount DECIMAL(19, 4) NOT NULL CHECK (amount > 0),
    currency VARCHAR(3) NOT NULL,
    status VARCHAR(50) NOT NULL DEFAULT 'ACTIVE'
        CHECK (status IN ('ACTIVE', 'CAPTURED', 'RELEASED', 'EXPIRED')),
    expires_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    released_at TIMESTAMP,
    -- The posting that captured it, and when.
    transaction_id UUID,
    captured_at TIMESTAMP,
    -- When the posting's debit was applied: from then on the hold no longer counts.
    settled_at TIMESTAMP,
    -- A captured hold names its posting (and keeps naming it once released); an ACTIVE one has
    -- none yet. Only a captured one settles; only a RELEASED or EXPIRED one has a released_at.
    CONSTRAINT balance_reservations_capture_named CHECK (CASE status
        WHEN 'ACTIVE' THEN transaction_id IS NULL AND captured_at IS NULL
        WHEN 'CAPTURED' THEN transaction_id IS NOT NULL AND captured_at IS NOT NULL
        ELSE TRUE
    END),
    CONSTRAINT balance_reservations_settled_captured CHECK (settled_at IS NULL OR status = 'CAPTURED'),
    CONSTRAINT balance_reservations_released_ended CHECK (
        (released_at IS NOT NULL) = (status IN ('RELEASED', 'EXPIRED'))
    )
);
CREATE INDEX idx_balance_reservations_account_id ON balance_reservations (account_id);
CREATE INDEX idx_balance_reservations_payment_id ON balance_reservations (payment_id);
CREATE INDEX idx_balance_reservations_status ON balance_reservations (status);
CREATE INDEX idx_balance_reservations_expires_at ON balance_reservations (expires_at);
-- Beyond the spec: a posting settles its holds by transaction id.
CREATE INDEX idx_balance_reservations_transaction_id ON balance_reservations (transaction_id);
-- Beyond the spec: the reservations that still count against an account's available balance,
-- summed under the account's lock on every reservation, hold and applied posting.
CREATE INDEX idx_balance_reservations_counting ON balance_reservations (account_id) INCLUDE (amount, status, expires_at)
    WHERE status = 'ACTIVE' OR (status = 'CAPTURED' AND settled_at IS NULL);
-- Beyond the spec: the sweeper's two searches, ACTIVE ones past expiry and unsettled holds.
CREATE INDEX idx_balance_reservations_active_expiry ON balance_reservations (expires_at) WHERE status = 'ACTIVE';
CREATE INDEX idx_balance_reservations_unsettled ON balance_reservations (captured_at)
    WHERE status = 'CAPTURED' AND settled_at IS NULL;

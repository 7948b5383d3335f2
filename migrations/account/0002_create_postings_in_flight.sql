-- Postings in flight: which postings the account service has authorized against a user account
-- and the balance service has not yet applied to it. Closing an account is refused while it has
-- one (components/LEDGER.md, the invariant "a CLOSED account holds no money").
--
-- A row is written by /internal/authorize in its unit of work, for every user account the
-- posting names (system accounts are never closed, so they have none), and removed when:
-- - the balance service has applied the posting to the account (`balance.updated` names the
--   account and the transaction);
-- - the posting failed after it was authorized (/internal/release-limits);
-- - the maintenance sweep learns from the transaction service, long after the row was written,
--   that the posting never committed, or that it is settled (applied everywhere).
--
-- No foreign key to accounts: authorize writes a row only for an account it has just read and
-- locked, and a foreign key would look the account up again for every row on the money path.
-- The table holds only what is in flight, so the sweep's scan by authorized_at stays small.
CREATE TABLE account_postings_in_flight (
    account_id UUID NOT NULL,
    transaction_id UUID NOT NULL,
    -- The authorizing unit of work's start; the sweep asks about rows older than its bound.
    authorized_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (account_id, transaction_id)
);

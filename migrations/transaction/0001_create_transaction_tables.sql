-- The transaction service's tables, as in the Transaction Service section of the database
-- schema spec, with the additions of components/LEDGER.md.
-- This runs as the service's own role with search_path = transaction_schema, so names are
-- unqualified.
--
-- The ledger's invariants are kept by the database, not only by the code that writes it:
-- - an entry, once written, is never changed or removed (a trigger refuses it); a mistake is
--   corrected by a reversal, so the ledger is its own history;
-- - a transaction commits only with at least one DEBIT and one CREDIT entry, its debits equal
--   to its credits in every currency (a deferred constraint trigger, checked at commit, when
--   every entry of the unit of work is in);
-- - a transaction is reversed at most once (a unique constraint), even by two reversals at once.
--
-- Differences from the spec, and why:
-- - transactions.description and transactions.initiated_by (the user who posted it, NULL for an
--   administrator): the contract's additions.
-- - transaction_entries.entry_number: entries are listed in the order they were posted.
-- - CHECK constraints on the types, statuses, amounts and currencies the contract allows.

CREATE TABLE transactions (
    transaction_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id UUID NOT NULL,
    transaction_type VARCHAR(50) NOT NULL
        CHECK (transaction_type IN ('TRANSFER', 'ADJUSTMENT', 'DEPOSIT', 'WITHDRAWAL', 'REVERSAL')),
    -- PENDING until the balance service has applied every entry, SETTLED then, REVERSED once a
    -- reversal of it is posted.
    status VARCHAR(50) NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SETTLED', 'REVERSED')),
    -- The sum of the debits in the currency of the first debit entry.
    total_amount DECIMAL(19, 4) NOT NULL CHECK (total_amount > 0),
    currency VARCHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description VARCHAR(255),
    initiated_by UUID,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    settled_at TIMESTAMP,
    reversed_at TIMESTAMP,
    reversal_reason VARCHAR(255),
    -- Only a settled transaction is reversed, so every status but PENDING has its settlement.
    CHECK (status = 'PENDING' OR settled_at IS NOT NULL),
    CHECK ((status = 'REVERSED') = (reversed_at IS NOT NULL AND reversal_reason IS NOT NULL))
);
CREATE INDEX idx_transactions_payment_id ON transactions (payment_id);
CREATE INDEX idx_transactions_status ON transactions (status);
CREATE INDEX idx_transactions_settled_at ON transactions (settled_at);
-- With transaction_id: listings page newest first on (created_at, transaction_id).
CREATE INDEX idx_transactions_created_at ON transactions (created_at, transaction_id);
-- Beyond the spec: a user's listing is their own postings, newest first.
CREATE INDEX idx_transactions_initiated_by ON transactions (initiated_by, created_at, transaction_id);

CREATE TABLE transaction_entries (
    entry_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- ON DELETE CASCADE as in the spec; the immutability trigger below refuses the cascaded
    -- delete, so a transaction with entries cannot be deleted either.
    transaction_id UUID NOT NULL REFERENCES transactions(transaction_id) ON DELETE CASCADE,
    -- 1, 2, ... in the order the posting listed its entries (a posting has at most 100).
    entry_number SMALLINT NOT NULL CHECK (entry_number BETWEEN 1 AND 100),
    account_id UUID NOT NULL,
    entry_type VARCHAR(50) NOT NULL CHECK (entry_type IN ('DEBIT', 'CREDIT')),
    amount DECIMAL(19, 4) NOT NULL CHECK (amount > 0),
    currency VARCHAR(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Left NULL: the balance service's events carry each entry's balances.
    balance_before DECIMAL(19, 4),
    balance_after DECIMAL(19, 4),
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    -- Also serves the spec's idx_transaction_id: a transaction's entries are read through it.
    UNIQUE (transaction_id, entry_number)
);
CREATE INDEX idx_transaction_entries_account_id ON transaction_entries (account_id);
CREATE INDEX idx_transaction_entries_entry_type ON transaction_entries (entry_type);

CREATE TABLE transaction_reversals (
    reversal_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    original_transaction_id UUID NOT NULL REFERENCES transactions(transaction_id),
    reversal_transaction_id UUID NOT NULL REFERENCES transactions(transaction_id),
    reversal_reason VARCHAR(255) NOT NULL,
    -- The user who reversed it; NULL for an administrator (so far the only ones who may).
    reversed_by UUID,
    reversed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    -- One reversal per transaction, whatever races. The service matches this constraint's
    -- default name (transaction_reversals_original_transaction_id_key) to answer 409
    -- already_reversed. It also serves the spec's idx_original_transaction.
    UNIQUE (original_transaction_id),
    -- A transaction reverses at most one other; serves the spec's idx_reversal_transaction and
    -- the lookup of what a reversal reverses.
    UNIQUE (reversal_transaction_id),
    CHECK (original_transaction_id <> reversal_transaction_id)
);

-- Entries are immutable: UPDATE and DELETE are refused row by row, TRUNCATE (which fires no
-- row trigger) as a statement.
CREATE FUNCTION transaction_entries_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        RAISE EXCEPTION 'transaction entry % is immutable: % refused; post a reversal instead',
            OLD.entry_id, TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RAISE EXCEPTION 'transaction entries are immutable: % refused', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER transaction_entries_immutable
    BEFORE UPDATE OR DELETE ON transaction_entries
    FOR EACH ROW EXECUTE FUNCTION transaction_entries_refuse_change();

CREATE TRIGGER transaction_entries_not_truncated
    BEFORE TRUNCATE ON transaction_entries
    FOR EACH STATEMENT EXECUTE FUNCTION transaction_entries_refuse_change();

-- Refuses a transaction (NEW.transaction_id) whose entries lack a DEBIT or a CREDIT, or whose
-- debits and credits differ in some currency. Run by the deferred constraint triggers below,
-- so at commit, when all of the unit of work's entries are in; an exception there rolls the
-- whole unit of work back.
CREATE FUNCTION transaction_check_balanced() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    debit_entries bigint;
    credit_entries bigint;
    imbalance text;
BEGIN
    SELECT count(*) FILTER (WHERE entry_type = 'DEBIT'), count(*) FILTER (WHERE entry_type = 'CREDIT')
    INTO debit_entries, credit_entries
    FROM transaction_entries
    WHERE transaction_id = NEW.transaction_id;
    IF debit_entries = 0 OR credit_entries = 0 THEN
        RAISE EXCEPTION 'transaction % has % DEBIT and % CREDIT entries; it needs at least one of each',
            NEW.transaction_id, debit_entries, credit_entries
            USING ERRCODE = 'check_violation';
    END IF;

    SELECT string_agg(format('%s debits %s, credits %s', currency, debits, credits), '; ' ORDER BY currency)
    INTO imbalance
    FROM (
        SELECT currency,
               coalesce(sum(amount) FILTER (WHERE entry_type = 'DEBIT'), 0.0000) AS debits,
               coalesce(sum(amount) FILTER (WHERE entry_type = 'CREDIT'), 0.0000) AS credits
        FROM transaction_entries
        WHERE transaction_id = NEW.transaction_id
        GROUP BY currency
    ) AS per_currency
    WHERE debits <> credits;
    IF imbalance IS NOT NULL THEN
        RAISE EXCEPTION 'transaction % does not balance: %', NEW.transaction_id, imbalance
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

-- Every inserted entry has its transaction checked at commit (a transaction of n entries is
-- checked n times; n is at most 100).
CREATE CONSTRAINT TRIGGER transaction_entries_balanced
    AFTER INSERT ON transaction_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION transaction_check_balanced();

-- The same check for every new transaction, so one without any entry cannot commit either.
CREATE CONSTRAINT TRIGGER transactions_balanced
    AFTER INSERT ON transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION transaction_check_balanced();

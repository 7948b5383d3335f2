-- The balance check runs once per statement, over the transactions it touched, instead of once
-- per row at commit (three checks of two queries each for a two-entry posting; a batch of
-- postings is one statement now). A posting is written by one statement, its transaction and
-- its entries together (see `insert_transactions` in the service's `sql.rs`), so the check at
-- the statement's end sees it whole.
--
-- Invariants kept here (as 0001 kept them per row):
-- - every transaction written or given entries by a statement has at least one DEBIT and one
--   CREDIT entry, and its debits equal its credits in each currency, once the statement ends:
--   a transaction without entries, or entries added to a transaction later that unbalance it,
--   fail the statement (23514);
-- - the check reads every entry of each touched transaction, not only the statement's.
DROP TRIGGER transaction_entries_balanced ON transaction_entries;
DROP TRIGGER transactions_balanced ON transactions;

CREATE FUNCTION transactions_check_balanced() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    problem text;
BEGIN
    SELECT string_agg(failure, '; ') INTO problem
    FROM (
        SELECT CASE
                   WHEN sum(debit_entries) = 0 OR sum(credit_entries) = 0 THEN
                       format('transaction %s has %s DEBIT and %s CREDIT entries; it needs at least one of each',
                              transaction_id, sum(debit_entries), sum(credit_entries))
                   ELSE
                       format('transaction %s does not balance: %s', transaction_id,
                              string_agg(format('%s debits %s, credits %s', currency, debits, credits), '; '
                                         ORDER BY currency) FILTER (WHERE debits <> credits))
               END AS failure
        FROM (
            SELECT touched.transaction_id, e.currency,
                   count(e.entry_id) FILTER (WHERE e.entry_type = 'DEBIT') AS debit_entries,
                   count(e.entry_id) FILTER (WHERE e.entry_type = 'CREDIT') AS credit_entries,
                   coalesce(sum(e.amount) FILTER (WHERE e.entry_type = 'DEBIT'), 0.0000) AS debits,
                   coalesce(sum(e.amount) FILTER (WHERE e.entry_type = 'CREDIT'), 0.0000) AS credits
            FROM (SELECT DISTINCT transaction_id FROM changed) AS touched
            LEFT JOIN transaction_entries AS e ON e.transaction_id = touched.transaction_id
            GROUP BY touched.transaction_id, e.currency
        ) AS per_currency
        GROUP BY transaction_id
        HAVING sum(debit_entries) = 0 OR sum(credit_entries) = 0 OR bool_or(debits <> credits)
        ORDER BY transaction_id
        LIMIT 5
    ) AS failures;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER transaction_entries_balanced
    AFTER INSERT ON transaction_entries
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_check_balanced();

CREATE TRIGGER transactions_balanced
    AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_check_balanced();

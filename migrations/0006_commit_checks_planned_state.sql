-- The committer may plan a batch against account states it remembers from earlier commits and
-- send it as one statement, without first locking and reading the accounts. The statement then
-- updates each account only where it is still exactly as planned against (balance, entry count,
-- version vector); when one is not (another writer, a batch that failed, a remote event), this
-- aborts the whole statement, so nothing of the batch is written. SQLSTATE 40001 marks it as a
-- retryable conflict: the committer re-runs the batch reading and locking the accounts.
CREATE FUNCTION ledger_assert_accounts_as_planned(matched BIGINT, expected INT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
BEGIN
    IF matched <> expected THEN
        RAISE EXCEPTION 'account state changed since the batch was planned (% of % accounts as planned)',
            matched, expected
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN TRUE;
END $$;

-- Point-in-time balances (`GET /v1/accounts/{id}?at=`): the last entry an account had at a moment
-- is found by one descent of this index, never a scan of the account's history. Every entry
-- already holds the balance after it. Writers stamp an account's entries in sequence order (an
-- entry is never stamped before the one it follows: see storage/batch.rs and remote_store.rs), so
-- "the entries recorded by then" is always a prefix of the account's history, and the latest by
-- (created_at, seq) ends it.
CREATE INDEX entries_account_time ON entries (account_id, created_at, seq);

-- The foreign keys below each fired a trigger per inserted row that looked up (and share-locked)
-- a row the same transaction had just written or already held FOR UPDATE. Measured at 1,000
-- transfers/s they were half the write path's time in PostgreSQL. Every one of these rows is
-- written by the committer in the same transaction as the row it points to (see
-- region-node/src/write/batch.rs and remote.rs), so the references hold by construction; the
-- integration tests check that no entry, transfer or outbox row is orphaned after a kill -9.
ALTER TABLE transfers
    DROP CONSTRAINT transfers_event_id_fkey,
    DROP CONSTRAINT transfers_from_account_fkey,
    DROP CONSTRAINT transfers_to_account_fkey;
ALTER TABLE entries
    DROP CONSTRAINT entries_account_id_fkey,
    DROP CONSTRAINT entries_transfer_id_fkey;
ALTER TABLE outbox
    DROP CONSTRAINT outbox_event_id_fkey;

-- Account rows are rewritten on every transfer; free room in each page lets PostgreSQL update them
-- in place (HOT) instead of adding a primary-key index entry per update.
ALTER TABLE accounts SET (fillfactor = 70);

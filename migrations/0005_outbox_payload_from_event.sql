-- An outbox row of a ledger event no longer carries its own copy of the payload: the publisher
-- reads it from ledger_events, written in the same transaction. Two copies per transfer (one per
-- account record) were the largest rows the write path wrote. Rows that are not ledger events
-- (conflict records) still carry theirs.
ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;

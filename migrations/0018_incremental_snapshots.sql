-- Incremental snapshots. A snapshot used to copy every read-model balance, every 5 s: its cost
-- grew with the ledger (about 100 ms of PostgreSQL at 37,000 accounts, beside the write path's
-- commits) and so did the table, a full copy each time, never pruned. Now most snapshots hold only
-- the balances changed since the one before; every `snapshot_full_every`-th is full, and once a
-- full one is written, everything before the previous full one is deleted.

-- Set whenever a balance row changes (views::apply_batch), cleared by the snapshot that records it.
-- New rows start set. The partial index keeps the next snapshot's read to the rows it records.
ALTER TABLE rm_balances ADD COLUMN snapshot_dirty BOOLEAN NOT NULL DEFAULT true;
CREATE INDEX rm_balances_snapshot_dirty ON rm_balances (account_id) WHERE snapshot_dirty;

-- NULL: a full snapshot. Otherwise the full snapshot this one builds on: the balances as of a
-- delta are its base's, then every later delta's up to it, in id order (the latest value wins).
ALTER TABLE ledger_snapshots ADD COLUMN base_id BIGINT;

-- The whole balance map as of one snapshot, whichever kind it is.
CREATE FUNCTION ledger_snapshot_balances(snapshot BIGINT) RETURNS JSONB LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_object_agg(b.key, b.value ORDER BY s.id), '{}'::jsonb)
    FROM ledger_snapshots s
    CROSS JOIN LATERAL jsonb_each(s.balances) AS b
    WHERE s.id <= snapshot
      AND s.id >= (SELECT COALESCE(t.base_id, t.id) FROM ledger_snapshots t WHERE t.id = snapshot)
$$;

-- What one read-model snapshot costs, the way it was written before migration 0018 (every
-- balance) and the way it is now (the balances changed since the snapshot before), on 200,000
-- accounts of which 2,000 changed. Runs inside one transaction on a region's database and rolls
-- everything back:
--   psql "$(jq -r '.regions[0].postgres_url' .devstack/env.json)" -f scripts/snapshot-cost.sql
\set ON_ERROR_STOP on
BEGIN;
UPDATE rm_balances SET snapshot_dirty = false;
INSERT INTO rm_balances (account_id, currency, balance, entries_applied, snapshot_dirty)
SELECT 'snapcost-' || i, 'USD', (i * 7919) % 1000000, i % 50, false FROM generate_series(1, 200000) i;
-- The statements timed, as the consumer writes them (region-node/src/consumer.rs).
\set full 'INSERT INTO ledger_snapshots (events_applied, offsets, balances) SELECT p.events_applied, ''{}'', COALESCE((SELECT jsonb_object_agg(account_id, balance) FROM rm_balances), ''{}'') FROM rm_progress p RETURNING id AS full_id'
-- 2,000 accounts change between two snapshots, a different 2,000 each time.
\set change 'UPDATE rm_balances SET balance = balance + 1, snapshot_dirty = true WHERE account_id IN (SELECT ''snapcost-'' || ((i * 97 + (SELECT count(*) FROM ledger_snapshots)) % 200000 + 1) FROM generate_series(1, 2000) i)'
\timing on
\echo every balance (before 0018), three times:
:full \gset
:full \gset
:full \gset
\timing off
-- Built on the last full one.
\set delta 'WITH changed AS (UPDATE rm_balances SET snapshot_dirty = false WHERE snapshot_dirty RETURNING account_id, balance) INSERT INTO ledger_snapshots (events_applied, offsets, balances, base_id) SELECT p.events_applied, ''{}'', COALESCE((SELECT jsonb_object_agg(account_id, balance) FROM changed), ''{}''), :full_id FROM rm_progress p RETURNING id AS delta_id'
\echo what changed (now), three times, each after 2,000 accounts changed:
:change;
\timing on
:delta \gset
\timing off
:change;
\timing on
:delta \gset
\timing off
:change;
\timing on
:delta \gset
\timing off
\echo stored bytes of a full snapshot and of a delta, and the delta rebuilt equals the read model:
SELECT (SELECT pg_column_size(balances) FROM ledger_snapshots WHERE id = :full_id) AS full_bytes,
       (SELECT pg_column_size(balances) FROM ledger_snapshots WHERE id = :delta_id) AS delta_bytes,
       ledger_snapshot_balances(:delta_id) = (SELECT jsonb_object_agg(account_id, balance) FROM rm_balances) AS rebuilt_equal;
ROLLBACK;

-- Anti-entropy: a region pulls the events it lacks from each peer's `GET /v1/replication/events`,
-- so it converges even when Kafka lost a transaction or never made it readable.

-- A key may carry the `replication` scope: it reads that route and nothing else, and the other
-- scopes do not reach it.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (scopes <@ ARRAY['read', 'write', 'replication']::TEXT[]);

-- When the row was inserted here (its transaction's start). `seq` is taken at insert, so a row
-- with a later seq can commit before one with an earlier seq; the route returns only rows stored
-- longer ago than a settle time, so a cursor never passes a row that may still commit.
-- `occurred_at` cannot serve: an event of another origin carries its origin's time and may be
-- applied here long after. A constant default: existing rows get the migration's time and the
-- table is not rewritten.
ALTER TABLE ledger_events ADD COLUMN stored_at TIMESTAMPTZ NOT NULL DEFAULT now();

-- How far this region has read each peer's events of that peer's own origin: the peer's `seq`
-- of the last event handed to remote apply (applied, held or set aside). Advanced only after.
CREATE TABLE replication_cursors (
    origin     TEXT PRIMARY KEY,
    after_seq  BIGINT NOT NULL CHECK (after_seq >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Active-active replication: remote events are applied in causal order per account, held while a
-- predecessor is missing, and concurrent updates are recorded as conflicts.

-- Every record of the outbox names its topic: events and conflicts both leave through it.
ALTER TABLE outbox ADD COLUMN topic TEXT NOT NULL DEFAULT 'ledger.events';

-- Per account, every event applied to it, with the account's vector after it. Conflict detection
-- finds here the events an incoming event did not see; the primary key is the causal position.
CREATE TABLE account_events (
    account_id      TEXT NOT NULL,
    origin_region   TEXT NOT NULL,
    counter         BIGINT NOT NULL CHECK (counter > 0),
    event_id        UUID NOT NULL,
    vector          JSONB NOT NULL,
    posting         BIGINT NOT NULL,
    opened          JSONB,
    idempotency_key TEXT,
    PRIMARY KEY (account_id, origin_region, counter)
);
CREATE INDEX account_events_event ON account_events (event_id);

-- Remote events received before their causal predecessors: durable, so a restart loses none.
CREATE TABLE pending_events (
    seq           BIGSERIAL UNIQUE,
    event_id      UUID PRIMARY KEY,
    origin_region TEXT NOT NULL,
    payload       JSONB NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Concurrent updates detected here. The id is derived from the pair of events, so every region
-- that detects a conflict records it under the same id.
CREATE TABLE conflicts (
    conflict_id   UUID PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('overdraft', 'duplicate-intent', 'account-definition', 'concurrent-benign')),
    account_id    TEXT NOT NULL,
    event_a       UUID NOT NULL,
    region_a      TEXT NOT NULL,
    vector_a      JSONB NOT NULL,
    event_b       UUID NOT NULL,
    region_b      TEXT NOT NULL,
    vector_b      JSONB NOT NULL,
    detected_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    status        TEXT NOT NULL DEFAULT 'open'
);

-- A remote debit may take an account below zero (both sides of a partition accepted one): that is
-- the overdraft conflict, flagged for finance, never a refusal. Local debits still cannot.
ALTER TABLE accounts ADD COLUMN replicated_overdraft BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE accounts DROP CONSTRAINT accounts_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_no_local_overdraft CHECK (allow_negative OR balance >= 0 OR replicated_overdraft);

-- Events already applied before this migration get their per-account rows.
INSERT INTO account_events (account_id, origin_region, counter, event_id, vector, posting, opened, idempotency_key)
SELECT v.key, e.origin_region, (v.value ->> e.origin_region)::bigint, e.event_id, v.value,
       CASE WHEN e.payload -> 'payload' ->> 'from' = v.key THEN -(e.payload -> 'payload' ->> 'amount')::bigint
            WHEN e.payload -> 'payload' ->> 'to' = v.key THEN (e.payload -> 'payload' ->> 'amount')::bigint
            ELSE 0 END,
       CASE WHEN e.event_type = 'account.opened' THEN e.payload -> 'payload' -> 'account' END,
       e.payload -> 'payload' ->> 'idempotency_key'
FROM ledger_events e, jsonb_each(e.version_vector) v;

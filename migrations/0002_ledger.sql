-- The regional ledger: authoritative account state, the append-only event log, the outbox that
-- feeds Kafka, idempotency records, API keys, and the Kafka-fed read models with their snapshots.

-- Authoritative account state. The CHECK is the database's own guard against an overdraft: even a
-- bug in the write path cannot commit a customer account below zero.
CREATE TABLE accounts (
    id             TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    currency       TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    allow_negative BOOLEAN NOT NULL,
    balance        BIGINT NOT NULL DEFAULT 0,
    metadata       JSONB NOT NULL DEFAULT '{}',
    version_vector JSONB NOT NULL DEFAULT '{}',
    -- Entries posted so far; the next entry gets entry_seq + 1.
    entry_seq      BIGINT NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (allow_negative OR balance >= 0)
);

-- Every fact, in commit order. Never updated, never deleted (enforced by the trigger below).
CREATE TABLE ledger_events (
    seq            BIGSERIAL UNIQUE,
    event_id       UUID PRIMARY KEY,
    aggregate_id   TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        JSONB NOT NULL,
    version_vector JSONB NOT NULL,
    origin_region  TEXT NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    -- W3C traceparent of the request that caused the event, to join one trace across processes.
    traceparent    TEXT
);
CREATE INDEX ledger_events_aggregate ON ledger_events (aggregate_id);

CREATE FUNCTION ledger_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_events is append-only';
END $$;
CREATE TRIGGER ledger_events_append_only BEFORE UPDATE OR DELETE ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION ledger_events_append_only();
CREATE TRIGGER ledger_events_no_truncate BEFORE TRUNCATE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_append_only();

CREATE TABLE transfers (
    id              UUID PRIMARY KEY,
    event_id        UUID NOT NULL REFERENCES ledger_events (event_id),
    from_account    TEXT NOT NULL REFERENCES accounts (id),
    to_account      TEXT NOT NULL REFERENCES accounts (id),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    currency        TEXT NOT NULL,
    metadata        JSONB NOT NULL DEFAULT '{}',
    origin_region   TEXT NOT NULL,
    idempotency_key TEXT,
    from_vector     JSONB NOT NULL,
    to_vector       JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    CHECK (from_account <> to_account)
);

-- Per-account history with the balance after each entry (authoritative, not Kafka-fed).
CREATE TABLE entries (
    account_id    TEXT NOT NULL REFERENCES accounts (id),
    seq           BIGINT NOT NULL,
    transfer_id   UUID NOT NULL REFERENCES transfers (id),
    amount        BIGINT NOT NULL CHECK (amount <> 0),
    balance_after BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, seq)
);

CREATE TABLE idempotency_keys (
    key             TEXT PRIMARY KEY,
    -- SHA-256 of the canonical request body: same key with another body is refused.
    request_hash    TEXT NOT NULL,
    response_status INT NOT NULL,
    response_body   JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per Kafka record to publish. A transfer yields one record per account it touches, each
-- keyed by that account, so every account's events keep their order in one partition.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    event_id      UUID NOT NULL REFERENCES ledger_events (event_id),
    partition_key TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    payload       JSONB NOT NULL,
    traceparent   TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE api_keys (
    -- SHA-256 of the key: keys are 256-bit random, so an unsalted hash is as strong as the key.
    key_hash   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scopes     TEXT[] NOT NULL CHECK (scopes <@ ARRAY['read', 'write']::TEXT[]),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

-- Read models, fed by the read_committed consumer. They may lag; `rm_balances.entries_applied`
-- against `accounts.entry_seq` says by how much.
CREATE TABLE rm_balances (
    account_id      TEXT PRIMARY KEY,
    currency        TEXT NOT NULL,
    balance         BIGINT NOT NULL DEFAULT 0,
    entries_applied BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE rm_entries (
    account_id    TEXT NOT NULL,
    event_id      UUID NOT NULL,
    transfer_id   UUID NOT NULL,
    amount        BIGINT NOT NULL,
    balance_after BIGINT NOT NULL,
    occurred_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, event_id)
);

-- The exact duplicate check behind the consumer's bloom filter: (event, account) pairs applied.
CREATE TABLE rm_processed (
    event_id     UUID NOT NULL,
    account_id   TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, account_id)
);

CREATE TABLE ledger_snapshots (
    id              BIGSERIAL PRIMARY KEY,
    taken_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    events_applied  BIGINT NOT NULL,
    -- Kafka position the snapshot reflects: {"<partition>": next_offset}.
    offsets         JSONB NOT NULL,
    -- Read-model balances at that position: {"<account>": balance}.
    balances        JSONB NOT NULL
);

-- How many records the read-model consumer has applied in total (one row), for snapshots.
CREATE TABLE rm_progress (
    singleton      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    events_applied BIGINT NOT NULL
);
INSERT INTO rm_progress (events_applied) VALUES (0);

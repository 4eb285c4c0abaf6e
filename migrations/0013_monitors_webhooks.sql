-- Balance monitors and their webhooks (issue 18, item 4). A monitor is regional: it lives in the
-- region that created it and fires for every posting this region commits on its account, local
-- (the committer's statement) or applied from another region (remote apply's round), in the same
-- transaction as the posting. The deliveries are this feature's own outbox: a kill -9 never loses
-- a fired webhook (it committed with the posting) and never fires one twice (a posting commits
-- once); the delivery worker (region-node/src/webhooks.rs) sends them at least once, each with
-- its one id.

CREATE TABLE monitors (
    id          UUID PRIMARY KEY,
    -- Paging order of `GET /v1/monitors`.
    seq         BIGSERIAL NOT NULL UNIQUE,
    account_id  TEXT NOT NULL,
    -- The parsed condition (ledger_core::monitor::Condition), and its canonical text.
    field       TEXT NOT NULL CHECK (field IN ('balance', 'available')),
    op          TEXT NOT NULL CHECK (op IN ('<', '<=', '>', '>=')),
    threshold   BIGINT NOT NULL CHECK (threshold BETWEEN -4611686018427387904 AND 4611686018427387904),
    condition   TEXT NOT NULL,
    target_url  TEXT NOT NULL,
    -- Signs every delivery (HMAC-SHA256); the node must read it, no GET ever returns it.
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    -- Deleted monitors fire no more; what they already fired is still delivered.
    deleted_at  TIMESTAMPTZ
);
-- The write path's lookup: with no monitor on the batch's accounts, one probe of this index per
-- entry and nothing else.
CREATE INDEX monitors_active_by_account ON monitors (account_id) WHERE deleted_at IS NULL;
CREATE INDEX monitors_by_account ON monitors (account_id, seq);

-- Whether `value <op> threshold` holds; ledger_core::monitor::Condition::holds in SQL. Inlined by
-- the planner (a single SELECT, IMMUTABLE).
CREATE FUNCTION monitor_holds(op TEXT, threshold BIGINT, value BIGINT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE op WHEN '<' THEN value < threshold WHEN '<=' THEN value <= threshold
                   WHEN '>' THEN value > threshold WHEN '>=' THEN value >= threshold END
$$;

-- The value a monitor's field compares, from a balance. `available` equals the balance until
-- pending (two-phase) amounts exist; then it is the balance minus what is held, here and in
-- ledger_core::monitor::Field::value, and the callers pass what is held.
CREATE FUNCTION monitor_value(field TEXT, balance BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE field WHEN 'balance' THEN balance WHEN 'available' THEN balance END
$$;

-- ledger_core::monitor::delivery_id in SQL: a v8 UUID of SHA-256 over a domain tag and both ids.
CREATE FUNCTION webhook_delivery_id(monitor UUID, event UUID) RETURNS UUID
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(set_byte(set_byte(h, 6, (get_byte(h, 6) & 15) | 128), 8, (get_byte(h, 8) & 63) | 128), 'hex')::uuid
    FROM (SELECT substring(sha256('ledger-webhook'::bytea || uuid_send(monitor) || uuid_send(event)) FROM 1 FOR 16) AS h) s
$$;

-- One row per firing: a monitor's condition became true on one event's posting.
CREATE TABLE webhook_deliveries (
    -- webhook_delivery_id(monitor_id, event_id): the receivers' dedupe key.
    id              UUID PRIMARY KEY,
    -- Paging order of the delivery lists.
    seq             BIGSERIAL NOT NULL UNIQUE,
    monitor_id      UUID NOT NULL,
    event_id        UUID NOT NULL,
    account_id      TEXT NOT NULL,
    -- The monitor's condition when it fired.
    condition       TEXT NOT NULL,
    balance_after   BIGINT NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    -- Attempts made, ever (numbers the log), and since the last retry from the dead letters
    -- (compared with webhook_attempts_max).
    attempts        INT NOT NULL DEFAULT 0,
    round_attempts  INT NOT NULL DEFAULT 0,
    -- When the worker may (re)send it. While an attempt is in flight it is the attempt's lease: a
    -- worker that dies mid-attempt leaves it to be sent again after it.
    next_attempt_at TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_monitor ON webhook_deliveries (monitor_id, seq);
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (seq) WHERE state = 'dead';

-- The delivery log: every attempt, written before the request leaves (outcome NULL while in
-- flight; an attempt cut by a crash is marked `interrupted` by the next worker).
CREATE TABLE webhook_attempts (
    delivery_id  UUID NOT NULL,
    attempt      INT NOT NULL CHECK (attempt > 0),
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    status_code  INT,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
CREATE INDEX webhook_attempts_in_flight ON webhook_attempts (delivery_id) WHERE finished_at IS NULL;

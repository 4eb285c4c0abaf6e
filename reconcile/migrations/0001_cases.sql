-- The reconcile service's own database: cases built from the conflicts the regions report, the
-- proposals that resolve them, the staff who act, and an audit trail chained by SHA-256.

-- One case per conflict (its id is the conflict id, the same in every region, so the same conflict
-- reported three times, or replayed after lost offsets, is one case).
CREATE TABLE cases (
    id             UUID PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('overdraft', 'duplicate-intent', 'account-definition', 'concurrent-benign')),
    account        TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('open', 'proposed', 'approved', 'executing', 'resolved', 'closed', 'superseded')),
    -- The conflict as last reported: events, event_count, joint_vector, joint_balance.
    conflict       JSONB NOT NULL,
    -- The transfers the conflict names, fetched from a region: [{id, from, to, amount, currency, origin_region, created_at, version_vectors}].
    branches       JSONB,
    amount_at_risk BIGINT NOT NULL DEFAULT 0,
    opened_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at    TIMESTAMPTZ,
    -- Why a case was closed without a posting (the written policy for concurrent-benign).
    closed_reason  TEXT,
    superseded_by  UUID,
    -- Paging order of the queue.
    seq            BIGSERIAL UNIQUE
);
CREATE INDEX cases_state ON cases (state, seq);
CREATE INDEX cases_account ON cases (account, seq);

-- Where each conflict was seen: one row per reporting region.
CREATE TABLE sightings (
    case_id       UUID NOT NULL REFERENCES cases (id),
    region        TEXT NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    detected_at   TIMESTAMPTZ,
    -- The region's own status of the conflict, as last seen: open or resolved.
    status        TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    PRIMARY KEY (case_id, region)
);

CREATE TABLE staff (
    username      TEXT PRIMARY KEY CHECK (username ~ '^[a-z0-9._-]{1,64}$'),
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'resolver', 'approver', 'admin')),
    -- argon2id, PHC string.
    password_hash TEXT NOT NULL,
    failed_logins INT NOT NULL DEFAULT 0,
    locked_until  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Browser sessions: the cookie holds a random token; only its SHA-256 is stored.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES staff (username),
    csrf       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);

-- Tokens for automation, hashed, each scoped to a role no higher than its owner's.
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES staff (username),
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'resolver', 'approver', 'admin')),
    label      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE TABLE proposals (
    id               UUID PRIMARY KEY,
    case_id          UUID NOT NULL REFERENCES cases (id),
    action           TEXT NOT NULL CHECK (action IN ('reverse', 'adjust', 'accept', 'define')),
    -- What the action needs: {event_id} | {from, to, amount, currency} | {} | {currency, allow_negative}.
    params           JSONB NOT NULL,
    -- The money it moves (0 for accept and define): compared with the approval threshold.
    amount           BIGINT NOT NULL DEFAULT 0,
    reason           TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('proposed', 'approved', 'rejected', 'executing', 'done', 'failed')),
    proposed_by      TEXT NOT NULL REFERENCES staff (username),
    proposed_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    approvals_needed INT NOT NULL,
    approved_by      TEXT[] NOT NULL DEFAULT '{}',
    decided_at       TIMESTAMPTZ,
    rejected_by      TEXT,
    rejection_reason TEXT,
    -- The one region the compensating transfer is posted to, chosen once: retrying elsewhere before
    -- the first post replicates would execute it twice.
    posting_region   TEXT,
    -- The compensating transfer once that region acknowledged it.
    transfer         JSONB,
    failure          TEXT
);
-- One live proposal per case: a double click proposes once.
CREATE UNIQUE INDEX proposals_live ON proposals (case_id) WHERE state IN ('proposed', 'approved', 'executing');

-- Append-only; each entry's hash covers its content and the previous entry's hash.
CREATE TABLE audit (
    seq         BIGINT PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    case_id     UUID,
    proposal_id UUID,
    reason      TEXT,
    before      JSONB,
    after       JSONB,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_case ON audit (case_id, seq);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- Backfill from each region's GET /v1/conflicts: the cursor reached.
CREATE TABLE backfill_cursors (
    region TEXT PRIMARY KEY,
    after  BIGINT NOT NULL
);

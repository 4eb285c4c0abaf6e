-- Two-phase transfers: a pending transfer reserves money (the source's pending debits, the
-- destination's pending credits) until it is posted (all or part) or voided, by a client or by the
-- expiry in the region that created it. What may be spent is balance - pending_debits.
ALTER TABLE accounts ADD COLUMN pending_debits BIGINT NOT NULL DEFAULT 0,
                     ADD COLUMN pending_credits BIGINT NOT NULL DEFAULT 0;
-- The database's own guard, as for the balance: no local write leaves a customer account spending
-- reserved money. Remote apply may (two regions at once), which is flagged, never refused.
ALTER TABLE accounts DROP CONSTRAINT accounts_no_local_overdraft;
ALTER TABLE accounts ADD CONSTRAINT accounts_no_local_overdraft
    CHECK (allow_negative OR balance - pending_debits >= 0 OR replicated_overdraft);

-- Every pending transfer this region has applied, and how it was settled. `settlements` lists
-- each settlement applied here ({event_id, region, vector, posted, expired}); more than one only
-- after a race between regions, which is a `pending-settlement` conflict. The status follows from
-- them: posted if any posted (every post moved money), else voided or expired, else pending.
CREATE TABLE pending_transfers (
    id              UUID PRIMARY KEY,
    event_id        UUID NOT NULL,
    from_account    TEXT NOT NULL,
    to_account      TEXT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount > 0),
    currency        TEXT NOT NULL,
    metadata        JSONB NOT NULL DEFAULT '{}',
    idempotency_key TEXT,
    origin_region   TEXT NOT NULL,
    expires_at      TIMESTAMPTZ,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    posted_amount   BIGINT NOT NULL DEFAULT 0,
    settlements     JSONB NOT NULL DEFAULT '[]',
    from_vector     JSONB NOT NULL,
    to_vector       JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    settled_at      TIMESTAMPTZ
);
-- The expiry's scan: this region's pending transfers by deadline.
CREATE INDEX pending_transfers_due ON pending_transfers (origin_region, expires_at) WHERE status = 'pending';

ALTER TABLE conflicts DROP CONSTRAINT conflicts_kind_check;
ALTER TABLE conflicts ADD CONSTRAINT conflicts_kind_check
    CHECK (kind IN ('overdraft', 'duplicate-intent', 'account-definition', 'concurrent-benign', 'pending-settlement'));

-- Monitors compare `available` as balance less pending debits, and are judged per event on the
-- account before and after it (a hold fires `available` monitors; a transaction's legs are netted).
CREATE FUNCTION monitor_value(field TEXT, balance BIGINT, pending_debits BIGINT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE field WHEN 'balance' THEN balance WHEN 'available' THEN balance - pending_debits END
$$;

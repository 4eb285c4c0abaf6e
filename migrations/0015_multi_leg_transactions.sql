-- Multi-leg transactions (`POST /v1/transactions`): each leg is stored as a transfer (so entries,
-- `GET /v1/transfers/{id}` and reversals work per leg) naming its transaction and position. One
-- event carries all legs, so every region applies them together or not at all.
ALTER TABLE transfers ADD COLUMN transaction_id UUID, ADD COLUMN leg SMALLINT,
    ADD CONSTRAINT transfers_leg_of_a_transaction CHECK ((transaction_id IS NULL) = (leg IS NULL) AND (leg IS NULL OR leg >= 0));
-- Partial: plain transfers (nearly every row) add nothing to it.
CREATE INDEX transfers_transaction ON transfers (transaction_id, leg) WHERE transaction_id IS NOT NULL;

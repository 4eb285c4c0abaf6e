-- Remote apply holds an event only when it cannot apply yet, and records the one event it waits
-- for (account, region, counter: that region's next event on the account). Applying that event
-- wakes exactly the events waiting on it, through the index below, instead of rescanning every
-- held event after each apply. A row with no wait key (held before this migration) is examined
-- again at start-up.
-- `wait_needs` is the event's own count of that region on that account: events woken together are
-- decided in that order, so a chain held behind one missing event is applied in one round instead
-- of in the order it happened to arrive.
ALTER TABLE pending_events
    ADD COLUMN wait_account TEXT,
    ADD COLUMN wait_region TEXT,
    ADD COLUMN wait_counter BIGINT,
    ADD COLUMN wait_needs BIGINT;
CREATE INDEX pending_events_wait ON pending_events (wait_account, wait_region, wait_counter, wait_needs);

-- Replicated records that can never be applied as they are (unreadable, a balance out of range,
-- refused by a constraint): kept with the reason, for an operator, instead of blocking the
-- region. Events after one on its accounts stay held, waiting for it (their wait key names it).
CREATE TABLE dead_letters (
    id            BIGSERIAL PRIMARY KEY,
    event_id      UUID,
    origin_region TEXT,
    source        TEXT NOT NULL,
    payload       BYTEA,
    reason        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One row per event, or per unreadable record (its topic, partition and offset), however often
-- Kafka delivers it.
CREATE UNIQUE INDEX dead_letters_event ON dead_letters (event_id) WHERE event_id IS NOT NULL;
CREATE UNIQUE INDEX dead_letters_record ON dead_letters (source) WHERE event_id IS NULL;

-- Conflicts a finance team can act on. Concurrency on an account is judged per episode (the events
-- linked by "neither saw the other"), one record each, instead of one record per concurrent pair:
-- on a hot account every remote event made hundreds of pair records. An episode's members are the
-- per-account events labelled with its id; an episode merged into another is deleted and its
-- members relabelled. A key executed in several regions is one record listing every execution.
ALTER TABLE account_events ADD COLUMN episode UUID;
CREATE INDEX account_events_episode ON account_events (episode) WHERE episode IS NOT NULL;

ALTER TABLE conflicts
    -- The events named, in event-id order: [{event_id, region, vector}], for pair and key
    -- conflicts (an episode's members are in account_events).
    ADD COLUMN events JSONB NOT NULL DEFAULT '[]',
    ADD COLUMN event_count BIGINT NOT NULL DEFAULT 2,
    -- For an episode: its smallest event id (which names it), its members' vectors joined, and the
    -- account's balance over that past.
    ADD COLUMN first_event UUID,
    ADD COLUMN joint_vector JSONB,
    ADD COLUMN joint_balance BIGINT,
    ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Paging order of GET /v1/conflicts.
    ADD COLUMN seq BIGSERIAL;
UPDATE conflicts SET events = jsonb_build_array(
    jsonb_build_object('event_id', event_a, 'region', region_a, 'vector', vector_a),
    jsonb_build_object('event_id', event_b, 'region', region_b, 'vector', vector_b));
ALTER TABLE conflicts
    DROP COLUMN event_a, DROP COLUMN region_a, DROP COLUMN vector_a,
    DROP COLUMN event_b, DROP COLUMN region_b, DROP COLUMN vector_b,
    ADD CONSTRAINT conflicts_status CHECK (status IN ('open', 'resolved'));
CREATE UNIQUE INDEX conflicts_seq ON conflicts (seq);
CREATE INDEX conflicts_account ON conflicts (account_id, seq);

-- Two regions that open one id with different attributes freeze it everywhere until the conflict
-- is resolved, and money posted under a definition in another currency than the winning one is
-- kept apart, in its currency ({"EUR": 4000}): a definition never changes money.
ALTER TABLE accounts
    ADD COLUMN frozen BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN foreign_balances JSONB NOT NULL DEFAULT '{}';

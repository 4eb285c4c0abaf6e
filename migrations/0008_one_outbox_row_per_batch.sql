-- A batch of the committer writes one outbox row, however many records it publishes: the event and
-- partition key of each record, in order, in two arrays. One row per record (two per transfer),
-- with its index entries and the publisher's marking of each, was a fifth of the WAL at 2,500
-- transfers/s. A record's event type and traceparent are its event's, in `ledger_events`. Rows of
-- one record (conflict records, and rows written before this migration) keep their columns.
ALTER TABLE outbox
    ADD COLUMN record_events UUID[],
    ADD COLUMN record_keys TEXT[],
    ALTER COLUMN event_id DROP NOT NULL,
    ALTER COLUMN partition_key DROP NOT NULL,
    ALTER COLUMN event_type DROP NOT NULL,
    ADD CONSTRAINT outbox_one_record_or_a_batch CHECK (
        CASE WHEN record_events IS NULL
             THEN event_id IS NOT NULL AND partition_key IS NOT NULL AND event_type IS NOT NULL AND record_keys IS NULL
             ELSE event_id IS NULL AND payload IS NULL
                  AND cardinality(record_events) > 0 AND cardinality(record_events) = cardinality(record_keys)
        END);

-- Every record of the outbox, one row each, in publishing order within its row.
CREATE VIEW outbox_records AS
SELECT o.id, r.n AS position, r.event_id, o.topic, r.partition_key,
       COALESCE(o.event_type, e.event_type) AS event_type,
       COALESCE(o.payload, e.payload) AS payload,
       COALESCE(o.traceparent, e.traceparent) AS traceparent,
       o.created_at, o.published_at
FROM outbox o
CROSS JOIN LATERAL unnest(COALESCE(o.record_events, ARRAY[o.event_id]), COALESCE(o.record_keys, ARRAY[o.partition_key]))
    WITH ORDINALITY AS r(event_id, partition_key, n)
LEFT JOIN ledger_events e ON o.payload IS NULL AND e.event_id = r.event_id;

-- Indexes no query reads, each one more index insert per row on the write path (three per
-- transfer): nothing looks up events by aggregate (`GET /v1/accounts/{id}/entries` reads
-- `entries`), nor per-account events by event id (conflict detection reads them by account).
DROP INDEX ledger_events_aggregate;
DROP INDEX account_events_event;

-- Regions report a pending transfer settled in two regions at once (`pending-settlement`).
ALTER TABLE cases DROP CONSTRAINT cases_kind_check;
ALTER TABLE cases ADD CONSTRAINT cases_kind_check
    CHECK (kind IN ('overdraft', 'duplicate-intent', 'account-definition', 'concurrent-benign', 'pending-settlement'));

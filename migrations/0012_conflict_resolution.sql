-- Finance resolves a conflict in every region (POST /v1/conflicts/{id}/resolve, called by the
-- reconcile service once the resolution, and any compensating transfer, is visible everywhere).
-- A resolved conflict records when and how: the request's resolution (the reconcile case, and for
-- an account-definition conflict the definition that stands). A resolved record that changes
-- afterwards (its episode grows, its kind changes) is open again, with both cleared. Nothing set a
-- conflict to 'resolved' before this migration.
ALTER TABLE conflicts
    ADD COLUMN resolved_at TIMESTAMPTZ,
    ADD COLUMN resolution JSONB,
    ADD CONSTRAINT conflicts_resolution CHECK (
        CASE status WHEN 'resolved' THEN resolved_at IS NOT NULL AND resolution IS NOT NULL
                    ELSE resolved_at IS NULL AND resolution IS NULL END);

-- A key may carry the `reconcile` scope: only it reaches POST /v1/conflicts/{id}/resolve (the
-- reconcile service's key also has read and write).
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_check
    CHECK (scopes <@ ARRAY['read', 'write', 'replication', 'reconcile']::TEXT[]);

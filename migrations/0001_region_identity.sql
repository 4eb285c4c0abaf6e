-- The region a database belongs to. A node refuses to start against a database that belongs to
-- another region, so a misconfigured URL cannot mix two regions' ledgers.
CREATE TABLE region_identity (
    -- Always TRUE: the primary key makes this a single-row table.
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    region     TEXT NOT NULL CHECK (region ~ '^[a-z0-9-]{1,32}$'),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

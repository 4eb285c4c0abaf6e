-- Point-in-time reads name the version vector the account had after a given entry in this region.
-- Each region applies an origin's events on an account in that origin's order, so after entry k
-- the account counts, for each origin, the largest counter among its events applied by then:
-- `entry_seq` is the account's entry count after each event here (events without an entry, such as
-- openings, share the count of the entry before them), and one descent of this index per origin
-- finds it. Rows applied before this migration have none and are not counted.
ALTER TABLE account_events ADD COLUMN entry_seq BIGINT;
CREATE INDEX account_events_position ON account_events (account_id, origin_region, entry_seq);

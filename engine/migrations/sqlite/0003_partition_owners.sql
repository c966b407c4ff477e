-- Pulse embedded store, schema version 3: the owner generation of each bus
-- partition. Taking a partition (loading its checkpoint) bumps it; a commit
-- carries the generation its writer took and is refused when it is stale.
CREATE TABLE partition_owners (
    partition  INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL
);

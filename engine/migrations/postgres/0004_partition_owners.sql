-- Pulse PostgreSQL store, schema version 4 (every mode): the owner generation
-- of each bus partition. Taking a partition (loading its checkpoint) bumps it;
-- a commit carries the generation its writer took, checks it under a share
-- lock in its own transaction, and is refused when it is stale.
CREATE TABLE partition_owners (
    partition  BIGINT PRIMARY KEY,
    generation BIGINT NOT NULL
);

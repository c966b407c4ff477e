-- Pulse embedded store, schema version 5: the processor's marks of the batches
-- (idempotency keys) each partition has taken, committed with its offsets so a
-- batch sent again is dropped after a restart too.
CREATE TABLE batch_marks (
    partition INTEGER NOT NULL,
    batch_key BLOB    NOT NULL,
    state     BLOB    NOT NULL,
    PRIMARY KEY (partition, batch_key)
);

-- Pulse PostgreSQL store, schema version 6 (every mode): the processor's marks
-- of the batches (idempotency keys) each partition has taken, committed with
-- its offsets so a batch sent again is dropped after a restart too.
CREATE TABLE batch_marks (
    partition BIGINT NOT NULL,
    batch_key BYTEA  NOT NULL,
    state     BYTEA  NOT NULL,
    PRIMARY KEY (partition, batch_key)
);

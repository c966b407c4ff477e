-- Pulse PostgreSQL store, schema version 3 (every mode): bus records the
-- processor could not decode, kept whole with the reason, committed in the
-- same transaction as the offsets past them.
CREATE TABLE dead_letters (
    partition   BIGINT NOT NULL,
    "offset"    BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    payload     BYTEA  NOT NULL,
    received_at BIGINT NOT NULL, -- milliseconds since the epoch
    PRIMARY KEY (partition, "offset")
);
CREATE INDEX dead_letters_by_time ON dead_letters (received_at);

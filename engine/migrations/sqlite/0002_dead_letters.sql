-- Pulse embedded store, schema version 2: bus records the processor could not
-- decode, kept whole with the reason (committed with the offsets past them).
CREATE TABLE dead_letters (
    partition   INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    received_at INTEGER NOT NULL, -- milliseconds since the epoch
    PRIMARY KEY (partition, "offset")
) WITHOUT ROWID;
CREATE INDEX dead_letters_by_time ON dead_letters (received_at);

-- Pulse PostgreSQL store, schema version 5 (every mode): anomalies, the detectors' state and
-- the alert outbox, all written in the same transaction as the window results
-- they come from.

-- One row per alert: inserted when a rule fires on a window, turned
-- `resolved` (with resolved_ms) when it clears.
CREATE TABLE anomalies (
    id           TEXT    PRIMARY KEY,
    rule         TEXT    NOT NULL,
    metric       TEXT    NOT NULL,
    tags         JSONB   NOT NULL,
    window_label TEXT    NOT NULL,
    window_start BIGINT NOT NULL,
    window_end   BIGINT NOT NULL,
    value        DOUBLE PRECISION    NOT NULL,
    expected     DOUBLE PRECISION    NOT NULL,
    score        DOUBLE PRECISION    NOT NULL,
    state        TEXT    NOT NULL,
    message      TEXT    NOT NULL,
    resolved_ms  BIGINT
);
CREATE INDEX anomalies_by_metric ON anomalies (metric, window_start);
CREATE INDEX anomalies_by_start ON anomalies (window_start);

-- Each rule's memory of each series (history, streaks, firing alert), per
-- bus partition so it moves with the partition.
CREATE TABLE detector_states (
    partition BIGINT NOT NULL,
    rule      TEXT    NOT NULL,
    series_id BIGINT NOT NULL,
    state     BYTEA    NOT NULL,
    PRIMARY KEY (partition, rule, series_id)
);

-- What is still to be told to each receiver (and the .anomalies topic):
-- one row per anomaly, state and receiver, marked sent once delivered.
CREATE TABLE anomaly_outbox (
    seq          BIGSERIAL PRIMARY KEY,
    partition    BIGINT NOT NULL,
    anomaly_id   TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    receiver     TEXT    NOT NULL,
    body         TEXT    NOT NULL, -- the anomaly as JSON, as it was then
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    sent_ms      BIGINT,
    UNIQUE (anomaly_id, state, receiver)
);
CREATE INDEX anomaly_outbox_pending ON anomaly_outbox (partition, seq) WHERE sent_ms IS NULL;

-- Pulse PostgreSQL store, schema version 1: the tables that are the same in
-- every mode. Runs with search_path set to the pipeline's schema
-- (pulse_<namespace>_<pipeline>), so every name here lives in that schema.

-- Every series ever seen: the full name and tags behind a series id, so an id
-- collision is visible instead of silently merging two series.
CREATE TABLE series (
    series_id BIGINT PRIMARY KEY,
    metric    TEXT   NOT NULL,
    tags      JSONB  NOT NULL -- object of tag key -> value
);
CREATE INDEX series_by_metric ON series (metric);
-- Tag filters are `tags @> '{"host":"web-01"}'`; jsonb_path_ops is smaller and
-- faster than the default operator class for exactly that operator.
CREATE INDEX series_by_tags ON series USING GIN (tags jsonb_path_ops);

-- The processor's progress: committed in the same transaction as the results.
CREATE TABLE open_windows (
    partition    BIGINT NOT NULL,
    series_id    BIGINT NOT NULL,
    window_label TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    state        BYTEA  NOT NULL,
    PRIMARY KEY (partition, series_id, window_label, window_start)
);

CREATE TABLE checkpoints (
    partition    BIGINT PRIMARY KEY,
    next_offset  BIGINT NOT NULL,
    max_event_ts BIGINT,
    watermark    BIGINT
);

CREATE TABLE late_points (
    metric       TEXT   NOT NULL,
    window_label TEXT   NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (metric, window_label)
);

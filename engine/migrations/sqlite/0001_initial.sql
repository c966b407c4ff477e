-- Pulse embedded store, schema version 1.

-- Every series ever seen: the full name and tags behind a series id, so an id
-- collision is visible instead of silently merging two series.
CREATE TABLE series (
    series_id INTEGER PRIMARY KEY,
    metric    TEXT NOT NULL,
    tags      TEXT NOT NULL -- JSON object, keys sorted
);
CREATE INDEX series_by_metric ON series (metric);

-- Closed windows, one row per series, window and start, with the sketch so any
-- set of rows can be merged again later.
CREATE TABLE window_results (
    metric       TEXT    NOT NULL,
    window_label TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    series_id    INTEGER NOT NULL,
    window_end   INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    sum          REAL    NOT NULL,
    min          REAL    NOT NULL,
    max          REAL    NOT NULL,
    last         REAL    NOT NULL,
    last_ts      INTEGER NOT NULL,
    sketch       BLOB    NOT NULL,
    PRIMARY KEY (metric, window_label, window_start, series_id)
) WITHOUT ROWID;
CREATE INDEX window_results_by_end ON window_results (window_end);

CREATE TABLE raw_points (
    series_id INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    value     REAL    NOT NULL
);
CREATE INDEX raw_points_by_series ON raw_points (series_id, ts);
CREATE INDEX raw_points_by_ts ON raw_points (ts);

-- The processor's progress: committed in the same transaction as the results.
CREATE TABLE open_windows (
    partition    INTEGER NOT NULL,
    series_id    INTEGER NOT NULL,
    window_label TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    state        BLOB    NOT NULL,
    PRIMARY KEY (partition, series_id, window_label, window_start)
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    partition    INTEGER PRIMARY KEY,
    next_offset  INTEGER NOT NULL,
    max_event_ts INTEGER,
    watermark    INTEGER
);

CREATE TABLE late_points (
    metric       TEXT    NOT NULL,
    window_label TEXT    NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (metric, window_label)
);

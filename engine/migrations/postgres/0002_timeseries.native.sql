-- Pulse PostgreSQL store, schema version 2, plain PostgreSQL: the two time
-- series tables are partitioned by day on their time column (milliseconds
-- since the epoch). The store creates daily partitions ahead (today .. +7 days)
-- and on demand before a commit writes into a new day; the DEFAULT partitions
-- are a safety net so that no write ever fails for a missing partition.
-- Retention drops whole partitions, then deletes leftover rows.

CREATE TABLE raw_points (
    series_id BIGINT           NOT NULL,
    ts        BIGINT           NOT NULL,
    value     DOUBLE PRECISION NOT NULL
) PARTITION BY RANGE (ts);
CREATE TABLE raw_points_default PARTITION OF raw_points DEFAULT;
CREATE INDEX raw_points_by_series ON raw_points (series_id, ts);

-- Closed windows, one row per series, window and start, with the sketch so any
-- set of rows can be merged again later. The primary key must contain the
-- partition column (window_start), which the natural key does.
CREATE TABLE window_results (
    metric       TEXT             NOT NULL,
    window_label TEXT             NOT NULL,
    window_start BIGINT           NOT NULL,
    series_id    BIGINT           NOT NULL,
    window_end   BIGINT           NOT NULL,
    count        BIGINT           NOT NULL,
    sum          DOUBLE PRECISION NOT NULL,
    min          DOUBLE PRECISION NOT NULL,
    max          DOUBLE PRECISION NOT NULL,
    last         DOUBLE PRECISION NOT NULL,
    last_ts      BIGINT           NOT NULL,
    sketch       BYTEA            NOT NULL,
    PRIMARY KEY (metric, window_label, window_start, series_id)
) PARTITION BY RANGE (window_start);
CREATE TABLE window_results_default PARTITION OF window_results DEFAULT;
-- The newest window of one series (latest with a tag filter).
CREATE INDEX window_results_by_series ON window_results (series_id, window_label, window_start);
-- The newest window end of a metric (the metrics list).
CREATE INDEX window_results_by_metric_end ON window_results (metric, window_end);

-- Pulse PostgreSQL store, schema version 2, with TimescaleDB: the two time
-- series tables are hypertables with one-day chunks on their time column
-- (milliseconds since the epoch, so the chunk interval is an integer).
--
-- Retention and compression policies are not migrations: the store installs
-- them at every start from its config (store/postgres/timescale.rs).

CREATE TABLE raw_points (
    series_id BIGINT           NOT NULL,
    ts        BIGINT           NOT NULL,
    value     DOUBLE PRECISION NOT NULL
);
SELECT create_hypertable('raw_points', 'ts',
    chunk_time_interval => 86400000::BIGINT, create_default_indexes => FALSE, if_not_exists => TRUE);
CREATE INDEX raw_points_by_series ON raw_points (series_id, ts);
CREATE INDEX raw_points_by_ts ON raw_points (ts);

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
);
SELECT create_hypertable('window_results', 'window_start',
    chunk_time_interval => 86400000::BIGINT, create_default_indexes => FALSE, if_not_exists => TRUE);
CREATE INDEX window_results_by_series ON window_results (series_id, window_label, window_start);
CREATE INDEX window_results_by_metric_end ON window_results (metric, window_end);
CREATE INDEX window_results_by_end ON window_results (window_end);

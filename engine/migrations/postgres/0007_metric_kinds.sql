-- Pulse PostgreSQL store, schema version 7 (every mode): metric kinds, and
-- views in the shape SQL and Grafana users know.

-- What a window's series counts (pulse.v1.MetricKind: 0 gauge, 1 counter,
-- 2 delta counter, 3 histogram), a counter's earliest point and its growth
-- from there to `last` (resets counted as Prometheus does, not extrapolated),
-- and the common percentiles of the sketch, so SQL reads them without
-- decoding it. Rows written before this version read as gauges without
-- percentiles.
ALTER TABLE window_results
    ADD COLUMN kind        INTEGER          NOT NULL DEFAULT 0,
    ADD COLUMN first_value DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN first_ts    BIGINT           NOT NULL DEFAULT -9223372036854775808,
    ADD COLUMN increase    DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN p50         DOUBLE PRECISION,
    ADD COLUMN p90         DOUBLE PRECISION,
    ADD COLUMN p95         DOUBLE PRECISION,
    ADD COLUMN p99         DOUBLE PRECISION;

-- The kind as a word, for the views.
CREATE FUNCTION metric_kind_name(kind INTEGER) RETURNS TEXT
    LANGUAGE SQL IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE kind WHEN 0 THEN 'gauge' WHEN 1 THEN 'counter'
                     WHEN 2 THEN 'delta_counter' WHEN 3 THEN 'histogram' END
$$;

-- Raw points as one table of the original schema:
--   SELECT ts, value FROM metrics
--   WHERE metric_name = 'cpu_usage' AND ts > now() - interval '5 minutes'
-- The series of the metric come from series_by_metric; the time condition is
-- an index condition on raw_points_by_series_time, whose expression is the
-- view's `ts` (to_timestamp is immutable, so the index can hold it).
CREATE INDEX raw_points_by_series_time ON raw_points (series_id, to_timestamp(ts / 1000.0));
CREATE VIEW metrics AS
SELECT s.metric                    AS metric_name,
       p.value                     AS value,
       to_timestamp(p.ts / 1000.0) AS ts,
       s.tags                      AS tags
FROM raw_points p
JOIN series s ON s.series_id = p.series_id;

-- Closed windows with readable columns: one row per series, window and start.
CREATE INDEX window_results_by_metric_time
    ON window_results (metric, to_timestamp(window_start / 1000.0));
CREATE VIEW metric_windows AS
SELECT r.metric                              AS metric_name,
       r.window_label                        AS window_label,
       to_timestamp(r.window_start / 1000.0) AS ts,
       to_timestamp(r.window_end / 1000.0)   AS ts_end,
       s.tags                                AS tags,
       metric_kind_name(r.kind)              AS kind,
       r.count                               AS count,
       r.sum                                 AS sum,
       r.min                                 AS min,
       r.max                                 AS max,
       r.sum / NULLIF(r.count, 0)            AS avg,
       r.last                                AS last,
       r.increase                            AS increase,
       r.p50                                 AS p50,
       r.p90                                 AS p90,
       r.p95                                 AS p95,
       r.p99                                 AS p99,
       r.sketch                              AS sketch
FROM window_results r
JOIN series s ON s.series_id = r.series_id;

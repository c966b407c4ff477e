-- Pulse embedded store, schema version 6: metric kinds, and the views of the
-- PostgreSQL store (times as RFC 3339 text, tags as JSON text).

-- What a window's series counts (pulse.v1.MetricKind: 0 gauge, 1 counter,
-- 2 delta counter, 3 histogram), a counter's earliest point and its growth
-- from there to `last` (resets counted as Prometheus does, not extrapolated),
-- and the common percentiles of the sketch, so SQL reads them without
-- decoding it. Rows written before this version read as gauges.
ALTER TABLE window_results ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE window_results ADD COLUMN first_value REAL NOT NULL DEFAULT 0;
ALTER TABLE window_results ADD COLUMN first_ts INTEGER NOT NULL DEFAULT -9223372036854775808;
ALTER TABLE window_results ADD COLUMN increase REAL NOT NULL DEFAULT 0;
ALTER TABLE window_results ADD COLUMN p50 REAL;
ALTER TABLE window_results ADD COLUMN p90 REAL;
ALTER TABLE window_results ADD COLUMN p95 REAL;
ALTER TABLE window_results ADD COLUMN p99 REAL;

CREATE VIEW metrics AS
SELECT s.metric AS metric_name,
       p.value  AS value,
       strftime('%Y-%m-%dT%H:%M:%fZ', p.ts / 1000.0, 'unixepoch') AS ts,
       s.tags   AS tags
FROM raw_points p
JOIN series s ON s.series_id = p.series_id;

CREATE VIEW metric_windows AS
SELECT r.metric       AS metric_name,
       r.window_label AS window_label,
       strftime('%Y-%m-%dT%H:%M:%fZ', r.window_start / 1000.0, 'unixepoch') AS ts,
       strftime('%Y-%m-%dT%H:%M:%fZ', r.window_end / 1000.0, 'unixepoch') AS ts_end,
       s.tags         AS tags,
       CASE r.kind WHEN 0 THEN 'gauge' WHEN 1 THEN 'counter'
                   WHEN 2 THEN 'delta_counter' WHEN 3 THEN 'histogram' END AS kind,
       r.count        AS count,
       r.sum          AS sum,
       r.min          AS min,
       r.max          AS max,
       r.sum / NULLIF(r.count, 0) AS avg,
       r.last         AS last,
       r.increase     AS increase,
       r.p50          AS p50,
       r.p90          AS p90,
       r.p95          AS p95,
       r.p99          AS p99,
       r.sketch       AS sketch
FROM window_results r
JOIN series s ON s.series_id = r.series_id;

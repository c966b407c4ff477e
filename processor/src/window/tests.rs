use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pulse_core::{Point, Tags, WindowSpec};
use pulse_engine::store::{Checkpoint, OpenWindowKey, OpenWindowState, PartitionCheckpoint};

use super::Aggregator;

const LATENESS: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(10);

fn point(host: &str, value: f64, ts_secs: i64) -> Point {
    let tags: Tags = [("host".to_string(), host.to_string())].into();
    Point {
        metric: "cpu".into(),
        tags,
        value,
        timestamp_ms: ts_secs * 1000,
        kind: pulse_core::MetricKind::Gauge,
        sketch: None,
    }
}

fn minute_windows() -> Vec<WindowSpec> {
    vec![WindowSpec::tumbling(Duration::from_secs(60)).unwrap()]
}

fn fresh(windows: Vec<WindowSpec>, partitions: &[u32]) -> Aggregator {
    let mut a = Aggregator::new(windows, LATENESS, IDLE).unwrap();
    a.assign(partitions, &Checkpoint::default(), Instant::now())
        .unwrap();
    a
}

#[test]
fn window_closes_once_the_watermark_passes_its_end() {
    let mut a = fresh(minute_windows(), &[0]);
    let now = Instant::now();
    a.ingest(0, 0, None, point("a", 1.0, 0), now);
    a.ingest(0, 1, None, point("a", 3.0, 59), now);
    a.ingest(0, 2, None, point("a", 5.0, 89), now); // watermark 59s: [0,60) still open
    assert_eq!(a.close_ready(), 0);
    a.ingest(0, 3, None, point("a", 7.0, 90), now); // watermark 60s: closes [0,60)
    assert_eq!(a.close_ready(), 1);
    let c = a.checkpoint(None);
    assert_eq!(c.commit.results.len(), 1);
    let r = &c.commit.results[0];
    assert_eq!(
        (r.start_ms, r.end_ms, r.agg.count, r.agg.sum, r.agg.last),
        (0, 60_000, 2, 4.0, 3.0)
    );
    assert_eq!(c.offsets, vec![(0, 4)]);
    assert_eq!(
        c.commit.raw_points.len(),
        4,
        "raw points are kept for every record"
    );
}

#[test]
fn late_point_is_counted_and_goes_into_a_partial_of_its_closed_window() {
    let mut a = fresh(minute_windows(), &[0]);
    let now = Instant::now();
    a.ingest(0, 0, None, point("a", 1.0, 10), now);
    a.ingest(0, 1, None, point("a", 1.0, 200), now); // watermark 170s
    let late = a.ingest(0, 2, None, point("a", 100.0, 20), now);
    assert_eq!((late.windows, late.late, late.expired), (0, 1, 0));
    let on_time = a.ingest(0, 3, None, point("a", 2.0, 175), now); // window [120,180) still open
    assert_eq!((on_time.windows, on_time.late), (1, 0));
    a.close_ready();
    let c = a.checkpoint(None);
    let (closed, partials) = c.commit.results.split_at(c.closed);
    let first = closed.iter().find(|r| r.start_ms == 0).unwrap();
    assert_eq!(
        first.agg.max, 1.0,
        "the closed window is written as it closed"
    );
    let partial: Vec<_> = partials
        .iter()
        .map(|r| (r.window.as_str(), r.start_ms, r.agg.count, r.agg.max))
        .collect();
    assert_eq!(
        partial,
        [("1m", 0, 1, 100.0)],
        "the late point goes to the store in a partial of its window, to be merged"
    );
    assert_eq!(c.commit.late.len(), 1);
    assert_eq!(
        (c.commit.late[0].window.as_str(), c.commit.late[0].count),
        ("1m", 1)
    );
    assert!(
        a.checkpoint(None).commit.results.is_empty(),
        "a partial is handed over once"
    );
}

#[test]
fn a_late_point_beyond_the_horizon_is_counted_but_reaches_no_window() {
    let mut a = Aggregator::new(minute_windows(), LATENESS, IDLE)
        .unwrap()
        .bound_event_time(Duration::from_secs(5), Duration::from_secs(600));
    a.assign(&[0], &Checkpoint::default(), Instant::now())
        .unwrap();
    let now = Instant::now();
    a.ingest(0, 0, None, point("a", 1.0, 3_600), now); // watermark 3 570 s
    // [2 940, 3 000) ended 570 s before the watermark: within 10 minutes.
    let within = a.ingest(0, 1, None, point("a", 2.0, 2_950), now);
    // [2 880, 2 940) ended 630 s before it: beyond.
    let beyond = a.ingest(0, 2, None, point("a", 3.0, 2_930), now);
    assert_eq!((within.late, within.expired), (1, 0));
    assert_eq!((beyond.late, beyond.expired), (1, 1));
    let c = a.checkpoint(None);
    let partials: Vec<_> = c.commit.results[c.closed..]
        .iter()
        .map(|r| (r.start_ms, r.agg.count))
        .collect();
    assert_eq!(partials, [(2_940_000, 1)]);
    assert_eq!(c.commit.late[0].count, 2, "both are counted late");
    assert_eq!(c.commit.raw_points.len(), 3, "and both are kept raw");
}

#[test]
fn a_point_from_a_fast_clock_does_not_make_the_other_series_late() {
    // Issue 11, item 1: one point 540 s ahead, then 1 000 current points
    // over 100 hosts on the same partition.
    let now_ms = 1_800_000_000_000;
    let mut a = Aggregator::new(WindowSpec::defaults(), LATENESS, IDLE)
        .unwrap()
        .bound_event_time(Duration::from_secs(5), Duration::from_secs(86_400));
    a.assign(&[0], &Checkpoint::default(), Instant::now())
        .unwrap();
    a.set_wall_clock(now_ms);
    let now = Instant::now();
    let ahead = a.ingest(0, 0, None, point("fast", 1.0, now_ms / 1000 + 540), now);
    assert_eq!(
        ahead.windows, 3,
        "the future point is aggregated into its windows"
    );
    let mut late = 0;
    for i in 0..1000u64 {
        let host = format!("h{:03}", i % 100);
        let ts = now_ms / 1000 - 2 + (i as i64 % 3);
        late += a.ingest(0, i + 1, None, point(&host, 1.0, ts), now).late;
    }
    assert_eq!(late, 0, "no current point is late");
    assert_eq!(
        a.progress()[0].2,
        Some(now_ms + 5_000 - LATENESS.as_millis() as i64),
        "the watermark stops at the wall clock plus the skew, minus the lateness"
    );
}

#[test]
fn sliding_window_point_lands_in_every_overlapping_window() {
    let sliding = WindowSpec::sliding(Duration::from_secs(300), Duration::from_secs(60)).unwrap();
    let mut a = fresh(vec![sliding], &[0]);
    let got = a.ingest(0, 0, None, point("a", 1.0, 1000), Instant::now());
    assert_eq!(got.windows, 5);
    assert_eq!(a.open_windows(), 5);
}

#[test]
fn idle_partition_closes_windows_by_wall_clock() {
    let mut a = fresh(minute_windows(), &[0]);
    let start = Instant::now();
    a.ingest(0, 0, None, point("a", 1.0, 1_000), start);
    assert_eq!(
        a.advance(2_000_000, start + Duration::from_secs(5), &[0]),
        0,
        "not idle yet"
    );
    assert_eq!(
        a.advance(2_000_000, start + Duration::from_secs(10), &[0]),
        1
    );
}

#[test]
fn a_partition_with_unread_records_is_not_idle() {
    let mut a = fresh(minute_windows(), &[0, 1]);
    let start = Instant::now();
    a.ingest(0, 0, None, point("a", 1.0, 1_000), start);
    a.ingest(1, 0, None, point("b", 1.0, 1_000), start);
    let later = start + Duration::from_secs(60);
    assert_eq!(
        a.advance(2_000_000, later, &[1]),
        1,
        "the caught-up partition follows the wall clock"
    );
    assert_eq!(
        a.advance(2_000_000, later, &[]),
        0,
        "the one with records waiting keeps its event-time watermark"
    );
    let outcome = a.ingest(0, 1, None, point("a", 2.0, 1_010), later);
    assert_eq!(outcome.windows, 1, "so its waiting records are not late");
}

#[test]
fn the_same_id_with_another_name_is_a_collision_not_a_merge() {
    // xxh64 collisions cannot be produced on demand, so plant a checkpointed
    // window under host=a's id that belongs to another series.
    let p = point("a", 2.0, 11);
    let mut other = pulse_core::Aggregate::new();
    other.add(1.0, 10_000);
    let state = pulse_core::codec::state::encode_state("not_cpu", &Tags::new(), &other, &[]);
    let key = OpenWindowKey {
        partition: 0,
        series_id: p.series_id(),
        window: "1m".into(),
        start_ms: 0,
    };
    let checkpoint = Checkpoint {
        claims: vec![],
        partitions: vec![],
        open: vec![OpenWindowState { key, state }],
        marks: vec![],
    };
    let mut a = Aggregator::new(minute_windows(), LATENESS, IDLE).unwrap();
    a.assign(&[0], &checkpoint, Instant::now()).unwrap();
    let got = a.ingest(0, 0, None, p, Instant::now());
    assert!(got.collision);
    assert_eq!(got.windows, 0);
}

/// host, start, window, count, sum, min, max, last.
type ResultRow = (String, i64, String, u64, f64, f64, f64, f64);

/// Applies commits the way a store would, for restart tests: results are
/// merged into the stored window of their key.
#[derive(Default)]
struct FakeStore {
    partitions: HashMap<u32, PartitionCheckpoint>,
    open: HashMap<OpenWindowKey, Vec<u8>>,
    stored: BTreeMap<(String, i64, String), pulse_core::Aggregate>,
    results: Vec<ResultRow>,
    late: HashMap<(String, String), u64>,
}

impl FakeStore {
    fn apply(&mut self, a: &mut Aggregator) {
        let c = a.checkpoint(None).commit;
        for p in c.partitions {
            self.partitions.insert(p.partition, p);
        }
        for k in c.delete_open {
            self.open.remove(&k);
        }
        for o in c.upsert_open {
            self.open.insert(o.key, o.state);
        }
        for r in c.results {
            self.stored
                .entry((r.tags["host"].clone(), r.start_ms, r.window))
                .or_default()
                .merge(&r.agg);
        }
        self.results = self
            .stored
            .iter()
            .map(|((host, start, window), a)| {
                (
                    host.clone(),
                    *start,
                    window.clone(),
                    a.count,
                    a.sum,
                    a.min,
                    a.max,
                    a.last,
                )
            })
            .collect();
        for l in c.late {
            *self.late.entry((l.metric, l.window)).or_default() += l.count;
        }
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            claims: vec![],
            partitions: self.partitions.values().copied().collect(),
            open: self
                .open
                .iter()
                .map(|(k, v)| OpenWindowState {
                    key: k.clone(),
                    state: v.clone(),
                })
                .collect(),
            marks: vec![],
        }
    }
}

fn stream() -> Vec<Point> {
    // Out-of-order and late points over several windows and hosts.
    let mut points = Vec::new();
    for i in 0..2000i64 {
        let host = ["a", "b", "c"][(i % 3) as usize];
        let jitter = [0, -7, 3, -25, 11][(i % 5) as usize];
        let ts = 10_000 + i * 2 + jitter + if i % 97 == 0 { -400 } else { 0 };
        points.push(point(host, (i % 17) as f64 * 0.5, ts));
    }
    points
}

fn run(crash_at: &[usize]) -> FakeStore {
    let windows = vec![
        WindowSpec::tumbling(Duration::from_secs(60)).unwrap(),
        WindowSpec::sliding(Duration::from_secs(300), Duration::from_secs(60)).unwrap(),
    ];
    let now = Instant::now();
    let mut store = FakeStore::default();
    let mut a = fresh(windows.clone(), &[0]);
    let points = stream();
    let mut offset = 0usize;
    let mut crashes: Vec<usize> = crash_at.to_vec();
    while offset < points.len() {
        a.ingest(0, offset as u64, None, points[offset].clone(), now);
        offset += 1;
        if offset.is_multiple_of(150) {
            a.close_ready();
            store.apply(&mut a);
        }
        if let Some(i) = crashes.iter().position(|c| *c == offset) {
            crashes.remove(i);
            // Crash: everything since the last checkpoint is lost; restart from the store.
            a = Aggregator::new(windows.clone(), LATENESS, IDLE).unwrap();
            let seeks = a.assign(&[0], &store.checkpoint(), now).unwrap();
            offset = seeks[0].1 as usize;
        }
    }
    a.ingest(0, offset as u64, None, point("a", 0.0, 1_000_000), now);
    a.close_ready();
    store.apply(&mut a);
    store.results.sort_by(|x, y| x.partial_cmp(y).unwrap());
    store
}

#[test]
fn crash_and_resume_from_checkpoints_gives_the_uninterrupted_results() {
    let clean = run(&[]);
    let crashed = run(&[400, 401, 999, 1200, 1777]);
    assert!(clean.results.len() > 50);
    assert_eq!(clean.results, crashed.results);
    assert_eq!(clean.late, crashed.late);
    assert!(
        clean.late.values().sum::<u64>() > 0,
        "the stream does contain late points"
    );
}

fn defs(labels: &[(u64, u64)]) -> Vec<WindowSpec> {
    labels
        .iter()
        .map(|&(size, slide)| {
            WindowSpec::sliding(Duration::from_secs(size), Duration::from_secs(slide)).unwrap()
        })
        .collect()
}

/// Every window each point falls into, filled point by point: what the
/// window chain, with the late points merged into their closed windows, must
/// reproduce.
fn direct(windows: &[WindowSpec], points: &[Point]) -> Vec<ResultRow> {
    let mut open: BTreeMap<(String, String, i64), pulse_core::Aggregate> = BTreeMap::new();
    for p in points {
        for w in windows {
            for start in w.starts(p.timestamp_ms) {
                open.entry((p.tags["host"].clone(), w.label.clone(), start))
                    .or_default()
                    .add(p.value, p.timestamp_ms);
            }
        }
    }
    let mut rows: Vec<ResultRow> = open
        .into_iter()
        .map(|((host, window, start), a)| {
            (host, start, window, a.count, a.sum, a.min, a.max, a.last)
        })
        .collect();
    rows.sort_by(|x, y| x.partial_cmp(y).unwrap());
    rows
}

/// Runs `points` through an aggregator with `before`, checkpointing every 150
/// points; from `switch_at` on, a restarted one with `after` continues from
/// the last checkpoint. A final far-future point closes everything.
fn run_switching(
    points: &[Point],
    before: &[WindowSpec],
    after: &[WindowSpec],
    switch_at: usize,
) -> FakeStore {
    let now = Instant::now();
    let mut store = FakeStore::default();
    let mut a = fresh(before.to_vec(), &[0]);
    let mut offset = 0;
    let mut switched = false;
    while offset < points.len() {
        // Records carry their series id as key; every 13th claims a wrong one.
        let point = points[offset].clone();
        let key = if offset % 13 == 0 {
            pulse_core::SeriesId(offset as u64)
        } else {
            point.series_id()
        };
        a.ingest(0, offset as u64, Some(key), point, now);
        offset += 1;
        if offset % 150 == 0 {
            a.close_ready();
            store.apply(&mut a);
        }
        if offset == switch_at && !switched {
            switched = true;
            a = Aggregator::new(after.to_vec(), LATENESS, IDLE).unwrap();
            offset = a.assign(&[0], &store.checkpoint(), now).unwrap()[0].1 as usize;
        }
    }
    let end = points.iter().map(|p| p.timestamp_ms).max().unwrap() + 86_400_000;
    a.ingest(0, offset as u64, None, point("z", 0.0, end / 1000), now);
    a.close_ready();
    store.apply(&mut a);
    store.results.retain(|r| r.0 != "z");
    store.results.sort_by(|x, y| x.partial_cmp(y).unwrap());
    store
}

fn rows_of<'a>(rows: &'a [ResultRow], window: &'a str) -> Vec<&'a ResultRow> {
    rows.iter().filter(|r| r.2 == window).collect()
}

#[test]
fn the_window_chain_gives_what_adding_each_point_to_every_window_gives() {
    // 1m feeds 5m and the sliding 10m/1m, 5m feeds 15m; 7m stands alone.
    let windows = defs(&[(60, 60), (300, 300), (900, 900), (600, 60), (420, 420)]);
    // Some points 75 s behind: late for their 1m window, often not for 5m.
    let mut points = stream();
    for p in points.iter_mut().step_by(41) {
        p.timestamp_ms -= 75_000;
    }
    let got = run_switching(&points, &windows, &windows, usize::MAX);
    let want = direct(&windows, &points);
    assert!(want.len() > 100, "{} windows", want.len());
    assert_eq!(got.results, want);
    // Points late for 1m but not for 5m reach 5m directly.
    let late_1m = got
        .late
        .get(&("cpu".into(), "1m".into()))
        .copied()
        .unwrap_or(0);
    let late_5m = got
        .late
        .get(&("cpu".into(), "5m".into()))
        .copied()
        .unwrap_or(0);
    assert!(late_1m > late_5m, "late 1m {late_1m}, late 5m {late_5m}");
}

#[test]
fn quantiles_of_a_chained_window_equal_those_of_direct_adds() {
    let windows = defs(&[(60, 60), (300, 300)]);
    let mut a = fresh(windows, &[0]);
    let now = Instant::now();
    let mut reference = pulse_core::Aggregate::new();
    for i in 0..290 {
        let value = f64::from((i * 37) % 101) * 1.5;
        reference.add(value, i64::from(i) * 1000);
        a.ingest(0, i as u64, None, point("a", value, i64::from(i)), now);
    }
    a.ingest(0, 290, None, point("a", 0.0, 10_000), now);
    a.close_ready();
    let results = a.checkpoint(None).commit.results;
    let five = results.iter().find(|r| r.window == "5m").unwrap();
    for kind in pulse_core::AggKind::defaults() {
        assert_eq!(five.agg.value(kind), reference.value(kind), "{kind}");
    }
}

#[test]
fn changing_the_window_list_across_a_restart_loses_and_doubles_nothing() {
    let points = stream();
    let full = defs(&[(60, 60), (300, 300), (900, 900)]);
    let clean = run_switching(&points, &full, &full, usize::MAX);
    for (after, kept) in [
        // An intermediate definition removed: 1m windows due in 5m go on to 15m.
        (defs(&[(60, 60), (900, 900)]), vec!["1m", "15m"]),
        // The head of the chain removed: 5m windows are fed directly from now on.
        (defs(&[(300, 300), (900, 900)]), vec!["5m", "15m"]),
        // A definition added: the existing ones are unchanged.
        (
            defs(&[(60, 60), (300, 300), (900, 900), (1800, 1800)]),
            vec!["1m", "5m", "15m"],
        ),
    ] {
        for switch_at in [300, 1001] {
            let switched = run_switching(&points, &full, &after, switch_at);
            for window in &kept {
                assert_eq!(
                    rows_of(&switched.results, window),
                    rows_of(&clean.results, window),
                    "{window} after switching to {:?} at {switch_at}",
                    after.iter().map(|w| w.label.as_str()).collect::<Vec<_>>()
                );
            }
        }
    }
}

#[test]
fn an_undecodable_record_becomes_a_dead_letter_committed_with_the_offset_past_it() {
    let mut a = fresh(minute_windows(), &[0]);
    let now = Instant::now();
    a.ingest(0, 0, None, point("a", 1.0, 0), now);
    a.dead_letter(0, 1, "unknown record format version 7".into(), vec![7, 1]);
    a.ingest(0, 2, None, point("a", 2.0, 1), now);
    let c = a.checkpoint(None);
    assert_eq!(c.offsets, vec![(0, 3)]);
    assert_eq!(c.commit.dead_letters.len(), 1);
    let letter = &c.commit.dead_letters[0];
    assert_eq!((letter.partition, letter.offset), (0, 1));
    assert_eq!(letter.payload, vec![7, 1]);
    assert_eq!(c.commit.raw_points.len(), 2, "the stream goes on around it");
    assert!(
        a.checkpoint(None).commit.dead_letters.is_empty(),
        "handed over once"
    );
}

#[test]
fn a_keyed_batch_is_taken_once_across_a_restart_until_its_horizon() {
    use pulse_core::idempotency::{BatchKey, BatchRef};

    use super::MarkPolicy;

    let policy = MarkPolicy {
        horizon_ms: 600_000,
        max_spans: 1_000,
    };
    let keyed = |index: u32| BatchRef {
        key: BatchKey([9; 16]),
        index,
        start: 0,
    };
    let now = Instant::now();
    let mut a = fresh(minute_windows(), &[0]).bound_marks(policy);
    let batch: Vec<Point> = (0..3).map(|i| point("a", 1.0, 100 + i)).collect();
    for (i, p) in batch.iter().enumerate() {
        assert!(a.admit(0, i as u64, &keyed(i as u32), p.timestamp_ms));
        a.ingest(0, i as u64, None, p.clone(), now);
    }
    let saved = a.checkpoint(None).commit;
    assert_eq!(saved.upsert_marks.len(), 1);

    // A new owner resumes from the checkpoint: the batch sent again is
    // passed over (its offsets still move on), a new point is taken.
    let mut b = Aggregator::new(minute_windows(), LATENESS, IDLE)
        .unwrap()
        .bound_marks(policy);
    let checkpoint = Checkpoint {
        partitions: saved.partitions.clone(),
        marks: saved.upsert_marks.clone(),
        ..Checkpoint::default()
    };
    b.assign(&[0], &checkpoint, now).unwrap();
    for (i, p) in batch.iter().enumerate() {
        assert!(!b.admit(0, 3 + i as u64, &keyed(i as u32), p.timestamp_ms));
    }
    assert_eq!(b.progress()[0].1, 6, "duplicates are read past");
    assert!(b.admit(0, 6, &keyed(3), 103_000));

    // Once the watermark is the horizon past the batch's newest point, the
    // mark is deleted (the gateway no longer takes points that old).
    b.ingest(0, 7, None, point("b", 1.0, 103 + 640), now);
    let pruned = b.checkpoint(None);
    assert_eq!(pruned.forgotten.expired, 1);
    assert_eq!(pruned.commit.delete_marks, [(0, [9; 16])]);
    assert_eq!(b.batch_keys(), 0);
}

//! The bench runs end to end at tiny sizes; no timing is asserted.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_bench_measures_every_stage_and_renders_a_table() {
    let args = BenchArgs {
        quick: true,
        ..BenchArgs::default()
    };
    let report = measure(&args).await.expect("the quick bench runs");
    // Sketch, window, window with anomaly rules, the two end-to-end rows and
    // the two gateway → Kafka rows (without and with limits) always; the store
    // and processor rows need PostgreSQL, which CI always has.
    let rows = report.rows.len();
    assert!((7..=9).contains(&rows), "{report:?}");
    if pulse_core::test_policy::under_ci() {
        assert_eq!(rows, 9, "{report:?}");
    }
    for row in &report.rows {
        assert!(row.rate.is_finite() && row.rate > 0.0, "{row:?}");
        assert!(
            row.reference_rate.is_finite() && row.reference_rate > 0.0,
            "{row:?}"
        );
    }
    let table = render(&report);
    assert!(
        table.contains("| what | rate | reference | reference rate | ratio | target |"),
        "{table}"
    );
    assert!(table.contains("Peak RSS"), "{table}");
}

#[test]
fn helpers_format_and_parse() {
    assert_eq!(thousands(2_000_000), "2,000,000");
    assert_eq!(thousands(999), "999");
    assert_eq!(rate(2_345_678.0, "points/s"), "2.35 M points/s");
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    let text = "# TYPE pulse_processor_points counter\npulse_processor_points_total 4000\npulse_processor_points_total_x 1\n";
    assert_eq!(
        e2e::parse_counter(text, "pulse_processor_points_total"),
        Some(4000)
    );
    assert_eq!(e2e::parse_counter(text, "missing"), None);
}

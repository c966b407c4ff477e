//! `pulse bench --only operator`: the MetricPipeline reconciler over many
//! pipelines against the operator's in-process API server (it answers every
//! request as the real one would: stored Secrets, echoed server-side applies,
//! status patches, Events) with in-memory topic and schema admins, so what is
//! measured is the reconciler itself: validation, rendering, building,
//! serialization, the kube client and the status logic.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use pulse_core::board::Boards;
use pulse_operator::build::{Cluster, pipeline_objects};
use pulse_operator::controller::{Context, pipeline};
use pulse_operator::crd::MetricPipeline;
use pulse_operator::fixtures::{FakeApi, FakeSchemaAdmin, FakeTopicAdmin, database_secret};
use pulse_operator::metrics::Metrics;
use pulse_operator::validate::validate_pipeline;

use super::{Report, Row, met, reset_peak_rss, status_kib, thousands};

/// Reconciles in flight at once (the controller's default is unbounded; a
/// real API server's client-side rate limit is what bounds it there).
const CONCURRENCY: usize = 16;
/// Wall-time and memory targets for 1,000 pipelines.
const TARGET_SECONDS: f64 = 60.0;
const TARGET_MIB: u64 = 100;

/// Reconciles `pipelines` finalized pipelines once each and reports the
/// wall time and the peak RSS.
pub async fn stage(pipelines: usize, report: &mut Report) -> Result<(), String> {
    eprintln!("bench: operator reconciles ({pipelines} MetricPipelines, fake API server)...");
    let (api, client) = FakeApi::start();
    api.insert(&database_secret());
    api.deployments_available(true);
    api.forget_requests();
    let ctx = Arc::new(Context::new(
        client.clone(),
        FakeTopicAdmin::new(),
        FakeSchemaAdmin::new(),
        Metrics::new(),
        "ghcr.io/pulse/pulse:bench".into(),
    ));
    let resources: Vec<MetricPipeline> = (0..pipelines)
        .map(|i| MetricPipeline::named(&format!("p{i:05}")).finalized())
        .collect();
    for resource in &resources {
        api.insert(resource);
    }
    let reset = reset_peak_rss();
    let start = Instant::now();
    let failures = futures::stream::iter(resources)
        .map(|resource| pipeline::reconcile(Arc::new(resource), ctx.clone()))
        .buffer_unordered(CONCURRENCY)
        .filter(|result| std::future::ready(result.is_err()))
        .count()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let peak_mib = status_kib("VmHWM:").map(|kib| kib / 1024);
    if failures > 0 {
        return Err(format!(
            "{failures} of {pipelines} reconciles failed against the fake API server"
        ));
    }
    let requests = api.answered();

    // Reference: the pure steps alone (validate and build, no I/O), the
    // floor under what the API round trips and the status logic add.
    let reference_start = Instant::now();
    let mut objects = 0usize;
    for i in 0..pipelines {
        let resource = MetricPipeline::named(&format!("p{i:05}")).finalized();
        let validated = validate_pipeline(&resource).map_err(|e| e.to_string())?;
        let built = pipeline_objects(
            &validated,
            "ghcr.io/pulse/pulse:bench",
            &Boards::default(),
            Cluster::default(),
        );
        objects += usize::from(built.gateway.metadata.name.is_some());
    }
    let reference_seconds = reference_start.elapsed().as_secs_f64();
    if objects != pipelines {
        return Err("the builders returned an unnamed Deployment".into());
    }

    let scaled = seconds * 1000.0 / pipelines as f64;
    let time_ok = scaled <= TARGET_SECONDS;
    let memory_ok = peak_mib.is_some_and(|mib| mib <= TARGET_MIB);
    report.rows.push(Row {
        what: format!(
            "Operator: reconcile {} finalized MetricPipelines (validate, topics, schema, every object server-side applied, \
             status), {CONCURRENCY} at a time, in-process API server",
            thousands(pipelines)
        ),
        rate: pipelines as f64 / seconds,
        unit: "pipelines/s",
        reference: "the pure steps alone: `validate_pipeline` + `pipeline_objects`".into(),
        reference_rate: pipelines as f64 / reference_seconds,
        target: format!(
            "≤ 60 s per 1,000: {}; ≤ 100 MiB: {}",
            met(time_ok),
            met(memory_ok)
        ),
    });
    let peak = peak_mib.map_or_else(|| "n/a".into(), |mib| format!("{mib} MiB"));
    let mark = if reset {
        "since the stage started"
    } else {
        "whole process (the peak mark could not be reset)"
    };
    report.notes.push(format!(
        "Operator: {} reconciles took {seconds:.2} s ({:.2} ms each, {} API requests); peak RSS (VmHWM, {mark}) {peak}.",
        thousands(pipelines),
        seconds * 1000.0 / pipelines as f64,
        thousands(requests)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_operator_stage_reconciles_every_pipeline_and_reports_a_row() {
        let mut report = Report::default();
        stage(20, &mut report).await.expect("the stage runs");
        assert_eq!(report.rows.len(), 1, "{report:?}");
        let row = &report.rows[0];
        assert!(row.rate.is_finite() && row.rate > 0.0, "{row:?}");
        assert!(row.target.contains("≤ 60 s"), "{row:?}");
        // Every pipeline made the same requests, and more than its applies.
        let requests: usize = report.notes[0]
            .split(" API requests")
            .next()
            .and_then(|head| head.rsplit(", ").next())
            .and_then(|n| n.replace(',', "").parse().ok())
            .expect("the note counts the API requests");
        assert!(
            requests.is_multiple_of(20) && requests >= 20 * 10,
            "{report:?}"
        );
    }
}

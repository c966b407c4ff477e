//! Property-based contract tests: schemathesis (PyPI, installed by `.ci/run`
//! into `tools/schemathesis/venv`) reads each listener's served
//! `/openapi.json` and sends generated requests to every route, checking that
//! no answer is a server error and that every status, content type and body
//! is one the document declares. Bounded: `MAX_EXAMPLES` per route, a time
//! budget per listener.
//!
//! Without schemathesis the test is skipped, except under `CI`, where it fails.

use std::path::PathBuf;
use std::process::Command;

use pulse_core::config::Config;

mod common;

/// Generated requests per route and phase.
const MAX_EXAMPLES: &str = "10";
/// Seconds one listener's run may take at most (six listeners: about two
/// minutes in all).
const MAX_TIME: &str = "20";

const CHECKS: &str = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance";

fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("PULSE_SCHEMATHESIS").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tools/schemathesis/venv/bin/schemathesis")
        },
        PathBuf::from,
    );
    if path.exists() {
        return Some(path);
    }
    pulse_core::test_policy::skip_or_fail(
        &format!("schemathesis is missing at {}", path.display()),
        "`.ci/run` installs it (or set PULSE_SCHEMATHESIS)",
    );
    None
}

/// Runs schemathesis against the document served at `base/openapi.json`;
/// `extra` excludes what cannot be fuzzed (a stream that never ends).
fn run(schemathesis: &PathBuf, base: &str, extra: &[&str]) {
    let reports = tempfile::tempdir().unwrap();
    let output = Command::new(schemathesis)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES, "--max-time", MAX_TIME])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "1", "--seed", "20", "--request-timeout", "10"])
        .args(["--suppress-health-check", "all"])
        .arg("--report-dir")
        .arg(reports.path())
        // Its cache (`.schemathesis/`) goes there too, not into the repository.
        .current_dir(reports.path())
        .args(extra)
        // NDJSON bodies: sent as the text generated for them.
        .env("SCHEMATHESIS_HOOKS", "ndjson_hooks")
        .env(
            "PYTHONPATH",
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/schemathesis"),
        )
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("schemathesis against {base}:\n{text}");
    assert!(
        output.status.success(),
        "schemathesis found answers that contradict the document of {base}:\n{text}"
    );
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulse_up_answers_as_its_documents_say() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&common::config_toml(dir.path(), "10s")).unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let targets = [
        // Remote write's body is snappy-framed protobuf, which schemathesis
        // cannot generate; tests/remote_write.rs drives it with a real Prometheus.
        (
            format!("http://{}", running.gateway),
            vec!["--exclude-path", "/api/v1/write"],
        ),
        // The live stream never ends, so it cannot be fuzzed request by request.
        (
            format!("http://{}", running.dashboard),
            vec!["--exclude-path", "/api/v1/live"],
        ),
        (format!("http://{}", running.processor), vec![]),
    ];
    for (base, extra) in targets {
        let schemathesis = schemathesis.clone();
        tokio::task::spawn_blocking(move || run(&schemathesis, &base, &extra))
            .await
            .unwrap();
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_answers_as_its_documents_say() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let buffer = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&common::config_toml(dir.path(), "10s")).unwrap();
    let running = pulse::up::start(config).await.unwrap();
    let (http, otlp, admin) = (free_port(), free_port(), free_port());
    let mut sidecar = pulse_sidecar::config::Config {
        gateway: Some(format!("http://{}", running.gateway)),
        ..Default::default()
    };
    sidecar.http.listen = format!("127.0.0.1:{http}").parse().unwrap();
    sidecar.otlp.listen = format!("127.0.0.1:{otlp}").parse().unwrap();
    sidecar.otlp.grpc_listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    sidecar.admin.listen = format!("127.0.0.1:{admin}").parse().unwrap();
    sidecar.statsd.enabled = false;
    sidecar.buffer.dir = buffer.path().to_path_buf();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(pulse_sidecar::app::run(sidecar, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let admin_url = format!("http://127.0.0.1:{admin}/healthz");
    for _ in 0..100 {
        if client.get(&admin_url).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for port in [http, otlp, admin] {
        let schemathesis = schemathesis.clone();
        let base = format!("http://127.0.0.1:{port}");
        tokio::task::spawn_blocking(move || run(&schemathesis, &base, &[]))
            .await
            .unwrap();
    }
    let _ = stop.send(());
    let _ = sidecar.await;
    running.stop().await.unwrap();
}

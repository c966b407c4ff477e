//! Stopping `pulse up` in the middle of a stream, once with SIGKILL and once with
//! SIGTERM, and starting it again on the same data directory gives exactly the
//! results of an uninterrupted run: nothing lost, nothing counted twice.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Up {
    child: Child,
    gateway: String,
    dashboard: String,
}

/// A test that fails half-way must not leave a server running.
impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real binary and reads the addresses it prints.
fn start(config: &std::path::Path) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["up", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pulse starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut address = |role: &str| loop {
        let line = lines.next().expect("pulse prints its addresses").unwrap();
        if let Some(rest) = line.trim().strip_prefix(role) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let gateway = address("gateway");
    let dashboard = address("dashboard");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Up {
        child,
        gateway,
        dashboard,
    }
}

fn signal(up: &mut Up, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &up.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = up.child.wait().unwrap();
    if signal == "-TERM" {
        assert!(exit.success(), "graceful stop exits 0, got {exit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_mid_stream_gives_the_uninterrupted_results() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pulse.toml");
    std::fs::write(&config, config_toml(&dir.path().join("data"), "5s")).unwrap();
    let client = reqwest::Client::new();
    let points = stream();
    let expected = expected(&points);
    let from_ms = points.iter().map(|p| p.ts_ms).min().unwrap() - 3_600_000;
    let thirds = [
        &points[..POINTS / 3],
        &points[POINTS / 3..2 * POINTS / 3],
        &points[2 * POINTS / 3..],
    ];

    let mut up = start(&config);
    post(&client, &up.gateway, thirds[0], 2_500).await;
    // Give the processor a moment to be mid-way through its backlog, then kill it
    // without any chance to flush.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&mut up, "-KILL");

    let mut up = start(&config);
    post(&client, &up.gateway, thirds[1], 2_500).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&mut up, "-TERM");

    let mut up = start(&config);
    post(&client, &up.gateway, thirds[2], 2_500).await;
    wait_for_all_windows(&client, &up.dashboard, &expected, from_ms).await;
    check_dashboard(&client, &up.dashboard, &expected, from_ms).await;
    signal(&mut up, "-TERM");
}

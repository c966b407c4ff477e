//! Hostile input against the sidecar's receivers, the real binary on
//! loopback: the probes of the pipeline's suite (`tests/hostile.rs`) on the
//! HTTP receiver, and the body probes on the OTLP receiver, which answers in
//! OTLP's own status shape. The peak memory stays under a stated bound and an
//! app sending normally at the same time is served throughout.

#[path = "../../tests/common/hostile.rs"]
#[allow(dead_code)]
mod hostile;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hostile::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The bound on the sidecar's peak resident memory with the default limits.
const PEAK_RSS_BOUND: u64 = 64 << 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sidecar, killed when dropped.
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_until_up(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = reqwest::get(format!("http://{admin}/healthz")).await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sidecar did not come up");
}

async fn normal_app(http: SocketAddr, batches: usize) -> usize {
    let client = reqwest::Client::new();
    let mut served = 0;
    for i in 0..batches {
        let body = json!({"metric_name": "normal", "value": i}).to_string();
        for _ in 0..10 {
            let response = client
                .post(format!("http://{http}/v1/metrics"))
                .body(body.clone())
                .send()
                .await
                .expect("the sidecar answers a normal app");
            match response.status().as_u16() {
                202 => {
                    served += 1;
                    break;
                }
                503 => tokio::time::sleep(Duration::from_secs(1)).await,
                other => panic!("a normal request got {other}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_apps_get_4xx_bounded_memory_and_lock_no_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let (http, otlp, admin, grpc) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            r#"gateway = "http://127.0.0.1:{gateway}"
[http]
listen = "127.0.0.1:{http}"
[otlp]
listen = "127.0.0.1:{otlp}"
grpc_listen = "127.0.0.1:{grpc}"
[statsd]
enabled = false
[admin]
listen = "127.0.0.1:{admin}"
[buffer]
dir = "{buffer}"
[edge]
header_timeout = "2s"
body_timeout = "10s"
"#,
            gateway = free_port(),
            buffer = dir.path().join("buffer").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pulse-sidecar"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sidecar = Sidecar(child);
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let (http, otlp) = (at(http), at(otlp));
    wait_until_up(at(admin)).await;
    let normal = tokio::spawn(normal_app(http, 40));

    let post = |addr: SocketAddr, head: Vec<String>, body: Vec<u8>| async move {
        exchange(addr, &request("POST", "/v1/metrics", &head, &body)).await
    };
    let gz = || vec!["Content-Encoding: gzip".to_string()];
    post(http, gz(), gzip(&element_flood(10 << 20)))
        .await
        .assert_error("gzip bomb", 413, Some("body_too_large"));
    post(http, vec![], element_flood(1 << 20))
        .await
        .assert_error("element flood", 413, Some("too_many_points"));
    post(http, vec![], deep_nesting(1 << 20))
        .await
        .assert_error("deep nesting", 400, Some("invalid_points"));
    post(
        http,
        vec![],
        b"[{\"metric_name\":\"\xff\",\"value\":1}]".to_vec(),
    )
    .await
    .assert_error("invalid UTF-8", 400, Some("invalid_json"));
    let duplicate = br#"{"metric_name":"m","value":1,"tags":{"k":"a","k":"b"}}"#.to_vec();
    post(http, vec![], duplicate).await.assert_error(
        "duplicate tag key",
        400,
        Some("invalid_points"),
    );
    for (point, bad_field) in every_type_in_every_field() {
        let answer = post(http, vec![], point.clone().into_bytes()).await;
        match bad_field {
            None => assert_eq!(answer.status, 202, "{point}"),
            Some(_) => answer.assert_error(&point, 400, Some("invalid_points")),
        }
    }
    exchange(http, &request("GET", "/nowhere", &[], b""))
        .await
        .assert_error("404", 404, Some("not_found"));
    exchange(http, &request("GET", "/v1/metrics", &[], b""))
        .await
        .assert_error("405", 405, Some("method_not_allowed"));
    let long = format!("/v1/metrics?{}", "a".repeat(12_000));
    exchange(http, &request("POST", &long, &[], b"{}"))
        .await
        .assert_error("long URL", 414, Some("url_too_long"));
    let big = vec![format!("X-Big: {}", "b".repeat(20_000))];
    post(http, big, b"{}".to_vec()).await.assert_error(
        "big header",
        431,
        Some("headers_too_large"),
    );

    // OTLP answers in its own shape (google.rpc.Status), JSON for JSON.
    let json_type = || vec!["Content-Type: application/json".to_string()];
    let answer = post(otlp, json_type(), vec![b' '; 5 << 20]).await;
    assert_eq!(answer.status, 413, "oversized OTLP body");
    let answer = post(otlp, json_type(), deep_nesting(1 << 16)).await;
    assert_eq!(answer.status, 400, "deeply nested OTLP JSON");
    let mut stalled = TcpStream::connect(otlp).await.unwrap();
    stalled
        .write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: probe\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let answer = read_answer(&mut stalled).await.expect("an answer");
    assert_eq!(answer.status, 408, "a stalled OTLP body times out");

    // Slow bodies hold no one up.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(http).await.unwrap();
        stream
            .write_all(b"POST /v1/metrics HTTP/1.1\r\nHost: probe\r\nContent-Length: 1000\r\n\r\n[")
            .await
            .unwrap();
        slow.push(stream);
    }
    assert_eq!(normal_app(http, 5).await, 5);
    for mut stream in slow {
        read_answer(&mut stream)
            .await
            .expect("an answer")
            .assert_error("slow body", 408, Some("body_timeout"));
    }
    let mut trickling = TcpStream::connect(http).await.unwrap();
    trickling
        .write_all(b"POST /v1/metrics HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut trickling, ANSWER_WAIT).await);

    assert_eq!(normal.await.unwrap(), 40);
    let peak = peak_rss(sidecar.0.id());
    assert!(
        peak < PEAK_RSS_BOUND,
        "peak RSS {} MiB is over {} MiB",
        peak >> 20,
        PEAK_RSS_BOUND >> 20
    );
    eprintln!("sidecar peak RSS under attack: {} MiB", peak >> 20);
}

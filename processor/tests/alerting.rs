//! Alert delivery against real receivers: local HTTP receivers standing for a
//! webhook, Slack and PagerDuty (checking the documented payloads and retry
//! through an outage), and a real Prometheus Alertmanager started here.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use pulse_core::anomaly::{AlertState, AlertingConfig, Anomaly};
use pulse_core::config::Config;
use pulse_engine::store::sqlite::SqliteStore;
use pulse_engine::store::{AnomalyChange, AnomalyQuery, Commit, Store};
use pulse_processor::deliver::Deliverer;
use pulse_processor::metrics::AnomalyMetrics;
use serde_json::Value;

/// What a local receiver got, and how many requests it should still refuse.
#[derive(Default)]
struct Received {
    bodies: Vec<Value>,
    refuse: usize,
}

async fn receive(
    State(got): State<Arc<Mutex<Received>>>,
    axum::Json(body): axum::Json<Value>,
) -> StatusCode {
    let mut got = got.lock().unwrap();
    if got.refuse > 0 {
        got.refuse -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    got.bodies.push(body);
    StatusCode::ACCEPTED
}

async fn receiver(refuse: usize) -> (SocketAddr, Arc<Mutex<Received>>) {
    let got = Arc::new(Mutex::new(Received {
        bodies: Vec::new(),
        refuse,
    }));
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(Arc::clone(&got));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, got)
}

fn anomaly(state: AlertState, notify: &[&str]) -> Anomaly {
    Anomaly {
        id: "0123456789abcdef".into(),
        rule: "cpu-spike".into(),
        metric_name: "cpu_usage".into(),
        tags: [("env".to_string(), "prod".to_string())].into(),
        window: "1m".into(),
        window_start_ms: pulse_core::now_ms() - 120_000,
        window_end_ms: pulse_core::now_ms() - 60_000,
        value: 95.0,
        expected: 50.0,
        score: 12.5,
        state,
        message: "cpu-spike: cpu_usage{env=prod} avg over 1m was 95".into(),
        resolved_ms: (state == AlertState::Resolved).then(pulse_core::now_ms),
        notify: notify.iter().map(|s| s.to_string()).collect(),
    }
}

async fn store(dir: &Path) -> Arc<dyn Store> {
    let store = SqliteStore::open(&dir.join("store.db")).await.unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

/// Commits `anomaly` as the processor would (partition 0).
async fn commit(store: &Arc<dyn Store>, anomaly: Anomaly) {
    let commit = Commit {
        anomalies: vec![AnomalyChange {
            partition: 0,
            anomaly,
        }],
        ..Commit::default()
    };
    store.commit(&commit).await.unwrap();
}

fn alerting(toml: &str) -> AlertingConfig {
    Config::from_toml(toml).unwrap().alerting
}

/// Runs delivery passes until nothing is pending for partition 0, waiting
/// out retry times; at most `passes`.
async fn deliver_all(deliverer: &Deliverer, store: &Arc<dyn Store>, passes: usize) {
    for _ in 0..passes {
        deliverer.pass(&[0]).await.unwrap();
        if store
            .pending_deliveries(&[0], 100)
            .await
            .unwrap()
            .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("outbox not delivered after {passes} passes");
}

#[tokio::test]
async fn webhook_slack_and_pagerduty_get_their_documented_payloads_through_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    // The webhook is down for its first two requests.
    let (hook, hook_got) = receiver(2).await;
    let (slack, slack_got) = receiver(0).await;
    let (pd, pd_got) = receiver(0).await;
    let config = alerting(&format!(
        r#"
[[alerting.receivers]]
name = "ops"
kind = "webhook"
url = "http://{hook}/hook"
[[alerting.receivers]]
name = "chat"
kind = "slack"
url = "http://{slack}/services/T0/B0/secret"
[[alerting.receivers]]
name = "pager"
kind = "pagerduty"
url = "http://{pd}/v2/enqueue"
routing_key = "R0UTINGKEY"
"#
    ));
    let notify = ["ops", "chat", "pager"];
    commit(&store, anomaly(AlertState::Firing, &notify)).await;
    commit(&store, anomaly(AlertState::Resolved, &notify)).await;
    // Committing the same change again (a replay) queues nothing new.
    commit(&store, anomaly(AlertState::Resolved, &notify)).await;

    let metrics = AnomalyMetrics::default();
    let deliverer = Deliverer::new(&config, Arc::clone(&store), metrics.clone()).unwrap();
    // Retries wait 1 s then 2 s: give it up to ~10 s of passes.
    deliver_all(&deliverer, &store, 40).await;

    let hook = hook_got.lock().unwrap().bodies.clone();
    assert_eq!(hook.len(), 2, "{hook:?}");
    assert_eq!(hook[0]["version"], 1);
    assert_eq!(hook[0]["anomaly"]["id"], "0123456789abcdef");
    assert_eq!(
        hook[0]["anomaly"]["state"], "firing",
        "the trigger waits for its retries, the resolve after it"
    );
    assert_eq!(hook[1]["anomaly"]["state"], "resolved");
    for field in [
        "rule",
        "metric_name",
        "tags",
        "window",
        "window_start_ms",
        "value",
        "expected",
        "score",
        "message",
    ] {
        assert!(
            hook[0]["anomaly"].get(field).is_some(),
            "webhook body lacks {field}"
        );
    }

    let slack = slack_got.lock().unwrap().bodies.clone();
    assert_eq!(slack.len(), 2);
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .contains("[FIRING] cpu-spike")
    );
    assert_eq!(slack[0]["blocks"][0]["type"], "section");
    assert!(slack[1]["text"].as_str().unwrap().contains("[RESOLVED]"));

    let pd = pd_got.lock().unwrap().bodies.clone();
    assert_eq!(pd.len(), 2);
    assert_eq!(pd[0]["routing_key"], "R0UTINGKEY");
    assert_eq!(pd[0]["event_action"], "trigger");
    assert_eq!(pd[0]["dedup_key"], "0123456789abcdef");
    assert_eq!(pd[0]["payload"]["severity"], "error");
    assert!(
        pd[0]["payload"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("cpu-spike")
    );
    assert!(pd[0]["payload"]["source"].is_string());
    assert!(
        pd[0]["payload"]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(pd[1]["event_action"], "resolve");
    assert_eq!(pd[1]["dedup_key"], "0123456789abcdef");

    let stored = store
        .anomalies(&AnomalyQuery {
            metric: Some("cpu_usage".into()),
            from_ms: 0,
            to_ms: i64::MAX,
            limit: 10,
            ..AnomalyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].state, AlertState::Resolved);
}

/// A running Alertmanager, stopped when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn alertmanager() -> Option<Alertmanager> {
    let binary = "prometheus-alertmanager";
    if Command::new(binary).arg("--version").output().is_err() {
        pulse_core::test_policy::skip_or_fail(
            &format!("{binary} is not installed"),
            "apt-get install -y prometheus-alertmanager",
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\n  group_wait: 1h\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let am = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let ready = client.get(format!("{}/-/ready", am.url)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Some(am);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Alertmanager did not become ready at {}", am.url);
}

/// Pulse's alert in Alertmanager (`GET /api/v2/alerts`, resolved included).
async fn alert_in(am: &Alertmanager) -> Option<Value> {
    let alerts: Value = reqwest::Client::new()
        .get(format!(
            "{}/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true",
            am.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["anomaly_id"] == "0123456789abcdef")
        .cloned()
}

#[tokio::test]
async fn alerts_show_up_in_a_real_alertmanager_with_their_labels_and_resolve() {
    let Some(am) = alertmanager().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let config = alerting(&format!(
        "[[alerting.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"{}\"\n",
        am.url
    ));
    let deliverer = Deliverer::new(&config, Arc::clone(&store), AnomalyMetrics::default()).unwrap();

    commit(&store, anomaly(AlertState::Firing, &["am"])).await;
    deliver_all(&deliverer, &store, 10).await;
    let alert = alert_in(&am)
        .await
        .expect("the firing alert is in Alertmanager");
    assert_eq!(alert["labels"]["alertname"], "cpu-spike");
    assert_eq!(alert["labels"]["metric"], "cpu_usage");
    assert_eq!(alert["labels"]["window"], "1m");
    assert_eq!(alert["labels"]["env"], "prod");
    assert_eq!(alert["status"]["state"], "active");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("cpu-spike")
    );

    commit(&store, anomaly(AlertState::Resolved, &["am"])).await;
    deliver_all(&deliverer, &store, 10).await;
    // A resolved alert (endsAt passed) leaves the list of active alerts.
    let mut gone = false;
    for _ in 0..50 {
        match alert_in(&am).await {
            None => {
                gone = true;
                break;
            }
            Some(a) if a["status"]["state"] != "active" => {
                gone = true;
                break;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(gone, "the alert resolved in Alertmanager");
}

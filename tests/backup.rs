//! `pulse backup` and `pulse restore` (the CLI, as a CronJob runs it) against
//! a local S3-compatible server (moto, started here) and the test PostgreSQL:
//! data in, backup, drop the schema, restore, every window and every row the
//! same; a backup taken while points flow is one consistent snapshot; old
//! backups are pruned by `--keep`. Without moto the test is skipped, except
//! under `CI`, where it fails (.ci/run installs it).

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pulse_core::config::Config;

use common::*;

const BUCKET: &str = "pulse-backups";
const WINDOWS: [(&str, i64); 2] = [("1m", 60_000), ("5m", 300_000)];

/// moto's S3 server on a free local port, stopped on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Moto {
    /// Starts `moto_server` (or `python3 -m moto.server`); `None` (skip) when
    /// moto is not installed, a failure under `CI`.
    fn start() -> Option<Moto> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let moto_installed = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !moto_installed {
            pulse_core::test_policy::skip_or_fail(
                "moto is not installed",
                "pip install 'moto[server]' (.ci/run does)",
            );
            return None;
        }
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs moto");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Moto { child, addr })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The object names under `prefix`, through S3's ListObjectsV2.
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let url = format!("{}/{BUCKET}?list-type=2&prefix={prefix}", self.endpoint());
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        body.split("<Key>")
            .skip(1)
            .map(|rest| rest.split("</Key>").next().unwrap().to_string())
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The config of pipeline `test/<name>` on the test PostgreSQL and the mock Kafka.
fn config_text(dir: &std::path::Path, name: &str, brokers: &str, database: &str) -> String {
    format!(
        r#"
[pipeline]
namespace = "test"
name = "{name}"
[gateway]
listen = "127.0.0.1:0"
[dashboard]
listen = "127.0.0.1:0"
[processor]
listen = "127.0.0.1:0"
windows = ["1m", "5m"]
checkpoint_interval = "200ms"
idle_timeout = "1s"
[bus]
partitions = 2
kafka_brokers = "{brokers}"
[storage]
data_dir = "{}"
database_url = "{database}"
"#,
        dir.display()
    )
}

/// Runs `pulse <args>` with the moto credentials (without blocking the
/// runtime the in-process pipeline runs on).
async fn pulse_output(moto: &Moto, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env_remove("PULSE_CONFIG")
        .output()
        .await
        .expect("the pulse binary runs")
}

/// [`pulse_output`]'s stdout, or a panic with its stderr.
async fn pulse(moto: &Moto, args: &[&str]) -> String {
    let output = pulse_output(moto, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pulse {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Every row of every table of `schema` (but the migrations), as sorted text.
async fn contents(pool: &sqlx::PgPool, schema: &str) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
         AND c.relname <> 'schema_migrations' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t)::text FROM \"{schema}\".\"{table}\" t ORDER BY 1"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        out.push((table, rows));
    }
    out
}

/// Raw points and the offsets of the checkpoints that stored them.
async fn points_and_offsets(pool: &sqlx::PgPool, schema: &str) -> (i64, i64) {
    sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM \"{schema}\".raw_points), \
                (SELECT COALESCE(sum(next_offset), 0)::bigint FROM \"{schema}\".checkpoints)"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_consistency_and_pruning_against_local_s3() {
    let Some(database) = test_database_url() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    let made = reqwest::Client::new()
        .put(format!("{}/{BUCKET}", moto.endpoint()))
        .send()
        .await
        .unwrap();
    assert!(
        made.status().is_success(),
        "moto makes the bucket: {made:?}"
    );
    let moto = std::sync::Arc::new(moto);
    let url = database.clone();
    on_fresh_pipeline(&database, "backup", 2, move |p| round_trip(moto, url, p)).await;
}

async fn round_trip(moto: std::sync::Arc<Moto>, database: String, p: FreshPipeline) {
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), &p.name, &p.brokers, &database);
    let config_file = dir.path().join("pulse.toml");
    std::fs::write(&config_file, &text).unwrap();
    let config = config_file.to_str().unwrap();
    let prefix = format!("{}/nightly", p.name);
    let to = format!("s3://{BUCKET}/{prefix}");
    let client = reqwest::Client::new();

    // Data in: windows that all closed a while ago.
    let end = (pulse_core::now_ms() - 120_000).div_euclid(300_000) * 300_000;
    let points = random_points(3_000, 6, end - 900_000, end, 7);
    let expected = windows_of(&points, &WINDOWS);
    let running = pulse::up::start(Config::from_toml(&text).unwrap())
        .await
        .unwrap();
    let gateway = format!("http://{}", running.gateway);
    post(&client, &gateway, &points, 500).await;
    check_windows(
        &client,
        &format!("http://{}", running.dashboard),
        &expected,
        &WINDOWS,
        Duration::from_secs(60),
    )
    .await;

    // A backup while points flow: every table from one snapshot, so the
    // copy's raw points are exactly those its checkpoints' offsets cover.
    let flowing = random_points(20_000, 6, end - 900_000, end, 8);
    let sender = {
        let (client, gateway) = (client.clone(), gateway.clone());
        tokio::spawn(async move {
            for batch in flowing.chunks(200) {
                post(&client, &gateway, batch, 200).await;
            }
        })
    };
    let during = pulse(&moto, &["backup", "--config", config, "--to", &to]).await;
    let during_name = during.split_whitespace().nth(1).unwrap().to_string();
    sender.await.unwrap();
    running.stop().await.unwrap();
    let before = contents(&pool, &p.schema).await;

    // The snapshot, restored as another pipeline's schema.
    let copy = format!("{}-copy", p.name);
    let copy_schema = pulse_core::names::schema("test", &copy);
    let copy_file = dir.path().join("copy.toml");
    std::fs::write(
        &copy_file,
        config_text(dir.path(), &copy, &p.brokers, &database),
    )
    .unwrap();
    let restored = pulse(
        &moto,
        &[
            "restore",
            "--config",
            copy_file.to_str().unwrap(),
            "--from",
            &format!("{to}/{during_name}"),
        ],
    )
    .await;
    assert!(restored.contains(&during_name), "{restored}");
    let (raw, offsets) = points_and_offsets(&pool, &copy_schema).await;
    drop_schema(&pool, &copy_schema).await;
    assert!(raw >= 3_000, "the backup holds the first points: {raw}");
    assert_eq!(
        raw, offsets,
        "raw points and checkpoint offsets of one snapshot"
    );

    // Backup (the pipeline stopped), drop the schema, restore the latest.
    let quiet = pulse(&moto, &["backup", "--config", config, "--to", &to]).await;
    assert!(quiet.starts_with("backup "), "{quiet}");
    drop_schema(&pool, &p.schema).await;
    let restored = pulse(&moto, &["restore", "--config", config, "--from", &to]).await;
    assert!(
        restored.contains(quiet.split_whitespace().nth(1).unwrap()),
        "{restored}"
    );
    assert_eq!(
        contents(&pool, &p.schema).await,
        before,
        "every row restored"
    );
    // A second restore into the now full schema is refused.
    let refused = pulse_output(&moto, &["restore", "--config", config, "--from", &to]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already holds data"));

    // The restored pipeline answers every window as before.
    let mut all = points.clone();
    all.extend(random_points(20_000, 6, end - 900_000, end, 8));
    let running = pulse::up::start(Config::from_toml(&text).unwrap())
        .await
        .unwrap();
    check_windows(
        &client,
        &format!("http://{}", running.dashboard),
        &windows_of(&all, &WINDOWS),
        &WINDOWS,
        Duration::from_secs(60),
    )
    .await;
    running.stop().await.unwrap();

    // Pruning: two more backups with --keep 2 leave the newest two.
    pulse(&moto, &["backup", "--config", config, "--to", &to]).await;
    let last = pulse(
        &moto,
        &["backup", "--config", config, "--to", &to, "--keep", "2"],
    )
    .await;
    let pruned: Vec<&str> = last
        .lines()
        .filter_map(|l| l.strip_prefix("pruned backup "))
        .collect();
    assert_eq!(pruned.len(), 2, "{last}");
    let manifests: Vec<String> = moto
        .keys(&prefix)
        .await
        .into_iter()
        .filter(|k| k.ends_with("/manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 2, "{manifests:?}");
    assert!(
        moto.keys(&format!("{prefix}/{during_name}"))
            .await
            .is_empty()
    );
    let newest = last.split_whitespace().nth(1).unwrap();
    assert!(manifests.iter().any(|m| m.contains(newest)));
}

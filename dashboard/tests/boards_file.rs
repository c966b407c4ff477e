//! Boards from `dashboard.boards_file`, as the operator mounts every
//! `Dashboard` of a pipeline: served with the config's, and added, changed and
//! removed without a restart (the file is re-read; here `reload` is called
//! where the server's once-a-second watch would).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use pulse_dashboard::{Dashboard, LiveBoards};
use pulse_engine::cache::memory::MemoryCache;
use pulse_engine::store::Store;
use pulse_engine::store::sqlite::SqliteStore;
use pulse_server::auth::Tokens;
use serde_json::Value;
use tower::ServiceExt;

const CONFIG_BOARD: &str = "[[dashboards]]\nname = \"fleet\"\n";

fn board(name: &str, title: &str) -> String {
    format!(
        "[[dashboards]]\nname = \"{name}\"\ntitle = \"{title}\"\n\n[[dashboards.panels]]\nmetric = \"cpu_usage\"\nwindow = \"1m\"\n"
    )
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn names(router: &Router) -> Vec<String> {
    let (_, list) = get(router, "/api/v1/dashboards").await;
    list["dashboards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn boards_come_and_go_with_the_file_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("boards.toml");
    std::fs::write(&file, board("checkout", "Checkout")).unwrap();
    let mut config = Config::from_toml(CONFIG_BOARD).unwrap();
    config.dashboard.boards_file = Some(file.clone());
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("pulse.db"))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let boards = LiveBoards::load(&config).unwrap();
    let router = Dashboard::router_with_tokens(
        &config,
        store,
        Arc::new(MemoryCache::new()),
        Arc::new(Mutex::new(Registry::default())),
        Tokens::default(),
        boards.clone(),
    );
    assert_eq!(names(&router).await, ["default", "fleet", "checkout"]);

    // Added and changed.
    std::fs::write(
        &file,
        board("checkout", "Checkout v2") + &board("payments", "Payments"),
    )
    .unwrap();
    assert_eq!(boards.reload(), Ok(true));
    assert_eq!(
        names(&router).await,
        ["default", "fleet", "checkout", "payments"]
    );
    let (status, checkout) = get(&router, "/api/v1/dashboards/checkout").await;
    assert_eq!(
        (status, checkout["title"].as_str()),
        (StatusCode::OK, Some("Checkout v2"))
    );
    assert_eq!(boards.reload(), Ok(false), "unchanged: nothing new");

    // A file that does not load keeps the boards in force.
    std::fs::write(&file, "[[dashboards]]\nname = \"Bad Name\"\n").unwrap();
    let error = boards.reload().unwrap_err();
    assert_eq!(error.key, "dashboard.boards_file");
    assert_eq!(
        names(&router).await,
        ["default", "fleet", "checkout", "payments"]
    );
    // So does one that takes a name of the config's boards.
    std::fs::write(&file, board("fleet", "Twice")).unwrap();
    assert!(
        boards
            .reload()
            .unwrap_err()
            .why
            .contains("`fleet` is defined twice")
    );

    // Removed.
    std::fs::write(&file, board("payments", "Payments")).unwrap();
    assert_eq!(boards.reload(), Ok(true));
    assert_eq!(names(&router).await, ["default", "fleet", "payments"]);
    let (status, missing) = get(&router, "/api/v1/dashboards/checkout").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"]["code"], "no_such_dashboard");
}

#[test]
fn a_missing_boards_file_at_start_is_an_error_naming_it() {
    let mut config = Config::default();
    config.dashboard.boards_file = Some("/nonexistent/boards.toml".into());
    let error = LiveBoards::load(&config).unwrap_err();
    assert_eq!(error.key, "dashboard.boards_file");
    assert!(
        error.to_string().contains("/nonexistent/boards.toml"),
        "{error}"
    );
}

//! Headless Chromium over the DevTools protocol, shared by the browser tests
//! (`tests/browser.rs`) and `pulse-bench --only ui` (`pulse bench --only ui`).
//!
//! A deliberately small client: launch, open a page, navigate, evaluate
//! JavaScript, take a screenshot, and collect everything the page reports as an
//! error (console errors, uncaught exceptions, CSP violations, failed loads).
//! Full CDP crates (`chromiumoxide`, `headless_chrome`) were measured: their
//! generated protocol bindings add about 9 CPU-minutes to every clean build of
//! `pulse`, the newcomer's first `cargo run --release -- up` included, for the
//! six methods used here.
//!
//! Chromium runs with a fresh profile in a temporary directory and everything
//! that would reach out to the network (updates, sync, QUIC, background
//! requests) switched off, so it works on a machine without internet access.

pub mod scenario;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use pulse_core::sync::lock;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex as AsyncMutex, broadcast, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Where Chromium is looked for when `PULSE_CHROMIUM` is not set: Debian's
/// package first.
const CANDIDATES: [&str; 4] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
];

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the browser could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "no Chromium found (looked at PULSE_CHROMIUM and {}); install it with `apt-get install -y chromium`",
        CANDIDATES.join(", ")
    )]
    NotFound,
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Chromium did not open its DevTools endpoint: {0}")]
    Startup(String),
    #[error("DevTools connection: {0}")]
    Connection(String),
    #[error("DevTools command {method} failed: {message}")]
    Command { method: String, message: String },
    #[error("the page threw: {0}")]
    Script(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The Chromium to use: `PULSE_CHROMIUM`, else the first of the usual paths.
pub fn chromium_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PULSE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;
type Sink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// One DevTools websocket: numbered commands, answers matched by id, events
/// broadcast to every page.
struct Connection {
    sink: AsyncMutex<Sink>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<Value>,
}

impl Connection {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, BrowserError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::from(session);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| BrowserError::Connection(e.to_string()))?;
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, rx)
            .await
            .map_err(|_| BrowserError::Timeout(COMMAND_TIMEOUT, method.to_string()))?
            .map_err(|_| BrowserError::Connection("closed while waiting for an answer".into()))?;
        answer.map_err(|message| BrowserError::Command {
            method: method.to_string(),
            message,
        })
    }
}

/// A running headless Chromium. Dropping it kills the process and removes its
/// profile.
pub struct Browser {
    child: Child,
    connection: Arc<Connection>,
    _profile: tempfile::TempDir,
    /// Chromium's last stderr lines, for error messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    /// Starts headless Chromium (see [`chromium_path`]) with a fresh profile.
    pub async fn launch() -> Result<Browser, BrowserError> {
        let path = chromium_path().ok_or(BrowserError::NotFound)?;
        let profile = tempfile::Builder::new()
            .prefix("pulse-chromium-")
            .tempdir()?;
        let mut child = Command::new(&path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-dev-shm-usage",
                "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
                "--metrics-recording-only",
                "--password-store=basic",
                "--use-mock-keychain",
                "--hide-scrollbars",
                "--mute-audio",
                "--force-color-profile=srgb",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BrowserError::Spawn {
                path: path.clone(),
                source,
            })?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| BrowserError::Startup("no stderr".into()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (url_tx, url_rx) = oneshot::channel();
        tokio::spawn(drain_stderr(stderr, Arc::clone(&log), url_tx));
        let url = match tokio::time::timeout(Duration::from_secs(30), url_rx).await {
            Ok(Ok(url)) => url,
            _ => {
                let _ = child.start_kill();
                return Err(BrowserError::Startup(lock(&log).join("\n")));
            }
        };
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| BrowserError::Connection(e.to_string()))?;
        let (sink, stream) = socket.split();
        let (events, _) = broadcast::channel(4096);
        let connection = Arc::new(Connection {
            sink: AsyncMutex::new(sink),
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            events: events.clone(),
        });
        tokio::spawn(read_messages(
            stream,
            Arc::clone(&connection.pending),
            events,
        ));
        Ok(Browser {
            child,
            connection,
            _profile: profile,
            log,
        })
    }

    /// Opens a tab of `width` × `height` CSS pixels with DevTools events on.
    pub async fn new_page(&self, width: u32, height: u32) -> Result<Page, BrowserError> {
        let c = &self.connection;
        let target = c
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = target["targetId"].as_str().unwrap_or_default().to_string();
        let attached = c
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Connection("attachToTarget gave no session".into()))?
            .to_string();
        let page = Page {
            connection: Arc::clone(c),
            session,
            errors: Arc::new(Mutex::new(Vec::new())),
            loads: Arc::new(tokio::sync::Notify::new()),
        };
        tokio::spawn(collect_events(
            c.events.subscribe(),
            page.session.clone(),
            Arc::clone(&page.errors),
            Arc::clone(&page.loads),
        ));
        for method in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(method, json!({})).await?;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await?;
        Ok(page)
    }

    /// Chromium's recent stderr, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = lock(&self.log);
        log[log.len().saturating_sub(20)..].join("\n")
    }

    /// Closes Chromium and waits for it to exit.
    pub async fn close(mut self) {
        let _ = self.connection.call(None, "Browser.close", json!({})).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Keeps reading Chromium's stderr (so it never blocks on a full pipe), hands
/// over the DevTools URL when it appears, and keeps the last lines.
async fn drain_stderr(
    stderr: tokio::process::ChildStderr,
    log: Arc<Mutex<Vec<String>>>,
    url: oneshot::Sender<String>,
) {
    let mut url = Some(url);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(found) = line.strip_prefix("DevTools listening on ")
            && let Some(tx) = url.take()
        {
            let _ = tx.send(found.trim().to_string());
        }
        let mut log = lock(&log);
        if log.len() >= 200 {
            log.remove(0);
        }
        log.push(line);
    }
}

async fn read_messages(
    mut stream: futures::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
    pending: Pending,
    events: broadcast::Sender<Value>,
) {
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if let Some(id) = value["id"].as_u64() {
            if let Some(tx) = lock(&pending).remove(&id) {
                let answer = match value.get("error") {
                    Some(error) => Err(error["message"].as_str().unwrap_or("error").to_string()),
                    None => Ok(value["result"].clone()),
                };
                let _ = tx.send(answer);
            }
        } else {
            let _ = events.send(value);
        }
    }
    // The browser went away: fail whatever still waits.
    lock(&pending).clear();
}

/// What a page reported as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageError {
    /// `console` (console.error/assert), `exception` (uncaught), or `log:<source>`
    /// for the browser's own messages (`log:network` for a failed request,
    /// `log:security` for a CSP violation, ...).
    pub kind: String,
    pub text: String,
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.kind, self.text)
    }
}

async fn collect_events(
    mut events: broadcast::Receiver<Value>,
    session: String,
    errors: Arc<Mutex<Vec<PageError>>>,
    loads: Arc<tokio::sync::Notify>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if event["sessionId"].as_str() != Some(session.as_str()) {
            continue;
        }
        let params = &event["params"];
        let error = match event["method"].as_str().unwrap_or_default() {
            "Page.loadEventFired" => {
                loads.notify_waiters();
                None
            }
            "Runtime.consoleAPICalled"
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                let text: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| match &a["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => a["description"].as_str().unwrap_or("?").to_string(),
                        other => other.to_string(),
                    })
                    .collect();
                Some(PageError {
                    kind: "console".into(),
                    text: text.join(" "),
                })
            }
            "Runtime.exceptionThrown" => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"]
                    .as_str()
                    .or(details["text"].as_str())
                    .unwrap_or("exception");
                Some(PageError {
                    kind: "exception".into(),
                    text: text.to_string(),
                })
            }
            "Log.entryAdded" if params["entry"]["level"].as_str() == Some("error") => {
                let entry = &params["entry"];
                Some(PageError {
                    kind: format!("log:{}", entry["source"].as_str().unwrap_or("other")),
                    text: format!(
                        "{} {}",
                        entry["text"].as_str().unwrap_or_default(),
                        entry["url"].as_str().unwrap_or_default()
                    )
                    .trim()
                    .to_string(),
                })
            }
            _ => None,
        };
        if let Some(error) = error {
            lock(&errors).push(error);
        }
    }
}

/// One tab.
pub struct Page {
    connection: Arc<Connection>,
    session: String,
    errors: Arc<Mutex<Vec<PageError>>>,
    loads: Arc<tokio::sync::Notify>,
}

impl Page {
    /// Sends one DevTools command to this tab.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.connection
            .call(Some(&self.session), method, params)
            .await
    }

    /// Navigates and waits for the `load` event (scripts ran, assets loaded).
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        let loaded = self.loads.notified();
        tokio::pin!(loaded);
        loaded.as_mut().enable();
        let answer = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = answer["errorText"].as_str() {
            return Err(BrowserError::Command {
                method: "Page.navigate".into(),
                message: format!("{url}: {error}"),
            });
        }
        tokio::time::timeout(COMMAND_TIMEOUT, loaded)
            .await
            .map_err(|_| BrowserError::Timeout(COMMAND_TIMEOUT, format!("{url} to load")))
    }

    /// Evaluates `expression` (awaiting a promise) and returns its JSON value.
    pub async fn eval(&self, expression: &str) -> Result<Value, BrowserError> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(details) = answer.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("exception");
            return Err(BrowserError::Script(text.to_string()));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Polls `expression` every 25 ms until it is truthy; returns its value.
    pub async fn wait_for(
        &self,
        expression: &str,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await?;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout(timeout, expression.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Makes the page see `prefers-color-scheme: <scheme>` (`light` or `dark`).
    pub async fn set_color_scheme(&self, scheme: &str) -> Result<(), BrowserError> {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await
        .map(drop)
    }

    /// Writes a PNG of the whole page (not just the viewport) to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let (width, height) = (
            size["width"].as_f64().unwrap_or(1280.0),
            size["height"].as_f64().unwrap_or(800.0),
        );
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
                }),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| BrowserError::Connection(format!("screenshot is not base64: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Every error the page reported so far.
    pub fn errors(&self) -> Vec<PageError> {
        lock(&self.errors).clone()
    }
}

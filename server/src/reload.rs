//! A value read from mounted files and re-read when they change: the served
//! certificate ([`crate::tls`]) and the bearer tokens ([`crate::auth`]).
//!
//! Kubernetes updates a mounted Secret by swapping its files (an atomic
//! symlink swap, or one write per file), so the files are compared with what
//! was last loaded every [`RELOAD_INTERVAL`] rather than watched for events,
//! which a symlink swap does not reliably raise. Files that change but do not
//! parse (a certificate without its new key yet, an empty token file) are
//! logged once and skipped: the last good value stays in force until the
//! files hold a good one again. A value is never dropped to "nothing".

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the files are compared with the value in force.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A file that cannot be used, named by its config key; never its content.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} ({path}): {why}")]
pub struct FileError {
    /// The config key naming the file (`gateway.tls_cert_file`).
    pub key: String,
    pub path: PathBuf,
    pub why: String,
}

/// A config key and the file it names.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedFile {
    pub key: String,
    pub path: PathBuf,
}

impl KeyedFile {
    pub fn new(key: impl Into<String>, path: impl Into<PathBuf>) -> KeyedFile {
        KeyedFile {
            key: key.into(),
            path: path.into(),
        }
    }

    /// An error about this file.
    pub fn error(&self, why: impl Into<String>) -> FileError {
        FileError {
            key: self.key.clone(),
            path: self.path.clone(),
            why: why.into(),
        }
    }
}

type Parse<T> = dyn Fn(&[Vec<u8>]) -> Result<T, FileError> + Send + Sync;

/// The value in force, and how to read it again.
pub struct Reloading<T> {
    /// What the value is, for logs ("the gateway's TLS certificate").
    what: String,
    files: Vec<KeyedFile>,
    parse: Box<Parse<T>>,
    current: RwLock<Arc<T>>,
    loaded: Mutex<Vec<Vec<u8>>>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads `files` and parses their contents (in order) with `parse`.
    pub fn load(
        what: impl Into<String>,
        files: Vec<KeyedFile>,
        parse: impl Fn(&[Vec<u8>]) -> Result<T, FileError> + Send + Sync + 'static,
    ) -> Result<Arc<Reloading<T>>, FileError> {
        let bytes = read(&files)?;
        let value = parse(&bytes)?;
        Ok(Arc::new(Reloading {
            what: what.into(),
            files,
            parse: Box::new(parse),
            current: RwLock::new(Arc::new(value)),
            loaded: Mutex::new(bytes),
        }))
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the files now; `Ok(true)` when a new value went into force.
    pub fn reload(&self) -> Result<bool, FileError> {
        let bytes = read(&self.files)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == bytes {
            return Ok(false);
        }
        let value = (self.parse)(&bytes)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
        *loaded = bytes;
        Ok(true)
    }

    /// Re-reads the files every [`RELOAD_INTERVAL`] until `shutdown`.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A broken file is reported once, not every second.
            let mut reported = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                match this.reload() {
                    Ok(true) => {
                        reported = None;
                        tracing::info!(message = "Reloaded from changed files.", what = %this.what);
                    }
                    Ok(false) => {}
                    Err(error) => {
                        if reported.as_ref() != Some(&error) {
                            tracing::warn!(
                                message = "Files changed but do not load; keeping the previous value.",
                                what = %this.what,
                                %error
                            );
                            reported = Some(error);
                        }
                    }
                }
            }
        });
    }
}

fn read(files: &[KeyedFile]) -> Result<Vec<Vec<u8>>, FileError> {
    files
        .iter()
        .map(|file| {
            std::fs::read(&file.path).map_err(|e| file.error(format!("cannot be read: {e}")))
        })
        .collect()
}

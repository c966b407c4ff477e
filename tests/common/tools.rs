//! External tools the tests run (helm, kubernetes-validate, promtool): where
//! to find them, and what is missing of them, for the one policy of
//! `pulse_core::test_policy` (skip, or fail when env `CI` is set: .ci/run
//! installs them all).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `command` runs and exits 0.
pub fn runs(command: &[String]) -> bool {
    Command::new(&command[0])
        .args(&command[1..])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `true` when nothing is `missing`; otherwise `false` after
/// [`pulse_core::test_policy::skip_or_fail`] (a skip notice, or a failure
/// under CI). Each entry names a tool and how to install it.
pub fn present_or_skip(what: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    pulse_core::test_policy::skip_or_fail(
        &format!("{what} cannot run: missing {}", missing.join("; ")),
        ".ci/run installs it",
    );
    false
}

/// helm: env HELM, else the pinned tools/helm/node_modules/.bin/helm, else PATH.
pub fn helm_program() -> PathBuf {
    let pinned = repo().join("tools/helm/node_modules/.bin/helm");
    std::env::var_os("HELM")
        .map(PathBuf::from)
        .or_else(|| pinned.exists().then_some(pinned))
        .unwrap_or_else(|| PathBuf::from("helm"))
}

/// What is missing of helm, as [`present_or_skip`] takes it.
pub fn helm_missing(helm: &Path) -> Option<String> {
    (!runs(&[helm.display().to_string(), "version".into()])).then(|| {
        format!(
            "helm ({}): install it with `npm ci --prefix tools/helm`",
            helm.display()
        )
    })
}

/// Runs helm with its cache, config and data in a fresh directory, so no
/// repository or plugin of the user's changes what the tests see.
pub fn helm(program: &Path, args: &[String]) -> Output {
    let home = tempfile::tempdir().expect("a temporary directory for helm");
    Command::new(program)
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("helm runs")
}

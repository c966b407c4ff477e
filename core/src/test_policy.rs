//! The one rule for a test that needs something a machine may lack (a
//! service such as PostgreSQL, a binary such as Chromium or Helm): on a
//! developer's machine it is skipped with a notice, under CI (`CI` set) it
//! fails, because there everything must run and a skipped test proves nothing.

/// Whether tests run under CI, where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Stops a test for want of `missing` (what is missing, and where): a
/// failure that says `remedy` under CI, a skip notice elsewhere. The caller
/// returns (skips) after it.
#[track_caller]
pub fn skip_or_fail(missing: &str, remedy: &str) {
    assert!(
        !under_ci(),
        "{missing}, and CI is set, so this test must run: {remedy}"
    );
    eprintln!("skipping: {missing} ({remedy}; set CI=1 to make this a failure)");
}

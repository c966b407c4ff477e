//! Where backups live in a bucket, as pure rules: the `s3://` URLs of the
//! command line, the name of a backup, the objects of one, and which backups
//! a keep count prunes.
//!
//! Layout: `PREFIX/NAME/manifest.json` beside `PREFIX/NAME/<table>.copy.zst`.
//! A backup is complete once its manifest exists (it is written last), and
//! names are UTC times (`20261208T013000.123Z`), so they sort by age.

use std::collections::BTreeSet;

/// The manifest's object name inside a backup.
pub const MANIFEST: &str = "manifest.json";

/// A parsed `s3://BUCKET/PREFIX[/NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty (the bucket's root).
    pub prefix: String,
    /// A backup named by the URL's last segment (restore only).
    pub name: Option<String>,
}

/// Reads `s3://BUCKET/PREFIX`; with `named`, a last segment that is a backup
/// name ([`is_backup_name`]) is taken as the backup to restore.
pub fn parse(url: &str, named: bool) -> Result<Location, String> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        format!("{url:?} is not an s3:// URL: write s3://BUCKET/PREFIX (any S3-compatible store; its endpoint comes from AWS_ENDPOINT_URL)")
    })?;
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{url:?} names no bucket: write s3://BUCKET/PREFIX"));
    }
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(format!(
            "{url:?}: a prefix may not contain . or .. segments"
        ));
    }
    let name = match segments.last() {
        Some(last) if named && is_backup_name(last) => {
            let name = last.to_string();
            segments.pop();
            Some(name)
        }
        _ => None,
    };
    Ok(Location {
        bucket: bucket.to_string(),
        prefix: segments.join("/"),
        name,
    })
}

impl Location {
    /// The object `file` of backup `name`.
    pub fn object(&self, name: &str, file: &str) -> String {
        self.join(&format!("{name}/{file}"))
    }

    /// `PREFIX/path`, or `path` at the bucket's root.
    fn join(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.prefix)
        }
    }

    /// The backup an object belongs to, if it lies in one under the prefix.
    fn backup_of<'a>(&self, object: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = if self.prefix.is_empty() {
            object
        } else {
            object.strip_prefix(&self.prefix)?.strip_prefix('/')?
        };
        let (name, file) = rest.split_once('/')?;
        is_backup_name(name).then_some((name, file))
    }

    /// What the objects under the prefix hold.
    pub fn survey(&self, objects: &[String]) -> Survey {
        let mut survey = Survey::default();
        for object in objects {
            if let Some((name, file)) = self.backup_of(object) {
                survey.names.insert(name.to_string());
                if file == MANIFEST {
                    survey.complete.insert(name.to_string());
                }
            }
        }
        survey
    }
}

/// The backups found under a prefix.
#[derive(Debug, Default, PartialEq)]
pub struct Survey {
    /// Every backup with at least one object.
    names: BTreeSet<String>,
    /// Those with a manifest.
    complete: BTreeSet<String>,
}

impl Survey {
    /// The newest complete backup.
    pub fn latest(&self) -> Option<&str> {
        self.complete.last().map(String::as_str)
    }

    /// Whether backup `name` is complete.
    pub fn has(&self, name: &str) -> bool {
        self.complete.contains(name)
    }

    /// The backups to delete so that `keep` complete ones remain: the older
    /// complete ones, and every incomplete one (a run that died part way)
    /// older than the newest complete one (a younger one may still be
    /// writing).
    pub fn prune(&self, keep: usize) -> Vec<String> {
        let kept: BTreeSet<&String> = self.complete.iter().rev().take(keep).collect();
        let newest = self.complete.last();
        self.names
            .iter()
            .filter(|name| !kept.contains(name))
            .filter(|name| self.complete.contains(*name) || newest.is_some_and(|n| *name < n))
            .cloned()
            .collect()
    }
}

/// Whether `s` is a backup name: `YYYYMMDDTHHMMSS.mmmZ`.
pub fn is_backup_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'.'
        && b[16..19].iter().all(u8::is_ascii_digit)
        && b[19] == b'Z'
}

/// The name of a backup taken at `time`.
pub fn backup_name(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(time)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "20261201T000000.000Z";
    const B: &str = "20261202T000000.000Z";
    const C: &str = "20261203T000000.000Z";

    #[test]
    fn parses_bucket_prefix_and_name() {
        let l = parse("s3://bkt/team/pulse/", false).unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str(), l.name),
            ("bkt", "team/pulse", None)
        );
        let l = parse(&format!("s3://bkt/team/{A}"), true).unwrap();
        assert_eq!((l.prefix.as_str(), l.name.as_deref()), ("team", Some(A)));
        // Without `named` (a backup's destination) the segment is a prefix.
        assert_eq!(parse(&format!("s3://bkt/{A}"), false).unwrap().prefix, A);
        assert_eq!(parse("s3://bkt", false).unwrap().prefix, "");
        for bad in ["http://bkt/x", "s3:///x", "s3://bkt/../x", "bkt/x"] {
            assert!(parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_sort_by_time_and_are_recognised() {
        let early = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_765_000_000_123);
        let late = early + std::time::Duration::from_millis(1);
        let (e, l) = (backup_name(early), backup_name(late));
        assert_eq!(e, "20251206T054640.123Z");
        assert!(is_backup_name(&e) && e < l);
        assert!(!is_backup_name("20251206T054640Z") && !is_backup_name("latest"));
    }

    #[test]
    fn survey_finds_the_latest_and_prunes_beyond_keep() {
        let l = parse("s3://bkt/p", false).unwrap();
        let objects: Vec<String> = [
            format!("p/{A}/series.copy.zst"),
            format!("p/{A}/{MANIFEST}"),
            format!("p/{B}/series.copy.zst"), // died part way
            format!("p/{C}/{MANIFEST}"),
            format!("other/{A}/{MANIFEST}"),
            "p/notes.txt".to_string(),
        ]
        .into();
        let survey = l.survey(&objects);
        assert_eq!(survey.latest(), Some(C));
        assert!(survey.has(A) && !survey.has(B));
        assert_eq!(survey.prune(1), vec![A.to_string(), B.to_string()]);
        assert_eq!(survey.prune(2), vec![B.to_string()]);
        assert_eq!(l.object(C, MANIFEST), format!("p/{C}/{MANIFEST}"));
    }
}

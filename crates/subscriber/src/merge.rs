//! `mqtt-subscriber merge`: reads the reports of the members of a shared subscription
//! and hands them to the protocol crate's merge, which computes the verdict with the
//! same verifier a lone subscriber uses. This module only deals with files.

use std::path::{Path, PathBuf};

use mqtt_protocol::merge::{merge, Member, MergeError};
use mqtt_protocol::report::{MergeReport, VerifyReport, SCHEMA_VERSION};

use crate::cli::MergeArgs;

/// Why a merge failed: a report that cannot be read, or reports that cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeFailure {
    #[error("cannot read the report {}: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a JSON report: {source}", .path.display())]
    NotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} is not a subscriber report ({found}); merge reads what `mqtt-subscriber --report-json` writes", .path.display())]
    NotSubscriber { path: PathBuf, found: String },
    #[error("{} does not match the subscriber report schema (version {SCHEMA_VERSION}): {source}", .path.display())]
    Schema {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Merge(#[from] MergeError),
}

/// Reads every report named in `args` and merges them.
pub fn run(args: &MergeArgs) -> Result<MergeReport, MergeFailure> {
    let members = args
        .reports
        .iter()
        .map(|path| read_member(path))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merge(&members, args.count)?)
}

/// Reads one member's report, checking what it is before how it is shaped, so that a
/// publisher's report or a foreign file gets a message that says so.
pub fn read_member(path: &Path) -> Result<Member, MergeFailure> {
    let text = std::fs::read_to_string(path).map_err(|source| MergeFailure::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| MergeFailure::NotJson {
            path: path.to_owned(),
            source,
        })?;
    let kind = value.get("kind").and_then(|k| k.as_str());
    let version = value.get("schema_version").and_then(|v| v.as_u64());
    if kind != Some("subscriber") || version != Some(u64::from(SCHEMA_VERSION)) {
        let found = match (kind, version) {
            (Some(kind), Some(version)) => format!("kind {kind:?}, schema version {version}"),
            (Some(kind), None) => format!("kind {kind:?} without a schema version"),
            (None, _) => "no \"kind\" field".to_string(),
        };
        return Err(MergeFailure::NotSubscriber {
            path: path.to_owned(),
            found,
        });
    }
    let report: VerifyReport =
        serde_json::from_value(value).map_err(|source| MergeFailure::Schema {
            path: path.to_owned(),
            source,
        })?;
    Ok(Member {
        name: path.display().to_string(),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn merge_files(paths: &[PathBuf]) -> Result<MergeReport, MergeFailure> {
        run(&MergeArgs {
            reports: paths.to_vec(),
            count: None,
            report_json: None,
        })
    }

    #[test]
    fn unusable_files_give_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (None, "cannot read the report"),
            (Some("{not json"), "is not a JSON report"),
            (
                Some(r#"{"kind":"publisher","schema_version":1}"#),
                "kind \"publisher\"",
            ),
            (Some(r#"[1, 2]"#), "no \"kind\" field"),
            (
                Some(r#"{"kind":"subscriber","schema_version":1,"client_id":"x"}"#),
                "does not match the subscriber report schema",
            ),
            (
                Some(r#"{"kind":"subscriber","schema_version":9}"#),
                "schema version 9",
            ),
        ];
        for (i, (text, expected)) in cases.into_iter().enumerate() {
            let name = format!("r{i}.json");
            let path = match text {
                Some(text) => write(dir.path(), &name, text),
                None => dir.path().join(name),
            };
            let message = merge_files(&[path]).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(!message.contains('\n'), "{message:?}");
        }
    }
}

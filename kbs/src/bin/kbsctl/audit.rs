//! `kbsctl audit ...`: check an audit file's hash chain offline, or query
//! the broker's recent records.

use std::path::PathBuf;

use clap::Subcommand;
use kbs_proto::v1::QueryAuditRequest;

use crate::connection::{Client, refused};
use crate::{Failure, Output};

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check the hash chain of an audit log (JSON lines) and, with
    /// `--key`, the MAC of every record: exit 0 intact, 2 broken (a record
    /// edited, removed or reordered, a rotated file missing, reordered,
    /// truncated or replaced, or a log rewritten without the key), 1
    /// unreadable.
    Verify {
        /// The log's files: the current file and the rotated ones
        /// (`PATH.NNNNNN`), in any order, or the directory holding them.
        /// A set may start at a rotated file (older ones shipped or
        /// deleted): it is checked from that file's link on.
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The broker's audit key (`[audit] key_file`: 32 raw bytes or 64
        /// hex digits). Without it the MACs are not checked, and a file
        /// rewritten whole with a recomputed hash chain passes.
        #[arg(long)]
        key: Option<PathBuf>,
        /// A head the broker logged (`audit head`: `records`): the file must
        /// hold at least this many records, so a removed tail shows.
        #[arg(long, requires = "expect_head")]
        expect_count: Option<usize>,
        /// The head's `head_mac` (with `--key`) or `head_sha256` (without):
        /// record N must be this one.
        #[arg(long, requires = "expect_count")]
        expect_head: Option<String>,
    },
    /// Print the broker's most recent audit records, from the current file
    /// and the rotated ones: a table (time, action, decision, reason, TEE,
    /// secrets, caller), or with `--output json` a JSON array of the
    /// records as the broker wrote them. The broker reads at most 256 MiB
    /// of audit files per query, newest first; a note on stderr says when
    /// older files were left unread.
    Query {
        /// Only records at or after this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Only this action (`release`, `secret.put`, `policy.set`, ...).
        #[arg(long)]
        action: Option<String>,
        /// How many records, most recent (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `audit verify`: offline, no broker.
pub(crate) fn verify(
    files: &[PathBuf],
    key: Option<&std::path::Path>,
    expect: Option<(usize, &str)>,
    output: Output,
) -> Result<(), Failure> {
    let anchor = match expect {
        Some((count, head)) => {
            let head = hex::decode(head.trim())
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| Failure::Usage("--expect-head must be 64 hex digits".into()))?;
            Some(kbs::audit::Anchor { count, head })
        }
        None => None,
    };
    let key = match key {
        Some(path) => {
            let bytes = crate::model::read_key_file(path)?;
            Some(kbs::audit::AuditKey::new(&bytes))
        }
        None => None,
    };
    let named = |file: &Option<PathBuf>| match file {
        Some(f) => f.display().to_string(),
        None => files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" "),
    };
    match kbs::audit::verify_files(files, key.as_ref(), anchor.as_ref()) {
        Ok(found) => {
            let (count, last) = (found.count, hex::encode(found.last));
            let span = if found.files > 1 || found.first_file > 1 {
                format!(" in files {} to {}", found.first_file, found.last_file)
            } else {
                String::new()
            };
            let before = if found.before > 0 {
                format!(" (the first {} in earlier files not given)", found.before)
            } else {
                String::new()
            };
            match (output, found.head_mac) {
                (Output::Json, head) => outln!(
                    "{}",
                    serde_json::json!({"ok": true, "records": count, "last": last, "keyed": found.keyed,
                        "macs_checked": head.is_some(), "head_mac": head.map(hex::encode),
                        "files": found.files, "first_file": found.first_file, "last_file": found.last_file,
                        "records_before": found.before})
                ),
                (Output::Table, Some(head)) => {
                    outln!(
                        "ok: {count} records{span}{before}, hash and MAC chains intact (head MAC {})",
                        hex::encode(head)
                    )
                }
                (Output::Table, None) => {
                    let carried = if found.keyed { "the records carry MACs, " } else { "" };
                    outln!(
                        "ok: {count} records{span}{before}, hash chain intact (last record SHA-256 {last}); {carried}MACs not checked (give --key)"
                    )
                }
            }
            Ok(())
        }
        Err((file, kbs::audit::AuditError::Truncated { expected, found })) => {
            if output == Output::Json {
                outln!(
                    "{}",
                    serde_json::json!({"ok": false, "truncated": true, "expected": expected, "records": found})
                );
            }
            Err(Failure::Refused(format!("truncated: {}: {expected} records expected, {found} found", named(&file))))
        }
        Err((file, kbs::audit::AuditError::Broken { line, why })) => {
            if output == Output::Json {
                outln!("{}", serde_json::json!({"ok": false, "file": named(&file), "line": line, "why": why}));
            }
            Err(Failure::Refused(format!("broken: {}: line {line}: {why}", named(&file))))
        }
        Err((file, e)) => Err(Failure::Usage(format!("{}: {e}", named(&file)))),
    }
}

/// `audit query`.
pub(crate) async fn query(
    client: &mut Client,
    since: Option<&str>,
    action: Option<&str>,
    limit: u32,
    output: Output,
) -> Result<(), Failure> {
    let since = match since {
        None => 0,
        Some(text) => match text.parse::<i64>() {
            Ok(unix) => unix,
            Err(_) => time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| Failure::Usage(format!("--since {text:?}: {e}")))?
                .unix_timestamp(),
        },
    };
    let resp = client
        .query_audit(QueryAuditRequest { since, limit, action: action.unwrap_or_default().to_owned() })
        .await
        .map_err(refused)?
        .into_inner();
    let records = resp
        .records
        .iter()
        .map(|r| serde_json::from_str(r))
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .map_err(|e| Failure::Usage(format!("the broker sent an audit record that is not JSON: {e}")))?;
    print_records(&records, output);
    if resp.truncated {
        eprintln!(
            "note: {} records found; older audit files were not read (a query reads at most 256 MiB of them): narrow it with --since or --action",
            records.len()
        );
    }
    Ok(())
}

/// The records as a table, or as a JSON array of them.
fn print_records(records: &[serde_json::Value], output: Output) {
    if output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(records).unwrap_or_default());
        return;
    }
    outln!("{:<20} {:<16} {:<8} {:<28} {:<6} {:<40} CALLER", "TIME", "ACTION", "DECISION", "REASON", "TEE", "SECRETS");
    let text =
        |record: &serde_json::Value, key: &str| record.get(key).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
    for record in records {
        let secrets: Vec<String> = record
            .get("secrets")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .map(|s| match (s.get("name").and_then(|n| n.as_str()), s.get("version").and_then(|v| v.as_u64())) {
                (Some(name), Some(version)) => format!("{name}@{version}"),
                (Some(name), None) => name.to_owned(),
                _ => "?".to_owned(),
            })
            .collect();
        let secrets = if secrets.is_empty() { "-".to_owned() } else { secrets.join(",") };
        // Whole seconds: the record keeps the exact time.
        let time = text(record, "time");
        let time = match time.split_once('.') {
            Some((seconds, _)) => format!("{seconds}Z"),
            None => time,
        };
        outln!(
            "{:<20} {:<16} {:<8} {:<28} {:<6} {:<40} {}",
            time,
            text(record, "action"),
            text(record, "decision"),
            text(record, "reason"),
            text(record, "tee"),
            secrets,
            text(record, "caller")
        );
    }
}

/// Runs an `audit` subcommand that needs the broker.
pub(crate) async fn run(client: &mut Client, cmd: &AuditCommand, output: Output) -> Result<(), Failure> {
    match cmd {
        AuditCommand::Query { since, action, limit } => {
            query(client, since.as_deref(), action.as_deref(), *limit, output).await
        }
        AuditCommand::Verify { .. } => Ok(()),
    }
}

//! `kbsctl refval ...`: reference value sets (allowed measurements, minimum
//! TCBs, ...), which policies read as `data.reference_values[NAME]`.

use std::path::PathBuf;

use clap::Subcommand;
use kbs_proto::v1::{
    DeleteReferenceValuesRequest, GetReferenceValuesRequest, ListReferenceValuesRequest, PutReferenceValuesRequest,
    ReferenceValues,
};

use crate::connection::{Client, refused};
use crate::{Failure, Output};

#[derive(Subcommand, Debug)]
pub(crate) enum RefvalCommand {
    /// Store a set (a new version if it exists) from a JSON file.
    Add {
        /// Set name, `[A-Za-z0-9._-]{1,64}`.
        name: String,
        /// JSON file, e.g. {"measurements": ["<96 hex>"], "snp_min_tcb": {"milan": {"snp": 23}}}.
        file: PathBuf,
    },
    /// Print one set.
    Show {
        /// Set name.
        name: String,
    },
    /// List the sets.
    List,
    /// Delete a set.
    Rm {
        /// Set name.
        name: String,
    },
}

/// Runs a `refval` subcommand.
pub(crate) async fn run(client: &mut Client, cmd: &RefvalCommand, output: Output) -> Result<(), Failure> {
    match cmd {
        RefvalCommand::Add { name, file } => {
            let json = std::fs::read_to_string(file)
                .map_err(|e| Failure::Usage(format!("reading {}: {e}", file.display())))?;
            let set = client
                .put_reference_values(PutReferenceValuesRequest { name: name.clone(), json })
                .await
                .map_err(refused)?
                .into_inner();
            print_sets(&[set], output, false);
        }
        RefvalCommand::Show { name } => {
            let set = client
                .get_reference_values(GetReferenceValuesRequest { name: name.clone() })
                .await
                .map_err(refused)?
                .into_inner();
            let pretty = serde_json::from_str::<serde_json::Value>(&set.json)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(set.json);
            outln!("{pretty}");
        }
        RefvalCommand::List => {
            let list = client.list_reference_values(ListReferenceValuesRequest {}).await.map_err(refused)?.into_inner();
            print_sets(&list.sets, output, true);
        }
        RefvalCommand::Rm { name } => {
            client
                .delete_reference_values(DeleteReferenceValuesRequest { name: name.clone() })
                .await
                .map_err(refused)?;
            outln!("deleted reference values {name}");
        }
    }
    Ok(())
}

fn print_sets(sets: &[ReferenceValues], output: Output, summary: bool) {
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = sets
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name, "version": s.version, "updated_at": s.updated_at,
                        "values": serde_json::from_str::<serde_json::Value>(&s.json).unwrap_or_default(),
                    })
                })
                .collect();
            outln!("{}", serde_json::Value::Array(items));
        }
        Output::Table => {
            outln!("{:<32} {:>7} {:<20} {}", "NAME", "VERSION", "UPDATED", if summary { "KEYS" } else { "" });
            for s in sets {
                let keys = serde_json::from_str::<serde_json::Value>(&s.json)
                    .ok()
                    .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>().join(",")))
                    .unwrap_or_default();
                outln!("{:<32} {:>7} {:<20} {}", s.name, s.version, time_text(s.updated_at), keys);
            }
        }
    }
}

/// Unix seconds as RFC 3339.
pub(crate) fn time_text(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

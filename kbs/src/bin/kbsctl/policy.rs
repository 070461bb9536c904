//! `kbsctl policy ...`: release policies on the broker, and offline dry
//! runs of a policy file against claims or evidence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use kbs::evidence::Claims;
use kbs::policy::{Decision, decide_offline, placeholder_meta};
use kbs::reason::ReasonCode;
use kbs_proto::v1::{DeletePolicyRequest, GetPolicyRequest, ListPoliciesRequest, Policy, SetPolicyRequest};

use crate::connection::{Client, refused};
use crate::verify::{EvidenceArgs, Tee};
use crate::{Failure, Output};

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Compile and store a Rego policy for a scope (`models/llama/key`,
    /// `models/`, `models/llama*` or `*`); a policy that does not compile is
    /// refused with the compiler's message.
    Set {
        /// Scope.
        scope: String,
        /// The Rego file.
        file: PathBuf,
    },
    /// Print the policy set for exactly this scope.
    Get {
        /// Scope.
        scope: String,
    },
    /// List the policies in force, most specific first.
    List,
    /// Delete the policy of a scope.
    Rm {
        /// Scope.
        scope: String,
    },
    /// Evaluate a policy file offline against claims or evidence; prints
    /// allow or deny with every reason (exit 0 allowed, 2 refused).
    Test(Box<TestArgs>),
}

#[derive(clap::Args, Debug)]
pub(crate) struct TestArgs {
    /// The Rego policy file.
    #[arg(long)]
    policy: PathBuf,
    /// A claims document (JSON, as `kbsctl verify` prints it).
    #[arg(long, conflicts_with = "evidence", required_unless_present = "evidence")]
    claims: Option<PathBuf>,
    /// Evidence to verify first (the report, raw or hex), instead of --claims.
    #[arg(long, requires = "tee")]
    evidence: Option<PathBuf>,
    /// TEE kind of --evidence.
    #[arg(long, value_enum)]
    tee: Option<Tee>,
    /// SNP: the VCEK or VLEK of --evidence (DER or PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// TDX: the collateral of --evidence (as for `kbsctl verify`).
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// ASK or ASVK (and ARK) PEM bundle for --evidence.
    #[arg(long)]
    chain: Vec<PathBuf>,
    /// Verification time of --evidence (RFC 3339); default now.
    #[arg(long)]
    time: Option<String>,
    #[command(flatten)]
    context: PolicyContext,
}

/// What an offline decision needs besides the claims.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct PolicyContext {
    /// Reference values, `NAME=FILE` or `FILE` (named `default`); repeatable.
    #[arg(long = "refvals")]
    refvals: Vec<String>,
    /// The secret the decision is for (default `test/secret`).
    #[arg(long)]
    secret: Option<String>,
    /// Label of that secret, `key=value` (e.g. `refvals=llama-prod`); repeatable.
    #[arg(long = "secret-label")]
    secret_labels: Vec<String>,
    /// A measurement in that secret's own allow-list; repeatable.
    #[arg(long = "secret-allow-measurement")]
    secret_allowed: Vec<String>,
}

/// Runs a `policy` subcommand against the broker.
pub(crate) async fn run(client: &mut Client, cmd: &PolicyCommand, output: Output) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Set { scope, file } => {
            let rego = read_text(file)?;
            let p =
                client.set_policy(SetPolicyRequest { scope: scope.clone(), rego }).await.map_err(refused)?.into_inner();
            print_policies(&[p], output, false);
        }
        PolicyCommand::Get { scope } => {
            let p = client.get_policy(GetPolicyRequest { scope: scope.clone() }).await.map_err(refused)?.into_inner();
            match output {
                Output::Json => print_policies(&[p], output, true),
                Output::Table => out!("{}", p.rego),
            }
        }
        PolicyCommand::List => {
            let list = client.list_policies(ListPoliciesRequest {}).await.map_err(refused)?.into_inner();
            print_policies(&list.policies, output, false);
        }
        PolicyCommand::Rm { scope } => {
            client.delete_policy(DeletePolicyRequest { scope: scope.clone() }).await.map_err(refused)?;
            outln!("deleted policy {scope}");
        }
        PolicyCommand::Test(args) => return test(args, output),
    }
    Ok(())
}

/// `policy test`: offline, no broker.
pub(crate) fn test(args: &TestArgs, output: Output) -> Result<(), Failure> {
    let claims = match (&args.claims, &args.evidence, args.tee) {
        (Some(path), _, _) => serde_json::from_str::<Claims>(&read_text(path)?)
            .map_err(|e| Failure::Usage(format!("{}: not a claims document: {e}", path.display())))?,
        (None, Some(evidence), Some(tee)) => crate::verify::verified_claims(&EvidenceArgs::new(
            tee,
            evidence.clone(),
            args.cert.clone(),
            args.collateral.clone(),
            args.chain.clone(),
            args.time.clone(),
        ))?,
        _ => {
            return Err(Failure::Usage(
                "give --claims FILE, or --evidence FILE --tee TEE (--cert | --collateral)".into(),
            ));
        }
    };
    decide(&claims, &args.policy, &args.context, output)
}

/// Evaluates `policy` for `claims` and prints the decision; a refusal is
/// exit 2.
pub(crate) fn decide(claims: &Claims, policy: &Path, context: &PolicyContext, output: Output) -> Result<(), Failure> {
    let rego = read_text(policy)?;
    let mut sets = BTreeMap::new();
    for spec in &context.refvals {
        let (name, path) = match spec.split_once('=') {
            Some((name, path)) => (name.to_owned(), PathBuf::from(path)),
            None => ("default".to_owned(), PathBuf::from(spec)),
        };
        let value: serde_json::Value = serde_json::from_str(&read_text(&path)?)
            .map_err(|e| Failure::Usage(format!("{}: not JSON: {e}", path.display())))?;
        sets.insert(name, value);
    }
    let mut meta = placeholder_meta(context.secret.as_deref().unwrap_or("test/secret"));
    for kv in &context.secret_labels {
        let (k, v) = kv.split_once('=').ok_or_else(|| Failure::Usage(format!("label {kv:?} is not key=value")))?;
        meta.labels.insert(k.to_owned(), v.to_owned());
    }
    meta.allowed_measurements = context.secret_allowed.iter().map(|m| m.to_ascii_lowercase()).collect();
    let decision = decide_offline(&rego, &sets, claims, &meta).map_err(|e| Failure::Usage(e.to_string()))?;
    print_decision(&decision, output);
    if decision.allow { Ok(()) } else { Err(Failure::Refused("refused by the policy".into())) }
}

fn print_decision(d: &Decision, output: Output) {
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::json!({
                "allow": d.allow,
                "code": d.code.map(|c| c.as_str()),
                "reasons": d.reasons,
            })
        ),
        Output::Table => {
            match (d.allow, d.code) {
                (true, _) => outln!("allow"),
                (false, code) => outln!("deny ({})", code.unwrap_or(ReasonCode::PolicyDenied)),
            }
            for reason in &d.reasons {
                outln!("  - {reason}");
            }
        }
    }
}

fn print_policies(policies: &[Policy], output: Output, with_source: bool) {
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = policies
                .iter()
                .map(|p| {
                    let mut v = serde_json::Map::new();
                    v.insert("scope".into(), p.scope.clone().into());
                    v.insert("version".into(), p.version.into());
                    v.insert("updated_at".into(), p.updated_at.into());
                    v.insert("sha256".into(), p.sha256.clone().into());
                    if with_source {
                        v.insert("rego".into(), p.rego.clone().into());
                    }
                    serde_json::Value::Object(v)
                })
                .collect();
            outln!("{}", serde_json::Value::Array(items));
        }
        Output::Table => {
            outln!("{:<40} {:>7} {:<20} SHA-256", "SCOPE", "VERSION", "UPDATED");
            for p in policies {
                let updated =
                    if p.version == 0 { "built-in".to_owned() } else { crate::refval::time_text(p.updated_at) };
                outln!("{:<40} {:>7} {:<20} {}", p.scope, p.version, updated, p.sha256);
            }
        }
    }
}

fn read_text(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))
}

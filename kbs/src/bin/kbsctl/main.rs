//! `kbsctl`: the operator CLI.
//!
//! Exit codes: 0 success; 1 usage, configuration or local I/O error;
//! 2 refused (by the broker, or evidence rejected by `verify`);
//! 3 the broker could not be reached.

mod audit;
mod collateral;
mod connection;
mod policy;
mod refval;
mod secret;
mod verify;
mod verify_tdx;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "Settings come from flags, then the environment (KBS_ADMIN_URL, KBS_ADMIN_TOKEN,
KBS_ADMIN_TOKEN_FILE, KBS_CA, KBS_CLIENT_CERT, KBS_CLIENT_KEY), then the config file
(--config, default ~/.config/kbsctl/config.toml; keys: url, ca, token_file,
client_cert, client_key, domain).

Exit codes:
  0  success
  1  usage, configuration or local I/O error
  2  refused: the broker refused the call, or `verify` rejected the evidence
  3  the broker could not be reached";

#[derive(Parser, Debug)]
#[command(name = "kbsctl", version, about = "Operator CLI for the key broker", after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Config file (default ~/.config/kbsctl/config.toml).
    #[arg(long, global = true, env = "KBSCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin endpoint, e.g. https://127.0.0.1:8444.
    #[arg(long, global = true, env = "KBS_ADMIN_URL")]
    pub url: Option<String>,
    /// File holding the admin bearer token (or set KBS_ADMIN_TOKEN).
    #[arg(long, global = true, env = "KBS_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long, global = true, env = "KBS_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS instead of a token.
    #[arg(long, global = true, env = "KBS_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    #[arg(long, global = true, env = "KBS_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// TLS server name to expect, when it differs from the URL's host.
    #[arg(long, global = true)]
    pub domain: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Manage secrets (values are write-only).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Verify captured evidence offline with the shipped AMD, Intel or
    /// (with --gpu) NVIDIA anchors and print its claims as JSON (and, with
    /// --policy, the policy's decision).
    Verify(Box<verify::VerifyArgs>),
    /// Manage release policies; `policy test` dry-runs a policy offline.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Manage reference values (allowed measurements, minimum TCBs, ...).
    #[command(subcommand)]
    Refval(refval::RefvalCommand),
    /// Verify an audit file's hash chain, or query the broker's audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Fetch TDX collateral for an air-gapped broker.
    #[command(subcommand)]
    Collateral(collateral::CollateralCommand),
}

/// A failure, with its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Exit 1.
    Usage(String),
    /// Exit 2.
    Refused(String),
    /// Exit 3.
    Unreachable(String),
}

impl Failure {
    fn exit(&self) -> ExitCode {
        match self {
            Self::Usage(m) => {
                eprintln!("error: {m}");
                ExitCode::from(1)
            }
            Self::Refused(m) => {
                eprintln!("{m}");
                ExitCode::from(2)
            }
            Self::Unreachable(m) => {
                eprintln!("error: broker unreachable: {m}");
                ExitCode::from(3)
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with 2 on usage errors; 2 means "refused" here, so usage
    // errors are mapped to 1.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Verify(args) => verify::run(args, cli.output),
        Command::Policy(policy::PolicyCommand::Test(args)) => policy::test(args, cli.output),
        Command::Policy(cmd) => {
            let mut client = connection::connect(&cli).await?;
            policy::run(&mut client, cmd, cli.output).await
        }
        Command::Refval(cmd) => {
            let mut client = connection::connect(&cli).await?;
            refval::run(&mut client, cmd, cli.output).await
        }
        Command::Audit(audit::AuditCommand::Verify { file }) => audit::verify(file, cli.output),
        Command::Audit(cmd) => {
            let mut client = connection::connect(&cli).await?;
            audit::run(&mut client, cmd).await
        }
        Command::Secret(cmd) => {
            let mut client = connection::connect(&cli).await?;
            secret::run(&mut client, cmd, cli.output).await
        }
        Command::Collateral(cmd) => collateral::run(cmd).await,
    }
}

//! `kbsctl`: the operator CLI.
//!
//! Exit codes: 0 success; 1 usage, configuration or local I/O error;
//! 2 refused (by the broker, or evidence rejected by `verify`);
//! 3 the broker could not be reached; 141 stdout closed by its reader.

/// Prints a line to stdout (see [`stdout`]).
macro_rules! outln {
    () => {
        $crate::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints to stdout (see [`stdout`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout(format_args!($($arg)*))
    };
}

mod audit;
mod collateral;
mod connection;
mod gpu;
mod model;
mod policy;
mod refval;
mod secret;
mod verify;
mod verify_tdx;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{FromArgMatches as _, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "Settings come from flags, then the environment (KBS_ADMIN_URL, KBS_ADMIN_TOKEN,
KBS_ADMIN_TOKEN_FILE, KBS_CA, KBS_CLIENT_CERT, KBS_CLIENT_KEY), then the config file
(--config, default ~/.config/kbsctl/config.toml; keys: url, ca, token_file,
client_cert, client_key, domain).

Exit codes:
  0  success
  1  usage, configuration or local I/O error
  2  refused: the broker refused the call, or `verify` rejected the evidence
  3  the broker could not be reached
  141  stdout was closed by its reader (e.g. `| head`): the output stops quietly";

#[derive(Parser, Debug)]
#[command(name = "kbsctl", version = kbs_proto::VERSION, about = "Operator CLI for the key broker", after_help = EXIT_CODES)]
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
    /// NVIDIA GPU reference values: `gpu rim import` verifies RIMs into a
    /// broker's RIM directory.
    #[command(subcommand)]
    Gpu(gpu::GpuCommand),
    /// Print a shell completion script (e.g. `kbsctl completion bash >
    /// /etc/bash_completion.d/kbsctl`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Encrypt model files, inspect them, rewrap them after a key rotation.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Write the manual pages (kbsctl.1, kbsctl-secret-put.1, ...) into a
    /// directory, e.g. /usr/local/share/man/man1.
    Man {
        /// The directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// The command line, with the settings and exit codes under every
/// subcommand's help (and manual page), not only the top level's.
fn command() -> clap::Command {
    fn with_exit_codes(command: clap::Command) -> clap::Command {
        command.after_help(EXIT_CODES).mut_subcommands(with_exit_codes)
    }
    with_exit_codes(<Cli as clap::CommandFactory>::command())
}

/// Writes to stdout. A reader that went away (`kbsctl ... | head`) ends the
/// command quietly with exit 141, as SIGPIPE ends `ls`; any other write
/// error is exit 1.
pub(crate) fn stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
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
    let cli = match command().try_get_matches().and_then(|matches| Cli::from_arg_matches(&matches)) {
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
        Command::Audit(audit::AuditCommand::Verify { files, key, expect_count, expect_head }) => {
            let expect = expect_count.zip(expect_head.as_deref());
            audit::verify(files, key.as_deref(), expect, cli.output)
        }
        Command::Audit(cmd) => {
            let mut client = connection::connect(&cli).await?;
            audit::run(&mut client, cmd, cli.output).await
        }
        Command::Secret(cmd) => {
            let mut client = connection::connect(&cli).await?;
            secret::run(&mut client, cmd, cli.output).await
        }
        Command::Collateral(cmd) => collateral::run(cmd).await,
        Command::Gpu(cmd) => gpu::run(cmd),
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command(), "kbsctl", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Model(cmd) => model::run(&cli, cmd).await,
        Command::Man { dir } => {
            let written = kbs_proto::man::write_pages(command(), dir)
                .map_err(|e| Failure::Usage(format!("writing manual pages to {}: {e}", dir.display())))?;
            for page in written {
                outln!("{}", page.display());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn model_encrypt_parses_beside_the_global_output_flag() {
        let cli = Cli::try_parse_from([
            "kbsctl",
            "--output",
            "json",
            "model",
            "encrypt",
            "--secret",
            "m/k",
            "--generate",
            "in",
            "out",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(cli.command, Command::Model(model::ModelCommand::Encrypt(_))));
        // --key-file and --generate exclude each other.
        assert!(
            Cli::try_parse_from([
                "kbsctl",
                "model",
                "encrypt",
                "--secret",
                "m",
                "--generate",
                "--key-file",
                "k",
                "i",
                "o"
            ])
            .is_err()
        );
    }
}

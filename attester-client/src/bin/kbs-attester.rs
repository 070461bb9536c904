//! `kbs-attester`: fetch secrets from the key broker with TEE evidence and
//! write them to a directory. Thin: flags, logging, then the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use attester_client::evidence::{
    ConfigfsTsm, DEFAULT_TSM_REPORT_DIR, EvidenceSource, GpuEvidenceSource, NvmlGpus, Tee,
};
use attester_client::{ClientConfig, KbsClient, output};
use clap::{Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0  every secret was fetched and written
  1  local problem (unreadable CA file, unusable URL or CA)
  2  usage error (including bad --sim-* values, and a model decrypt --out
     that is not on tmpfs or ramfs without --allow-persistent-disk)
  3  the broker refused (the reason code is printed, e.g. `error: debug_enabled`)
  4  the broker could not be reached or the call failed without a reason code
  5  the TEE evidence could not be collected
  6  the broker's answer was invalid (missing secrets, undecryptable values)
  7  the secrets (or decrypted files) could not be written, or another model
     decrypt holds --out
  8  model decrypt: an encrypted file was refused (wrong key or version,
     modified header or chunk, truncated, trailing data); the reason is printed
  9  --gpus: the GPUs' evidence could not be collected (NVML cannot be loaded,
     no GPU, GPUs not in confidential-computing mode, or the driver's answer
     is unusable); NVML and the CC mode are checked before the broker is
     contacted and before the CPU TEE is asked for a report
On any failure nothing is written to --out.";

#[derive(Debug, Parser)]
#[command(name = "kbs-attester", version = kbs_proto::VERSION, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attest to the broker, fetch the named secrets and write each to OUT/NAME (mode 0400).
    #[command(after_help = EXIT_CODES)]
    Fetch(Box<FetchArgs>),
    /// Print a shell completion script.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Encrypted model files (see docs/model-format.md).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Write the manual pages (kbs-attester.1, kbs-attester-fetch.1, ...)
    /// into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Attest once, fetch every key the headers name, and decrypt the files
    /// into OUT (same relative paths). Each file is written as NAME.partial
    /// and renamed only after every file authenticated completely; on any
    /// failure no plaintext is left. OUT must be on tmpfs or ramfs unless
    /// --allow-persistent-disk is given.
    #[command(after_help = EXIT_CODES)]
    Decrypt(Box<DecryptArgs>),
}

#[derive(Debug, clap::Args)]
struct DecryptArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// An encrypted file, or a directory of them (recursive).
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    /// Directory to write the plaintext files to; created (0700) if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Allow OUT on a persistent file system (the plaintext weights are
    /// then readable by whoever can read that disk).
    #[arg(long)]
    allow_persistent_disk: bool,
    /// Chunks decrypted in parallel [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct FetchArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Secret to fetch (repeatable), e.g. `models/llama/key`.
    #[arg(long = "secret", value_name = "NAME", required = true, num_args = 1..)]
    secrets: Vec<String>,
    /// Directory to write the secrets to; created (0700) if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Where the broker is and where the evidence comes from.
#[derive(Debug, clap::Args)]
struct BrokerArgs {
    /// Broker URL (https only).
    #[arg(long, env = "KBS_URL", value_name = "URL")]
    kbs: String,
    /// PEM file with the CA certificate the broker's TLS certificate must chain to.
    #[arg(long, env = "KBS_CA", value_name = "CA.pem")]
    ca: PathBuf,
    /// TLS name to verify instead of the URL's host.
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// Where the evidence comes from.
    #[arg(long, value_enum, default_value_t = EvidenceKind::ConfigfsTsm)]
    evidence: EvidenceKind,
    /// configfs-tsm report directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TSM_REPORT_DIR)]
    configfs_path: PathBuf,
    /// The TEE to attest as [default: the configfs-tsm provider's (sev_guest: snp,
    /// tdx_guest: tdx); snp with --evidence simulated].
    #[arg(long, value_enum, value_name = "TEE")]
    tee: Option<TeeArg>,
    /// Seconds allowed for connecting and for each broker call.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
    /// Also present the VM's NVIDIA GPUs (through NVML, in PCI bus id
    /// order, each signing the GPU nonce), bound to the CPU evidence. They
    /// must be in confidential-computing mode. Only `all` is supported.
    #[arg(long, value_enum, value_name = "WHICH")]
    #[cfg_attr(feature = "insecure-simulated-tee", arg(conflicts_with = "sim_gpus"))]
    gpus: Option<GpuSelection>,
    #[cfg(feature = "insecure-simulated-tee")]
    #[command(flatten)]
    sim: sim::SimArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EvidenceKind {
    /// Linux configfs-tsm (SEV-SNP guests, Linux >= 6.7).
    ConfigfsTsm,
    /// INSECURE software TEE signing with committed test keys (tests and demos only).
    #[cfg(feature = "insecure-simulated-tee")]
    Simulated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GpuSelection {
    /// Every GPU NVML lists.
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TeeArg {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

/// A failure with its exit code and the one line printed for it.
struct Failure {
    code: u8,
    line: String,
}

impl Failure {
    fn new(code: u8, line: impl Into<String>) -> Self {
        Self { code, line: line.into() }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(args) => fetch(*args).await,
        Command::Completion { shell } => completion(shell),
        Command::Model(ModelCommand::Decrypt(args)) => model_decrypt(*args).await,
        Command::Man { dir } => kbs_proto::man::write_pages(<Cli as clap::CommandFactory>::command(), &dir)
            .map(|written| written.iter().for_each(|page| println!("{}", page.display())))
            .map_err(|e| Failure::new(1, format!("writing manual pages to {}: {e}", dir.display()))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.line);
            ExitCode::from(failure.code)
        }
    }
}

/// Writes the completion script; a reader that went away ends it quietly.
fn completion(shell: clap_complete::Shell) -> Result<(), Failure> {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "kbs-attester", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(1, format!("writing to stdout: {e}"))),
    }
}

/// The client configuration from the broker options.
fn client_config(args: &BrokerArgs) -> Result<ClientConfig, Failure> {
    let ca_pem = std::fs::read(&args.ca)
        .map_err(|e| Failure::new(1, format!("cannot read CA file {}: {e}", args.ca.display())))?;
    let timeout = Duration::from_secs(args.timeout);
    let mut config = ClientConfig::new(args.kbs.clone(), ca_pem);
    config.domain_name = args.domain.clone();
    config.connect_timeout = timeout;
    config.request_timeout = timeout;
    Ok(config)
}

async fn model_decrypt(args: DecryptArgs) -> Result<(), Failure> {
    use attester_client::model::{self, DecryptOptions};
    // The GPUs first: a VM whose GPUs cannot be presented stops here.
    let gpus = gpu_source(&args.broker)?;
    let source = evidence_source(&args.broker)?;
    let config = client_config(&args.broker)?;
    let mut client = KbsClient::connect(&config).await.map_err(client_failure)?;
    let options = DecryptOptions { allow_persistent_disk: args.allow_persistent_disk, gpus, threads: args.threads };
    let done =
        model::decrypt_models(&mut client, source, &args.input, &args.out, &options).await.map_err(|e| match e {
            model::Error::Fetch(inner) => client_failure(inner),
            model::Error::Input { .. } | model::Error::NotAFile(_) | model::Error::NoInput(_) => {
                Failure::new(1, chain(&e))
            }
            model::Error::PersistentOutput { .. } => Failure::new(2, chain(&e)),
            model::Error::NotAModelKey(_) => Failure::new(6, chain(&e)),
            model::Error::Output { .. } | model::Error::Busy(_) => Failure::new(7, chain(&e)),
            model::Error::Model { .. } => Failure::new(8, chain(&e)),
        })?;
    tracing::info!(attestation_id = %done.attestation_id, files = done.files.len(), bytes = done.bytes, "decrypted");
    Ok(())
}

async fn fetch(args: FetchArgs) -> Result<(), Failure> {
    // The GPUs first: a VM whose GPUs cannot be presented stops here.
    let gpus = gpu_source(&args.broker)?;
    let source = evidence_source(&args.broker)?;
    let config = client_config(&args.broker)?;
    let mut client = KbsClient::connect(&config).await.map_err(client_failure)?;
    let secrets = client.fetch_release_with_gpus(source, gpus, &args.secrets).await.map_err(client_failure)?.secrets;
    let written = output::write_secrets(&args.out, &secrets).map_err(|e| Failure::new(7, chain(&e)))?;
    for path in written {
        tracing::info!(path = %path.display(), "wrote secret");
    }
    Ok(())
}

/// The GPUs to present: the VM's with `--gpus all` (NVML opened and the
/// CC mode checked now, exit 9 if either fails), simulated ones with
/// `--sim-gpus N`, else none.
fn gpu_source(args: &BrokerArgs) -> Result<Option<Arc<dyn GpuEvidenceSource>>, Failure> {
    match args.gpus {
        Some(GpuSelection::All) => {
            let gpus = NvmlGpus::open().map_err(|e| Failure::new(9, chain(&e)))?;
            tracing::info!(gpus = ?gpus.bus_ids(), mode = ?gpus.mode(), "presenting the VM's GPUs");
            return Ok(Some(Arc::new(gpus)));
        }
        None => {}
    }
    #[cfg(feature = "insecure-simulated-tee")]
    if args.evidence == EvidenceKind::Simulated {
        return Ok(args.sim.gpus()?.map(|g| Arc::new(g) as Arc<dyn GpuEvidenceSource>));
    }
    let _ = args;
    Ok(None)
}

fn evidence_source(args: &BrokerArgs) -> Result<Arc<dyn EvidenceSource>, Failure> {
    #[cfg(feature = "insecure-simulated-tee")]
    if args.evidence != EvidenceKind::Simulated && args.sim.any_set() {
        return Err(Failure::new(2, "--sim-* options need --evidence simulated"));
    }
    match args.evidence {
        EvidenceKind::ConfigfsTsm => Ok(Arc::new(match args.tee {
            Some(TeeArg::Snp) => ConfigfsTsm::with_root(&args.configfs_path).for_tee(Tee::Snp),
            Some(TeeArg::Tdx) => ConfigfsTsm::with_root(&args.configfs_path).for_tee(Tee::Tdx),
            None => ConfigfsTsm::detect(&args.configfs_path).map_err(|e| Failure::new(5, chain(&e)))?,
        })),
        #[cfg(feature = "insecure-simulated-tee")]
        EvidenceKind::Simulated => {
            eprintln!("{}", sim::WARNING);
            match args.tee {
                Some(TeeArg::Tdx) => args.sim.build_tdx().map(|s| Arc::new(s) as Arc<dyn EvidenceSource>),
                Some(TeeArg::Snp) | None => args.sim.build().map(|s| Arc::new(s) as Arc<dyn EvidenceSource>),
            }
        }
    }
}

/// Maps a client error to its exit code and printed line: the bare reason
/// code for broker refusals, the cause chain otherwise.
fn client_failure(err: attester_client::Error) -> Failure {
    use attester_client::Error as E;
    tracing::debug!(error = ?err, "fetch failed");
    match &err {
        E::Refused { reason, code, message } => {
            tracing::warn!(?code, %message, "the broker refused");
            Failure::new(3, reason.clone())
        }
        E::Config(_) | E::InvalidRequest(_) => Failure::new(1, chain(&err)),
        E::Connect(_) | E::Rpc { .. } => Failure::new(4, chain(&err)),
        E::Evidence(inner) if inner.is_gpu() => Failure::new(9, chain(&err)),
        E::Evidence(_) | E::EvidenceTask(_) | E::Key(_) => Failure::new(5, chain(&err)),
        E::NoCommonSuite | E::Protocol(_) | E::Open { .. } => Failure::new(6, chain(&err)),
    }
}

/// "outer: inner: innermost" for an error and its sources.
fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(feature = "insecure-simulated-tee")]
mod sim {
    //! Options of the INSECURE simulated TEE.

    use attester_client::simulated::{
        DEFAULT_POLICY, Generation, SIMULATED_GPUS_MAX, SimulatedGpus, SimulatedSnp, SimulatedTdx,
    };
    use clap::ValueEnum;

    use super::Failure;

    pub const WARNING: &str = "\
WARNING: ********************************************************************
WARNING: --evidence simulated: INSECURE SIMULATED TEE. The evidence is signed
WARNING: with test keys published in the source tree and proves nothing. Use
WARNING: it only for tests and demos, against a broker in development mode.
WARNING: ********************************************************************";

    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    pub enum SimGeneration {
        Milan,
        Genoa,
        Turin,
    }

    #[derive(Debug, clap::Args)]
    pub struct SimArgs {
        /// Simulated launch measurement, 48 bytes hex.
        #[arg(long, value_name = "HEX")]
        sim_measurement: Option<String>,
        /// Simulated host data, 32 bytes hex.
        #[arg(long, value_name = "HEX")]
        sim_host_data: Option<String>,
        /// Simulated EPYC generation.
        #[arg(long, value_enum, value_name = "GEN")]
        sim_generation: Option<SimGeneration>,
        /// Simulated guest policy (decimal or 0x hex; bit 19 = DEBUG) [default: 0x30000].
        #[arg(long, value_name = "POLICY")]
        sim_policy: Option<String>,
        /// Simulated VMPL [default: 0].
        #[arg(long, value_name = "N")]
        sim_vmpl: Option<u32>,
        /// Simulated guest SVN [default: 0].
        #[arg(long, value_name = "N")]
        sim_guest_svn: Option<u32>,
        /// Also present this many simulated NVIDIA GPUs (test PKI), bound
        /// to the CPU evidence [default: 0].
        #[arg(long, value_name = "N")]
        sim_gpus: Option<usize>,
    }

    impl SimArgs {
        pub fn any_set(&self) -> bool {
            self.sim_measurement.is_some()
                || self.sim_host_data.is_some()
                || self.sim_generation.is_some()
                || self.sim_policy.is_some()
                || self.sim_vmpl.is_some()
                || self.sim_guest_svn.is_some()
                || self.sim_gpus.is_some()
        }

        /// The simulated GPUs asked for, if any.
        pub fn gpus(&self) -> Result<Option<SimulatedGpus>, Failure> {
            match self.sim_gpus {
                None | Some(0) => Ok(None),
                Some(n) => SimulatedGpus::new(n).map(Some).map_err(|_| {
                    Failure::new(2, format!("--sim-gpus {n}: at most {SIMULATED_GPUS_MAX} simulated GPUs"))
                }),
            }
        }

        /// A simulated TDX guest: `--sim-measurement` is its MRTD; the
        /// SNP-only options are refused.
        pub fn build_tdx(&self) -> Result<SimulatedTdx, Failure> {
            if self.sim_host_data.is_some()
                || self.sim_generation.is_some()
                || self.sim_policy.is_some()
                || self.sim_vmpl.is_some()
                || self.sim_guest_svn.is_some()
            {
                return Err(Failure::new(2, "with --tee tdx only --sim-measurement applies"));
            }
            let mut sim = SimulatedTdx::new();
            if let Some(hex) = &self.sim_measurement {
                sim = sim.mr_td(fixed_hex("--sim-measurement", hex)?);
            }
            Ok(sim)
        }

        pub fn build(&self) -> Result<SimulatedSnp, Failure> {
            let generation = match self.sim_generation.unwrap_or(SimGeneration::Genoa) {
                SimGeneration::Milan => Generation::Milan,
                SimGeneration::Genoa => Generation::Genoa,
                SimGeneration::Turin => Generation::Turin,
            };
            let mut sim = SimulatedSnp::new(generation)
                .policy(parse_policy(self.sim_policy.as_deref())?)
                .vmpl(self.sim_vmpl.unwrap_or(0))
                .guest_svn(self.sim_guest_svn.unwrap_or(0));
            if let Some(hex) = &self.sim_measurement {
                sim = sim.measurement(fixed_hex("--sim-measurement", hex)?);
            }
            if let Some(hex) = &self.sim_host_data {
                sim = sim.host_data(fixed_hex("--sim-host-data", hex)?);
            }
            Ok(sim)
        }
    }

    fn parse_policy(text: Option<&str>) -> Result<u64, Failure> {
        let Some(text) = text else { return Ok(DEFAULT_POLICY) };
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed.map_err(|_| Failure::new(2, format!("--sim-policy {text:?} is not a number")))
    }

    fn fixed_hex<const N: usize>(flag: &str, text: &str) -> Result<[u8; N], Failure> {
        let bytes = hex::decode(text).map_err(|e| Failure::new(2, format!("{flag}: {e}")))?;
        bytes.try_into().map_err(|b: Vec<u8>| Failure::new(2, format!("{flag}: expected {N} bytes, got {}", b.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `kbs-attester fetch` with its required options, then `extra`.
    fn fetch_with(extra: &[&str]) -> Result<Box<FetchArgs>, clap::Error> {
        let required = ["kbs-attester", "fetch", "--kbs", "https://x", "--ca", "c", "--secret", "s", "--out", "o"];
        let Command::Fetch(args) = Cli::try_parse_from(required.iter().chain(extra))?.command else {
            panic!("not fetch")
        };
        Ok(args)
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fetch_needs_kbs_ca_secret_and_out() {
        let ok = Cli::try_parse_from([
            "kbs-attester",
            "fetch",
            "--kbs",
            "https://kbs:8443",
            "--ca",
            "ca.pem",
            "--secret",
            "a/b/c",
            "--secret",
            "d",
            "--out",
            "/run/secrets",
        ])
        .unwrap();
        let Command::Fetch(args) = ok.command else { panic!("not fetch") };
        assert_eq!(args.secrets, vec!["a/b/c", "d"]);
        assert_eq!(args.broker.evidence, EvidenceKind::ConfigfsTsm);
        assert!(
            Cli::try_parse_from(["kbs-attester", "fetch", "--kbs", "https://x", "--ca", "c", "--out", "o"]).is_err()
        );
    }

    #[test]
    fn model_decrypt_takes_the_broker_options_in_and_out() {
        let parsed = Cli::try_parse_from([
            "kbs-attester",
            "model",
            "decrypt",
            "--kbs",
            "https://kbs:8443",
            "--ca",
            "ca.pem",
            "--in",
            "/models/enc",
            "--out",
            "/run/models",
        ])
        .unwrap();
        let Command::Model(ModelCommand::Decrypt(args)) = parsed.command else { panic!("not model decrypt") };
        assert_eq!(args.input, PathBuf::from("/models/enc"));
        assert!(!args.allow_persistent_disk);
        assert_eq!(args.broker.kbs, "https://kbs:8443");
        assert!(
            Cli::try_parse_from(["kbs-attester", "model", "decrypt", "--kbs", "https://x", "--ca", "c", "--out", "o"])
                .is_err()
        );
    }

    #[test]
    fn gpus_all_is_a_broker_option_of_fetch_and_model_decrypt() {
        let common = ["--kbs", "https://x", "--ca", "c", "--out", "o", "--gpus", "all"];
        let fetch = Cli::try_parse_from(["kbs-attester", "fetch", "--secret", "s"].iter().chain(&common)).unwrap();
        let Command::Fetch(args) = fetch.command else { panic!("not fetch") };
        assert_eq!(args.broker.gpus, Some(GpuSelection::All));
        let decrypt =
            Cli::try_parse_from(["kbs-attester", "model", "decrypt", "--in", "i"].iter().chain(&common)).unwrap();
        let Command::Model(ModelCommand::Decrypt(args)) = decrypt.command else { panic!("not model decrypt") };
        assert_eq!(args.broker.gpus, Some(GpuSelection::All));
        let args = fetch_with(&[]).unwrap();
        assert_eq!(args.broker.gpus, None);
        assert!(matches!(gpu_source(&args.broker), Ok(None)));
    }

    #[cfg(feature = "insecure-simulated-tee")]
    #[test]
    fn gpus_conflicts_with_sim_gpus() {
        let err = fetch_with(&["--evidence", "simulated", "--sim-gpus", "2", "--gpus", "all"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{err}");
    }

    #[cfg(not(feature = "insecure-simulated-tee"))]
    #[test]
    fn simulated_evidence_does_not_exist_without_the_feature() {
        assert!(fetch_with(&["--evidence", "simulated"]).is_err());
    }

    #[cfg(feature = "insecure-simulated-tee")]
    #[test]
    fn simulated_options_parse() {
        let measurement = "ab".repeat(48);
        let args = fetch_with(&[
            "--evidence",
            "simulated",
            "--sim-generation",
            "turin",
            "--sim-policy",
            "0xB0000",
            "--sim-measurement",
            &measurement,
        ])
        .unwrap();
        assert!(args.broker.sim.build().is_ok());
        assert!(evidence_source(&args.broker).is_ok());
        assert!(matches!(gpu_source(&args.broker), Ok(None)));

        let fetch_with_gpus = |n: &str, evidence: &str| fetch_with(&["--evidence", evidence, "--sim-gpus", n]).unwrap();
        let eight = fetch_with_gpus("8", "simulated");
        let Ok(Some(gpus)) = gpu_source(&eight.broker) else { panic!("no GPUs") };
        assert_eq!(gpus.gpu_evidence(&[0; 32]).unwrap().len(), 8);
        assert!(matches!(gpu_source(&fetch_with_gpus("0", "simulated").broker), Ok(None)));
        assert!(gpu_source(&fetch_with_gpus("11", "simulated").broker).is_err());
        // Only with the simulated TEE.
        assert!(evidence_source(&fetch_with_gpus("1", "configfs-tsm").broker).is_err());

        let args = fetch_with(&["--evidence", "simulated", "--tee", "tdx", "--sim-measurement", &measurement]).unwrap();
        let source = evidence_source(&args.broker).map_err(|f| f.line).unwrap();
        assert_eq!(source.tee(), Tee::Tdx);
    }
}

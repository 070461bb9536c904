//! `kbsctl gpu rim import`: verifies NVIDIA Reference Integrity Manifests
//! offline and writes the good ones into a broker's RIM directory
//! (`[gpu] rim_dir`), which the broker verifies again when it starts.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use kbs::evidence::gpu::GpuAnchors;
use kbs::evidence::gpu::rim::RimCheck;
use kbs::evidence::gpu_rims::{self, Imported};

use crate::Failure;

/// GPU subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum GpuCommand {
    /// Manage GPU reference values (RIMs).
    #[command(subcommand)]
    Rim(RimCommand),
}

/// RIM subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum RimCommand {
    /// Verify RIMs (driver, VBIOS or NVSwitch BIOS; SWID XML with its
    /// signature) and write each that verifies into the RIM directory as
    /// `rim-<version>.xml`, atomically. Each file is reported; any refused
    /// file makes the exit code 2 (the others are still imported).
    Import(ImportArgs),
}

/// `kbsctl gpu rim import`.
#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// RIM files, or directories whose `*.xml` and `*.swidtag` files are
    /// imported.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The broker's RIM directory (`gpu.rim_dir`); created if missing.
    #[arg(long)]
    rim_dir: PathBuf,
    /// Accept RIMs whose signer certificate has expired (NVIDIA still
    /// ships RIMs signed by certificates past their two-year validity);
    /// the broker needs `gpu.accept_expired_rim_signers` to load them.
    #[arg(long)]
    accept_expired_rim_signer: bool,
    /// Check the signer chain as of this time (RFC 3339) instead of now.
    #[arg(long)]
    time: Option<String>,
    /// INSECURE: also accept RIMs chaining to this test RIM root (PEM),
    /// e.g. the simulated GPUs' (`attester-client/testdata/gpu-rim-pki`).
    /// A production broker refuses them at start-up.
    #[arg(long)]
    insecure_test_rim_root: Option<PathBuf>,
}

pub(crate) fn run(cmd: &GpuCommand) -> Result<(), Failure> {
    match cmd {
        GpuCommand::Rim(RimCommand::Import(args)) => import(args),
    }
}

fn import(args: &ImportArgs) -> Result<(), Failure> {
    let mut anchors = GpuAnchors::nvidia_rim().map_err(|e| Failure::Usage(format!("NVIDIA RIM anchors: {e}")))?;
    if let Some(root) = &args.insecure_test_rim_root {
        let pem = std::fs::read(root).map_err(|e| Failure::Usage(format!("reading {}: {e}", root.display())))?;
        let der = kbs::evidence::gpu::chain::pem_chain(&pem)
            .ok()
            .and_then(|ders| ders.into_iter().next())
            .ok_or_else(|| Failure::Usage(format!("{}: no PEM certificate", root.display())))?;
        anchors.add_root(&der).map_err(|e| Failure::Usage(format!("{}: {e}", root.display())))?;
        eprintln!("INSECURE: RIMs signed under the test root {} are accepted", root.display());
    }
    let now = match &args.time {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| Failure::Usage(format!("--time {t:?}: {e}")))?,
        None => time::OffsetDateTime::now_utc(),
    };
    let check = RimCheck { anchors: &anchors, now, accept_expired: args.accept_expired_rim_signer };
    std::fs::create_dir_all(&args.rim_dir)
        .map_err(|e| Failure::Usage(format!("creating {}: {e}", args.rim_dir.display())))?;

    let mut files = Vec::new();
    for path in &args.paths {
        if path.is_dir() {
            files.extend(gpu_rims::rim_files(path).map_err(|e| Failure::Usage(e.to_string()))?);
        } else {
            files.push(path.clone());
        }
    }
    let mut refused = 0usize;
    for file in &files {
        match import_one(&args.rim_dir, file, &check) {
            Ok(line) => outln!("{line}"),
            Err(why) => {
                refused += 1;
                eprintln!("refused {}: {why}", file.display());
            }
        }
    }
    match refused {
        0 => Ok(()),
        n => Err(Failure::Refused(format!("{n} of {} RIM files refused", files.len()))),
    }
}

fn import_one(dir: &Path, file: &Path, check: &RimCheck<'_>) -> Result<String, String> {
    let xml = gpu_rims::read_rim_file(file).map_err(|e| e.to_string())?;
    let (rim, outcome) = gpu_rims::import_rim(dir, file, &xml, check).map_err(|e| match e {
        gpu_rims::RimDirError::Invalid { source, .. } => source.to_string(),
        other => other.to_string(),
    })?;
    let expired = if rim.signer_expired { ", signer expired" } else { "" };
    Ok(match outcome {
        Imported::Written(to) => {
            format!(
                "imported {} -> {} (version {}, signer {}{expired})",
                file.display(),
                to.display(),
                rim.version,
                rim.signer
            )
        }
        Imported::Unchanged(at) => {
            format!("unchanged {} = {} (version {}{expired})", file.display(), at.display(), rim.version)
        }
    })
}

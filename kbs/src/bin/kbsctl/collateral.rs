//! `kbsctl collateral fetch`: carry TDX collateral into an air-gapped
//! cluster. Fetches one FMSPC's set from a PCS or PCCS into a directory in
//! the layout the broker's `tdx.collateral_dir` reads.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use kbs::evidence::pcs::{PcsConfig, PcsFetcher};
use kbs::evidence::tdx_collateral::{Fmspc, PckCa};

use crate::Failure;

#[derive(Subcommand, Debug)]
pub(crate) enum CollateralCommand {
    /// Fetch TCB info, QE identity and CRLs for one platform into DIR.
    Fetch {
        /// The platform's FMSPC (12 hex digits, from its PCK certificate).
        #[arg(long)]
        fmspc: String,
        /// Which PCK CA issued the platform's PCK.
        #[arg(long = "pck-ca", value_enum, default_value_t = Ca::Platform)]
        pck_ca: Ca,
        /// PCS or PCCS base URL.
        #[arg(long, default_value = "https://api.trustedservices.intel.com")]
        pcs_url: String,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Time to check freshness against (RFC 3339); default now.
        #[arg(long)]
        time: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Ca {
    Platform,
    Processor,
}

/// Runs a `collateral` subcommand.
pub(crate) async fn run(cmd: &CollateralCommand) -> Result<(), Failure> {
    let CollateralCommand::Fetch { fmspc, pck_ca, pcs_url, out, time } = cmd;
    let fmspc = Fmspc::from_hex(fmspc).ok_or_else(|| Failure::Usage(format!("--fmspc {fmspc:?}: 12 hex digits")))?;
    let ca = match pck_ca {
        Ca::Platform => PckCa::Platform,
        Ca::Processor => PckCa::Processor,
    };
    let now = match time {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| Failure::Usage(format!("--time {t:?}: {e}")))?,
        None => time::OffsetDateTime::now_utc(),
    };
    std::fs::create_dir_all(out).map_err(|e| Failure::Usage(format!("creating {}: {e}", out.display())))?;
    let fetcher = PcsFetcher::new(PcsConfig::new(pcs_url.clone(), out.clone()))
        .map_err(|e| Failure::Usage(format!("PCS client: {e}")))?;
    let set = fetcher.get(fmspc, ca, now).await.map_err(|e| Failure::Unreachable(format!("{pcs_url}: {e}")))?;
    if !set.is_current(now) {
        return Err(Failure::Refused(format!(
            "rejected: collateral_expired: the service's collateral for {fmspc} expired at {}",
            set.expires_at()
        )));
    }
    outln!("{}", out.display());
    eprintln!("collateral for FMSPC {fmspc} ({}) valid until {}", ca.as_str(), set.expires_at());
    Ok(())
}

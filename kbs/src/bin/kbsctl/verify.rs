//! `kbsctl verify`: offline verification of captured evidence.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// Also evaluate this Rego policy on the verified claims, offline
    /// (exit 2 if it refuses).
    #[arg(long)]
    policy: Option<PathBuf>,
    #[command(flatten)]
    context: crate::policy::PolicyContext,
}

/// Evidence and what verifies it.
#[derive(clap::Args, Debug)]
pub(crate) struct EvidenceArgs {
    /// TEE kind.
    #[arg(long, value_enum)]
    tee: Tee,
    /// The SNP report (raw 1184 bytes, or hex text) or the TDX quote (raw or hex).
    #[arg(long)]
    evidence: PathBuf,
    /// SNP: the VCEK or VLEK (DER or PEM).
    #[arg(long, required_if_eq("tee", "snp"))]
    cert: Option<PathBuf>,
    /// TDX: the collateral, a dcap-qvl `QuoteCollateralV3` JSON file, or a
    /// directory of such files (`<fmspc>-<ca>.json`) or of PCS responses.
    #[arg(long, required_if_eq("tee", "tdx"))]
    collateral: Option<PathBuf>,
    /// ASK or ASVK (and ARK) PEM bundle, used only if it chains to a pinned AMD root.
    #[arg(long)]
    chain: Vec<PathBuf>,
    /// Verification time (RFC 3339); default now.
    #[arg(long)]
    time: Option<String>,
}

/// TEE kinds `verify` knows.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Tee {
    Snp,
    Tdx,
}

impl EvidenceArgs {
    /// Evidence given piecewise (by `policy test`).
    pub(crate) fn new(
        tee: Tee,
        evidence: PathBuf,
        cert: Option<PathBuf>,
        collateral: Option<PathBuf>,
        chain: Vec<PathBuf>,
        time: Option<String>,
    ) -> Self {
        Self { tee, evidence, cert, collateral, chain, time }
    }
}

/// Runs `verify`: prints the claims, then the policy's decision if asked.
pub(crate) fn run(args: &VerifyArgs, output: crate::Output) -> Result<(), Failure> {
    let claims = verified_claims(&args.evidence)?;
    let json = serde_json::to_string_pretty(&claims).map_err(|e| Failure::Usage(format!("encoding claims: {e}")))?;
    outln!("{json}");
    match &args.policy {
        Some(policy) => crate::policy::decide(&claims, policy, &args.context, output),
        None => Ok(()),
    }
}

/// Verifies the evidence; its claims, or the refusal.
pub(crate) fn verified_claims(args: &EvidenceArgs) -> Result<kbs::evidence::Claims, Failure> {
    match args.tee {
        Tee::Snp => {
            let cert = args.cert.as_deref().ok_or_else(|| Failure::Usage("--tee snp needs --cert".into()))?;
            verify(&args.evidence, cert, &args.chain, args.time.as_deref())
        }
        Tee::Tdx => {
            let collateral =
                args.collateral.as_deref().ok_or_else(|| Failure::Usage("--tee tdx needs --collateral".into()))?;
            crate::verify_tdx::verify(&read_file(&args.evidence)?, collateral, args.time.as_deref())
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))
}

/// Accepts raw bytes, or hex text (whitespace ignored).
pub(crate) fn raw_or_hex(bytes: Vec<u8>) -> Vec<u8> {
    let text: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if !text.is_empty()
        && text.iter().all(u8::is_ascii_hexdigit)
        && let Ok(decoded) = hex::decode(&text)
    {
        return decoded;
    }
    bytes
}

fn verify(
    evidence: &Path,
    cert: &Path,
    chain: &[PathBuf],
    time: Option<&str>,
) -> Result<kbs::evidence::Claims, Failure> {
    use kbs::evidence::anchors::SnpAnchors;
    use kbs::evidence::snp::SnpVerifier;

    let report = raw_or_hex(read_file(evidence)?);
    let vek = pem_or_der(read_file(cert)?)
        .ok_or_else(|| Failure::Usage(format!("{}: no certificate found", cert.display())))?;
    let now = match time {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| Failure::Usage(format!("--time {t:?}: {e}")))?,
        None => time::OffsetDateTime::now_utc(),
    };
    let mut anchors = SnpAnchors::amd().map_err(|e| Failure::Usage(format!("AMD anchors: {e}")))?;
    for path in chain {
        let bytes = read_file(path)?;
        if let Err(e) = anchors.add_intermediate(&bytes) {
            let reason = kbs::error::Error::from(e);
            return Err(Failure::Refused(format!("rejected: {}: {reason}", reason.reason())));
        }
    }
    let verifier = SnpVerifier::new(anchors);
    match verifier.verify(&report, &vek, &[], now, None) {
        Ok(verified) => Ok(verified.claims),
        Err(e) => Err(Failure::Refused(format!("rejected: {}: {e}", e.reason()))),
    }
}

fn pem_or_der(bytes: Vec<u8>) -> Option<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(&bytes) else { return Some(bytes) };
    let Some(start) = text.find("-----BEGIN CERTIFICATE-----") else { return Some(bytes) };
    let start = start + "-----BEGIN CERTIFICATE-----".len();
    let end = text.get(start..)?.find("-----END CERTIFICATE-----")? + start;
    let body: String = text.get(start..end)?.chars().filter(|c| !c.is_whitespace()).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).ok()
}

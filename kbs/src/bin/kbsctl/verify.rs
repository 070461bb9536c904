//! `kbsctl verify`: offline verification of captured evidence.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    evidence: EvidenceArgs,
    #[command(flatten)]
    gpu: GpuArgs,
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
    #[arg(long, value_enum, required_unless_present = "gpu", conflicts_with = "gpu")]
    tee: Option<Tee>,
    /// The SNP report (raw 1184 bytes, or hex text) or the TDX quote (raw or hex).
    #[arg(long, required_unless_present = "gpu", conflicts_with = "gpu")]
    evidence: Option<PathBuf>,
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

/// An NVIDIA GPU or NVSwitch's evidence, verified instead of a CPU TEE's.
#[derive(clap::Args, Debug)]
pub(crate) struct GpuArgs {
    /// NVIDIA GPU or NVSwitch attestation report (raw SPDM request and
    /// response, or hex text), verified instead of CPU evidence.
    #[arg(long, requires = "gpu_chain", conflicts_with = "policy")]
    gpu: Option<PathBuf>,
    /// The device's certificate chain (PEM, leaf first, as NVML returns it).
    #[arg(long, requires = "gpu")]
    gpu_chain: Option<PathBuf>,
    /// The nonce the report must carry (64 hex digits). Without it the
    /// nonce is reported, not checked: inspection only.
    #[arg(long, requires = "gpu")]
    gpu_nonce: Option<String>,
    /// OCSP responses (DER or base64) for the chain's certificates but the
    /// leaf and the root; when given, each must show its certificate good
    /// at --time. Repeat for each.
    #[arg(long, requires = "gpu")]
    gpu_ocsp: Vec<PathBuf>,
    /// Reference Integrity Manifests (driver, VBIOS or NVSwitch BIOS RIM
    /// XML) to appraise the device's measurements against: each is
    /// verified to the pinned NVIDIA RIM root at --time, then every active
    /// measurement must match. Repeat for each.
    #[arg(long, requires = "gpu")]
    gpu_rim: Vec<PathBuf>,
    /// Accept RIMs whose signer certificate is past its validity (RIM
    /// signers expire long before the firmware they describe); reported
    /// as `signer_expired`.
    #[arg(long, requires = "gpu_rim")]
    accept_expired_rim_signer: bool,
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
        Self { tee: Some(tee), evidence: Some(evidence), cert, collateral, chain, time }
    }
}

/// Runs `verify`: prints the claims, then the policy's decision if asked.
pub(crate) fn run(args: &VerifyArgs, output: crate::Output) -> Result<(), Failure> {
    if let Some(report) = &args.gpu.gpu {
        let chain = args.gpu.gpu_chain.as_deref().ok_or_else(|| Failure::Usage("--gpu needs --gpu-chain".into()))?;
        let claims = verify_gpu(
            report,
            chain,
            args.gpu.gpu_nonce.as_deref(),
            &args.gpu.gpu_ocsp,
            args.evidence.time.as_deref(),
        )?;
        let mut value = serde_json::to_value(&claims).map_err(|e| Failure::Usage(format!("encoding claims: {e}")))?;
        if !args.gpu.gpu_rim.is_empty() {
            let (rims, appraisal) = appraise_gpu(
                report,
                &args.gpu.gpu_rim,
                args.gpu.accept_expired_rim_signer,
                args.evidence.time.as_deref(),
            )?;
            if let Some(object) = value.as_object_mut() {
                object.insert("rims".into(), serde_json::json!(rims));
                object.insert("appraisal".into(), serde_json::json!(appraisal));
            }
        }
        let json = serde_json::to_string_pretty(&value).map_err(|e| Failure::Usage(format!("encoding claims: {e}")))?;
        outln!("{json}");
        return Ok(());
    }
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
    let (Some(tee), Some(evidence)) = (args.tee, args.evidence.as_deref()) else {
        return Err(Failure::Usage("--tee and --evidence are required".into()));
    };
    match tee {
        Tee::Snp => {
            let cert = args.cert.as_deref().ok_or_else(|| Failure::Usage("--tee snp needs --cert".into()))?;
            verify(evidence, cert, &args.chain, args.time.as_deref())
        }
        Tee::Tdx => {
            let collateral =
                args.collateral.as_deref().ok_or_else(|| Failure::Usage("--tee tdx needs --collateral".into()))?;
            crate::verify_tdx::verify(&read_file(evidence)?, collateral, args.time.as_deref())
        }
    }
}

/// Verifies one NVIDIA device's evidence with the pinned NVIDIA root; the
/// nonce is checked only when one is given, revocation only when OCSP
/// responses are.
fn verify_gpu(
    report: &Path,
    chain: &Path,
    nonce: Option<&str>,
    ocsp: &[PathBuf],
    time: Option<&str>,
) -> Result<kbs::evidence::gpu::GpuDeviceClaims, Failure> {
    use kbs::evidence::gpu::{GpuAnchors, GpuNonce, GpuVerifier};

    let report = raw_or_hex(read_file(report)?);
    let chain = read_file(chain)?;
    let now = parse_time(time)?;
    let nonce = nonce
        .map(|hex| {
            GpuNonce::from_hex(hex.trim()).ok_or_else(|| Failure::Usage("--gpu-nonce must be 64 hex digits".into()))
        })
        .transpose()?;
    let anchors = GpuAnchors::nvidia().map_err(|e| Failure::Usage(format!("NVIDIA anchors: {e}")))?;
    let verifier = GpuVerifier::new(anchors);
    let result = match &nonce {
        Some(nonce) => verifier.verify(&report, &chain, now, nonce),
        None => verifier.inspect_without_nonce(&report, &chain, now),
    };
    let claims = result.map_err(|e| Failure::Refused(format!("rejected: {}: {e}", e.reason())))?;
    if ocsp.is_empty() {
        return Ok(claims);
    }
    let responses =
        ocsp.iter().map(|p| read_file(p).and_then(|b| der_or_base64(b, p))).collect::<Result<Vec<_>, _>>()?;
    // The chain verified above, so it parses.
    let ders = kbs::evidence::gpu::chain::pem_chain(&chain)
        .map_err(|e| Failure::Refused(format!("rejected: {}: {e}", e.reason())))?;
    let good = kbs::evidence::gpu::ocsp::verify_chain_ocsp(&ders, &responses, now)
        .map_err(|e| Failure::Refused(format!("rejected: {}: {e}", e.reason())))?;
    Ok(claims.with_revocation(&good))
}

/// Verifies each RIM and appraises the (already verified) report against
/// them all; a RIM that does not verify or a measurement that does not
/// match is a refusal.
fn appraise_gpu(
    report: &Path,
    rims: &[PathBuf],
    accept_expired: bool,
    time: Option<&str>,
) -> Result<(Vec<kbs::evidence::gpu::rim::Rim>, kbs::evidence::gpu::rim::Appraisal), Failure> {
    use kbs::evidence::gpu::rim::{self, RimCheck};
    use kbs::evidence::gpu::{GpuAnchors, GpuReport, Nvdec0};

    let refused = |what: String, e: &rim::RimError| Failure::Refused(format!("rejected: {}: {what}: {e}", e.reason()));
    let anchors = GpuAnchors::nvidia_rim().map_err(|e| Failure::Usage(format!("NVIDIA RIM anchors: {e}")))?;
    let check = RimCheck { anchors: &anchors, now: parse_time(time)?, accept_expired };
    let verified = rims
        .iter()
        .map(|path| rim::verify_rim(&read_file(path)?, &check).map_err(|e| refused(path.display().to_string(), &e)))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = raw_or_hex(read_file(report)?);
    let report = GpuReport::parse(&bytes).map_err(|e| Failure::Refused(format!("rejected: {}: {e}", e.reason())))?;
    let fields = report.opaque_fields().map_err(|e| Failure::Refused(format!("rejected: {}: {e}", e.reason())))?;
    let labelled: Vec<(String, &rim::Rim)> =
        rims.iter().map(|p| p.display().to_string()).zip(verified.iter()).collect();
    let pairs: Vec<(&str, &rim::Rim)> = labelled.iter().map(|(l, r)| (l.as_str(), *r)).collect();
    let appraisal = rim::appraise(&report.response.blocks, fields.nvdec0 == Some(Nvdec0::Disabled), &pairs)
        .map_err(|e| refused("appraisal".into(), &e))?;
    Ok((verified, appraisal))
}

/// DER as is (it starts with a SEQUENCE tag), or base64 text.
fn der_or_base64(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, Failure> {
    if bytes.first() == Some(&0x30) {
        return Ok(bytes);
    }
    let text: Vec<u8> = bytes.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
        .map_err(|e| Failure::Usage(format!("{}: neither DER nor base64: {e}", path.display())))
}

/// `--time` (RFC 3339), or now.
fn parse_time(time: Option<&str>) -> Result<time::OffsetDateTime, Failure> {
    match time {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| Failure::Usage(format!("--time {t:?}: {e}"))),
        None => Ok(time::OffsetDateTime::now_utc()),
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
    let now = parse_time(time)?;
    let mut anchors = SnpAnchors::amd().map_err(|e| Failure::Usage(format!("AMD anchors: {e}")))?;
    for path in chain {
        let bytes = read_file(path)?;
        if let Err(e) = anchors.add_intermediate(&bytes) {
            let reason = kbs::error::Error::from(e);
            return Err(Failure::Refused(format!("rejected: {}: {reason}", reason.reason())));
        }
    }
    let verifier = SnpVerifier::new(anchors);
    match verifier.verify_ignoring_report_data(&report, &vek, &[], now) {
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

//! `kbsctl verify --tee tdx`: a TDX quote against collateral, offline, with
//! the shipped Intel SGX Root CA and every TCB status accepted (the claims
//! show the status; deciding on it is the policy's job, `--policy`).

use std::path::Path;

use kbs::evidence::anchors::TdxAnchors;
use kbs::evidence::tdx::{TCB_STATUSES, TcbStatus, TdxPolicy, TdxQuote, TdxVerifier};
use kbs::evidence::tdx_collateral::{MAX_COLLATERAL_LEN, PcsFiles, TdxCollateral};

use crate::Failure;

fn rejected(e: &kbs::evidence::EvidenceError) -> Failure {
    Failure::Refused(format!("rejected: {}: {e}", e.reason()))
}

/// Reads a file of at most [`MAX_COLLATERAL_LEN`] bytes; `None` if absent.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, Failure> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::Usage(format!("reading {}: {e}", path.display()))),
        Ok(m) if m.len() > u64::try_from(MAX_COLLATERAL_LEN).unwrap_or(u64::MAX) => {
            return Err(Failure::Usage(format!("{} is larger than {MAX_COLLATERAL_LEN} bytes", path.display())));
        }
        Ok(_) => {}
    }
    std::fs::read(path).map(Some).map_err(|e| Failure::Usage(format!("reading {}: {e}", path.display())))
}

/// The collateral set for `quote` from a file or a directory.
fn collateral_for(quote: &TdxQuote, path: &Path) -> Result<TdxCollateral, Failure> {
    if !path.is_dir() {
        let bytes = read_optional(path)?.ok_or_else(|| Failure::Usage(format!("{} does not exist", path.display())))?;
        return TdxCollateral::from_json(&bytes).map_err(|e| rejected(&e));
    }
    let (fmspc, ca) = quote.collateral_key().map_err(|e| rejected(&e))?;
    for name in [format!("{fmspc}-{ca}.json"), format!("{}-{ca}.json", fmspc.to_hex_upper()), format!("{fmspc}.json")] {
        if let Some(bytes) = read_optional(&path.join(&name))? {
            return TdxCollateral::from_json(&bytes).map_err(|e| rejected(&e));
        }
    }
    // PCS responses saved as files (see `kbs::evidence::tdx_collateral`).
    let need = |name: String| -> Result<Vec<u8>, Failure> {
        read_optional(&path.join(&name))?.ok_or_else(|| Failure::Usage(format!("{}: no {name}", path.display())))
    };
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| Failure::Usage("issuer chain is not text".into()));
    let stem = format!("tcb-{fmspc}");
    let pck_crl = match read_optional(&path.join(format!("pckcrl-{ca}.der")))? {
        Some(crl) => crl,
        None => need(format!("pckcrl-{ca}.pem"))?,
    };
    let files = PcsFiles {
        tcb_info: need(format!("{stem}.json"))?,
        tcb_info_issuer_chain: text(need(format!("{stem}.issuer-chain.pem"))?)?,
        qe_identity: need("qe-identity.json".into())?,
        qe_identity_issuer_chain: text(need("qe-identity.issuer-chain.pem".into())?)?,
        pck_crl,
        pck_crl_issuer_chain: text(need(format!("pckcrl-{ca}.issuer-chain.pem"))?)?,
        root_ca_crl: need("rootcacrl.der".into())?,
    };
    files.into_collateral().map_err(|e| rejected(&e))
}

/// Verifies a quote (raw or hex) against its collateral at `time`.
pub(crate) fn verify(quote: &[u8], collateral: &Path, time: Option<&str>) -> Result<kbs::evidence::Claims, Failure> {
    let quote = crate::verify::raw_or_hex(quote.to_vec());
    let now = match time {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|e| Failure::Usage(format!("--time {t:?}: {e}")))?,
        None => time::OffsetDateTime::now_utc(),
    };
    let parsed = TdxQuote::parse(&quote).map_err(|e| rejected(&e))?;
    let set = collateral_for(&parsed, collateral)?;
    let anchors = TdxAnchors::intel().map_err(|e| Failure::Usage(format!("Intel anchors: {e}")))?;
    // Every status but `Revoked`: offline verification reports the status.
    let policy =
        TdxPolicy { accepted_tcb_statuses: TCB_STATUSES.into_iter().filter(|s| *s != TcbStatus::Revoked).collect() };
    TdxVerifier::new(anchors, policy)
        .verify_parsed_ignoring_report_data(parsed, &set, now)
        .map(|v| v.claims)
        .map_err(|e| rejected(&e))
}

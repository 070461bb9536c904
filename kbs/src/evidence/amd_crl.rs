//! AMD certificate revocation lists: revoked ASKs and ASVKs.
//!
//! AMD revokes an ASK (which signs VCEKs) or an ASVK (which signs VLEKs) by
//! listing its serial number in an X.509 v2 CRL that the generation's ARK
//! signs. KDS serves them at `{base}/vcek/v1/{Product}/crl` (ASKs) and
//! `{base}/vlek/v1/{Product}/crl` (ASVKs). The ARK itself is pinned and
//! cannot be revoked; VCEKs and VLEKs are issued by the intermediates, so
//! an ARK's CRL does not cover them.
//!
//! [`AmdCrl::verify`] accepts a CRL only if a pinned ARK issued it (its
//! issuer name) and signed it with AMD's algorithm (RSASSA-PSS, SHA-384,
//! MGF1-SHA-384, 48-byte salt, the same inside and outside the signed
//! part), it has a `nextUpdate`, it is complete (no delta-CRL indicator)
//! and it carries no critical extension this code does not implement.
//! Anything else is refused as `CollateralInvalid`: CRLs are the broker's
//! input, never the guest's.
//!
//! [`super::snp::SnpVerifier`] keeps the newest verified CRL per
//! generation and kind, never replaces one with an older one, and on every
//! verification refuses a report whose intermediate is listed
//! (`Revoked`), whatever the CRL's age: AMD does not un-revoke. Under
//! [`Revocation::Require`], a report is also refused when no CRL for its
//! generation and kind is installed (`CollateralUnavailable`) or the one
//! installed is past its `nextUpdate` (`CollateralExpired`).
//!
//! Parsing and checking only: where CRLs come from (a directory, KDS) is
//! [`super::collateral::CrlSources`].

use serde::Deserialize;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::EvidenceError;
use super::anchors::{self, Generation, IntermediateKind, SnpAnchors};

/// Largest CRL accepted, from a file or from KDS. AMD's are about 1 KiB.
pub const MAX_CRL_LEN: usize = 256 * 1024;

/// Most entries one CRL may list.
pub const MAX_CRL_ENTRIES: usize = 10_000;

/// `deltaCRLIndicator` (RFC 5280, 5.2.4): a delta CRL is not complete.
const OID_DELTA_CRL_INDICATOR: &str = "2.5.29.27";

/// How the SEV-SNP verifier treats revocation (`snp.revocation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// Every report needs a current CRL for its generation and signer
    /// kind; without one it is refused. For production.
    Require,
    /// Reports are checked against the installed CRLs; a generation and
    /// kind without a current CRL is accepted.
    #[default]
    BestEffort,
}

/// A CRL issued and signed by a pinned ARK.
#[derive(Clone, Debug)]
pub struct AmdCrl {
    generation: Generation,
    kind: IntermediateKind,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    /// Revoked serial numbers, big-endian without sign-padding zeros,
    /// sorted and without duplicates (looked up on every verification).
    revoked: Vec<Vec<u8>>,
    sha256: [u8; 32],
}

/// What [`parse_shape`] and [`AmdCrl::verify`] read from the DER.
struct Parsed {
    issuer: Vec<u8>,
    /// The signed `TBSCertList` and the signature over it.
    tbs: Vec<u8>,
    signature: Vec<u8>,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    revoked: Vec<Vec<u8>>,
}

fn invalid(why: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::CollateralInvalid(format!("AMD CRL: {why}"))
}

/// Checks that `der` is one whole, complete X.509 CRL of a size and shape
/// this module accepts, without checking who signed it. The KDS fetcher
/// uses it to refuse error pages before caching anything.
pub fn parse_shape(der: &[u8]) -> Result<(), EvidenceError> {
    parse(der).map(|_| ())
}

/// Parses `der` and checks everything but the signature.
fn parse(der: &[u8]) -> Result<Parsed, EvidenceError> {
    if der.len() > MAX_CRL_LEN {
        return Err(invalid(format!("{} bytes, at most {MAX_CRL_LEN}", der.len())));
    }
    let crl = match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => crl,
        Ok(_) => return Err(invalid("trailing bytes after the CRL")),
        Err(e) => return Err(invalid(e)),
    };
    anchors::check_amd_algorithm(&crl.signature_algorithm, &crl.tbs_cert_list.signature).map_err(invalid)?;
    if crl.signature_value.unused_bits != 0 {
        return Err(invalid("signature is not a whole number of bytes"));
    }
    let next_update = crl.next_update().ok_or_else(|| invalid("no nextUpdate"))?.to_datetime();
    let this_update = crl.last_update().to_datetime();
    if next_update < this_update {
        return Err(invalid("nextUpdate is before thisUpdate"));
    }
    for ext in crl.extensions() {
        if ext.oid.to_id_string() == OID_DELTA_CRL_INDICATOR {
            return Err(invalid("a delta CRL is not a complete list"));
        }
        if ext.critical {
            return Err(invalid(format!("unsupported critical extension {}", ext.oid)));
        }
    }
    let mut revoked = Vec::new();
    for entry in crl.iter_revoked_certificates() {
        if revoked.len() >= MAX_CRL_ENTRIES {
            return Err(invalid(format!("more than {MAX_CRL_ENTRIES} entries")));
        }
        if let Some(ext) = entry.extensions().iter().find(|e| e.critical) {
            return Err(invalid(format!("unsupported critical entry extension {}", ext.oid)));
        }
        revoked.push(anchors::strip_serial_zeros(entry.raw_serial()).to_vec());
    }
    revoked.sort_unstable();
    revoked.dedup();
    Ok(Parsed {
        issuer: crl.issuer().as_raw().to_vec(),
        tbs: crl.tbs_cert_list.as_ref().to_vec(),
        signature: crl.signature_value.data.to_vec(),
        this_update,
        next_update,
        revoked,
    })
}

impl AmdCrl {
    /// Verifies `der` as the CRL of `kind`'s certificates (ASKs from the
    /// `/vcek/` path, ASVKs from `/vlek/`) against the pinned ARKs of
    /// `anchors`: one [`AmdCrl`] per generation whose ARK issued and signed
    /// it (a test root may be pinned for several).
    pub fn verify(der: &[u8], kind: IntermediateKind, anchors: &SnpAnchors) -> Result<Vec<Self>, EvidenceError> {
        let parsed = parse(der)?;
        let mut generations: Vec<Generation> = Vec::new();
        let mut issuer_named = false;
        // One signature check per distinct root certificate.
        let mut checked: Vec<([u8; 32], bool)> = Vec::new();
        for (generation, key, fingerprint) in anchors.roots_named(&parsed.issuer) {
            issuer_named = true;
            let signed = match checked.iter().find(|(fp, _)| *fp == fingerprint) {
                Some((_, signed)) => *signed,
                None => {
                    let signed = key.verify_sig(&parsed.tbs, &parsed.signature).is_ok();
                    checked.push((fingerprint, signed));
                    signed
                }
            };
            if signed && !generations.contains(&generation) {
                generations.push(generation);
            }
        }
        if generations.is_empty() {
            return Err(invalid(if issuer_named {
                "the signature does not verify under the pinned ARK it names"
            } else {
                "not issued by a pinned AMD root"
            }));
        }
        let sha256 = anchors::sha256(der);
        Ok(generations
            .into_iter()
            .map(|generation| Self {
                generation,
                kind,
                this_update: parsed.this_update,
                next_update: parsed.next_update,
                revoked: parsed.revoked.clone(),
                sha256,
            })
            .collect())
    }

    /// The generation whose ARK issued it.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Whose revocations it lists: ASKs or ASVKs.
    pub fn kind(&self) -> IntermediateKind {
        self.kind
    }

    /// When it was issued.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// When the next one is due; past it, this one is not current.
    pub fn next_update(&self) -> OffsetDateTime {
        self.next_update
    }

    /// How many distinct certificates it revokes.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// SHA-256 of its DER.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// Whether it is in force at `now`: issued and not past `nextUpdate`.
    pub fn current_at(&self, now: OffsetDateTime) -> bool {
        self.this_update <= now && now <= self.next_update
    }

    /// Whether it lists the serial number (big-endian, sign padding allowed).
    pub fn lists(&self, serial: &[u8]) -> bool {
        let serial = anchors::strip_serial_zeros(serial);
        self.revoked.binary_search_by(|r| r.as_slice().cmp(serial)).is_ok()
    }
}

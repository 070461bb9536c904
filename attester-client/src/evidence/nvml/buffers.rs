//! Checks on what the NVIDIA driver hands back through NVML, before any of
//! it is bound to the CPU evidence or sent. Pure: bytes in, checked bytes
//! (or a reason) out.
//!
//! The driver is outside the guest's trust boundary for this purpose: its
//! buffers are untrusted bytes. Every length is checked against the buffer
//! it claims to describe and capped by NVML's own buffer sizes; nothing here
//! indexes without a bound or panics.
//!
//! # The attestation report
//! `nvmlDeviceGetConfComputeGpuAttestationReport` fills
//! `attestationReport[NVML_CC_GPU_ATTESTATION_REPORT_SIZE]` and
//! `attestationReportSize`; the first `attestationReportSize` bytes are the
//! SPDM 1.1 GET_MEASUREMENTS request (37 bytes, carrying the caller's nonce)
//! followed by the signed MEASUREMENTS response (DMTF DSP0274 1.1; integers
//! little-endian):
//!
//! ```text
//! request   11 E0 01 FF | nonce[32] | slot 00
//! response  11 60 p1 p2 | NumberOfBlocks | MeasurementRecordLength u24 | record
//!           | ResponderNonce[32] | OpaqueLength u16 | OpaqueData | Signature[96]
//! ```
//!
//! The optional CEC report that the same call may return is not part of the
//! device's SPDM evidence and is not sent. [`attestation_report`] walks these
//! lengths, checks that the request carries the nonce asked for, and returns
//! exactly the request and the response up to the end of the signature:
//! zero padding after it (seen in captured reports) is dropped, any other
//! byte there is refused. The measurement blocks and the opaque data are
//! left whole for the broker, which parses them strictly.
//!
//! # The certificate chain
//! `nvmlDeviceGetConfComputeGpuCertificate` fills
//! `attestationCertChain[NVML_CC_GPU_ATTESTATION_CERT_CHAIN_SIZE]` and its
//! size: PEM text, leaf first. [`attestation_cert_chain`] drops a C string's
//! trailing NUL bytes and checks that the rest is PEM text with balanced
//! certificate blocks; the bytes are otherwise sent as the driver returned
//! them.

use std::fmt;

/// NVML's attestation report buffer (`NVML_CC_GPU_ATTESTATION_REPORT_SIZE`).
pub const REPORT_BUFFER_LEN: usize = 0x2000;

/// NVML's attestation certificate chain buffer
/// (`NVML_CC_GPU_ATTESTATION_CERT_CHAIN_SIZE`).
pub const CERT_CHAIN_BUFFER_LEN: usize = 0x1400;

/// The nonce NVML passes to the GPU (`NVML_CC_GPU_CEC_NONCE_SIZE`), the
/// GET_MEASUREMENTS request's length, and the length of the ECDSA P-384
/// `r || s` signature ending the response.
pub use kbs_proto::spdm::{NONCE_LEN, REQUEST_LEN, SIGNATURE_LEN};
use kbs_proto::spdm::{REQUEST_HEADER, RESPONSE_HEADER};

/// Most certificates accepted in one chain (NVIDIA's have five).
pub const MAX_CERTIFICATES: usize = 8;

const PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----";

/// Why a buffer from the driver is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    /// Longer than the NVML buffer it came from.
    #[error("the {what} is {len} bytes, more than NVML's {max}-byte buffer")]
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A length points past the end of the buffer.
    #[error("the attestation report ends inside its {0}")]
    Truncated(&'static str),
    /// A fixed field does not have its only allowed value.
    #[error("the attestation report's {what} is {found}, expected {expected}")]
    Unexpected {
        /// The field.
        what: &'static str,
        /// What it holds (hex).
        found: Hex,
        /// What it must hold (hex).
        expected: Hex,
    },
    /// The request does not carry the nonce asked for: the driver returned
    /// a report for another request.
    #[error("the attestation report is not for the nonce asked for")]
    NonceMismatch,
    /// Non-zero bytes after the signature.
    #[error("{0} bytes after the attestation report's signature are not zero padding")]
    TrailingBytes(usize),
    /// The chain is not PEM text with balanced certificate blocks.
    #[error("the certificate chain is not PEM: {0}")]
    NotPem(&'static str),
}

/// Bytes shown in hex in an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Hex(Vec<u8>);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A reader over untrusted bytes: every read is bounded.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], BufferError> {
        let end = self.at.checked_add(len).ok_or(BufferError::Truncated(what))?;
        let out = self.bytes.get(self.at..end).ok_or(BufferError::Truncated(what))?;
        self.at = end;
        Ok(out)
    }

    fn expect(&mut self, want: &[u8], what: &'static str) -> Result<(), BufferError> {
        let got = self.take(want.len(), what)?;
        if got == want {
            Ok(())
        } else {
            Err(BufferError::Unexpected { what, found: Hex(got.to_vec()), expected: Hex(want.to_vec()) })
        }
    }

    /// A little-endian length of `N` bytes (2 or 3).
    fn len_le<const N: usize>(&mut self, what: &'static str) -> Result<usize, BufferError> {
        let bytes = self.take(N, what)?;
        Ok(bytes.iter().rev().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    }
}

/// Checks the attestation report NVML returned for `nonce` and returns
/// exactly its SPDM request and response (see the module docs).
pub fn attestation_report<'a>(report: &'a [u8], nonce: &[u8; NONCE_LEN]) -> Result<&'a [u8], BufferError> {
    if report.len() > REPORT_BUFFER_LEN {
        return Err(BufferError::TooLarge { what: "attestation report", len: report.len(), max: REPORT_BUFFER_LEN });
    }
    let mut r = Cursor { bytes: report, at: 0 };
    r.expect(&REQUEST_HEADER, "GET_MEASUREMENTS request header")?;
    if r.take(NONCE_LEN, "request nonce")? != nonce {
        return Err(BufferError::NonceMismatch);
    }
    r.expect(&[0], "request slot")?;
    r.expect(&RESPONSE_HEADER, "MEASUREMENTS response header")?;
    // Param1 and Param2: the broker checks them.
    r.take(2, "response parameters")?;
    let blocks = r.take(1, "NumberOfBlocks")?;
    if blocks == [0] {
        return Err(BufferError::Unexpected { what: "NumberOfBlocks", found: Hex(vec![0]), expected: Hex(vec![0x40]) });
    }
    let record_len = r.len_le::<3>("MeasurementRecordLength")?;
    r.take(record_len, "measurement record")?;
    r.take(32, "responder nonce")?;
    let opaque_len = r.len_le::<2>("OpaqueLength")?;
    r.take(opaque_len, "opaque data")?;
    r.take(SIGNATURE_LEN, "signature")?;
    let end = r.at;
    let (spdm, padding) = report.split_at_checked(end).ok_or(BufferError::Truncated("signature"))?;
    if padding.iter().any(|b| *b != 0) {
        return Err(BufferError::TrailingBytes(padding.len()));
    }
    Ok(spdm)
}

/// Checks the attestation certificate chain NVML returned and returns it
/// without a C string's trailing NUL bytes (see the module docs).
pub fn attestation_cert_chain(chain: &[u8]) -> Result<&[u8], BufferError> {
    if chain.len() > CERT_CHAIN_BUFFER_LEN {
        return Err(BufferError::TooLarge {
            what: "attestation certificate chain",
            len: chain.len(),
            max: CERT_CHAIN_BUFFER_LEN,
        });
    }
    let end = chain.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let text = chain.get(..end).unwrap_or_default();
    if text.is_empty() {
        return Err(BufferError::NotPem("it is empty"));
    }
    if !text.iter().all(|b| b.is_ascii_graphic() || matches!(b, b' ' | b'\n' | b'\r' | b'\t')) {
        return Err(BufferError::NotPem("it holds bytes that are not PEM text"));
    }
    let begins = occurrences(text, PEM_BEGIN);
    let ends = occurrences(text, PEM_END);
    if begins.is_empty() {
        return Err(BufferError::NotPem("no certificate"));
    }
    if begins.len() > MAX_CERTIFICATES {
        return Err(BufferError::NotPem("too many certificates"));
    }
    // Balanced and in order: BEGIN, END, BEGIN, END, ...
    if begins.len() != ends.len() || begins.iter().zip(&ends).any(|(b, e)| b >= e) {
        return Err(BufferError::NotPem("unbalanced certificate blocks"));
    }
    if begins.iter().skip(1).zip(&ends).any(|(next_begin, end)| next_begin < end) {
        return Err(BufferError::NotPem("nested certificate blocks"));
    }
    Ok(text)
}

/// Where `needle` starts in `haystack`, in order.
fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    const NONCE: [u8; 32] = [0x5a; 32];

    /// A report shaped like an H100's: 64 SHA-384 blocks, a responder
    /// nonce, legacy opaque TLVs, a (dummy) signature.
    fn report(nonce: &[u8; 32], blocks: u8, opaque: &[u8]) -> Vec<u8> {
        let mut out = vec![0x11, 0xE0, 0x01, 0xFF];
        out.extend_from_slice(nonce);
        out.push(0);
        out.extend_from_slice(&[0x11, 0x60, 0x00, 0x00, blocks]);
        let record_len = u32::from(blocks) * 55;
        out.extend_from_slice(&record_len.to_le_bytes()[..3]);
        for index in 1..=blocks {
            out.extend_from_slice(&[index, 0x01, 51, 0, 0x01, 48, 0]);
            out.extend_from_slice(&[index; 48]);
        }
        out.extend_from_slice(&[0xEE; 32]);
        out.extend_from_slice(&u16::try_from(opaque.len()).unwrap().to_le_bytes());
        out.extend_from_slice(opaque);
        out.extend_from_slice(&[0x77; SIGNATURE_LEN]);
        out
    }

    fn opaque() -> Vec<u8> {
        // driver_version "570.124.06\0", fwid.
        let mut out = vec![3, 0, 11, 0];
        out.extend_from_slice(b"570.124.06\0");
        out.extend_from_slice(&[20, 0, 48, 0]);
        out.extend_from_slice(&[0xF1; 48]);
        out
    }

    #[test]
    fn a_well_formed_report_comes_back_whole() {
        let bytes = report(&NONCE, 64, &opaque());
        assert_eq!(bytes.len(), 37 + 8 + 64 * 55 + 32 + 2 + opaque().len() + 96);
        assert_eq!(attestation_report(&bytes, &NONCE).unwrap(), bytes.as_slice());
    }

    #[test]
    fn zero_padding_after_the_signature_is_dropped_anything_else_refused() {
        let bytes = report(&NONCE, 64, &opaque());
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 7]);
        assert_eq!(attestation_report(&padded, &NONCE).unwrap(), bytes.as_slice());
        // NVML's whole buffer, zero after the report.
        padded.resize(REPORT_BUFFER_LEN, 0);
        assert_eq!(attestation_report(&padded, &NONCE).unwrap(), bytes.as_slice());
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&[0, 1, 0]);
        assert_eq!(attestation_report(&trailing, &NONCE), Err(BufferError::TrailingBytes(3)));
    }

    #[test]
    fn a_report_for_another_nonce_is_refused() {
        let bytes = report(&[0x11; 32], 64, &opaque());
        assert_eq!(attestation_report(&bytes, &NONCE), Err(BufferError::NonceMismatch));
    }

    #[test]
    fn every_truncation_is_refused_without_a_panic() {
        let bytes = report(&NONCE, 64, &opaque());
        for len in 0..bytes.len() {
            let err = attestation_report(&bytes[..len], &NONCE).unwrap_err();
            assert!(matches!(err, BufferError::Truncated(_)), "{len}: {err:?}");
        }
    }

    #[test]
    fn lengths_pointing_past_the_buffer_are_refused() {
        let bytes = report(&NONCE, 64, &opaque());
        // MeasurementRecordLength at 37 + 5: the largest u24.
        let mut record = bytes.clone();
        record[42..45].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        assert_eq!(attestation_report(&record, &NONCE), Err(BufferError::Truncated("measurement record")));
        // OpaqueLength, right after the responder nonce.
        let at = 37 + 8 + 64 * 55 + 32;
        let mut opaque_len = bytes.clone();
        opaque_len[at..at + 2].copy_from_slice(&[0xFF, 0xFF]);
        assert_eq!(attestation_report(&opaque_len, &NONCE), Err(BufferError::Truncated("opaque data")));
        // A shorter declared opaque length leaves bytes that are not padding.
        let mut short = bytes.clone();
        short[at..at + 2].copy_from_slice(&[0, 0]);
        assert!(matches!(attestation_report(&short, &NONCE), Err(BufferError::TrailingBytes(_))));
    }

    #[test]
    fn fixed_fields_must_hold_their_values() {
        let bytes = report(&NONCE, 64, &opaque());
        for (at, what) in [
            (0, "GET_MEASUREMENTS request header"),
            (1, "GET_MEASUREMENTS request header"),
            (2, "GET_MEASUREMENTS request header"),
            (3, "GET_MEASUREMENTS request header"),
            (36, "request slot"),
            (37, "MEASUREMENTS response header"),
            (38, "MEASUREMENTS response header"),
        ] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let err = attestation_report(&bad, &NONCE).unwrap_err();
            assert!(matches!(err, BufferError::Unexpected { what: w, .. } if w == what), "{at}: {err:?}");
        }
        let no_blocks = report(&NONCE, 0, &opaque());
        assert!(matches!(
            attestation_report(&no_blocks, &NONCE),
            Err(BufferError::Unexpected { what: "NumberOfBlocks", .. })
        ));
        // An NVSwitch-like report with 31 blocks is fine.
        let switch = report(&NONCE, 31, &opaque());
        assert_eq!(attestation_report(&switch, &NONCE).unwrap().len(), switch.len());
    }

    #[test]
    fn reports_larger_than_nvmls_buffer_are_refused() {
        let mut bytes = report(&NONCE, 64, &opaque());
        bytes.resize(REPORT_BUFFER_LEN + 1, 0);
        assert!(matches!(attestation_report(&bytes, &NONCE), Err(BufferError::TooLarge { .. })));
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_pem_chain_comes_back_without_its_nul_terminator() {
        let chain = CERT.repeat(5);
        assert_eq!(attestation_cert_chain(chain.as_bytes()).unwrap(), chain.as_bytes());
        let mut c_string = chain.clone().into_bytes();
        c_string.extend_from_slice(&[0, 0, 0]);
        assert_eq!(attestation_cert_chain(&c_string).unwrap(), chain.as_bytes());
    }

    #[test]
    fn chains_that_are_not_pem_are_refused() {
        let refused = |bytes: &[u8]| attestation_cert_chain(bytes).unwrap_err();
        assert_eq!(refused(b""), BufferError::NotPem("it is empty"));
        assert_eq!(refused(&[0; 16]), BufferError::NotPem("it is empty"));
        assert_eq!(refused(b"hello"), BufferError::NotPem("no certificate"));
        let mut nul_inside = CERT.as_bytes().to_vec();
        nul_inside.insert(30, 0);
        assert_eq!(refused(&nul_inside), BufferError::NotPem("it holds bytes that are not PEM text"));
        assert_eq!(refused(&[0x30, 0x82, 0x01, 0x00]), BufferError::NotPem("it holds bytes that are not PEM text"));
        let unbalanced = format!("{CERT}-----BEGIN CERTIFICATE-----\nMIIB\n");
        assert_eq!(refused(unbalanced.as_bytes()), BufferError::NotPem("unbalanced certificate blocks"));
        let reversed = "-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n";
        assert_eq!(refused(reversed.as_bytes()), BufferError::NotPem("unbalanced certificate blocks"));
        let nested = "-----BEGIN CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n\
                      -----END CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        assert_eq!(refused(nested.as_bytes()), BufferError::NotPem("nested certificate blocks"));
        assert_eq!(refused(CERT.repeat(MAX_CERTIFICATES + 1).as_bytes()), BufferError::NotPem("too many certificates"));
        let big = "A".repeat(CERT_CHAIN_BUFFER_LEN + 1);
        assert!(matches!(refused(big.as_bytes()), BufferError::TooLarge { .. }));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_buffers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..5000)) {
            let _ = attestation_report(&bytes, &NONCE);
            let _ = attestation_cert_chain(&bytes);
        }

        #[test]
        fn arbitrary_reports_after_a_valid_request_never_panic(
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..4200),
        ) {
            let mut bytes = vec![0x11, 0xE0, 0x01, 0xFF];
            bytes.extend_from_slice(&NONCE);
            bytes.extend_from_slice(&[0, 0x11, 0x60]);
            bytes.extend_from_slice(&tail);
            if let Ok(spdm) = attestation_report(&bytes, &NONCE) {
                proptest::prop_assert!(spdm.len() <= bytes.len());
                proptest::prop_assert!(bytes[spdm.len()..].iter().all(|b| *b == 0));
            }
        }
    }
}

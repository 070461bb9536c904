//! What the simulated TEEs' test PKIs share: the parameters of a test
//! certificate, and DER TLVs for the extensions rcgen does not write.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose, SerialNumber};
use time::OffsetDateTime;

/// The parameters of a test certificate for `cn` (organization "KBS test
/// (INSECURE)"), valid from `from` to `until`: a CA that signs
/// certificates and CRLs, or a leaf with the key usages `leaf_usages`.
pub(super) fn params(
    cn: &str,
    ca: bool,
    serial: &[u8],
    (from, until): (OffsetDateTime, OffsetDateTime),
    leaf_usages: &[KeyUsagePurpose],
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name.push(DnType::OrganizationName, "KBS test (INSECURE)");
    p.not_before = from;
    p.not_after = until;
    p.serial_number = Some(SerialNumber::from_slice(serial));
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = leaf_usages.to_vec();
    }
    p
}

/// DER TLV (content below 64 KiB).
pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap_or(0));
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, u8::try_from(len).unwrap_or(0)]);
    } else {
        let [hi, lo] = u16::try_from(len).unwrap_or(0).to_be_bytes();
        out.extend_from_slice(&[0x82, hi, lo]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths_use_the_short_and_long_forms() {
        assert_eq!(tlv(0x04, &[7; 3]), [&[0x04, 3][..], &[7; 3]].concat());
        assert_eq!(tlv(0x04, &[7; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x30, &[7; 0x1234])[..4], [0x30, 0x82, 0x12, 0x34]);
        assert_eq!(tlv(0x30, &[7; 0x1234]).len(), 4 + 0x1234);
    }
}

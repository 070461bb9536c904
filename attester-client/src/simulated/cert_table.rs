//! The SEV-SNP extended-report certificate table (GHCB specification,
//! `SNP_GET_EXT_REPORT` / configfs-tsm `auxblob`).
//!
//! 24-byte entries `{guid[16], offset: u32 LE, length: u32 LE}` (offsets from
//! the start of the table), ended by an all-zero entry, followed by the DER
//! certificates. GUID bytes are in RFC 9562 order (the canonical string's
//! bytes in order), as in Linux `uuid_t`, libuuid, AMD's `sev-guest` tools,
//! `go-sev-guest` and the `sev` crate; not the mixed-endian EFI `guid_t`.

use crate::evidence::Error;

/// Size of one certificate-table entry.
pub const CERT_TABLE_ENTRY_LEN: usize = 24;

/// Certificate-table GUID of the VCEK, `63da758d-e664-4564-adc5-f4b93be8accd`.
pub const VCEK_GUID: [u8; 16] =
    [0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd];
/// Certificate-table GUID of the ASK, `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
pub const ASK_GUID: [u8; 16] =
    [0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82];
/// Certificate-table GUID of the ARK, `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
pub const ARK_GUID: [u8; 16] =
    [0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae];

/// One entry of a certificate table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertTableEntry {
    /// The entry's GUID, in table byte order (see the module docs).
    pub guid: [u8; 16],
    /// The certificate (DER).
    pub data: Vec<u8>,
}

/// Encodes a certificate table: the entries, an all-zero terminator, then
/// the certificates in entry order.
pub fn encode_cert_table(entries: &[CertTableEntry]) -> Result<Vec<u8>, Error> {
    let too_large = || Error::Simulated("certificate table exceeds 4 GiB");
    let header_len =
        CERT_TABLE_ENTRY_LEN.checked_mul(entries.len().checked_add(1).ok_or_else(too_large)?).ok_or_else(too_large)?;
    let mut table = Vec::with_capacity(header_len);
    let mut offset = header_len;
    for entry in entries {
        table.extend_from_slice(&entry.guid);
        table.extend_from_slice(&u32::try_from(offset).map_err(|_| too_large())?.to_le_bytes());
        table.extend_from_slice(&u32::try_from(entry.data.len()).map_err(|_| too_large())?.to_le_bytes());
        offset = offset.checked_add(entry.data.len()).ok_or_else(too_large)?;
    }
    table.extend_from_slice(&[0u8; CERT_TABLE_ENTRY_LEN]);
    for entry in entries {
        table.extend_from_slice(&entry.data);
    }
    Ok(table)
}

/// Decodes a certificate table, checking every offset and length. Returns
/// `None` for a table that is truncated, unterminated or points outside
/// itself.
pub fn decode_cert_table(table: &[u8]) -> Option<Vec<CertTableEntry>> {
    let mut entries = Vec::new();
    for raw in table.chunks(CERT_TABLE_ENTRY_LEN) {
        let raw: &[u8; CERT_TABLE_ENTRY_LEN] = raw.try_into().ok()?;
        let (guid, rest) = raw.split_first_chunk::<16>()?;
        let (offset, length) = rest.split_first_chunk::<4>()?;
        let offset = usize::try_from(u32::from_le_bytes(*offset)).ok()?;
        let length = usize::try_from(u32::from_le_bytes(length.try_into().ok()?)).ok()?;
        if guid == &[0u8; 16] {
            return Some(entries);
        }
        let data = table.get(offset..offset.checked_add(length)?)?;
        entries.push(CertTableEntry { guid: *guid, data: data.to_vec() });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulated::{Pki, SimulatedSnp, Vcek, test_ark_der, test_ask_der};

    fn u32_at(r: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(r[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn cert_table_round_trips_with_amd_guids() {
        let sim = SimulatedSnp::default();
        let table = sim.cert_table().unwrap();
        // Three entries and the terminator precede the certificates.
        assert_eq!(&table[..16], &VCEK_GUID);
        assert_eq!(u32_at(&table, 16), 96);
        assert_eq!(&table[72..96], &[0u8; 24]);
        let entries = decode_cert_table(&table).unwrap();
        assert_eq!(
            entries,
            vec![
                CertTableEntry { guid: VCEK_GUID, data: Vcek::Genoa.cert_der().to_vec() },
                CertTableEntry { guid: ASK_GUID, data: test_ask_der().to_vec() },
                CertTableEntry { guid: ARK_GUID, data: test_ark_der().to_vec() },
            ]
        );
        assert_eq!(encode_cert_table(&entries).unwrap(), table);
        // GUIDs are the canonical strings' bytes in order.
        assert_eq!(hex::encode(VCEK_GUID), "63da758de6644564adc5f4b93be8accd");
        assert_eq!(hex::encode(ASK_GUID), "4ab7b379bbac4fe4a02f05aef327c782");
        assert_eq!(hex::encode(ARK_GUID), "c0b406a4a803495297433fb6014cd0ae");

        let foreign = SimulatedSnp::default().foreign().cert_table().unwrap();
        let entries = decode_cert_table(&foreign).unwrap();
        assert_eq!(entries[0].data, Vcek::ForeignGenoa.cert_der());
        assert_eq!(entries[2].data, Pki::Foreign.ark_der());
        assert!(SimulatedSnp::default().without_cert_table().cert_table().unwrap().is_empty());
    }

    #[test]
    fn decode_refuses_bad_tables() {
        let table = SimulatedSnp::default().cert_table().unwrap();
        assert!(decode_cert_table(&table[..50]).is_none(), "truncated header");
        assert!(decode_cert_table(&table[..table.len() - 1]).is_none(), "truncated certificate");
        let mut bad = table.clone();
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_cert_table(&bad).is_none(), "offset outside the table");
        assert!(decode_cert_table(&[]).is_none(), "no terminator");
    }
}

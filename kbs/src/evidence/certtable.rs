//! Parser for the AMD SEV-SNP extended-report certificate table.
//!
//! `SNP_GET_EXT_REPORT` (and the configfs-tsm `auxblob`) hand the guest a
//! buffer that starts with a table of 24-byte entries, each a 16-byte GUID,
//! a little-endian `u32` offset from the start of the buffer and a
//! little-endian `u32` length, terminated by an all-zero entry. The data the
//! entries point at follows the table. The GHCB specification defines GUIDs
//! for the VCEK, VLEK, ASK and ARK; hosts may add others (CRLs, vendor data).
//!
//! GUID byte order: AMD's own tooling (`uuid_parse`), the `sev` crate and
//! go-sev-guest write the GUID's bytes in the order its text is written
//! (RFC 4122 order). Some hosts emit the Linux `guid_t` / EFI layout instead,
//! whose first three fields are little-endian. Both spellings of the four
//! known GUIDs are recognised; they name the same entry, so a table that
//! carries one certificate under both spellings is a duplicate and refused.
//! Whichever entry a certificate comes from, it is only an untrusted hint:
//! the verifier trusts it only after its signature chain checks out.
//!
//! The table is host-controlled, so every size is capped and every offset
//! and length is checked before anything is read.

use super::EvidenceError;

/// Largest certificate table accepted, whole buffer included.
pub const MAX_TABLE_LEN: usize = 64 * 1024;

/// Most entries accepted before the terminator (four known kinds plus room
/// for CRLs and vendor entries).
pub const MAX_ENTRIES: usize = 16;

/// Size of one table entry: GUID (16), offset (4), length (4).
pub const ENTRY_LEN: usize = 24;

/// A GUID as written in text, `aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee`, split
/// into its fields.
struct Guid {
    a: u32,
    b: u16,
    c: u16,
    d: [u8; 8],
}

impl Guid {
    /// RFC 4122 byte order: every field big-endian, as the text reads.
    const fn rfc4122(&self) -> [u8; 16] {
        Self::join(self.a.to_be_bytes(), self.b.to_be_bytes(), self.c.to_be_bytes(), self.d)
    }

    const fn join(a: [u8; 4], b: [u8; 2], c: [u8; 2], d: [u8; 8]) -> [u8; 16] {
        let [a0, a1, a2, a3] = a;
        let [b0, b1] = b;
        let [c0, c1] = c;
        let [d0, d1, d2, d3, d4, d5, d6, d7] = d;
        [a0, a1, a2, a3, b0, b1, c0, c1, d0, d1, d2, d3, d4, d5, d6, d7]
    }

    /// Mixed-endian (`guid_t`/EFI) order: first three fields little-endian.
    const fn mixed_endian(&self) -> [u8; 16] {
        Self::join(self.a.to_le_bytes(), self.b.to_le_bytes(), self.c.to_le_bytes(), self.d)
    }
}

/// 63da758d-e664-4564-adc5-f4b93be8accd
const VCEK_GUID: Guid =
    Guid { a: 0x63da_758d, b: 0xe664, c: 0x4564, d: [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd] };
/// a8074bc2-a25a-483e-aae6-39c045a0b8a1
const VLEK_GUID: Guid =
    Guid { a: 0xa807_4bc2, b: 0xa25a, c: 0x483e, d: [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1] };
/// 4ab7b379-bbac-4fe4-a02f-05aef327c782
const ASK_GUID: Guid =
    Guid { a: 0x4ab7_b379, b: 0xbbac, c: 0x4fe4, d: [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82] };
/// c0b406a4-a803-4952-9743-3fb6014cd0ae
const ARK_GUID: Guid =
    Guid { a: 0xc0b4_06a4, b: 0xa803, c: 0x4952, d: [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae] };

/// Which certificate an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// AMD SEV Signing Key (or, next to a VLEK, the ASVK).
    Ask,
    /// AMD Root Key.
    Ark,
}

impl CertKind {
    const ALL: [CertKind; 4] = [CertKind::Vcek, CertKind::Vlek, CertKind::Ask, CertKind::Ark];

    fn guid(self) -> &'static Guid {
        match self {
            Self::Vcek => &VCEK_GUID,
            Self::Vlek => &VLEK_GUID,
            Self::Ask => &ASK_GUID,
            Self::Ark => &ARK_GUID,
        }
    }

    /// The GUID in RFC 4122 byte order, the form this crate writes.
    pub fn guid_bytes(self) -> [u8; 16] {
        self.guid().rfc4122()
    }

    /// The kind a wire GUID names, in either byte order.
    fn from_wire(guid: &[u8; 16]) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.guid().rfc4122() == *guid || k.guid().mixed_endian() == *guid)
    }
}

/// The certificates a guest's table carried. Every one is untrusted until
/// the verifier has checked its signature chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertTable {
    /// The VCEK (DER), if present.
    pub vcek: Option<Vec<u8>>,
    /// The VLEK (DER), if present.
    pub vlek: Option<Vec<u8>>,
    /// The ASK or ASVK (DER), if present.
    pub ask: Option<Vec<u8>>,
    /// The ARK (DER), if present.
    pub ark: Option<Vec<u8>>,
    /// How many entries had GUIDs this parser does not know (ignored).
    pub ignored: usize,
}

impl CertTable {
    /// The endorsement key the table carries: the VLEK if present, else
    /// the VCEK. The report's key_info says which one signed it; the
    /// verifier checks that the two agree.
    pub fn vek(&self) -> Option<&[u8]> {
        self.vlek.as_deref().or(self.vcek.as_deref())
    }

    /// The intermediates and root, to pass as `extra_certs` to the verifier.
    pub fn extra_certs(&self) -> Vec<Vec<u8>> {
        self.ask.iter().chain(self.ark.iter()).cloned().collect()
    }

    /// Puts `data` in `kind`'s place. Refused (`Malformed`) when the place
    /// is taken: a guest names each certificate once.
    pub fn insert(&mut self, kind: CertKind, data: Vec<u8>) -> Result<(), EvidenceError> {
        let slot = self.slot(kind);
        if slot.is_some() {
            return Err(malformed("certificate table repeats a GUID"));
        }
        *slot = Some(data);
        Ok(())
    }

    fn slot(&mut self, kind: CertKind) -> &mut Option<Vec<u8>> {
        match kind {
            CertKind::Vcek => &mut self.vcek,
            CertKind::Vlek => &mut self.vlek,
            CertKind::Ask => &mut self.ask,
            CertKind::Ark => &mut self.ark,
        }
    }
}

/// One table entry before its data is read.
struct Entry {
    guid: [u8; 16],
    offset: usize,
    len: usize,
}

/// Parses a certificate table.
///
/// Refused: a buffer over [`MAX_TABLE_LEN`] (`TooLarge`); no terminator
/// within the buffer or more than [`MAX_ENTRIES`] entries; an entry with a
/// zero GUID that is not all zero; an empty entry; data that overlaps the
/// table itself or another entry's data or runs past the buffer; the same
/// known GUID twice (`Malformed`). Unknown GUIDs are counted and ignored.
/// An empty buffer or a lone terminator is a table with no certificates.
pub fn parse(bytes: &[u8]) -> Result<CertTable, EvidenceError> {
    if bytes.len() > MAX_TABLE_LEN {
        return Err(EvidenceError::TooLarge { len: bytes.len(), max: MAX_TABLE_LEN });
    }
    let mut table = CertTable::default();
    if bytes.is_empty() {
        return Ok(table);
    }

    let mut entries: Vec<Entry> = Vec::new();
    let mut rest = bytes;
    loop {
        let Some((raw, tail)) = rest.split_first_chunk::<ENTRY_LEN>() else {
            return Err(malformed("certificate table has no terminating entry"));
        };
        rest = tail;
        if raw.iter().all(|b| *b == 0) {
            break;
        }
        if entries.len() >= MAX_ENTRIES {
            return Err(malformed("certificate table has too many entries"));
        }
        let (guid, tail) = split::<16>(raw)?;
        let (offset, tail) = split::<4>(tail)?;
        let (len, _) = split::<4>(tail)?;
        if guid.iter().all(|b| *b == 0) {
            return Err(malformed("certificate table entry with a zero GUID"));
        }
        let entry = Entry {
            guid: *guid,
            offset: usize::try_from(u32::from_le_bytes(*offset)).map_err(|_| malformed("offset does not fit"))?,
            len: usize::try_from(u32::from_le_bytes(*len)).map_err(|_| malformed("length does not fit"))?,
        };
        if entry.len == 0 {
            return Err(malformed("certificate table entry is empty"));
        }
        entries.push(entry);
    }
    // Entries plus terminator; data must lie after this.
    let header_len = entries
        .len()
        .checked_add(1)
        .and_then(|n| n.checked_mul(ENTRY_LEN))
        .ok_or_else(|| malformed("table size overflows"))?;

    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(entries.len());
    for entry in &entries {
        let end = entry.offset.checked_add(entry.len).ok_or_else(|| malformed("entry range overflows"))?;
        if entry.offset < header_len {
            return Err(malformed("certificate data overlaps the table"));
        }
        if end > bytes.len() {
            return Err(malformed("certificate data runs past the buffer"));
        }
        if ranges.iter().any(|&(s, e)| entry.offset < e && s < end) {
            return Err(malformed("certificate data ranges overlap"));
        }
        ranges.push((entry.offset, end));

        let Some(kind) = CertKind::from_wire(&entry.guid) else {
            table.ignored = table.ignored.saturating_add(1);
            continue;
        };
        let data = bytes.get(entry.offset..end).ok_or_else(|| malformed("certificate data runs past the buffer"))?;
        table.insert(kind, data.to_vec())?;
    }
    Ok(table)
}

/// Builds a table (RFC 4122 GUID order) from `(kind, data)` pairs; the
/// inverse of [`parse`], for tests and the simulated TEE.
pub fn build(entries: &[(CertKind, &[u8])]) -> Result<Vec<u8>, EvidenceError> {
    let header_len = entries
        .len()
        .checked_add(1)
        .and_then(|n| n.checked_mul(ENTRY_LEN))
        .ok_or_else(|| malformed("table size overflows"))?;
    let mut head = Vec::with_capacity(header_len);
    let mut body = Vec::new();
    for (kind, data) in entries {
        let offset = header_len
            .checked_add(body.len())
            .and_then(|o| u32::try_from(o).ok())
            .ok_or_else(|| malformed("table too large"))?;
        let len = u32::try_from(data.len()).map_err(|_| malformed("certificate too large"))?;
        head.extend_from_slice(&kind.guid_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(data);
    }
    head.extend_from_slice(&[0u8; ENTRY_LEN]);
    head.extend_from_slice(&body);
    if head.len() > MAX_TABLE_LEN {
        return Err(EvidenceError::TooLarge { len: head.len(), max: MAX_TABLE_LEN });
    }
    Ok(head)
}

fn split<const N: usize>(bytes: &[u8]) -> Result<(&[u8; N], &[u8]), EvidenceError> {
    bytes.split_first_chunk::<N>().ok_or_else(|| malformed("short certificate table entry"))
}

fn malformed(why: &str) -> EvidenceError {
    EvidenceError::Malformed(why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(guid: [u8; 16], offset: u32, len: u32) -> Vec<u8> {
        let mut e = guid.to_vec();
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e
    }

    #[test]
    fn guid_byte_orders() {
        assert_eq!(hex::encode(CertKind::Vcek.guid_bytes()), "63da758de6644564adc5f4b93be8accd");
        assert_eq!(hex::encode(VCEK_GUID.mixed_endian()), "8d75da6364e66445adc5f4b93be8accd");
        assert_eq!(hex::encode(CertKind::Ark.guid_bytes()), "c0b406a4a803495297433fb6014cd0ae");
        assert_eq!(hex::encode(CertKind::Vlek.guid_bytes()), "a8074bc2a25a483eaae639c045a0b8a1");
        assert_eq!(hex::encode(CertKind::Ask.guid_bytes()), "4ab7b379bbac4fe4a02f05aef327c782");
    }

    #[test]
    fn round_trip() {
        let bytes = build(&[(CertKind::Vcek, b"vcek-der"), (CertKind::Ask, b"ask"), (CertKind::Ark, b"ark!")]).unwrap();
        let table = parse(&bytes).unwrap();
        assert_eq!(table.vcek.as_deref(), Some(&b"vcek-der"[..]));
        assert_eq!(table.ask.as_deref(), Some(&b"ask"[..]));
        assert_eq!(table.ark.as_deref(), Some(&b"ark!"[..]));
        assert_eq!(table.vlek, None);
        assert_eq!(table.vek(), Some(&b"vcek-der"[..]));
        assert_eq!(table.extra_certs(), vec![b"ask".to_vec(), b"ark!".to_vec()]);
        // Page padding after the data is fine.
        let mut padded = bytes.clone();
        padded.resize(4096, 0);
        assert_eq!(parse(&padded).unwrap(), table);
    }

    #[test]
    fn mixed_endian_guids_are_recognised() {
        let mut t = entry(VLEK_GUID.mixed_endian(), 48, 4);
        t.extend_from_slice(&[0u8; ENTRY_LEN]);
        t.extend_from_slice(b"vlek");
        let table = parse(&t).unwrap();
        assert_eq!(table.vlek.as_deref(), Some(&b"vlek"[..]));
        // The same GUID in both spellings is a duplicate.
        let mut t = entry(VCEK_GUID.mixed_endian(), 72, 2);
        t.extend(entry(VCEK_GUID.rfc4122(), 74, 2));
        t.extend_from_slice(&[0u8; ENTRY_LEN]);
        t.extend_from_slice(b"aabb");
        assert!(matches!(parse(&t), Err(EvidenceError::Malformed(_))));
    }

    #[test]
    fn empty_and_terminator_only() {
        assert_eq!(parse(&[]).unwrap(), CertTable::default());
        assert_eq!(parse(&[0u8; ENTRY_LEN]).unwrap(), CertTable::default());
        assert_eq!(parse(&[0u8; 4096]).unwrap(), CertTable::default());
    }

    #[test]
    fn unknown_guids_are_ignored() {
        let mut t = entry([0x11; 16], 72, 1);
        t.extend(entry(CertKind::Vcek.guid_bytes(), 73, 1));
        t.extend_from_slice(&[0u8; ENTRY_LEN]);
        t.extend_from_slice(b"xv");
        let table = parse(&t).unwrap();
        assert_eq!(table.ignored, 1);
        assert_eq!(table.vcek.as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn refusals() {
        let vcek = CertKind::Vcek.guid_bytes();
        let ask = CertKind::Ask.guid_bytes();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no terminator", entry(vcek, 24, 1)),
            ("short", vec![1, 2, 3]),
            ("overlaps table", {
                let mut t = entry(vcek, 24, 4);
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t
            }),
            ("past end", {
                let mut t = entry(vcek, 48, 100);
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t
            }),
            ("overflow", {
                let mut t = entry(vcek, u32::MAX, u32::MAX);
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t
            }),
            ("empty entry", {
                let mut t = entry(vcek, 48, 0);
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t
            }),
            ("zero guid", {
                let mut t = entry([0; 16], 48, 1);
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t.push(1);
                t
            }),
            ("overlap", {
                let mut t = entry(vcek, 72, 4);
                t.extend(entry(ask, 74, 4));
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t.extend_from_slice(&[7u8; 8]);
                t
            }),
            ("duplicate", {
                let mut t = entry(vcek, 72, 2);
                t.extend(entry(vcek, 74, 2));
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t.extend_from_slice(&[7u8; 4]);
                t
            }),
            ("too many", {
                let n = MAX_ENTRIES + 1;
                let mut t = Vec::new();
                for i in 0..n {
                    let mut g = [0x22u8; 16];
                    g[0] = u8::try_from(i).unwrap();
                    let off = u32::try_from((n + 1) * ENTRY_LEN + i).unwrap();
                    t.extend(entry(g, off, 1));
                }
                t.extend_from_slice(&[0u8; ENTRY_LEN]);
                t.extend(vec![1u8; n]);
                t
            }),
        ];
        for (name, bytes) in cases {
            assert!(matches!(parse(&bytes), Err(EvidenceError::Malformed(_))), "{name} was not refused");
        }
        assert!(matches!(parse(&vec![0u8; MAX_TABLE_LEN + 1]), Err(EvidenceError::TooLarge { .. })));
    }
}

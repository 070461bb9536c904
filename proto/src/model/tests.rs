//! Round trips, one test per tamper case, header parser negatives,
//! property tests and the known-answer vectors.

use std::io::Cursor;

use proptest::prelude::*;
use zeroize::Zeroizing;

use super::header::{COMMITMENT_OFFSET, DIGEST_LEN};
use super::stream::encrypt_with;
use super::*;

const NAME: &str = "models/demo/key";
const SMALL: u32 = MIN_CHUNK_SIZE;

fn key(version: u64, byte: u8) -> ModelKey {
    ModelKey::new(NAME, version, &[byte; KEY_LEN]).unwrap()
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from((i * 7 + 3) % 251).unwrap()).collect()
}

fn options(threads: usize) -> EncryptOptions {
    EncryptOptions { chunk_size: SMALL, threads }
}

fn seal(plain: &[u8], key: &ModelKey) -> Vec<u8> {
    let mut out = Vec::new();
    encrypt(&mut Cursor::new(plain), plain.len() as u64, &mut out, key, &options(2)).unwrap();
    out
}

/// Decrypts with one thread and with several, and checks that every
/// thread count writes the same bytes and ends the same way (the same
/// error for a damaged file), so each tamper test also covers parallel
/// decryption. Returns the one-thread outcome.
pub(super) fn open(file: &[u8], key: &ModelKey) -> (Result<u64, Error>, Vec<u8>) {
    let run = |threads| {
        let mut out = Vec::new();
        let result = decrypt_with(&mut Cursor::new(file), &mut out, key, &DecryptOptions { threads });
        (result, out)
    };
    let (one, one_out) = run(1);
    for threads in [2, 3, 8] {
        let (many, many_out) = run(threads);
        assert_eq!(format!("{many:?}"), format!("{one:?}"), "{threads} threads");
        assert!(many_out == one_out, "{threads} threads wrote other bytes");
    }
    (one, one_out)
}

/// Decrypts and expects the given failure, with no plaintext written for
/// header-level failures.
fn refused(file: &[u8], key: &ModelKey) -> Error {
    let (result, _) = open(file, key);
    result.expect_err("tampered file must be refused")
}

fn header_len(file: &[u8]) -> usize {
    Header::parse(file).unwrap().1
}

/// Offset of chunk `i` in a file made with [`SMALL`] chunks.
fn chunk_at(file: &[u8], i: usize) -> usize {
    header_len(file) + i * (SMALL as usize + TAG_LEN)
}

#[test]
fn round_trips_every_boundary() {
    let k = key(1, 9);
    let s = SMALL as usize;
    for len in [0, 1, s - 1, s, s + 1, 3 * s, 3 * s + 5] {
        for threads in [1, 3] {
            let plain = plaintext(len);
            let mut file = Vec::new();
            let header = encrypt(&mut Cursor::new(&plain), len as u64, &mut file, &k, &options(threads)).unwrap();
            assert_eq!(header.file_len(), Some(file.len() as u64), "len {len}");
            assert_eq!(header.chunk_count(), (len.max(1)).div_ceil(s) as u64);
            let (result, out) = open(&file, &k);
            assert_eq!(result.unwrap(), len as u64);
            assert_eq!(out, plain, "len {len} threads {threads}");
            // The ciphertext does not contain the plaintext.
            if len >= 64 {
                assert!(!file.windows(64).any(|w| w == &plain[..64]));
            }
        }
    }
}

#[test]
fn same_input_encrypts_differently_each_time() {
    let k = key(1, 9);
    let plain = plaintext(100);
    assert_ne!(seal(&plain, &k), seal(&plain, &k));
}

#[test]
fn wrong_key_is_refused_before_any_output() {
    let file = seal(&plaintext(3 * SMALL as usize), &key(1, 9));
    let (result, out) = open(&file, &key(1, 10));
    assert!(matches!(result, Err(Error::WrongKey)), "{result:?}");
    assert!(out.is_empty());
}

#[test]
fn wrong_secret_version_is_refused() {
    let file = seal(&plaintext(10), &key(1, 9));
    let (result, out) = open(&file, &key(2, 9));
    assert!(matches!(result, Err(Error::WrongSecretVersion { header: 1, key: 2 })), "{result:?}");
    assert!(out.is_empty());
}

#[test]
fn other_secret_is_refused() {
    let file = seal(&plaintext(10), &key(1, 9));
    let other = ModelKey::new("models/other/key", 1, &[9; KEY_LEN]).unwrap();
    let err = refused(&file, &other);
    assert!(matches!(&err, Error::SecretMismatch { header, key } if header == NAME && key == "models/other/key"));
}

#[test]
fn edited_header_fields_are_refused() {
    let k = key(1, 9);
    let file = seal(&plaintext(2 * SMALL as usize), &k);
    // plaintext_len (offset 16), salt (24), commitment (56), wrap nonce and
    // wrapped key (the last 60 header bytes): all covered by the wrap tag.
    let hl = header_len(&file);
    for offset in [23, 24, 55, COMMITMENT_OFFSET, CONTENT_LEN - 1, hl - 60, hl - 1] {
        let mut bad = file.clone();
        bad[offset] ^= 0x01;
        let (result, out) = open(&bad, &k);
        assert!(matches!(result, Err(Error::HeaderAuthentication)), "offset {offset}: {result:?}");
        assert!(out.is_empty());
    }
    // A different but valid chunk size.
    let mut bad = file.clone();
    bad[12..16].copy_from_slice(&(2 * SMALL).to_be_bytes());
    assert!(matches!(refused(&bad, &k), Error::HeaderAuthentication));
    // The key commitment itself.
    let mut bad = file.clone();
    bad[hl - 61] ^= 0x80;
    assert!(matches!(refused(&bad, &k), Error::WrongKey));
    // The recorded version: the released key no longer matches it.
    let mut bad = file.clone();
    let version_at = CONTENT_LEN + 2 + NAME.len();
    bad[version_at + 7] = 2;
    assert!(matches!(refused(&bad, &k), Error::WrongSecretVersion { header: 2, key: 1 }));
}

#[test]
fn tampered_chunk_is_refused_with_its_index() {
    let k = key(1, 9);
    let file = seal(&plaintext(3 * SMALL as usize + 10), &k);
    for (chunk, delta) in [(0usize, 0usize), (1, 100), (2, SMALL as usize + 3), (3, 0)] {
        let mut bad = file.clone();
        bad[chunk_at(&file, chunk) + delta] ^= 0x40;
        let err = refused(&bad, &k);
        assert!(matches!(err, Error::ChunkAuthentication { index } if index == chunk as u64), "{chunk}: {err:?}");
    }
}

#[test]
fn reordered_duplicated_dropped_and_spliced_chunks_are_refused() {
    let k = key(1, 9);
    let stride = SMALL as usize + TAG_LEN;
    let file = seal(&plaintext(3 * SMALL as usize), &k);
    let c = |i: usize| &file[chunk_at(&file, i)..chunk_at(&file, i) + stride];
    let hl = header_len(&file);
    let with = |chunks: &[&[u8]]| [&file[..hl], &chunks.concat()].concat();

    let swapped = with(&[c(1), c(0), c(2)]);
    assert!(matches!(refused(&swapped, &k), Error::ChunkAuthentication { index: 0 }));
    let duplicated = with(&[c(0), c(0), c(2)]);
    assert!(matches!(refused(&duplicated, &k), Error::ChunkAuthentication { index: 1 }));
    // Dropping the middle chunk: the last chunk arrives as chunk 1.
    let dropped = with(&[c(0), c(2)]);
    assert!(matches!(refused(&dropped, &k), Error::ChunkAuthentication { index: 1 }));
    // The last chunk moved to a non-last position fails on its flag.
    let last_first = with(&[c(2), c(1), c(0)]);
    assert!(matches!(refused(&last_first, &k), Error::ChunkAuthentication { index: 0 }));
    // A chunk from another file under the same model key.
    let other = seal(&plaintext(3 * SMALL as usize), &k);
    let spliced = with(&[c(0), &other[chunk_at(&other, 1)..chunk_at(&other, 1) + stride], c(2)]);
    assert!(matches!(refused(&spliced, &k), Error::ChunkAuthentication { index: 1 }));
}

#[test]
fn truncation_and_trailing_data_are_refused() {
    let k = key(1, 9);
    let file = seal(&plaintext(2 * SMALL as usize + 7), &k);
    let full = file.len() as u64;
    for cut in [file.len() - 1, chunk_at(&file, 2), chunk_at(&file, 1) + 5, header_len(&file)] {
        let err = refused(&file[..cut], &k);
        assert!(
            matches!(err, Error::Truncated { expected, found } if expected == full && found == cut as u64),
            "cut {cut}: {err:?}"
        );
    }
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(refused(&longer, &k), Error::TrailingData));
    // Into the header: a header-level refusal.
    assert!(matches!(refused(&file[..100], &k), Error::Header(HeaderError::Truncated)));
}

#[test]
fn the_first_failure_in_chunk_order_is_reported_whatever_the_threads() {
    let k = key(1, 9);
    let file = seal(&plaintext(9 * SMALL as usize + 3), &k);
    // A damaged chunk 2 and a cut inside chunk 8: the reading thread meets
    // the cut while chunk 2 may still be in flight; chunk 2 is reported,
    // and chunks 0 and 1 are written, with any number of threads (`open`
    // compares them).
    let mut bad = file[..chunk_at(&file, 8) + 5].to_vec();
    bad[chunk_at(&file, 2) + 1] ^= 1;
    let (result, out) = open(&bad, &k);
    assert!(matches!(result, Err(Error::ChunkAuthentication { index: 2 })), "{result:?}");
    assert_eq!(out, plaintext(9 * SMALL as usize + 3)[..2 * SMALL as usize]);
    // Chunk 7 damaged as well: still chunk 2.
    bad[chunk_at(&file, 7)] ^= 1;
    assert!(matches!(open(&bad, &k).0, Err(Error::ChunkAuthentication { index: 2 })));
}

#[test]
fn failed_chunk_leaves_no_unauthenticated_bytes_in_the_buffer() {
    let k = key(1, 9);
    let file = seal(&plaintext(SMALL as usize), &k);
    let header = Header::parse(&file).unwrap().0;
    let unlocked = header.unlock(&k).unwrap();
    let mut buf = file[header_len(&file)..].to_vec();
    buf[0] ^= 1;
    assert!(matches!(unlocked.payload.open(0, true, &mut buf), Err(Error::ChunkAuthentication { index: 0 })));
    assert!(buf.iter().all(|b| *b == 0));
}

#[test]
fn input_of_the_wrong_length_is_refused() {
    let k = key(1, 9);
    let plain = plaintext(100);
    let err = encrypt(&mut Cursor::new(&plain), 101, &mut Vec::new(), &k, &options(1)).unwrap_err();
    assert!(matches!(err, Error::InputLength { expected: 101, found: 100 }));
    let err = encrypt(&mut Cursor::new(&plain), 99, &mut Vec::new(), &k, &options(1)).unwrap_err();
    assert!(matches!(err, Error::InputLength { expected: 99, .. }));
    let err =
        encrypt(&mut Cursor::new(&plain), 100, &mut Vec::new(), &k, &EncryptOptions { chunk_size: 100, threads: 1 })
            .unwrap_err();
    assert!(matches!(err, Error::InvalidParameter(_)));
}

#[test]
fn random_access_reads_any_range() {
    let k = key(1, 9);
    let plain = plaintext(3 * SMALL as usize + 123);
    let file = seal(&plain, &k);
    let mut reader = ModelReader::open(Cursor::new(file), &k).unwrap();
    assert_eq!(reader.len(), plain.len() as u64);
    let mut buf = vec![0u8; 5000];
    let n = reader.read_at(4000, &mut buf).unwrap();
    assert_eq!(&buf[..n], &plain[4000..9000]);
    let n = reader.read_at(plain.len() as u64 - 10, &mut buf).unwrap();
    assert_eq!(&buf[..n], &plain[plain.len() - 10..]);
    assert_eq!(reader.read_at(plain.len() as u64, &mut buf).unwrap(), 0);
    // Read + Seek.
    use std::io::{Read, Seek, SeekFrom};
    reader.seek(SeekFrom::End(-123)).unwrap();
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &plain[plain.len() - 123..]);
}

#[test]
fn random_access_checks_the_length_and_each_chunk() {
    let k = key(1, 9);
    let file = seal(&plaintext(3 * SMALL as usize), &k);
    let err = ModelReader::open(Cursor::new(file[..file.len() - 1].to_vec()), &k).unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }));
    let err = ModelReader::open(Cursor::new([&file[..], b"x"].concat()), &k).unwrap_err();
    assert!(matches!(err, Error::TrailingData));
    assert!(matches!(ModelReader::open(Cursor::new(file.clone()), &key(1, 1)).unwrap_err(), Error::WrongKey));

    let mut bad = file.clone();
    bad[chunk_at(&file, 1) + 9] ^= 1;
    let mut reader = ModelReader::open(Cursor::new(bad), &k).unwrap();
    let mut buf = vec![0u8; 10];
    assert_eq!(reader.read_at(0, &mut buf).unwrap(), 10);
    let mut out = vec![0u8; 10];
    assert!(matches!(reader.read_at(SMALL as u64 + 1, &mut out), Err(Error::ChunkAuthentication { index: 1 })));
    assert_eq!(out, vec![0u8; 10]);
}

#[test]
fn rewrap_changes_the_header_only() {
    let old = key(1, 9);
    let new = key(2, 77);
    let plain = plaintext(2 * SMALL as usize);
    let file = seal(&plain, &old);
    let (header, hl) = Header::parse(&file).unwrap();
    let rewrapped = header.rewrap(&old, &new).unwrap();
    assert_eq!(rewrapped.secret_version(), 2);
    assert_eq!(rewrapped.encoded_len(), hl);
    assert_eq!(rewrapped.content_bytes(), header.content_bytes());
    let moved = [&rewrapped.to_bytes()[..], &file[hl..]].concat();
    let (result, out) = open(&moved, &new);
    assert_eq!(result.unwrap(), plain.len() as u64);
    assert_eq!(out, plain);
    assert!(matches!(refused(&moved, &old), Error::WrongSecretVersion { header: 2, key: 1 }));
    // Same version number, other key bytes: a wrong key.
    assert!(matches!(refused(&moved, &key(2, 9)), Error::WrongKey));
    // Rewrapping needs the right old key.
    assert!(matches!(header.rewrap(&key(1, 8), &new), Err(Error::WrongKey)));
}

#[test]
fn model_key_checks_its_inputs_and_hides_its_value() {
    assert!(ModelKey::new(NAME, 1, &[0; 31]).is_err());
    assert!(ModelKey::new(NAME, 0, &[0; 32]).is_err());
    assert!(ModelKey::new("", 1, &[0; 32]).is_err());
    assert!(ModelKey::new("a b", 1, &[0; 32]).is_err());
    let k = ModelKey::new(NAME, 3, &[0xab; 32]).unwrap();
    let shown = format!("{k:?}");
    assert!(shown.contains("redacted") && !shown.contains("171") && !shown.contains("ab, "), "{shown}");
    let generated = ModelKey::generate(NAME, 1).unwrap();
    assert_ne!(generated.expose_bytes(), ModelKey::generate(NAME, 1).unwrap().expose_bytes());
}

// ---- header parser ----

fn valid_header_bytes() -> Vec<u8> {
    let file = seal(b"hello", &key(1, 9));
    file[..header_len(&file)].to_vec()
}

#[test]
fn parser_refuses_each_malformation() {
    let good = valid_header_bytes();
    assert!(Header::parse(&good).is_ok());
    let set = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        Header::parse(&b).map(|_| ())
    };
    assert_eq!(set(0, b"KBSMODEX"), Err(HeaderError::BadMagic));
    assert_eq!(set(8, &2u16.to_be_bytes()), Err(HeaderError::UnsupportedVersion(2)));
    assert_eq!(set(8, &0u16.to_be_bytes()), Err(HeaderError::UnsupportedVersion(0)));
    assert_eq!(set(10, &2u16.to_be_bytes()), Err(HeaderError::UnsupportedFlags(2)));
    assert_eq!(set(10, &3u16.to_be_bytes()), Err(HeaderError::UnsupportedFlags(3)));
    assert_eq!(set(10, &0x8000u16.to_be_bytes()), Err(HeaderError::UnsupportedFlags(0x8000)));
    assert_eq!(set(12, &(MIN_CHUNK_SIZE - 1).to_be_bytes()), Err(HeaderError::ChunkSize(MIN_CHUNK_SIZE - 1)));
    assert_eq!(set(12, &(MAX_CHUNK_SIZE + 1).to_be_bytes()), Err(HeaderError::ChunkSize(MAX_CHUNK_SIZE + 1)));
    assert_eq!(set(16, &u64::MAX.to_be_bytes()), Err(HeaderError::TooLarge(u64::MAX)));
    // 2^32 chunks of 4 KiB is the most the 32-bit index allows.
    assert!(set(16, &(1u64 << 44).to_be_bytes()).is_ok());
    assert_eq!(set(16, &((1u64 << 44) + 1).to_be_bytes()), Err(HeaderError::TooLarge((1 << 44) + 1)));
    assert_eq!(set(CONTENT_LEN, &0u16.to_be_bytes()), Err(HeaderError::SecretName));
    assert_eq!(set(CONTENT_LEN + 2, b" "), Err(HeaderError::SecretName));
    assert_eq!(set(CONTENT_LEN + 2, &[0xff]), Err(HeaderError::SecretName));
    assert_eq!(set(CONTENT_LEN + 2 + NAME.len(), &0u64.to_be_bytes()), Err(HeaderError::ZeroVersion));
    // A name length pointing past the end.
    assert_eq!(set(CONTENT_LEN, &300u16.to_be_bytes()), Err(HeaderError::SecretName));
    assert_eq!(set(CONTENT_LEN, &200u16.to_be_bytes()), Err(HeaderError::Truncated));
    for cut in 0..good.len() {
        assert_eq!(Header::parse(&good[..cut]).map(|_| ()), Err(HeaderError::Truncated), "cut {cut}");
    }
}

#[test]
fn read_from_matches_parse_and_stops_after_the_header() {
    let good = valid_header_bytes();
    let mut input = Cursor::new([&good[..], b"rest"].concat());
    let header = Header::read_from(&mut input).unwrap();
    assert_eq!(header, Header::parse(&good).unwrap().0);
    assert_eq!(input.position(), good.len() as u64);
    let mut bad = good.clone();
    bad[CONTENT_LEN..CONTENT_LEN + 2].copy_from_slice(&1000u16.to_be_bytes());
    assert!(matches!(Header::read_from(&mut Cursor::new(bad)), Err(Error::Header(HeaderError::SecretName))));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(Header::read_from(&mut Cursor::new(bad)), Err(Error::Header(HeaderError::BadMagic))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Header::parse(&bytes);
        let _ = Header::read_from(&mut Cursor::new(&bytes));
    }

    #[test]
    fn parse_inverts_encode(
        chunk_size in MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE,
        plaintext_len in 0u64..(1 << 40),
        name in "[a-z0-9._-]{1,40}(/[a-z0-9._-]{1,40}){0,3}",
        version in 1u64..,
        salt in any::<[u8; 32]>(),
    ) {
        let header = Header {
            flags: 0,
            chunk_size,
            plaintext_len,
            salt,
            commitment: [1; DIGEST_LEN],
            secret_name: name,
            secret_version: version,
            key_commitment: [2; DIGEST_LEN],
            wrap_nonce: [3; 12],
            wrapped_key: [4; 48],
            index: None,
        };
        let bytes = header.to_bytes();
        prop_assert_eq!(bytes.len(), header.encoded_len());
        let (parsed, len) = Header::parse(&bytes).unwrap();
        prop_assert_eq!(len, bytes.len());
        prop_assert_eq!(parsed, header);
    }

    #[test]
    fn any_single_byte_change_is_refused(
        len in 0usize..3 * SMALL as usize,
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let k = key(1, 9);
        let mut file = seal(&plaintext(len), &k);
        let i = at.index(file.len());
        file[i] ^= xor;
        let (result, out) = open(&file, &k);
        prop_assert!(result.is_err());
        // A header change never yields output; a chunk change yields at most
        // the chunks before it.
        let hl = header_len(&seal(b"", &k));
        if i < hl {
            prop_assert!(out.is_empty());
        } else {
            prop_assert!(out.len() <= i - hl);
        }
    }

    #[test]
    fn random_access_agrees_with_the_plaintext(
        len in 1usize..4 * SMALL as usize,
        offsets in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..6000), 1..8),
    ) {
        let k = key(1, 9);
        let plain = plaintext(len);
        let mut reader = ModelReader::open(Cursor::new(seal(&plain, &k)), &k).unwrap();
        for (start, want) in offsets {
            let start = start.index(len);
            let mut buf = vec![0u8; want];
            let n = reader.read_at(start as u64, &mut buf).unwrap();
            prop_assert_eq!(n, want.min(len - start));
            prop_assert_eq!(&buf[..n], &plain[start..start + n]);
        }
    }
}

// ---- known-answer vectors ----

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/model/vectors.json");

struct Case {
    name: &'static str,
    chunk_size: u32,
    plaintext_len: usize,
}

const CASES: [Case; 3] = [
    Case { name: "empty", chunk_size: 4096, plaintext_len: 0 },
    Case { name: "two-and-a-bit-chunks", chunk_size: 4096, plaintext_len: 10000 },
    Case { name: "exact-chunks", chunk_size: 4096, plaintext_len: 8192 },
];

fn fixed_randomness() -> FileRandomness {
    FileRandomness { data_key: Zeroizing::new([0x22; KEY_LEN]), salt: [0x33; 32], wrap_nonce: [0x44; 12] }
}

fn kat_json() -> serde_json::Value {
    let model_key = [0x11u8; KEY_LEN];
    let k = ModelKey::new(NAME, 1, &model_key).unwrap();
    let rnd = fixed_randomness();
    let cases: Vec<serde_json::Value> = CASES
        .iter()
        .map(|c| {
            let plain = plaintext(c.plaintext_len);
            let mut out = Vec::new();
            let opts = EncryptOptions { chunk_size: c.chunk_size, threads: 1 };
            encrypt_with(&mut Cursor::new(&plain), plain.len() as u64, &mut out, &k, &opts, &rnd).unwrap();
            serde_json::json!({
                "name": c.name,
                "chunk_size": c.chunk_size,
                "plaintext": hex::encode(&plain),
                "file": hex::encode(&out),
            })
        })
        .collect();
    // The rewrap of the first case to version 2 under another key.
    let new = ModelKey::new(NAME, 2, &[0x55; KEY_LEN]).unwrap();
    let mut first = Vec::new();
    let opts = EncryptOptions { chunk_size: 4096, threads: 1 };
    encrypt_with(&mut Cursor::new(b"kbs"), 3, &mut first, &k, &opts, &rnd).unwrap();
    let (header, _) = Header::parse(&first).unwrap();
    let rewrapped = header.rewrap_with(&k, &new, [0x66; 12]).unwrap();
    serde_json::json!({
        "comment": "Encrypted model file format v1 (docs/model-format.md). Plaintext byte i is (7i + 3) mod 251. \
                    Regenerate with KBS_WRITE_MODEL_VECTORS=1 cargo test -p kbs-proto kat.",
        "secret_name": NAME,
        "secret_version": 1,
        "model_key": hex::encode(model_key),
        "data_key": hex::encode(rnd.data_key.as_ref()),
        "salt": hex::encode(rnd.salt),
        "wrap_nonce": hex::encode(rnd.wrap_nonce),
        "cases": cases,
        "rewrap": {
            "file": hex::encode(&first),
            "new_model_key": hex::encode(new.expose_bytes()),
            "new_secret_version": 2,
            "new_wrap_nonce": hex::encode([0x66u8; 12]),
            "new_header": hex::encode(rewrapped.to_bytes()),
        },
    })
}

#[test]
fn kat_vectors_match_byte_for_byte() {
    let computed = kat_json();
    if std::env::var_os("KBS_WRITE_MODEL_VECTORS").is_some() {
        std::fs::write(VECTORS, serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
    }
    let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    assert_eq!(stored, computed);
    // And the stored files decrypt to the stored plaintexts.
    let k = ModelKey::new(NAME, 1, &hex::decode(stored["model_key"].as_str().unwrap()).unwrap()).unwrap();
    for case in stored["cases"].as_array().unwrap() {
        let file = hex::decode(case["file"].as_str().unwrap()).unwrap();
        let (result, out) = open(&file, &k);
        result.unwrap();
        assert_eq!(hex::encode(out), case["plaintext"].as_str().unwrap());
    }
}

#[test]
fn kat_header_layout_is_as_documented() {
    let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    let file = hex::decode(stored["cases"][1]["file"].as_str().unwrap()).unwrap();
    assert_eq!(&file[..8], b"KBSMODEL");
    assert_eq!(&file[8..12], &[0, 1, 0, 0]);
    assert_eq!(&file[12..16], &4096u32.to_be_bytes());
    assert_eq!(&file[16..24], &10000u64.to_be_bytes());
    assert_eq!(&file[24..56], &[0x33; 32]);
    assert_eq!(&file[88..90], &(NAME.len() as u16).to_be_bytes());
    assert_eq!(&file[90..90 + NAME.len()], NAME.as_bytes());
    let v = 90 + NAME.len();
    assert_eq!(&file[v..v + 8], &1u64.to_be_bytes());
    assert_eq!(&file[v + 8 + 32..v + 8 + 32 + 12], &[0x44; 12]);
    assert_eq!(file.len(), v + 8 + 32 + 12 + 48 + 10000 + 3 * 16);
}

#[test]
fn parallel_sealing_writes_the_same_bytes_as_one_thread() {
    let k = key(1, 9);
    let plain = plaintext(7 * SMALL as usize + 99);
    let rnd = fixed_randomness();
    let seal_with = |threads| {
        let mut out = Vec::new();
        encrypt_with(&mut Cursor::new(&plain), plain.len() as u64, &mut out, &k, &options(threads), &rnd).unwrap();
        out
    };
    let one = seal_with(1);
    for threads in [2, 3, 8] {
        assert_eq!(seal_with(threads), one, "{threads} threads");
    }
}

//! The safetensors-aware layout: round trips, per-tensor reads that touch
//! only the tensor's own bytes, one test per tamper case, the strict
//! safetensors-header parser's negatives, property tests and the
//! known-answer vectors.

use std::cell::RefCell;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::rc::Rc;

use proptest::prelude::*;
use zeroize::Zeroizing;

use super::header::{BODY_ALIGN, FLAG_SAFETENSORS};
use super::safetensors::{MAX_JSON_LEN, MAX_RANK};
use super::stream::encrypt_safetensors_with;
use super::tests::open;
use super::*;

const NAME: &str = "models/demo/key";
const SMALL: u32 = MIN_CHUNK_SIZE;

fn key(version: u64, byte: u8) -> ModelKey {
    ModelKey::new(NAME, version, &[byte; KEY_LEN]).unwrap()
}

/// A safetensors file: tensors `(name, dtype, shape)` laid out in the given
/// order, each byte of data `(7i + 3) mod 251` (i over the data part); the
/// JSON is padded with spaces to a multiple of 8, as writers do.
fn safetensors_file(tensors: &[(&str, &str, &[u64])], metadata: Option<&str>) -> Vec<u8> {
    let mut entries = Vec::new();
    if let Some(m) = metadata {
        entries.push(format!("\"__metadata__\":{m}"));
    }
    let mut at = 0u64;
    for (name, dtype, shape) in tensors {
        let bits = match *dtype {
            "F4" => 4,
            "U8" | "I8" | "BOOL" => 8,
            "F16" | "BF16" => 16,
            "F32" | "I32" => 32,
            _ => 64,
        };
        let len = shape.iter().product::<u64>() * bits / 8;
        entries.push(format!(
            "{:?}:{{\"dtype\":{:?},\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            name,
            dtype,
            shape,
            at,
            at + len
        ));
        at += len;
    }
    let mut json = format!("{{{}}}", entries.join(","));
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend((0..at as usize).map(|i| u8::try_from((i * 7 + 3) % 251).unwrap()));
    out
}

/// Three tensors of several chunks each, one empty tensor, a small one.
fn model() -> Vec<u8> {
    safetensors_file(
        &[
            ("embed", "F32", &[3, 1024]),           // 12288 bytes: 3 chunks
            ("empty", "F16", &[0, 8]),              // no bytes
            ("layer.0.weight", "BF16", &[4, 2100]), // 16800 bytes: 5 chunks
            ("norm", "F32", &[5]),                  // 20 bytes: 1 chunk
            ("layer.1.weight", "BF16", &[2, 2048]), // 8192 bytes: 2 chunks
        ],
        Some(r#"{"format":"pt"}"#),
    )
}

fn seal(plain: &[u8], key: &ModelKey, threads: usize) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let opts = EncryptOptions { chunk_size: SMALL, threads };
    encrypt_safetensors(&mut Cursor::new(plain), plain.len() as u64, &mut out, key, &opts).unwrap();
    out.into_inner()
}

fn index_of(file: &[u8]) -> Header {
    Header::parse(file).unwrap().0
}

/// Where a tensor's ciphertext is in an encrypted file.
fn cipher_range(file: &[u8], name: &str) -> std::ops::Range<usize> {
    let header = index_of(file);
    let (_, body_at) = header.table_layout().unwrap();
    let (b, e) = header.tensor_index().unwrap().tensor(name).unwrap().data_offsets();
    body_at as usize + b as usize..body_at as usize + e as usize
}

#[test]
fn round_trips_and_keeps_the_index_readable() {
    let k = key(1, 9);
    let plain = model();
    for threads in [1, 3] {
        let file = seal(&plain, &k, threads);
        let header = index_of(&file);
        assert_eq!(header.flags(), FLAG_SAFETENSORS);
        assert_eq!(header.file_len(), Some(file.len() as u64));
        let index = header.tensor_index().unwrap();
        // 3 + 0 + 5 + 1 + 2 chunks: none holds bytes of two tensors.
        assert_eq!(index.chunk_count(), 11);
        let names: Vec<_> = index.tensors().iter().map(TensorInfo::name).collect();
        assert_eq!(names, ["embed", "empty", "layer.0.weight", "norm", "layer.1.weight"]);
        assert_eq!(index.metadata().get("format").map(String::as_str), Some("pt"));
        // The safetensors header is in the file verbatim, right after the key slot.
        let block = index.raw();
        assert_eq!(block, &plain[..block.len()]);
        let (result, out) = open(&file, &k);
        assert_eq!(result.unwrap(), plain.len() as u64);
        assert_eq!(out, plain, "threads {threads}");
        // The data does not appear in clear.
        let data = &plain[block.len()..];
        assert!(!file.windows(64).any(|w| w == &data[..64]));
    }
}

#[test]
fn the_body_is_aligned_and_offset_preserving() {
    let k = key(1, 9);
    let plain = model();
    let file = seal(&plain, &k, 2);
    let header = index_of(&file);
    let (tags_at, body_at) = header.table_layout().unwrap();
    assert_eq!(tags_at, header.encoded_len() as u64);
    assert_eq!(body_at % BODY_ALIGN, 0);
    assert!(body_at >= tags_at + 11 * TAG_LEN as u64 && body_at < tags_at + 11 * TAG_LEN as u64 + BODY_ALIGN);
    let block = header.tensor_index().unwrap().raw().len();
    assert_eq!(file.len() as u64, body_at + (plain.len() - block) as u64);
    // The padding is zero.
    assert!(file[(tags_at as usize + 11 * TAG_LEN)..body_at as usize].iter().all(|b| *b == 0));
    // Each tensor's ciphertext is where its data offsets say, in one piece.
    let r = cipher_range(&file, "layer.0.weight");
    assert_eq!(r.start as u64 % 2, 0);
    assert_eq!(r.len(), 16800);
}

/// A reader that records which byte ranges were read.
struct Recording {
    inner: Cursor<Vec<u8>>,
    reads: Rc<RefCell<Vec<std::ops::Range<u64>>>>,
}

impl Read for Recording {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.inner.position();
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.reads.borrow_mut().push(at..at + n as u64);
        }
        Ok(n)
    }
}

impl Seek for Recording {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

#[test]
fn a_tensor_is_read_from_its_own_chunks_only() {
    let k = key(1, 9);
    let plain = model();
    let file = seal(&plain, &k, 2);
    let header = index_of(&file);
    let (tags_at, _) = header.table_layout().unwrap();
    let block = header.tensor_index().unwrap().raw().len();
    let reads = Rc::new(RefCell::new(Vec::new()));
    let mut reader =
        ModelReader::open(Recording { inner: Cursor::new(file.clone()), reads: reads.clone() }, &k).unwrap();
    assert_eq!(reader.tensors().unwrap().len(), 5);
    for (name, first_chunk, chunks) in [("layer.0.weight", 3u64, 5u64), ("norm", 8, 1), ("embed", 0, 3)] {
        reads.borrow_mut().clear();
        let got = reader.read_tensor(name).unwrap();
        let t = header.tensor_index().unwrap().tensor(name).unwrap();
        let (b, e) = t.data_offsets();
        assert_eq!(&got[..], &plain[block + b as usize..block + e as usize], "{name}");
        let cipher = cipher_range(&file, name);
        let tags = tags_at + first_chunk * 16..tags_at + (first_chunk + chunks) * 16;
        for r in reads.borrow().iter() {
            let in_cipher = r.start >= cipher.start as u64 && r.end <= cipher.end as u64;
            let in_tags = r.start >= tags.start && r.end <= tags.end;
            assert!(in_cipher || in_tags, "{name}: read {r:?} outside {cipher:?} and {tags:?}");
        }
        let read: u64 = reads.borrow().iter().map(|r| r.end - r.start).sum();
        assert_eq!(read, t.len() + chunks * 16, "{name}");
    }
    // An empty tensor reads nothing; an unknown one is refused.
    reads.borrow_mut().clear();
    assert!(reader.read_tensor("empty").unwrap().is_empty());
    assert!(reads.borrow().is_empty());
    assert!(matches!(reader.read_tensor("nope"), Err(Error::NoSuchTensor(n)) if n == "nope"));
    let mut wrong = vec![0u8; 3];
    assert!(matches!(reader.read_tensor_into("norm", &mut wrong), Err(Error::InvalidParameter(_))));
    let mut right = vec![0u8; 20];
    reader.read_tensor_into("norm", &mut right).unwrap();
    // Plain range reads still work across the index and the tensors.
    let mut all = vec![0u8; plain.len()];
    assert_eq!(reader.read_at(0, &mut all).unwrap(), plain.len());
    assert_eq!(all, plain);
    let mut mid = vec![0u8; 5000];
    assert_eq!(reader.read_at(block as u64 + 12000, &mut mid).unwrap(), 5000);
    assert_eq!(&mid[..], &plain[block + 12000..block + 17000]);
}

#[test]
fn whole_file_layout_has_no_tensors() {
    let k = key(1, 9);
    let mut file = Vec::new();
    encrypt(&mut Cursor::new(b"abc"), 3, &mut file, &k, &EncryptOptions { chunk_size: SMALL, threads: 1 }).unwrap();
    let mut reader = ModelReader::open(Cursor::new(file), &k).unwrap();
    assert!(reader.tensors().is_none());
    assert!(matches!(reader.read_tensor("x"), Err(Error::NotSafetensors)));
}

// ---- tamper cases: each its own reason, no output ----

#[test]
fn a_header_edit_is_refused_before_any_output() {
    let k = key(1, 9);
    let file = seal(&model(), &k, 2);
    // The salt, the commitment and the wrapped key.
    for at in [30, 60, CONTENT_LEN + INDEX_EXT_LEN + 2 + NAME.len() + 8 + 32 + 12 + 3] {
        let mut bad = file.clone();
        bad[at] ^= 1;
        let (result, out) = open(&bad, &k);
        assert!(matches!(result, Err(Error::HeaderAuthentication)), "{at}: {result:?}");
        assert!(out.is_empty());
        assert!(matches!(ModelReader::open(Cursor::new(bad), &k), Err(Error::HeaderAuthentication)));
    }
    // The digest of the index: it no longer names the index.
    let mut bad = file.clone();
    bad[CONTENT_LEN + 8] ^= 1;
    assert!(matches!(open(&bad, &k), (Err(Error::Header(HeaderError::IndexDigest)), out) if out.is_empty()));
}

#[test]
fn a_tensor_table_edit_is_refused_before_any_output() {
    let k = key(1, 9);
    let file = seal(&model(), &k, 2);
    let block_at = index_of(&file).encoded_len() - index_of(&file).tensor_index().unwrap().raw().len();
    // Still a valid index (a tensor renamed), or not JSON at all.
    let at = file[block_at + 8..].windows(6).position(|w| w == b"\"norm\"").unwrap();
    for (offset, byte) in [(at + 1, b'N'), (0, b' ')] {
        let mut bad = file.clone();
        bad[block_at + 8 + offset] = byte;
        let (result, out) = open(&bad, &k);
        assert!(matches!(result, Err(Error::Header(HeaderError::IndexDigest))), "{result:?}");
        assert!(out.is_empty());
        assert!(matches!(inspect_only(&bad), Err(HeaderError::IndexDigest)));
    }
    // Both the index and its digest changed: the header no longer opens.
    let mut edited = model();
    let pos = edited.windows(6).position(|w| w == b"\"norm\"").unwrap();
    edited[pos + 1] = b'N';
    let other = seal(&edited, &k, 2);
    let mut spliced = file[..CONTENT_LEN].to_vec();
    spliced.extend_from_slice(&other[CONTENT_LEN..CONTENT_LEN + INDEX_EXT_LEN]);
    spliced.extend_from_slice(&file[CONTENT_LEN + INDEX_EXT_LEN..block_at]);
    spliced.extend_from_slice(&other[block_at..]);
    let (result, out) = open(&spliced, &k);
    assert!(matches!(result, Err(Error::HeaderAuthentication)), "{result:?}");
    assert!(out.is_empty());
}

fn inspect_only(file: &[u8]) -> Result<Header, HeaderError> {
    Header::parse(file).map(|(h, _)| h)
}

#[test]
fn a_chunk_swapped_between_tensors_is_refused() {
    let k = key(1, 9);
    let plain = model();
    let file = seal(&plain, &k, 2);
    let header = index_of(&file);
    let (tags_at, _) = header.table_layout().unwrap();
    // Chunk 0 of layer.1.weight (chunk 9) and chunk 0 of embed (chunk 0):
    // both 4096 bytes. Swap the ciphertext and the tags.
    let a = cipher_range(&file, "embed").start;
    let b = cipher_range(&file, "layer.1.weight").start;
    let mut bad = file.clone();
    let n = SMALL as usize;
    let (ca, cb) = (file[a..a + n].to_vec(), file[b..b + n].to_vec());
    bad[a..a + n].copy_from_slice(&cb);
    bad[b..b + n].copy_from_slice(&ca);
    let (ta, tb) = (tags_at as usize, tags_at as usize + 9 * 16);
    let (ga, gb) = (file[ta..ta + 16].to_vec(), file[tb..tb + 16].to_vec());
    bad[ta..ta + 16].copy_from_slice(&gb);
    bad[tb..tb + 16].copy_from_slice(&ga);
    let (result, out) = open(&bad, &k);
    assert!(
        matches!(&result, Err(Error::TensorChunkAuthentication { tensor, index: 0 }) if tensor == "embed"),
        "{result:?}"
    );
    // The streaming decryptor released only the authenticated index.
    assert_eq!(out, header.tensor_index().unwrap().raw());
    let mut reader = ModelReader::open(Cursor::new(bad.clone()), &k).unwrap();
    let err = reader.read_tensor("layer.1.weight").unwrap_err();
    assert!(matches!(&err, Error::TensorChunkAuthentication { tensor, index: 9 } if tensor == "layer.1.weight"));
    // Tensors whose chunks were not touched still read.
    assert_eq!(reader.read_tensor("norm").unwrap().len(), 20);
    // A tensor's own chunks reordered (tags moved with them).
    let c = cipher_range(&file, "layer.0.weight").start;
    let mut bad = file.clone();
    bad[c..c + n].copy_from_slice(&file[c + n..c + 2 * n]);
    bad[c + n..c + 2 * n].copy_from_slice(&file[c..c + n]);
    let t3 = tags_at as usize + 3 * 16;
    bad[t3..t3 + 16].copy_from_slice(&file[t3 + 16..t3 + 32]);
    bad[t3 + 16..t3 + 32].copy_from_slice(&file[t3..t3 + 16]);
    let err = ModelReader::open(Cursor::new(bad), &k).unwrap().read_tensor("layer.0.weight").unwrap_err();
    assert!(matches!(&err, Error::TensorChunkAuthentication { tensor, index: 3 } if tensor == "layer.0.weight"));
}

#[test]
fn tags_padding_truncation_and_trailing_data_are_checked() {
    let k = key(1, 9);
    let file = seal(&model(), &k, 2);
    let header = index_of(&file);
    let (tags_at, body_at) = header.table_layout().unwrap();
    // A tag of the last tensor's last chunk.
    let mut bad = file.clone();
    bad[tags_at as usize + 10 * 16 + 5] ^= 1;
    assert!(matches!(open(&bad, &k).0, Err(Error::TensorChunkAuthentication { index: 10, .. })));
    // Non-zero padding.
    let mut bad = file.clone();
    bad[body_at as usize - 1] = 1;
    assert!(matches!(open(&bad, &k), (Err(Error::Padding), out) if out.is_empty()));
    assert!(matches!(ModelReader::open(Cursor::new(bad), &k), Err(Error::Padding)));
    // Cut anywhere after the header, or one byte more.
    let full = file.len() as u64;
    for cut in [file.len() - 1, body_at as usize + 100, tags_at as usize + 3] {
        let (result, _) = open(&file[..cut], &k);
        assert!(matches!(result, Err(Error::Truncated { expected, .. }) if expected == full), "{cut}: {result:?}");
        let err = ModelReader::open(Cursor::new(file[..cut].to_vec()), &k).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }));
    }
    let longer = [&file[..], b"x"].concat();
    assert!(matches!(open(&longer, &k).0, Err(Error::TrailingData)));
    assert!(matches!(ModelReader::open(Cursor::new(longer), &k), Err(Error::TrailingData)));
    // Into the index: a header-level refusal.
    assert!(matches!(open(&file[..tags_at as usize - 1], &k).0, Err(Error::Header(HeaderError::Truncated))));
}

#[test]
fn wrong_key_and_rewrap() {
    let k = key(1, 9);
    let plain = model();
    let file = seal(&plain, &k, 2);
    assert!(matches!(open(&file, &key(1, 10)), (Err(Error::WrongKey), out) if out.is_empty()));
    let (header, hl) = Header::parse(&file).unwrap();
    let new = key(2, 77);
    let rewrapped = header.rewrap(&k, &new).unwrap();
    assert_eq!(rewrapped.encoded_len(), hl);
    let moved = [&rewrapped.to_bytes()[..], &file[hl..]].concat();
    let (result, out) = open(&moved, &new);
    assert_eq!(result.unwrap(), plain.len() as u64);
    assert_eq!(out, plain);
}

#[test]
fn a_data_free_file_is_one_empty_chunk() {
    let k = key(1, 9);
    for plain in [safetensors_file(&[], None), safetensors_file(&[("e", "F32", &[0])], Some("{}"))] {
        let file = seal(&plain, &k, 1);
        assert_eq!(index_of(&file).chunk_count(), 1);
        let (result, out) = open(&file, &k);
        assert_eq!(result.unwrap(), plain.len() as u64);
        assert_eq!(out, plain);
    }
}

#[test]
fn encrypting_refuses_what_is_not_safetensors() {
    let k = key(1, 9);
    let opts = EncryptOptions { chunk_size: SMALL, threads: 1 };
    let run = |plain: &[u8], len: u64| {
        encrypt_safetensors(&mut Cursor::new(plain), len, &mut Cursor::new(Vec::new()), &k, &opts).unwrap_err()
    };
    let st =
        |e: SafetensorsError| move |err: &Error| matches!(err, Error::Header(HeaderError::Safetensors(x)) if *x == e);
    assert!(st(SafetensorsError::Truncated)(&run(b"abc", 3)));
    assert!(st(SafetensorsError::HeaderLength(0))(&run(&[0; 16], 16)));
    let plain = model();
    // One data byte missing: the tensors do not cover the data.
    let short = &plain[..plain.len() - 1];
    assert!(matches!(
        run(short, short.len() as u64),
        Error::Header(HeaderError::Safetensors(SafetensorsError::DataLength { .. }))
    ));
    // The announced length is wrong.
    assert!(matches!(run(&plain, plain.len() as u64 + 1), Error::Header(_)));
    let mut more = plain.clone();
    more.push(0);
    assert!(matches!(run(&more, plain.len() as u64), Error::InputLength { .. }));
}

// ---- the safetensors-header parser ----

fn block(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

fn parse(json: &str, data_len: u64) -> Result<TensorIndex, SafetensorsError> {
    TensorIndex::parse(&block(json), data_len, SMALL)
}

#[test]
fn parser_accepts_a_valid_header_and_orders_by_offset() {
    let idx = parse(
        r#"{"b":{"dtype":"F16","shape":[2],"data_offsets":[4,8]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"__metadata__":{"k":"v"}}   "#,
        8,
    )
    .unwrap();
    let names: Vec<_> = idx.tensors().iter().map(|t| (t.name(), t.dtype(), t.shape().to_vec())).collect();
    assert_eq!(names, [("a", Dtype::U8, vec![4]), ("b", Dtype::F16, vec![2])]);
    assert_eq!(idx.data_len(), 8);
    // Sub-byte types in whole bytes, scalars, zero-size tensors.
    parse(r#"{"q":{"dtype":"F4","shape":[3,2],"data_offsets":[0,3]},"s":{"dtype":"F64","shape":[],"data_offsets":[3,11]}}"#, 11)
        .unwrap();
    parse(r#"{"z":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]}}"#, 0).unwrap();
    parse("{}", 0).unwrap();
}

#[test]
fn parser_refuses_each_malformation() {
    use SafetensorsError as E;
    let t = |name: &str| name.to_owned();
    let one = |dtype: &str, shape: &str, offsets: &str| {
        format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}}}"#)
    };
    let cases: Vec<(String, u64, E)> = vec![
        (one("F32", "[2]", "[0,8]") + "x", 8, E::Json(42)),
        (" {}".into(), 0, E::Json(0)),
        ("[]".into(), 0, E::Json(0)),
        ("{\"w\":1}".into(), 0, E::Json(6)),
        (r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}}"#.into(), 8, E::Json(57)),
        (one("F33", "[2]", "[0,8]"), 8, E::Dtype(t("w"))),
        (one("F32", "[2]", "[8,0]"), 8, E::Offsets(t("w"))),
        (one("F32", "[3]", "[0,8]"), 8, E::Size(t("w"))),
        (one("F4", "[3]", "[0,1]"), 1, E::Size(t("w"))),
        (one("F32", "[4294967296,4294967296]", "[0,8]"), 8, E::Size(t("w"))),
        (one("F32", "[-1]", "[0,8]"), 8, E::Json(36)),
        (one("F32", "[2.0]", "[0,8]"), 8, E::Json(36)),
        (one("F32", "[2]", "[0,8,9]"), 8, E::Json(62)),
        (one("F32", "[2]", "[0,8]"), 9, E::DataLength { covered: 8, data: 9 }),
        (one("F32", "[2]", "[1,9]"), 9, E::Layout(t("w"))),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#
                .into(),
            6,
            E::Layout(t("b")),
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[5,9]}}"#
                .into(),
            9,
            E::Layout(t("b")),
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#
                .into(),
            8,
            E::Duplicate(t("a")),
        ),
        (r#"{"__metadata__":{"k":"v","k":"w"}}"#.into(), 0, E::Duplicate(t("k"))),
        (r#"{"__metadata__":{},"__metadata__":{}}"#.into(), 0, E::Duplicate(t("__metadata__"))),
        (r#"{"__metadata__":{"k":1}}"#.into(), 0, E::Json(22)),
        (r#"{"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#.into(), 0, E::Name),
        (r#"{"a\u001b[31m":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#.into(), 0, E::Name),
        (format!(r#"{{"{}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}}}"#, "n".repeat(1025)), 0, E::Name),
        (one("U8", &format!("[{}]", vec!["1"; MAX_RANK + 1].join(",")), "[0,1]"), 1, E::Rank(t("w"))),
        (one("U8", "[1]", "[0,1]").replace("\"shape\"", "\"shape\":[1],\"shape2\""), 1, E::Json(37)),
        (one("U8", "[1]", "[0,1]").replace(",\"data_offsets\":[0,1]", ""), 1, E::Json(32)),
    ];
    for (json, data_len, want) in cases {
        let got = parse(&json, data_len);
        match (&got, &want) {
            // Offsets of JSON syntax errors are serde's; only the kind is pinned.
            (Err(E::Json(_)), E::Json(_)) => {}
            _ => assert_eq!(got.as_ref().map(|_| ()), Err(&want), "{json}"),
        }
    }
    // The length prefix.
    assert_eq!(TensorIndex::parse(&[1, 0, 0, 0, 0, 0, 0, 0, b'{'], 0, SMALL).unwrap_err(), E::HeaderLength(1));
    let huge = (MAX_JSON_LEN + 1).to_le_bytes();
    assert_eq!(TensorIndex::parse(&huge, 0, SMALL).unwrap_err(), E::HeaderLength(MAX_JSON_LEN + 1));
    assert_eq!(TensorIndex::parse(&block("{}")[..9], 0, SMALL).unwrap_err(), E::Truncated);
    assert_eq!(TensorIndex::parse(&[2, 0, 0], 0, SMALL).unwrap_err(), E::Truncated);
    let mut long = block("{}");
    long.push(b' ');
    assert_eq!(TensorIndex::parse(&long, 0, SMALL).unwrap_err(), E::HeaderLength(2));
    // Trailing bytes other than spaces; invalid UTF-8.
    assert!(matches!(parse("{}\n", 0), Err(E::Json(2))));
    assert!(matches!(parse("{}  x", 0), Err(E::Json(4))));
    let mut bad_utf8 = block(r#"{"\xff":1}"#);
    bad_utf8[10] = 0xff;
    assert!(matches!(TensorIndex::parse(&bad_utf8, 0, SMALL), Err(E::Json(_))));
}

#[test]
fn header_parser_checks_the_index_fields() {
    let file = seal(&model(), &key(1, 9), 1);
    let set = |at: usize, bytes: &[u8]| {
        let mut b = file.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        Header::parse(&b).map(|_| ())
    };
    assert!(set(0, b"K").is_ok());
    // Index length below, above the cap, or past the plaintext.
    assert_eq!(set(CONTENT_LEN, &9u64.to_be_bytes()), Err(SafetensorsError::HeaderLength(1).into()));
    let over = 8 + MAX_JSON_LEN + 1;
    assert_eq!(set(CONTENT_LEN, &over.to_be_bytes()), Err(SafetensorsError::HeaderLength(over - 8).into()));
    assert!(matches!(
        set(16, &10u64.to_be_bytes()),
        Err(HeaderError::Safetensors(SafetensorsError::DataLength { .. }))
    ));
    // A plaintext length that no longer matches the tensors: refused
    // before any key is used.
    let plain_len = model().len() as u64;
    assert!(matches!(
        set(16, &(plain_len + 1).to_be_bytes()),
        Err(HeaderError::Safetensors(SafetensorsError::DataLength { .. }))
    ));
    // read_from agrees, cut anywhere.
    let (header, hl) = Header::parse(&file).unwrap();
    let mut cursor = Cursor::new(&file);
    assert_eq!(Header::read_from(&mut cursor).unwrap(), header);
    assert_eq!(cursor.position(), hl as u64);
    for cut in (0..hl).step_by(7) {
        assert_eq!(Header::parse(&file[..cut]).map(|_| ()), Err(HeaderError::Truncated), "cut {cut}");
        assert!(matches!(
            Header::read_from(&mut Cursor::new(&file[..cut])),
            Err(Error::Header(HeaderError::Truncated))
        ));
    }
}

fn tensor_set() -> impl Strategy<Value = Vec<(String, &'static str, Vec<u64>)>> {
    let dtype = prop::sample::select(vec!["U8", "F16", "BF16", "F32", "I32", "F64", "BOOL", "F4"]);
    let shape = prop::collection::vec(0u64..70, 0..3);
    prop::collection::btree_map("[a-z][a-z0-9._]{0,12}", (dtype, shape), 0..7).prop_map(|m| {
        m.into_iter()
            .map(|(name, (dtype, mut shape))| {
                // F4 needs an even element count.
                if dtype == "F4" {
                    shape.push(2);
                }
                (name, dtype, shape)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_model_round_trips_and_reads_per_tensor(tensors in tensor_set(), threads in 1usize..4) {
        let refs: Vec<(&str, &str, &[u64])> = tensors.iter().map(|(n, d, s)| (n.as_str(), *d, s.as_slice())).collect();
        let plain = safetensors_file(&refs, None);
        let k = key(1, 9);
        let file = seal(&plain, &k, threads);
        let (result, out) = open(&file, &k);
        prop_assert_eq!(result.unwrap(), plain.len() as u64);
        prop_assert_eq!(&out, &plain);
        let header = index_of(&file);
        let index = header.tensor_index().unwrap();
        let block = index.raw().len();
        let mut reader = ModelReader::open(Cursor::new(file.clone()), &k).unwrap();
        for t in index.tensors() {
            let (b, e) = t.data_offsets();
            let got = reader.read_tensor(t.name()).unwrap();
            prop_assert_eq!(&got[..], &plain[block + b as usize..block + e as usize]);
        }
    }

    #[test]
    fn the_index_parser_never_panics_and_accepts_only_tilings(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        data_len in 0u64..5000,
    ) {
        if let Ok(index) = TensorIndex::parse(&bytes, data_len, SMALL) {
            let mut at = 0;
            for t in index.tensors() {
                prop_assert_eq!(t.data_offsets().0, at);
                at = t.data_offsets().1;
            }
            prop_assert_eq!(at, data_len);
        }
    }

    #[test]
    fn mutated_valid_headers_never_panic(
        tensors in tensor_set(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let refs: Vec<(&str, &str, &[u64])> = tensors.iter().map(|(n, d, s)| (n.as_str(), *d, s.as_slice())).collect();
        let plain = safetensors_file(&refs, Some(r#"{"a":"b"}"#));
        let n = usize::try_from(u64::from_le_bytes(plain[..8].try_into().unwrap())).unwrap();
        let mut block = plain[..8 + n].to_vec();
        for (at, byte) in edits {
            let i = at.index(block.len() - 8) + 8;
            block[i] = byte;
        }
        let data_len = (plain.len() - 8 - n) as u64;
        if let Ok(index) = TensorIndex::parse(&block, data_len, SMALL) {
            let total: u64 = index.tensors().iter().map(TensorInfo::len).sum();
            prop_assert_eq!(total, data_len);
        }
    }

    #[test]
    fn any_single_byte_change_is_refused(at in any::<prop::sample::Index>(), xor in 1u8..) {
        let k = key(1, 9);
        let plain = safetensors_file(&[("a", "F32", &[1500]), ("b", "U8", &[10])], None);
        let mut file = seal(&plain, &k, 1);
        let i = at.index(file.len());
        file[i] ^= xor;
        let (result, out) = open(&file, &k);
        prop_assert!(result.is_err());
        // Nothing beyond the index and the chunks before the changed byte.
        let header_end = index_of(&seal(&plain, &k, 1)).encoded_len();
        if i < header_end {
            prop_assert!(out.is_empty());
        } else {
            prop_assert!(out.len() < plain.len());
        }
    }
}

// ---- known-answer vectors ----

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/model/safetensors-vectors.json");

fn kat_plain() -> Vec<u8> {
    safetensors_file(
        &[("a", "F32", &[2, 1000]), ("b", "U8", &[5]), ("c", "F16", &[0]), ("d", "BF16", &[2050])],
        Some(r#"{"format":"pt"}"#),
    )
}

fn kat_json() -> serde_json::Value {
    let model_key = [0x11u8; KEY_LEN];
    let k = ModelKey::new(NAME, 1, &model_key).unwrap();
    let rnd = FileRandomness { data_key: Zeroizing::new([0x22; KEY_LEN]), salt: [0x33; 32], wrap_nonce: [0x44; 12] };
    let plain = kat_plain();
    let mut out = Cursor::new(Vec::new());
    let opts = EncryptOptions { chunk_size: 4096, threads: 1 };
    encrypt_safetensors_with(&mut Cursor::new(&plain), plain.len() as u64, &mut out, &k, &opts, &rnd).unwrap();
    let file = out.into_inner();
    let header = index_of(&file);
    let (tags_at, body_at) = header.table_layout().unwrap();
    serde_json::json!({
        "comment": "Encrypted model file format v1, safetensors-aware layout (flag 1; docs/model-format.md). \
                    Data byte i is (7i + 3) mod 251. Regenerate with \
                    KBS_WRITE_MODEL_VECTORS=1 cargo test -p kbs-proto kat.",
        "secret_name": NAME,
        "secret_version": 1,
        "model_key": hex::encode(model_key),
        "data_key": hex::encode(rnd.data_key.as_ref()),
        "salt": hex::encode(rnd.salt),
        "wrap_nonce": hex::encode(rnd.wrap_nonce),
        "chunk_size": 4096,
        "plaintext": hex::encode(&plain),
        "tags_offset": tags_at,
        "body_offset": body_at,
        "chunks": header.chunk_count(),
        "file": hex::encode(&file),
    })
}

#[test]
fn kat_safetensors_vectors_match_byte_for_byte() {
    let computed = kat_json();
    if std::env::var_os("KBS_WRITE_MODEL_VECTORS").is_some() {
        std::fs::write(VECTORS, serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
    }
    let stored: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    assert_eq!(stored, computed);
    let k = ModelKey::new(NAME, 1, &[0x11; KEY_LEN]).unwrap();
    let file = hex::decode(stored["file"].as_str().unwrap()).unwrap();
    let (result, out) = open(&file, &k);
    result.unwrap();
    assert_eq!(hex::encode(out), stored["plaintext"].as_str().unwrap());
    // The layout as documented: 2 + 1 + 0 + 2 chunks; the body at 4096.
    assert_eq!(stored["chunks"], 5);
    assert_eq!(stored["body_offset"], 4096);
    assert_eq!(&file[10..12], &[0, 1]);
    let block_len = u64::from_be_bytes(file[88..96].try_into().unwrap()) as usize;
    use sha2::Digest;
    assert_eq!(&file[96..128], sha2::Sha256::digest(&kat_plain()[..block_len]).as_slice());
}

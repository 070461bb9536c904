//! The safetensors header (the "tensor index" of the safetensors-aware
//! layout): a strict parser of untrusted bytes, and the chunk layout that
//! follows from it.
//!
//! A safetensors file is `u64le(N) || JSON (N bytes) || data`. The JSON
//! maps tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}`
//! (offsets relative to the start of `data`) and may hold one
//! `"__metadata__"` object of string values. This parser accepts only
//! headers a loader can trust blindly once they are authenticated:
//!
//! 1. `N` is at least 2 and at most [`MAX_JSON_LEN`], and the block is
//!    present in full;
//! 2. the JSON is UTF-8, starts with `{`, is one object, and is followed by
//!    nothing but spaces (writers pad with spaces to align the data);
//! 3. no key appears twice; `__metadata__`, if present, maps strings to
//!    strings;
//! 4. each tensor has exactly `dtype` (a known safetensors type), `shape`
//!    (at most [`MAX_RANK`] non-negative integers) and `data_offsets` (two
//!    non-negative integers, `begin <= end`), and a name of 1 to
//!    [`MAX_NAME_LEN`] bytes without control characters; at most
//!    [`MAX_TENSORS`] tensors;
//! 5. `end - begin` equals the element count times the type's size (in
//!    bits, a whole number of bytes), computed without overflow;
//! 6. ordered by `(begin, end, name)`, the tensors tile the data exactly:
//!    the first begins at 0, each begins where the previous ended, the last
//!    ends at the data length (no hole, no overlap, nothing after).
//!
//! Chunks (see `docs/model-format.md`): each tensor with bytes is cut into
//! pieces of at most `chunk_size` bytes, starting at its first byte, so no
//! chunk holds bytes of two tensors and any tensor decrypts alone.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Length of the little-endian JSON length at the start of the file.
pub const LEN_PREFIX: usize = 8;
/// Largest JSON header accepted (16 MiB).
pub const MAX_JSON_LEN: u64 = 16 * 1024 * 1024;
/// Most tensors in one file.
pub const MAX_TENSORS: usize = 1 << 18;
/// Longest tensor name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Most dimensions of one tensor.
pub const MAX_RANK: usize = 32;
/// Most entries in `__metadata__`.
pub const MAX_METADATA: usize = 1024;
/// The key of the free-form metadata object.
pub const METADATA_KEY: &str = "__metadata__";

/// Why a safetensors header was refused. Each check has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetensorsError {
    /// The file ends inside the length prefix or the JSON.
    #[error("the safetensors header is truncated")]
    Truncated,
    /// `N` is below 2 or above the cap.
    #[error("safetensors header length {0} outside 2..={MAX_JSON_LEN}")]
    HeaderLength(u64),
    /// The header is not one UTF-8 JSON object followed only by spaces.
    #[error("the safetensors header is not a JSON object (at byte {0})")]
    Json(u64),
    /// A key appears twice.
    #[error("tensor {0:?} appears twice")]
    Duplicate(String),
    /// A tensor name is empty, too long or has a control character.
    #[error("invalid tensor name")]
    Name,
    /// Too many tensors or metadata entries.
    #[error("more than {MAX_TENSORS} tensors or {MAX_METADATA} metadata entries")]
    TooMany,
    /// A dtype this parser does not know.
    #[error("tensor {0:?}: unknown dtype")]
    Dtype(String),
    /// More than [`MAX_RANK`] dimensions.
    #[error("tensor {0:?}: more than {MAX_RANK} dimensions")]
    Rank(String),
    /// `begin > end`.
    #[error("tensor {0:?}: data_offsets begin after they end")]
    Offsets(String),
    /// The byte length does not match dtype and shape (or overflows).
    #[error("tensor {0:?}: data_offsets length does not match dtype and shape")]
    Size(String),
    /// The tensors leave a hole, overlap, or do not end at the data length.
    #[error("tensor {0:?}: data_offsets overlap, leave a hole or run past the data")]
    Layout(String),
    /// The data after the header is not as long as the tensors need.
    #[error("the tensors cover {covered} data bytes, the file has {data}")]
    DataLength {
        /// Bytes the tensors cover.
        covered: u64,
        /// Bytes after the header.
        data: u64,
    },
}

/// A safetensors element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Boolean, one byte.
    Bool,
    /// 4-bit float (E2M1).
    F4,
    /// 6-bit float (E2M3).
    F6E2M3,
    /// 6-bit float (E3M2).
    F6E3M2,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float (E5M2).
    F8E5M2,
    /// 8-bit float (E4M3).
    F8E4M3,
    /// 8-bit exponent-only scale (E8M0).
    F8E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single.
    F32,
    /// Complex of two singles.
    C64,
    /// IEEE double.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    const ALL: [Dtype; 20] = [
        Dtype::Bool,
        Dtype::F4,
        Dtype::F6E2M3,
        Dtype::F6E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::F8E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bits per element.
    pub fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6E2M3 | Dtype::F6E3M2 => 6,
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F8E8M0 => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }

    fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor of the index, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    begin: u64,
    end: u64,
    /// Index of its first chunk (the next tensor's, if it has no bytes).
    first_chunk: u64,
}

impl TensorInfo {
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.begin == self.end
    }

    /// `[begin, end)` within the data (after the header block).
    pub fn data_offsets(&self) -> (u64, u64) {
        (self.begin, self.end)
    }

    /// Index of its first chunk.
    pub(crate) fn first_chunk(&self) -> u64 {
        self.first_chunk
    }
}

/// A checked safetensors header: the raw block (kept verbatim, it is part
/// of the plaintext), the tensors ordered by offset, and the metadata.
#[derive(Clone, PartialEq, Eq)]
pub struct TensorIndex {
    raw: Vec<u8>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
    metadata: BTreeMap<String, String>,
    data_len: u64,
    chunk_size: u32,
    chunk_count: u64,
}

impl fmt::Debug for TensorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorIndex")
            .field("block_len", &self.raw.len())
            .field("tensors", &self.tensors.len())
            .field("data_len", &self.data_len)
            .finish_non_exhaustive()
    }
}

/// The length `N` from the first eight bytes of a safetensors file,
/// checked against the cap.
pub fn json_len(prefix: [u8; LEN_PREFIX]) -> Result<u64, SafetensorsError> {
    let n = u64::from_le_bytes(prefix);
    if !(2..=MAX_JSON_LEN).contains(&n) {
        return Err(SafetensorsError::HeaderLength(n));
    }
    Ok(n)
}

impl TensorIndex {
    /// Parses the header block `block` (`u64le(N) || JSON`, exactly
    /// `8 + N` bytes) of a file whose data part is `data_len` bytes, and
    /// lays out chunks of at most `chunk_size` bytes (at least 1).
    pub fn parse(block: &[u8], data_len: u64, chunk_size: u32) -> Result<TensorIndex, SafetensorsError> {
        let (prefix, json) = block.split_at_checked(LEN_PREFIX).ok_or(SafetensorsError::Truncated)?;
        let prefix = <[u8; LEN_PREFIX]>::try_from(prefix).map_err(|_| SafetensorsError::Truncated)?;
        let n = json_len(prefix)?;
        if (json.len() as u64) < n {
            return Err(SafetensorsError::Truncated);
        }
        if json.len() as u64 != n {
            return Err(SafetensorsError::HeaderLength(n));
        }
        if json.first() != Some(&b'{') {
            return Err(SafetensorsError::Json(0));
        }
        let mut stream = serde_json::Deserializer::from_slice(json).into_iter::<RawHeader>();
        let raw = match stream.next() {
            Some(Ok(raw)) => raw,
            Some(Err(e)) => return Err(classify(&e, json)),
            None => return Err(SafetensorsError::Json(0)),
        };
        let end = stream.byte_offset();
        if let Some(bad) = json.get(end..).unwrap_or_default().iter().position(|b| *b != b' ') {
            return Err(SafetensorsError::Json((end + bad) as u64));
        }
        let RawParts { mut tensors, metadata } = raw.0?;
        tensors.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
        let chunk = u64::from(chunk_size.max(1));
        let mut at = 0u64;
        let mut next_chunk = 0u64;
        for t in &mut tensors {
            if t.begin != at {
                return Err(SafetensorsError::Layout(t.name.clone()));
            }
            at = t.end;
            t.first_chunk = next_chunk;
            next_chunk = next_chunk.saturating_add(t.len().div_ceil(chunk));
        }
        if at != data_len {
            return Err(SafetensorsError::DataLength { covered: at, data: data_len });
        }
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(TensorIndex {
            raw: block.to_vec(),
            tensors,
            by_name,
            metadata,
            data_len,
            chunk_size: chunk_size.max(1),
            chunk_count: next_chunk.max(1),
        })
    }

    /// The header block, verbatim (`u64le(N) || JSON`).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The tensors, ordered by their offsets.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|i| self.tensors.get(*i))
    }

    /// The `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Length of the data part.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Number of chunks (at least 1: an empty data part is one empty chunk).
    pub fn chunk_count(&self) -> u64 {
        self.chunk_count
    }

    /// The chunks in order: `(data offset, length)`.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let chunk = u64::from(self.chunk_size);
        let empty = (self.data_len == 0).then_some((0u64, 0u64));
        self.tensors
            .iter()
            .flat_map(move |t| {
                (0..t.len().div_ceil(chunk)).map(move |j| {
                    let start = t.begin + j * chunk;
                    (start, chunk.min(t.end - start))
                })
            })
            .chain(empty)
    }

    /// The chunk holding data byte `at` (`at < data_len`): its index, data
    /// offset and length.
    pub(crate) fn chunk_at(&self, at: u64) -> Option<(u64, u64, u64)> {
        let i = self.tensors.partition_point(|t| t.end <= at);
        let t = self.tensors.get(i)?;
        let chunk = u64::from(self.chunk_size);
        let j = at.checked_sub(t.begin)? / chunk;
        let start = t.begin + j * chunk;
        Some((t.first_chunk + j, start, chunk.min(t.end - start)))
    }

    /// The tensor a chunk belongs to.
    pub(crate) fn tensor_of_chunk(&self, index: u64) -> Option<&TensorInfo> {
        // First chunks never decrease along the tensors: the owner is the
        // last tensor with bytes whose first chunk is at or before `index`.
        let i = self.tensors.partition_point(|t| t.first_chunk <= index);
        self.tensors.get(..i)?.iter().rev().find(|t| !t.is_empty())
    }
}

/// What the JSON decodes to before the layout checks: the tensors (in any
/// order) and the metadata, or the first check that failed inside.
struct RawHeader(Result<RawParts, SafetensorsError>);

struct RawParts {
    tensors: Vec<TensorInfo>,
    metadata: BTreeMap<String, String>,
}

/// Maps a serde error to the byte offset it happened at.
fn classify(e: &serde_json::Error, json: &[u8]) -> SafetensorsError {
    // Line and column (1-based, column in bytes) back to an offset.
    let mut offset = 0usize;
    for _ in 1..e.line() {
        match json.get(offset..).and_then(|rest| rest.iter().position(|b| *b == b'\n')) {
            Some(p) => offset += p + 1,
            None => break,
        }
    }
    SafetensorsError::Json((offset + e.column().saturating_sub(1)) as u64)
}

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(HeaderVisitor)
    }
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a safetensors header object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut tensors: Vec<TensorInfo> = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        let mut metadata: Option<BTreeMap<String, String>> = None;
        // After the first failed check the rest of the object is skipped
        // (read without being kept), so the error reported is that check's.
        let mut failed: Option<SafetensorsError> = None;
        while let Some(key) = map.next_key::<String>()? {
            if failed.is_some() {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            if !names.insert(key.clone()) {
                failed = Some(SafetensorsError::Duplicate(key));
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            if key == METADATA_KEY {
                let Metadata(m) = map.next_value()?;
                match m {
                    Ok(m) => metadata = Some(m),
                    Err(e) => failed = Some(e),
                }
                continue;
            }
            if key.is_empty() || key.len() > MAX_NAME_LEN || key.chars().any(char::is_control) {
                failed = Some(SafetensorsError::Name);
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            if tensors.len() >= MAX_TENSORS {
                failed = Some(SafetensorsError::TooMany);
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            let entry: RawTensor = map.next_value()?;
            match entry.check(key) {
                Ok(t) => tensors.push(t),
                Err(e) => failed = Some(e),
            }
        }
        Ok(RawHeader(match failed {
            Some(e) => Err(e),
            None => Ok(RawParts { tensors, metadata: metadata.unwrap_or_default() }),
        }))
    }
}

/// `__metadata__`: string keys (unique) to string values.
struct Metadata(Result<BTreeMap<String, String>, SafetensorsError>);

impl<'de> serde::Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut out = BTreeMap::new();
                let mut failed = None;
                while let Some(k) = map.next_key::<String>()? {
                    if failed.is_some() {
                        map.next_value::<de::IgnoredAny>()?;
                    } else if out.len() >= MAX_METADATA {
                        failed = Some(SafetensorsError::TooMany);
                        map.next_value::<de::IgnoredAny>()?;
                    } else {
                        match out.entry(k) {
                            std::collections::btree_map::Entry::Occupied(e) => {
                                failed = Some(SafetensorsError::Duplicate(e.key().clone()));
                                map.next_value::<de::IgnoredAny>()?;
                            }
                            std::collections::btree_map::Entry::Vacant(e) => {
                                e.insert(map.next_value::<String>()?);
                            }
                        }
                    }
                }
                Ok(Metadata(failed.map_or(Ok(out), Err)))
            }
        }
        d.deserialize_map(V)
    }
}

/// One tensor entry as written, before its checks.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Shape,
    data_offsets: (u64, u64),
}

/// A shape, read without allocating more than [`MAX_RANK`] + 1 entries.
struct Shape(Vec<u64>);

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of dimensions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                // Keeps one entry past the cap, so the check can refuse it.
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element::<u64>()? {
                    if dims.len() <= MAX_RANK {
                        dims.push(d);
                    }
                }
                Ok(Shape(dims))
            }
        }
        d.deserialize_seq(V)
    }
}

impl RawTensor {
    fn check(self, name: String) -> Result<TensorInfo, SafetensorsError> {
        let dtype = Dtype::parse(&self.dtype).ok_or_else(|| SafetensorsError::Dtype(name.clone()))?;
        if self.shape.0.len() > MAX_RANK {
            return Err(SafetensorsError::Rank(name));
        }
        let (begin, end) = self.data_offsets;
        if begin > end {
            return Err(SafetensorsError::Offsets(name));
        }
        let bits = self
            .shape
            .0
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .and_then(|elements| elements.checked_mul(dtype.bits()));
        match bits {
            Some(bits) if bits % 8 == 0 && bits / 8 == end - begin => {}
            _ => return Err(SafetensorsError::Size(name)),
        }
        Ok(TensorInfo { name, dtype, shape: self.shape.0, begin, end, first_chunk: 0 })
    }
}

//! The safetensors header parser (the tensor index of the safetensors-aware
//! model layout) on arbitrary bytes, and whole encrypted files of that
//! layout: nothing may panic; an accepted index must tile the data exactly
//! (offsets from 0, contiguous, ending at the data length, sizes matching
//! dtype and shape) and find every tensor by name; an accepted encrypted
//! file must decrypt only to its full stated length.
//!
//! Input: a first byte choosing the mode, then the bytes. The seeds are a
//! few valid safetensors headers and one encrypted file under the fixed key.
#![no_main]

use std::io::Cursor;

use kbs_proto::model::{self, Header, MIN_CHUNK_SIZE, ModelKey, ModelReader, TensorIndex};
use libfuzzer_sys::fuzz_target;

/// The model key of the known-answer vectors (proto/testdata/model).
const KEY: [u8; 32] = [0x11; 32];

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        index(rest);
    } else {
        file(rest);
    }
});

/// `rest` is a safetensors header block followed by 2 bytes of data length.
fn index(rest: &[u8]) {
    let Some((block, len)) = rest.split_last_chunk::<2>() else { return };
    let data_len = u64::from(u16::from_le_bytes(*len));
    let Ok(index) = TensorIndex::parse(block, data_len, MIN_CHUNK_SIZE) else { return };
    let mut at = 0u64;
    for t in index.tensors() {
        let (begin, end) = t.data_offsets();
        assert_eq!(begin, at, "tensors must be contiguous");
        assert!(end >= begin);
        let elements: u64 = t.shape().iter().product();
        assert_eq!(elements * t.dtype().bits(), 8 * t.len());
        assert_eq!(index.tensor(t.name()), Some(t));
        at = end;
    }
    assert_eq!(at, data_len);
    assert_eq!(index.data_len(), data_len);
    assert_eq!(index.raw(), block);
    assert!(index.chunk_count() >= 1);
}

/// `rest` is a whole encrypted file.
fn file(rest: &[u8]) {
    let Ok((header, len)) = Header::parse(rest) else {
        assert!(Header::read_from(&mut Cursor::new(rest)).is_err());
        return;
    };
    assert_eq!(header.encoded_len(), len);
    assert_eq!(header.to_bytes().as_slice(), rest.get(..len).expect("parsed from these bytes"));
    let key = ModelKey::new(header.secret_name(), header.secret_version(), &KEY).expect("valid name and version");
    let mut out = Vec::new();
    if let Ok(n) = model::decrypt(&mut Cursor::new(rest), &mut out, &key) {
        assert_eq!(n, header.plaintext_len());
        assert_eq!(out.len() as u64, n);
        assert_eq!(header.file_len(), Some(rest.len() as u64));
    }
    if let Ok(mut reader) = ModelReader::open(Cursor::new(rest), &key) {
        assert_eq!(header.file_len(), Some(rest.len() as u64));
        let names: Vec<String> = reader.tensors().unwrap_or_default().iter().map(|t| t.name().to_owned()).collect();
        for name in names.iter().take(4) {
            if let Ok(t) = reader.read_tensor(name) {
                let want = header.tensor_index().and_then(|i| i.tensor(name)).map(|t| t.len());
                assert_eq!(Some(t.len() as u64), want);
            }
        }
    }
}

//! The encrypted model-file header parser, and the decryptors behind it, on
//! arbitrary bytes: nothing may panic; an accepted header must re-encode to
//! exactly the bytes it was parsed from; and a decryption may succeed only
//! with the full plaintext length the header states (the seeds are valid
//! files under the fixed key below, so the chunk paths are reached).
#![no_main]

use std::io::Cursor;

use kbs_proto::model::{self, Header, ModelKey, ModelReader};
use libfuzzer_sys::fuzz_target;

/// The model key of the known-answer vectors (proto/testdata/model).
const KEY: [u8; 32] = [0x11; 32];

fuzz_target!(|data: &[u8]| {
    let Ok((header, len)) = Header::parse(data) else {
        assert!(Header::read_from(&mut Cursor::new(data)).is_err());
        return;
    };
    assert_eq!(header.encoded_len(), len);
    assert_eq!(header.to_bytes().as_slice(), data.get(..len).expect("parsed from these bytes"));
    let mut cursor = Cursor::new(data);
    assert_eq!(Header::read_from(&mut cursor).expect("read_from agrees with parse"), header);
    assert_eq!(cursor.position(), len as u64);

    let key = ModelKey::new(header.secret_name(), header.secret_version(), &KEY).expect("valid name and version");
    let mut out = Vec::new();
    // One thread: worker threads would end after the input, and the leak
    // checker would count their thread-local state (aws-lc's error queue).
    let one_thread = model::DecryptOptions { threads: 1 };
    if let Ok(n) = model::decrypt_with(&mut Cursor::new(data), &mut out, &key, &one_thread) {
        assert_eq!(n, header.plaintext_len());
        assert_eq!(out.len() as u64, n);
        assert_eq!(header.file_len(), Some(data.len() as u64));
    }
    if let Ok(mut reader) = ModelReader::open(Cursor::new(data), &key) {
        assert_eq!(header.file_len(), Some(data.len() as u64));
        let mut buf = [0u8; 64];
        for offset in [0, header.plaintext_len() / 2, header.plaintext_len().saturating_sub(1)] {
            let _ = reader.read_at(offset, &mut buf);
        }
    }
});

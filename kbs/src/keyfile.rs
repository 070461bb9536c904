//! 256-bit key files: the one format every key the broker and `kbsctl`
//! read from disk uses (the store's KEK, the challenge sealing keys, the
//! audit MAC key, model keys).
//!
//! A key file holds either exactly 32 raw bytes, or 64 hex digits with any
//! ASCII whitespace around or between them (so `xxd -p` and `openssl rand
//! -hex 32` output both work). Anything else is refused: a file that is
//! neither cannot be mistaken for a key of another length. The bytes read
//! are zeroized when dropped, including on the error paths.

use std::path::Path;

use zeroize::Zeroizing;

/// Length of every key read by this module.
pub const KEY_LEN: usize = 32;

/// Files larger than this are refused without being read whole: 64 hex
/// digits with generous whitespace fit easily.
const MAX_FILE_LEN: u64 = 4096;

/// Why a key file was refused. The messages name the path but never the
/// contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("reading key file {path}: {why}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        why: String,
    },
    /// The file is not 32 raw bytes or 64 hex digits.
    #[error("key file {path}: a key file holds 32 raw bytes or 64 hex digits")]
    Format {
        /// The file.
        path: String,
    },
    /// The file may be read or written by others than its owner.
    #[error("key file {path}: must not be readable or writable by group or others (chmod 600)")]
    Permissions {
        /// The file.
        path: String,
    },
}

/// Reads a key file (see the module documentation for the format).
pub fn read(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    let io = |e: std::io::Error| KeyFileError::Io { path: path.display().to_string(), why: e.to_string() };
    let format = || KeyFileError::Format { path: path.display().to_string() };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_LEN {
        return Err(format());
    }
    let raw = Zeroizing::new(std::fs::read(path).map_err(io)?);
    parse(&raw).ok_or_else(format)
}

/// Reads a key file that only its owner may read or write (on Unix: no
/// group or other permission bits), for keys introduced after the others
/// and held to the stricter rule from the start.
pub fn read_private(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = std::fs::metadata(path)
            .map_err(|e| KeyFileError::Io { path: path.display().to_string(), why: e.to_string() })?;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(KeyFileError::Permissions { path: path.display().to_string() });
        }
    }
    read(path)
}

/// Parses key file contents: 32 raw bytes, or 64 hex digits and whitespace.
pub fn parse(raw: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if raw.len() == KEY_LEN {
        key.copy_from_slice(raw);
        return Some(key);
    }
    let digits: Zeroizing<Vec<u8>> = Zeroizing::new(raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect());
    if digits.len() != 2 * KEY_LEN {
        return None;
    }
    hex::decode_to_slice(digits.as_slice(), key.as_mut_slice()).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn raw_and_hex_forms_give_the_same_key() {
        let key: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).unwrap().wrapping_mul(37));
        let hexed = hex::encode(key);
        assert_eq!(*parse(&key).unwrap(), key);
        assert_eq!(*parse(hexed.as_bytes()).unwrap(), key);
        assert_eq!(*parse(format!("  {hexed}\n").as_bytes()).unwrap(), key);
        let (a, b) = hexed.split_at(32);
        assert_eq!(*parse(format!("{a}\n{b}\n").as_bytes()).unwrap(), key);
        assert_eq!(*parse(hexed.to_uppercase().as_bytes()).unwrap(), key);
    }

    #[test]
    fn other_contents_are_refused() {
        let hexed = hex::encode([7u8; 32]);
        for bad in [
            &b""[..],
            &[7u8; 31][..],
            &[7u8; 33][..],
            &hexed.as_bytes()[..62],
            format!("{hexed}00").as_bytes(),
            hexed.replace('0', "g").as_bytes(),
            // 32 bytes of text that is not hex is still 32 raw bytes: only
            // lengths other than 32 are read as hex.
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        // A 32-byte file is raw even when it looks like hex.
        assert_eq!(*parse(&hexed.as_bytes()[..32]).unwrap(), <[u8; 32]>::try_from(&hexed.as_bytes()[..32]).unwrap());
    }

    #[test]
    fn files_are_read_and_oversized_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, hex::encode([9u8; 32])).unwrap();
        assert_eq!(*read(&good).unwrap(), [9u8; 32]);

        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b' '; 8192]).unwrap();
        assert!(matches!(read(&huge), Err(KeyFileError::Format { .. })));

        let missing = dir.path().join("missing");
        let err = read(&missing).unwrap_err();
        assert!(matches!(err, KeyFileError::Io { .. }));
        assert!(err.to_string().contains("missing"));
        assert!(matches!(read_private(&missing), Err(KeyFileError::Io { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn private_key_files_must_be_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [3u8; 32]).unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o620, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_private(&path).is_ok(), ok, "mode {mode:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_private(&path), Err(KeyFileError::Permissions { .. })));
        assert_eq!(*read(&path).unwrap(), [3u8; 32], "the plain reader does not check");
    }
}

//! `kbsctl model export-kserve`: writes a file or a model directory in
//! KServe's confidential-model layout, one compact JWE per file
//! (`REL_PATH.jwe`, RFC 7516; `alg` A256KW under the model key, `enc`
//! A256GCM), so that KServe's unmodified storage initializer decrypts it
//! with the model key it fetches through the CoCo data hub. This is an
//! export for KServe users, not our model format (docs/model-format.md):
//! one tag per file, the whole file in memory.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::key_wrap::{AES_256, KeyEncryptionKey, KeyWrap};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tempfile::NamedTempFile;
use zeroize::Zeroizing;

use super::{io_failure, read_key_file, walk};
use crate::{Failure, Output};

/// The protected header of every exported file, byte for byte.
pub(crate) const PROTECTED_HEADER: &str = r#"{"alg":"A256KW","enc":"A256GCM"}"#;

/// Default cap on one plaintext file (4 GiB): the file is encrypted in
/// memory, as KServe decrypts it.
pub(crate) const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;

/// Suffix of every output file.
const SUFFIX: &str = ".jwe";

#[derive(clap::Args, Debug)]
pub(crate) struct ExportKserveArgs {
    /// The broker secret that holds the model key, as KServe's storage
    /// initializer fetches it from the CoCo endpoint (`repo/type/tag`).
    #[arg(long)]
    secret: String,
    /// Model key: 32 raw bytes or 64 hex digits (upload the same file with
    /// `kbsctl secret put NAME --from-file FILE`).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// Largest plaintext file accepted, in bytes (each file is encrypted in
    /// memory) [default: 4 GiB].
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Plaintext file or directory.
    #[arg(value_name = "IN")]
    in_path: PathBuf,
    /// Output file (for a file) or directory (for a directory); each file
    /// of a directory becomes `OUT/REL_PATH.jwe`.
    #[arg(value_name = "OUT")]
    out_path: PathBuf,
}

/// Refuses a model key that KServe would not use as raw bytes: its storage
/// initializer parses a key that decodes as UTF-8 as a JWK or a base64url
/// string, and uses only other keys as they are.
pub(crate) fn check_key(key: &[u8; 32]) -> Result<(), Failure> {
    if std::str::from_utf8(key).is_ok() {
        return Err(Failure::Usage(
            "the model key's 32 bytes are valid UTF-8, so KServe's storage initializer would parse them as a JWK \
             or base64url text instead of using them as the raw AES key; draw another random key (e.g. `kbsctl \
             secret generate`, or 32 bytes from /dev/urandom)"
                .into(),
        ));
    }
    Ok(())
}

/// Refuses a secret name that the CoCo endpoint cannot serve
/// (`kbs:///repo/type/tag`: three non-empty components).
fn check_secret_name(name: &str) -> Result<(), Failure> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(Failure::Usage(format!(
            "--secret {name:?}: KServe fetches the key through the CoCo data hub as kbs:///repo/type/tag, so the \
             secret name must have three non-empty components"
        )));
    }
    Ok(())
}

/// Runs `kbsctl model export-kserve`.
pub(crate) fn run(args: &ExportKserveArgs, output: Output) -> Result<(), Failure> {
    check_secret_name(&args.secret)?;
    let key = read_key_file(&args.key_file)?;
    check_key(&key)?;
    let inputs = walk(&args.in_path)?;
    if inputs.is_empty() {
        return Err(Failure::Usage(format!("{}: no files to export", args.in_path.display())));
    }
    let single = inputs.len() == 1 && inputs.first().is_some_and(|(_, rel)| rel.as_os_str().is_empty());
    let mut pending = Vec::with_capacity(inputs.len());
    let mut total = 0u64;
    for (src, rel) in &inputs {
        let target = match (single, src.file_name()) {
            (true, Some(name)) if args.out_path.is_dir() => args.out_path.join(with_suffix(Path::new(name))),
            (true, _) => args.out_path.clone(),
            (false, _) => args.out_path.join(with_suffix(rel)),
        };
        let (temp, len) = export_one(src, &target, &key, args.max_file_bytes)?;
        total = total.saturating_add(len);
        pending.push((temp, target));
    }
    // Every file is encrypted before any is put in place.
    let count = pending.len();
    let mut written = Vec::with_capacity(count);
    for (temp, target) in pending {
        temp.persist(&target).map_err(|e| io_failure(&target, &e.error))?;
        written.push(target);
    }
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::json!({
                "secret": args.secret, "layout": "kserve-jwe", "files": written, "plaintext_bytes": total,
            })
        ),
        Output::Table => {
            outln!("exported {count} file(s), {total} bytes, as KServe JWE files under the key of {}", args.secret)
        }
    }
    Ok(())
}

/// `path` with `.jwe` appended to its file name.
fn with_suffix(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// Encrypts `src` into a temporary file beside `target`; returns it and the
/// plaintext length.
fn export_one(src: &Path, target: &Path, key: &[u8; 32], max: u64) -> Result<(NamedTempFile, u64), Failure> {
    let input = std::fs::File::open(src).map_err(|e| io_failure(src, &e))?;
    let len = input.metadata().map_err(|e| io_failure(src, &e))?.len();
    let too_large = || {
        Failure::Usage(format!(
            "{}: larger than {max} bytes, the cap on one file (it is encrypted in memory; see --max-file-bytes)",
            src.display()
        ))
    };
    if len > max {
        return Err(too_large());
    }
    let mut plain = Vec::with_capacity(usize::try_from(len).map_err(|_| too_large())?);
    // Read at most one byte past the cap, in case the file grows meanwhile.
    input.take(max.saturating_add(1)).read_to_end(&mut plain).map_err(|e| io_failure(src, &e))?;
    if plain.len() as u64 > max {
        return Err(too_large());
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io_failure(&parent, &e))?;
    let temp = tempfile::Builder::new()
        .prefix(".kbs-model-")
        .suffix(".tmp")
        .tempfile_in(&parent)
        .map_err(|e| io_failure(&parent, &e))?;
    let mut writer = BufWriter::with_capacity(1 << 20, temp.as_file());
    write_jwe(&mut writer, key, &mut plain).map_err(|e| match e {
        JweError::Io(io) => io_failure(temp.path(), &io),
        JweError::Crypto => Failure::Usage(format!("{}: encryption failed", src.display())),
    })?;
    writer.flush().map_err(|e| io_failure(temp.path(), &e))?;
    drop(writer);
    temp.as_file().sync_all().map_err(|e| io_failure(temp.path(), &e))?;
    Ok((temp, plain.len() as u64))
}

/// Why a JWE could not be written.
#[derive(Debug)]
enum JweError {
    Io(std::io::Error),
    Crypto,
}

impl From<std::io::Error> for JweError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<aws_lc_rs::error::Unspecified> for JweError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Crypto
    }
}

/// Encrypts `plain` in place and writes the compact JWE
/// `header.encrypted_key.iv.ciphertext.tag` to `out`: a fresh content key
/// wrapped with AES key wrap (RFC 3394) under `key`, a random 96-bit IV,
/// AES-256-GCM with the encoded protected header as AAD.
fn write_jwe(out: &mut impl Write, key: &[u8; 32], plain: &mut [u8]) -> Result<(), JweError> {
    let header = URL_SAFE_NO_PAD.encode(PROTECTED_HEADER);
    let mut cek = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(cek.as_mut_slice())?;
    let mut iv = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut iv)?;
    let mut wrapped = [0u8; 40];
    let wrapped = KeyEncryptionKey::new(&AES_256, key)?.wrap(cek.as_slice(), &mut wrapped)?;
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, cek.as_slice())?);
    let tag = aead.seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::from(header.as_bytes()), plain)?;
    out.write_all(header.as_bytes())?;
    out.write_all(b".")?;
    out.write_all(URL_SAFE_NO_PAD.encode(wrapped).as_bytes())?;
    out.write_all(b".")?;
    out.write_all(URL_SAFE_NO_PAD.encode(iv).as_bytes())?;
    out.write_all(b".")?;
    // The ciphertext in pieces of a multiple of 3 bytes, so the encoding
    // needs no whole-file copy and the pieces join without padding.
    let mut text = String::with_capacity(1 << 20);
    for piece in plain.chunks(3 * (1 << 18)) {
        text.clear();
        URL_SAFE_NO_PAD.encode_string(piece, &mut text);
        out.write_all(text.as_bytes())?;
    }
    out.write_all(b".")?;
    out.write_all(URL_SAFE_NO_PAD.encode(tag.as_ref()).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_keys_are_refused_and_others_accepted() {
        assert!(matches!(check_key(&[b'a'; 32]), Err(Failure::Usage(m)) if m.contains("UTF-8")));
        let mut key = [0x11u8; 32];
        assert!(check_key(&key).is_err(), "ASCII control bytes are UTF-8 too");
        key[0] = 0xff;
        assert!(check_key(&key).is_ok());
    }

    #[test]
    fn secret_names_must_be_coco_resource_paths() {
        assert!(check_secret_name("models/llama/key").is_ok());
        for bad in ["models/key", "a/b/c/d", "a//c", "/a/b", ""] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pieces_of_the_ciphertext_join_into_one_encoding() {
        let mut plain: Vec<u8> = (0..(3 << 18) + 5).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        write_jwe(&mut out, &[0xf0; 32], &mut plain).unwrap();
        let text = String::from_utf8(out).unwrap();
        let parts: Vec<&str> = text.split('.').collect();
        assert_eq!(parts.len(), 5);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[3]).unwrap(), plain);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[0]).unwrap(), PROTECTED_HEADER.as_bytes());
    }
}

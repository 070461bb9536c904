//! Decrypting encrypted model files in the guest (`kbs-attester model
//! decrypt`): one attestation for every key the headers name, then each
//! file decrypted chunk by chunk, all or nothing.
//!
//! Order of work, failing closed at each step:
//! 1. read every input header (`kbs_proto::model::Header`); a file that is
//!    not a valid encrypted model file stops everything before attesting;
//! 2. check that the output directory is memory-backed (tmpfs or ramfs,
//!    by `statfs`) unless persistent disks are explicitly allowed: the
//!    plaintext weights must not reach a disk the host can read;
//! 3. lock the output directory (an exclusive `flock`, refused at once if
//!    another decrypt holds it), then remove every `*.partial` file under
//!    it: with the lock held, such a file can only be left over from a run
//!    that was killed, and it is never output (removing a symbolic link
//!    removes the link, never its target);
//! 4. fetch every named secret in one release;
//! 5. unlock every header with its key (name, version, key commitment,
//!    header tag, data-key commitment);
//! 6. decrypt each file to `OUT/REL.partial` (mode 0600, created new, so
//!    never through a link);
//! 7. only when every file authenticated completely, rename each
//!    `.partial` to its name. On any failure every `.partial` is removed,
//!    so no plaintext is left behind.
//!
//! Keys live in zeroizing buffers and are dropped (zeroized) when done.
//!
//! Loaders that decrypt on the fly, without a plaintext copy, use
//! [`open_model`] and [`ModelReader`]: any byte range, or, for files with
//! the safetensors-aware layout, one tensor by name
//! ([`ModelReader::read_tensor`]), authenticating only the chunks read.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kbs_proto::model::{self, Header, ModelKey};
pub use kbs_proto::model::{ModelReader, TensorInfo};

use crate::client::{self, KbsClient};
use crate::evidence::{EvidenceSource, GpuEvidenceSource};

/// `statfs` magic of tmpfs.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `statfs` magic of ramfs.
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// Suffix of files being written.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// What can go wrong decrypting models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input could not be listed or read.
    #[error("cannot read {path}")]
    Input {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An input is a symlink or a special file.
    #[error("{0} is not a regular file or directory")]
    NotAFile(PathBuf),
    /// No files under the input.
    #[error("no encrypted files under {0}")]
    NoInput(PathBuf),
    /// The output directory is not memory-backed.
    #[error("{path} is not on tmpfs or ramfs (file system type {fs_type:#x}); use --allow-persistent-disk to override")]
    PersistentOutput {
        /// The directory.
        path: PathBuf,
        /// Its `statfs` type.
        fs_type: u64,
    },
    /// A file could not be decrypted: the variant says which check failed.
    #[error("{path}")]
    Model {
        /// The encrypted file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: model::Error,
    },
    /// The broker's release failed.
    #[error("fetching the model keys failed")]
    Fetch(#[source] client::Error),
    /// The broker released a value that is not a model key.
    #[error("secret {0:?} is not a 32-byte model key")]
    NotAModelKey(String),
    /// Another decrypt is writing into the output directory.
    #[error("{0} is locked by another model decrypt")]
    Busy(PathBuf),
    /// Writing the output failed.
    #[error("cannot write {path}")]
    Output {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How to decrypt.
#[derive(Clone, Debug, Default)]
pub struct DecryptOptions {
    /// Allow an output directory that is not tmpfs or ramfs.
    pub allow_persistent_disk: bool,
    /// The VM's GPUs, presented and bound with the CPU evidence (for keys
    /// that need attested GPUs).
    pub gpus: Option<Arc<dyn GpuEvidenceSource>>,
    /// Chunks decrypted in parallel [default (`None`): the number of
    /// cores]. Memory use is about `2 × chunk size × threads`.
    pub threads: Option<usize>,
}

/// One input file and its (not yet authenticated) header.
#[derive(Debug)]
struct Input {
    path: PathBuf,
    relative: PathBuf,
    header: Header,
}

/// What was decrypted.
#[derive(Debug)]
pub struct Decrypted {
    /// The broker's attestation identifier.
    pub attestation_id: String,
    /// The plaintext files written, in input order.
    pub files: Vec<PathBuf>,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Partial files of an earlier, killed run that were removed.
    pub stale_partials_removed: usize,
}

/// Attests once, fetches every key the headers of the files under `input`
/// name, and decrypts them into `out` (see the module docs).
pub async fn decrypt_models(
    client: &mut KbsClient,
    source: Arc<dyn EvidenceSource>,
    input: &Path,
    out: &Path,
    options: &DecryptOptions,
) -> Result<Decrypted, Error> {
    let inputs = read_headers(input)?;
    create_dir(out)?;
    check_output_fs(out, options.allow_persistent_disk)?;
    let out = OutDir::prepare(out)?;
    let names: Vec<String> =
        inputs.iter().map(|i| i.header.secret_name().to_owned()).collect::<BTreeSet<_>>().into_iter().collect();
    let release = client.fetch_release_with_gpus(source, options.gpus.clone(), &names).await.map_err(Error::Fetch)?;
    let keys = release
        .secrets
        .iter()
        .map(|s| ModelKey::new(&s.name, s.version, &s.value).map_err(|_| Error::NotAModelKey(s.name.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    drop(release.secrets);
    let mut decrypt = model::DecryptOptions::default();
    if let Some(t) = options.threads {
        decrypt.threads = t.max(1);
    }
    let done = decrypt_all(&inputs, &keys, &out, &decrypt)?;
    Ok(Decrypted {
        attestation_id: release.attestation_id,
        files: done.files,
        bytes: done.bytes,
        stale_partials_removed: done.stale_partials_removed,
    })
}

/// Opens an encrypted model file for random access with its released key
/// (checks the header and the file length; each read authenticates the
/// chunks it touches).
pub fn open_model(path: &Path, key: &ModelKey) -> Result<ModelReader<File>, Error> {
    let file = File::open(path).map_err(|source| Error::Input { path: path.to_path_buf(), source })?;
    ModelReader::open(file, key).map_err(|source| Error::Model { path: path.to_path_buf(), source })
}

/// Lists the files under `input` (or `input` itself) and reads each header.
fn read_headers(input: &Path) -> Result<Vec<Input>, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Input { path, source }
    };
    let meta = fs::symlink_metadata(input).map_err(io(input))?;
    let mut files = Vec::new();
    if meta.is_file() {
        let name = input.file_name().map(PathBuf::from).ok_or_else(|| Error::NotAFile(input.to_path_buf()))?;
        files.push((input.to_path_buf(), name));
    } else if meta.is_dir() {
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let dir = input.join(&rel);
            for entry in fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let kind = entry.file_type().map_err(io(&entry.path()))?;
                let child = rel.join(entry.file_name());
                if kind.is_dir() {
                    pending.push(child);
                } else if kind.is_file() {
                    files.push((entry.path(), child));
                } else {
                    return Err(Error::NotAFile(entry.path()));
                }
            }
        }
    } else {
        return Err(Error::NotAFile(input.to_path_buf()));
    }
    if files.is_empty() {
        return Err(Error::NoInput(input.to_path_buf()));
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    files
        .into_iter()
        .map(|(path, relative)| {
            let mut file = File::open(&path).map_err(io(&path))?;
            let header = Header::read_from(&mut file).map_err(|source| Error::Model { path: path.clone(), source })?;
            // Only plain relative components reach the output directory.
            if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(Error::NotAFile(path));
            }
            Ok(Input { path, relative, header })
        })
        .collect()
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Output { path: dir.to_path_buf(), source })
}

/// Whether a `statfs` type is memory-backed.
pub fn is_memory_fs(fs_type: u64) -> bool {
    fs_type == TMPFS_MAGIC || fs_type == RAMFS_MAGIC
}

/// The `statfs` file-system type of `path`.
pub fn fs_type(path: &Path) -> Result<u64, std::io::Error> {
    let stat = rustix::fs::statfs(path).map_err(std::io::Error::from)?;
    // `f_type` is a signed C long whose width depends on the platform; the
    // magic numbers are 32-bit.
    #[allow(clippy::cast_sign_loss, clippy::unnecessary_cast)]
    Ok((stat.f_type as i64 as u64) & 0xffff_ffff)
}

/// Refuses an output directory that is not tmpfs or ramfs, unless allowed.
pub fn check_output_fs(dir: &Path, allow_persistent_disk: bool) -> Result<(), Error> {
    let fs_type = fs_type(dir).map_err(|source| Error::Output { path: dir.to_path_buf(), source })?;
    if is_memory_fs(fs_type) || allow_persistent_disk {
        return Ok(());
    }
    Err(Error::PersistentOutput { path: dir.to_path_buf(), fs_type })
}

/// The output directory, locked, with the partial files of earlier runs
/// removed.
#[derive(Debug)]
struct OutDir {
    path: PathBuf,
    /// Holds the `flock` until dropped.
    _lock: File,
    stale_partials_removed: usize,
}

impl OutDir {
    /// Creates (if needed) and locks `out`, then removes stale partials.
    fn prepare(out: &Path) -> Result<OutDir, Error> {
        create_dir(out)?;
        let lock = lock_dir(out)?;
        let stale_partials_removed = remove_stale_partials(out)?;
        Ok(OutDir { path: out.to_path_buf(), _lock: lock, stale_partials_removed })
    }
}

/// What [`decrypt_all`] wrote.
#[derive(Debug)]
struct Written {
    files: Vec<PathBuf>,
    bytes: u64,
    stale_partials_removed: usize,
}

/// Takes the exclusive lock on the output directory (held while the
/// returned file is open).
fn lock_dir(dir: &Path) -> Result<File, Error> {
    let handle = File::open(dir).map_err(|source| Error::Output { path: dir.to_path_buf(), source })?;
    match rustix::fs::flock(&handle, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(handle),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::Busy(dir.to_path_buf())),
        Err(e) => Err(Error::Output { path: dir.to_path_buf(), source: e.into() }),
    }
}

/// Removes every `*.partial` file or link under `dir` (not following
/// links); returns how many. Called with the directory locked.
fn remove_stale_partials(dir: &Path) -> Result<usize, Error> {
    let mut removed = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = fs::read_dir(&d).map_err(|source| Error::Output { path: d.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Output { path: d.clone(), source })?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| Error::Output { path: path.clone(), source })?;
            if kind.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                fs::remove_file(&path).map_err(|source| Error::Output { path: path.clone(), source })?;
                tracing::warn!(path = %path.display(), "removed a partial file left by an earlier decrypt");
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Unlocks every header, decrypts every file to `.partial`, then renames.
fn decrypt_all(
    inputs: &[Input],
    keys: &[ModelKey],
    out_dir: &OutDir,
    options: &model::DecryptOptions,
) -> Result<Written, Error> {
    let out = out_dir.path.as_path();
    let stale_partials_removed = out_dir.stale_partials_removed;
    let mut unlocked = Vec::with_capacity(inputs.len());
    for input in inputs {
        let name = input.header.secret_name();
        let key = keys.iter().find(|k| k.name() == name).ok_or_else(|| Error::Model {
            path: input.path.clone(),
            source: model::Error::SecretMismatch { header: name.to_owned(), key: String::new() },
        })?;
        let header = input.header.unlock(key).map_err(|source| Error::Model { path: input.path.clone(), source })?;
        unlocked.push(header);
    }
    let mut partials: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(inputs.len());
    let result = (|| {
        let mut total = 0u64;
        for (input, header) in inputs.iter().zip(&unlocked) {
            let target = out.join(&input.relative);
            if let Some(parent) = target.parent() {
                create_dir(parent)?;
            }
            let mut partial_name = target.clone().into_os_string();
            partial_name.push(PARTIAL_SUFFIX);
            let partial = PathBuf::from(partial_name);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(|source| Error::Output { path: partial.clone(), source })?;
            partials.push((partial.clone(), target));
            let mut reader =
                File::open(&input.path).map_err(|source| Error::Input { path: input.path.clone(), source })?;
            // Skip the header: it was read and unlocked above; re-read it
            // and insist it is the same bytes.
            let again =
                Header::read_from(&mut reader).map_err(|source| Error::Model { path: input.path.clone(), source })?;
            if again != input.header {
                return Err(Error::Model { path: input.path.clone(), source: model::Error::HeaderAuthentication });
            }
            let mut writer = BufWriter::with_capacity(1 << 20, &file);
            total += header
                .decrypt_body_with(&mut BufReader::with_capacity(1 << 20, reader), &mut writer, options)
                .map_err(|source| Error::Model { path: input.path.clone(), source })?;
            writer.flush().map_err(|source| Error::Output { path: partial.clone(), source })?;
            drop(writer);
            file.sync_all().map_err(|source| Error::Output { path: partial.clone(), source })?;
        }
        Ok(total)
    })();
    match result {
        Ok(total) => {
            let mut written = Vec::with_capacity(partials.len());
            for (partial, target) in &partials {
                if let Err(source) = fs::rename(partial, target) {
                    remove_all(&partials);
                    for done in &written {
                        let _ = fs::remove_file(done);
                    }
                    return Err(Error::Output { path: target.clone(), source });
                }
                written.push(target.clone());
            }
            Ok(Written { files: written, bytes: total, stale_partials_removed })
        }
        Err(e) => {
            remove_all(&partials);
            Err(e)
        }
    }
}

fn remove_all(partials: &[(PathBuf, PathBuf)]) {
    for (partial, _) in partials {
        if let Err(e) = fs::remove_file(partial)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(path = %partial.display(), error = %e, "cannot remove a partial plaintext file");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use kbs_proto::model::EncryptOptions;

    use super::*;

    fn encrypt_to(path: &Path, plain: &[u8], key: &ModelKey) {
        let mut out = Vec::new();
        let opts = EncryptOptions { chunk_size: 4096, threads: 2 };
        model::encrypt(&mut Cursor::new(plain), plain.len() as u64, &mut out, key, &opts).unwrap();
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).unwrap();
        }
        fs::write(path, out).unwrap();
    }

    fn setup() -> (tempfile::TempDir, Vec<ModelKey>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let keys = vec![ModelKey::new("m/a", 2, &[1; 32]).unwrap(), ModelKey::new("m/b", 1, &[2; 32]).unwrap()];
        let plain: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        encrypt_to(&dir.path().join("in/x/w.bin"), &plain, &keys[0]);
        encrypt_to(&dir.path().join("in/y.json"), b"{}", &keys[1]);
        (dir, keys, plain)
    }

    fn threads(threads: usize) -> model::DecryptOptions {
        model::DecryptOptions { threads }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    pending.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn decrypts_a_tree_and_leaves_no_partials() {
        let (dir, keys, plain) = setup();
        let inputs = read_headers(&dir.path().join("in")).unwrap();
        for n in [1, 3] {
            let out = dir.path().join(format!("out-{n}"));
            let done = decrypt_all(&inputs, &keys, &OutDir::prepare(&out).unwrap(), &threads(n)).unwrap();
            assert_eq!(done.files.len(), 2);
            assert_eq!(done.bytes, plain.len() as u64 + 2);
            assert_eq!(done.stale_partials_removed, 0);
            assert_eq!(fs::read(out.join("x/w.bin")).unwrap(), plain, "{n} threads");
            assert_eq!(listing(&out), vec!["x/w.bin", "y.json"]);
        }
    }

    #[test]
    fn stale_partials_are_removed_and_never_output() {
        let (dir, keys, plain) = setup();
        let out = dir.path().join("out");
        fs::create_dir_all(out.join("x")).unwrap();
        // Left by a killed run: the partial of a file being decrypted now,
        // one of a file that is not, and a link planted in their place.
        fs::write(out.join("x/w.bin.partial"), b"stale plaintext").unwrap();
        fs::write(out.join("old.safetensors.partial"), b"stale").unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, out.join("y.json.partial")).unwrap();
        let inputs = read_headers(&dir.path().join("in")).unwrap();
        let done = decrypt_all(&inputs, &keys, &OutDir::prepare(&out).unwrap(), &threads(2)).unwrap();
        assert_eq!(done.stale_partials_removed, 3);
        assert_eq!(done.files, vec![out.join("x/w.bin"), out.join("y.json")]);
        assert_eq!(listing(&out), vec!["x/w.bin", "y.json"]);
        assert_eq!(fs::read(out.join("x/w.bin")).unwrap(), plain);
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        // A stale partial also goes when the new run fails.
        fs::write(out.join("x/w.bin.partial"), b"stale plaintext").unwrap();
        let wrong = vec![ModelKey::new("m/a", 2, &[9; 32]).unwrap(), ModelKey::new("m/b", 1, &[2; 32]).unwrap()];
        let prepared = OutDir::prepare(&out).unwrap();
        assert_eq!(prepared.stale_partials_removed, 1);
        assert!(decrypt_all(&inputs, &wrong, &prepared, &threads(2)).is_err());
        assert!(listing(&out).iter().all(|f| !f.ends_with(PARTIAL_SUFFIX)), "{:?}", listing(&out));
    }

    #[test]
    fn a_second_decrypt_into_the_same_directory_is_refused() {
        let (dir, keys, _) = setup();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let held = OutDir::prepare(&out).unwrap();
        let inputs = read_headers(&dir.path().join("in")).unwrap();
        assert!(matches!(OutDir::prepare(&out), Err(Error::Busy(_))));
        assert!(listing(&out).is_empty());
        drop(held);
        decrypt_all(&inputs, &keys, &OutDir::prepare(&out).unwrap(), &threads(2)).unwrap();
    }

    #[test]
    fn a_loader_reads_one_tensor_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = ModelKey::new("m/a", 1, &[1; 32]).unwrap();
        let json = r#"{"a":{"dtype":"F32","shape":[3000],"data_offsets":[0,12000]},"b":{"dtype":"U8","shape":[9],"data_offsets":[12000,12009]}}"#;
        let mut plain = (json.len() as u64).to_le_bytes().to_vec();
        plain.extend_from_slice(json.as_bytes());
        let data_at = plain.len();
        plain.extend((0..12009u32).map(|i| (i % 253) as u8));
        let mut out = Cursor::new(Vec::new());
        let opts = EncryptOptions { chunk_size: 4096, threads: 2 };
        model::encrypt_safetensors(&mut Cursor::new(&plain), plain.len() as u64, &mut out, &key, &opts).unwrap();
        let path = dir.path().join("m.safetensors");
        fs::write(&path, out.into_inner()).unwrap();
        let mut reader = open_model(&path, &key).unwrap();
        let names: Vec<_> = reader.tensors().unwrap().iter().map(TensorInfo::name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(&reader.read_tensor("b").unwrap()[..], &plain[data_at + 12000..]);
        assert_eq!(&reader.read_tensor("a").unwrap()[..], &plain[data_at..data_at + 12000]);
        let wrong = ModelKey::new("m/a", 1, &[2; 32]).unwrap();
        assert!(matches!(open_model(&path, &wrong), Err(Error::Model { source: model::Error::WrongKey, .. })));
    }

    #[test]
    fn a_tampered_chunk_leaves_no_plaintext_behind() {
        let (dir, keys, _) = setup();
        let path = dir.path().join("in/x/w.bin");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        let inputs = read_headers(&dir.path().join("in")).unwrap();
        for n in [1, 3] {
            let out = dir.path().join(format!("out-{n}"));
            let err = decrypt_all(&inputs, &keys, &OutDir::prepare(&out).unwrap(), &threads(n)).unwrap_err();
            assert!(
                matches!(&err, Error::Model { source: model::Error::ChunkAuthentication { index: 4 }, .. }),
                "{n} threads: {err:?}"
            );
            assert!(listing(&out).is_empty(), "{:?}", listing(&out));
        }
    }

    #[test]
    fn a_wrong_version_is_refused_before_writing() {
        let (dir, _, _) = setup();
        let keys = vec![ModelKey::new("m/a", 3, &[1; 32]).unwrap(), ModelKey::new("m/b", 1, &[2; 32]).unwrap()];
        let inputs = read_headers(&dir.path().join("in")).unwrap();
        let out = dir.path().join("out");
        let err = decrypt_all(&inputs, &keys, &OutDir::prepare(&out).unwrap(), &threads(2)).unwrap_err();
        assert!(
            matches!(&err, Error::Model { source: model::Error::WrongSecretVersion { header: 2, key: 3 }, .. }),
            "{err:?}"
        );
        assert!(!out.exists() || listing(&out).is_empty());
    }

    #[test]
    fn non_model_inputs_are_refused_before_attesting() {
        let (dir, _, _) = setup();
        fs::write(dir.path().join("in/plain.txt"), b"not encrypted").unwrap();
        let err = read_headers(&dir.path().join("in")).unwrap_err();
        assert!(matches!(&err, Error::Model { source: model::Error::Header(_), .. }), "{err:?}");
        std::os::unix::fs::symlink("y.json", dir.path().join("in/link")).unwrap();
        assert!(matches!(read_headers(&dir.path().join("in")), Err(Error::NotAFile(_))));
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(matches!(read_headers(&empty), Err(Error::NoInput(_))));
    }

    #[test]
    fn output_must_be_memory_backed_unless_allowed() {
        assert!(is_memory_fs(TMPFS_MAGIC) && is_memory_fs(RAMFS_MAGIC));
        assert!(!is_memory_fs(0xef53));
        let dir = tempfile::tempdir().unwrap();
        let on_memory = is_memory_fs(fs_type(dir.path()).unwrap());
        assert_eq!(check_output_fs(dir.path(), false).is_ok(), on_memory);
        assert!(check_output_fs(dir.path(), true).is_ok());
        let shm = Path::new("/dev/shm");
        if fs_type(shm).is_ok_and(is_memory_fs) {
            assert!(check_output_fs(shm, false).is_ok());
        }
        if !on_memory {
            assert!(matches!(check_output_fs(dir.path(), false), Err(Error::PersistentOutput { .. })));
        }
    }
}

//! `kbsctl model ...`: encrypt model files for release to attested guests,
//! inspect their headers, rewrap them under a new model-key version. The
//! format is `kbs_proto::model` (docs/model-format.md); `export-kserve`
//! writes KServe's JWE layout instead (`kserve`).

mod kserve;

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use kbs_proto::model::{self, EncryptOptions, Header, ModelKey};
use kbs_proto::v1::{GetSecretMetadataRequest, PutSecretRequest};
use tempfile::NamedTempFile;
use zeroize::Zeroizing;

use crate::connection::{self, refused};
use crate::{Cli, Failure, Output};

#[derive(Subcommand, Debug)]
pub(crate) enum ModelCommand {
    /// Encrypt a file, or a directory tree file by file, under a model key.
    ///
    /// With --generate a fresh key is drawn here, the files are encrypted,
    /// the key is uploaded with PutSecret (check-and-set on the version seen
    /// before), and only then are the outputs renamed into place. With
    /// --key-file the key comes from a file (offline preparation); upload it
    /// with `kbsctl secret put NAME --from-file F`.
    Encrypt(EncryptArgs),
    /// Show the headers of encrypted files (no key needed).
    Inspect {
        /// Encrypted files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Rewrap headers under a new model-key version; bodies are unchanged.
    /// Each file is replaced atomically (a copy with the new header is
    /// written beside it, synced, and renamed over it), so a crash leaves
    /// either the old or the new file. Files already at the new version
    /// under the new key are skipped, so an interrupted run can be rerun.
    Rewrap(RewrapArgs),
    /// Export a file or a directory tree to KServe's confidential-model
    /// layout: `OUT/REL_PATH.jwe`, one compact JWE (A256KW + A256GCM) per
    /// file, decryptable by KServe's storage initializer with the model key
    /// it fetches through the CoCo data hub. Not our format: one tag per
    /// file, each file in memory (capped by --max-file-bytes).
    ExportKserve(kserve::ExportKserveArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct EncryptArgs {
    /// The broker secret that holds (or will hold) the model key.
    #[arg(long)]
    secret: String,
    /// Secret version to record in the headers [default with --key-file: 1;
    /// with --generate: the version the upload will create].
    #[arg(long)]
    version: Option<u64>,
    /// Model key: 32 raw bytes or 64 hex digits.
    #[arg(long, value_name = "FILE", required_unless_present = "generate", conflicts_with = "generate")]
    key_file: Option<PathBuf>,
    /// Draw a new model key and upload it to the broker.
    #[arg(long)]
    generate: bool,
    /// With --generate: launch measurement allowed to receive the key; repeatable.
    #[arg(long = "allow-measurement", requires = "generate")]
    allow_measurement: Vec<String>,
    /// With --generate: label `key=value` on the secret; repeatable.
    #[arg(long = "label", requires = "generate")]
    label: Vec<String>,
    /// Plaintext bytes per chunk, in KiB (4 ..= 65536).
    #[arg(long, default_value_t = 1024)]
    chunk_kib: u32,
    /// Chunks encrypted in parallel [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Encrypt `.safetensors` files whole, like any other file, instead of
    /// with the safetensors-aware layout (readable tensor index, per-tensor
    /// chunks).
    #[arg(long)]
    whole: bool,
    /// Plaintext file or directory.
    #[arg(value_name = "IN")]
    in_path: PathBuf,
    /// Output file (for a file) or directory (for a directory).
    #[arg(value_name = "OUT")]
    out_path: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RewrapArgs {
    /// The current model key (32 raw bytes or 64 hex digits).
    #[arg(long, value_name = "FILE")]
    key_file: PathBuf,
    /// The new model key.
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
    /// The new key's version in the broker.
    #[arg(long, value_name = "N")]
    to_version: u64,
    /// Encrypted files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Runs one `model` subcommand.
pub(crate) async fn run(cli: &Cli, cmd: &ModelCommand) -> Result<(), Failure> {
    match cmd {
        ModelCommand::Encrypt(args) => encrypt(cli, args).await,
        ModelCommand::Inspect { paths } => inspect(paths, cli.output),
        ModelCommand::Rewrap(args) => rewrap(args, cli.output),
        ModelCommand::ExportKserve(args) => tokio::task::block_in_place(|| kserve::run(args, cli.output)),
    }
}

/// Reads a key file (32 raw bytes or 64 hex digits, see `kbs::keyfile`).
pub(crate) fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, Failure> {
    kbs::keyfile::read(path).map_err(|e| Failure::Usage(e.to_string()))
}

fn io_failure(path: &Path, e: &std::io::Error) -> Failure {
    Failure::Usage(format!("{}: {e}", path.display()))
}

fn model_failure(path: &Path, e: &model::Error) -> Failure {
    match e {
        model::Error::Io(io) => io_failure(path, io),
        other => Failure::Refused(format!("{}: {}", path.display(), chain(other))),
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// The regular files under `root` (or `root` itself), with their paths
/// relative to it, sorted. Symbolic links and special files are refused.
pub(crate) fn walk(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| io_failure(root, &e))?;
    if meta.is_file() {
        return Ok(vec![(root.to_path_buf(), PathBuf::new())]);
    }
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|e| io_failure(&dir, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_failure(&dir, &e))?;
            let kind = entry.file_type().map_err(|e| io_failure(&entry.path(), &e))?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                pending.push(child);
            } else if kind.is_file() {
                if is_leftover(&entry.file_name()) {
                    eprintln!("skipping {}: an unfinished temporary file (safe to delete)", entry.path().display());
                    continue;
                }
                out.push((entry.path(), child));
            } else {
                return Err(Failure::Usage(format!("{}: not a regular file or directory", entry.path().display())));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Whether a file name is one of this tool's temporary files (left behind
/// only by a crash: an interrupted encrypt or rewrap).
fn is_leftover(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    (name.starts_with(".kbs-model-") || name.starts_with(".kbs-rewrap-")) && name.ends_with(".tmp")
}

/// One encrypted output, not yet in place.
struct Pending {
    temp: NamedTempFile,
    target: PathBuf,
    plaintext_len: u64,
}

async fn encrypt(cli: &Cli, args: &EncryptArgs) -> Result<(), Failure> {
    let chunk_size = args
        .chunk_kib
        .checked_mul(1024)
        .filter(|c| (model::MIN_CHUNK_SIZE..=model::MAX_CHUNK_SIZE).contains(c))
        .ok_or_else(|| Failure::Usage("--chunk-kib must be 4 ..= 65536".into()))?;
    let mut options = EncryptOptions { chunk_size, ..EncryptOptions::default() };
    if let Some(t) = args.threads {
        options.threads = t.max(1);
    }
    let inputs = walk(&args.in_path)?;
    if inputs.is_empty() {
        return Err(Failure::Usage(format!("{}: no files to encrypt", args.in_path.display())));
    }
    let single = inputs.len() == 1 && inputs.first().is_some_and(|(_, rel)| rel.as_os_str().is_empty());

    // The key, and for --generate the connection and the version to expect.
    let (key, mut upload) = if args.generate {
        let mut client = connection::connect(cli).await?;
        let current = match client.get_secret_metadata(GetSecretMetadataRequest { name: args.secret.clone() }).await {
            Ok(meta) => meta.into_inner().version,
            Err(status) if status.code() == tonic::Code::NotFound => 0,
            Err(status) => return Err(refused(status)),
        };
        let version = args.version.unwrap_or(current.saturating_add(1));
        if version != current.saturating_add(1) {
            return Err(Failure::Usage(format!(
                "--version {version}: the broker's current version of {} is {current}, so an upload creates {}",
                args.secret,
                current.saturating_add(1)
            )));
        }
        let key = ModelKey::generate(&args.secret, version).map_err(|e| Failure::Usage(chain(&e)))?;
        (key, Some((client, current)))
    } else {
        let path = args.key_file.as_deref().ok_or_else(|| Failure::Usage("--key-file or --generate".into()))?;
        let bytes = read_key_file(path)?;
        let key = ModelKey::new(&args.secret, args.version.unwrap_or(1), bytes.as_slice())
            .map_err(|e| Failure::Usage(chain(&e)))?;
        (key, None)
    };

    let progress = std::io::stderr().is_terminal();
    let mut pending = Vec::with_capacity(inputs.len());
    for (src, rel) in &inputs {
        let target = match (single, src.file_name()) {
            // A single file into an existing directory keeps its name.
            (true, Some(name)) if args.out_path.is_dir() => args.out_path.join(name),
            (true, _) => args.out_path.clone(),
            (false, _) => args.out_path.join(rel),
        };
        let layout = if !args.whole && is_safetensors(src) { Layout::Safetensors } else { Layout::Whole };
        let done = tokio::task::block_in_place(|| encrypt_one(src, &target, &key, &options, layout))?;
        if progress {
            eprintln!("encrypted {} ({} bytes)", src.display(), done.plaintext_len);
        }
        pending.push(done);
    }

    let mut version = key.version();
    if let Some((client, current)) = upload.as_mut() {
        let labels = args
            .label
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| Failure::Usage(format!("label {kv:?} is not key=value")))
            })
            .collect::<Result<_, _>>()?;
        let meta = client
            .put_secret(PutSecretRequest {
                name: args.secret.clone(),
                value: key.expose_bytes().to_vec(),
                labels,
                allowed_measurements: args.allow_measurement.clone(),
                expected_version: Some(*current),
            })
            .await
            .map_err(refused)?
            .into_inner();
        if meta.version != key.version() {
            // The store numbered it differently (e.g. after deletions):
            // record the version it assigned; the bodies stay as they are.
            let assigned = key.with_version(meta.version).map_err(|e| Failure::Usage(chain(&e)))?;
            for p in &pending {
                tokio::task::block_in_place(|| rewrap_in_place(p.temp.path(), &key, &assigned))?;
            }
            version = meta.version;
        }
    }
    let total: u64 = pending.iter().map(|p| p.plaintext_len).sum();
    let count = pending.len();
    let mut written = Vec::with_capacity(count);
    for p in pending {
        p.temp.persist(&p.target).map_err(|e| io_failure(&p.target, &e.error))?;
        written.push(p.target);
    }
    match cli.output {
        Output::Json => outln!(
            "{}",
            serde_json::json!({
                "secret": args.secret, "version": version, "files": written, "plaintext_bytes": total,
                "uploaded": args.generate,
            })
        ),
        Output::Table => outln!(
            "encrypted {count} file(s), {total} bytes, under {} version {version}{}",
            args.secret,
            if args.generate { " (key uploaded)" } else { "" }
        ),
    }
    Ok(())
}

/// How a file is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// As one opaque byte stream.
    Whole,
    /// With the safetensors-aware layout.
    Safetensors,
}

/// Whether a file is named like a safetensors file.
fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Encrypts `src` into a temporary file beside `target`.
fn encrypt_one(
    src: &Path,
    target: &Path,
    key: &ModelKey,
    options: &EncryptOptions,
    layout: Layout,
) -> Result<Pending, Failure> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io_failure(&parent, &e))?;
    let input = File::open(src).map_err(|e| io_failure(src, &e))?;
    let len = input.metadata().map_err(|e| io_failure(src, &e))?.len();
    let temp = tempfile::Builder::new()
        .prefix(".kbs-model-")
        .suffix(".tmp")
        .tempfile_in(&parent)
        .map_err(|e| io_failure(&parent, &e))?;
    let mut writer = BufWriter::with_capacity(1 << 20, temp.as_file());
    let mut reader = BufReader::new(input);
    match layout {
        Layout::Whole => model::encrypt(&mut reader, len, &mut writer, key, options).map(|_| ()),
        Layout::Safetensors => model::encrypt_safetensors(&mut reader, len, &mut writer, key, options).map(|_| ()),
    }
    .map_err(|e| match e {
        model::Error::Header(model::HeaderError::Safetensors(_)) => {
            Failure::Refused(format!("{}: {} (use --whole to encrypt it as an opaque file)", src.display(), chain(&e)))
        }
        other => model_failure(src, &other),
    })?;
    writer.flush().map_err(|e| io_failure(temp.path(), &e))?;
    drop(writer);
    temp.as_file().sync_all().map_err(|e| io_failure(temp.path(), &e))?;
    Ok(Pending { temp, target: target.to_path_buf(), plaintext_len: len })
}

/// Replaces the header of `path` by its rewrap from `old` to `new` (same
/// name, so same length), after it opened under `old`.
fn rewrap_in_place(path: &Path, old: &ModelKey, new: &ModelKey) -> Result<Header, Failure> {
    let mut file = File::options().read(true).write(true).open(path).map_err(|e| io_failure(path, &e))?;
    let header = Header::read_from(&mut file).map_err(|e| model_failure(path, &e))?;
    let rewrapped = header.rewrap(old, new).map_err(|e| model_failure(path, &e))?;
    let bytes = rewrapped.to_bytes();
    if bytes.len() != header.encoded_len() {
        return Err(Failure::Usage(format!("{}: the new header has another length", path.display())));
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| io_failure(path, &e))?;
    file.write_all(&bytes).map_err(|e| io_failure(path, &e))?;
    file.sync_all().map_err(|e| io_failure(path, &e))?;
    Ok(rewrapped)
}

/// The steps of an atomic rewrap, in order; a failure (or crash) between
/// any two leaves `path` as it was, or (after the rename) as it will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RewrapStep {
    /// The copy with the new header is written.
    Written,
    /// The copy is synced to disk.
    Synced,
    /// The copy replaced the original.
    Renamed,
}

/// Replaces `path` by a copy whose header is rewrapped from `old` to `new`
/// (the header opened under `old` first): temporary file beside it, new
/// header, body copied unchanged (`copy_file_range`, so a reflink or an
/// in-kernel copy where the file system can), fsync, rename, fsync of the
/// directory. `after` runs after each step (tests inject failures there).
fn rewrap_file(
    path: &Path,
    old: &ModelKey,
    new: &ModelKey,
    after: &dyn Fn(RewrapStep) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let mut src = File::open(path).map_err(|e| io_failure(path, &e))?;
    let meta = src.metadata().map_err(|e| io_failure(path, &e))?;
    let header = Header::read_from(&mut src).map_err(|e| model_failure(path, &e))?;
    let rewrapped = header.rewrap(old, new).map_err(|e| model_failure(path, &e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".kbs-rewrap-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| io_failure(&dir, &e))?;
    let mut out = temp.as_file();
    out.write_all(&rewrapped.to_bytes()).map_err(|e| io_failure(temp.path(), &e))?;
    let copied = std::io::copy(&mut src, &mut out).map_err(|e| io_failure(temp.path(), &e))?;
    let expected = meta.len().saturating_sub(header.encoded_len() as u64);
    if copied != expected {
        return Err(Failure::Usage(format!("{}: changed while it was being rewrapped", path.display())));
    }
    std::fs::set_permissions(temp.path(), meta.permissions()).map_err(|e| io_failure(temp.path(), &e))?;
    after(RewrapStep::Written).map_err(|e| io_failure(temp.path(), &e))?;
    temp.as_file().sync_all().map_err(|e| io_failure(temp.path(), &e))?;
    after(RewrapStep::Synced).map_err(|e| io_failure(temp.path(), &e))?;
    temp.persist(path).map_err(|e| io_failure(path, &e.error))?;
    after(RewrapStep::Renamed).map_err(|e| io_failure(path, &e))?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io_failure(&dir, &e))?;
    Ok(())
}

/// What a rewrap does to one file.
enum RewrapPlan {
    /// Rewrap from the old key to the new one.
    Rewrap(ModelKey, ModelKey),
    /// Already at the new version under the new key (an earlier run).
    Done(ModelKey),
}

fn rewrap(args: &RewrapArgs, output: Output) -> Result<(), Failure> {
    rewrap_with(args, output, &|_| Ok(()))
}

fn rewrap_with(
    args: &RewrapArgs,
    output: Output,
    after: &dyn Fn(RewrapStep) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let old_bytes = read_key_file(&args.key_file)?;
    let new_bytes = read_key_file(&args.new_key_file)?;
    let mut files = Vec::new();
    for root in &args.paths {
        files.extend(walk(root)?.into_iter().map(|(p, _)| p));
    }
    // Check every file first, so a wrong key changes nothing.
    let mut plan = Vec::with_capacity(files.len());
    for path in &files {
        let mut file = File::open(path).map_err(|e| io_failure(path, &e))?;
        let header = Header::read_from(&mut file).map_err(|e| model_failure(path, &e))?;
        let new = ModelKey::new(header.secret_name(), args.to_version, new_bytes.as_slice())
            .map_err(|e| Failure::Usage(chain(&e)))?;
        if header.secret_version() == args.to_version && header.unlock(&new).is_ok() {
            plan.push((path, RewrapPlan::Done(new)));
            continue;
        }
        let old = ModelKey::new(header.secret_name(), header.secret_version(), old_bytes.as_slice())
            .map_err(|e| Failure::Usage(chain(&e)))?;
        header.unlock(&old).map_err(|e| model_failure(path, &e))?;
        plan.push((path, RewrapPlan::Rewrap(old, new)));
    }
    let mut done = Vec::with_capacity(plan.len());
    for (path, step) in &plan {
        let (new, verb) = match step {
            RewrapPlan::Rewrap(old, new) => {
                tokio::task::block_in_place(|| rewrap_file(path, old, new, after))?;
                (new, "rewrapped")
            }
            RewrapPlan::Done(new) => (new, "already at"),
        };
        done.push(serde_json::json!({
            "file": path, "secret": new.name(), "version": new.version(), "changed": verb == "rewrapped",
        }));
        if output == Output::Table {
            outln!("{verb} {} {} version {}", path.display(), new.name(), new.version());
        }
    }
    if output == Output::Json {
        outln!("{}", serde_json::Value::Array(done));
    }
    Ok(())
}

fn inspect(paths: &[PathBuf], output: Output) -> Result<(), Failure> {
    let (rows, bad) = inspect_rows(paths)?;
    print_inspection(&rows, output);
    if bad > 0 {
        return Err(Failure::Refused(format!("{bad} file(s) are not valid encrypted model files")));
    }
    Ok(())
}

/// One row per file (header fields, tensors, status) and the number of
/// files that are not valid; no key is used.
fn inspect_rows(paths: &[PathBuf]) -> Result<(Vec<serde_json::Value>, usize), Failure> {
    let mut rows = Vec::new();
    let mut bad = 0usize;
    for root in paths {
        for (path, _) in walk(root)? {
            let mut file = File::open(&path).map_err(|e| io_failure(&path, &e))?;
            let size = file.metadata().map_err(|e| io_failure(&path, &e))?.len();
            let row = match Header::read_from(&mut file) {
                Ok(h) => {
                    let expected = h.file_len().unwrap_or(0);
                    let status = match size.cmp(&expected) {
                        std::cmp::Ordering::Equal => "ok".to_owned(),
                        std::cmp::Ordering::Less => format!("truncated ({expected} bytes expected)"),
                        std::cmp::Ordering::Greater => format!("trailing data ({expected} bytes expected)"),
                    };
                    if status != "ok" {
                        bad += 1;
                    }
                    let mut row = serde_json::json!({
                        "file": path, "status": status, "format_version": model::FORMAT_VERSION,
                        "flags": h.flags(), "secret": h.secret_name(), "version": h.secret_version(),
                        "chunk_size": h.chunk_size(), "chunks": h.chunk_count(),
                        "plaintext_bytes": h.plaintext_len(), "file_bytes": size,
                        "layout": if h.tensor_index().is_some() { "safetensors" } else { "whole" },
                    });
                    if let (Some(index), Some(fields)) = (h.tensor_index(), row.as_object_mut()) {
                        let tensors = index
                            .tensors()
                            .iter()
                            .map(|t| {
                                serde_json::json!({
                                    "name": t.name(), "dtype": t.dtype().as_str(), "shape": t.shape(),
                                    "bytes": t.len(),
                                })
                            })
                            .collect();
                        fields.insert("tensors".into(), tensors);
                        fields.insert("metadata".into(), serde_json::json!(index.metadata()));
                    }
                    row
                }
                Err(e) => {
                    bad += 1;
                    serde_json::json!({ "file": path, "status": chain(&e), "file_bytes": size })
                }
            };
            rows.push(row);
        }
    }
    Ok((rows, bad))
}

fn print_inspection(rows: &[serde_json::Value], output: Output) {
    if output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else {
        outln!("{:<40} {:<28} {:>7} {:>12} {:>9} STATUS", "FILE", "SECRET", "VERSION", "PLAINTEXT", "CHUNK");
        for r in rows {
            outln!(
                "{:<40} {:<28} {:>7} {:>12} {:>9} {}",
                r["file"].as_str().unwrap_or_default(),
                r["secret"].as_str().unwrap_or("-"),
                r["version"].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                r["plaintext_bytes"].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                r["chunk_size"].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                r["status"].as_str().unwrap_or_default(),
            );
            for t in r["tensors"].as_array().into_iter().flatten() {
                let shape: Vec<String> = t["shape"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| d.as_u64().unwrap_or_default().to_string())
                    .collect();
                outln!(
                    "  {:<48} {:<8} [{}] {} bytes",
                    t["name"].as_str().unwrap_or_default(),
                    t["dtype"].as_str().unwrap_or_default(),
                    shape.join(", "),
                    t["bytes"].as_u64().unwrap_or_default(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A small safetensors file: two F32 tensors and an empty one.
    fn safetensors_plain() -> Vec<u8> {
        let json = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,1500],"data_offsets":[0,12000]},"b":{"dtype":"F16","shape":[0],"data_offsets":[12000,12000]},"c":{"dtype":"U8","shape":[7],"data_offsets":[12000,12007]}}"#;
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend((0..12007u32).map(|i| (i % 251) as u8));
        out
    }

    fn encrypt_file(path: &Path, plain: &[u8], key: &ModelKey, layout: Layout) {
        let src = path.with_extension("plain");
        std::fs::write(&src, plain).unwrap();
        let opts = EncryptOptions { chunk_size: 4096, threads: 2 };
        let pending = encrypt_one(&src, path, key, &opts, layout).unwrap();
        pending.temp.persist(path).unwrap();
        std::fs::remove_file(src).unwrap();
    }

    fn decrypts_to(path: &Path, key: &ModelKey, plain: &[u8]) -> bool {
        let mut out = Vec::new();
        model::decrypt(&mut Cursor::new(std::fs::read(path).unwrap()), &mut out, key).is_ok() && out == plain
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn safetensors_files_get_the_tensor_layout_and_inspect_lists_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let key = ModelKey::new("m/k", 1, &[7; 32]).unwrap();
        let plain = safetensors_plain();
        let path = dir.path().join("model.safetensors");
        encrypt_file(&path, &plain, &key, Layout::Safetensors);
        assert!(decrypts_to(&path, &key, &plain));
        let (rows, bad) = inspect_rows(std::slice::from_ref(&path)).unwrap();
        assert_eq!(bad, 0);
        let row = &rows[0];
        assert_eq!(row["layout"], "safetensors");
        assert_eq!(row["status"], "ok");
        assert_eq!(row["metadata"]["format"], "pt");
        let tensors: Vec<_> = row["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (t["name"].as_str().unwrap(), t["dtype"].as_str().unwrap(), t["shape"].clone(), t["bytes"].clone())
            })
            .collect();
        assert_eq!(
            tensors,
            vec![
                ("a", "F32", serde_json::json!([2, 1500]), serde_json::json!(12000)),
                ("b", "F16", serde_json::json!([0]), serde_json::json!(0)),
                ("c", "U8", serde_json::json!([7]), serde_json::json!(7)),
            ]
        );
        // A malformed safetensors file is refused, with the way out named.
        let bad_src = dir.path().join("bad.safetensors.plain");
        let mut broken = plain.clone();
        broken[8] = b'[';
        std::fs::write(&bad_src, &broken).unwrap();
        let opts = EncryptOptions { chunk_size: 4096, threads: 1 };
        let err =
            encrypt_one(&bad_src, &dir.path().join("bad.safetensors"), &key, &opts, Layout::Safetensors).err().unwrap();
        assert!(matches!(&err, Failure::Refused(m) if m.contains("--whole")), "{err:?}");
        assert!(is_safetensors(Path::new("x/Model.SafeTensors")) && !is_safetensors(Path::new("x.bin")));
    }

    /// Encrypts a safetensors file and a plain file under version 1, with
    /// key files for versions 1 (old) and 2 (new).
    /// The working directory, the arguments, the old and new keys, and the
    /// encrypted files with their plaintexts.
    type RewrapSetup = (tempfile::TempDir, RewrapArgs, [ModelKey; 2], Vec<(PathBuf, Vec<u8>)>);

    fn rewrap_setup() -> RewrapSetup {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir(&models).unwrap();
        let old = ModelKey::new("m/k", 1, &[7; 32]).unwrap();
        let new = ModelKey::new("m/k", 2, &[8; 32]).unwrap();
        let files = vec![
            (models.join("a.safetensors"), safetensors_plain()),
            (models.join("b.bin"), (0..10_000u32).map(|i| (i % 13) as u8).collect()),
        ];
        encrypt_file(&files[0].0, &files[0].1, &old, Layout::Safetensors);
        encrypt_file(&files[1].0, &files[1].1, &old, Layout::Whole);
        std::fs::write(dir.path().join("old.key"), [7u8; 32]).unwrap();
        std::fs::write(dir.path().join("new.key"), [8u8; 32]).unwrap();
        let args = RewrapArgs {
            key_file: dir.path().join("old.key"),
            new_key_file: dir.path().join("new.key"),
            to_version: 2,
            paths: vec![models],
        };
        (dir, args, [old, new], files)
    }

    #[test]
    fn rewrap_replaces_each_file_and_can_be_rerun() {
        let (_dir, args, [old, new], files) = rewrap_setup();
        rewrap_with(&args, Output::Json, &|_| Ok(())).unwrap();
        for (path, plain) in &files {
            assert!(decrypts_to(path, &new, plain), "{}", path.display());
            assert!(!decrypts_to(path, &old, plain));
        }
        // A second run finds everything done and changes nothing.
        let before: Vec<_> = files.iter().map(|(p, _)| std::fs::read(p).unwrap()).collect();
        rewrap_with(&args, Output::Json, &|_| Ok(())).unwrap();
        let after: Vec<_> = files.iter().map(|(p, _)| std::fs::read(p).unwrap()).collect();
        assert_eq!(before, after);
        assert_eq!(names_in(args.paths[0].as_path()), vec!["a.safetensors", "b.bin"]);
    }

    #[test]
    fn an_interrupted_rewrap_leaves_a_decryptable_file() {
        for crash in [RewrapStep::Written, RewrapStep::Synced, RewrapStep::Renamed] {
            let (_dir, args, [old, new], files) = rewrap_setup();
            let inject = |step: RewrapStep| {
                if step == crash { Err(std::io::Error::other("injected crash")) } else { Ok(()) }
            };
            let err = rewrap_with(&args, Output::Json, &inject).err();
            assert!(err.is_some(), "{crash:?}");
            // The first file is whole: the old one before the rename, the
            // new one after; the second was not touched.
            let (first, plain) = &files[0];
            let expect = if crash == RewrapStep::Renamed { &new } else { &old };
            assert!(decrypts_to(first, expect, plain), "{crash:?}");
            assert!(decrypts_to(&files[1].0, &old, &files[1].1), "{crash:?}");
            // No temporary file is left behind, and a rerun completes.
            assert_eq!(names_in(args.paths[0].as_path()), vec!["a.safetensors", "b.bin"], "{crash:?}");
            rewrap_with(&args, Output::Json, &|_| Ok(())).unwrap();
            for (path, plain) in &files {
                assert!(decrypts_to(path, &new, plain), "{crash:?} {}", path.display());
            }
        }
    }

    #[test]
    fn a_leftover_temporary_file_is_skipped() {
        let (_dir, args, [_, new], files) = rewrap_setup();
        let leftover = args.paths[0].join(".kbs-rewrap-abc123.tmp");
        std::fs::write(&leftover, b"half a file").unwrap();
        let listed: Vec<_> = walk(&args.paths[0]).unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(listed, vec![PathBuf::from("a.safetensors"), PathBuf::from("b.bin")]);
        rewrap_with(&args, Output::Json, &|_| Ok(())).unwrap();
        assert!(decrypts_to(&files[0].0, &new, &files[0].1));
        assert!(is_leftover(std::ffi::OsStr::new(".kbs-model-x.tmp")) && !is_leftover(std::ffi::OsStr::new("a.tmp")));
    }

    #[test]
    fn walk_lists_files_relative_and_refuses_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/w.bin"), b"1").unwrap();
        std::fs::write(dir.path().join("top.json"), b"2").unwrap();
        let files = walk(dir.path()).unwrap();
        let rels: Vec<_> = files.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(rels, vec![PathBuf::from("a/b/w.bin"), PathBuf::from("top.json")]);
        let single = walk(&dir.path().join("top.json")).unwrap();
        assert_eq!(single[0].1, PathBuf::new());
        std::os::unix::fs::symlink("top.json", dir.path().join("link")).unwrap();
        assert!(walk(dir.path()).is_err());
    }
}

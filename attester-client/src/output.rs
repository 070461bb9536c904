//! Writing released secrets to a directory, all or nothing.
//!
//! Each secret `NAME` becomes the file `DIR/NAME`, mode 0400. Names may
//! contain `/` (`repo/type/tag`); the intermediate directories are created
//! with mode 0700. Names with `..`, `.`, empty components, a leading `/` or
//! NUL bytes are refused, as are existing symlinks on the way, so nothing is
//! ever written outside `DIR`.
//!
//! The write is atomic per file and all-or-nothing for the set:
//! 1. every name is checked, and no two targets may collide (`a` and `a/b`);
//! 2. every value goes to a fresh temporary file next to its target
//!    (`create_new`, mode 0600, written, set to 0400, fsynced);
//! 3. only when all are staged are they renamed into place, and the
//!    directories are fsynced.
//!
//! If anything fails before the renames, every temporary file and every
//! directory this call created is removed and no target is touched. A rename
//! can only fail after the checks in step 1 if the directory changes under
//! us; then the files already renamed are removed again, so the set is still
//! never half-written (a previous value at such a path is lost).

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::client::ReleasedSecret;

/// Mode of the written secret files.
pub const FILE_MODE: u32 = 0o400;
/// Mode of directories created for names with `/`.
pub const DIR_MODE: u32 = 0o700;

/// What can go wrong writing secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The secret name cannot be used as a path below the output directory.
    #[error("secret name {name:?} cannot be written as a file: {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why not.
        why: &'static str,
    },
    /// Two names would write to the same path, or one inside the other.
    #[error("secret names {first:?} and {second:?} collide as paths")]
    Collision {
        /// One name.
        first: String,
        /// The other.
        second: String,
    },
    /// Something in the way is not a plain directory or file.
    #[error("{path} is in the way (symlink or wrong file type)")]
    InTheWay {
        /// The path.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes every secret to `dir/NAME`, atomically and all or nothing (see the
/// module docs). `dir` is created (mode 0700) if missing. Returns the paths
/// written, in input order.
pub fn write_secrets(dir: &Path, secrets: &[ReleasedSecret]) -> Result<Vec<PathBuf>, Error> {
    let relative = plan(secrets)?;
    let mut txn = Transaction::default();
    match txn.stage(dir, secrets, &relative).and_then(|()| txn.commit()) {
        Ok(paths) => Ok(paths),
        Err(e) => {
            txn.roll_back();
            Err(e)
        }
    }
}

/// Checks every name and that no two targets collide.
fn plan(secrets: &[ReleasedSecret]) -> Result<Vec<PathBuf>, Error> {
    let mut files: Vec<(PathBuf, &str)> = Vec::with_capacity(secrets.len());
    for secret in secrets {
        files.push((relative_path(&secret.name)?, &secret.name));
    }
    let targets: HashSet<&Path> = files.iter().map(|(p, _)| p.as_path()).collect();
    for (i, (path, name)) in files.iter().enumerate() {
        // The same path twice, or a file where another needs a directory.
        let clash = files.iter().enumerate().find(|(j, (other, _))| *j != i && other == path);
        let parent_clash = path.ancestors().skip(1).find(|a| targets.contains(a));
        if let Some((_, (_, other))) = clash {
            return Err(Error::Collision { first: (*name).to_owned(), second: (*other).to_owned() });
        }
        if let Some(ancestor) = parent_clash {
            let other = files.iter().find(|(p, _)| p == ancestor).map_or("", |(_, n)| n);
            return Err(Error::Collision { first: other.to_owned(), second: (*name).to_owned() });
        }
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// The relative path for a secret name, refusing anything that could leave
/// the output directory or is ambiguous.
fn relative_path(name: &str) -> Result<PathBuf, Error> {
    let invalid = |why| Error::InvalidName { name: name.to_owned(), why };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    if name.starts_with('/') {
        return Err(invalid("it is an absolute path"));
    }
    let mut path = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" => return Err(invalid("it has an empty path component")),
            "." | ".." => return Err(invalid("it has a '.' or '..' component")),
            _ => path.push(part),
        }
    }
    // Belt and braces: what `Path` itself makes of it must be plain names.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(invalid("it is not a plain relative path"));
    }
    Ok(path)
}

/// Files and directories made so far, to commit or undo.
#[derive(Default)]
struct Transaction {
    /// Directories this call created, parents first.
    created_dirs: Vec<PathBuf>,
    /// (temporary file, final path), in input order.
    staged: Vec<(PathBuf, PathBuf)>,
    /// Final paths already renamed into place.
    renamed: Vec<PathBuf>,
}

impl Transaction {
    fn stage(&mut self, dir: &Path, secrets: &[ReleasedSecret], relative: &[PathBuf]) -> Result<(), Error> {
        self.ensure_dir(dir)?;
        for (secret, rel) in secrets.iter().zip(relative) {
            let target = dir.join(rel);
            let parent = target.parent().unwrap_or(dir).to_path_buf();
            // Each component below `dir` must be ours to use: a real
            // directory, or missing (then we create it).
            let mut walk = dir.to_path_buf();
            for part in rel.parent().into_iter().flat_map(Path::components) {
                walk.push(part);
                self.ensure_dir(&walk)?;
            }
            match fs::symlink_metadata(&target) {
                Ok(meta) if !meta.file_type().is_file() => {
                    return Err(Error::InTheWay { path: target });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(io("inspect", &target, source)),
            }
            let temp = write_temp(&parent, &target, &secret.value)?;
            self.staged.push((temp, target));
        }
        Ok(())
    }

    /// Makes sure `path` is a real directory, creating it (mode 0700) if
    /// missing.
    fn ensure_dir(&mut self, path: &Path) -> Result<(), Error> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_dir() => Ok(()),
            Ok(_) => Err(Error::InTheWay { path: path.to_path_buf() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    self.ensure_dir(parent)?;
                }
                DirBuilder::new().mode(DIR_MODE).create(path).map_err(|source| io("create directory", path, source))?;
                self.created_dirs.push(path.to_path_buf());
                Ok(())
            }
            Err(source) => Err(io("inspect", path, source)),
        }
    }

    fn commit(&mut self) -> Result<Vec<PathBuf>, Error> {
        let staged = std::mem::take(&mut self.staged);
        let mut rest = staged.into_iter();
        while let Some((temp, target)) = rest.next() {
            if let Err(source) = fs::rename(&temp, &target) {
                // Put the unrenamed temporaries back for the roll-back.
                self.staged.push((temp, PathBuf::new()));
                self.staged.extend(rest);
                return Err(io("rename into place", &target, source));
            }
            self.renamed.push(target);
        }
        // Make the renames durable: sync every directory that received one.
        let mut synced = HashSet::new();
        for target in &self.renamed {
            if let Some(parent) = target.parent()
                && synced.insert(parent.to_path_buf())
            {
                File::open(parent).and_then(|d| d.sync_all()).map_err(|source| io("sync directory", parent, source))?;
            }
        }
        Ok(std::mem::take(&mut self.renamed))
    }

    /// Removes everything this call wrote. Best effort: it runs on an error
    /// path and reports nothing more.
    fn roll_back(&mut self) {
        for (temp, _) in self.staged.drain(..) {
            let _ = fs::remove_file(temp);
        }
        for target in self.renamed.drain(..) {
            let _ = fs::remove_file(target);
        }
        // Children before parents; `remove_dir` only removes empty ones, so
        // anything that was there before survives.
        for dir in self.created_dirs.drain(..).rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Writes `value` to a new temporary file in `parent` and makes it
/// durable and read-only.
fn write_temp(parent: &Path, target: &Path, value: &[u8]) -> Result<PathBuf, Error> {
    let mut suffix = [0u8; 8];
    OsRng.try_fill_bytes(&mut suffix).map_err(|e| io("draw a name in", parent, std::io::Error::other(e)))?;
    let base = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = parent.join(format!(".{base}.tmp-{}", hex::encode(suffix)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|source| io("create", &temp, source))?;
    let result = file
        .write_all(value)
        .map_err(|source| io("write", &temp, source))
        .and_then(|()| {
            file.set_permissions(Permissions::from_mode(FILE_MODE))
                .map_err(|source| io("set permissions of", &temp, source))
        })
        .and_then(|()| file.sync_all().map_err(|source| io("sync", &temp, source)));
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { op, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use zeroize::Zeroizing;

    fn secret(name: &str, value: &[u8]) -> ReleasedSecret {
        ReleasedSecret { name: name.into(), version: 1, value: Zeroizing::new(value.to_vec()) }
    }

    /// Every entry below `dir`, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    walk(base, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_nested_names_read_only() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("secrets");
        let paths = write_secrets(
            &out,
            &[secret("models/llama/key", b"k1"), secret("plain", b"v2"), secret("models/other", b"v3")],
        )
        .unwrap();
        assert_eq!(paths[0], out.join("models/llama/key"));
        assert_eq!(fs::read(out.join("models/llama/key")).unwrap(), b"k1");
        assert_eq!(fs::read(out.join("plain")).unwrap(), b"v2");
        assert_eq!(fs::read(out.join("models/other")).unwrap(), b"v3");
        assert_eq!(mode(&out.join("plain")), 0o400);
        assert_eq!(mode(&out.join("models/llama/key")), 0o400);
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join("models/llama")), 0o700);
        assert_eq!(
            tree(&out),
            vec!["models", "models/llama", "models/llama/key", "models/other", "plain"],
            "no temporary files left"
        );
    }

    #[test]
    fn replaces_a_previous_value() {
        let out = tempfile::tempdir().unwrap();
        write_secrets(out.path(), &[secret("k", b"old")]).unwrap();
        write_secrets(out.path(), &[secret("k", b"new")]).unwrap();
        assert_eq!(fs::read(out.path().join("k")).unwrap(), b"new");
        assert_eq!(tree(out.path()), vec!["k"]);
    }

    #[test]
    fn refuses_names_that_escape_or_are_ambiguous() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/", "./a", "a/.", "a\0b"] {
            let out = tempfile::tempdir().unwrap();
            let err = write_secrets(out.path(), &[secret("ok", b"1"), secret(bad, b"2")]).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err}");
            assert!(tree(out.path()).is_empty(), "{bad:?} wrote something");
        }
    }

    #[test]
    fn refuses_colliding_names() {
        let out = tempfile::tempdir().unwrap();
        let err = write_secrets(out.path(), &[secret("a", b"1"), secret("a/b", b"2")]).unwrap_err();
        assert!(matches!(err, Error::Collision { .. }), "{err}");
        let err = write_secrets(out.path(), &[secret("a/b", b"1"), secret("a", b"2")]).unwrap_err();
        assert!(matches!(err, Error::Collision { .. }), "{err}");
        let err = write_secrets(out.path(), &[secret("x", b"1"), secret("x", b"2")]).unwrap_err();
        assert!(matches!(err, Error::Collision { .. }), "{err}");
        assert!(tree(out.path()).is_empty());
    }

    #[test]
    fn a_late_failure_writes_nothing_and_removes_created_directories() {
        let out = tempfile::tempdir().unwrap();
        // The second secret's parent is a file: staging fails after the
        // first secret and its directories were already staged.
        fs::write(out.path().join("blocker"), b"x").unwrap();
        let err =
            write_secrets(out.path(), &[secret("new/dir/first", b"1"), secret("blocker/second", b"2")]).unwrap_err();
        assert!(matches!(err, Error::InTheWay { .. }), "{err}");
        assert_eq!(tree(out.path()), vec!["blocker"]);
    }

    #[test]
    fn a_target_that_is_a_directory_fails_before_any_rename() {
        let out = tempfile::tempdir().unwrap();
        fs::create_dir(out.path().join("taken")).unwrap();
        let err = write_secrets(out.path(), &[secret("first", b"1"), secret("taken", b"2")]).unwrap_err();
        assert!(matches!(err, Error::InTheWay { .. }), "{err}");
        assert_eq!(tree(out.path()), vec!["taken"]);
    }

    #[test]
    fn does_not_follow_symlinks() {
        let out = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        symlink(elsewhere.path(), out.path().join("link")).unwrap();
        let err = write_secrets(out.path(), &[secret("link/x", b"1")]).unwrap_err();
        assert!(matches!(err, Error::InTheWay { .. }), "{err}");
        symlink(elsewhere.path().join("target"), out.path().join("file")).unwrap();
        let err = write_secrets(out.path(), &[secret("file", b"1")]).unwrap_err();
        assert!(matches!(err, Error::InTheWay { .. }), "{err}");
        assert!(tree(elsewhere.path()).is_empty());
    }

    #[test]
    fn a_failed_rename_rolls_back_the_renamed_files() {
        let out = tempfile::tempdir().unwrap();
        let mut txn = Transaction::default();
        let secrets = [secret("a", b"1"), secret("b", b"2")];
        let plan = plan(&secrets).unwrap();
        txn.stage(out.path(), &secrets, &plan).unwrap();
        // Simulate the directory changing between staging and commit.
        fs::create_dir(out.path().join("b")).unwrap();
        fs::write(out.path().join("b/occupied"), b"x").unwrap();
        let err = txn.commit().unwrap_err();
        txn.roll_back();
        assert!(matches!(err, Error::Io { op: "rename into place", .. }), "{err}");
        assert_eq!(tree(out.path()), vec!["b", "b/occupied"]);
    }
}

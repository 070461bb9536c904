//! The GPU reference-value directory (`[gpu] rim_dir`): reading it into a
//! [`RimStore`] at start-up, and importing verified RIMs into it
//! (`kbsctl gpu rim import`).
//!
//! This module only does the file I/O around [`rim::verify_rim`]: every RIM
//! file (`*.xml`, `*.swidtag`; other names, such as an import's temporary
//! files, are not read) is verified when the directory is loaded, and one
//! that does not verify refuses the whole directory, naming the file. An
//! import verifies a RIM before it writes it, atomically, under a name
//! made from the version it describes (`<version>.xml`), so the directory
//! holds one RIM per version, as the store does.

use std::path::{Path, PathBuf};

use super::gpu::rim::{self, Rim, RimCheck, RimError, RimStore};

/// Most RIM files a directory may hold.
pub const MAX_RIM_FILES: usize = 4096;

/// Why a RIM directory or file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RimDirError {
    /// A file or the directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file is not a RIM that verifies (or conflicts with another).
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: RimError,
    },
    /// The directory holds more than [`MAX_RIM_FILES`] RIM files.
    #[error("{path}: more than {MAX_RIM_FILES} RIM files")]
    TooMany {
        /// The directory.
        path: PathBuf,
    },
    /// A different RIM for the same version is already in the directory.
    #[error("{path} already holds another RIM for version {version}; remove it first to replace it")]
    Conflict {
        /// The file in the way.
        path: PathBuf,
        /// The version.
        version: String,
    },
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// Written to this file.
    Written(PathBuf),
    /// The same bytes were already in this file.
    Unchanged(PathBuf),
}

/// Whether `path` names a RIM file.
fn is_rim_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "xml" || e == "swidtag")
}

/// The RIM files of `dir`, sorted.
pub fn rim_files(dir: &Path) -> Result<Vec<PathBuf>, RimDirError> {
    let io = |source| RimDirError::Io { path: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_type().map_err(io)?.is_file() && is_rim_file(&path) {
            if files.len() >= MAX_RIM_FILES {
                return Err(RimDirError::TooMany { path: dir.to_owned() });
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads a file of at most [`rim::MAX_RIM_LEN`] bytes.
pub fn read_rim_file(path: &Path) -> Result<Vec<u8>, RimDirError> {
    use std::io::Read as _;
    let io = |source| RimDirError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let cap = u64::try_from(rim::MAX_RIM_LEN).unwrap_or(u64::MAX).saturating_add(1);
    let mut bytes = Vec::new();
    file.take(cap).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() > rim::MAX_RIM_LEN {
        return Err(RimDirError::Invalid { path: path.to_owned(), source: RimError::TooLarge(bytes.len()) });
    }
    Ok(bytes)
}

/// Verifies every RIM file of `dir` under `check` into a store; the first
/// that does not verify, or that gives a version a second, different RIM,
/// refuses the directory.
pub fn load_rim_dir(dir: &Path, check: &RimCheck<'_>) -> Result<RimStore, RimDirError> {
    let mut store = RimStore::default();
    for path in rim_files(dir)? {
        let bytes = read_rim_file(&path)?;
        store.add(&bytes, check).map_err(|source| RimDirError::Invalid { path: path.clone(), source })?;
    }
    Ok(store)
}

/// The file name a RIM is imported under: its version, with anything but
/// ASCII letters, digits, `.`, `-` and `_` replaced by `_`, then `.xml`.
pub fn file_name_for(rim: &Rim) -> String {
    let stem: String = rim
        .version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    // Never hidden, never empty.
    format!("rim-{stem}.xml")
}

/// Verifies `xml` under `check`, then writes it into `dir` atomically
/// (temporary file, flushed, renamed) as [`file_name_for`] names it. The
/// same RIM imported again changes nothing; a different RIM for a version
/// already present is refused.
pub fn import_rim(dir: &Path, source: &Path, xml: &[u8], check: &RimCheck<'_>) -> Result<(Rim, Imported), RimDirError> {
    let rim = rim::verify_rim(xml, check).map_err(|e| RimDirError::Invalid { path: source.to_owned(), source: e })?;
    let target = dir.join(file_name_for(&rim));
    match std::fs::read(&target) {
        Ok(existing) if existing == xml => return Ok((rim, Imported::Unchanged(target))),
        Ok(_) => return Err(RimDirError::Conflict { path: target, version: rim.version }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(RimDirError::Io { path: target, source }),
    }
    write_atomic(&target, xml)?;
    Ok((rim, Imported::Written(target)))
}

fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), RimDirError> {
    use std::io::Write as _;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RimDirError::Io { path, source }
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A hidden name without the RIM extension: never read as a RIM.
    let tmp = target.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, target).map_err(io(target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::gpu::GpuAnchors;

    fn test_anchors() -> GpuAnchors {
        let pem = attester_client::simulated::gpu_test_rim_root_pem();
        let der = crate::evidence::gpu::chain::pem_chain(pem.as_bytes()).unwrap().remove(0);
        let mut anchors = GpuAnchors::empty();
        anchors.add_root(&der).unwrap();
        anchors
    }

    #[test]
    fn a_directory_loads_only_when_every_rim_verifies() {
        let anchors = test_anchors();
        let check = RimCheck { anchors: &anchors, now: time::OffsetDateTime::now_utc(), accept_expired: false };
        let dir = tempfile::tempdir().unwrap();
        let [driver, vbios] = attester_client::simulated::simulated_gpu_rims().unwrap();
        for rim in [&driver, &vbios] {
            let (verified, outcome) = import_rim(dir.path(), Path::new("in"), rim.xml.as_bytes(), &check).unwrap();
            assert_eq!(verified.version, rim.version);
            assert!(matches!(outcome, Imported::Written(_)), "{outcome:?}");
        }
        // Again: unchanged. Files of other names are not read.
        let (_, again) = import_rim(dir.path(), Path::new("in"), driver.xml.as_bytes(), &check).unwrap();
        assert_eq!(again, Imported::Unchanged(dir.path().join("rim-570.124.06.xml")));
        std::fs::write(dir.path().join("notes.txt"), "not a RIM").unwrap();
        let store = load_rim_dir(dir.path(), &check).unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.get(attester_client::simulated::SIMULATED_VBIOS_VERSION).is_some());

        // Under NVIDIA's RIM root only: the first file is named.
        let nvidia = GpuAnchors::nvidia_rim().unwrap();
        let production = RimCheck { anchors: &nvidia, ..check };
        let err = load_rim_dir(dir.path(), &production).unwrap_err();
        assert!(err.to_string().contains("rim-570.124.06.xml"), "{err}");
        assert!(matches!(err, RimDirError::Invalid { source: RimError::ChainInvalid(_), .. }), "{err}");

        // A tampered file refuses the directory, naming it.
        let tampered = vbios.xml.replacen("active=\"True\"", "active=\"False\"", 1);
        std::fs::write(dir.path().join("zz.xml"), &tampered).unwrap();
        let err = load_rim_dir(dir.path(), &check).unwrap_err();
        assert!(err.to_string().contains("zz.xml"), "{err}");
        // ... and is never imported.
        let err = import_rim(dir.path(), Path::new("zz.xml"), tampered.as_bytes(), &check).unwrap_err();
        assert!(matches!(err, RimDirError::Invalid { source: RimError::DigestMismatch, .. }), "{err}");
        assert!(err.to_string().contains("zz.xml"), "{err}");
    }

    #[test]
    fn file_names_come_from_the_version() {
        let [driver, _] = attester_client::simulated::simulated_gpu_rims().unwrap();
        let anchors = test_anchors();
        let check = RimCheck { anchors: &anchors, now: time::OffsetDateTime::now_utc(), accept_expired: false };
        let mut rim = rim::verify_rim(driver.xml.as_bytes(), &check).unwrap();
        assert_eq!(file_name_for(&rim), "rim-570.124.06.xml");
        rim.version = "../../etc/x y".into();
        assert_eq!(file_name_for(&rim), "rim-.._.._etc_x_y.xml");
    }
}

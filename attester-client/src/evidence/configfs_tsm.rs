//! SEV-SNP and TDX evidence through the Linux configfs-tsm report interface
//! (`Documentation/ABI/testing/configfs-tsm`, Linux >= 6.7).
//!
//! One request uses one fresh entry directory:
//! 1. `mkdir REPORT_DIR/<unique name>`; the kernel populates the attributes;
//! 2. `provider` must read `sev_guest` (SEV-SNP) or `tdx_guest` (TDX), as
//!    the source was built for;
//! 3. write the 64-byte `inblob` (the report_data); this is write number one
//!    to a fresh entry, so `generation` must then read 1;
//! 4. read `outblob` (the SNP report or the TDX quote) and, for SNP,
//!    `auxblob` (the certificate table, which may be empty or absent);
//! 5. `generation` must still read the same value: otherwise another process
//!    wrote to our entry in between and the report may not carry our data;
//! 6. `rmdir` the entry (also on every error path).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rand::TryRngCore;
use rand::rngs::OsRng;

use super::{
    Error, EvidenceSource, MAX_CERT_TABLE_LEN, MAX_TDX_QUOTE_LEN, SNP_REPORT_LEN, SnpEvidence, TdxEvidence, Tee,
};

/// Where the kernel exposes configfs-tsm reports.
pub const DEFAULT_TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// The provider name of the SEV-SNP guest driver.
const SNP_PROVIDER: &str = "sev_guest";

/// The provider name of the TDX guest driver.
const TDX_PROVIDER: &str = "tdx_guest";

/// Cap on small text attributes (`provider`, `generation`).
const MAX_TEXT_ATTR: usize = 64;

/// Cap on an SNP `outblob`: a report is 1184 bytes; anything much larger
/// is not one.
const MAX_OUTBLOB: usize = 16 * 1024;

/// An [`EvidenceSource`] backed by configfs-tsm, for one TEE (SEV-SNP
/// unless [`ConfigfsTsm::for_tee`] says otherwise).
#[derive(Clone, Debug)]
pub struct ConfigfsTsm {
    root: PathBuf,
    tee: Tee,
}

impl ConfigfsTsm {
    /// Uses the kernel's report directory, [`DEFAULT_TSM_REPORT_DIR`].
    pub fn new() -> Self {
        Self::with_root(DEFAULT_TSM_REPORT_DIR)
    }

    /// Uses another report directory (a different configfs mount point).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), tee: Tee::Snp }
    }

    /// Speaks for `tee` (`Tee::Snp` or `Tee::Tdx`).
    pub fn for_tee(mut self, tee: Tee) -> Self {
        self.tee = tee;
        self
    }

    /// Finds which TEE the kernel provides by reading `provider` from a
    /// fresh entry: `sev_guest` is SEV-SNP, `tdx_guest` is TDX.
    pub fn detect(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::TsmUnavailable { path: root });
        }
        let entry = Entry::create(&root)?;
        let provider = read_text(&entry.path.join("provider"))?;
        drop(entry);
        let tee = match provider.as_str() {
            SNP_PROVIDER => Tee::Snp,
            TDX_PROVIDER => Tee::Tdx,
            _ => return Err(Error::UnexpectedProvider { found: provider, expected: "sev_guest or tdx_guest" }),
        };
        Ok(Self { root, tee })
    }

    /// The provider this source expects.
    fn provider(&self) -> &'static str {
        if self.tee == Tee::Tdx { TDX_PROVIDER } else { SNP_PROVIDER }
    }

    /// The report directory in use.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The request sequence of the module docs. `populated` runs right after
    /// `mkdir`: the kernel fills a new entry with its attributes atomically, a
    /// plain directory in tests does not, so tests fill it there.
    fn request(
        &self,
        report_data: &[u8; 64],
        populated: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<(Vec<u8>, Vec<u8>), Error> {
        if !self.root.is_dir() {
            return Err(Error::TsmUnavailable { path: self.root.clone() });
        }
        let entry = Entry::create(&self.root)?;
        let dir = entry.path.as_path();
        populated(dir).map_err(|source| io("prepare", dir, source))?;

        let provider = read_text(&dir.join("provider"))?;
        if provider != self.provider() {
            return Err(Error::UnexpectedProvider { found: provider, expected: self.provider() });
        }

        let inblob = dir.join("inblob");
        fs::write(&inblob, report_data).map_err(|source| io("write", &inblob, source))?;
        let generation_path = dir.join("generation");
        let expected = read_generation(&generation_path)?;
        if expected != 1 {
            return Err(Error::GenerationRace { expected: 1, found: expected });
        }

        let outblob = dir.join("outblob");
        let tdx = self.tee == Tee::Tdx;
        let report = read_capped(&outblob, if tdx { MAX_TDX_QUOTE_LEN } else { MAX_OUTBLOB })?;
        let auxblob = dir.join("auxblob");
        let cert_table = if tdx {
            // The TDX quote carries its PCK chain; there is no auxblob.
            Vec::new()
        } else {
            match read_capped(&auxblob, MAX_CERT_TABLE_LEN) {
                Ok(bytes) => bytes,
                // Kernels or hosts without certificate support: the broker
                // then finds the VCEK itself.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            }
        };

        let found = read_generation(&generation_path)?;
        if found != expected {
            return Err(Error::GenerationRace { expected, found });
        }
        let size_ok = if tdx { !report.is_empty() } else { report.len() == SNP_REPORT_LEN };
        if !size_ok {
            return Err(Error::UnexpectedReportSize { found: report.len() });
        }
        drop(entry);
        Ok((report, cert_table))
    }
}

impl Default for ConfigfsTsm {
    fn default() -> Self {
        Self::new()
    }
}

impl EvidenceSource for ConfigfsTsm {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn snp_report(&self, report_data: &[u8; 64]) -> Result<SnpEvidence, Error> {
        if self.tee != Tee::Snp {
            return Err(Error::UnsupportedTee(Tee::Snp));
        }
        let (report, cert_table) = self.request(report_data, |_| Ok(()))?;
        Ok(SnpEvidence { report, cert_table })
    }

    fn tdx_quote(&self, report_data: &[u8; 64]) -> Result<TdxEvidence, Error> {
        if self.tee != Tee::Tdx {
            return Err(Error::UnsupportedTee(Tee::Tdx));
        }
        let (quote, _) = self.request(report_data, |_| Ok(()))?;
        Ok(TdxEvidence { quote })
    }
}

/// A report entry directory, removed when dropped.
struct Entry {
    path: PathBuf,
}

impl Entry {
    /// Makes a fresh entry with a unique name. `create_dir` fails if the name
    /// exists, so no other process's entry is ever reused.
    fn create(root: &Path) -> Result<Self, Error> {
        let mut suffix = [0u8; 8];
        OsRng.try_fill_bytes(&mut suffix).map_err(|e| io("draw a name under", root, std::io::Error::other(e)))?;
        let path = root.join(format!("kbs-attester-{}-{}", std::process::id(), hex::encode(suffix)));
        fs::create_dir(&path).map_err(|source| io("create", &path, source))?;
        Ok(Self { path })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // configfs removes the attributes with the directory. Failing to
        // remove it leaks one kernel object, not a secret: log and go on.
        if let Err(e) = fs::remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove configfs-tsm entry");
        }
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { op, path: path.to_path_buf(), source }
}

/// Reads a whole attribute, refusing more than `limit` bytes.
fn read_capped(path: &Path, limit: usize) -> Result<Vec<u8>, Error> {
    let file = fs::File::open(path).map_err(|source| io("open", path, source))?;
    let mut bytes = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(cap).read_to_end(&mut bytes).map_err(|source| io("read", path, source))?;
    if bytes.len() > limit {
        return Err(Error::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(bytes)
}

/// Reads a short text attribute without its trailing newline.
fn read_text(path: &Path) -> Result<String, Error> {
    let bytes = read_capped(path, MAX_TEXT_ATTR)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Malformed { path: path.to_path_buf() })?;
    Ok(text.trim_end().to_owned())
}

fn read_generation(path: &Path) -> Result<u64, Error> {
    read_text(path)?.parse().map_err(|_| Error::Malformed { path: path.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills an entry the way the kernel would after our inblob write.
    fn kernel_like(
        provider: &'static str,
        generation: &'static str,
        aux: Option<Vec<u8>>,
    ) -> impl FnOnce(&Path) -> std::io::Result<()> {
        move |dir| {
            fs::write(dir.join("provider"), format!("{provider}\n"))?;
            fs::write(dir.join("generation"), format!("{generation}\n"))?;
            fs::write(dir.join("outblob"), vec![0xAB; SNP_REPORT_LEN])?;
            if let Some(aux) = aux {
                fs::write(dir.join("auxblob"), aux)?;
            }
            Ok(())
        }
    }

    fn entries(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).collect()
    }

    #[test]
    fn reads_report_and_cert_table_from_a_fresh_entry() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::with_root(root.path());
        let report_data = [0x42u8; 64];
        let (report, cert_table) =
            tsm.request(&report_data, kernel_like("sev_guest", "1", Some(b"table".to_vec()))).unwrap();
        assert_eq!(report, vec![0xAB; SNP_REPORT_LEN]);
        assert_eq!(cert_table, b"table");

        // A plain directory keeps its files (configfs would drop them with
        // the rmdir), which lets the test see what was written.
        let made = entries(root.path());
        assert_eq!(made.len(), 1);
        let name = made[0].file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("kbs-attester-"));
        assert_eq!(fs::read(made[0].join("inblob")).unwrap(), report_data);
    }

    #[test]
    fn missing_auxblob_means_empty_cert_table() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::with_root(root.path());
        let (_, cert_table) = tsm.request(&[1u8; 64], kernel_like("sev_guest", "1", None)).unwrap();
        assert!(cert_table.is_empty());
    }

    #[test]
    fn refuses_other_providers() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::with_root(root.path());
        let err = tsm.request(&[1u8; 64], kernel_like("tdx_guest", "1", None)).unwrap_err();
        assert!(matches!(err, Error::UnexpectedProvider { ref found, .. } if found == "tdx_guest"));
        // A TDX source refuses the SNP driver, and reads a quote from the TDX one.
        let tdx = ConfigfsTsm::with_root(root.path()).for_tee(Tee::Tdx);
        let err = tdx.request(&[1u8; 64], kernel_like("sev_guest", "1", None)).unwrap_err();
        assert!(matches!(err, Error::UnexpectedProvider { expected: "tdx_guest", .. }));
        let (quote, aux) = tdx
            .request(&[1u8; 64], |dir| {
                kernel_like("tdx_guest", "1", Some(b"ignored".to_vec()))(dir)?;
                fs::write(dir.join("outblob"), vec![0x04; 5006])
            })
            .unwrap();
        assert_eq!(quote.len(), 5006);
        assert!(aux.is_empty());
        assert_eq!(tdx.tee(), Tee::Tdx);
        assert!(matches!(tdx.snp_report(&[0; 64]), Err(Error::UnsupportedTee(Tee::Snp))));
        assert!(matches!(tsm.tdx_quote(&[0; 64]), Err(Error::UnsupportedTee(Tee::Tdx))));
    }

    #[test]
    fn detects_a_concurrent_writer() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::with_root(root.path());
        let err = tsm.request(&[1u8; 64], kernel_like("sev_guest", "2", None)).unwrap_err();
        assert!(matches!(err, Error::GenerationRace { expected: 1, found: 2 }));
    }

    #[test]
    fn refuses_wrong_report_size_and_oversized_tables() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::with_root(root.path());
        let err = tsm
            .request(&[1u8; 64], |dir| {
                kernel_like("sev_guest", "1", None)(dir)?;
                fs::write(dir.join("outblob"), [0u8; 100])
            })
            .unwrap_err();
        assert!(matches!(err, Error::UnexpectedReportSize { found: 100 }));

        let big = vec![0u8; MAX_CERT_TABLE_LEN + 1];
        let err = tsm.request(&[1u8; 64], kernel_like("sev_guest", "1", Some(big))).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
    }

    #[test]
    fn removes_its_entry_on_error() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::with_root(root.path());
        // Nothing populated: reading `provider` fails, and the empty entry
        // directory must be gone afterwards.
        let err = tsm.request(&[1u8; 64], |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Io { op: "open", .. }));
        assert!(entries(root.path()).is_empty());
    }

    #[test]
    fn missing_configfs_is_reported_as_such() {
        let root = tempfile::tempdir().unwrap();
        let tsm = ConfigfsTsm::with_root(root.path().join("absent"));
        assert!(matches!(tsm.snp_report(&[0u8; 64]), Err(Error::TsmUnavailable { .. })));
        assert_eq!(ConfigfsTsm::default().root(), Path::new(DEFAULT_TSM_REPORT_DIR));
        assert_eq!(tsm.tee(), Tee::Snp);
    }
}

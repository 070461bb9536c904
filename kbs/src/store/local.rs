//! The embedded secret store: one encrypted file per secret in a directory.
//!
//! Each file holds every kept version of one secret, sealed with
//! AES-256-GCM under a 32-byte key-encryption key (KEK) that never touches
//! the store directory. The file name is derived from the secret name, and
//! is the AEAD's associated data, so a file renamed or swapped onto another
//! name fails authentication.
//!
//! Writes are atomic: the new file is written to a temporary name, synced,
//! renamed over the old one and the directory synced. A crash leaves either
//! the old or the new version, never a torn file. Writers are serialized;
//! readers use an in-memory index decrypted at open.
//!
//! File layout: `"KBSLOCAL1" || nonce (12) || AES-256-GCM(JSON record)`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{NewSecret, Page, SecretMeta, SecretRecord, SecretStore, SecretValue, StoreError, validate_name};

const MAGIC: &[u8] = b"KBSLOCAL1";
const SUFFIX: &str = "secret";
/// Versions kept per secret; older ones are dropped on write.
pub const MAX_VERSIONS: usize = 32;

/// The key-encryption key. No `Debug` output of the bytes; zeroized on drop.
pub struct Kek(Zeroizing<[u8; 32]>);

impl Kek {
    /// Wraps raw key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key bytes.
    pub fn into_bytes(self) -> Zeroizing<[u8; 32]> {
        self.0.clone()
    }

    /// Reads a KEK file (see [`crate::keyfile`] for the format).
    pub fn from_file(path: &Path) -> Result<Self, StoreError> {
        let key = crate::keyfile::read(path).map_err(|e| StoreError::Unavailable(format!("KEK: {e}")))?;
        Ok(Self(key))
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct StoredVersion {
    version: u64,
    created_at: i64,
    /// Base64 of the value; zeroized with the struct.
    value: String,
}

#[derive(Serialize, Deserialize)]
struct StoredSecret {
    name: String,
    labels: BTreeMap<String, String>,
    allowed_measurements: Vec<String>,
    versions: Vec<StoredVersion>,
    /// The newest version ever written. Version numbers are never reused,
    /// and a secret whose newest version was destroyed is not served until
    /// a new version is written (as Vault/OpenBao KV v2 behaves). Files
    /// written before this field existed read as 0: the newest kept version.
    #[serde(default)]
    current_version: u64,
}

impl StoredSecret {
    fn current_version(&self) -> u64 {
        self.versions.last().map_or(0, |v| v.version).max(self.current_version)
    }

    /// The version served: the newest one, unless it was destroyed.
    fn live(&self) -> Result<&StoredVersion, StoreError> {
        match self.versions.last() {
            Some(newest) if newest.version == self.current_version() => Ok(newest),
            _ => Err(StoreError::NotFound),
        }
    }

    fn meta(&self) -> Result<SecretMeta, StoreError> {
        let current = self.live()?;
        let size = B64.decode(current.value.as_bytes()).map(|v| Zeroizing::new(v).len()).unwrap_or(0);
        Ok(SecretMeta {
            name: self.name.clone(),
            version: current.version,
            created_at: current.created_at,
            size: u64::try_from(size).unwrap_or(u64::MAX),
            labels: self.labels.clone(),
            allowed_measurements: self.allowed_measurements.clone(),
            versions: self.versions.iter().map(|v| v.version).collect(),
        })
    }

    fn current_value(&self) -> Result<SecretValue, StoreError> {
        let current = self.live()?;
        B64.decode(current.value.as_bytes())
            .map(SecretValue::new)
            .map_err(|_| StoreError::Corrupt("value is not base64".into()))
    }
}

struct Inner {
    dir: PathBuf,
    key: LessSafeKey,
    rng: SystemRandom,
    index: RwLock<BTreeMap<String, StoredSecret>>,
    write: Mutex<()>,
}

/// The embedded, encrypted-at-rest store.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

fn file_stem(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    hex::encode(digest.get(..16).unwrap_or_default())
}

fn unavailable(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl LocalStore {
    /// Opens (creating if needed) the store in `dir`, decrypting every file.
    /// A file that fails authentication makes the open fail: the store never
    /// serves from data it cannot vouch for.
    pub fn open(dir: &Path, kek: &Kek) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| unavailable("creating store directory", e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| unavailable("setting store directory mode", e))?;
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, kek.0.as_ref()).map_err(|_| StoreError::Unavailable("invalid KEK".into()))?;
        let inner = Inner {
            dir: dir.to_path_buf(),
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
            index: RwLock::new(BTreeMap::new()),
            write: Mutex::new(()),
        };
        let mut index = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(|e| unavailable("reading store directory", e))? {
            let entry = entry.map_err(|e| unavailable("reading store directory", e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SUFFIX) {
                // Leftover temporaries from an interrupted write are removed.
                if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
            let bytes = fs::read(&path).map_err(|e| unavailable("reading secret file", e))?;
            let secret = inner.decrypt(&stem, &bytes)?;
            if file_stem(&secret.name) != stem {
                return Err(StoreError::Corrupt(format!("file {} does not belong to its secret", path.display())));
            }
            index.insert(secret.name.clone(), secret);
        }
        *inner.index.write().map_err(|_| StoreError::Unavailable("store lock poisoned".into()))? = index;
        Ok(Self { inner: Arc::new(inner) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

impl Inner {
    fn decrypt(&self, stem: &str, bytes: &[u8]) -> Result<StoredSecret, StoreError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| StoreError::Corrupt(format!("{stem}: bad magic")))?;
        if rest.len() < NONCE_LEN {
            return Err(StoreError::Corrupt(format!("{stem}: truncated")));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| StoreError::Corrupt(format!("{stem}: truncated")))?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let aad = [MAGIC, stem.as_bytes()].concat();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_slice()), &mut buf)
            .map_err(|_| StoreError::Corrupt(format!("{stem}: authentication failed (wrong KEK or altered file)")))?;
        serde_json::from_slice(plain).map_err(|e| StoreError::Corrupt(format!("{stem}: {e}")))
    }

    fn encrypt(&self, stem: &str, secret: &StoredSecret) -> Result<Vec<u8>, StoreError> {
        let mut buf = Zeroizing::new(
            serde_json::to_vec(secret).map_err(|e| StoreError::Unavailable(format!("encoding secret: {e}")))?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Unavailable("random source failed".into()))?;
        let aad = [MAGIC, stem.as_bytes()].concat();
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len() + 16);
        let mut sealed = std::mem::take(&mut *buf);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_slice()), &mut sealed)
            .map_err(|_| StoreError::Unavailable("sealing failed".into()))?;
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Writes `bytes` as the file for `stem`, atomically.
    fn write_file(&self, stem: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!("{stem}.tmp"));
        let dst = self.dir.join(format!("{stem}.{SUFFIX}"));
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let result = (|| {
            let mut file = options.open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &dst)?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| unavailable("writing secret file", e))
    }

    fn remove_file(&self, stem: &str) -> Result<(), StoreError> {
        let dst = self.dir.join(format!("{stem}.{SUFFIX}"));
        fs::remove_file(&dst).map_err(|e| unavailable("removing secret file", e))?;
        sync_dir(&self.dir).map_err(|e| unavailable("syncing store directory", e))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("store lock poisoned".into())
}

#[async_trait]
impl SecretStore for LocalStore {
    async fn put(&self, secret: NewSecret) -> Result<SecretMeta, StoreError> {
        validate_name(&secret.name)?;
        self.blocking(move |inner| {
            let _writer = inner.write.lock().map_err(|_| poisoned())?;
            let stem = file_stem(&secret.name);
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let value = B64.encode(secret.value.expose());
            let (record, version) = {
                let index = inner.index.read().map_err(|_| poisoned())?;
                let existing = index.get(&secret.name);
                let current = existing.map_or(0, StoredSecret::current_version);
                if let Some(expected) = secret.expected_version
                    && expected != current
                {
                    return Err(StoreError::Conflict { expected, found: current });
                }
                let version = current.checked_add(1).ok_or_else(|| StoreError::Corrupt("version overflow".into()))?;
                let mut versions: Vec<StoredVersion> = existing
                    .map(|s| {
                        s.versions
                            .iter()
                            .map(|v| StoredVersion {
                                version: v.version,
                                created_at: v.created_at,
                                value: v.value.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                versions.push(StoredVersion { version, created_at: now, value });
                let excess = versions.len().saturating_sub(MAX_VERSIONS);
                versions.drain(..excess);
                let record = StoredSecret {
                    name: secret.name.clone(),
                    labels: secret.labels.clone(),
                    allowed_measurements: secret.allowed_measurements.clone(),
                    versions,
                    current_version: version,
                };
                (record, version)
            };
            let bytes = inner.encrypt(&stem, &record)?;
            inner.write_file(&stem, &bytes)?;
            let meta = record.meta()?;
            debug_assert_eq!(meta.version, version);
            inner.index.write().map_err(|_| poisoned())?.insert(secret.name.clone(), record);
            Ok(meta)
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<SecretRecord, StoreError> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let secret = index.get(name).ok_or(StoreError::NotFound)?;
        Ok(SecretRecord { meta: secret.meta()?, value: secret.current_value()? })
    }

    async fn metadata(&self, name: &str) -> Result<SecretMeta, StoreError> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        index.get(name).ok_or(StoreError::NotFound)?.meta()
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let mut items = Vec::new();
        let mut next = None;
        for (name, secret) in index.iter() {
            if !name.starts_with(prefix) || after.is_some_and(|a| name.as_str() <= a) {
                continue;
            }
            // Secrets whose newest version was destroyed are not listed.
            let meta = match secret.meta() {
                Ok(meta) => meta,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            if items.len() == limit {
                next = items.last().map(|m: &SecretMeta| m.name.clone());
                break;
            }
            items.push(meta);
        }
        Ok(Page { items, next })
    }

    async fn destroy_versions(&self, name: &str, versions: &[u64]) -> Result<(), StoreError> {
        let name = name.to_owned();
        let versions = versions.to_vec();
        self.blocking(move |inner| {
            let _writer = inner.write.lock().map_err(|_| poisoned())?;
            let stem = file_stem(&name);
            let record = {
                let index = inner.index.read().map_err(|_| poisoned())?;
                let existing = index.get(&name).filter(|s| !s.versions.is_empty()).ok_or(StoreError::NotFound)?;
                StoredSecret {
                    name: existing.name.clone(),
                    labels: existing.labels.clone(),
                    allowed_measurements: existing.allowed_measurements.clone(),
                    versions: existing
                        .versions
                        .iter()
                        .filter(|v| !versions.contains(&v.version))
                        .map(|v| StoredVersion { version: v.version, created_at: v.created_at, value: v.value.clone() })
                        .collect(),
                    current_version: existing.current_version(),
                }
            };
            // Kept even when no version is left, so that the next version
            // written gets a new number.
            let bytes = inner.encrypt(&stem, &record)?;
            inner.write_file(&stem, &bytes)?;
            inner.index.write().map_err(|_| poisoned())?.insert(name.clone(), record);
            Ok(())
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let _writer = inner.write.lock().map_err(|_| poisoned())?;
            if !inner.index.read().map_err(|_| poisoned())?.contains_key(&name) {
                return Err(StoreError::NotFound);
            }
            inner.remove_file(&file_stem(&name))?;
            inner.index.write().map_err(|_| poisoned())?.remove(&name);
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, value: &[u8]) -> NewSecret {
        NewSecret {
            name: name.into(),
            value: SecretValue::new(value.to_vec()),
            labels: BTreeMap::new(),
            allowed_measurements: vec!["ab".repeat(48)],
            expected_version: None,
        }
    }

    #[tokio::test]
    async fn survives_restart_and_keeps_versions() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::new([7; 32]);
        let store = LocalStore::open(dir.path(), &kek).unwrap();
        let all_bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(store.put(new("m/k/a", b"one")).await.unwrap().version, 1);
        assert_eq!(store.put(new("m/k/a", &all_bytes)).await.unwrap().version, 2);
        drop(store);
        let store = LocalStore::open(dir.path(), &kek).unwrap();
        let rec = store.get("m/k/a").await.unwrap();
        assert_eq!(rec.value.expose(), all_bytes.as_slice());
        assert_eq!(rec.meta.versions, vec![1, 2]);
        assert_eq!(rec.meta.allowed_measurements, vec!["ab".repeat(48)]);
    }

    #[tokio::test]
    async fn at_rest_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), &Kek::new([7; 32])).unwrap();
        store.put(new("m/k/plain", b"PLAINTEXT-MARKER")).await.unwrap();
        for entry in fs::read_dir(dir.path()).unwrap() {
            let bytes = fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(16).any(|w| w == b"PLAINTEXT-MARKER"));
            assert!(!bytes.windows(9).any(|w| w == b"m/k/plain"));
        }
    }

    #[tokio::test]
    async fn wrong_kek_and_tampering_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), &Kek::new([7; 32])).unwrap();
        store.put(new("m/k/a", b"v")).await.unwrap();
        drop(store);
        assert!(matches!(LocalStore::open(dir.path(), &Kek::new([8; 32])), Err(StoreError::Corrupt(_))));
        let path = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(LocalStore::open(dir.path(), &Kek::new([7; 32])), Err(StoreError::Corrupt(_))));
    }

    #[tokio::test]
    async fn file_moved_onto_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), &Kek::new([7; 32])).unwrap();
        store.put(new("m/k/a", b"a")).await.unwrap();
        drop(store);
        let src = dir.path().join(format!("{}.secret", file_stem("m/k/a")));
        fs::rename(&src, dir.path().join(format!("{}.secret", file_stem("m/k/b")))).unwrap();
        assert!(matches!(LocalStore::open(dir.path(), &Kek::new([7; 32])), Err(StoreError::Corrupt(_))));
    }

    #[tokio::test]
    async fn check_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), &Kek::new([7; 32])).unwrap();
        let mut first = new("m/k/a", b"1");
        first.expected_version = Some(0);
        store.put(first).await.unwrap();
        let mut stale = new("m/k/a", b"2");
        stale.expected_version = Some(0);
        assert!(matches!(store.put(stale).await, Err(StoreError::Conflict { expected: 0, found: 1 })));
        assert_eq!(store.get("m/k/a").await.unwrap().value.expose(), b"1");
    }

    #[tokio::test]
    async fn list_pages_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), &Kek::new([7; 32])).unwrap();
        for n in ["a/1", "a/2", "a/3", "b/1"] {
            store.put(new(n, b"x")).await.unwrap();
        }
        let page = store.list("a/", None, 2).await.unwrap();
        assert_eq!(page.items.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a/1", "a/2"]);
        let page2 = store.list("a/", page.next.as_deref(), 2).await.unwrap();
        assert_eq!(page2.items.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a/3"]);
        assert!(page2.next.is_none());
        store.delete("a/2").await.unwrap();
        assert!(matches!(store.get("a/2").await, Err(StoreError::NotFound)));
        assert!(matches!(store.delete("a/2").await, Err(StoreError::NotFound)));
        drop(store);
        let store = LocalStore::open(dir.path(), &Kek::new([7; 32])).unwrap();
        assert!(matches!(store.get("a/2").await, Err(StoreError::NotFound)));
        assert_eq!(store.list("", None, 100).await.unwrap().items.len(), 3);
    }

    #[tokio::test]
    async fn destroyed_versions_are_gone_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::new([7; 32]);
        let store = LocalStore::open(dir.path(), &kek).unwrap();
        store.put(new("d", b"v1")).await.unwrap();
        store.put(new("d", b"v2")).await.unwrap();
        store.put(new("d", b"v3")).await.unwrap();
        store.destroy_versions("d", &[2]).await.unwrap();
        drop(store);
        let store = LocalStore::open(dir.path(), &kek).unwrap();
        assert_eq!(store.metadata("d").await.unwrap().versions, vec![1, 3]);
        // The newest destroyed: nothing is served, not even version 1.
        store.destroy_versions("d", &[3]).await.unwrap();
        assert!(matches!(store.get("d").await, Err(StoreError::NotFound)));
        drop(store);
        let store = LocalStore::open(dir.path(), &kek).unwrap();
        assert!(matches!(store.get("d").await, Err(StoreError::NotFound)));
        store.destroy_versions("d", &[1]).await.unwrap();
        assert!(matches!(store.destroy_versions("d", &[1]).await, Err(StoreError::NotFound)));
        // Version numbers are never reused, even after every version is gone
        // and across a restart.
        drop(store);
        let store = LocalStore::open(dir.path(), &kek).unwrap();
        assert_eq!(store.put(new("d", b"v4")).await.unwrap().version, 4);
        assert_eq!(store.get("d").await.unwrap().value.expose(), b"v4");
    }

    #[tokio::test]
    async fn keeps_a_bounded_number_of_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), &Kek::new([7; 32])).unwrap();
        for i in 0..(MAX_VERSIONS + 3) {
            store.put(new("v", &[u8::try_from(i % 256).unwrap()])).await.unwrap();
        }
        let meta = store.metadata("v").await.unwrap();
        assert_eq!(meta.versions.len(), MAX_VERSIONS);
        assert_eq!(meta.version, u64::try_from(MAX_VERSIONS + 3).unwrap());
    }

    #[test]
    fn kek_file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        fs::write(&raw, [3u8; 32]).unwrap();
        assert!(Kek::from_file(&raw).is_ok());
        let hexf = dir.path().join("hex");
        fs::write(&hexf, format!("{}\n", "0a".repeat(32))).unwrap();
        assert!(Kek::from_file(&hexf).is_ok());
        let bad = dir.path().join("bad");
        fs::write(&bad, "short").unwrap();
        assert!(Kek::from_file(&bad).is_err());
    }
}

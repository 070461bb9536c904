//! A short-lived read cache in front of a [`SecretStore`].
//!
//! Without it every release reads the store (for OpenBao, an HTTPS round
//! trip); with it, a replica reads each secret at most once per TTL. An
//! entry holds one (name, version) and its value: the version a guest
//! receives is the version the entry was read at, so a rotation made
//! through another replica is seen here within the TTL, and one made through
//! this replica at once (its writes invalidate the name before they
//! return).
//!
//! A read that was in flight while a write went through this cache (a put,
//! a delete, a destroyed version) does not cache what it read, so a
//! destroyed version is never put back after its invalidation.
//!
//! Only successful reads are cached; a missing secret or a store that is
//! down is asked again on the next request, so an operator's put or an
//! outage ending takes effect immediately. The cache is bounded in entries
//! and in value bytes; values are [`SecretValue`]s and are zeroized when an
//! entry is evicted, replaced or dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{NewSecret, Page, SecretMeta, SecretRecord, SecretStore, StoreError};

/// Default time an entry is served before the store is asked again.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// Default bound on cached entries.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Default bound on the sum of cached value sizes (64 MiB).
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;

struct Entry {
    record: SecretRecord,
    expires: Instant,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Entry>,
    bytes: usize,
    /// Counts the writes made through this cache. A read inserts what it
    /// read only if no write happened since it began: a read in flight
    /// while a version is destroyed must not put that version back.
    writes: u64,
}

impl Entries {
    fn remove(&mut self, name: &str) {
        if let Some(old) = self.map.remove(name) {
            self.bytes = self.bytes.saturating_sub(old.record.value.len());
        }
    }

    /// Drops expired entries; if still over a bound, the entries closest to
    /// expiry (the oldest) go first.
    fn make_room(&mut self, now: Instant, max_entries: usize, max_bytes: usize, incoming: usize) {
        let expired: Vec<String> = self.map.iter().filter(|(_, e)| e.expires <= now).map(|(k, _)| k.clone()).collect();
        for name in expired {
            self.remove(&name);
        }
        while !self.map.is_empty() && (self.map.len() >= max_entries || self.bytes.saturating_add(incoming) > max_bytes)
        {
            let oldest = self.map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| k.clone());
            match oldest {
                Some(name) => self.remove(&name),
                None => break,
            }
        }
    }
}

/// A [`SecretStore`] that serves `get` from memory for up to `ttl`.
/// Everything else goes to the inner store; writes invalidate.
pub struct CachedStore {
    inner: Arc<dyn SecretStore>,
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    entries: RwLock<Entries>,
}

impl fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStore")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl CachedStore {
    /// Caches reads of `inner` for `ttl`, with the default bounds.
    pub fn new(inner: Arc<dyn SecretStore>, ttl: Duration) -> Self {
        Self::with_bounds(inner, ttl, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }

    /// Caches reads of `inner` for `ttl`, holding at most `max_entries`
    /// entries and `max_bytes` of values. A value larger than `max_bytes`
    /// is served but not cached.
    pub fn with_bounds(inner: Arc<dyn SecretStore>, ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self { inner, ttl, max_entries, max_bytes, entries: RwLock::new(Entries::default()) }
    }

    /// `inner` behind a cache, or `inner` itself when `ttl` is zero.
    pub fn wrap(inner: Arc<dyn SecretStore>, ttl: Duration) -> Arc<dyn SecretStore> {
        if ttl.is_zero() { inner } else { Arc::new(Self::new(inner, ttl)) }
    }

    /// Entries currently held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn invalidate(&self, name: &str) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.writes = entries.writes.wrapping_add(1);
        entries.remove(name);
    }

    fn writes(&self) -> u64 {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).writes
    }

    /// Caches `record`, read when the write count was `writes_before`.
    fn insert(&self, record: &SecretRecord, now: Instant, writes_before: u64) {
        let size = record.value.len();
        if self.max_entries == 0 || size > self.max_bytes {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.writes != writes_before {
            return;
        }
        entries.remove(&record.meta.name);
        entries.make_room(now, self.max_entries, self.max_bytes, size);
        entries.bytes = entries.bytes.saturating_add(size);
        entries.map.insert(record.meta.name.clone(), Entry { record: record.clone(), expires: now + self.ttl });
    }
}

#[async_trait]
impl SecretStore for CachedStore {
    async fn put(&self, secret: NewSecret) -> Result<SecretMeta, StoreError> {
        let name = secret.name.clone();
        let result = self.inner.put(secret).await;
        self.invalidate(&name);
        result
    }

    async fn get(&self, name: &str) -> Result<SecretRecord, StoreError> {
        let now = Instant::now();
        if let Some(entry) = self.entries.read().unwrap_or_else(PoisonError::into_inner).map.get(name)
            && entry.expires > now
        {
            return Ok(entry.record.clone());
        }
        let writes_before = self.writes();
        let record = self.inner.get(name).await?;
        // A record filed under another name would poison the cache.
        if record.meta.name == name {
            self.insert(&record, now, writes_before);
        }
        Ok(record)
    }

    async fn metadata(&self, name: &str) -> Result<SecretMeta, StoreError> {
        self.inner.metadata(name).await
    }

    async fn metadata_for_write(&self, name: &str) -> Result<SecretMeta, StoreError> {
        self.inner.metadata_for_write(name).await
    }

    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        self.inner.list(prefix, after, limit).await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let result = self.inner.delete(name).await;
        self.invalidate(name);
        result
    }

    async fn destroy_versions(&self, name: &str, versions: &[u64]) -> Result<(), StoreError> {
        let result = self.inner.destroy_versions(name, versions).await;
        self.invalidate(name);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::SecretValue;

    /// An in-memory store that counts reads.
    #[derive(Debug, Default)]
    struct Counting {
        secrets: std::sync::Mutex<BTreeMap<String, (u64, Vec<u8>)>>,
        reads: AtomicUsize,
    }

    impl Counting {
        fn set(&self, name: &str, value: &[u8]) -> u64 {
            let mut s = self.secrets.lock().unwrap();
            let version = s.get(name).map_or(1, |(v, _)| v + 1);
            s.insert(name.to_owned(), (version, value.to_vec()));
            version
        }
    }

    fn meta(name: &str, version: u64, size: usize) -> SecretMeta {
        SecretMeta {
            name: name.to_owned(),
            version,
            created_at: 0,
            size: size as u64,
            labels: BTreeMap::new(),
            allowed_measurements: Vec::new(),
            versions: vec![version],
        }
    }

    #[async_trait]
    impl SecretStore for Counting {
        async fn put(&self, secret: NewSecret) -> Result<SecretMeta, StoreError> {
            let v = self.set(&secret.name, secret.value.expose());
            Ok(meta(&secret.name, v, secret.value.len()))
        }
        async fn get(&self, name: &str) -> Result<SecretRecord, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let s = self.secrets.lock().unwrap();
            let (v, value) = s.get(name).ok_or(StoreError::NotFound)?;
            Ok(SecretRecord { meta: meta(name, *v, value.len()), value: SecretValue::new(value.clone()) })
        }
        async fn metadata(&self, name: &str) -> Result<SecretMeta, StoreError> {
            self.get(name).await.map(|r| r.meta)
        }
        async fn list(&self, _: &str, _: Option<&str>, _: usize) -> Result<Page, StoreError> {
            Ok(Page::default())
        }
        async fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.secrets.lock().unwrap().remove(name).map(|_| ()).ok_or(StoreError::NotFound)
        }
        async fn destroy_versions(&self, _: &str, _: &[u64]) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn new_secret(name: &str, value: &[u8]) -> NewSecret {
        NewSecret {
            name: name.to_owned(),
            value: SecretValue::new(value.to_vec()),
            labels: BTreeMap::new(),
            allowed_measurements: Vec::new(),
            expected_version: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_served_from_memory_until_the_ttl_passes() {
        let inner = Arc::new(Counting::default());
        inner.set("a", b"one");
        let cache = CachedStore::new(inner.clone(), Duration::from_secs(2));
        for _ in 0..10 {
            assert_eq!(cache.get("a").await.unwrap().value.expose(), b"one");
        }
        assert_eq!(inner.reads.load(Ordering::SeqCst), 1);

        // Rotated behind the cache's back (another replica): the old version
        // is served until the TTL, the new one after.
        inner.set("a", b"two");
        assert_eq!(cache.get("a").await.unwrap().meta.version, 1);
        tokio::time::advance(Duration::from_millis(2001)).await;
        let record = cache.get("a").await.unwrap();
        assert_eq!((record.meta.version, record.value.expose()), (2, b"two".as_slice()));
        assert_eq!(inner.reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_through_the_cache_invalidate_at_once() {
        let inner = Arc::new(Counting::default());
        let cache = CachedStore::new(inner.clone(), Duration::from_secs(60));
        cache.put(new_secret("a", b"one")).await.unwrap();
        assert_eq!(cache.get("a").await.unwrap().meta.version, 1);
        cache.put(new_secret("a", b"two")).await.unwrap();
        assert_eq!(cache.get("a").await.unwrap().value.expose(), b"two");
        cache.delete("a").await.unwrap();
        assert!(matches!(cache.get("a").await, Err(StoreError::NotFound)));
    }

    #[tokio::test(start_paused = true)]
    async fn misses_are_not_cached() {
        let inner = Arc::new(Counting::default());
        let cache = CachedStore::new(inner.clone(), Duration::from_secs(60));
        assert!(matches!(cache.get("a").await, Err(StoreError::NotFound)));
        inner.set("a", b"now here");
        assert_eq!(cache.get("a").await.unwrap().value.expose(), b"now here");
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_entries_and_bytes() {
        let inner = Arc::new(Counting::default());
        for i in 0..10 {
            inner.set(&format!("s{i}"), &[i; 10]);
        }
        inner.set("big", &[0; 100]);
        let cache = CachedStore::with_bounds(inner.clone(), Duration::from_secs(60), 4, 35);
        for i in 0..10 {
            cache.get(&format!("s{i}")).await.unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(cache.len() <= 3, "{}", cache.len());
        assert!(cache.entries.read().unwrap().bytes <= 35);
        // The newest survive.
        assert!(cache.entries.read().unwrap().map.contains_key("s9"));
        // Too big to cache, but still served.
        assert_eq!(cache.get("big").await.unwrap().value.len(), 100);
        assert!(!cache.entries.read().unwrap().map.contains_key("big"));
    }

    /// A store whose reads can be held between reading and returning.
    #[derive(Debug, Default)]
    struct Gated {
        inner: Counting,
        hold: tokio::sync::Mutex<()>,
    }

    #[async_trait]
    impl SecretStore for Gated {
        async fn put(&self, secret: NewSecret) -> Result<SecretMeta, StoreError> {
            self.inner.put(secret).await
        }
        async fn get(&self, name: &str) -> Result<SecretRecord, StoreError> {
            let read = self.inner.get(name).await;
            let _held = self.hold.lock().await;
            read
        }
        async fn metadata(&self, name: &str) -> Result<SecretMeta, StoreError> {
            self.inner.metadata(name).await
        }
        async fn list(&self, p: &str, a: Option<&str>, l: usize) -> Result<Page, StoreError> {
            self.inner.list(p, a, l).await
        }
        async fn delete(&self, name: &str) -> Result<(), StoreError> {
            self.inner.delete(name).await
        }
        async fn destroy_versions(&self, name: &str, versions: &[u64]) -> Result<(), StoreError> {
            self.inner.secrets.lock().unwrap().remove(name);
            self.inner.destroy_versions(name, versions).await
        }
    }

    /// A read in flight while a version is destroyed (or deleted, or
    /// replaced) must not put what it read back into the cache after the
    /// write has invalidated it.
    #[tokio::test]
    async fn a_read_in_flight_during_a_write_is_not_cached() {
        for write in ["destroy", "delete", "put"] {
            let inner = Arc::new(Gated::default());
            inner.inner.set("a", b"old");
            let cache = Arc::new(CachedStore::new(inner.clone(), Duration::from_secs(60)));
            let hold = inner.hold.lock().await;
            let reader = tokio::spawn({
                let cache = Arc::clone(&cache);
                async move { cache.get("a").await }
            });
            // The reader has read "old" and waits.
            while inner.inner.reads.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            match write {
                "destroy" => cache.destroy_versions("a", &[1]).await.unwrap(),
                "delete" => cache.delete("a").await.unwrap(),
                _ => {
                    cache.put(new_secret("a", b"new")).await.unwrap();
                }
            }
            drop(hold);
            assert_eq!(reader.await.unwrap().unwrap().value.expose(), b"old");
            let after = cache.get("a").await.map(|r| r.value.expose().to_vec());
            match write {
                "put" => assert_eq!(after.unwrap(), b"new", "{write}"),
                _ => assert!(matches!(after, Err(StoreError::NotFound)), "{write}: {after:?}"),
            }
        }
    }

    #[test]
    fn zero_ttl_is_no_cache() {
        let inner: Arc<dyn SecretStore> = Arc::new(Counting::default());
        let wrapped = CachedStore::wrap(Arc::clone(&inner), Duration::ZERO);
        assert!(Arc::ptr_eq(&inner, &wrapped));
    }
}

//! TLS 1.3 session tickets that every replica can redeem.
//!
//! A session ticket is the server's own resumption state (the resumption
//! secret, the cipher suite, the SNI and ALPN), encrypted under a key only
//! servers hold and handed to the client, which presents it in a later
//! handshake to skip the certificate signature and the key exchange's
//! authentication. With `server.tls_ticket_key_file` every replica seals
//! tickets under the same key, so a pod's init container that retries, or
//! is restarted, resumes at whichever replica the Service sends it to.
//!
//! Format of a ticket: `key id (8) || nonce (12) || AES-256-GCM(issued_at
//! (8, big-endian Unix seconds) || rustls state) || tag (16)`, with the key
//! id and a version label as associated data. The AES key and the key id
//! are derived from the key file's 32 bytes with HKDF-SHA256 and SHA-256
//! under labels of their own, so the file's bytes are used for nothing
//! else. Nonces are random (96 bits) per ticket.
//!
//! Rotation: the current key seals, the current and the previous keys
//! (`server.tls_ticket_previous_key_files`) open. A ticket whose key is no
//! longer listed, whose bytes were altered, or that is older than the
//! lifetime (checked here from `issued_at`: rustls does not bound the age
//! of a ticket it redeems) is refused, and the client gets a full
//! handshake. Rotate by making a new key current and listing the old one
//! as previous for one lifetime, then removing it.
//!
//! What a ticket key protects: the resumption secrets of the sessions its
//! tickets resume. rustls resumes only with `psk_dhe_ke`, so every resumed
//! handshake still runs a fresh X25519 exchange and a leaked ticket key
//! does not decrypt recorded traffic; it lets its holder pose as the broker
//! to a client presenting one of its tickets, within the ticket's
//! lifetime. Released secrets are HPKE-sealed to a key generated in the
//! guest for each release, inside the TLS channel, so even that exposes no
//! secret: their forward secrecy does not depend on TLS.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Bytes of the key id at the start of every ticket.
pub const KEY_ID_LEN: usize = 8;
/// Bytes of the AEAD tag at the end of every ticket.
const TAG_LEN: usize = 16;
/// Bytes of the issue time inside the sealed part.
const ISSUED_LEN: usize = 8;
/// The shortest ticket that can be genuine.
const MIN_TICKET_LEN: usize = KEY_ID_LEN + NONCE_LEN + ISSUED_LEN + TAG_LEN;
/// Tickets larger than this are refused unopened (rustls's own state is a
/// few hundred bytes).
pub const MAX_TICKET_LEN: usize = 4096;
/// Associated data of every ticket, before the key id.
const AAD_LABEL: &[u8] = b"kbs tls ticket v1";
/// A ticket issued this far in the future (clock differences between
/// replicas) is still accepted.
const CLOCK_SKEW_SECS: u64 = 60;
/// Default lifetime of a ticket.
pub const DEFAULT_LIFETIME_SECS: u32 = 3600;
/// Longest lifetime accepted in the configuration.
pub const MAX_LIFETIME_SECS: u32 = 86_400;

/// Unix seconds now, as the ticketer sees them.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Why ticket keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// The file is readable by others than its owner.
    #[error("{0}: must not be readable or writable by group or others (chmod 600)")]
    Permissions(String),
    /// The file does not hold a key.
    #[error("{0}: must hold 32 raw bytes or 64 hex digits")]
    Format(String),
    /// Two listed files hold the same key.
    #[error("{0}: the same key is listed twice")]
    Duplicate(String),
    /// A primitive failed.
    #[error("ticket key: {0}")]
    Crypto(&'static str),
}

/// One ticket key: its id and its AEAD key (no `Debug` of the key).
struct TicketKey {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

impl TicketKey {
    /// Derives the AEAD key and the key id from the file's 32 bytes.
    fn derive(material: &[u8; 32]) -> Result<Self, TicketKeyError> {
        let prk = Salt::new(HKDF_SHA256, b"kbs tls ticket salt v1").extract(material);
        let okm = prk
            .expand(&[b"kbs tls ticket aead v1"], &AES_256_GCM)
            .map_err(|_| TicketKeyError::Crypto("HKDF expand"))?;
        let aead = LessSafeKey::new(UnboundKey::from(okm));
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &[b"kbs tls ticket key id v1".as_slice(), material].concat(),
        );
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(digest.as_ref().get(..KEY_ID_LEN).ok_or(TicketKeyError::Crypto("digest length"))?);
        Ok(Self { id, aead })
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey").field("id", &hex::encode(self.id)).finish_non_exhaustive()
    }
}

/// Reads a ticket key file: owner-only permissions (on Unix), 32 raw bytes
/// or 64 hex digits ([`crate::keyfile::read_private`]).
pub fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, TicketKeyError> {
    use crate::keyfile::KeyFileError;
    crate::keyfile::read_private(path).map_err(|e| match e {
        KeyFileError::Io { path, why } => TicketKeyError::Io { path, source: io::Error::other(why) },
        KeyFileError::Permissions { path } => TicketKeyError::Permissions(path),
        KeyFileError::Format { path } => TicketKeyError::Format(path),
    })
}

/// Seals TLS 1.3 session tickets under a key shared by the replicas; opens
/// those of the current and previous keys (rustls's `ProducesTickets`).
pub struct SharedTicketer {
    current: TicketKey,
    previous: Vec<TicketKey>,
    lifetime: u32,
    clock: Clock,
    rng: SystemRandom,
}

impl fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("current", &self.current)
            .field("previous", &self.previous)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl SharedTicketer {
    /// A ticketer sealing under `current` and opening under it and
    /// `previous`, for tickets at most `lifetime` seconds old (clamped to
    /// 1..=[`MAX_LIFETIME_SECS`]) by `clock`.
    pub fn new(
        current: &[u8; 32],
        previous: &[Zeroizing<[u8; 32]>],
        lifetime: u32,
        clock: Clock,
    ) -> Result<Self, TicketKeyError> {
        let current = TicketKey::derive(current)?;
        let mut seen = vec![current.id];
        let mut keys = Vec::with_capacity(previous.len());
        for (i, material) in previous.iter().enumerate() {
            let key = TicketKey::derive(material)?;
            if seen.contains(&key.id) {
                return Err(TicketKeyError::Duplicate(format!("previous key {i}")));
            }
            seen.push(key.id);
            keys.push(key);
        }
        Ok(Self {
            current,
            previous: keys,
            lifetime: lifetime.clamp(1, MAX_LIFETIME_SECS),
            clock,
            rng: SystemRandom::new(),
        })
    }

    /// [`SharedTicketer::new`] from key files (see [`read_key_file`]).
    pub fn from_files(
        current: &Path,
        previous: &[impl AsRef<Path>],
        lifetime: u32,
        clock: Clock,
    ) -> Result<Self, TicketKeyError> {
        let key = read_key_file(current)?;
        let older = previous.iter().map(|p| read_key_file(p.as_ref())).collect::<Result<Vec<_>, _>>()?;
        Self::new(&key, &older, lifetime, clock).map_err(|e| match e {
            TicketKeyError::Duplicate(_) => TicketKeyError::Duplicate(current.display().to_string()),
            other => other,
        })
    }

    /// The id of the sealing key (the first bytes of every ticket it seals).
    pub fn current_key_id(&self) -> [u8; KEY_ID_LEN] {
        self.current.id
    }

    fn aad(id: &[u8; KEY_ID_LEN]) -> [u8; AAD_LABEL.len() + KEY_ID_LEN] {
        let mut aad = [0u8; AAD_LABEL.len() + KEY_ID_LEN];
        let (label, key_id) = aad.split_at_mut(AAD_LABEL.len());
        label.copy_from_slice(AAD_LABEL);
        key_id.copy_from_slice(id);
        aad
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = Zeroizing::new(Vec::with_capacity(ISSUED_LEN + plain.len() + TAG_LEN));
        sealed.extend_from_slice(&(self.clock)().to_be_bytes());
        sealed.extend_from_slice(plain);
        let key = &self.current;
        key.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(Self::aad(&key.id)), &mut *sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if !(MIN_TICKET_LEN..=MAX_TICKET_LEN).contains(&ticket.len()) {
            return None;
        }
        let (id, rest) = ticket.split_first_chunk::<KEY_ID_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let key = std::iter::once(&self.current).chain(&self.previous).find(|k| &k.id == id)?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let opened =
            key.aead.open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(Self::aad(id)), &mut buf).ok()?;
        let (issued, plain) = opened.split_first_chunk::<ISSUED_LEN>()?;
        let issued = u64::from_be_bytes(*issued);
        let now = (self.clock)();
        let fresh =
            issued <= now.saturating_add(CLOCK_SKEW_SECS) && now.saturating_sub(issued) <= u64::from(self.lifetime);
        fresh.then(|| plain.to_vec())
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use rustls::server::ProducesTickets;

    use super::*;

    fn clock_at(t: &Arc<AtomicU64>) -> Clock {
        let t = Arc::clone(t);
        Arc::new(move || t.load(Ordering::Relaxed))
    }

    fn ticketer(current: u8, previous: &[u8], lifetime: u32, t: &Arc<AtomicU64>) -> SharedTicketer {
        let older: Vec<_> = previous.iter().map(|&b| Zeroizing::new([b; 32])).collect();
        SharedTicketer::new(&[current; 32], &older, lifetime, clock_at(t)).unwrap()
    }

    #[test]
    fn a_ticket_opens_under_the_same_key_only() {
        let t = Arc::new(AtomicU64::new(1_000_000));
        let a = ticketer(1, &[], 600, &t);
        let ticket = a.encrypt(b"state").unwrap();
        assert_eq!(&ticket[..KEY_ID_LEN], &a.current_key_id());
        assert_eq!(ticket.len(), MIN_TICKET_LEN + 5);
        assert_eq!(ticketer(1, &[], 600, &t).decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(ticketer(2, &[], 600, &t).decrypt(&ticket), None);
        // Rotated: the old key as previous still opens; removed, it does not.
        assert_eq!(ticketer(2, &[1], 600, &t).decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(ticketer(3, &[2], 600, &t).decrypt(&ticket), None);
    }

    #[test]
    fn nonces_differ_per_ticket() {
        let t = Arc::new(AtomicU64::new(1_000_000));
        let a = ticketer(1, &[], 600, &t);
        let (x, y) = (a.encrypt(b"same").unwrap(), a.encrypt(b"same").unwrap());
        assert_ne!(x[KEY_ID_LEN..KEY_ID_LEN + NONCE_LEN], y[KEY_ID_LEN..KEY_ID_LEN + NONCE_LEN]);
        assert_ne!(x, y);
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let t = Arc::new(AtomicU64::new(1_000_000));
        let a = ticketer(1, &[], 600, &t);
        let ticket = a.encrypt(b"resumption state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert_eq!(a.decrypt(&bad), None, "byte {i}");
        }
        for len in 0..ticket.len() {
            assert_eq!(a.decrypt(&ticket[..len]), None, "truncated to {len}");
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(a.decrypt(&longer), None);
        assert_eq!(a.decrypt(&vec![0u8; MAX_TICKET_LEN + 1]), None);
    }

    #[test]
    fn tickets_expire_after_their_lifetime() {
        let t = Arc::new(AtomicU64::new(1_000_000));
        let a = ticketer(1, &[], 600, &t);
        assert_eq!(a.lifetime(), 600);
        let ticket = a.encrypt(b"x").unwrap();
        t.store(1_000_600, Ordering::Relaxed);
        assert!(a.decrypt(&ticket).is_some(), "at the lifetime");
        t.store(1_000_601, Ordering::Relaxed);
        assert_eq!(a.decrypt(&ticket), None, "past the lifetime");
        // Issued by a replica whose clock is ahead: within the skew only.
        t.store(1_000_000 - CLOCK_SKEW_SECS, Ordering::Relaxed);
        assert!(a.decrypt(&ticket).is_some());
        t.store(1_000_000 - CLOCK_SKEW_SECS - 1, Ordering::Relaxed);
        assert_eq!(a.decrypt(&ticket), None);
    }

    #[test]
    fn lifetime_is_bounded_and_duplicates_refused() {
        let t = Arc::new(AtomicU64::new(0));
        assert_eq!(ticketer(1, &[], u32::MAX, &t).lifetime(), MAX_LIFETIME_SECS);
        assert_eq!(ticketer(1, &[], 0, &t).lifetime(), 1);
        let dup = SharedTicketer::new(&[1; 32], &[Zeroizing::new([1; 32])], 60, clock_at(&t));
        assert!(matches!(dup, Err(TicketKeyError::Duplicate(_))));
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let raw = write("raw", &[7u8; 32], 0o600);
        let hexed = write("hex", format!("{}\n", hex::encode([7u8; 32])).as_bytes(), 0o400);
        assert_eq!(*read_key_file(&raw).unwrap(), [7u8; 32]);
        assert_eq!(*read_key_file(&hexed).unwrap(), [7u8; 32]);
        let open = write("open", &[7u8; 32], 0o644);
        assert!(matches!(read_key_file(&open), Err(TicketKeyError::Permissions(_))));
        let short = write("short", &[7u8; 31], 0o600);
        assert!(matches!(read_key_file(&short), Err(TicketKeyError::Format(_))));
        let padded = format!("{}{}", " ".repeat(5000), hex::encode([7u8; 32]));
        let huge = write("huge", padded.as_bytes(), 0o600);
        assert!(matches!(read_key_file(&huge), Err(TicketKeyError::Format(_))), "oversized files are refused");
        assert!(matches!(read_key_file(&dir.path().join("missing")), Err(TicketKeyError::Io { .. })));
        let t = Arc::new(AtomicU64::new(5));
        let a = SharedTicketer::from_files(&raw, &[&hexed], 60, clock_at(&t));
        assert!(matches!(a, Err(TicketKeyError::Duplicate(_))), "{a:?}");
        let other = write("other", &[8u8; 32], 0o600);
        let b = SharedTicketer::from_files(&other, &[&raw], 60, clock_at(&t)).unwrap();
        let c = SharedTicketer::from_files(&raw, &[] as &[&Path], 60, clock_at(&t)).unwrap();
        assert!(b.decrypt(&c.encrypt(b"s").unwrap()).is_some());
        assert!(c.decrypt(&b.encrypt(b"s").unwrap()).is_none());
    }
}

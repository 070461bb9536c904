//! Secret stores.
//!
//! The [`SecretStore`] trait has two implementations: [`local::LocalStore`],
//! an embedded store encrypted at rest (one node, the quick start), and the
//! Vault/OpenBao KV v2 store shared by every replica in production.
//!
//! Secret values are [`SecretValue`]s: zeroized when dropped, no `Debug`
//! that shows them, never logged. A store that cannot answer says
//! [`StoreError::Unavailable`], never a wrong answer.

pub mod cache;
pub mod local;
pub mod vault;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use zeroize::Zeroizing;

use crate::names::MAX_NAME_LEN;
use crate::reason::ReasonCode;

/// Largest secret value accepted by default (1 MiB).
pub const DEFAULT_MAX_SECRET_BYTES: usize = 1 << 20;
const MAX_SEGMENTS: usize = 16;
const MAX_SEGMENT_LEN: usize = 64;

/// A secret's bytes. Zeroized on drop; its `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

/// Metadata of a secret's current version; never its value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretMeta {
    /// The name.
    pub name: String,
    /// The current version (starts at 1).
    pub version: u64,
    /// Creation time of the current version, Unix seconds.
    pub created_at: i64,
    /// Size of the current value in bytes.
    pub size: u64,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Launch measurements (lowercase hex) allowed to receive this secret.
    pub allowed_measurements: Vec<String>,
    /// Every version still kept, ascending.
    pub versions: Vec<u64>,
}

/// A secret's current version with its value.
#[derive(Clone, Debug)]
pub struct SecretRecord {
    /// Metadata.
    pub meta: SecretMeta,
    /// The value.
    pub value: SecretValue,
}

/// A write: a new version of a secret.
#[derive(Debug)]
pub struct NewSecret {
    /// The name (already validated with [`validate_name`]).
    pub name: String,
    /// The value.
    pub value: SecretValue,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Allowed launch measurements (lowercase hex).
    pub allowed_measurements: Vec<String>,
    /// Check-and-set: the write succeeds only if the current version equals
    /// this (0 = must not exist).
    pub expected_version: Option<u64>,
}

/// A page of metadata.
#[derive(Debug, Default)]
pub struct Page {
    /// The secrets, in name order.
    pub items: Vec<SecretMeta>,
    /// Where the next page starts, if any.
    pub next: Option<String>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such secret.
    #[error("secret not found")]
    NotFound,
    /// A check-and-set write found another version.
    #[error("version conflict: expected {expected}, found {found}")]
    Conflict {
        /// What the writer expected.
        expected: u64,
        /// What the store holds.
        found: u64,
    },
    /// The name breaks the grammar.
    #[error("invalid secret name: {0}")]
    InvalidName(&'static str),
    /// The value is over the size cap.
    #[error("secret value too large: {len} bytes, at most {max}")]
    TooLarge {
        /// Length given.
        len: usize,
        /// Cap.
        max: usize,
    },
    /// The store cannot be reached or failed to answer.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed authentication or does not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The stable reason code.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::NotFound => ReasonCode::SecretNotFound,
            Self::Conflict { .. } => ReasonCode::VersionConflict,
            Self::InvalidName(_) | Self::TooLarge { .. } => ReasonCode::InvalidRequest,
            Self::Unavailable(_) => ReasonCode::StoreUnavailable,
            // Corrupt data must never be served; the operator must act.
            Self::Corrupt(_) => ReasonCode::StoreUnavailable,
        }
    }
}

/// Where secrets live. One capability: versioned secret storage.
#[async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug {
    /// Writes a new version and returns its metadata.
    async fn put(&self, secret: NewSecret) -> Result<SecretMeta, StoreError>;
    /// The current version with its value.
    async fn get(&self, name: &str) -> Result<SecretRecord, StoreError>;
    /// The current version's metadata.
    async fn metadata(&self, name: &str) -> Result<SecretMeta, StoreError>;
    /// The current version's metadata as the server asked knows it, which
    /// may lag the newest (a standby serving reads): enough to choose the
    /// version a check-and-set write is made on (version 0 for a name it
    /// does not know), since the write is checked against the newest, but
    /// never an answer. By default [`SecretStore::metadata`].
    async fn metadata_for_write(&self, name: &str) -> Result<SecretMeta, StoreError> {
        self.metadata(name).await
    }
    /// Metadata of secrets whose names start with `prefix`, in name order,
    /// starting after `after`.
    async fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, StoreError>;
    /// Deletes the secret and all its versions.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Permanently destroys the values of `versions` (others are kept).
    async fn destroy_versions(&self, name: &str, versions: &[u64]) -> Result<(), StoreError>;
}

/// Checks a secret name against the grammar:
///
/// ```text
/// name    = segment *( "/" segment )      ; 1 to 16 segments, at most 256 bytes
/// segment = 1*64( ALPHA / DIGIT / "." / "_" / "-" ), not "." or ".."
/// ```
///
/// CoCo resource paths (`repo/type/tag`) are names of three segments.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::InvalidName("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidName("longer than 256 bytes"));
    }
    let mut segments = 0usize;
    for segment in name.split('/') {
        segments += 1;
        if segments > MAX_SEGMENTS {
            return Err(StoreError::InvalidName("more than 16 segments"));
        }
        if segment.is_empty() {
            return Err(StoreError::InvalidName("empty segment"));
        }
        if segment.len() > MAX_SEGMENT_LEN {
            return Err(StoreError::InvalidName("segment longer than 64 bytes"));
        }
        if segment == "." || segment == ".." {
            return Err(StoreError::InvalidName("segment is . or .."));
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(StoreError::InvalidName("characters outside [A-Za-z0-9._-]"));
        }
    }
    Ok(())
}

/// Normalizes and checks a measurement allow-list entry: 96 hex digits
/// (48 bytes), returned in lowercase.
pub fn normalize_measurement(hex_str: &str) -> Option<String> {
    let lower = hex_str.trim().to_ascii_lowercase();
    (lower.len() == 96 && lower.bytes().all(|b| b.is_ascii_hexdigit())).then_some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "default/key/model-1", "repo/type/tag", "a.b_c-D/9"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "../x", "a/./b", "a b", "ä", "a\0b", &"x".repeat(65), &"a/".repeat(17)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&vec!["x".repeat(64); 5].join("/")).is_err());
    }

    #[test]
    fn measurements() {
        assert_eq!(normalize_measurement(&"AB".repeat(48)), Some("ab".repeat(48)));
        assert_eq!(normalize_measurement(&"ab".repeat(47)), None);
        assert_eq!(normalize_measurement(&"zz".repeat(48)), None);
    }

    #[test]
    fn value_debug_hides_bytes() {
        let v = SecretValue::new(b"top secret".to_vec());
        assert_eq!(format!("{v:?}"), "SecretValue(10 bytes)");
    }
}

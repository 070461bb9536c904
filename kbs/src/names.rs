//! Secret names the whole broker agrees on: their length limit and the
//! reserved namespace.
//!
//! A leaf: it imports no other module of the crate. The name grammar is
//! [`crate::store::validate_name`].

use std::fmt;

/// Longest secret name, in bytes (names in challenges, the store, scopes).
pub const MAX_NAME_LEN: usize = 256;

/// Names under this prefix are the broker's own: policies and reference
/// values live in the secret store under it (`crate::policy::POLICY_PREFIX`,
/// `crate::policy::REFVALS_PREFIX`). No secret call writes, lists or
/// releases them.
pub const RESERVED_PREFIX: &str = "_kbs/";

/// A name under [`RESERVED_PREFIX`] where a secret name was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedName;

impl ReservedName {
    /// The one message for a reserved name.
    pub const MESSAGE: &'static str = "names under _kbs/ are reserved";
}

impl fmt::Display for ReservedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::MESSAGE)
    }
}

impl std::error::Error for ReservedName {}

/// Whether `name` lies in the reserved namespace.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Refuses a name in the reserved namespace.
pub fn check_not_reserved(name: &str) -> Result<(), ReservedName> {
    if is_reserved(name) { Err(ReservedName) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_namespace() {
        for reserved in ["_kbs/", "_kbs/policies/x", "_kbs/refvals/team-a"] {
            assert_eq!(check_not_reserved(reserved), Err(ReservedName), "{reserved}");
        }
        for free in ["_kbs", "models/_kbs/x", "_kbsx/y", "a"] {
            assert_eq!(check_not_reserved(free), Ok(()), "{free}");
        }
        assert!(ReservedName.to_string().contains(RESERVED_PREFIX));
    }
}

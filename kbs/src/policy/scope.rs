//! Policy scopes: which secrets a policy covers, and which policy wins.
//!
//! ```text
//! scope = "*"                 ; every secret
//!       / prefix "/"          ; every secret whose name starts with prefix "/"
//!       / prefix "*"          ; every secret whose name starts with prefix
//!       / name                ; exactly this secret
//! ```
//!
//! The most specific scope wins: an exact name beats every prefix, a
//! longer prefix beats a shorter one, and `*` comes last. `models/*` is the
//! same scope as `models/`.

use std::cmp::Ordering;
use std::fmt;

use crate::names::{MAX_NAME_LEN, ReservedName, check_not_reserved};
use crate::store::validate_name;

/// A parsed, canonical scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `*`: every secret.
    All,
    /// Names starting with this (non-empty) prefix.
    Prefix(String),
    /// Exactly this name.
    Exact(String),
}

/// Why a scope was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid policy scope {scope:?}: {why}")]
pub struct ScopeError {
    scope: String,
    why: &'static str,
}

impl Scope {
    /// Parses and checks a scope.
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let err = |why| ScopeError { scope: text.chars().take(300).collect(), why };
        if text == "*" {
            return Ok(Self::All);
        }
        if text.len() > MAX_NAME_LEN + 1 {
            return Err(err("longer than 257 bytes"));
        }
        // The reserved namespace, also when named without its slash.
        check_not_reserved(text)
            .and_then(|()| check_not_reserved(&format!("{text}/")))
            .map_err(|_| err(ReservedName::MESSAGE))?;
        if let Some(prefix) = text.strip_suffix('*') {
            // A prefix: every name it can start must be possible, so the
            // prefix (without a trailing "/") must itself be a valid name.
            let stem = prefix.strip_suffix('/').unwrap_or(prefix);
            if stem.contains('*') {
                return Err(err("'*' is allowed only at the end"));
            }
            validate_name(stem).map_err(|_| err("the prefix is not the start of a valid secret name"))?;
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        if let Some(stem) = text.strip_suffix('/') {
            validate_name(stem).map_err(|_| err("the prefix is not the start of a valid secret name"))?;
            return Ok(Self::Prefix(text.to_owned()));
        }
        validate_name(text).map_err(|_| err("not a valid secret name"))?;
        Ok(Self::Exact(text.to_owned()))
    }

    /// Whether this scope covers `name`.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Self::Exact(exact) => name == exact,
        }
    }

    /// Orders scopes most specific first.
    pub fn specificity_cmp(&self, other: &Self) -> Ordering {
        fn rank(s: &Scope) -> (u8, usize) {
            match s {
                Scope::Exact(n) => (2, n.len()),
                Scope::Prefix(p) => (1, p.len()),
                Scope::All => (0, 0),
            }
        }
        rank(other).cmp(&rank(self))
    }
}

impl fmt::Display for Scope {
    /// The canonical text: `*`, `prefix/`, `prefix*` or the name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Prefix(p) if p.ends_with('/') => f.write_str(p),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Exact(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn most_specific<'a>(scopes: &'a [&str], name: &str) -> Option<&'a str> {
        let mut parsed: Vec<(Scope, &str)> = scopes.iter().map(|s| (Scope::parse(s).unwrap(), *s)).collect();
        parsed.sort_by(|a, b| a.0.specificity_cmp(&b.0));
        parsed.into_iter().find(|(s, _)| s.covers(name)).map(|(_, text)| text)
    }

    #[test]
    fn parses_and_canonicalizes() {
        assert_eq!(Scope::parse("*").unwrap(), Scope::All);
        assert_eq!(Scope::parse("models/").unwrap(), Scope::Prefix("models/".into()));
        assert_eq!(Scope::parse("models/*").unwrap(), Scope::Prefix("models/".into()));
        assert_eq!(Scope::parse("models/llama*").unwrap(), Scope::Prefix("models/llama".into()));
        assert_eq!(Scope::parse("models/llama/key").unwrap(), Scope::Exact("models/llama/key".into()));
        assert_eq!(Scope::parse("models/*").unwrap().to_string(), "models/");
        assert_eq!(Scope::parse("models/llama*").unwrap().to_string(), "models/llama*");
        for bad in ["", "/", "**", "a**", "a*b", "a//", "../x*", "a b", "_kbs/policies/x", "_kbs/", "_kbs/x*", "a/*/b"]
        {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
        let reserved = Scope::parse("_kbs").unwrap_err().to_string();
        assert!(reserved.ends_with("names under _kbs/ are reserved"), "{reserved}");
        assert!(Scope::parse("models/_kbs/x").is_ok());
    }

    #[test]
    fn most_specific_wins() {
        let scopes = ["*", "models/", "models/llama*", "models/llama/key"];
        assert_eq!(most_specific(&scopes, "models/llama/key"), Some("models/llama/key"));
        assert_eq!(most_specific(&scopes, "models/llama/other"), Some("models/llama*"));
        assert_eq!(most_specific(&scopes, "models/llama2/key"), Some("models/llama*"));
        assert_eq!(most_specific(&scopes, "models/mistral/key"), Some("models/"));
        assert_eq!(most_specific(&scopes, "other/key"), Some("*"));
        assert_eq!(most_specific(&["models/"], "other/key"), None);
        // "models/" does not cover "models" itself, nor "modelsx".
        assert_eq!(most_specific(&["models/"], "modelsx/a"), None);
    }
}

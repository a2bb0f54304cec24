//! An API key that cannot leak: it prints as its fingerprint everywhere.

use sha2::{Digest, Sha256};
use std::fmt;

/// A secret API key. `Debug` and `Display` show only the fingerprint, so a key
/// can be logged, put in an error or a report by mistake without leaking.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey {
    secret: String,
    fingerprint: String,
}

impl ApiKey {
    /// Wraps a secret key string.
    pub fn new(secret: impl Into<String>) -> Self {
        let secret = secret.into();
        let fingerprint = fingerprint(&secret);
        ApiKey {
            secret,
            fingerprint,
        }
    }

    /// The secret itself: only for the wire (a header or a query parameter).
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// A short, stable name for the key that is safe to print and store.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// `AIza…k3Qf` for long keys (what Google's console shows), a hash prefix
/// `#1a2b3c4d` for short ones, where a prefix and suffix would reveal too much.
fn fingerprint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 24 {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}…{tail}")
    } else {
        let digest = Sha256::digest(secret.as_bytes());
        format!("#{}", &hex::encode(digest)[..8])
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.fingerprint)
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_show_head_and_tail_only() {
        let key = ApiKey::new("AIzaSyD-this-is-not-a-real-key-k3Qf");
        assert_eq!(key.fingerprint(), "AIza…k3Qf");
        assert_eq!(format!("{key:?}"), "ApiKey(AIza…k3Qf)");
    }

    #[test]
    fn short_keys_show_a_hash_prefix() {
        let key = ApiKey::new("test-key-1");
        assert!(key.fingerprint().starts_with('#'));
        assert_eq!(key.fingerprint().len(), 9);
        assert!(!key.to_string().contains("test-key-1"));
        assert_ne!(key.fingerprint(), ApiKey::new("test-key-2").fingerprint());
    }
}

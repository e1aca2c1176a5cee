//! API keys: random tokens shown once, stored only as their SHA-256.
//!
//! A token is `tg_<key id>_<64 hex secret>`: 256 random bits, so a fast hash is the right
//! one (nothing to brute-force), and the key id inside lets `keys revoke` name it.

use crate::policy::Caller;
use crate::policy::canonical::hex;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A freshly minted key: `token` is shown once and never stored.
#[derive(Clone)]
pub struct NewKey {
    pub id: String,
    pub token: String,
    pub secret_sha256: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Longest bearer token we hash; anything longer is not one of ours.
pub const MAX_TOKEN_BYTES: usize = 256;

pub fn generate() -> Result<NewKey, getrandom::Error> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let id = format!("k{}", hex(&id));
    let token = format!("tg_{id}_{}", hex(&secret));
    let secret_sha256 = hash_token(&token);
    Ok(NewKey {
        id,
        token,
        secret_sha256,
    })
}

pub fn hash_token(token: &str) -> String {
    TokenHash::of(token).as_str().to_owned()
}

/// The hex SHA-256 of a token, on the stack: authenticating a call looks the key up
/// without allocating.
pub struct TokenHash([u8; 64]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (pair, b) in out
            .chunks_exact_mut(2)
            .zip(Sha256::digest(token.as_bytes()))
        {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        TokenHash(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Random identifiers for approvals.
pub fn random_id(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{prefix}{}", hex(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_hash_to_what_is_stored() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with(&format!("tg_{}_", a.id)));
        assert_eq!(hash_token(&a.token), a.secret_sha256);
        assert_eq!(
            hash_token(&a.token),
            hex(&Sha256::digest(a.token.as_bytes()))
        );
        assert!(!format!("{a:?}").contains(&a.token));
    }
}

/// Live keys in memory, by the SHA-256 of their secret, so authenticating a call needs no
/// database round trip, and calls keep authenticating while the database is unreachable.
///
/// A key not found here is looked up in the store (a key minted a moment ago works at
/// once). Revocations reach the cache when it is reloaded: on every `key_refresh_interval`
/// tick and, on PostgreSQL, at once through `NOTIFY toolgate_keys`.
///
/// Callers are shared (`Arc`): a hit costs a reference count, not copies of its strings.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: std::sync::RwLock<std::collections::HashMap<String, Arc<Caller>>>,
}

impl KeyCache {
    pub fn get(&self, secret_sha256: &str) -> Option<Arc<Caller>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.get(secret_sha256).cloned()
    }

    pub fn insert(&self, secret_sha256: String, caller: Arc<Caller>) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.insert(secret_sha256, caller);
    }

    /// Replaces the whole cache with the store's live keys (revoked keys drop out).
    pub fn replace_all(&self, live: Vec<(String, Caller)>) {
        let fresh = live.into_iter().map(|(k, c)| (k, Arc::new(c))).collect();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        *keys = fresh;
    }
}

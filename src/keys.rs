//! API keys: random tokens shown once, stored only as their SHA-256.
//!
//! A token is `tg_<key id>_<64 hex secret>`: 256 random bits, so a fast hash is the right
//! one (nothing to brute-force), and the key id inside lets `keys revoke` name it.

use crate::policy::Caller;
use crate::policy::canonical::hex;
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
///
/// Every call computes it, so it uses ring's SHA-256 (the same one HMACs webhooks):
/// assembly with the CPU's SHA extensions where it has them and AVX2 or SSSE3 where it
/// does not, where the `sha2` crate has the SHA extensions or portable Rust. On a CPU
/// without them (many servers' Xeons; valgrind hides them too) ring's takes far fewer
/// instructions (`BENCHMARKS.md` has the figures). A unit test checks the two agree.
pub struct TokenHash([u8; 64]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        for (pair, &b) in out.chunks_exact_mut(2).zip(digest.as_ref()) {
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

/// A first admin key given to the server by the hash of its token
/// (`bootstrap_admin_key = "<tenant>:<key id>:<sha256 hex>"`, from `toolgate keys generate`):
/// the server creates it at start if no key has its id, so a deployment gets its first
/// admin without a shell in the pod, and the token itself never reaches the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub tenant: String,
    pub id: String,
    pub secret_sha256: String,
}

impl Bootstrap {
    /// The value for `key`'s token in `tenant`.
    pub fn of(tenant: &str, key: &NewKey) -> Bootstrap {
        Bootstrap {
            tenant: tenant.to_owned(),
            id: key.id.clone(),
            secret_sha256: key.secret_sha256.clone(),
        }
    }

    /// Reads `<tenant>:<key id>:<sha256 hex>`, or says what is wrong (never repeating it).
    pub fn parse(value: &str) -> Result<Bootstrap, String> {
        let mut parts = value.trim().splitn(3, ':');
        let (Some(tenant), Some(id), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(
                "must be <tenant>:<key id>:<sha256 hex>, as `toolgate keys generate` prints it"
                    .into(),
            );
        };
        crate::policy::names::TenantId::parse("tenant", tenant).map_err(|e| e.to_string())?;
        let hex_of = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !(id.starts_with('k') && hex_of(&id[1..], 16)) {
            return Err(
                "the key id must be k and 16 hex digits, as `toolgate keys generate` makes it"
                    .into(),
            );
        }
        if !hex_of(hash, 64) {
            return Err("the hash must be 64 lowercase hex digits (SHA-256 of the token)".into());
        }
        Ok(Bootstrap {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            secret_sha256: hash.to_owned(),
        })
    }
}

impl std::fmt::Display for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.tenant, self.id, self.secret_sha256)
    }
}

/// Random identifiers for approvals.
pub fn random_id(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{prefix}{}", hex(&bytes)))
}

/// `prefix` then `n` in lower-case hex, at least `width` digits: the decision ids every
/// Decide makes, built without `core::fmt` (BENCHMARKS.md, the profile).
pub fn numbered_id(prefix: &str, n: u64, width: usize) -> String {
    let digits = HexDigits::of(n, width);
    let mut id = String::with_capacity(prefix.len() + digits.as_bytes().len());
    id.push_str(prefix);
    id.extend(digits.as_bytes().iter().map(|d| char::from(*d)));
    id
}

/// `n` in lower-case hex, at least `width` digits (at most 16), on the stack.
pub struct HexDigits {
    digits: [u8; 16],
    start: usize,
}

impl HexDigits {
    pub fn of(n: u64, width: usize) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [b'0'; 16];
        let mut at = digits.len();
        let mut rest = n;
        while rest > 0 || at == digits.len() {
            at -= 1;
            digits[at] = DIGITS[(rest & 0xf) as usize];
            rest >>= 4;
        }
        let start = at.min(digits.len().saturating_sub(width));
        HexDigits { digits, start }
    }

    /// The digits, as ASCII.
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_token_hash_is_the_hex_sha256_of_the_token() {
        use sha2::{Digest, Sha256};
        // FIPS 180-2's example, then lengths around SHA-256's 64-byte blocks.
        assert_eq!(
            super::TokenHash::of("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for len in [0, 1, 55, 56, 63, 64, 65, 85, 119, 120, 128, 256] {
            let token: String = (0..len)
                .map(|i| char::from(b'!' + (i % 90) as u8))
                .collect();
            let expected = super::hex(&Sha256::digest(token.as_bytes()));
            assert_eq!(
                super::TokenHash::of(&token).as_str(),
                expected,
                "{len} bytes"
            );
        }
    }

    #[test]
    fn numbered_ids_write_what_format_writes() {
        for n in [0, 1, 0xf, 0x10, 0xabc, u64::from(u32::MAX), u64::MAX] {
            for width in [0, 1, 10, 16] {
                assert_eq!(
                    super::numbered_id("dec_x_", n, width),
                    format!("dec_x_{n:0width$x}"),
                    "{n} at width {width}"
                );
            }
        }
    }

    #[test]
    fn a_bootstrap_value_reads_back_and_anything_else_is_refused() {
        let key = generate().unwrap();
        let value = Bootstrap::of("acme", &key).to_string();
        let read = Bootstrap::parse(&value).unwrap();
        assert_eq!(
            (read.id, read.secret_sha256),
            (key.id.clone(), hash_token(&key.token))
        );
        let hash = hash_token(&key.token);
        for bad in [
            String::new(),
            "acme".into(),
            format!("acme:{}", key.id),
            format!("acme:{}:{}", key.id, &hash[1..]),
            format!("acme:{}:{}", key.id, hash.to_uppercase()),
            format!("acme:kxyz:{hash}"),
            format!("a cme:{}:{hash}", key.id),
            key.token.clone(),
        ] {
            let e = Bootstrap::parse(&bad).unwrap_err();
            assert!(!e.contains(&hash[..10]), "{e}");
        }
    }

    use super::*;
    use sha2::{Digest, Sha256};

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

/// Whether `token` has the shape of a key [`generate`] makes (`tg_k<16 hex>_<64 hex>`, 85
/// bytes). Anything else cannot be a key, and is refused without a look-up.
pub fn well_formed(token: &str) -> bool {
    // Every byte looked at, without stopping at the first bad one: the loop then runs
    // many bytes per instruction, on every call's key.
    let hex = |s: &[u8]| {
        s.iter()
            .fold(true, |ok, b| ok & matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let t = token.as_bytes();
    t.len() == TOKEN_BYTES
        && t.starts_with(b"tg_k")
        && t[20] == b'_'
        && hex(&t[4..20])
        && hex(&t[21..])
}

/// The length of every token [`generate`] makes.
const TOKEN_BYTES: usize = "tg_k".len() + 16 + "_".len() + 64;

/// Most tokens remembered as unknown; the set is emptied when it fills up (and at every
/// reload), so it stays bounded whatever a client sends.
const MAX_MISSES: usize = 4096;
/// Look-ups of unknown tokens that may run in the database at once.
const MISS_LOOKUPS: usize = 4;

/// Live keys in memory, by the SHA-256 of their secret, so authenticating a call needs no
/// database round trip, and calls keep authenticating while the database is unreachable.
///
/// A key not found here is looked up in the store (a key minted a moment ago works at
/// once), at most [`MISS_LOOKUPS`] at a time; a token the store did not know is remembered
/// (up to [`MAX_MISSES`]) and refused without a look-up until the next reload. Revocations
/// reach the cache when it is reloaded: on every `key_refresh_interval` tick and, on
/// PostgreSQL, at once through `NOTIFY toolgate_keys`. Each reload starts a new generation,
/// and a look-up that began before it does not insert what it read, so a revoked key read
/// just before its revocation cannot outlive the reload that dropped it.
///
/// Callers are shared (`Arc`): a hit costs a reference count, not copies of its strings.
#[derive(Debug)]
pub struct KeyCache {
    keys: std::sync::RwLock<Live>,
    misses: std::sync::Mutex<std::collections::HashSet<String>>,
    lookups: tokio::sync::Semaphore,
    /// Tells open streams that the keys were reloaded, so each checks that its own key is
    /// still live (revocation ends streams as it refuses calls).
    reloads: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Live {
    by_hash: crate::FastMap<String, Arc<Caller>>,
    /// The ids of the keys in `by_hash`.
    ids: std::collections::HashSet<String>,
    generation: u64,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            keys: Default::default(),
            misses: Default::default(),
            lookups: tokio::sync::Semaphore::new(MISS_LOOKUPS),
            reloads: tokio::sync::watch::channel(0).0,
        }
    }
}

impl KeyCache {
    pub fn get(&self, secret_sha256: &str) -> Option<Arc<Caller>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.by_hash.get(secret_sha256).cloned()
    }

    /// The current generation: read it before a look-up, hand it to
    /// [`Self::insert_if_current`] after.
    pub fn generation(&self) -> u64 {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Caches a key read from the store, unless a reload happened since `generation`.
    pub fn insert_if_current(&self, generation: u64, secret_sha256: &str, caller: Arc<Caller>) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys.generation == generation {
            keys.ids.insert(caller.key_id.clone());
            keys.by_hash.insert(secret_sha256.to_owned(), caller);
        }
    }

    /// A turn to look an unknown token up in the store; `None` when the token is known
    /// to be unknown. Waits while [`MISS_LOOKUPS`] look-ups run.
    pub async fn miss_lookup(
        &self,
        secret_sha256: &str,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if self.is_known_miss(secret_sha256) {
            return None;
        }
        let permit = self.lookups.acquire().await.ok()?;
        // Another look-up of the same token may have finished while this one waited.
        (!self.is_known_miss(secret_sha256)).then_some(permit)
    }

    fn is_known_miss(&self, secret_sha256: &str) -> bool {
        let misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        misses.contains(secret_sha256)
    }

    /// Remembers a token the store did not know.
    pub fn record_miss(&self, secret_sha256: &str) {
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses.len() >= MAX_MISSES {
            misses.clear();
        }
        misses.insert(secret_sha256.to_owned());
    }

    /// Replaces the whole cache with the store's live keys (revoked keys drop out), and
    /// tells the open streams.
    pub fn replace_all(&self, live: Vec<(String, Caller)>) {
        let by_hash: crate::FastMap<_, _> =
            live.into_iter().map(|(k, c)| (k, Arc::new(c))).collect();
        let ids = by_hash.values().map(|c| c.key_id.clone()).collect();
        let generation = {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            keys.by_hash = by_hash;
            keys.ids = ids;
            keys.generation += 1;
            keys.generation
        };
        self.misses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.reloads.send_replace(generation);
    }

    /// Whether the key `key_id` is live as of the last reload (or was found since).
    pub fn is_live(&self, key_id: &str) -> bool {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.ids.contains(key_id)
    }

    /// Changes at every reload: a stream waits on it, then checks [`Self::is_live`].
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::policy::Role;

    fn caller(key: &str) -> Caller {
        Caller {
            key_id: key.into(),
            principal: format!("key:{key}"),
            tenant: "acme".into(),
            role: Role::Agent,
        }
    }

    #[test]
    fn only_our_key_shape_is_well_formed() {
        let key = generate().unwrap();
        assert!(well_formed(&key.token));
        for bad in [
            "tg_kdeadbeef_0000",
            "tg_k_nope",
            "",
            "Bearer",
            &key.token.to_uppercase(),
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
        assert!(!well_formed(&format!("{}0", key.token)));
        // The separator elsewhere, at the same length.
        let t = &key.token;
        let moved = format!("{}_{}{}", &t[..19], &t[19..20], &t[21..]);
        assert_eq!(moved.len(), key.token.len());
        assert!(!well_formed(&moved), "{moved}");
        // A byte out of place anywhere.
        for at in 0..key.token.len() {
            let mut bad = key.token.clone().into_bytes();
            bad[at] = if at == 20 { b'0' } else { b'G' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(!well_formed(&bad), "{bad}");
        }
    }

    #[test]
    fn a_lookup_that_raced_a_reload_does_not_insert_and_misses_stay_bounded() {
        let cache = KeyCache::default();
        let before = cache.generation();
        cache.replace_all(vec![]);
        cache.insert_if_current(before, "h1", Arc::new(caller("k1")));
        assert!(cache.get("h1").is_none(), "a revoked key came back");
        cache.insert_if_current(cache.generation(), "h1", Arc::new(caller("k1")));
        assert!(cache.get("h1").is_some());
        for i in 0..MAX_MISSES + 10 {
            cache.record_miss(&format!("m{i}"));
        }
        let misses = cache.misses.lock().unwrap().len();
        assert!(misses <= MAX_MISSES, "{misses}");
    }

    #[tokio::test]
    async fn a_known_miss_gets_no_lookup() {
        let cache = KeyCache::default();
        assert!(cache.miss_lookup("x").await.is_some());
        cache.record_miss("x");
        assert!(cache.miss_lookup("x").await.is_none());
        cache.replace_all(vec![]);
        assert!(cache.miss_lookup("x").await.is_some());
    }
}

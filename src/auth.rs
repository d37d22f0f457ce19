//! Bearer-key authentication: the token is read only from `Authorization`,
//! hashed with SHA-256 and looked up by digest; the token itself is never
//! stored, logged or echoed.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;

use crate::error::{BadRequest, GatewayError};
use crate::host::TenantId;
use crate::ratelimit::Rate;
use crate::scope::KeyScope;

#[derive(Debug, Clone)]
pub struct Key {
    pub id: Arc<str>,
    /// `id` as the `X-Gateway-Key-Id` value, built once here.
    pub header: HeaderValue,
    pub tenant: TenantId,
    /// The quota that applies: the key's own, else its tenant's `key_rate`,
    /// else `limits.default_rate`.
    pub rate: Option<Rate>,
    pub expires: Option<SystemTime>,
    pub revoked: bool,
    /// What the key may do (`scope`, `apis`); unscoped by default.
    pub scope: KeyScope,
}

/// SHA-256 digest → key. The digests are uniformly random, so the map hashes
/// them by their first eight bytes instead of running SipHash over 32. The
/// config's table holds [`Key`]s; the runtime compiles it into one whose
/// entries carry each key's limiter too ([`KeyTable::map`]).
#[derive(Debug)]
pub struct KeyTable<V = Key> {
    by_hash: HashMap<[u8; 32], usize, std::hash::BuildHasherDefault<DigestHasher>>,
    keys: Vec<V>,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable {
            by_hash: HashMap::default(),
            keys: Vec::new(),
        }
    }
}

impl<V> KeyTable<V> {
    /// Add a key under its digest; false (and nothing added) if the digest
    /// is taken.
    pub fn insert(&mut self, digest: [u8; 32], key: V) -> bool {
        if self.by_hash.contains_key(&digest) {
            return false;
        }
        self.by_hash.insert(digest, self.keys.len());
        self.keys.push(key);
        true
    }

    pub fn lookup(&self, digest: &[u8; 32]) -> Option<&V> {
        self.by_hash.get(digest).map(|i| &self.keys[*i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &V> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The same table with every key replaced by `f(key)`.
    pub fn map<U>(&self, f: impl FnMut(&V) -> U) -> KeyTable<U> {
        KeyTable {
            by_hash: self.by_hash.clone(),
            keys: self.keys.iter().map(f).collect(),
        }
    }
}

#[derive(Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    /// `[u8; 32]` hashes as a slice: its length first (ignored, always 32),
    /// then one `write` of the bytes, whose first eight are the hash.
    fn write_usize(&mut self, _len: usize) {}
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 = u64::from_le_bytes(first);
    }
}

/// The hex SHA-256 of a token, as written in a key's `sha256:` field.
pub fn hash_token(token: &[u8]) -> String {
    hex::encode(sha256(token))
}

/// SHA-256 by aws-lc, the TLS stack's own crypto library: its assembly
/// uses the SHA extensions where the CPU has them and AVX2 where it does
/// not, where the `sha2` crate falls back to portable code (~3.5k
/// instructions a key check instead of ~2.4k: `bench/callgrind.sh`, whose
/// virtual CPU has no SHA extensions, like many Intel servers before Ice
/// Lake).
fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The token of a `Bearer <token>` credential (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    // token68 characters only: anything else is not a token we issued.
    let ok = !token.is_empty()
        && token.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        });
    ok.then_some(token)
}

/// Whether a query string carries a non-empty `token` parameter (Twenty's
/// signed file links), decoded as Twenty's query parser decodes it.
pub fn has_twenty_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(name, value)| name == "token" && !value.is_empty())
    })
}

/// A refusal, with the key when one was found (its id goes to the log).
pub struct Refused<'a> {
    pub error: GatewayError,
    pub key: Option<&'a Key>,
}

impl From<GatewayError> for Refused<'_> {
    fn from(error: GatewayError) -> Self {
        Refused { error, key: None }
    }
}

impl Refused<'_> {
    /// A guess: counts toward the brake. A missing key or a valid key on
    /// the wrong tenant does not.
    pub fn is_guess(&self) -> bool {
        matches!(
            self.error,
            GatewayError::InvalidKey | GatewayError::ExpiredKey | GatewayError::RevokedKey
        )
    }
}

/// Authenticate against `tenant` at time `now`.
pub fn authenticate<'a, V: Borrow<Key>>(
    keys: &'a KeyTable<V>,
    headers: &HeaderMap,
    tenant: TenantId,
    now: SystemTime,
) -> Result<&'a V, Refused<'a>> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(GatewayError::MissingKey.into());
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest(BadRequest::MultipleAuthorization).into());
    }
    let token = bearer_token(value.as_bytes()).ok_or(GatewayError::InvalidKey)?;
    let digest = sha256(token);
    let entry = keys.lookup(&digest).ok_or(GatewayError::InvalidKey)?;
    let key: &Key = entry.borrow();
    let refuse = |error| {
        Err(Refused {
            error,
            key: Some(key),
        })
    };
    if key.revoked {
        return refuse(GatewayError::RevokedKey);
    }
    if key.expires.is_some_and(|e| e <= now) {
        return refuse(GatewayError::ExpiredKey);
    }
    if key.tenant != tenant {
        return refuse(GatewayError::WrongTenant);
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    // The table is built with the `sha2` crate: an independent reference
    // for the lookup's aws-lc hash.
    use sha2::{Digest, Sha256};
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;

    /// When the key `soon` expires (2096).
    fn soon() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000)
    }

    fn table() -> KeyTable {
        let mut t = KeyTable::default();
        for (i, (token, tenant, revoked, expires)) in [
            ("good", 0, false, None),
            ("gone", 0, true, None),
            (
                "old",
                0,
                false,
                Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
            ),
            ("other", 1, false, None),
            ("soon", 0, false, Some(soon())),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(t.insert(
                Sha256::digest(token).into(),
                Key {
                    id: token.into(),
                    header: http::HeaderValue::from_static(token),
                    tenant,
                    rate: None,
                    expires,
                    revoked,
                    scope: Default::default(),
                }
            ));
            let _ = i;
        }
        t
    }

    fn auth(values: &[&str]) -> Result<String, String> {
        auth_at(values, SystemTime::now())
    }

    fn auth_at(values: &[&str], now: SystemTime) -> Result<String, String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        authenticate(&table(), &h, 0, now)
            .map(|k| k.id.to_string())
            .map_err(|r| r.error.outcome().as_str().to_string())
    }

    #[test]
    fn twenty_tokens() {
        assert!(has_twenty_token(Some("token=abc")));
        assert!(has_twenty_token(Some("a=1&token=abc")));
        assert!(has_twenty_token(Some("tok%65n=a%2Eb")));
        assert!(!has_twenty_token(None));
        assert!(!has_twenty_token(Some("")));
        assert!(!has_twenty_token(Some("token=")));
        assert!(!has_twenty_token(Some("token")));
        assert!(!has_twenty_token(Some("xtoken=abc&tokens=1")));
    }

    #[test]
    fn table_rows() {
        assert_eq!(auth(&[]), Err("missing_key".into()));
        assert_eq!(auth(&["Bearer good"]), Ok("good".into()));
        assert_eq!(auth(&["bearer   good "]), Ok("good".into()));
        assert_eq!(auth(&["Basic Z29vZA=="]), Err("invalid_key".into()));
        assert_eq!(auth(&["Bearer"]), Err("invalid_key".into()));
        assert_eq!(auth(&["Bearer nope"]), Err("invalid_key".into()));
        assert_eq!(auth(&["Bearer gone"]), Err("revoked_key".into()));
        assert_eq!(auth(&["Bearer old"]), Err("expired_key".into()));
        assert_eq!(auth(&["Bearer other"]), Err("wrong_tenant".into()));
        assert_eq!(
            auth(&["Bearer good", "Bearer good"]),
            Err("bad_request".into())
        );
    }

    /// A key is refused from its `expires` instant on by the very same table
    /// (no reload): each request is checked at its own time
    /// (tests/live_reload.rs runs this against the binary).
    #[test]
    fn a_key_expires_at_its_instant_without_a_new_table() {
        let (ms, soon) = (Duration::from_millis, soon());
        assert_eq!(
            auth_at(&["Bearer soon"], soon - ms(3000)),
            Ok("soon".into())
        );
        assert_eq!(auth_at(&["Bearer soon"], soon - ms(1)), Ok("soon".into()));
        assert_eq!(auth_at(&["Bearer soon"], soon), Err("expired_key".into()));
        assert_eq!(
            auth_at(&["Bearer soon"], soon + ms(1)),
            Err("expired_key".into())
        );
        assert_eq!(auth_at(&["Bearer good"], soon + ms(1)), Ok("good".into()));
    }

    #[test]
    fn hash_matches_spec_example() {
        assert_eq!(
            hash_token(b"foo"),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }

    #[test]
    fn digest_hash_is_the_digest_prefix() {
        use std::hash::BuildHasher;
        let digest: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        let h = std::hash::BuildHasherDefault::<DigestHasher>::default().hash_one(digest);
        assert_eq!(h, u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
    }
}

//! Bearer-key authentication: the token is read only from `Authorization`,
//! hashed with SHA-256 and looked up by digest; the token itself is never
//! stored, logged or echoed.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

use crate::config::validate::KeyTable;
use crate::config::{Key, TenantId};
use crate::error::{BadRequest, GatewayError};

/// The hex SHA-256 of a token, as written in a key's `sha256:` field.
pub fn hash_token(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
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

/// Authenticate against `tenant`. Returns the key's index in the key table.
pub fn authenticate<'a>(
    keys: &'a KeyTable,
    headers: &HeaderMap,
    tenant: TenantId,
    now: SystemTime,
) -> Result<(usize, &'a Key), Refused<'a>> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(GatewayError::MissingKey.into());
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest(BadRequest::MultipleAuthorization).into());
    }
    let token = bearer_token(value.as_bytes()).ok_or(GatewayError::InvalidKey)?;
    let digest: [u8; 32] = Sha256::digest(token).into();
    let idx = *keys.by_hash.get(&digest).ok_or(GatewayError::InvalidKey)?;
    let key = &keys.keys[idx];
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
    Ok((idx, key))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;

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
        ]
        .into_iter()
        .enumerate()
        {
            t.by_hash.insert(Sha256::digest(token).into(), i);
            t.keys.push(Key {
                id: token.into(),
                header: http::HeaderValue::from_static(token),
                tenant,
                rate: None,
                expires,
                revoked,
            });
        }
        t
    }

    fn auth(values: &[&str]) -> Result<String, String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        authenticate(&table(), &h, 0, SystemTime::now())
            .map(|(_, k)| k.id.to_string())
            .map_err(|r| r.error.outcome().as_str().to_string())
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

    #[test]
    fn hash_matches_spec_example() {
        assert_eq!(
            hash_token(b"foo"),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }
}

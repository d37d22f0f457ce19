//! API keys: id, tenant, SHA-256 of the token, rate, expiry, revocation.

use std::collections::HashMap;

use http::HeaderValue;

use super::values::parse_rate;
use super::{Collector, Limits, Tenant};
use crate::auth::{Key, KeyTable};
use crate::config::raw::RawKey;
use crate::host::TenantId;
use crate::scope::{Api, ApiSet, KeyScope, Scope};

pub(super) fn validate_keys(
    c: &mut Collector,
    raw: &[RawKey],
    tenant_ids: &HashMap<String, TenantId>,
    tenants: &[Tenant],
    limits: &Limits,
) -> KeyTable {
    let mut table = KeyTable::default();
    let mut id_by_digest: HashMap<[u8; 32], &str> = HashMap::with_capacity(raw.len());
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(raw.len());
    for (i, rk) in raw.iter().enumerate() {
        let p = format!("keys[{i}]");
        if !header_safe(&rk.id) {
            c.err(
                format!("{p}.id"),
                format!(
                    "{:?} must be 1-128 visible ASCII characters (it is sent in X-Gateway-Key-Id)",
                    rk.id
                ),
            );
        } else if let Some(first) = ids.insert(rk.id.as_str(), i) {
            c.err(
                format!("{p}.id"),
                format!("duplicate key id {:?} (also keys[{first}])", rk.id),
            );
        }
        let tenant = tenant_ids.get(&rk.tenant).copied();
        if tenant.is_none() {
            c.err(
                format!("{p}.tenant"),
                format!("unknown tenant {:?}", rk.tenant),
            );
        }
        let digest = parse_sha256(&rk.sha256);
        if digest.is_none() {
            c.err(
                format!("{p}.sha256"),
                "must be 64 hex characters (the SHA-256 of the token; see `twenty-gateway hash-key`)",
            );
        }
        let own_rate = rk
            .rate
            .as_ref()
            .and_then(|r| parse_rate(c, &format!("{p}.rate"), r));
        let expires = rk.expires.as_deref().and_then(|e| {
            humantime::parse_rfc3339_weak(e)
                .map_err(|err| {
                    c.err(
                        format!("{p}.expires"),
                        format!(
                            "{e:?} is not an RFC 3339 timestamp like 2027-01-01T00:00:00Z: {err}"
                        ),
                    )
                })
                .ok()
        });
        let scope = validate_scope(c, &p, rk);
        let (Some(tenant), Some(digest)) = (tenant, digest) else {
            continue;
        };
        let rate = own_rate
            .or(tenants.get(tenant).and_then(|t| t.key_rate))
            .or(limits.default_rate);
        if let Some(prev) = id_by_digest.insert(digest, rk.id.as_str()) {
            c.err(
                format!("{p}.sha256"),
                format!("duplicate key hash (also key {prev:?})"),
            );
            continue;
        }
        table.insert(
            digest,
            Key {
                id: rk.id.as_str().into(),
                header: header_value(&rk.id),
                tenant,
                rate,
                expires,
                revoked: rk.revoked.unwrap_or(false),
                scope,
            },
        );
    }
    table
}

/// `scope` and `apis` of one key (`p` is its path, `keys[i]`).
fn validate_scope(c: &mut Collector, p: &str, rk: &RawKey) -> KeyScope {
    let scope = match rk.scope.as_deref() {
        None => Scope::Write,
        Some(s) => Scope::parse(s).unwrap_or_else(|| {
            c.err(
                format!("{p}.scope"),
                format!("{s:?} is not a scope: use read or write"),
            );
            Scope::Write
        }),
    };
    let apis = match &rk.apis {
        None => ApiSet::ALL,
        Some(list) if list.is_empty() => {
            c.err(
                format!("{p}.apis"),
                "must name at least one API (core, metadata), or be left out for all",
            );
            ApiSet::ALL
        }
        Some(list) => {
            let mut set = ApiSet::EMPTY;
            for (j, name) in list.iter().enumerate() {
                match Api::parse(name) {
                    Some(api) if set.contains(api) => c.err(
                        format!("{p}.apis[{j}]"),
                        format!("{name:?} is listed twice"),
                    ),
                    Some(api) => set = set.with(api),
                    None => c.err(
                        format!("{p}.apis[{j}]"),
                        format!("{name:?} is not an API: use core or metadata"),
                    ),
                }
            }
            set
        }
    };
    KeyScope { scope, apis }
}

/// A tenant name or key id as the header value the gateway sends upstream.
/// Names that are not header-safe are reported as config errors; the
/// placeholder only keeps the (rejected) config buildable.
pub(super) fn header_value(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("-"))
}

/// Names that travel in headers and log fields: 1-128 visible ASCII.
pub(super) fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

pub(super) fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_forms() {
        let h = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
        assert!(parse_sha256(h).is_some());
        assert!(parse_sha256(&format!("sha256:{h}")).is_some());
        assert!(parse_sha256(&h[1..]).is_none());
        assert!(parse_sha256("zz").is_none());
    }
}

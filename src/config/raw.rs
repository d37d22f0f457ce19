//! The serde mirror of `gateway.yaml`: no logic, no defaults beyond "absent".
//!
//! Every struct denies unknown fields, because a typo in a security setting
//! (`revokd: true`) must fail loudly instead of silently doing nothing.
//! Values stay strings here; `validate` turns them into typed values and
//! reports every problem with its path.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub tls: RawTls,
    #[serde(default)]
    pub base_domains: Vec<String>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub access_log: Option<bool>,
    /// Limits shared through Redis (`cluster::settings` mirrors the block).
    #[serde(default)]
    pub cluster: Option<crate::cluster::RawSettings>,
    #[serde(default)]
    pub acme: Option<RawAcme>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: String,
    #[serde(default)]
    pub contact: Vec<String>,
    pub storage: String,
    #[serde(default)]
    pub ca_roots: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub https: String,
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub admin: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

/// An upstream: a URL (one server) or a pool.
#[derive(Debug)]
pub enum RawUpstream {
    Url(String),
    Pool(RawPool),
}

/// A string is a URL, a map a pool. Written by hand rather than
/// `untagged`, so that a pool's unknown or mistyped field is reported as
/// such, not as "did not match any variant".
impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawUpstream;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL or a map with `servers`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream::Url(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawUpstream, A::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(map);
                RawPool::deserialize(de).map(RawUpstream::Pool)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub servers: Vec<String>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_after: Option<u64>,
    pub healthy_after: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub auth: Option<RawAuth>,
}

/// `auth:` as written: `key`, `none`, `twenty_token`, or the older booleans.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAuth {
    Bool(bool),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub default_rate: Option<RawRate>,
    pub auth_failures_per_ip: Option<RawRate>,
    pub anonymous_per_ip: Option<RawRate>,
    pub max_request_body: Option<String>,
    pub max_header_bytes: Option<String>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub h2_max_concurrent_streams: Option<u64>,
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub requests: u64,
    pub per: String,
    #[serde(default)]
    pub burst: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: String,
    #[serde(default)]
    pub subdomain: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub key_rate: Option<RawRate>,
    #[serde(default)]
    pub rate: Option<RawRate>,
    #[serde(default)]
    pub upstream_token_env: Option<String>,
    #[serde(default)]
    pub upstream_token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub tenant: String,
    pub sha256: String,
    #[serde(default)]
    pub rate: Option<RawRate>,
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub revoked: Option<bool>,
    /// `read` or `write` (the default).
    #[serde(default)]
    pub scope: Option<String>,
    /// Some of `core`, `metadata`; absent: every API.
    #[serde(default)]
    pub apis: Option<Vec<String>>,
}

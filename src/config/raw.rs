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
    pub upstreams: BTreeMap<String, String>,
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
    pub upstreams: BTreeMap<String, String>,
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
}

//! Header names the gateway reads or sets, made once.

use http::HeaderName;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_GATEWAY_TENANT: HeaderName = HeaderName::from_static("x-gateway-tenant");
pub static X_GATEWAY_KEY_ID: HeaderName = HeaderName::from_static("x-gateway-key-id");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Headers only the gateway may set.
pub const GATEWAY_PREFIX: &str = "x-gateway-";

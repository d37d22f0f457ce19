//! Raw → typed [`Config`]: every check of SPEC's "Validation rejects" list.
//!
//! Validation never stops at the first problem: it walks the whole file and
//! collects every error with the path of the offending field, so an operator
//! fixes a config in one round trip. Files it names (certificates, token
//! files) are read here, so a bad certificate fails `check`/reload, not traffic.
//!
//! One file per part of the config: [`values`] (addresses, durations, sizes,
//! rates, limits), [`upstreams`] (URLs and pools of servers), [`tenants`]
//! (tenants, their hosts and upstream overrides), [`keys`], [`cluster`], [`acme`].
//! Each compiles into the table of the step
//! that uses it (host, route, auth).

mod acme;
mod cluster;
mod keys;
mod tenants;
mod upstreams;
mod values;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

pub use self::acme::Acme;
pub use self::tenants::{Tenant, TenantRoute};
use self::upstreams::{UpstreamsCtx, parse_upstream};
pub use self::values::parse_size;
use self::values::{parse_addr, parse_cidr, validate_limits};
use super::raw::{RawAuth, RawConfig};
use super::{ConfigError, ConfigErrors};
use crate::auth::KeyTable;
use crate::host::HostTable;
use crate::ratelimit::Rate;
use crate::route::{Route, RouteAuth, RouteTable};
use crate::tls::{CertStore, LoadedCert};
use crate::upstream::Upstream;

/// The validated configuration. It only exists when every check passed.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub listen: Listen,
    pub trusted_proxies: Vec<IpNet>,
    pub certs: CertStore,
    pub hosts: HostTable,
    pub routes: RouteTable,
    pub limits: Limits,
    pub tenants: Vec<Tenant>,
    pub keys: KeyTable,
    pub access_log: bool,
    /// Limits shared through Redis, when `cluster` is set.
    pub cluster: Option<crate::cluster::Settings>,
    /// ACME for tenant domains no file certificate covers.
    pub acme: Option<Acme>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub default_rate: Option<Rate>,
    pub auth_failures_per_ip: Option<Rate>,
    /// Requests per client IP on routes without a gateway key (`auth: none`
    /// or `twenty_token`).
    pub anonymous_per_ip: Option<Rate>,
    pub max_request_body: u64,
    pub max_header_bytes: usize,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub shutdown_grace: Duration,
}

/// The SPEC's default route table, used when `routes` is absent.
const DEFAULT_ROUTES: [(&str, &str, RouteAuth); 10] = [
    ("/rest/metadata", "metadata", RouteAuth::Key),
    ("/metadata", "metadata", RouteAuth::Key),
    ("/rest", "core", RouteAuth::Key),
    ("/graphql", "core", RouteAuth::Key),
    ("/mcp", "core", RouteAuth::Key),
    ("/file", "core", RouteAuth::TwentyToken),
    ("/files", "core", RouteAuth::TwentyToken),
    ("/files-field", "core", RouteAuth::TwentyToken),
    ("/file-upload", "core", RouteAuth::TwentyToken),
    ("/open-api", "core", RouteAuth::None),
];

struct Collector {
    errors: Vec<ConfigError>,
}

impl Collector {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigErrors> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut c = Collector { errors: Vec::new() };

    let listen = Listen {
        https: parse_addr(&mut c, "listen.https", &raw.listen.https),
        http: raw
            .listen
            .http
            .as_deref()
            .map(|a| parse_addr(&mut c, "listen.http", a)),
        admin: raw
            .listen
            .admin
            .as_deref()
            .map(|a| parse_addr(&mut c, "listen.admin", a)),
    };
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, s)| parse_cidr(&mut c, &format!("trusted_proxies[{i}]"), s))
        .collect();
    let certs = validate_certs(&mut c, &raw, &dir);
    let limits = validate_limits(&mut c, &raw);

    // Upstreams by name.
    let mut upstreams_ctx = UpstreamsCtx::new(&dir);
    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (name, raw_upstream) in &raw.upstreams {
        let field = format!("upstreams.{name}");
        if let Some(u) = parse_upstream(&mut c, &mut upstreams_ctx, &field, name, raw_upstream) {
            upstreams.insert(name.clone(), Arc::new(u));
        }
    }
    let routes = validate_routes(&mut c, &raw, &upstreams);
    let (hosts, tenants, tenant_ids) =
        tenants::validate_tenants(&mut c, &raw, &upstreams, &routes, &dir, &mut upstreams_ctx);
    let keys = keys::validate_keys(&mut c, &raw.keys, &tenant_ids, &tenants, &limits);
    let cluster = raw
        .cluster
        .as_ref()
        .and_then(|r| cluster::validate_cluster(&mut c, r));
    let acme = acme::validate_acme(&mut c, &raw, &dir, &certs);

    if !c.errors.is_empty() {
        return Err(ConfigErrors {
            file: path.to_path_buf(),
            errors: c.errors,
        });
    }
    Ok(Config {
        path: path.to_path_buf(),
        listen,
        trusted_proxies,
        certs,
        hosts,
        routes,
        limits,
        tenants,
        keys,
        access_log: raw.access_log.unwrap_or(true),
        cluster,
        acme,
    })
}

fn validate_certs(c: &mut Collector, raw: &RawConfig, dir: &Path) -> CertStore {
    let mut loaded = Vec::new();
    if raw.tls.certificates.is_empty() {
        c.err("tls.certificates", "at least one certificate is required");
    }
    for (i, rc) in raw.tls.certificates.iter().enumerate() {
        match LoadedCert::load(&dir.join(&rc.cert), &dir.join(&rc.key)) {
            Ok(cert) => loaded.push(cert),
            Err(e) => c.err(format!("tls.certificates[{i}]"), e.to_string()),
        }
    }
    CertStore::new(loaded)
}

fn validate_routes(
    c: &mut Collector,
    raw: &RawConfig,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> RouteTable {
    let raw_routes: Vec<(String, String, RouteAuth)> = match &raw.routes {
        Some(routes) => routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let auth = match &r.auth {
                    None | Some(RawAuth::Bool(true)) => RouteAuth::Key,
                    Some(RawAuth::Bool(false)) => RouteAuth::None,
                    Some(RawAuth::Name(name)) => RouteAuth::parse(name).unwrap_or_else(|| {
                        c.err(
                            format!("routes[{i}].auth"),
                            format!(
                                "{name:?} is not one of key, none, twenty_token (or true, false)"
                            ),
                        );
                        RouteAuth::Key
                    }),
                };
                (r.prefix.clone(), r.upstream.clone(), auth)
            })
            .collect(),
        None => DEFAULT_ROUTES
            .iter()
            .map(|(p, u, a)| (p.to_string(), u.to_string(), *a))
            .collect(),
    };
    let mut routes = Vec::new();
    let mut seen_prefixes = HashSet::new();
    for (i, (prefix, upstream, auth)) in raw_routes.into_iter().enumerate() {
        let p = format!("routes[{i}]");
        if let Err(why) = crate::target::validate_route_prefix(&prefix) {
            c.err(format!("{p}.prefix"), format!("{prefix:?} {why}"));
            continue;
        }
        let prefix = prefix.trim_end_matches('/').to_string();
        let prefix = if prefix.is_empty() {
            "/".into()
        } else {
            prefix
        };
        if !seen_prefixes.insert(prefix.clone()) {
            c.err(
                format!("{p}.prefix"),
                format!("duplicate route prefix {prefix:?}"),
            );
        }
        // Declared but invalid upstreams were reported above already.
        if !raw.upstreams.contains_key(&upstream) {
            c.err(
                format!("{p}.upstream"),
                format!(
                    "unknown upstream {upstream:?} (defined: {})",
                    names(upstreams)
                ),
            );
        }
        routes.push(Route {
            prefix: prefix.into(),
            upstream: upstream.into(),
            auth,
        });
    }
    RouteTable::new(routes)
}

fn names(map: &BTreeMap<String, Arc<Upstream>>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.keys().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("16KiB"), Some(16 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }
}

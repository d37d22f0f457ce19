//! Raw → typed [`Config`]: every check of SPEC's "Validation rejects" list.
//!
//! Validation never stops at the first problem: it walks the whole file and
//! collects every error with the path of the offending field, so an operator
//! fixes a config in one round trip. Files it names (certificates, token
//! files) are read here, so a bad certificate fails `check`/reload, not traffic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use ipnet::IpNet;

use super::raw::{RawConfig, RawKey, RawRate, RawTenant};
use super::{ConfigError, ConfigErrors};
use crate::proxy::host::normalize_host;
use crate::proxy::route::{Route, RouteTable};
use crate::tls::{CertStore, LoadedCert};

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// A GCRA quota: `requests` per `per`, with `burst` cells of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

impl Rate {
    /// Time for one cell to replenish.
    pub fn interval(&self) -> Duration {
        self.per / self.requests.get()
    }

    /// The window in whole seconds for `RateLimit-Policy` (`w`), at least 1.
    pub fn window_secs(&self) -> u64 {
        let secs = self.per.as_secs() + u64::from(self.per.subsec_nanos() > 0);
        secs.max(1)
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub default_rate: Option<Rate>,
    pub auth_failures_per_ip: Option<Rate>,
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

/// An upstream origin: `http://host:port`.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub authority: http::uri::Authority,
}

pub type TenantId = usize;

#[derive(Debug)]
pub struct Tenant {
    pub name: Arc<str>,
    /// `name` as the `X-Gateway-Tenant` value, built once here.
    pub header: HeaderValue,
    /// The upstream of each route (same index as [`RouteTable`]), after this
    /// tenant's overrides: resolved once here, never per request.
    pub route_upstreams: Vec<Arc<Upstream>>,
    pub key_rate: Option<Rate>,
    pub rate: Option<Rate>,
    /// `Bearer <token>` replacing the client's Authorization upstream.
    pub upstream_authorization: Option<HeaderValue>,
}

/// Host → tenant: exact custom domains, then `<label>.<base_domain>`.
#[derive(Debug, Default)]
pub struct HostTable {
    pub domains: HashMap<String, TenantId>,
    pub base_domains: Vec<String>,
    pub subdomains: HashMap<String, TenantId>,
}

impl HostTable {
    /// `host` is already normalised (lowercase, no port, no trailing dot).
    pub fn lookup(&self, host: &str) -> Option<TenantId> {
        if let Some(t) = self.domains.get(host) {
            return Some(*t);
        }
        for base in &self.base_domains {
            let Some(label) = host
                .strip_suffix(base.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
            else {
                continue;
            };
            if !label.is_empty()
                && !label.contains('.')
                && let Some(t) = self.subdomains.get(label)
            {
                return Some(*t);
            }
        }
        None
    }
}

#[derive(Debug)]
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
}

/// SHA-256 digest → key. The digests are uniformly random, so the map hashes
/// them by their first eight bytes instead of running SipHash over 32.
#[derive(Debug, Default)]
pub struct KeyTable {
    pub by_hash: HashMap<[u8; 32], usize, std::hash::BuildHasherDefault<DigestHasher>>,
    pub keys: Vec<Key>,
}

impl KeyTable {
    pub fn lookup(&self, digest: &[u8; 32]) -> Option<&Key> {
        self.by_hash.get(digest).map(|i| &self.keys[*i])
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

/// The SPEC's default route table, used when `routes` is absent.
const DEFAULT_ROUTES: [(&str, &str); 4] = [
    ("/rest/metadata", "metadata"),
    ("/metadata", "metadata"),
    ("/rest", "core"),
    ("/graphql", "core"),
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
    let certs = CertStore::new(loaded);

    let limits = validate_limits(&mut c, &raw);

    // Upstreams by name.
    let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (name, url) in &raw.upstreams {
        if let Some(u) = parse_upstream(&mut c, &format!("upstreams.{name}"), name, url) {
            upstreams.insert(name.clone(), Arc::new(u));
        }
    }

    // Routes.
    let raw_routes: Vec<(String, String, bool)> = match &raw.routes {
        Some(routes) => routes
            .iter()
            .map(|r| (r.prefix.clone(), r.upstream.clone(), r.auth.unwrap_or(true)))
            .collect(),
        None => DEFAULT_ROUTES
            .iter()
            .map(|(p, u)| (p.to_string(), u.to_string(), true))
            .collect(),
    };
    let mut routes = Vec::new();
    let mut seen_prefixes = HashSet::new();
    for (i, (prefix, upstream, auth)) in raw_routes.into_iter().enumerate() {
        let p = format!("routes[{i}]");
        if let Err(why) = crate::proxy::target::validate_route_prefix(&prefix) {
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
                    names(&upstreams)
                ),
            );
        }
        routes.push(Route {
            prefix: prefix.into(),
            upstream: upstream.into(),
            auth,
        });
    }
    let routes = RouteTable::new(routes);

    // Tenants and hosts.
    let mut hosts = HostTable::default();
    for (i, d) in raw.base_domains.iter().enumerate() {
        match normalize_host(d) {
            Some(h) if !h.is_empty() => hosts.base_domains.push(h),
            _ => c.err(
                format!("base_domains[{i}]"),
                format!("invalid domain {d:?}"),
            ),
        }
    }
    // Who claims which full host name, for "two tenants claiming one host".
    let mut claimed: HashMap<String, String> = HashMap::new();
    let mut tenants = Vec::new();
    let mut tenant_ids: HashMap<String, TenantId> = HashMap::new();
    for (i, rt) in raw.tenants.iter().enumerate() {
        let p = format!("tenants[{i}]");
        if !header_safe(&rt.name) {
            c.err(
                format!("{p}.name"),
                format!(
                    "{:?} must be 1-128 visible ASCII characters (it is sent in X-Gateway-Tenant)",
                    rt.name
                ),
            );
        }
        if tenant_ids.contains_key(&rt.name) {
            c.err(
                format!("{p}.name"),
                format!("duplicate tenant {:?}", rt.name),
            );
            continue;
        }
        let id = tenants.len();
        tenant_ids.insert(rt.name.clone(), id);

        let mut claim = |c: &mut Collector, field: String, host: String| {
            if let Some(other) = claimed.get(&host) {
                c.err(
                    field,
                    format!("host {host:?} is already claimed by tenant {other:?}"),
                );
            } else {
                claimed.insert(host, rt.name.clone());
            }
        };
        if let Some(sub) = &rt.subdomain {
            let ok = normalize_host(sub).filter(|s| !s.is_empty() && !s.contains('.'));
            match ok {
                Some(label) => {
                    for base in &hosts.base_domains {
                        claim(&mut c, format!("{p}.subdomain"), format!("{label}.{base}"));
                    }
                    hosts.subdomains.entry(label).or_insert(id);
                }
                None => c.err(
                    format!("{p}.subdomain"),
                    format!("{sub:?} must be a single DNS label"),
                ),
            }
        }
        for (j, d) in rt.domains.iter().enumerate() {
            match normalize_host(d).filter(|h| !h.is_empty()) {
                Some(h) => {
                    claim(&mut c, format!("{p}.domains[{j}]"), h.clone());
                    hosts.domains.entry(h).or_insert(id);
                }
                None => c.err(format!("{p}.domains[{j}]"), format!("invalid domain {d:?}")),
            }
        }
        tenants.push(validate_tenant(&mut c, &p, rt, &upstreams, &routes, &dir));
    }
    let keys = validate_keys(&mut c, &raw.keys, &tenant_ids, &tenants, &limits);

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
    })
}

fn names(map: &BTreeMap<String, Arc<Upstream>>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn validate_tenant(
    c: &mut Collector,
    p: &str,
    rt: &RawTenant,
    defaults: &BTreeMap<String, Arc<Upstream>>,
    routes: &RouteTable,
    dir: &Path,
) -> Tenant {
    let mut own: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (name, url) in &rt.upstreams {
        let field = format!("{p}.upstreams.{name}");
        if !defaults.contains_key(name) {
            c.err(
                &field,
                format!(
                    "overrides unknown upstream {name:?} (defined: {})",
                    names(defaults)
                ),
            );
        }
        if let Some(u) = parse_upstream(c, &field, name, url) {
            own.insert(name.clone(), Arc::new(u));
        }
    }
    let route_upstreams = routes
        .routes()
        .iter()
        .filter_map(|r| {
            own.get(&*r.upstream)
                .or_else(|| defaults.get(&*r.upstream))
                .cloned()
        })
        .collect();

    let token = match (&rt.upstream_token_env, &rt.upstream_token_file) {
        (Some(_), Some(_)) => {
            c.err(
                format!("{p}.upstream_token_env"),
                "set upstream_token_env or upstream_token_file, not both",
            );
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some((format!("{p}.upstream_token_env"), v)),
            _ => {
                c.err(
                    format!("{p}.upstream_token_env"),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        },
        (None, Some(file)) => match std::fs::read_to_string(dir.join(file)) {
            Ok(v) if !v.trim().is_empty() => Some((format!("{p}.upstream_token_file"), v)),
            Ok(_) => {
                c.err(
                    format!("{p}.upstream_token_file"),
                    format!("{file} is empty"),
                );
                None
            }
            Err(e) => {
                c.err(
                    format!("{p}.upstream_token_file"),
                    format!("cannot read {file}: {e}"),
                );
                None
            }
        },
        (None, None) => None,
    };
    let upstream_authorization = token.and_then(|(field, t)| {
        match HeaderValue::try_from(format!("Bearer {}", t.trim())) {
            Ok(mut v) => {
                v.set_sensitive(true);
                Some(v)
            }
            Err(_) => {
                // Never echo the token itself.
                c.err(field, "token contains characters not allowed in a header");
                None
            }
        }
    });

    Tenant {
        name: rt.name.as_str().into(),
        header: header_value(&rt.name),
        route_upstreams,
        key_rate: rt
            .key_rate
            .as_ref()
            .and_then(|r| parse_rate(c, &format!("{p}.key_rate"), r)),
        rate: rt
            .rate
            .as_ref()
            .and_then(|r| parse_rate(c, &format!("{p}.rate"), r)),
        upstream_authorization,
    }
}

fn validate_keys(
    c: &mut Collector,
    raw: &[RawKey],
    tenant_ids: &HashMap<String, TenantId>,
    tenants: &[Tenant],
    limits: &Limits,
) -> KeyTable {
    let mut table = KeyTable::default();
    table.by_hash.reserve(raw.len());
    table.keys.reserve(raw.len());
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
        let (Some(tenant), Some(digest)) = (tenant, digest) else {
            continue;
        };
        let rate = own_rate
            .or(tenants.get(tenant).and_then(|t| t.key_rate))
            .or(limits.default_rate);
        let idx = table.keys.len();
        if let Some(prev) = table.by_hash.insert(digest, idx) {
            c.err(
                format!("{p}.sha256"),
                format!("duplicate key hash (also key {:?})", table.keys[prev].id),
            );
        }
        table.keys.push(Key {
            id: rk.id.as_str().into(),
            header: header_value(&rk.id),
            tenant,
            rate,
            expires,
            revoked: rk.revoked.unwrap_or(false),
        });
    }
    table
}

/// A tenant name or key id as the header value the gateway sends upstream.
/// Names that are not header-safe are reported as config errors; the
/// placeholder only keeps the (rejected) config buildable.
fn header_value(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("-"))
}

/// Names that travel in headers and log fields: 1-128 visible ASCII.
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn validate_limits(c: &mut Collector, raw: &RawConfig) -> Limits {
    let l = &raw.limits;
    let dur = |c: &mut Collector, field: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(s) => parse_duration(c, &format!("limits.{field}"), s).unwrap_or(default),
    };
    let size = |c: &mut Collector, field: &str, v: &Option<String>, default: u64| match v {
        None => default,
        Some(s) => match parse_size(s) {
            Some(n) if n > 0 => n,
            _ => {
                c.err(
                    format!("limits.{field}"),
                    format!("{s:?} is not a size like 10MiB, 16KiB or 4096"),
                );
                default
            }
        },
    };
    let max_connections = match l.max_connections {
        None => 10_000,
        Some(0) => {
            c.err("limits.max_connections", "must be at least 1");
            10_000
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let h2_max_concurrent_streams = match l.h2_max_concurrent_streams {
        None => 100,
        Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => n as u32,
        Some(_) => {
            c.err("limits.h2_max_concurrent_streams", "must be at least 1");
            100
        }
    };
    let max_header_bytes = size(c, "max_header_bytes", &l.max_header_bytes, 16 * 1024);
    if max_header_bytes < 1024 {
        c.err("limits.max_header_bytes", "must be at least 1KiB");
    }
    Limits {
        default_rate: l
            .default_rate
            .as_ref()
            .and_then(|r| parse_rate(c, "limits.default_rate", r)),
        auth_failures_per_ip: match &l.auth_failures_per_ip {
            Some(r) => parse_rate(c, "limits.auth_failures_per_ip", r),
            None => Some(Rate {
                requests: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
                per: Duration::from_secs(60),
                burst: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            }),
        },
        max_request_body: size(c, "max_request_body", &l.max_request_body, 10 << 20),
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        connect_timeout: dur(
            c,
            "connect_timeout",
            &l.connect_timeout,
            Duration::from_secs(5),
        ),
        upstream_timeout: dur(
            c,
            "upstream_timeout",
            &l.upstream_timeout,
            Duration::from_secs(60),
        ),
        idle_timeout: dur(c, "idle_timeout", &l.idle_timeout, Duration::from_secs(60)),
        header_read_timeout: dur(
            c,
            "header_read_timeout",
            &l.header_read_timeout,
            Duration::from_secs(10),
        ),
        max_connections,
        h2_max_concurrent_streams,
        shutdown_grace: dur(
            c,
            "shutdown_grace",
            &l.shutdown_grace,
            Duration::from_secs(30),
        ),
    }
}

fn parse_addr(c: &mut Collector, field: &str, s: &str) -> SocketAddr {
    s.trim().parse().unwrap_or_else(|_| {
        c.err(
            field,
            format!("{s:?} is not an address like 0.0.0.0:8443 or [::]:8443"),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn parse_cidr(c: &mut Collector, field: &str, s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            c.err(
                field,
                format!("{s:?} is not a CIDR like 10.0.0.0/8 or an IP"),
            )
        })
        .ok()
}

/// Longest accepted duration: beyond it, deadline arithmetic (now + d)
/// can overflow, and no timeout or rate window needs more.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

fn parse_duration(c: &mut Collector, field: &str, s: &str) -> Option<Duration> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d > MAX_DURATION => {
            c.err(
                field,
                format!("{s:?} is longer than the maximum of 366 days"),
            );
            None
        }
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            c.err(field, "must be longer than zero");
            None
        }
        Err(e) => {
            c.err(
                field,
                format!("{s:?} is not a duration like 500ms, 30s, 1m or 1h ({e})"),
            );
            None
        }
    }
}

/// `10MiB`, `16KiB`, `1GiB`, `512B` or a plain byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_rate(c: &mut Collector, field: &str, r: &RawRate) -> Option<Rate> {
    let per = parse_duration(c, &format!("{field}.per"), &r.per)?;
    let requests = u32::try_from(r.requests).ok().and_then(NonZeroU32::new);
    let Some(requests) = requests else {
        c.err(
            format!("{field}.requests"),
            "must be between 1 and 4294967295",
        );
        return None;
    };
    let burst = match r.burst {
        None => requests,
        Some(b) => match u32::try_from(b).ok().and_then(NonZeroU32::new) {
            Some(b) => b,
            None => {
                c.err(format!("{field}.burst"), "must be between 1 and 4294967295");
                return None;
            }
        },
    };
    if (per / requests.get()).is_zero() {
        c.err(
            field,
            "rate too high: one request per less than a nanosecond",
        );
        return None;
    }
    Some(Rate {
        requests,
        per,
        burst,
    })
}

fn parse_upstream(c: &mut Collector, field: &str, name: &str, url: &str) -> Option<Upstream> {
    let bad = |c: &mut Collector, why: &str| {
        c.err(
            field,
            format!("{url:?} is not a valid upstream URL ({why}); expected http://host:port"),
        );
        None
    };
    let Ok(uri) = url.trim().parse::<http::Uri>() else {
        return bad(c, "malformed URL");
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return bad(c, "https upstreams are not supported yet"),
        _ => return bad(c, "scheme must be http"),
    }
    let Some(authority) = uri.authority().cloned() else {
        return bad(c, "missing host");
    };
    if authority.as_str().contains('@') {
        return bad(c, "credentials in the URL are not allowed");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad(c, "a path or query is not supported");
    }
    Some(Upstream {
        name: name.into(),
        authority,
    })
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

    #[test]
    fn sha256_forms() {
        let h = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
        assert!(parse_sha256(h).is_some());
        assert!(parse_sha256(&format!("sha256:{h}")).is_some());
        assert!(parse_sha256(&h[1..]).is_none());
        assert!(parse_sha256("zz").is_none());
    }

    #[test]
    fn host_table_single_label_only() {
        let mut t = HostTable::default();
        t.base_domains.push("localhost".into());
        t.subdomains.insert("acme".into(), 0);
        t.domains.insert("crm.acme.test".into(), 1);
        assert_eq!(t.lookup("acme.localhost"), Some(0));
        assert_eq!(t.lookup("crm.acme.test"), Some(1));
        assert_eq!(t.lookup("x.acme.localhost"), None);
        assert_eq!(t.lookup("localhost"), None);
        assert_eq!(t.lookup(".localhost"), None);
        assert_eq!(t.lookup("acmelocalhost"), None);
    }

    #[test]
    fn digest_hash_is_the_digest_prefix() {
        use std::hash::BuildHasher;
        let digest: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        let h = std::hash::BuildHasherDefault::<DigestHasher>::default().hash_one(digest);
        assert_eq!(h, u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
    }

    #[test]
    fn window_rounds_up() {
        let r = Rate {
            requests: NonZeroU32::MIN,
            per: Duration::from_millis(1500),
            burst: NonZeroU32::MIN,
        };
        assert_eq!(r.window_secs(), 2);
    }
}

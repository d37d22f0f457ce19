//! Tenants: names, the hosts they claim (custom domains, subdomains of the
//! base domains), their upstream overrides and rates, the token sent upstream.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;

use super::keys::{header_safe, header_value};
use super::upstreams::{UpstreamsCtx, parse_upstream};
use super::values::parse_rate;
use super::{Collector, names};
use crate::balance::PoolSpec;
use crate::config::raw::{RawConfig, RawTenant};
use crate::host::{HostTable, TenantId, normalize_host};
use crate::ratelimit::Rate;
use crate::route::{Route, RouteTable};
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Tenant {
    pub name: Arc<str>,
    /// `name` as the `X-Gateway-Tenant` value, built once here.
    pub header: HeaderValue,
    /// The routes with this tenant's upstream for each (after its
    /// overrides): resolved once here, never per request.
    pub routes: RouteTable<TenantRoute>,
    pub key_rate: Option<Rate>,
    pub rate: Option<Rate>,
    /// `Bearer <token>` replacing the client's Authorization upstream.
    pub upstream_authorization: Option<HeaderValue>,
}

/// A route as one tenant sees it: the route and the upstream it goes to.
#[derive(Debug)]
pub struct TenantRoute {
    pub route: Route,
    pub upstream: Arc<Upstream>,
}

/// Tenants and the host table; also each tenant's id by name (for keys).
pub(super) fn validate_tenants(
    c: &mut Collector,
    raw: &RawConfig,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    routes: &RouteTable,
    dir: &Path,
    upstreams_ctx: &mut UpstreamsCtx<'_>,
) -> (HostTable, Vec<Tenant>, HashMap<String, TenantId>) {
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
                        claim(c, format!("{p}.subdomain"), format!("{label}.{base}"));
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
                    claim(c, format!("{p}.domains[{j}]"), h.clone());
                    hosts.domains.entry(h).or_insert(id);
                }
                None => c.err(format!("{p}.domains[{j}]"), format!("invalid domain {d:?}")),
            }
        }
        let tenant = validate_tenant(c, &p, rt, upstreams, routes, dir, upstreams_ctx);
        tenants.push(tenant);
    }
    (hosts, tenants, tenant_ids)
}

fn validate_tenant(
    c: &mut Collector,
    p: &str,
    rt: &RawTenant,
    defaults: &BTreeMap<String, Arc<Upstream>>,
    routes: &RouteTable,
    dir: &Path,
    upstreams_ctx: &mut UpstreamsCtx<'_>,
) -> Tenant {
    let mut own: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
    for (name, raw_upstream) in &rt.upstreams {
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
        if let Some(u) = parse_upstream(c, upstreams_ctx, &field, name, raw_upstream) {
            own.insert(name.clone(), Arc::new(u));
        }
    }
    let routes = routes.map(|_, route| TenantRoute {
        route: route.clone(),
        upstream: own
            .get(&*route.upstream)
            .or_else(|| defaults.get(&*route.upstream))
            .cloned()
            // An unknown upstream was reported by the route check: the
            // placeholder only keeps the (rejected) config buildable.
            .unwrap_or_else(|| {
                Arc::new(Upstream {
                    name: route.upstream.clone(),
                    pool: PoolSpec {
                        servers: Vec::new(),
                        health_check: None,
                        tls: None,
                    },
                })
            }),
    });

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
        routes,
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

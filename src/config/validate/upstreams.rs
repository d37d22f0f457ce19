//! Upstreams: a URL (one server) or a pool `{servers, health_check, ca}`,
//! compiled into the [`PoolSpec`] the balance step builds from. CA files
//! and the system roots are read here, so a bad one fails the reload, not
//! traffic; and every pool is built once against a scratch registry, so a
//! config that passes is one the runtime can install.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;

use super::Collector;
use super::values::parse_duration;
use crate::balance::{self, HealthCheck, PoolSpec, Scheme, ServerUrl, TlsClient};
use crate::config::raw::{RawHealthCheck, RawUpstream};
use crate::upstream::Upstream;

/// What every upstream of one config shares while it is validated.
pub(super) struct UpstreamsCtx<'a> {
    dir: &'a Path,
    /// The system roots, read at most once per validation.
    system: Option<Result<TlsClient, String>>,
    /// Every pool built once: same name and server with other settings is
    /// caught here, as the runtime would.
    scratch: balance::Build,
}

impl<'a> UpstreamsCtx<'a> {
    pub(super) fn new(dir: &'a Path) -> Self {
        UpstreamsCtx {
            dir,
            system: None,
            scratch: balance::Registry::default().build(),
        }
    }

    fn system_roots(&mut self) -> Result<TlsClient, String> {
        self.system
            .get_or_insert_with(|| TlsClient::new(None).map_err(|e| e.to_string()))
            .clone()
    }
}

pub(super) fn parse_upstream(
    c: &mut Collector,
    ctx: &mut UpstreamsCtx<'_>,
    field: &str,
    name: &str,
    raw: &RawUpstream,
) -> Option<Upstream> {
    let errors = c.errors.len();
    let (servers, health_check, tls) = match raw {
        RawUpstream::Url(url) => (parse_urls(c, [(field.to_owned(), url)]), None, None),
        RawUpstream::Pool(pool) => {
            if pool.servers.is_empty() {
                c.err(
                    format!("{field}.servers"),
                    "at least one server is required",
                );
            }
            let urls = pool
                .servers
                .iter()
                .enumerate()
                .map(|(i, url)| (format!("{field}.servers[{i}]"), url));
            let servers = parse_urls(c, urls);
            let check = pool
                .health_check
                .as_ref()
                .and_then(|h| parse_health_check(c, &format!("{field}.health_check"), h));
            let ca = pool.ca.as_ref().and_then(|ca| {
                TlsClient::new(Some(&ctx.dir.join(ca)))
                    .map_err(|e| c.err(format!("{field}.ca"), e.to_string()))
                    .ok()
            });
            (servers, check, ca)
        }
    };
    let needs_tls = servers.iter().any(|s| s.scheme() == Scheme::Https);
    let tls = match tls {
        None if needs_tls => ctx
            .system_roots()
            .map_err(|e| c.err(field, format!("https servers: {e}")))
            .ok(),
        tls => tls,
    };
    if c.errors.len() > errors {
        return None;
    }
    let spec = PoolSpec {
        servers,
        health_check,
        tls,
    };
    if let Err(e) = ctx.scratch.pool(name, &spec) {
        c.err(field, e.to_string());
        return None;
    }
    Some(Upstream {
        name: Arc::from(name),
        pool: spec,
    })
}

fn parse_urls<'u>(
    c: &mut Collector,
    urls: impl IntoIterator<Item = (String, &'u String)>,
) -> Vec<ServerUrl> {
    let mut servers: Vec<ServerUrl> = Vec::new();
    for (field, url) in urls {
        match ServerUrl::parse(url) {
            Ok(u) if servers.iter().any(|s| s.as_str() == u.as_str()) => {
                c.err(field, format!("{url:?} is listed twice"));
            }
            Ok(u) => servers.push(u),
            Err(why) => c.err(
                field,
                format!(
                    "{url:?} is not a valid upstream URL ({why}); expected http://host:port or https://host[:port]"
                ),
            ),
        }
    }
    servers
}

fn parse_health_check(c: &mut Collector, field: &str, h: &RawHealthCheck) -> Option<HealthCheck> {
    let errors = c.errors.len();
    let path = match h.path.as_deref() {
        None => PathAndQuery::from_static("/healthz"),
        Some(p) => match p.parse::<PathAndQuery>() {
            Ok(pq) if p.starts_with('/') => pq,
            _ => {
                c.err(
                    format!("{field}.path"),
                    format!("{p:?} is not a path starting with /"),
                );
                PathAndQuery::from_static("/")
            }
        },
    };
    let mut dur = |name: &str, v: &Option<String>, default: u64| match v {
        None => Duration::from_secs(default),
        Some(s) => {
            parse_duration(c, &format!("{field}.{name}"), s).unwrap_or(Duration::from_secs(default))
        }
    };
    let interval = dur("interval", &h.interval, 5);
    let timeout = dur("timeout", &h.timeout, 2);
    let mut count = |name: &str, v: Option<u64>, default: u32| match v {
        None => NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN),
        Some(n) => match u32::try_from(n).ok().and_then(NonZeroU32::new) {
            Some(n) => n,
            None => {
                c.err(format!("{field}.{name}"), "must be a count of at least 1");
                NonZeroU32::MIN
            }
        },
    };
    let unhealthy_after = count("unhealthy_after", h.unhealthy_after, 3);
    let healthy_after = count("healthy_after", h.healthy_after, 2);
    (c.errors.len() == errors).then_some(HealthCheck {
        path,
        interval,
        timeout,
        unhealthy_after,
        healthy_after,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{ConfigErrors, parse};

    /// The repository root holds `certs/` with a certificate and a CA.
    fn config_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway-test.yaml")
    }

    fn config(upstreams: &str, tenant_extra: &str) -> String {
        format!(
            "listen: {{ https: 127.0.0.1:0 }}\n\
             tls: {{ certificates: [ {{ cert: certs/localhost.crt, key: certs/localhost.key }} ] }}\n\
             base_domains: [localhost]\n\
             upstreams:\n{upstreams}\
             tenants:\n  - name: acme\n    subdomain: acme\n{tenant_extra}"
        )
    }

    fn errors(upstreams: &str, tenant_extra: &str) -> Vec<(String, String)> {
        match parse(&config(upstreams, tenant_extra), &config_path()) {
            Ok(_) => Vec::new(),
            Err(ConfigErrors { errors, .. }) => {
                errors.into_iter().map(|e| (e.path, e.message)).collect()
            }
        }
    }

    fn fields(upstreams: &str, tenant_extra: &str) -> Vec<String> {
        errors(upstreams, tenant_extra)
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    const METADATA: &str = "  metadata: http://127.0.0.1:3001\n";

    #[test]
    fn a_url_or_a_pool_with_defaults() {
        let ups = format!(
            "  core:\n    servers: [http://10.0.0.5:3000, https://twenty-2.internal]\n    \
             health_check: {{ interval: 1s }}\n    ca: certs/dev-ca.crt\n{METADATA}"
        );
        let cfg = parse(&config(&ups, ""), &config_path()).unwrap();
        let routes = &cfg.tenants[0].routes;
        let core = &routes.lookup("/rest").unwrap().upstream;
        let check = core.pool.health_check.as_ref().unwrap();
        assert_eq!(
            (
                check.path.as_str(),
                check.interval.as_secs(),
                check.timeout.as_secs(),
                check.unhealthy_after.get(),
                check.healthy_after.get()
            ),
            ("/healthz", 1, 2, 3, 2)
        );
        assert_eq!(core.pool.servers.len(), 2);
        assert!(core.pool.tls.is_some());
        let metadata = &routes.lookup("/metadata").unwrap().upstream;
        assert_eq!(metadata.pool.servers[0].as_str(), "http://127.0.0.1:3001");
        assert!(metadata.pool.health_check.is_none() && metadata.pool.tls.is_none());
    }

    #[test]
    fn every_problem_with_its_field() {
        let ups = format!(
            "  core:\n    servers: [http://a:1, ftp://b, http://a:1]\n    \
             health_check: {{ path: healthz, interval: soon, unhealthy_after: 0 }}\n    \
             ca: certs/missing.pem\n  empty: {{ servers: [] }}\n{METADATA}"
        );
        assert_eq!(
            fields(&ups, ""),
            [
                "upstreams.core.servers[1]",
                "upstreams.core.servers[2]",
                "upstreams.core.health_check.path",
                "upstreams.core.health_check.interval",
                "upstreams.core.health_check.unhealthy_after",
                "upstreams.core.ca",
                "upstreams.empty.servers",
            ]
        );
    }

    #[test]
    fn one_server_under_one_name_has_one_set_of_checks() {
        let ups = format!("  core: {{ servers: [http://a:1, http://b:1] }}\n{METADATA}");
        // A tenant's override listing a server of the default pool with
        // other checks: refused where the override is.
        let tenant = "    upstreams:\n      core: { servers: [http://b:1], health_check: {} }\n";
        let e = errors(&ups, tenant);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "tenants[0].upstreams.core");
        assert!(e[0].1.contains("http://b:1"), "{e:?}");
        // The same checks, or another name: fine.
        let tenant = "    upstreams:\n      core: { servers: [http://b:1, http://c:1] }\n";
        assert_eq!(fields(&ups, tenant), Vec::<String>::new());
        let ups = "  core: { servers: [http://a:1], health_check: {} }\n  metadata: http://a:1\n"
            .to_string();
        assert_eq!(fields(&ups, ""), Vec::<String>::new());
    }

    #[test]
    fn a_misspelt_pool_field_is_named() {
        let ups = format!("  core: {{ servers: [http://a:1], helth_check: {{}} }}\n{METADATA}");
        let e = errors(&ups, "");
        assert!(e[0].1.contains("helth_check"), "{e:?}");
    }
}

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

//! The `cluster:` block: the raw serde mirror and its validation.
//!
//! Validation never contacts Redis (`check` must work offline): it parses
//! the URLs, the duration and the names, and reports every problem with the
//! field it belongs to.

use crate::base::FieldError;
use std::fmt;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;

pub use crate::ratelimit::OnUnavailable;

/// `cluster:` as written in `gateway.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// One URL, or a list of node URLs (Redis Cluster).
    pub redis: Option<RawRedis>,
    pub prefix: Option<String>,
    pub timeout: Option<String>,
    pub on_unavailable: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum RawRedis {
    One(String),
    Nodes(Vec<String>),
}

impl fmt::Debug for RawRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawRedis::One(u) => f.debug_tuple("One").field(&redacted(u)).finish(),
            RawRedis::Nodes(n) => f
                .debug_tuple("Nodes")
                .field(&n.iter().map(|u| redacted(u)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

pub const DEFAULT_PREFIX: &str = "twenty-gateway:";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(25);
/// Longest accepted `timeout`: every request may wait this long for Redis.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PREFIX_LEN: usize = 100;

/// The validated block. Equal settings on reload keep the running
/// connection (and its up/down state).
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub redis: Target,
    pub prefix: String,
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("redis", &format_args!("{}", self.redis))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

/// Where Redis is. URLs may hold a password: print them with `Display`,
/// which hides it.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://`, `rediss://` or `unix://`.
    Single(String),
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://`, all alike).
    Cluster(Vec<String>),
}

impl Target {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Single(u) => f.write_str(&redacted(u)),
            Target::Cluster(nodes) => {
                f.write_str("cluster[")?;
                for (i, u) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&redacted(u))?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Raw block → [`Settings`], or every error found.
pub fn validate(raw: &RawSettings) -> Result<Settings, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };

    let redis = match &raw.redis {
        None => {
            err("redis", "is required".into());
            None
        }
        Some(RawRedis::One(url)) => match check_url(url, false) {
            Ok(_) => Some(Target::Single(url.trim().to_string())),
            Err(m) => {
                err("redis", m);
                None
            }
        },
        Some(RawRedis::Nodes(nodes)) if nodes.is_empty() => {
            err(
                "redis",
                "a list of Redis Cluster nodes must name at least one".into(),
            );
            None
        }
        Some(RawRedis::Nodes(nodes)) => {
            let mut tls = Vec::new();
            for (i, url) in nodes.iter().enumerate() {
                match check_url(url, true) {
                    Ok(t) => tls.push(t),
                    Err(m) => err(&format!("redis[{i}]"), m),
                }
            }
            if tls.len() == nodes.len() && tls.iter().any(|t| *t != tls[0]) {
                err(
                    "redis",
                    "Redis Cluster nodes must all use redis:// or all rediss://".into(),
                );
            }
            Some(Target::Cluster(
                nodes.iter().map(|u| u.trim().to_string()).collect(),
            ))
        }
    };

    let prefix = raw
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    if prefix.len() > MAX_PREFIX_LEN {
        err(
            "prefix",
            format!("is longer than {MAX_PREFIX_LEN} characters"),
        );
    } else if let Some(c) = prefix
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '{' | '}'))
    {
        err(
            "prefix",
            format!(
                "{c:?} is not allowed: printable ASCII without spaces or braces \
                 (braces would change Redis Cluster hash slots)"
            ),
        );
    }

    let timeout = match &raw.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(s) => match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() => {
                err("timeout", "must be longer than zero".into());
                None
            }
            Ok(d) if d > MAX_TIMEOUT => {
                err(
                    "timeout",
                    format!("{s:?} is longer than the maximum of 10s"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                err(
                    "timeout",
                    format!("{s:?} is not a duration like 25ms or 1s ({e})"),
                );
                None
            }
        },
    };

    let on_unavailable = match raw.on_unavailable.as_deref().map(str::trim) {
        None | Some("local") => Some(OnUnavailable::Local),
        Some("allow") => Some(OnUnavailable::Allow),
        Some("deny") => Some(OnUnavailable::Deny),
        Some(other) => {
            err(
                "on_unavailable",
                format!("{other:?} is not one of local, allow, deny"),
            );
            None
        }
    };

    match (redis, timeout, on_unavailable) {
        (Some(redis), Some(timeout), Some(on_unavailable)) if errors.is_empty() => Ok(Settings {
            redis,
            prefix,
            timeout,
            on_unavailable,
        }),
        _ => Err(errors),
    }
}

/// Parses one URL the way the client will; returns whether it uses TLS.
/// The message never repeats the URL (it may hold a password).
fn check_url(url: &str, cluster_node: bool) -> Result<bool, String> {
    let url = url.trim();
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let tls = match scheme.as_deref() {
        Some("redis") => false,
        Some("rediss") => true,
        Some("unix" | "redis+unix") if !cluster_node => false,
        Some("unix" | "redis+unix") => {
            return Err(
                "Redis Cluster nodes are reached over TCP: use redis:// or rediss://".into(),
            );
        }
        _ => {
            return Err(if cluster_node {
                "must be a redis:// or rediss:// URL".into()
            } else {
                "must be a redis://, rediss:// or unix:///path URL".into()
            });
        }
    };
    match url.into_connection_info() {
        Ok(_) => Ok(tls),
        Err(e) => Err(format!(
            "is not a usable Redis URL ({})",
            e.detail().unwrap_or("malformed")
        )),
    }
}

/// The URL with any password replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawSettings {
        serde_yaml::from_str(yaml).expect("yaml")
    }

    fn fields(r: Result<Settings, Vec<FieldError>>) -> Vec<String> {
        r.expect_err("should fail")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn defaults_and_forms() {
        let s = validate(&raw("redis: redis://127.0.0.1:6379/0")).expect("valid");
        assert_eq!(s.prefix, DEFAULT_PREFIX);
        assert_eq!(s.timeout, Duration::from_millis(25));
        assert_eq!(s.on_unavailable, OnUnavailable::Local);
        assert_eq!(s.redis, Target::Single("redis://127.0.0.1:6379/0".into()));

        let s = validate(&raw(
            "redis: [redis://10.0.0.1:7000, redis://10.0.0.2:7000]\nprefix: 'gw:'\ntimeout: 50ms\non_unavailable: deny",
        ))
        .expect("valid");
        assert!(s.redis.is_cluster());
        assert_eq!(s.timeout, Duration::from_millis(50));
        assert_eq!(s.on_unavailable, OnUnavailable::Deny);

        assert!(validate(&raw("redis: unix:///run/redis/redis.sock")).is_ok());
        assert!(validate(&raw("redis: rediss://:pw@redis.example:6380")).is_ok());
    }

    #[test]
    fn every_error_with_its_field() {
        assert_eq!(fields(validate(&raw("prefix: a"))), ["redis"]);
        assert_eq!(
            fields(validate(&raw(
                "redis: http://x\nprefix: 'a{b}'\ntimeout: 0s\non_unavailable: maybe"
            ))),
            ["redis", "prefix", "timeout", "on_unavailable"]
        );
        assert_eq!(
            fields(validate(&raw(
                "redis: [redis://a:1, unix:///s, rediss://b:2]\ntimeout: 11s"
            ))),
            ["redis[1]", "timeout"]
        );
        assert_eq!(
            fields(validate(&raw("redis: [redis://a:1, rediss://b:2]"))),
            ["redis"]
        );
        assert_eq!(fields(validate(&raw("redis: []"))), ["redis"]);
        assert!(serde_yaml::from_str::<RawSettings>("redis: x\nbogus: 1").is_err());
    }

    #[test]
    fn passwords_never_printed() {
        let url = "redis://user:s3cret@10.0.0.1:6379/0";
        assert_eq!(redacted(url), "redis://***@10.0.0.1:6379/0");
        let s = validate(&raw(&format!("redis: {url}"))).expect("valid");
        assert!(!format!("{s:?} {}", s.redis).contains("s3cret"));
        let e = validate(&raw("redis: redis://u:s3cret@host:notaport")).expect_err("bad port");
        assert!(!format!("{e:?}").contains("s3cret"));
        assert!(!format!("{:?}", raw(&format!("redis: [{url}]"))).contains("s3cret"));
    }
}

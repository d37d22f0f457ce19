//! A server's URL: `http://host[:port]` or `https://host[:port]`, kept as
//! written (metrics, events and the registry name a server by it).

use std::fmt;
use std::sync::Arc;

use http::uri::Authority;
use rustls::pki_types::ServerName;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("malformed URL")]
    Malformed,
    #[error("scheme must be http or https")]
    Scheme,
    #[error("missing host")]
    MissingHost,
    #[error("credentials in the URL are not allowed")]
    Credentials,
    #[error("a path or query is not supported")]
    PathOrQuery,
    #[error("the host is not a valid TLS server name")]
    ServerName,
}

/// One server of an upstream.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    written: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    /// The host without IPv6 brackets: what the resolver and SNI take.
    host: Arc<str>,
    port: u16,
}

impl ServerUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let written = url.trim();
        let uri: http::Uri = written.parse().map_err(|_| UrlError::Malformed)?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(UrlError::Scheme),
        };
        let authority = uri.authority().cloned().ok_or(UrlError::MissingHost)?;
        if authority.as_str().contains('@') {
            return Err(UrlError::Credentials);
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(UrlError::PathOrQuery);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        if scheme == Scheme::Https && ServerName::try_from(host).is_err() {
            return Err(UrlError::ServerName);
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        Ok(ServerUrl {
            written: written.into(),
            host: host.into(),
            scheme,
            authority,
            port,
        })
    }

    /// The URL as written in the config (trimmed).
    pub fn as_str(&self) -> &str {
        &self.written
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host[:port]` as written: the `Host` of health checks.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The host to resolve (and, over TLS, the SNI), without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, defaulted from the scheme.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name a TLS server must prove: the URL's host (a DNS name or an
    /// IP address, checked at parse time for `https`).
    pub fn server_name(&self) -> Option<ServerName<'static>> {
        ServerName::try_from(self.host()).ok().map(|n| n.to_owned())
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.written, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_a_config_may_hold() {
        let u = ServerUrl::parse(" http://10.0.0.5:3000 ").unwrap();
        assert_eq!(
            (u.as_str(), u.scheme(), u.host(), u.port()),
            ("http://10.0.0.5:3000", Scheme::Http, "10.0.0.5", 3000)
        );
        let u = ServerUrl::parse("https://twenty-2.internal").unwrap();
        assert_eq!((u.scheme(), u.port()), (Scheme::Https, 443));
        assert!(u.server_name().is_some());
        let u = ServerUrl::parse("https://[::1]:8443/").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.authority().as_str()),
            ("::1", 8443, "[::1]:8443")
        );
        assert_eq!(ServerUrl::parse("http://a/").unwrap().port(), 80);
    }

    #[test]
    fn refuses_the_rest() {
        for (url, e) in [
            ("ftp://a", UrlError::Scheme),
            ("a:3000", UrlError::Scheme),
            ("http://u:p@a:1", UrlError::Credentials),
            ("http://a/twenty", UrlError::PathOrQuery),
            ("http://a/?x=1", UrlError::PathOrQuery),
            ("http://", UrlError::Malformed),
            ("not a url", UrlError::Malformed),
        ] {
            assert_eq!(ServerUrl::parse(url), Err(e), "{url}");
        }
    }
}

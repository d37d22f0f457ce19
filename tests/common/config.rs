//! The usual `gateway.yaml` ([`Conf`]): base domain `gw.test`, tenants `acme` and `beta`, one
//! key each, SPEC's default route table; and the tokens, hashes and key entries tests use.

use super::{Gateway, GatewaySetup, Upstream, spawn_gateway};

pub const TOKEN_ACME: &str = "tgw_test_acme_ci_0123456789abcdef";
pub const TOKEN_BETA: &str = "tgw_test_beta_ci_0123456789abcdef";

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `Authorization` value with acme's key ([`TOKEN_ACME`]).
pub fn acme_auth() -> String {
    bearer(TOKEN_ACME)
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The common test config: base domain `gw.test`, tenants `acme` (`acme.gw.test`,
/// `crm.acme.test`) and `beta` (`beta.gw.test`, `crm.beta.test`), keys `acme-ci`
/// ([`TOKEN_ACME`]) and `beta-ci` ([`TOKEN_BETA`]), SPEC's default route table.
/// Sections are raw YAML so tests can replace any of them.
#[derive(Clone, Debug)]
pub struct Conf {
    pub http_listener: bool,
    pub admin_listener: bool,
    /// YAML list items under `tls.certificates`.
    pub certificates: Vec<String>,
    pub base_domains: Vec<String>,
    pub upstreams: Vec<(String, String)>,
    /// Lines of the `routes:` block (None: SPEC's default table).
    pub routes: Option<String>,
    /// Lines under `limits:` (indented by two spaces by the caller or not at all; each line is
    /// indented here).
    pub limits: Vec<String>,
    /// Full `tenants:` block.
    pub tenants: String,
    /// Full `keys:` block.
    pub keys: String,
    /// Appended verbatim (top-level keys such as `trusted_proxies` or `access_log`).
    pub extra: String,
}

pub fn key_yaml(id: &str, tenant: &str, token: &str, extra: &str) -> String {
    let mut s = format!(
        "  - id: {id}\n    tenant: {tenant}\n    sha256: {}\n",
        sha256_hex(token)
    );
    for l in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("    ");
        s.push_str(l.trim());
        s.push('\n');
    }
    s
}

pub const DEFAULT_TENANTS: &str = "tenants:
  - name: acme
    subdomain: acme
    domains: [crm.acme.test]
  - name: beta
    subdomain: beta
    domains: [crm.beta.test]
";

impl Conf {
    /// `core` and `metadata` both at `core`'s URL unless `metadata` is given.
    pub fn new(core: &str, metadata: &str) -> Self {
        Conf {
            http_listener: false,
            admin_listener: false,
            certificates: vec!["{ cert: certs/default.crt, key: certs/default.key }".into()],
            base_domains: vec!["gw.test".into()],
            upstreams: vec![
                ("core".into(), core.into()),
                ("metadata".into(), metadata.into()),
            ],
            routes: None,
            limits: Vec::new(),
            tenants: DEFAULT_TENANTS.into(),
            keys: format!(
                "keys:\n{}{}",
                key_yaml("acme-ci", "acme", TOKEN_ACME, ""),
                key_yaml("beta-ci", "beta", TOKEN_BETA, "")
            ),
            extra: String::new(),
        }
    }
    pub fn one(up: &Upstream) -> Self {
        Conf::new(&up.url(), &up.url())
    }
    pub fn two(core: &Upstream, metadata: &Upstream) -> Self {
        Conf::new(&core.url(), &metadata.url())
    }
    pub fn limit(mut self, line: &str) -> Self {
        self.limits.push(line.to_string());
        self
    }
    /// [`Conf::limit`] for each line.
    pub fn limits(mut self, lines: &[&str]) -> Self {
        self.limits.extend(lines.iter().map(|l| l.to_string()));
        self
    }
    pub fn tenants(mut self, t: &str) -> Self {
        self.tenants = t.to_string();
        self
    }
    pub fn keys(mut self, k: &str) -> Self {
        self.keys = k.to_string();
        self
    }
    pub fn routes(mut self, r: &str) -> Self {
        self.routes = Some(r.to_string());
        self
    }
    pub fn extra(mut self, e: &str) -> Self {
        self.extra.push_str(e);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }
    pub fn with_http(mut self) -> Self {
        self.http_listener = true;
        self
    }
    pub fn with_admin(mut self) -> Self {
        self.admin_listener = true;
        self
    }

    pub fn render(&self) -> String {
        let mut y = String::new();
        y.push_str("listen:\n  https: 127.0.0.1:0\n");
        if self.http_listener {
            y.push_str("  http: 127.0.0.1:0\n");
        }
        if self.admin_listener {
            y.push_str("  admin: 127.0.0.1:0\n");
        }
        y.push_str("tls:\n  certificates:\n");
        for c in &self.certificates {
            y.push_str(&format!("    - {c}\n"));
        }
        y.push_str(&format!(
            "base_domains: [{}]\n",
            self.base_domains.join(", ")
        ));
        y.push_str("upstreams:\n");
        for (n, u) in &self.upstreams {
            y.push_str(&format!("  {n}: {u}\n"));
        }
        y.push_str("routes:\n");
        match &self.routes {
            Some(r) => y.push_str(r),
            None => y.push_str(
                "  - { prefix: /rest/metadata, upstream: metadata }\n  - { prefix: /metadata, upstream: metadata }\n  - { prefix: /rest, upstream: core }\n  - { prefix: /graphql, upstream: core }\n",
            ),
        }
        if !y.ends_with('\n') {
            y.push('\n');
        }
        if !self.limits.is_empty() {
            y.push_str("limits:\n");
            for l in &self.limits {
                y.push_str(&format!("  {}\n", l.trim()));
            }
        }
        y.push_str(&self.tenants);
        if !y.ends_with('\n') {
            y.push('\n');
        }
        y.push_str(&self.keys);
        if !y.ends_with('\n') {
            y.push('\n');
        }
        y.push_str(&self.extra);
        y
    }

    pub async fn spawn(&self) -> Gateway {
        spawn_gateway(&self.render()).await
    }
    pub async fn spawn_in(&self, setup: GatewaySetup) -> Gateway {
        setup.spawn(&self.render()).await
    }
}

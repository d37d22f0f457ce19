//! Admin listener (issue 3): `/metrics` is well-formed Prometheus text and its counters move
//! with traffic; `/healthz` and `/readyz`; no secret ever becomes part of the exposition.

pub mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// a small Prometheus / OpenMetrics text parser
// ---------------------------------------------------------------------------------------------

/// Label pairs, sorted by name.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    /// Sorted by label name.
    labels: Labels,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
}

#[derive(Debug)]
struct Exposition {
    families: BTreeMap<String, Family>,
    samples: Vec<Sample>,
    /// Ends with `# EOF` (OpenMetrics 1.0 text).
    openmetrics: bool,
}

const KINDS: &[&str] = &[
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    "unknown",
    "info",
    "stateset",
    "gaugehistogram",
];

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .bytes()
            .all(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
            && !s.is_empty() =>
        {
            s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}"))
        }
        _ => Err(format!("value {s:?} is not a float")),
    }
}

/// `{a="x",b="y\"z"}` (the braces included) → pairs, and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut out = Vec::new();
    let mut rest = &s[1..];
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((out, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after a label, got {rest:?}"));
        }
    }
}

/// The family a sample name belongs to, given the declared types.
fn family_of<'a>(families: &'a BTreeMap<String, Family>, name: &str) -> Option<&'a str> {
    if let Some((k, _)) = families.get_key_value(name) {
        return Some(k.as_str());
    }
    let suffixes: &[(&str, &[&str])] = &[
        ("_total", &["counter"]),
        ("_created", &["counter", "histogram", "summary"]),
        ("_bucket", &["histogram", "gaugehistogram"]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
        ("_gcount", &["gaugehistogram"]),
        ("_gsum", &["gaugehistogram"]),
        ("_info", &["info"]),
    ];
    for (suffix, kinds) in suffixes {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some((k, f)) = families.get_key_value(base)
            && kinds.contains(&f.kind.as_str())
        {
            return Some(k.as_str());
        }
    }
    None
}

fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut openmetrics = false;
    let mut seen_samples_of: Vec<String> = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if openmetrics {
            return Err(at("content after # EOF".into()));
        }
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            if line == "# EOF" {
                openmetrics = true;
                continue;
            }
            let mut parts = c.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("HELP") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| at("HELP without a name".into()))?;
                    if !is_metric_name(name) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if f.help.is_some() {
                        return Err(at("second HELP for this name".into()));
                    }
                    f.help = Some(parts.next().unwrap_or("").to_string());
                }
                Some("TYPE") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| at("TYPE without a name".into()))?;
                    let kind = parts
                        .next()
                        .ok_or_else(|| at("TYPE without a type".into()))?;
                    if !is_metric_name(name) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                    if !KINDS.contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if seen_samples_of.iter().any(|s| s == name) {
                        return Err(at("TYPE after samples of its family".into()));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if !f.kind.is_empty() {
                        return Err(at("second TYPE for this name".into()));
                    }
                    f.kind = kind.to_string();
                }
                _ => {} // a plain comment
            }
            continue;
        }
        // name{labels} value [timestamp]
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without a value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (mut labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            parse_value(ts).map_err(|e| at(format!("timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        labels.sort();
        if labels.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(at("duplicate label name".into()));
        }
        let family = family_of(&families, name)
            .ok_or_else(|| at(format!("sample {name} has no TYPE declared before it")))?;
        if !seen_samples_of.iter().any(|s| s == family) {
            seen_samples_of.push(family.to_string());
        }
        if samples.iter().any(|s| s.name == name && s.labels == labels) {
            return Err(at("duplicate series".into()));
        }
        let kind = families[family].kind.as_str();
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        if f.kind.is_empty() {
            return Err(format!("HELP without TYPE for {name}"));
        }
    }
    let exp = Exposition {
        families,
        samples,
        openmetrics,
    };
    exp.check_histograms()?;
    Ok(exp)
}

impl Exposition {
    /// Every histogram: cumulative buckets, a `+Inf` bucket equal to `_count`, a `_sum`.
    fn check_histograms(&self) -> Result<(), String> {
        for (fam, f) in &self.families {
            if f.kind != "histogram" {
                continue;
            }
            let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
            for s in self
                .samples
                .iter()
                .filter(|s| s.name == format!("{fam}_bucket"))
            {
                let le = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or_else(|| format!("{fam}_bucket without le"))?;
                let le = parse_value(&le.1)?;
                let rest: Vec<_> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                series.entry(rest).or_default().push((le, s.value));
            }
            if series.is_empty() {
                return Err(format!("histogram {fam} has no buckets"));
            }
            for (labels, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                    return Err(format!(
                        "{fam}{labels:?}: buckets not cumulative: {buckets:?}"
                    ));
                }
                let inf = buckets
                    .last()
                    .filter(|b| b.0 == f64::INFINITY)
                    .ok_or_else(|| format!("{fam}{labels:?}: no +Inf bucket"))?
                    .1;
                let count = self
                    .value_of(&format!("{fam}_count"), &labels)
                    .ok_or_else(|| format!("{fam}{labels:?}: no _count"))?;
                if count != inf {
                    return Err(format!(
                        "{fam}{labels:?}: _count {count} != +Inf bucket {inf}"
                    ));
                }
                self.value_of(&format!("{fam}_sum"), &labels)
                    .ok_or_else(|| format!("{fam}{labels:?}: no _sum"))?;
            }
        }
        Ok(())
    }

    fn value_of(&self, name: &str, labels: &[(String, String)]) -> Option<f64> {
        let mut want = labels.to_vec();
        want.sort();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Value of `name{labels}` (exact label set); 0 when the series is absent (a counter child
    /// appears with its first increment).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let l: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.value_of(name, &l).unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

#[test]
fn the_parser_itself_accepts_and_rejects() {
    let good = "# HELP a_total A thing.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
# HELP h Latency.\n# TYPE h histogram\nh_sum 0.5\nh_count 2\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
# TYPE g gauge\ng -1.5e3\n# EOF\n";
    let e = parse_exposition(good).unwrap();
    assert!(e.openmetrics);
    assert_eq!(e.get("a_total", &[("y", "q\""), ("x", "1")]), 3.0);
    assert_eq!(e.get("g", &[]), -1500.0);
    for bad in [
        "a 1\n",                                    // no TYPE
        "# TYPE a counter\na_total one\n",          // not a float
        "# TYPE a counter\na_total{x=1} 1\n",       // unquoted label
        "# TYPE a counter\na_total 1\na_total 2\n", // duplicate
        "# TYPE a bogus\n",                         // bad type
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\nh_sum 0\n", // count != +Inf
        "# TYPE a gauge\na 1\n# EOF\na 2\n",                                 // after EOF
        "# TYPE a gauge\na 1",                                               // no final newline
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

struct Scrape {
    text: String,
    content_type: String,
    m: Exposition,
}

async fn scrape(gw: &Gateway) -> Scrape {
    let r = gw.admin_conn().await.get("/metrics", &[]).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    let text = r.text();
    let m = parse_exposition(&text)
        .unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{text}"));
    Scrape {
        content_type: r.header("content-type").unwrap_or_default(),
        text,
        m,
    }
}

/// Scrape until `pred` holds (the metric is updated off the request path), up to [`TIMEOUT`].
async fn scrape_until(gw: &Gateway, what: &str, pred: impl Fn(&Exposition) -> bool) {
    gw.poll_metrics(what, |text| {
        let m = parse_exposition(text)
            .unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{text}"));
        pred(&m).then_some(())
    })
    .await
}

/// GET `path` (with `auth` as Authorization, if any) and a fresh request id.
async fn get(c: &mut Conn, path: &str, auth: Option<&str>) -> (Resp, String) {
    let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    c.get_with_id(path, &h).await
}

const QUERY_SECRET: &str = "query-secret-4711";
const WRONG_TOKEN: &str = "tgw_wrong_secret_0815";

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_and_readiness_on_the_admin_listener() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_admin().spawn().await;
    let mut c = gw.admin_conn().await;
    assert_eq!(c.get("/healthz", &[]).await.status, 200);
    // The `listening` lines are the startup signal operators and the harness wait for.
    let r = c.get("/readyz", &[]).await;
    assert_eq!(
        r.status,
        200,
        "/readyz right after `listening`: {}",
        r.text()
    );
    assert_eq!(c.get("/nope", &[]).await.status, 404);
    // Reload changes state: only POST.
    assert_eq!(c.get("/reload", &[]).await.status, 405);
    // the admin listener is not the proxy: no tenant, no key needed, nothing forwarded
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn metrics_parse_and_counters_move_with_traffic() {
    let up = spawn_upstream("core").await;
    let dead = closed_port_url().await;
    let gw = Conf::one(&up)
        .with_admin()
        .tenants(&format!(
            "tenants:
  - name: acme
    subdomain: acme
  - name: beta
    subdomain: beta
    upstreams:
      core: {dead}
"
        ))
        .keys(&format!(
            "keys:\n{}{}",
            key_yaml(
                "acme-ci",
                "acme",
                TOKEN_ACME,
                "rate: { requests: 1, per: 1h, burst: 2 }"
            ),
            key_yaml("beta-ci", "beta", TOKEN_BETA, ""),
        ))
        .spawn()
        .await;

    let s0 = scrape(&gw).await;
    let m0 = &s0.m;
    // every family SPEC names is declared, even before traffic
    for (fam, kind) in [
        ("gateway_requests", "counter"),
        ("gateway_request_duration_seconds", "histogram"),
        ("gateway_auth_failures", "counter"),
        ("gateway_rate_limited", "counter"),
        ("gateway_upstream_errors", "counter"),
        ("gateway_config_reloads", "counter"),
        ("gateway_config_generation", "gauge"),
        ("gateway_open_connections", "gauge"),
        ("gateway_tls_handshakes", "counter"),
    ] {
        let f = m0
            .families
            .get(fam)
            .or_else(|| m0.families.get(&format!("{fam}_total")))
            .unwrap_or_else(|| panic!("family {fam} not declared:\n{}", s0.text));
        assert_eq!(f.kind, kind, "{fam}");
        assert!(
            f.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{fam} has HELP"
        );
    }
    assert_eq!(m0.get("gateway_open_connections", &[]), 0.0);
    let gen0 = m0.get("gateway_config_generation", &[]);
    assert_eq!(gen0, 1.0, "generation 1 at start");

    // --- traffic (connections stay open) ---
    let acme = bearer(TOKEN_ACME);
    let wrong = bearer(WRONG_TOKEN);
    let mut a = gw.h1("acme.gw.test").await;
    let mut ids = Vec::new();
    let q = format!("/rest/people?token={QUERY_SECRET}&limit=1");
    for (path, auth, status) in [
        (q.as_str(), Some(acme.as_str()), 200),
        ("/rest/people", Some(acme.as_str()), 200),
        ("/rest/people", Some(acme.as_str()), 429),
        ("/rest/people", Some(wrong.as_str()), 401),
        ("/rest/people", None, 401),
    ] {
        let (r, id) = get(&mut a, path, auth).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        ids.push(id);
    }
    let mut b = gw.h2("beta.gw.test").await;
    let (r, id) = get(&mut b, "/rest/people", Some(&bearer(TOKEN_BETA))).await;
    assert_rest_error(&r, 502, "BAD_GATEWAY");
    ids.push(id);
    for id in &ids {
        gw.access_line(id).await; // metrics are updated before the access line is written
    }
    assert_eq!(gw.outcome(&ids[5]).await, "upstream_error");

    let r = gw.admin_reload().await;
    assert_eq!(r.status, 200, "{}", r.text());

    let s1 = scrape(&gw).await;
    let m1 = &s1.m;
    let d = |name: &str, labels: &[(&str, &str)]| m1.get(name, labels) - m0.get(name, labels);
    let req = |t: &'static str, class: &'static str| {
        d(
            "gateway_requests_total",
            &[("tenant", t), ("route", "/rest"), ("status_class", class)],
        )
    };
    assert_eq!(req("acme", "2xx"), 2.0, "acme 2xx\n{}", s1.text);
    assert_eq!(
        req("acme", "4xx"),
        3.0,
        "acme 4xx (429, 401, 401)\n{}",
        s1.text
    );
    assert_eq!(req("beta", "5xx"), 1.0, "beta 5xx (502)\n{}", s1.text);
    assert_eq!(
        m1.sum("gateway_requests_total") - m0.sum("gateway_requests_total"),
        6.0,
        "six requests in all\n{}",
        s1.text
    );
    for outcome in ["invalid_key", "missing_key"] {
        assert_eq!(
            d("gateway_auth_failures_total", &[("outcome", outcome)]),
            1.0,
            "auth failures {outcome}\n{}",
            s1.text
        );
    }
    assert_eq!(
        d("gateway_rate_limited_total", &[("tenant", "acme")]),
        1.0,
        "rate limited\n{}",
        s1.text
    );
    assert_eq!(
        d(
            "gateway_upstream_errors_total",
            &[("upstream", "core"), ("kind", "connect")]
        ),
        1.0,
        "upstream connect error\n{}",
        s1.text
    );
    assert_eq!(
        d("gateway_config_reloads_total", &[("result", "ok")]),
        1.0,
        "one reload\n{}",
        s1.text
    );
    assert_eq!(m1.get("gateway_config_generation", &[]), gen0 + 1.0);
    assert!(
        d("gateway_tls_handshakes_total", &[("result", "ok")]) >= 2.0,
        "two TLS handshakes at least\n{}",
        s1.text
    );
    // the latency histogram saw every request
    assert!(m1.has("gateway_request_duration_seconds_bucket"));
    assert_eq!(
        d("gateway_request_duration_seconds_count", &[]),
        6.0,
        "histogram count\n{}",
        s1.text
    );
    assert_eq!(
        d("gateway_request_duration_seconds_bucket", &[("le", "+Inf")]),
        6.0
    );
    assert!(d("gateway_request_duration_seconds_sum", &[]) > 0.0);
    let finite_buckets = m1
        .samples
        .iter()
        .filter(|s| s.name == "gateway_request_duration_seconds_bucket")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "le" && v != "+Inf"))
        .count();
    assert!(finite_buckets >= 5, "a real bucket layout\n{}", s1.text);

    // both client connections are still open
    assert_eq!(
        m1.get("gateway_open_connections", &[]),
        2.0,
        "two held connections\n{}",
        s1.text
    );

    // nothing a client sent (tokens, query strings) is in the exposition
    for secret in [
        TOKEN_ACME,
        TOKEN_BETA,
        WRONG_TOKEN,
        QUERY_SECRET,
        "Bearer",
        "token=",
    ] {
        assert!(
            !s1.text.contains(secret),
            "{secret:?} in /metrics:\n{}",
            s1.text
        );
    }
    for s in &m1.samples {
        for (k, v) in &s.labels {
            assert!(
                !v.contains('?'),
                "query string in label {k}={v:?} of {}",
                s.name
            );
        }
    }

    // the gauge falls back when the connections go away
    drop(a);
    drop(b);
    scrape_until(&gw, "gateway_open_connections back to 0", |m| {
        m.get("gateway_open_connections", &[]) == 0.0
    })
    .await;

    // a failed TLS handshake is counted as such
    let err0 = m1.get("gateway_tls_handshakes_total", &[("result", "error")]);
    let mut tcp = tokio::net::TcpStream::connect(gw.https()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: acme.gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = within(
        "the gateway closing a non-TLS connection",
        tcp.read_to_end(&mut sink),
    )
    .await;
    scrape_until(&gw, "tls_handshakes_total{result=error} +1", |m| {
        m.get("gateway_tls_handshakes_total", &[("result", "error")]) == err0 + 1.0
    })
    .await;

    let mut c = gw.admin_conn().await;
    assert_eq!(c.get("/healthz", &[]).await.status, 200);
    assert_eq!(c.get("/readyz", &[]).await.status, 200);
}

#[tokio::test]
async fn open_connections_gauge_follows_a_held_connection() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_admin().spawn().await;
    let base = scrape(&gw).await.m.get("gateway_open_connections", &[]);
    let mut c = gw.h2("acme.gw.test").await;
    let (r, _) = get(&mut c, "/rest/people", Some(&bearer(TOKEN_ACME))).await;
    assert_eq!(r.status, 200);
    scrape_until(&gw, "open connection counted", |m| {
        m.get("gateway_open_connections", &[]) == base + 1.0
    })
    .await;
    drop(c);
    scrape_until(&gw, "closed connection uncounted", |m| {
        m.get("gateway_open_connections", &[]) == base
    })
    .await;
}

/// The body is OpenMetrics 1.0 (`# EOF`, counter families declared without `_total`) or the
/// classic 0.0.4 text format; the Content-Type must say which, or a scraper parses it with the
/// wrong rules (0.0.4 has no `_total` suffix convention: `# TYPE gateway_requests counter`
/// followed by `gateway_requests_total` samples leaves those samples untyped).
#[tokio::test]
async fn metrics_content_type_declares_the_format_served() {
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_admin().spawn().await;
    let s = scrape(&gw).await;
    let ct = s.content_type.to_ascii_lowercase();
    if s.m.openmetrics {
        assert!(
            ct.starts_with("application/openmetrics-text"),
            "an OpenMetrics body (ends with `# EOF`, `# TYPE gateway_requests counter` with \
             `gateway_requests_total` samples) is served as {ct:?}; expected \
             `application/openmetrics-text; version=1.0.0; charset=utf-8`"
        );
    } else {
        assert!(ct.starts_with("text/plain"), "{ct:?}");
        for smp in &s.m.samples {
            let fam = family_of(&s.m.families, &smp.name).unwrap();
            let kind = s.m.families[fam].kind.as_str();
            assert!(
                fam == smp.name || matches!(kind, "histogram" | "summary"),
                "0.0.4 text: sample {} is declared as {fam}",
                smp.name
            );
        }
    }
}

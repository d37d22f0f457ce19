//! Assertions shared by the suites: gateway error bodies (REST and GraphQL shape), a fresh
//! client still being served, and the structured `RateLimit` fields.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Gateway, RawResp, Resp, Upstream, acme_auth};

/// What is wrong with a REST-shaped gateway error, if anything: the status, a JSON content
/// type, the `error` code, `statusCode`, a `messages` array, and `requestId` equal to the
/// `X-Request-Id` response header.
fn rest_error_problem(
    (status, content_type, request_id, body): (u16, &str, Option<&str>, &[u8]),
    want: u16,
    code: &str,
) -> Result<(), String> {
    if status != want {
        return Err(format!(
            "status {status} (want {want}); body {:?}",
            String::from_utf8_lossy(body)
        ));
    }
    if !content_type.starts_with("application/json") {
        return Err(format!("{status} with content-type {content_type:?}"));
    }
    let j: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{status} body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    if j["error"] != code || j["statusCode"] != status {
        return Err(format!("{status} body {j} (want error {code})"));
    }
    if !j["messages"].is_array() {
        return Err(format!("no messages array in {j}"));
    }
    let rid = request_id.ok_or_else(|| format!("{status} without X-Request-Id; body {j}"))?;
    if j["requestId"] != rid {
        return Err(format!(
            "requestId in body {j} vs X-Request-Id header {rid:?}"
        ));
    }
    Ok(())
}

impl Resp {
    /// See [`assert_rest_error`]; `Err` says what is wrong.
    pub fn rest_error(&self, status: u16, code: &str) -> Result<(), String> {
        let ct = self.header("content-type").unwrap_or_default();
        let rid = self.header("x-request-id");
        let parts = (
            self.status.as_u16(),
            ct.as_str(),
            rid.as_deref(),
            &self.body[..],
        );
        rest_error_problem(parts, status, code)
    }
}

impl RawResp {
    /// See [`assert_rest_error`]; `Err` says what is wrong.
    pub fn rest_error(&self, status: u16, code: &str) -> Result<(), String> {
        let ct = self.header("content-type").unwrap_or_default();
        let parts = (self.status, ct, self.header("x-request-id"), &self.body[..]);
        rest_error_problem(parts, status, code)
    }
}

/// Assert a REST-shaped gateway error: status, `error` code, `statusCode`, `messages`,
/// `requestId` equal to the `X-Request-Id` response header, JSON content type.
pub fn assert_rest_error(r: &Resp, status: u16, code: &str) {
    if let Err(e) = r.rest_error(status, code) {
        panic!("not a {status} {code} gateway error: {e}");
    }
}

/// [`assert_rest_error`] for a response read off a raw socket.
pub fn assert_raw_rest_error(r: &RawResp, status: u16, code: &str) {
    if let Err(e) = r.rest_error(status, code) {
        panic!("not a {status} {code} gateway error: {e}");
    }
}

/// Assert a GraphQL-shaped gateway error.
pub fn assert_graphql_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "status; body: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let j = r.json();
    let e = &j["errors"][0];
    assert!(e["message"].is_string(), "errors[0].message in {j}");
    assert_eq!(
        e["extensions"]["code"], code,
        "errors[0].extensions.code in {j}"
    );
    let rid = r.request_id();
    assert_eq!(
        e["extensions"]["requestId"],
        rid.as_str(),
        "requestId in body vs X-Request-Id header"
    );
}

/// A fresh client is served while something else goes on: GET on a new HTTP/1.1 connection
/// to `acme.gw.test` with acme's key is a 200 and reaches `up`. How long the request took
/// (connection set-up not counted).
pub async fn assert_served(gw: &Gateway, up: &Upstream, what: &str) -> Duration {
    let mut c = gw.h1("acme.gw.test").await;
    let t = Instant::now();
    let (r, id) = c
        .get_with_id("/rest/served", &[("authorization", &acme_auth())])
        .await;
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{what}: a fresh client is served");
    up.request_with_id(&id).await;
    took
}

/// Parse a structured-field list like `"key";q=600;w=60, "tenant";q=100;w=60` into
/// name → params.
pub fn parse_sf_list(s: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in s.split(',') {
        let mut parts = item.trim().split(';');
        let name = parts.next().unwrap().trim().trim_matches('"').to_string();
        let params = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        out.insert(name, params);
    }
    out
}

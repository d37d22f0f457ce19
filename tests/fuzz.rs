//! Property tests (proptest) for the three parsers that see hostile input first:
//! `config::parse` (the operator's YAML), `proxy::host::normalize_host` (Host/:authority) and
//! `proxy::target::check_path` (the request target).
//!
//! Each target first runs its seed corpus in `tests/corpus/{config,host,target}/` (nasty inputs
//! collected by hand; add a file or a line to keep a new finding), then 2000 generated cases
//! per property. Failures are shrunk and persisted by proptest under `proptest-regressions/`,
//! and replayed first on the next run. Bounded: the whole file runs in a few seconds.

pub mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use twenty_gateway::config;
use twenty_gateway::host::normalize_host;
use twenty_gateway::target::check_path;

const CASES: u32 = 2000;

/// 2000 cases; failures persisted to `proptest-regressions/fuzz.txt` (replayed first).
fn pt_config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/fuzz.txt"),
        )),
        ..ProptestConfig::default()
    }
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind)
}

/// Every file of a corpus directory, sorted, as (name, bytes).
fn corpus_files(kind: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(kind))
        .unwrap_or_else(|e| panic!("corpus {kind}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "corpus {kind} is empty");
    v
}

/// Line-based corpora: one input per line, `#` comments, `\xNN \t \r \n \0 \\` escapes.
fn corpus_lines(kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (_, bytes) in corpus_files(kind) {
        for line in String::from_utf8(bytes).unwrap().split('\n') {
            if line.starts_with('#') {
                continue;
            }
            out.push(unescape(line));
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut bytes = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' if i + 3 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    bytes.push(u8::from_str_radix(h, 16).unwrap());
                    i += 4;
                    continue;
                }
                b't' => bytes.push(b'\t'),
                b'r' => bytes.push(b'\r'),
                b'n' => bytes.push(b'\n'),
                b'0' => bytes.push(0),
                b'\\' => bytes.push(b'\\'),
                other => {
                    bytes.push(b'\\');
                    bytes.push(other);
                }
            }
            i += 2;
        } else {
            bytes.push(b[i]);
            i += 1;
        }
    }
    // invalid UTF-8 escapes become U+FFFD: the functions under test take &str
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// config::parse
// ---------------------------------------------------------------------------------------------

/// A directory with `certs/default.{crt,key}` for configs to refer to, and its config path.
fn config_path() -> &'static Path {
    static SETUP: OnceLock<common::GatewaySetup> = OnceLock::new();
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| SETUP.get_or_init(common::GatewaySetup::new).config_path())
}

/// The common test config, certificates and all: a valid starting point for mutations.
fn base_config() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        common::Conf::new("http://127.0.0.1:3000", "http://127.0.0.1:3001")
            .limit("default_rate: { requests: 100, per: 1m, burst: 20 }")
            .limit("max_request_body: 10MiB")
            .limit("idle_timeout: 60s")
            .extra("trusted_proxies: [10.0.0.0/8]")
            .render()
    })
}

/// Parse; it must not panic, and a refusal must say something for every error.
fn check_config(text: &str) -> Result<(), String> {
    match config::parse(text, config_path()) {
        Ok(_) => Ok(()),
        Err(errs) => {
            if errs.errors.is_empty() {
                return Err("Err with no errors".into());
            }
            for e in &errs.errors {
                if e.message.trim().is_empty() {
                    return Err(format!("empty message for path {:?}", e.path));
                }
            }
            if errs.lines().iter().any(|l| l.trim().is_empty()) {
                return Err("an empty error line".into());
            }
            Err(errs.to_string())
        }
    }
}

#[test]
fn config_corpus_first() {
    assert!(
        check_config(base_config()).is_ok(),
        "the base config parses"
    );
    let mut failures = Vec::new();
    for (name, bytes) in corpus_files("config") {
        if std::str::from_utf8(&bytes).is_err() {
            // not text: the file loader must refuse it (with a message), not the YAML parser
            let tmp = config_path().with_file_name("corpus-not-utf8.yaml");
            std::fs::write(&tmp, &bytes).unwrap();
            match config::load(&tmp) {
                Ok(_) => failures.push(format!("{name}: invalid UTF-8 accepted by load()")),
                Err(e) if e.to_string().trim().is_empty() => {
                    failures.push(format!("{name}: empty error"))
                }
                Err(_) => {}
            }
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        let Ok(r) = std::panic::catch_unwind(|| check_config(&text)) else {
            failures.push(format!("{name}: parse panicked"));
            continue;
        };
        match (name.starts_with("ok_"), r) {
            (true, Err(e)) => failures.push(format!("{name} must parse: {e}")),
            (false, Ok(())) => failures.push(format!("{name} must be rejected")),
            (false, Err(e)) if e.starts_with("Err with no errors") || e.starts_with("empty") => {
                failures.push(format!("{name}: {e}"))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Values that have broken config loaders: types, limits, YAML features.
const NASTY_VALUES: &[&str] = &[
    "",
    "~",
    "null",
    "[]",
    "{}",
    "-1",
    "0",
    "0s",
    "1ns",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e400",
    ".nan",
    "-.inf",
    "true",
    "\"\"",
    "'\\u0000'",
    "\"\\u0000\"",
    "\"a\\r\\nb\"",
    "!!binary aGVsbG8=",
    "!custom x",
    "*undefined",
    "&anchor x",
    "<<: *a",
    "|\n  block",
    "18446744073709551615KiB",
    "1GiB",
    "10 MiB",
    "300000000000y",
    "5 parsecs",
    "http://[::1",
    "http://127.0.0.1:99999",
    "http://user:pass@h:1/p?q#f",
    "https://127.0.0.1:1",
    "10.0.0.0/33",
    "::/129",
    "/../x",
    "//",
    "%2e",
    "certs/default.key",
    "/dev/null",
    "../../../../etc/passwd",
    "ÄCME.test",
    "*.gw.test",
    "sha256:",
    "2027-13-45T99:99:99Z",
    "{ requests: 0, per: 0s }",
    "{ requests: 4294967296, per: 1m }",
    "[1, [2, [3, [4]]]]",
    "- a\n- b",
    "\t",
    ":",
    "? complex key",
    "%YAML 1.2",
    "---",
    "...",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Replace what follows the first `: ` (or `- `) on a line.
    Value(usize, usize),
    Delete(usize),
    Duplicate(usize),
    /// Insert `key: nasty` (a known field name at some indentation).
    Insert(usize, usize, usize, usize),
    Indent(usize, i8),
    /// Flip one byte to one of a few structural characters.
    Byte(usize, usize),
    Truncate(usize),
}

const FIELD_NAMES: &[&str] = &[
    "listen",
    "https",
    "http",
    "admin",
    "trusted_proxies",
    "tls",
    "certificates",
    "cert",
    "key",
    "base_domains",
    "upstreams",
    "core",
    "metadata",
    "routes",
    "prefix",
    "upstream",
    "auth",
    "limits",
    "default_rate",
    "auth_failures_per_ip",
    "requests",
    "per",
    "burst",
    "max_request_body",
    "max_header_bytes",
    "connect_timeout",
    "upstream_timeout",
    "idle_timeout",
    "header_read_timeout",
    "max_connections",
    "h2_max_concurrent_streams",
    "shutdown_grace",
    "tenants",
    "name",
    "subdomain",
    "domains",
    "key_rate",
    "rate",
    "upstream_token_env",
    "upstream_token_file",
    "keys",
    "id",
    "tenant",
    "sha256",
    "expires",
    "revoked",
    "access_log",
    "unknown_field",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), 0..NASTY_VALUES.len()).prop_map(|(l, v)| Edit::Value(l, v)),
        1 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Duplicate),
        2 => (any::<usize>(), 0..4usize, 0..FIELD_NAMES.len(), 0..NASTY_VALUES.len())
            .prop_map(|(l, i, k, v)| Edit::Insert(l, i, k, v)),
        1 => (any::<usize>(), -4i8..4).prop_map(|(l, d)| Edit::Indent(l, d)),
        1 => (any::<usize>(), 0..8usize).prop_map(|(p, c)| Edit::Byte(p, c)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(base: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            Edit::Value(l, v) => {
                let line = &mut lines[l % n];
                let cut = line
                    .find(": ")
                    .map(|p| p + 2)
                    .or_else(|| line.find("- ").map(|p| p + 2))
                    .unwrap_or(line.len());
                line.truncate(cut);
                line.push_str(NASTY_VALUES[*v]);
            }
            Edit::Delete(l) => {
                lines.remove(l % n);
            }
            Edit::Duplicate(l) => {
                let d = lines[l % n].clone();
                lines.insert(l % n, d);
            }
            Edit::Insert(l, indent, k, v) => {
                let text = format!(
                    "{}{}: {}",
                    "  ".repeat(*indent),
                    FIELD_NAMES[*k],
                    NASTY_VALUES[*v]
                );
                lines.insert(l % (n + 1), text);
            }
            Edit::Indent(l, d) => {
                let line = &mut lines[l % n];
                if *d > 0 {
                    line.insert_str(0, &" ".repeat(*d as usize));
                } else {
                    let strip = line
                        .chars()
                        .take((-*d) as usize)
                        .take_while(|c| *c == ' ')
                        .count();
                    line.drain(..strip);
                }
            }
            Edit::Byte(p, c) => {
                let mut s = lines.join("\n").into_bytes();
                if !s.is_empty() {
                    let i = p % s.len();
                    s[i] = b":-[]{}#&"[*c];
                }
                lines = String::from_utf8_lossy(&s)
                    .lines()
                    .map(str::to_string)
                    .collect();
            }
            Edit::Truncate(p) => {
                let s = lines.join("\n");
                let mut cut = p % (s.len() + 1);
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines = s[..cut].lines().map(str::to_string).collect();
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A random YAML tree using the schema's field names (type confusion, odd nesting).
fn yaml_tree() -> impl Strategy<Value = serde_yaml::Value> {
    let leaf = prop_oneof![
        Just(serde_yaml::Value::Null),
        any::<bool>().prop_map(serde_yaml::Value::Bool),
        any::<i64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        any::<u64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        any::<f64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        (0..NASTY_VALUES.len()).prop_map(|i| serde_yaml::Value::String(NASTY_VALUES[i].into())),
        "[ -~]{0,20}".prop_map(serde_yaml::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_yaml::Value::Sequence),
            prop::collection::vec((0..FIELD_NAMES.len(), inner), 0..6).prop_map(|kv| {
                let mut m = serde_yaml::Mapping::new();
                for (k, v) in kv {
                    m.insert(serde_yaml::Value::String(FIELD_NAMES[k].into()), v);
                }
                serde_yaml::Value::Mapping(m)
            }),
        ]
    })
}

proptest! {
    #![proptest_config(pt_config())]

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in prop_oneof![
        any::<String>(),
        "[ -~\t\n]{0,300}",
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        let _ = check_config(&text);
    }

    #[test]
    fn config_parse_never_panics_on_mutated_configs(
        edits in prop::collection::vec(edit(), 1..6)
    ) {
        let text = apply(base_config(), &edits);
        let r = check_config(&text);
        if let Err(e) = &r {
            prop_assert!(
                !e.starts_with("Err with no errors") && !e.starts_with("empty"),
                "{e}"
            );
        }
    }

    #[test]
    fn config_parse_never_panics_on_generated_yaml_trees(tree in yaml_tree()) {
        let text = serde_yaml::to_string(&tree).unwrap();
        let r = check_config(&text);
        if let Err(e) = &r {
            prop_assert!(
                !e.starts_with("Err with no errors") && !e.starts_with("empty"),
                "{e}"
            );
        }
    }
}

/// `limits.header_read_timeout` goes to hyper, which computes `timer.now() + timeout` for every
/// HTTP/1.1 request head — and `Instant + Duration` panics on overflow, in every connection.
/// So the config must refuse a value for which `Instant::now() + value` overflows.
#[test]
fn accepted_header_read_timeout_cannot_overflow_instant_arithmetic() {
    let now = std::time::Instant::now();
    let mut failures = Vec::new();
    for value in ["300000000000y", "18446744073709551615s", "584942417355y"] {
        let text = base_config().replace(
            "limits:\n",
            &format!("limits:\n  header_read_timeout: {value}\n"),
        );
        if let Ok(cfg) = config::parse(&text, config_path()) {
            let d = cfg.limits.header_read_timeout;
            if now.checked_add(d).is_none() {
                failures.push(format!(
                    "limits.header_read_timeout: {value} is accepted ({d:?}), but Instant::now() + it overflows"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// normalize_host
// ---------------------------------------------------------------------------------------------

fn check_host(raw: &str) -> Result<(), String> {
    let Some(h) = normalize_host(raw) else {
        return Ok(());
    };
    let why = if h != h.to_ascii_lowercase() {
        "not lowercase"
    } else if h.contains('@') {
        "userinfo kept"
    } else if h.is_empty() {
        "empty"
    } else if h.ends_with('.') {
        "trailing dot kept"
    } else if h.starts_with('[') {
        if !h.ends_with(']') || h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_err() {
            "IPv6 literal with something after it"
        } else {
            ""
        }
    } else if h.contains(':') {
        "port kept"
    } else if !h.is_ascii() || h.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        "non-ASCII, control or space"
    } else if h.contains(['/', '\\', '?', '#', '%']) {
        "URL delimiter in a host"
    } else {
        ""
    };
    if !why.is_empty() {
        return Err(format!("{raw:?} -> {h:?}: {why}"));
    }
    if normalize_host(&h).as_deref() != Some(h.as_str()) {
        return Err(format!(
            "{raw:?} -> {h:?} -> {:?}: not idempotent",
            normalize_host(&h)
        ));
    }
    Ok(())
}

#[test]
fn host_corpus_first() {
    let inputs = corpus_lines("host");
    assert!(inputs.len() > 20);
    for raw in &inputs {
        check_host(raw).unwrap();
    }
    // a few exact expectations from SPEC
    for (raw, want) in [
        ("ACME.GW.TEST", Some("acme.gw.test")),
        ("acme.gw.test.:8443", Some("acme.gw.test")),
        ("[::1]:443", Some("[::1]")),
        ("user@acme.gw.test", None),
        ("acme.gw.test:99999", None),
        ("acme.gw.test:", None),
        ("", None),
    ] {
        assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
    }
}

fn host_like() -> impl Strategy<Value = String> {
    let label = "[a-zA-Z0-9_-]{1,12}";
    let name = prop::collection::vec(label, 1..5).prop_map(|l| l.join("."));
    let port = prop_oneof![
        Just(String::new()),
        (0u32..70000).prop_map(|p| format!(":{p}")),
        "[0-9+ -]{0,7}".prop_map(|p| format!(":{p}")),
    ];
    let v6 = prop_oneof![
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
        "[0-9a-fA-F:.%]{0,20}".prop_map(|s| format!("[{s}]")),
    ];
    let userinfo = prop_oneof![Just(String::new()), "[a-z:]{0,6}@"];
    let dot = prop_oneof![Just(""), Just("."), Just("..")];
    prop_oneof![
        (userinfo.clone(), name, dot, port.clone())
            .prop_map(|(u, n, d, p)| format!("{u}{n}{d}{p}")),
        (userinfo, v6, port).prop_map(|(u, h, p)| format!("{u}{h}{p}")),
    ]
}

proptest! {
    #![proptest_config(pt_config())]

    #[test]
    fn normalize_host_never_panics_and_output_is_canonical(raw in prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9.:@\\[\\]%_ -]{0,40}",
        host_like(),
    ]) {
        check_host(&raw).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn normalize_host_accepts_names_with_any_case_port_and_trailing_dot(
        labels in prop::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..5),
        upper in any::<u64>(),
        dot in any::<bool>(),
        port in prop::option::of(any::<u16>()),
    ) {
        let name = labels.join(".");
        let mut raw: String = name
            .chars()
            .enumerate()
            .map(|(i, c)| if upper >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        if dot {
            raw.push('.');
        }
        if let Some(p) = port {
            raw.push_str(&format!(":{p}"));
        }
        prop_assert_eq!(normalize_host(&raw), Some(name));
    }
}

// ---------------------------------------------------------------------------------------------
// check_path
// ---------------------------------------------------------------------------------------------

/// An independent re-implementation of what an accepted path must not contain.
fn check_target(path: &str) -> Result<(), String> {
    if check_path(path).is_err() {
        return Ok(());
    }
    let fail = |why: &str| Err(format!("{path:?} accepted: {why}"));
    if !path.starts_with('/') {
        return fail("not an absolute path");
    }
    if path.contains("//") {
        return fail("empty segment (//)");
    }
    if path.contains('\\') {
        return fail("backslash");
    }
    if path.contains('\0') {
        return fail("NUL");
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i + 1 != segments.len() {
            return fail("empty segment");
        }
        // percent-decode, strictly
        let b = seg.as_bytes();
        let mut decoded = Vec::new();
        let mut j = 0;
        while j < b.len() {
            if b[j] == b'%' {
                let hex = b
                    .get(j + 1..j + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    return fail("invalid percent-encoding");
                };
                if hex.is_some_and(|h| h.starts_with(['+', '-'])) {
                    return fail("signed percent-encoding");
                }
                match v {
                    b'/' => return fail("encoded slash"),
                    b'\\' => return fail("encoded backslash"),
                    0 => return fail("encoded NUL"),
                    _ => decoded.push(v),
                }
                j += 3;
            } else {
                decoded.push(b[j]);
                j += 1;
            }
        }
        if decoded == b"." || decoded == b".." {
            return fail("dot segment after percent-decoding");
        }
        if std::str::from_utf8(&decoded).is_err() {
            return fail("not UTF-8 after percent-decoding");
        }
    }
    Ok(())
}

#[test]
fn target_corpus_first() {
    let inputs = corpus_lines("target");
    assert!(inputs.len() > 40);
    for p in &inputs {
        check_target(p).unwrap();
    }
    // the corpus holds both sides of the line
    assert!(inputs.iter().any(|p| check_path(p).is_ok()));
    assert!(
        inputs.iter().filter(|p| check_path(p).is_err()).count() > 40,
        "most of the corpus is hostile"
    );
}

const SEGMENTS: &[&str] = &[
    "rest",
    "people",
    "graphql",
    "",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2e.",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "%00",
    "%",
    "%z",
    "%zz",
    "%2",
    "a%2",
    "%c0%ae",
    "%ff",
    "%C3%A9",
    "\\",
    "a\\b",
    "\0",
    "%25",
    "%252e",
    "%252f",
    "..;",
    ";",
    ".well-known",
    "%u002e",
    "%%32%65",
    "%+2",
    "%-1",
    "a b",
    "é",
    "%0d%0a",
    "%20",
    "~",
    "a.b",
];

fn path_like() -> impl Strategy<Value = String> {
    prop::collection::vec(0..SEGMENTS.len(), 0..7).prop_map(|v| {
        let mut p = String::new();
        for i in v {
            p.push('/');
            p.push_str(SEGMENTS[i]);
        }
        if p.is_empty() {
            p.push('/');
        }
        p
    })
}

proptest! {
    #![proptest_config(pt_config())]

    #[test]
    fn check_path_never_panics_and_never_accepts_traversal(path in prop_oneof![
        any::<String>(),
        "/[a-zA-Z0-9./%\\\\\u{0}-]{0,40}",
        path_like(),
    ]) {
        check_target(&path).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn check_path_accepts_ordinary_paths(
        segs in prop::collection::vec("[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,10}", 1..6),
        trailing in any::<bool>(),
    ) {
        let mut p = format!("/{}", segs.join("/"));
        if trailing {
            p.push('/');
        }
        let dotty = segs.iter().any(|s| s == "." || s == "..");
        prop_assert_eq!(check_path(&p).is_ok(), !dotty, "{}", p);
    }
}

//! Command line: hash-key, gen-key, check, startup with a bad config, usage errors.

pub mod common;

use common::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A complete valid config for `check` (upstreams need not be running).
fn valid_yaml() -> String {
    Conf::new("http://127.0.0.1:3000", "http://127.0.0.1:3001").render()
}

#[test]
fn hash_key_prints_sha256_hex_of_stdin_token() {
    let token = "tgw_hash_me_please";
    for input in [
        format!("{token}\n"),
        format!("{token}\r\n"),
        token.to_string(),
    ] {
        let o = run_cli(&["hash-key"], Some(input.as_bytes()), None, &[]);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        assert_eq!(
            stdout(&o),
            format!("{}\n", sha256_hex(token)),
            "input {input:?}"
        );
    }
    // the example from SPEC: sha256("foo")
    let o = run_cli(&["hash-key"], Some(b"foo\n"), None, &[]);
    assert_eq!(
        stdout(&o).trim(),
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    );
}

#[test]
fn gen_key_prints_token_and_yaml_entry_with_its_hash() {
    let o = run_cli(
        &["gen-key", "--tenant", "acme", "--id", "acme-ci"],
        None,
        None,
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let token = lines.next().expect("token line").to_string();
    let hexpart = token
        .strip_prefix("tgw_")
        .unwrap_or_else(|| panic!("token {token:?} starts with tgw_"));
    assert_eq!(hexpart.len(), 64, "64 hex chars after tgw_: {token:?}");
    assert!(
        hexpart.chars().all(|c| c.is_ascii_hexdigit()),
        "hex token: {token:?}"
    );

    // The rest is YAML: a list with one entry holding only the hash.
    let rest: String = lines.collect::<Vec<_>>().join("\n");
    assert!(
        !rest.contains(&token),
        "the token is printed once, not inside the YAML entry"
    );
    let v: serde_yaml::Value =
        serde_yaml::from_str(&rest).unwrap_or_else(|e| panic!("YAML part parses ({e}):\n{rest}"));
    let entry = &v[0];
    assert_eq!(entry["id"].as_str(), Some("acme-ci"), "{rest}");
    assert_eq!(entry["tenant"].as_str(), Some("acme"), "{rest}");
    assert_eq!(
        entry["sha256"].as_str(),
        Some(sha256_hex(&token).as_str()),
        "sha256 of the token line"
    );

    // hash-key agrees, and a second run gives a different token.
    let h = run_cli(
        &["hash-key"],
        Some(format!("{token}\n").as_bytes()),
        None,
        &[],
    );
    assert_eq!(stdout(&h).trim(), sha256_hex(&token));
    let o2 = run_cli(
        &["gen-key", "--tenant", "acme", "--id", "acme-ci"],
        None,
        None,
        &[],
    );
    assert_ne!(
        stdout(&o2).lines().next(),
        Some(token.as_str()),
        "tokens are random"
    );
}

#[test]
fn check_accepts_a_valid_config() {
    let setup = GatewaySetup::new();
    let path = setup.write_config(&valid_yaml());
    let o = run_cli(
        &["check", "--config", path.to_str().unwrap()],
        None,
        None,
        &[],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn check_resolves_relative_paths_against_the_config_directory() {
    // cert paths are `certs/default.crt`; run from another directory.
    let setup = GatewaySetup::new();
    let path = setup.write_config(&valid_yaml());
    let elsewhere = tempfile::tempdir().unwrap();
    let o = run_cli(
        &["check", "--config", path.to_str().unwrap()],
        None,
        Some(elsewhere.path()),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
}

#[test]
fn check_finds_config_via_env_and_default_path() {
    let setup = GatewaySetup::new();
    let path = setup.write_config(&valid_yaml());
    let elsewhere = tempfile::tempdir().unwrap();
    let o = run_cli(
        &["check"],
        None,
        Some(elsewhere.path()),
        &[("GATEWAY_CONFIG", path.to_str().unwrap())],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "GATEWAY_CONFIG: stderr: {}",
        stderr(&o)
    );
    let o = run_cli(&["check"], None, Some(setup.dir.path()), &[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "./gateway.yaml: stderr: {}",
        stderr(&o)
    );
    // and with neither, it reports the missing file as a config error
    let o = run_cli(&["check"], None, Some(elsewhere.path()), &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "missing ./gateway.yaml: stderr: {}",
        stderr(&o)
    );
}

#[test]
fn check_missing_file_exits_1() {
    let o = run_cli(
        &["check", "--config", "/nonexistent/dir/gateway.yaml"],
        None,
        None,
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/dir/gateway.yaml"),
        "names the file: {}",
        stderr(&o)
    );
}

#[test]
fn check_unknown_field_names_field_and_line() {
    let setup = GatewaySetup::new();
    let yaml = valid_yaml().replace("keys:\n", "keys:\n  - id: typo\n    tenant: acme\n    sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\n    revokd: true\n");
    let line_no = yaml.lines().position(|l| l.contains("revokd")).unwrap() + 1;
    let path = setup.write_config(&yaml);
    let o = run_cli(
        &["check", "--config", path.to_str().unwrap()],
        None,
        None,
        &[],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    let l = err
        .lines()
        .find(|l| l.contains("revokd"))
        .unwrap_or_else(|| panic!("error names the unknown field: {err}"));
    assert!(
        l.starts_with(&format!("{}: ", path.display())),
        "starts with the file path: {l}"
    );
    assert!(
        l.contains(&format!("line {line_no}")),
        "carries line {line_no}: {l}"
    );
}

/// One error per config, each must be reported with its field path.
#[test]
fn check_reports_each_error_with_its_path() {
    let good = valid_yaml();
    let h = sha256_hex("x");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown tenant",
            good.replace("tenant: beta", "tenant: betta"),
            "keys[1].tenant",
        ),
        (
            "duplicate key id",
            good.replace("id: beta-ci", "id: acme-ci"),
            "keys[1].id",
        ),
        (
            "duplicate key hash",
            good.replace(&sha256_hex(TOKEN_BETA), &sha256_hex(TOKEN_ACME)),
            "keys[1].sha256",
        ),
        (
            "two tenants claim one host",
            good.replace("domains: [crm.beta.test]", "domains: [crm.acme.test]"),
            "tenants[1].domains[0]",
        ),
        (
            "subdomain and domain collide",
            good.replace("domains: [crm.beta.test]", "domains: [acme.gw.test]"),
            "tenants[1].domains[0]",
        ),
        (
            "route names unknown upstream",
            good.replace(
                "{ prefix: /graphql, upstream: core }",
                "{ prefix: /graphql, upstream: coer }",
            ),
            "routes[3].upstream",
        ),
        (
            "malformed URL",
            good.replace("core: http://127.0.0.1:3000", "core: ht!tp//nope"),
            "upstreams.core",
        ),
        (
            "malformed duration",
            format!("{good}limits:\n  upstream_timeout: 10 parsecs\n"),
            "limits.upstream_timeout",
        ),
        (
            "malformed hash",
            good.replace(&sha256_hex(TOKEN_ACME), "not-a-hash"),
            "keys[0].sha256",
        ),
        (
            "hash of wrong length",
            good.replace(&sha256_hex(TOKEN_ACME), &h[..60]),
            "keys[0].sha256",
        ),
        (
            "unreadable cert",
            good.replace("cert: certs/default.crt", "cert: certs/missing.crt"),
            "tls.certificates[0]",
        ),
        (
            "cert/key mismatch",
            good.replace("key: certs/default.key", "key: certs/other.key"),
            "tls.certificates[0]",
        ),
    ];
    let mut failures = Vec::new();
    for (what, yaml, field) in cases {
        let setup = GatewaySetup::new();
        setup.cert("other", &["other.test"]);
        let path = setup.write_config(&yaml);
        let o = run_cli(
            &["check", "--config", path.to_str().unwrap()],
            None,
            None,
            &[],
        );
        let err = stderr(&o);
        let want = format!("{}: {}", path.display(), field);
        if o.status.code() != Some(1) || !err.lines().any(|l| l.starts_with(&want)) {
            failures.push(format!(
                "{what}: exit {:?}, want a line starting {want:?}; stderr:\n{err}",
                o.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// All of the above at once: every one is listed, not just the first.
#[test]
fn check_lists_every_error_at_once() {
    let setup = GatewaySetup::new();
    setup.cert("other", &["other.test"]);
    let yaml = format!(
        "listen:
  https: 127.0.0.1:0
tls:
  certificates:
    - {{ cert: certs/missing.crt, key: certs/default.key }}
    - {{ cert: certs/default.crt, key: certs/other.key }}
base_domains: [gw.test]
upstreams:
  core: ht!tp//nope
  metadata: http://127.0.0.1:3001
routes:
  - {{ prefix: /rest, upstream: core }}
  - {{ prefix: /graphql, upstream: nosuch }}
limits:
  upstream_timeout: 10 parsecs
tenants:
  - name: acme
    subdomain: acme
    domains: [crm.acme.test]
  - name: beta
    subdomain: beta
    domains: [crm.acme.test]
keys:
  - {{ id: k0, tenant: acme, sha256: {h0} }}
  - {{ id: k0, tenant: acme, sha256: {h1} }}
  - {{ id: k2, tenant: acme, sha256: {h0} }}
  - {{ id: k3, tenant: acm, sha256: {h3} }}
  - {{ id: k4, tenant: acme, sha256: zzzz }}
",
        h0 = sha256_hex("t0"),
        h1 = sha256_hex("t1"),
        h3 = sha256_hex("t3"),
    );
    let path = setup.write_config(&yaml);
    let o = run_cli(
        &["check", "--config", path.to_str().unwrap()],
        None,
        None,
        &[],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    let fields = [
        "tls.certificates[0]",
        "tls.certificates[1]",
        "upstreams.core",
        "routes[1].upstream",
        "limits.upstream_timeout",
        "tenants[1].domains[0]",
        "keys[1].id",
        "keys[2].sha256",
        "keys[3].tenant",
        "keys[4].sha256",
    ];
    let missing: Vec<_> = fields
        .iter()
        .filter(|f| {
            !err.lines()
                .any(|l| l.starts_with(&format!("{}: {f}", path.display())))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "errors not reported: {missing:?}\nstderr:\n{err}"
    );
    // words, not Debug dumps
    for bad in ["Os {", "kind:", "Error {", "ConfigError", "panicked"] {
        assert!(
            !err.contains(bad),
            "stderr contains a Rust Debug dump ({bad:?}):\n{err}"
        );
    }
}

#[test]
fn startup_with_bad_config_exits_1_without_listening() {
    let setup = GatewaySetup::new();
    let yaml = valid_yaml().replace("tenant: beta", "tenant: nosuch");
    let path = setup.write_config(&yaml);
    let o = run_cli(&["--config", path.to_str().unwrap()], None, None, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stderr(&o)
            .lines()
            .any(|l| l.starts_with(&format!("{}: keys[1].tenant", path.display()))),
        "prints the error like check does: {}",
        stderr(&o)
    );
    assert!(
        !stdout(&o).contains("\"listening\""),
        "must not bind before the config is valid: {}",
        stdout(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["--no-such-flag"],
        vec!["frobnicate"],
        vec!["gen-key", "--id", "x"],
        vec!["gen-key", "--tenant", "acme"],
        vec!["check", "--config"],
    ] {
        let o = run_cli(&args, None, None, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: stderr {}", stderr(&o));
        assert!(
            !stderr(&o).trim().is_empty(),
            "{args:?}: says what is wrong"
        );
    }
}

#[test]
fn hash_key_with_empty_stdin_is_bad_input() {
    let o = run_cli(&["hash-key"], Some(b""), None, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "empty token is bad input; stdout {:?}",
        stdout(&o)
    );
}

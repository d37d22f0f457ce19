//! `deploy/` validated offline (issue 13, SPEC "Packaged to run"), and the Kubernetes ConfigMap
//! reload it relies on.
//!
//! - The systemd unit: `systemd-analyze verify` on a copy whose ExecStart is this build's binary,
//!   the hardening directives the brief asks for, and `systemd-analyze security --offline`.
//! - The Kubernetes manifests: `kubectl kustomize deploy/k8s`, its objects and their cross
//!   references (probes on the admin port, the ConfigMap and Secrets the pods mount, Services
//!   that select real pods, the Redis of `cluster`).
//! - The compose file: services, `depends_on`, volumes and mounts, the gateway's config seen
//!   through its mounts, and `docker compose config` (or `docker-compose config`) where present.
//! - The Dockerfile: stages, non-root user, EXPOSE and HEALTHCHECK against the config's ports.
//! - The gateway configs in `deploy/` pass `twenty-gateway check`, up to the Part 2 fields this
//!   build does not accept yet ([`PENDING`]).
//! - A mounted ConfigMap the way kubelet writes it (`..data` symlink swaps): relative paths
//!   resolve next to the config path as given, and a swap reloads.
//!
//! A test whose tool is missing (`systemd-analyze`, `kubectl`, `docker compose`) prints
//! `SKIPPED: ...` on stderr and passes; everything else runs anywhere.

pub mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml_file(path: &Path) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An executable named `name` on PATH.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED: {test}: {why}");
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq_of<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
}

fn map_of<'a>(v: &'a Value, what: &str) -> &'a Mapping {
    v.as_mapping()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, got {v:?}"))
}

/// The port of a `host:port` listen address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// `(host, port)` of `scheme://host:port[/...]`.
fn url_host_port(url: &str) -> (String, u16) {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("{url:?} is not a URL"));
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url:?} has no port"));
    (
        host.to_string(),
        port.parse().unwrap_or_else(|_| panic!("{url:?}: bad port")),
    )
}

/// The value after `--config` in an argv list.
fn config_flag<'a>(argv: &'a Value, what: &str) -> &'a str {
    let argv: Vec<&str> = seq_of(argv, what).iter().map(|a| str_of(a, what)).collect();
    argv.windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("{what}: no --config"))
}

/// Issue a certificate for `crm.example.com` as `<dir>/tls/tls.crt|key`, the files the deploy
/// configs name.
fn deploy_certificate(dir: &Path) {
    ca().issue(&dir.join("tls"), "tls", &["crm.example.com"]);
}

const UPSTREAM_TOKEN_ENV: (&str, &str) = ("TWENTY_API_KEY", "twenty-api-key-for-tests");

/// `twenty-gateway check --config <path>`: Ok(stdout) or Err(stderr).
fn check(path: &Path) -> Result<String, String> {
    let out = run_cli(
        &["check", "--config", &path.to_string_lossy()],
        None,
        None,
        &[UPSTREAM_TOKEN_ENV],
    );
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

// ---------------------------------------------------------------------------------------------
// gateway configs in deploy/ pass `check`
// ---------------------------------------------------------------------------------------------

/// A Part 2 field the deploy configs use that this build's `check` may not accept yet, and how
/// to take it out of a config.
struct Pending {
    what: &'static str,
    strip: fn(&mut Mapping),
}

/// Fields of SPEC Part 2 in `deploy/*.yaml` that `check` rejects in this build. Every config is
/// checked with all of them removed (the rest must pass), and once with each one alone put back:
/// an entry that passes alone is supported now and must be removed from this list (the test
/// fails until it is), so the list never hides a field that works.
const PENDING: &[Pending] = &[];

fn strip_pending(config: &Value, keep: Option<usize>) -> String {
    let mut v = config.clone();
    let m = v.as_mapping_mut().expect("config is a mapping");
    for (i, p) in PENDING.iter().enumerate() {
        if Some(i) != keep {
            (p.strip)(m);
        }
    }
    serde_yaml::to_string(&v).expect("serialize config")
}

/// Check `deploy/<rel>` in a scratch directory holding the files it names.
fn assert_deploy_config_passes_check(rel: &str) {
    let text = read(&deploy(rel));
    let config: Value = serde_yaml::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    deploy_certificate(dir.path());
    let path = dir.path().join("gateway.yaml");

    std::fs::write(&path, strip_pending(&config, None)).unwrap();
    if let Err(e) = check(&path) {
        panic!("deploy/{rel} without the pending Part 2 fields fails `check`:\n{e}");
    }

    let mut supported = Vec::new();
    let none = strip_pending(&config, None);
    for (i, p) in PENDING.iter().enumerate() {
        let with_p = strip_pending(&config, Some(i));
        if with_p == none {
            continue; // this config does not use it
        }
        std::fs::write(&path, with_p).unwrap();
        match check(&path) {
            Ok(_) => supported.push(p.what),
            Err(e) => eprintln!(
                "deploy/{rel}: pending, not accepted yet: {}: {}",
                p.what,
                e.trim()
            ),
        }
    }
    assert!(
        supported.is_empty(),
        "deploy/{rel}: `check` accepts these now; remove them from PENDING in tests/deploy.rs: {supported:?}"
    );
    std::fs::write(&path, &text).unwrap();
    if PENDING.is_empty() {
        if let Err(e) = check(&path) {
            panic!("deploy/{rel} fails `check`:\n{e}");
        }
    }
}

#[test]
fn docker_config_passes_check() {
    assert_deploy_config_passes_check("gateway.docker.yaml");
}

#[test]
fn kubernetes_config_passes_check() {
    assert_deploy_config_passes_check("k8s/gateway.yaml");
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

const UNIT: &str = "twenty-gateway.service";
const INSTALLED_BIN: &str = "/usr/local/bin/twenty-gateway";

/// `key=value` lines of the unit (comments and section headers dropped), in order.
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_unit_is_hardened_as_specified() {
    let text = read(&deploy(UNIT));
    let d = unit_directives(&text);
    let has = |k: &str, v: &str| d.iter().any(|(dk, dv)| dk == k && dv == v);
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("StateDirectory", "twenty-gateway"),
        ("ConfigurationDirectory", "twenty-gateway"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("ExecStart", INSTALLED_BIN),
        (
            "Environment",
            "GATEWAY_CONFIG=/etc/twenty-gateway/gateway.yaml",
        ),
    ] {
        assert!(has(k, v), "{UNIT}: missing {k}={v}");
    }
    // Only these two capability lines, and no second ExecStart that could widen them.
    assert_eq!(d.iter().filter(|(k, _)| k.contains("Capabilit")).count(), 2);
    let nofile: u64 = d
        .iter()
        .find(|(k, _)| k == "LimitNOFILE")
        .and_then(|(_, v)| v.parse().ok())
        .expect("LimitNOFILE set");
    assert!(
        nofile > 10_000,
        "LimitNOFILE={nofile} is below limits.max_connections' default"
    );
    let stop = d
        .iter()
        .find(|(k, _)| k == "TimeoutStopSec")
        .and_then(|(_, v)| humantime::parse_duration(v).ok())
        .expect("TimeoutStopSec set");
    assert!(
        stop > std::time::Duration::from_secs(30),
        "TimeoutStopSec={stop:?} cuts limits.shutdown_grace (30s)"
    );
}

/// The unit with every mention of the installed binary pointing at this build's binary, in a
/// scratch directory (`systemd-analyze verify` refuses an ExecStart that does not exist).
fn unit_for_this_build() -> (tempfile::TempDir, PathBuf) {
    let text = read(&deploy(UNIT));
    assert!(text.contains(INSTALLED_BIN));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(UNIT);
    std::fs::write(&path, text.replace(INSTALLED_BIN, BIN)).unwrap();
    (dir, path)
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(sa) = tool("systemd-analyze") else {
        return skipped(
            "systemd_analyze_verifies_the_unit",
            "no systemd-analyze on PATH (Debian: apt-get install systemd)",
        );
    };
    let (_dir, path) = unit_for_this_build();
    let out = Command::new(&sa)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and unparsable values are warnings with exit 0: any output is a finding.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {}\n{stderr}",
        out.status
    );

    let out = Command::new(&sa)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(level) = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
    else {
        return skipped(
            "systemd_analyze_verifies_the_unit (security)",
            &format!(
                "`systemd-analyze security --offline` gave no exposure level (systemd < 250?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
    };
    eprintln!("systemd-analyze security: exposure {level} for {UNIT}");
    assert!(
        level <= 2.0,
        "exposure {level} (> 2.0, systemd calls below 2 \"OK\"):\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

/// Operator-created Secrets the manifests refer to (deploy/README.md says how to make them).
const OPERATOR_SECRETS: &[&str] = &["twenty-gateway-tls", "twenty-gateway-upstream"];

fn k8s_objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("kustomize output parses as YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the kustomize output"))
}

/// Does `selector` (a matchLabels-style map) select pods labelled `labels`?
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = map_of(selector, "selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kustomize_builds_the_expected_objects() {
    let Some(kubectl) = tool("kubectl") else {
        return skipped(
            "kustomize_builds_the_expected_objects",
            "no kubectl on PATH (Debian 12: apt-get install kubernetes-client)",
        );
    };
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(deploy("k8s"))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/k8s: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = k8s_objects(&String::from_utf8_lossy(&out.stdout));

    let mut kinds = BTreeMap::<String, usize>::new();
    for o in &objs {
        *kinds
            .entry(str_of(&o["kind"], "kind").to_string())
            .or_default() += 1;
        assert_eq!(
            o["metadata"]["namespace"], "twentycrm",
            "{:?} is not in Twenty's namespace",
            o["metadata"]["name"]
        );
    }
    let want: BTreeMap<String, usize> = [
        ("ConfigMap", 1),
        ("Deployment", 2),
        ("NetworkPolicy", 2),
        ("Service", 3),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, want);

    // The config the pods get is deploy/k8s/gateway.yaml, unchanged and without a name hash
    // (an edit must reach running pods as a `..data` swap, not as a new ConfigMap).
    let cm = find(&objs, "ConfigMap", "twenty-gateway-config");
    let config_text = str_of(&cm["data"]["gateway.yaml"], "ConfigMap data gateway.yaml");
    assert_eq!(config_text, read(&deploy("k8s/gateway.yaml")));
    let config: Value = serde_yaml::from_str(config_text).unwrap();
    let https_port = port_of(str_of(&config["listen"]["https"], "listen.https"));
    let admin_port = port_of(str_of(&config["listen"]["admin"], "listen.admin"));

    let gw = find(&objs, "Deployment", "twenty-gateway");
    let replicas = gw["spec"]["replicas"].as_u64().unwrap_or(1);
    assert!(replicas >= 2, "replicas: {replicas}");
    let pod = &gw["spec"]["template"];
    assert!(selects(
        &gw["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = seq_of(&spec["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_yaml::from_str::<Value>("[ALL]").unwrap()
    );

    let ports: BTreeMap<&str, u64> = seq_of(&c["ports"], "ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name"),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect();
    assert_eq!(ports.get("https"), Some(&u64::from(https_port)));
    assert_eq!(ports.get("admin"), Some(&u64::from(admin_port)));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"], "admin",
            "{probe} not on the admin port"
        );
    }

    // --config names the ConfigMap's file in the mounted projected volume, and the certificate
    // paths in the config are the Secret's items in that same volume.
    let config_path = config_flag(&c["args"], "container args");
    let mount = seq_of(&c["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| config_path.starts_with(&format!("{}/", str_of(&m["mountPath"], "mountPath"))))
        .expect("--config lies in a mounted volume");
    assert_eq!(mount["readOnly"], true);
    let mount_path = str_of(&mount["mountPath"], "mountPath");
    let volume = seq_of(&spec["volumes"], "volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let mut items = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for src in seq_of(&volume["projected"]["sources"], "projected sources") {
        if let Some(cm_ref) = src.get("configMap") {
            let name = str_of(&cm_ref["name"], "configMap name");
            find(&objs, "ConfigMap", name);
        }
        if let Some(s) = src.get("secret") {
            secrets.insert(str_of(&s["name"], "secret name").to_string());
        }
        for src_ref in [src.get("configMap"), src.get("secret")]
            .into_iter()
            .flatten()
        {
            for item in seq_of(&src_ref["items"], "items") {
                items.insert(format!(
                    "{mount_path}/{}",
                    str_of(&item["path"], "item path")
                ));
            }
        }
    }
    assert!(
        items.contains(config_path),
        "{config_path} is not projected: {items:?}"
    );
    for cert in seq_of(&config["tls"]["certificates"], "tls.certificates") {
        for f in ["cert", "key"] {
            let p = format!("{mount_path}/{}", str_of(&cert[f], f));
            assert!(items.contains(&p), "{p} is not projected: {items:?}");
        }
    }
    // Every Secret a pod needs is one the operator creates (README) — none is shipped.
    for e in seq_of(&c["env"], "env") {
        if let Some(s) = e["valueFrom"]["secretKeyRef"]["name"].as_str() {
            secrets.insert(s.to_string());
        }
    }
    let known: BTreeSet<String> = OPERATOR_SECRETS.iter().map(|s| s.to_string()).collect();
    assert_eq!(secrets, known);
    // The env var the tenant's upstream_token_env names is set.
    for t in seq_of(&config["tenants"], "tenants") {
        if let Some(var) = t["upstream_token_env"].as_str() {
            assert!(
                seq_of(&c["env"], "env").iter().any(|e| e["name"] == var),
                "{var} is not in the container's env"
            );
        }
    }

    // Draining fits in the grace period.
    let grace =
        humantime::parse_duration(config["limits"]["shutdown_grace"].as_str().unwrap_or("30s"))
            .unwrap();
    let termination = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        termination > grace.as_secs(),
        "terminationGracePeriodSeconds {termination} <= shutdown_grace {grace:?}"
    );

    // Services select pods that exist and target ports those pods have.
    let deployments: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Deployment").collect();
    let mut services = BTreeMap::new();
    for svc in objs.iter().filter(|o| o["kind"] == "Service") {
        let name = str_of(&svc["metadata"]["name"], "service name");
        let d = deployments
            .iter()
            .find(|d| {
                selects(
                    &svc["spec"]["selector"],
                    &d["spec"]["template"]["metadata"]["labels"],
                )
            })
            .unwrap_or_else(|| panic!("Service {name} selects no pods"));
        let pod_ports: Vec<&Value> =
            seq_of(&d["spec"]["template"]["spec"]["containers"], "containers")
                .iter()
                .flat_map(|c| seq_of(&c["ports"], "ports").iter())
                .collect();
        for p in seq_of(&svc["spec"]["ports"], "service ports") {
            let target = &p["targetPort"];
            assert!(
                pod_ports
                    .iter()
                    .any(|pp| pp["name"] == *target || pp["containerPort"] == *target),
                "Service {name}: targetPort {target:?} is not a port of its pods"
            );
            services.insert(
                (name.to_string(), p["port"].as_u64().expect("port")),
                str_of(&d["metadata"]["name"], "deployment").to_string(),
            );
        }
    }
    // cluster.redis names the shipped Redis Service.
    let (redis_host, redis_port) =
        url_host_port(str_of(&config["cluster"]["redis"], "cluster.redis"));
    assert_eq!(
        services
            .get(&(redis_host.clone(), u64::from(redis_port)))
            .map(String::as_str),
        Some("twenty-gateway-redis"),
        "cluster.redis {redis_host}:{redis_port} is not the Redis Service"
    );
    // The public Service reaches the TLS listener.
    let public = find(&objs, "Service", "twenty-gateway");
    assert_eq!(public["spec"]["ports"][0]["targetPort"], "https");
    assert_eq!(public["spec"]["externalTrafficPolicy"], "Local");
}

// ---------------------------------------------------------------------------------------------
// docker compose
// ---------------------------------------------------------------------------------------------

/// The env a `docker compose config` of deploy/docker-compose.yml needs (its `${X:?}`s).
const COMPOSE_ENV: &[(&str, &str)] = &[
    ("SERVER_URL", "https://crm.example.com"),
    ("APP_SECRET", "test-secret"),
    ("TWENTY_API_KEY", "test-key"),
];

fn depends_on_names(svc: &Value) -> Vec<(String, Option<String>)> {
    match svc.get("depends_on") {
        None => Vec::new(),
        Some(Value::Sequence(s)) => s
            .iter()
            .map(|n| (str_of(n, "depends_on").to_string(), None))
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    str_of(k, "depends_on").to_string(),
                    v["condition"].as_str().map(str::to_string),
                )
            })
            .collect(),
        Some(other) => panic!("depends_on: {other:?}"),
    }
}

/// `(source, target)` of a service's short-syntax volumes.
fn mounts(svc: &Value) -> Vec<(String, String)> {
    svc.get("volumes")
        .map(|v| seq_of(v, "volumes"))
        .into_iter()
        .flatten()
        .map(|v| {
            let s = str_of(v, "volume");
            let mut parts = s.splitn(3, ':');
            let src = parts.next().unwrap_or_default().to_string();
            let dst = parts
                .next()
                .unwrap_or_else(|| panic!("volume {s:?} has no target"))
                .to_string();
            (src, dst)
        })
        .collect()
}

#[test]
fn compose_file_is_consistent() {
    let compose = yaml_file(&deploy("docker-compose.yml"));
    let services = map_of(&compose["services"], "services");
    let names: BTreeSet<&str> = services.keys().map(|k| str_of(k, "service")).collect();
    for s in ["gateway", "server", "worker", "db", "redis"] {
        assert!(names.contains(s), "service {s} missing");
    }
    let declared: BTreeSet<&str> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(|k| str_of(k, "volume")).collect())
        .unwrap_or_default();

    for (name, svc) in services {
        let name = str_of(name, "service");
        for (dep, condition) in depends_on_names(svc) {
            assert!(
                names.contains(dep.as_str()),
                "{name} depends on unknown {dep}"
            );
            match condition.as_deref() {
                None | Some("service_started") | Some("service_completed_successfully") => {}
                Some("service_healthy") => assert!(
                    compose["services"][dep.as_str()]
                        .get("healthcheck")
                        .is_some(),
                    "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                ),
                Some(other) => panic!("{name}: depends_on {dep}: condition {other}"),
            }
        }
        for (src, _) in mounts(svc) {
            if src.starts_with('.') || src.starts_with('/') {
                assert!(
                    deploy(&src).exists(),
                    "{name}: bind source {src} does not exist next to the compose file"
                );
            } else {
                assert!(
                    declared.contains(src.as_str()),
                    "{name}: volume {src} not declared"
                );
            }
        }
    }

    // The gateway's config, found through its --config and its bind mount.
    let gw = &compose["services"]["gateway"];
    let build = &gw["build"];
    let context = deploy(str_of(&build["context"], "build.context"));
    assert!(
        context
            .join(str_of(&build["dockerfile"], "build.dockerfile"))
            .is_file()
    );
    let config_in_container = config_flag(&gw["command"], "gateway command");
    let config_on_host = mounts(gw)
        .into_iter()
        .find_map(|(src, dst)| {
            config_in_container
                .strip_prefix(&format!("{dst}/"))
                .map(|rel| deploy(&src).join(rel))
        })
        .expect("--config lies in a bind mount");
    assert!(config_on_host.is_file(), "{}", config_on_host.display());
    assert_eq!(
        config_on_host.canonicalize().unwrap(),
        deploy("gateway.docker.yaml").canonicalize().unwrap()
    );
    let config = yaml_file(&config_on_host);

    // Published: the TLS listener only.
    let https = port_of(str_of(&config["listen"]["https"], "listen.https"));
    let admin = port_of(str_of(&config["listen"]["admin"], "listen.admin"));
    let published: Vec<u16> = seq_of(&gw["ports"], "gateway ports")
        .iter()
        .map(|p| port_of(str_of(p, "port")))
        .collect();
    assert_eq!(
        published,
        vec![https],
        "the gateway publishes {published:?}"
    );
    assert_ne!(https, admin);

    // Upstreams are Twenty's `server` on its NODE_PORT; cluster.redis is Twenty's `redis`.
    let node_port = compose["services"]["server"]["environment"]["NODE_PORT"]
        .as_u64()
        .expect("server NODE_PORT");
    for (name, url) in map_of(&config["upstreams"], "upstreams") {
        let (host, port) = url_host_port(str_of(url, "upstream"));
        assert_eq!(
            (host.as_str(), u64::from(port)),
            ("server", node_port),
            "upstream {name:?}"
        );
    }
    let (redis_host, _) = url_host_port(str_of(&config["cluster"]["redis"], "cluster.redis"));
    assert!(names.contains(redis_host.as_str()));
    let twenty_redis = str_of(
        &compose["services"]["server"]["environment"]["REDIS_URL"],
        "REDIS_URL",
    );
    assert!(
        twenty_redis.contains(&format!("redis://{redis_host}:")),
        "Twenty's REDIS_URL {twenty_redis} is not the gateway's Redis"
    );
    // SERVER_URL is set for Twenty (deploy/README.md: the gateway's public URL).
    assert!(compose["services"]["server"]["environment"]["SERVER_URL"].is_string());
    // Every upstream_token_env variable reaches the gateway container.
    for t in seq_of(&config["tenants"], "tenants") {
        if let Some(var) = t["upstream_token_env"].as_str() {
            assert!(
                gw["environment"][var].is_string(),
                "{var} not passed to the gateway"
            );
        }
    }
    assert_eq!(gw["read_only"], true);

    compose_tool_validates();
}

/// `docker compose config -q` (Compose v2) or `docker-compose config -q` (v1, which predates
/// the top-level `name`: it checks a copy without it, project name given with `-p`).
fn compose_tool_validates() {
    let file = deploy("docker-compose.yml");
    let v2 = tool("docker").filter(|d| {
        Command::new(d)
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = if let Some(docker) = v2 {
        let mut c = Command::new(docker);
        c.args(["compose", "-f"]).arg(&file);
        c
    } else if let Some(dc) = tool("docker-compose") {
        let mut compose = yaml_file(&file);
        compose.as_mapping_mut().unwrap().remove("name");
        let copy = scratch.path().join("docker-compose.yml");
        std::fs::write(&copy, serde_yaml::to_string(&compose).unwrap()).unwrap();
        let mut c = Command::new(dc);
        c.args(["-p", "twenty", "--project-directory"])
            .arg(deploy(""))
            .arg("-f")
            .arg(&copy);
        c
    } else {
        return skipped(
            "compose_file_is_consistent (compose tool)",
            "neither `docker compose` nor `docker-compose` (Debian: apt-get install docker-compose)",
        );
    };
    cmd.args(["config", "-q"]);
    for (k, v) in COMPOSE_ENV {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run compose");
    assert!(
        out.status.success(),
        "compose config: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------

/// Instructions of a Dockerfile: `(KEYWORD, rest)`, continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (k, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((k.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

fn exec_form(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not an exec-form JSON array: {s}: {e}"))
}

/// What the Dockerfile checks found: the HEALTHCHECK's argv.
fn check_dockerfile() -> Vec<String> {
    let text = read(&deploy("Dockerfile"));
    let all = dockerfile_instructions(&text);
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {} FROM", stages.len());
    let builder = &all[stages[0]].1;
    assert!(
        builder.contains("rust:") && builder.contains("bookworm"),
        "{builder}"
    );
    let build_stage = &all[stages[0]..stages[stages.len() - 1]];
    assert!(
        build_stage
            .iter()
            .any(|(k, v)| k == "RUN" && v.contains("cargo build --release --locked")),
        "the build stage runs cargo build --release --locked"
    );
    let last = &all[stages[stages.len() - 1]..];
    assert!(
        !last[0].1.contains("rust:"),
        "the final image is not the toolchain"
    );
    let get = |kw: &str| -> Vec<&str> {
        last.iter()
            .filter(|(k, _)| k == kw)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let user = *get("USER").last().expect("USER in the final stage");
    assert!(
        !["root", "0", "0:0"].contains(&user) && !user.starts_with("0:"),
        "USER {user}"
    );
    assert!(get("ENV").contains(&"GATEWAY_CONFIG=/etc/twenty-gateway/gateway.yaml"));

    let config = yaml_file(&deploy("gateway.docker.yaml"));
    let https = port_of(str_of(&config["listen"]["https"], "listen.https"));
    let admin = port_of(str_of(&config["listen"]["admin"], "listen.admin"));
    let exposed: BTreeSet<u16> = get("EXPOSE")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(exposed, BTreeSet::from([https, admin]));

    let entrypoint = exec_form(get("ENTRYPOINT").last().expect("ENTRYPOINT"));
    let bin = &entrypoint[0];
    assert!(
        get("COPY")
            .iter()
            .any(|c| c.starts_with("--from=") && c.ends_with(&format!(" {bin}"))),
        "{bin} is copied from the build stage"
    );
    let hc = *get("HEALTHCHECK").last().expect("HEALTHCHECK");
    let cmd = hc
        .split_once("CMD ")
        .map(|(_, c)| c)
        .expect("HEALTHCHECK ... CMD");
    let argv = exec_form(cmd);
    assert_eq!(&argv[0], bin, "the HEALTHCHECK runs the gateway binary");
    assert_eq!(argv.get(1).map(String::as_str), Some("healthcheck"));
    let flag = |name: &str| {
        argv.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].clone())
            .unwrap_or_else(|| panic!("HEALTHCHECK without {name}"))
    };
    assert_eq!(
        port_of(&flag("--addr")),
        admin,
        "HEALTHCHECK --addr is listen.admin"
    );
    assert_eq!(flag("--path"), "/healthz");

    let ignore = read(&deploy("Dockerfile.dockerignore"));
    for must in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            "dockerignore: {must}"
        );
    }
    argv
}

#[test]
fn dockerfile_is_consistent() {
    check_dockerfile();
}

#[tokio::test]
async fn healthcheck_probe_answers_from_the_real_admin_listener() {
    use twenty_gateway::healthcheck::{ProbeError, probe};
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_admin().spawn().await;
    let admin = gw.admin();
    let t = std::time::Duration::from_secs(5);
    let run = move |path: &'static str| tokio::task::spawn_blocking(move || probe(admin, path, t));
    assert_eq!(run("/healthz").await.unwrap().unwrap(), 200);
    assert_eq!(run("/readyz").await.unwrap().unwrap(), 200);
    match run("/nope").await.unwrap() {
        Err(ProbeError::Status { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    gw.terminate().await;
    assert!(matches!(
        run("/healthz").await.unwrap(),
        Err(ProbeError::Connect { .. })
    ));
}

/// The Dockerfile's HEALTHCHECK command line, run against a real gateway.
#[tokio::test]
async fn dockerfile_healthcheck_command_runs() {
    let argv = check_dockerfile();
    let up = spawn_upstream("core").await;
    let gw = Conf::one(&up).with_admin().spawn().await;
    let admin = gw.admin().to_string();
    let args = |path: &str| -> Vec<String> {
        let mut a: Vec<String> = argv[1..].to_vec();
        for w in 0..a.len().saturating_sub(1) {
            match a[w].as_str() {
                "--addr" => a[w + 1] = admin.clone(),
                "--path" => a[w + 1] = path.to_string(),
                _ => {}
            }
        }
        a
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run_cli(&refs, None, None, &[])
    };
    let ok = run(args("/healthz"));
    assert!(ok.status.success(), "{ok:?}");
    let bad = run(args("/nope"));
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("404"));
    let usage = run(args("healthz"));
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a path without '/': {usage:?}"
    );
    gw.terminate().await;
    let down = run(args("/healthz"));
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot connect"));
}

// ---------------------------------------------------------------------------------------------
// a mounted ConfigMap: kubelet's `..data` symlink swap
// ---------------------------------------------------------------------------------------------

/// A directory written the way kubelet's AtomicWriter writes a ConfigMap/Secret/projected
/// volume: each version in a new `..<timestamp>` directory, `..data_tmp` → it renamed over
/// `..data`, a `name → ..data/name` symlink per top-level entry, the previous version removed.
struct KubeletVolume {
    dir: PathBuf,
    version: u32,
    current: Option<String>,
}

impl KubeletVolume {
    fn new(dir: &Path) -> Self {
        KubeletVolume {
            dir: dir.to_path_buf(),
            version: 0,
            current: None,
        }
    }

    fn publish(&mut self, files: &[(&str, Vec<u8>)]) {
        self.version += 1;
        let ts = format!(
            "..2026_01_01_00_00_{:02}.{:09}",
            self.version,
            std::process::id()
        );
        let ts_dir = self.dir.join(&ts);
        for (rel, content) in files {
            let p = ts_dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (rel, _) in files {
            let top = rel.split('/').next().unwrap();
            let link = self.dir.join(top);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{top}"), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

const TOKEN_LATE: &str = "tgw_test_late_key_0123456789abcdef";
/// The SNI the certificate in the volume's `tls/` covers (and no other certificate does).
const ROTATED_SNI: &str = "files.rotated.test";

fn volume_cert(version: &str) -> (Vec<u8>, Vec<u8>) {
    let scratch = tempfile::tempdir().unwrap();
    let c = ca().issue(
        scratch.path(),
        "tls",
        &[ROTATED_SNI, &format!("{version}.rotated.test")],
    );
    (
        std::fs::read(c.cert).unwrap(),
        std::fs::read(c.key).unwrap(),
    )
}

/// Config for the volume: the default certificate by a path that exists only next to the
/// config path as given (`certs/` in the volume directory, not inside `..data`), the rotated
/// one through the volume's `tls → ..data/tls` symlink.
fn volume_conf(up: &Upstream) -> Conf {
    let mut conf = Conf::one(up).with_admin();
    conf.certificates
        .push("{ cert: tls/tls.crt, key: tls/tls.key }".to_string());
    conf
}

fn volume_files(yaml: &str, cert: &(Vec<u8>, Vec<u8>)) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("gateway.yaml", yaml.as_bytes().to_vec()),
        ("tls/tls.crt", cert.0.clone()),
        ("tls/tls.key", cert.1.clone()),
    ]
}

/// The certificate served for [`ROTATED_SNI`] is the one of `version` ([`volume_cert`]).
async fn assert_rotated_cert(gw: &Gateway, version: &str) {
    let names = tls_connect(gw.https(), &TlsOpts::h1(ROTATED_SNI))
        .await
        .1
        .dns_names();
    let want = format!("{version}.rotated.test");
    assert!(names.contains(&want), "served {names:?}, want {want}");
}

/// `conf` plus a key `late` ([`TOKEN_LATE`]) for tenant acme.
fn with_late_key(conf: &Conf) -> Conf {
    let keys = format!("{}{}", conf.keys, key_yaml("late", "acme", TOKEN_LATE, ""));
    conf.clone().keys(&keys)
}

async fn status_with(gw: &Gateway, token: &str) -> u16 {
    let auth = bearer(token);
    gw.h1("acme.gw.test")
        .await
        .get("/rest/people", &[("authorization", &auth)])
        .await
        .status
        .as_u16()
}

/// A gateway whose `--config` is `<volume>/gateway.yaml → ..data/gateway.yaml`, version 1
/// published. The harness writes the config to `<dir>/gateway.yaml`; the symlink is already
/// there, so that write lands in the published version (same bytes).
async fn spawn_on_volume(conf: &Conf) -> (Gateway, KubeletVolume) {
    let setup = GatewaySetup::new();
    let mut vol = KubeletVolume::new(setup.dir.path());
    let yaml = conf.render();
    vol.publish(&volume_files(&yaml, &volume_cert("v1")));
    let gw = setup.spawn(&yaml).await;
    let link = gw.dir().join("gateway.yaml");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the config path stays kubelet's symlink"
    );
    (gw, vol)
}

#[tokio::test]
async fn configmap_volume_paths_resolve_next_to_the_config_path_as_given() {
    let up = spawn_upstream("core").await;
    let conf = volume_conf(&up);
    let (gw, mut vol) = spawn_on_volume(&conf).await;
    // certs/default.crt exists only next to the given path, tls/tls.crt only via ..data.
    assert_eq!(status_with(&gw, TOKEN_ACME).await, 200);
    assert_rotated_cert(&gw, "v1").await;

    // A new version, then SIGHUP: the same paths resolve in the new version, while the old
    // `..<timestamp>` directory the symlinks pointed at is gone.
    let late = with_late_key(&conf);
    vol.publish(&volume_files(&late.render(), &volume_cert("v2")));
    let start = gw.stdout.line_count();
    gw.signal("HUP");
    let ev = gw
        .wait_event_after(start, |e| e == "reload" || e == "reload_failed")
        .await;
    assert_eq!(ev["event"], "reload", "{ev:?}");
    assert_eq!(status_with(&gw, TOKEN_LATE).await, 200);
    assert_rotated_cert(&gw, "v2").await;
}

/// Wait for the reload a swap (made just before `since`) causes, by the file watch, within
/// SPEC's 5 seconds.
async fn wait_watch_reload(gw: &Gateway, start: usize, since: std::time::Instant) {
    let ev = gw
        .wait_event_after(start, |e| e == "reload" || e == "reload_failed")
        .await;
    let took = since.elapsed();
    assert_eq!(ev["event"], "reload", "{ev:?}");
    assert_eq!(ev["trigger"], "file_watch", "{ev:?}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "the swap was noticed after {took:?}"
    );
    eprintln!("..data swap → reload in {took:?}");
}

#[tokio::test]
async fn configmap_data_swap_reloads_through_the_file_watch() {
    let up = spawn_upstream("core").await;
    let conf = volume_conf(&up);
    let (gw, mut vol) = spawn_on_volume(&conf).await;
    assert_eq!(status_with(&gw, TOKEN_LATE).await, 401);

    // Version 2: a new key, a new certificate.
    let late = with_late_key(&conf);
    let start = gw.stdout.line_count();
    let since = std::time::Instant::now();
    vol.publish(&volume_files(&late.render(), &volume_cert("v2")));
    wait_watch_reload(&gw, start, since).await;
    assert_eq!(status_with(&gw, TOKEN_LATE).await, 200);
    assert_eq!(status_with(&gw, TOKEN_ACME).await, 200);
    assert_rotated_cert(&gw, "v2").await;

    // Version 3, after version 1's directory is gone: the watch still sees swaps.
    let revoked = late.clone().keys(&format!(
        "keys:\n{}{}",
        key_yaml("acme-ci", "acme", TOKEN_ACME, "revoked: true"),
        key_yaml("late", "acme", TOKEN_LATE, "")
    ));
    let start = gw.stdout.line_count();
    let since = std::time::Instant::now();
    vol.publish(&volume_files(&revoked.render(), &volume_cert("v3")));
    wait_watch_reload(&gw, start, since).await;
    assert_eq!(status_with(&gw, TOKEN_ACME).await, 401);
    assert_eq!(status_with(&gw, TOKEN_LATE).await, 200);
    let versions = std::fs::read_dir(gw.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("..2026"))
        .count();
    assert_eq!(versions, 1, "kubelet keeps only the current version");
}

/// cert-manager renewing the Secret of a projected volume swaps `..data` with gateway.yaml
/// unchanged: the new certificate must be served without a restart.
#[tokio::test]
async fn configmap_data_swap_with_only_a_renewed_certificate_reloads() {
    let up = spawn_upstream("core").await;
    let conf = volume_conf(&up);
    let (gw, mut vol) = spawn_on_volume(&conf).await;
    let start = gw.stdout.line_count();
    let since = std::time::Instant::now();
    vol.publish(&volume_files(&conf.render(), &volume_cert("renewed")));
    wait_watch_reload(&gw, start, since).await;
    assert_rotated_cert(&gw, "renewed").await;
}

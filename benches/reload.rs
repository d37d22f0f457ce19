//! Reload cost: time to load + validate a config with 10,000 and 100,000
//! keys, and to build and swap its snapshot (limiters reused from the
//! registry). `cargo bench --bench reload`. A benchmark, not a test: it
//! prints numbers and asserts nothing about time.

use std::fmt::Write;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use twenty_gateway::access_log::{AccessLog, LogFormat};
use twenty_gateway::config;
use twenty_gateway::runtime::Gateway;

fn config_text(keys: usize, revoke_every: usize) -> String {
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/certs");
    let mut y = format!(
        "listen: {{ https: 127.0.0.1:0 }}\n\
         tls: {{ certificates: [ {{ cert: {certs}/localhost.crt, key: {certs}/localhost.key }} ] }}\n\
         base_domains: [localhost]\n\
         upstreams: {{ core: http://127.0.0.1:3000, metadata: http://127.0.0.1:3000 }}\n\
         limits: {{ default_rate: {{ requests: 100, per: 1m, burst: 20 }} }}\n\
         tenants:\n"
    );
    for t in 0..100 {
        let _ = writeln!(y, "  - {{ name: t{t}, subdomain: t{t} }}");
    }
    y.push_str("keys:\n");
    for k in 0..keys {
        let hash = hex::encode(Sha256::digest(format!("token-{k}")));
        let revoked = revoke_every > 0 && k % revoke_every == 0;
        let _ = writeln!(
            y,
            "  - {{ id: key-{k}, tenant: t{}, sha256: {hash}, revoked: {revoked} }}",
            k % 100
        );
    }
    y
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tgw-reload-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    println!(
        "| keys | file size | load + validate (median of 5) | build + swap (median of 5) | total |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for keys in [10_000usize, 100_000] {
        let path = dir.join(format!("gateway-{keys}.yaml"));
        std::fs::write(&path, config_text(keys, 0)).expect("write config");
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let first = config::load(&path).expect("valid config");
        let gw = Gateway::new(first, AccessLog::stdout(LogFormat::Json));
        // Alternate between two files so every reload really changes keys.
        let alt = dir.join(format!("gateway-{keys}-alt.yaml"));
        std::fs::write(&alt, config_text(keys, 10)).expect("write config");
        let (mut loads, mut swaps) = (Vec::new(), Vec::new());
        for i in 0..5 {
            let p = if i % 2 == 0 { &alt } else { &path };
            let t = Instant::now();
            let cfg = config::load(p).expect("valid config");
            loads.push(t.elapsed());
            let t = Instant::now();
            let snap = gw.install(cfg);
            swaps.push(t.elapsed());
            assert_eq!(snap.keys.len(), keys);
        }
        let (l, s) = (median(loads), median(swaps));
        println!(
            "| {keys} | {:.1} MiB | {:.0} ms | {:.0} ms | {:.0} ms |",
            size as f64 / (1 << 20) as f64,
            l.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3,
            (l + s).as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

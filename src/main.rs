//! Thin entry point: parse the CLI, set up logging, load the config, run.

#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use twenty_gateway::access_log::{AccessLog, LogFormat};
use twenty_gateway::auth::hash_token;
use twenty_gateway::cli::{Cli, Command};
use twenty_gateway::listener::Bound;
use twenty_gateway::runtime::Gateway;
use twenty_gateway::{config, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::HashKey) => hash_key(),
        Some(Command::GenKey { tenant, id }) => gen_key(tenant, id),
        Some(Command::Healthcheck {
            addr,
            path,
            timeout,
        }) => healthcheck(*addr, path, *timeout),
        None => run(&cli),
    }
}

fn check(cli: &Cli) -> ExitCode {
    match config::load(&cli.config) {
        Ok(c) => {
            println!(
                "{}: OK ({} tenants, {} keys, {} certificates, {} routes)",
                cli.config.display(),
                c.tenants.len(),
                c.keys.len(),
                c.certs.len(),
                c.routes.routes().len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for line in errors.lines() {
                eprintln!("{line}");
            }
            eprintln!(
                "{} error(s); the config was not accepted",
                errors.errors.len()
            );
            ExitCode::from(1)
        }
    }
}

fn healthcheck(addr: std::net::SocketAddr, path: &str, timeout: std::time::Duration) -> ExitCode {
    match twenty_gateway::healthcheck::probe(addr, path, timeout) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ twenty_gateway::healthcheck::ProbeError::BadPath) => {
            eprintln!("--path: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::from(1)
        }
    }
}

fn hash_key() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(64 * 1024).read_to_end(&mut input) {
        eprintln!("cannot read the token from stdin: {e}");
        return ExitCode::from(1);
    }
    let token = input
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(&input);
    if token.is_empty() {
        eprintln!("no token on stdin (usage: printf %s \"$TOKEN\" | twenty-gateway hash-key)");
        return ExitCode::from(1);
    }
    println!("{}", hash_token(token));
    ExitCode::SUCCESS
}

fn yaml_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn gen_key(tenant: &str, id: &str) -> ExitCode {
    for (what, v) in [("--tenant", tenant), ("--id", id)] {
        if !yaml_safe(v) {
            eprintln!("{what} must be 1-128 characters of letters, digits, '-', '_' or '.'");
            return ExitCode::from(1);
        }
    }
    let secret: [u8; 32] = rand::random();
    let token = format!("tgw_{}", hex::encode(secret));
    println!("{token}");
    println!("# Add this entry under `keys:` in gateway.yaml. The token above is shown only once.");
    println!("- id: {id}");
    println!("  tenant: {tenant}");
    println!("  sha256: {}", hash_token(token.as_bytes()));
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}

fn run(cli: &Cli) -> ExitCode {
    init_logging(cli.log_format);
    // A bad config exits before any port is bound.
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            for line in errors.lines() {
                eprintln!("{line}");
            }
            eprintln!("{} error(s); not starting", errors.errors.len());
            return ExitCode::from(1);
        }
    };
    let workers = cli.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // One worker: a current-thread runtime drives I/O and tasks on one
    // thread with no work-stealing or cross-thread wake-ups.
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let bound = match Bound::bind(&config.listen).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        let gw = Gateway::new(config, AccessLog::stdout(cli.log_format));
        let served = serve(gw.clone(), bound, shutdown_signal()).await;
        // Requests drained at shutdown keep their access lines.
        gw.access_log.flush(std::time::Duration::from_secs(5));
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot start TLS: {e}");
                ExitCode::from(1)
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(event = "signal", signal = "SIGTERM", "received SIGTERM"),
        _ = int.recv() => tracing::info!(event = "signal", signal = "SIGINT", "received SIGINT"),
    }
}

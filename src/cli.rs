//! The command line: run, `check`, `hash-key`, `gen-key`, `healthcheck`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::access_log::LogFormat;
use crate::healthcheck;

#[derive(Debug, Parser)]
#[command(
    name = "twenty-gateway",
    version,
    about = "Authenticating API gateway for self-hosted Twenty CRM"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        env = "GATEWAY_CONFIG",
        default_value = "gateway.yaml",
        global = true
    )]
    pub config: PathBuf,

    /// Log format on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,

    /// Runtime worker threads (default: the CPUs this process may run on;
    /// 1 runs everything on one thread with a current-thread runtime).
    #[arg(long, env = "GATEWAY_WORKERS")]
    pub workers: Option<usize>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and the files it names; exit 1 listing every error.
    Check,
    /// Read a token on stdin and print its hex SHA-256 (a key's `sha256:`).
    HashKey,
    /// Print a new random token once, plus the YAML entry holding its hash.
    GenKey {
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Key id (shown in logs, metrics and X-Gateway-Key-Id).
        #[arg(long)]
        id: String,
    },
    /// Probe the admin listener (container HEALTHCHECK): exit 0 on a 2xx answer, 1 otherwise.
    Healthcheck {
        /// Admin listener address (`listen.admin`; 0.0.0.0 and [::] mean loopback).
        #[arg(long, default_value_t = healthcheck::DEFAULT_ADDR)]
        addr: SocketAddr,
        /// Path to GET (`/healthz`, or `/readyz` to include draining).
        #[arg(long, default_value = healthcheck::DEFAULT_PATH)]
        path: String,
        /// Give up after this long (connect to status line).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

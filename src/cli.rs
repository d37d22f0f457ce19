//! The command line: run, `check`, `hash-key`, `gen-key`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::access_log::LogFormat;

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
}

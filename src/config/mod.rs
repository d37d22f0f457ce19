//! `gateway.yaml`: the file ([`raw`]) and its checks ([`validate`]), which
//! compile each part into the table of the step that uses it. Live reload is
//! the runtime's ([`crate::runtime::reload`]).

pub mod raw;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use validate::{Acme, Config, Limits, Listen, Tenant, TenantRoute};

pub use crate::auth::Key;
pub use crate::host::TenantId;
pub use crate::ratelimit::Rate;
pub use crate::upstream::Upstream;

/// One problem in the config, located by the path of the field (`keys[3].tenant`)
/// or, for syntax and unknown-field errors, by line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    fn single(file: &Path, path: &str, message: String) -> Self {
        ConfigErrors {
            file: file.to_path_buf(),
            errors: vec![ConfigError {
                path: path.into(),
                message,
            }],
        }
    }

    /// One line per error: `FILE: FIELD: message`.
    pub fn lines(&self) -> Vec<String> {
        let file = self.file.display();
        self.errors
            .iter()
            .map(|e| {
                if e.path.is_empty() {
                    format!("{file}: {}", e.message)
                } else {
                    format!("{file}: {}: {}", e.path, e.message)
                }
            })
            .collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// Read, parse and validate the config file (blocking: it reads certificate
/// files; call it from `spawn_blocking` inside the runtime).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(path, "", format!("cannot read config file: {e}")))?;
    parse(&text, path)
}

/// Parse and validate config text; `path` locates relative files and errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = serde_yaml::from_str(text).map_err(|e| {
        let message = match e.location() {
            // serde_yaml appends the location to some messages itself.
            Some(loc) if !e.to_string().contains(" at line ") => {
                format!("{e} at line {} column {}", loc.line(), loc.column())
            }
            _ => e.to_string(),
        };
        ConfigErrors::single(path, "", message)
    })?;
    validate::validate(raw, path)
}

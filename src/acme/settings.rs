//! The `acme:` block: what the operator writes, and its validation.
//!
//! Validation reads `ca_roots` (so a bad PEM fails `check` and reload, not
//! the first order) but never contacts the CA.

use crate::base::FieldError;
use std::path::PathBuf;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The `acme:` block, paths already resolved against the config's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The CA's directory URL (`https://…/directory`).
    pub directory: String,
    /// Account contacts, `mailto:` URIs.
    pub contact: Vec<String>,
    /// Directory for the account key and issued certificates.
    pub storage: PathBuf,
    /// PEM file of roots to trust for `directory` instead of the built-in
    /// Web PKI roots (test CAs such as pebble).
    pub ca_roots: Option<PathBuf>,
}

/// Settings that passed validation, with `ca_roots` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSettings {
    pub directory: String,
    pub contact: Vec<String>,
    pub storage: PathBuf,
    /// `None`: trust the built-in Web PKI roots.
    pub ca_roots: Option<Vec<CertificateDer<'static>>>,
}

impl Settings {
    /// Check every field; all problems are reported, not just the first.
    pub fn validate(&self) -> Result<ValidSettings, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });

        if let Err(m) = check_directory(&self.directory) {
            err("directory".into(), m);
        }
        for (i, c) in self.contact.iter().enumerate() {
            if let Err(m) = check_contact(c) {
                err(format!("contact[{i}]"), m);
            }
        }
        if self.storage.as_os_str().is_empty() {
            err("storage".into(), "must not be empty".into());
        } else if self.storage.exists() && !self.storage.is_dir() {
            err(
                "storage".into(),
                format!("{} exists and is not a directory", self.storage.display()),
            );
        }
        let ca_roots = match &self.ca_roots {
            None => None,
            Some(path) => match read_roots(path) {
                Ok(roots) => Some(roots),
                Err(m) => {
                    err("ca_roots".into(), m);
                    None
                }
            },
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ValidSettings {
            directory: self.directory.clone(),
            contact: self.contact.clone(),
            storage: self.storage.clone(),
            ca_roots,
        })
    }
}

fn check_directory(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected https://…/directory"))?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https:// URL (ACME runs over HTTPS only)".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}

fn check_contact(contact: &str) -> Result<(), String> {
    let Some(address) = contact.strip_prefix("mailto:") else {
        return Err("must be a mailto: URI (mailto:ops@example.com)".into());
    };
    let well_formed = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.contains('@')
    }) && !address
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b == b',' || b.is_ascii_control());
    if !well_formed {
        return Err(format!("{contact:?} is not a single email address"));
    }
    Ok(())
}

fn read_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let roots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM file: {e}", path.display()))?;
    if roots.is_empty() {
        return Err(format!("{} contains no PEM certificate", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, ignored) = store.add_parsable_certificates(roots.iter().cloned());
    if ignored > 0 {
        return Err(format!(
            "{} has {ignored} certificate(s) that cannot be used as a root",
            path.display()
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> Settings {
        Settings {
            directory: "https://acme.example/directory".into(),
            contact: vec!["mailto:ops@example.com".into()],
            storage: dir.join("acme"),
            ca_roots: None,
        }
    }

    #[test]
    fn valid_settings_pass() {
        let dir = tempfile::tempdir().unwrap();
        let v = settings(dir.path()).validate().unwrap();
        assert_eq!(v.directory, "https://acme.example/directory");
        assert!(v.ca_roots.is_none());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let s = Settings {
            directory: "http://acme.example/directory".into(),
            contact: vec![
                "mailto:ops@example.com".into(),
                "ops@example.com".into(),
                "mailto:a@b.c,d@e.f".into(),
            ],
            storage: file.clone(),
            ca_roots: Some(file),
        };
        let errors = s.validate().unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "directory",
                "contact[1]",
                "contact[2]",
                "storage",
                "ca_roots"
            ]
        );
        assert!(errors[0].message.contains("https"), "{}", errors[0]);
        assert!(errors[4].message.contains("no PEM"), "{}", errors[4]);
    }

    #[test]
    fn directory_must_be_a_url_with_host() {
        assert!(check_directory("not a url").is_err());
        assert!(check_directory("https:///dir").is_err());
        assert!(check_directory("https://127.0.0.1:14000/dir").is_ok());
    }

    #[test]
    fn ca_roots_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        let mut s = settings(dir.path());
        s.ca_roots = Some(path);
        assert_eq!(s.validate().unwrap().ca_roots.unwrap().len(), 1);
        s.ca_roots = Some(dir.path().join("missing.pem"));
        let e = s.validate().unwrap_err();
        assert!(e[0].message.starts_with("cannot read"), "{}", e[0]);
    }
}

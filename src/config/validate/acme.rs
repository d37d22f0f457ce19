//! The `acme` block: the CA, contacts, storage and trusted roots (checked
//! without contacting the CA), and the names it certifies: every tenant
//! domain that no `tls.certificates` entry covers.

use std::path::Path;

use super::Collector;
use crate::acme::{Settings, ValidSettings, is_orderable_name};
use crate::config::raw::RawConfig;
use crate::host::normalize_host;
use crate::tls::CertStore;

/// ACME as the runtime starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    pub settings: ValidSettings,
    /// Tenant domains to certify (normalised, sorted, no duplicates).
    pub names: Vec<String>,
}

pub(super) fn validate_acme(
    c: &mut Collector,
    raw: &RawConfig,
    dir: &Path,
    certs: &CertStore,
) -> Option<Acme> {
    let ra = raw.acme.as_ref()?;
    let settings = Settings {
        directory: ra.directory.clone(),
        contact: ra.contact.clone(),
        storage: dir.join(&ra.storage),
        ca_roots: ra.ca_roots.as_ref().map(|p| dir.join(p)),
    };
    let settings = match settings.validate() {
        Ok(s) => Some(s),
        Err(errors) => {
            for e in errors {
                c.err(format!("acme.{}", e.field), e.message);
            }
            None
        }
    };

    let mut names = Vec::new();
    for (i, tenant) in raw.tenants.iter().enumerate() {
        for (j, d) in tenant.domains.iter().enumerate() {
            // Invalid domains are reported by the tenants check.
            let Some(name) = normalize_host(d) else {
                continue;
            };
            if certs.find(&name).is_some() {
                continue;
            }
            if !is_orderable_name(&name) {
                c.err(
                    format!("tenants[{i}].domains[{j}]"),
                    format!(
                        "{name:?} cannot get an ACME certificate (it needs a DNS name with a dot, \
                         not an IP address); add a tls.certificates entry that covers it"
                    ),
                );
                continue;
            }
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    Some(Acme {
        settings: settings?,
        names,
    })
}

//! Regenerate the development certificates in `certs/`:
//! a dev CA (`dev-ca.crt`) and a `localhost` leaf signed by it
//! (`localhost.crt`, `localhost.key`) covering `localhost`, `*.localhost`,
//! `acme.localhost`, `127.0.0.1` and `::1`.
//!
//! `cargo run --example gen_dev_cert [-- OUT_DIR]` (default `certs`).
//! For development only: the key is public in the repository.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "certs".into());
    std::fs::create_dir_all(&out)?;

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "twenty-gateway development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date_time_ymd(2026, 1, 1);
    ca.not_after = date_time_ymd(2036, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "*.localhost".to_string(),
        "acme.localhost".to_string(),
    ])?;
    for ip in ["127.0.0.1", "::1"] {
        leaf.subject_alt_names
            .push(SanType::IpAddress(ip.parse::<IpAddr>()?));
    }
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = date_time_ymd(2026, 1, 1);
    leaf.not_after = date_time_ymd(2036, 1, 1);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    std::fs::write(format!("{out}/dev-ca.crt"), ca_cert.pem())?;
    std::fs::write(format!("{out}/localhost.crt"), leaf_cert.pem())?;
    std::fs::write(format!("{out}/localhost.key"), leaf_key.serialize_pem())?;
    println!("wrote {out}/dev-ca.crt, {out}/localhost.crt, {out}/localhost.key");
    Ok(())
}

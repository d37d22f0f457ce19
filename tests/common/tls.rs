//! The test PKI (a process-wide CA that issues leaf certificates into a directory) and the
//! client side of TLS: handshake options, a verifier that trusts the test CA, what the
//! handshake produced.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;

use super::within;

// ---------------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------------

/// Paths of a leaf certificate and its key, plus the DER of the leaf.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub der: CertificateDer<'static>,
}

/// The process-wide test CA.
pub fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "twenty-gateway test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        let der = cert.der().clone();
        Ca { cert, key, der }
    })
}

impl Ca {
    /// Issue a leaf for `sans` (DNS names, wildcards like `*.gw.test`, or IPs), written as
    /// `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn issue(&self, dir: &Path, name: &str, sans: &[&str]) -> CertFiles {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            sans.first().copied().unwrap_or(name),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        std::fs::create_dir_all(dir).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        CertFiles {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }

    /// The CA certificate as PEM (what a config's `ca:` file holds).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }
}

/// DNS names in a certificate's SubjectAltName.
pub fn cert_dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse served certificate");
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_string());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// client TLS
// ---------------------------------------------------------------------------------------------

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Verifies the chain against the test CA but, unless `strict`, accepts a certificate that does
/// not name the server (so tests can connect without SNI, or with an SNI the certificate does
/// not cover, and inspect what was served).
#[derive(Debug)]
struct TestVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    strict: bool,
}

impl ServerCertVerifier for TestVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.strict => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a test client does its TLS handshake.
#[derive(Clone, Debug)]
pub struct TlsOpts {
    /// `None`: send no SNI (the handshake uses an IP address as server name).
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    /// `None`: TLS 1.2 and 1.3.
    pub versions: Option<Vec<&'static rustls::SupportedProtocolVersion>>,
    /// Require the served certificate to cover the SNI name (full webpki check).
    pub strict: bool,
}

impl TlsOpts {
    pub fn h1(sni: &str) -> Self {
        TlsOpts {
            sni: Some(sni.into()),
            alpn: vec![b"http/1.1".to_vec()],
            versions: None,
            strict: false,
        }
    }
    pub fn h2(sni: &str) -> Self {
        TlsOpts {
            sni: Some(sni.into()),
            alpn: vec![b"h2".to_vec()],
            versions: None,
            strict: false,
        }
    }
    pub fn no_sni(mut self) -> Self {
        self.sni = None;
        self
    }
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }
    pub fn alpn(mut self, alpn: &[&[u8]]) -> Self {
        self.alpn = alpn.iter().map(|a| a.to_vec()).collect();
        self
    }
    pub fn versions(mut self, v: &[&'static rustls::SupportedProtocolVersion]) -> Self {
        self.versions = Some(v.to_vec());
        self
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = self
            .versions
            .clone()
            .unwrap_or_else(|| vec![&rustls::version::TLS13, &rustls::version::TLS12]);
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca().roots()),
            provider(),
        )
        .build()
        .unwrap();
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TestVerifier {
                inner,
                strict: self.strict,
            }))
            .with_no_client_auth();
        cfg.alpn_protocols = self.alpn.clone();
        Arc::new(cfg)
    }
}

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// What the handshake produced.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    pub leaf: CertificateDer<'static>,
}

impl TlsInfo {
    pub fn dns_names(&self) -> Vec<String> {
        cert_dns_names(&self.leaf)
    }
}

pub async fn tls_connect_result(addr: SocketAddr, opts: &TlsOpts) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true).ok();
    let name: ServerName<'static> = match &opts.sni {
        Some(s) => ServerName::try_from(s.clone()).expect("valid SNI name"),
        None => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
    };
    tokio_rustls::TlsConnector::from(opts.client_config())
        .connect(name, tcp)
        .await
}

pub async fn tls_connect(addr: SocketAddr, opts: &TlsOpts) -> (TlsStream, TlsInfo) {
    let s = within("TLS handshake", tls_connect_result(addr, opts))
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} ({opts:?}) failed: {e}"));
    let info = tls_info(&s);
    (s, info)
}

pub fn tls_info(s: &TlsStream) -> TlsInfo {
    let c = s.get_ref().1;
    TlsInfo {
        alpn: c.alpn_protocol().map(|a| a.to_vec()),
        version: c.protocol_version(),
        leaf: c.peer_certificates().expect("server certificate")[0]
            .clone()
            .into_owned(),
    }
}

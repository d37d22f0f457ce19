//! Where the ACME account and the issued certificates persist.
//!
//! [`Store`] is the seam for sharing between gateways (a Redis store: the
//! account, the certificates, the pending challenge answers and a per-name
//! order lock). [`FileStore`] keeps everything under `storage` for one
//! gateway: the directory is created 0700, every file is written 0600 to a
//! temporary file and renamed over the old one, so a crash never leaves half
//! a key or a certificate that does not match its key.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// A certificate chain and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCert {
    pub key_pem: String,
    pub chain_pem: String,
}

impl std::fmt::Debug for StoredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCert").finish_non_exhaustive()
    }
}

/// What a pending challenge answers to: an HTTP-01 token or, for
/// TLS-ALPN-01, the name being validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChallengeKey {
    Http01 { token: String },
    TlsAlpn01 { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is unusable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The shared store (Redis) failed or did not answer in time.
    #[error("cannot {action} in Redis: {reason}")]
    Shared {
        action: &'static str,
        reason: String,
    },
}

/// Persistence for the ACME account and certificates.
///
/// Names given to a store passed [`super::is_orderable_name`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The account credentials (instant-acme's JSON) for `directory`.
    async fn load_account(&self, directory: &str) -> Result<Option<String>, StoreError>;
    async fn save_account(&self, directory: &str, credentials: &str) -> Result<(), StoreError>;

    async fn load_cert(&self, name: &str) -> Result<Option<StoredCert>, StoreError>;
    async fn save_cert(&self, name: &str, cert: &StoredCert) -> Result<(), StoreError>;

    /// Whether other gateways share this store: their certificates are
    /// looked for periodically, their challenge answers on a miss.
    fn is_shared(&self) -> bool {
        false
    }

    /// Claim the right to order `name` for at most `ttl`; `false` when
    /// another gateway holds it. A store used by one gateway grants it always
    /// (the manager already runs one order per name at a time).
    async fn lock_order(&self, _name: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn unlock_order(&self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Publish a pending challenge's key authorization so other gateways
    /// sharing the store can answer the CA. A local store needs nothing: the
    /// answers live in [`super::Challenges`].
    async fn put_challenge(
        &self,
        _key: &ChallengeKey,
        _key_authorization: &str,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn remove_challenge(&self, _key: &ChallengeKey) -> Result<(), StoreError> {
        Ok(())
    }
    /// A challenge answer published by another gateway.
    async fn get_challenge(&self, _key: &ChallengeKey) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// Files under one directory:
///
/// ```text
/// storage/                      0700
///   account-<sha256(directory)[..16]>.json  0600  account key + URL
///   certs/                      0700
///     <name>.pem                0600  private key, then the chain
/// ```
///
/// Key and chain share one file so one rename replaces both at once.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: Arc<PathBuf>,
}

impl FileStore {
    /// Creates `root` (and `root/certs`) 0700 if missing.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        create_dir(root)?;
        create_dir(&root.join("certs"))?;
        Ok(FileStore {
            root: Arc::new(root.to_path_buf()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `directory`'s account.
    pub fn account_path(&self, directory: &str) -> PathBuf {
        self.root
            .join(format!("account-{}.json", account_id(directory)))
    }

    /// The file holding `name`'s key and chain.
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(format!("{name}.pem"))
    }
}

/// A short name for `directory`'s account (the first 8 bytes of its
/// SHA-256, hex): file and key names hold this, never the URL.
pub(crate) fn account_id(directory: &str) -> String {
    let digest = Sha256::digest(directory.as_bytes());
    hex::encode(&digest[..8])
}

fn create_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StoreError::Io {
            action: "create directory",
            path: path.to_path_buf(),
            source,
        })
}

fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `contents` to `path` atomically: a 0600 temporary file beside it,
/// synced, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let io = |action, source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create a temporary file for", e))?;
        f.write_all(contents).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("rename a temporary file to", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; failure here loses nothing written.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A certificate as one PEM text: the private key, then the chain.
pub(crate) fn join_cert(cert: &StoredCert) -> String {
    let mut data = String::with_capacity(cert.key_pem.len() + cert.chain_pem.len() + 1);
    data.push_str(&cert.key_pem);
    if !data.ends_with('\n') {
        data.push('\n');
    }
    data.push_str(&cert.chain_pem);
    data
}

/// Split a stored `<name>.pem` (or a value of the same shape read from
/// `path`, a description of where it came from) into its key and chain.
pub(crate) fn split_cert_file(path: &Path, pem: &str) -> Result<StoredCert, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let chain_at = pem
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| corrupt("no certificate"))?;
    let (key_pem, chain_pem) = pem.split_at(chain_at);
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(corrupt("no private key before the certificate chain"));
    }
    Ok(StoredCert {
        key_pem: key_pem.to_string(),
        chain_pem: chain_pem.to_string(),
    })
}

#[async_trait]
impl Store for FileStore {
    async fn load_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let path = self.account_path(directory);
        tokio::task::spawn_blocking(move || read_optional(&path)).await?
    }

    async fn save_account(&self, directory: &str, credentials: &str) -> Result<(), StoreError> {
        let path = self.account_path(directory);
        let data = credentials.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || write_atomic(&path, &data)).await?
    }

    async fn load_cert(&self, name: &str) -> Result<Option<StoredCert>, StoreError> {
        let path = self.cert_path(name);
        tokio::task::spawn_blocking(move || {
            read_optional(&path)?
                .map(|pem| split_cert_file(&path, &pem))
                .transpose()
        })
        .await?
    }

    async fn save_cert(&self, name: &str, cert: &StoredCert) -> Result<(), StoreError> {
        let path = self.cert_path(name);
        let data = join_cert(cert);
        tokio::task::spawn_blocking(move || write_atomic(&path, data.as_bytes())).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/acme");
        let store = FileStore::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("certs")), 0o700);

        assert_eq!(store.load_account("https://ca/dir").await.unwrap(), None);
        store
            .save_account("https://ca/dir", "{\"id\":1}")
            .await
            .unwrap();
        assert_eq!(
            store.load_account("https://ca/dir").await.unwrap().unwrap(),
            "{\"id\":1}"
        );
        assert_eq!(store.load_account("https://other/dir").await.unwrap(), None);
        assert_eq!(mode(&store.account_path("https://ca/dir")), 0o600);

        let cert = StoredCert {
            key_pem: "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----".into(),
            chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        };
        assert_eq!(store.load_cert("a.test").await.unwrap(), None);
        store.save_cert("a.test", &cert).await.unwrap();
        let back = store.load_cert("a.test").await.unwrap().unwrap();
        assert_eq!(back.chain_pem, cert.chain_pem);
        assert!(back.key_pem.starts_with(&cert.key_pem));
        assert_eq!(mode(&store.cert_path("a.test")), 0o600);

        // Overwrite leaves no temporary files behind.
        store.save_cert("a.test", &cert).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(root.join("certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["a.test.pem"]);
    }

    #[tokio::test]
    async fn a_damaged_certificate_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        std::fs::write(store.cert_path("a.test"), "garbage").unwrap();
        let e = store.load_cert("a.test").await.unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}

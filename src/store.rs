//! The sled database: one place owns its path, its trees and their key layouts.
//!
//! Trees:
//! - `audit`: key = record sequence number (u64 big-endian), value = the record's JSON
//! - `keys`: key = `issuer/es256`, value = the embedded issuer's PKCS#8 PEM private key
//!
//! sled allows one process at a time. While `mandate serve` runs it owns the store and writes
//! `admin.json` (0600) beside it: the loopback URL and a random credential that the CLI uses to
//! reach the running server's admin API instead of opening the store.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Tree holding audit records.
pub const AUDIT_TREE: &str = "audit";
/// Tree holding signing keys.
pub const KEYS_TREE: &str = "keys";
/// Key of the embedded issuer's private key in [`KEYS_TREE`].
pub const ISSUER_KEY: &[u8] = b"issuer/es256";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store `{0}` is in use by another process (a running `mandate serve`?)")]
    Locked(PathBuf),
    #[error("cannot open store `{path}`: {source}")]
    Open { path: PathBuf, source: sled::Error },
}

/// The opened store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Err(source) = std::fs::create_dir_all(path) {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source: sled::Error::Io(source),
            });
        }
        let db = sled::Config::new()
            .path(path.join("db"))
            .flush_every_ms(Some(200))
            // Bounded page cache: the audit tree only grows, and memory must stay flat under load.
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(e) if is_lock_error(e) => StoreError::Locked(path.to_owned()),
                _ => StoreError::Open {
                    path: path.to_owned(),
                    source,
                },
            })?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tree(&self, name: &str) -> sled::Result<sled::Tree> {
        self.db.open_tree(name)
    }

    pub fn flush(&self) -> sled::Result<usize> {
        self.db.flush()
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().contains("lock")
        || e.raw_os_error() == Some(11)
}

/// How the CLI reaches a running server: written by `mandate serve` with mode 0600.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminCredential {
    /// Loopback base URL of the running server.
    pub url: String,
    /// Random bearer credential for `/admin/…`.
    pub token: String,
    /// Process id of the server.
    pub pid: u32,
}

/// Path of the admin credential file for a store.
pub fn admin_credential_path(store: &Path) -> PathBuf {
    store.join("admin.json")
}

/// Writes the admin credential with owner-only permissions.
pub fn write_admin_credential(store: &Path, cred: &AdminCredential) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let path = admin_credential_path(store);
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(cred).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Reads the admin credential, if a server wrote one.
pub fn read_admin_credential(store: &Path) -> Option<AdminCredential> {
    let bytes = std::fs::read(admin_credential_path(store)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the admin credential (server shutdown).
pub fn remove_admin_credential(store: &Path) {
    let _ = std::fs::remove_file(admin_credential_path(store));
}

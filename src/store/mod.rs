//! Storage: narrow traits for everything Mandate persists, and where the admin credential lives.
//!
//! The traits are the seam between the domain and the database. [`embedded`] implements them on
//! sled (the embedded default, one process at a time); a PostgreSQL backend for many stateless
//! replicas later implements the same traits, so callers do not change. Only [`embedded`] knows
//! sled, its trees and their key layouts.
//!
//! The traits are blocking: call them from a blocking thread (the audit writer's own thread,
//! `spawn_blocking`), never from an async worker. A networked backend then blocks one of those
//! threads per call, which is what they are for.
//!
//! The traits: [`AuditLog`], [`KeyStore`], [`AgentStore`], [`HandoffStore`] and
//! [`ApprovalStore`]. Quota counters are not here: they are in-process token buckets behind
//! `crate::quota::Buckets`, the seam a shared backend implements when several replicas must share
//! them.
//!
//! sled allows one process at a time. While `mandate serve` runs it owns the store and writes
//! `admin.json` (0600) beside it: the loopback URL and a random credential that the CLI uses to
//! reach the running server's admin API instead of opening the store.

pub mod embedded;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use embedded::SledApprovalStore;
pub use embedded::{
    AGENTS_TREE, AUDIT_TREE, HANDOFFS_TREE, ISSUER_KEY, ISSUER_RETIRED_PREFIX, KEYS_TREE,
    SledAgentStore, SledAuditLog, SledHandoffStore, SledKeyStore, Store, StoreError,
};

/// A storage operation failed (the backend's message, for the operator).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

impl StorageError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// One stored entry: its sequence number and its exact bytes.
pub type Entry = (u64, Vec<u8>);

/// Entries in ascending sequence order.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, StorageError>> + Send + 'a>;

/// The audit log: append-only chains of opaque entries, and their signed checkpoints.
///
/// A chain is named by a short string (`broker`, `tenant:<id>`); entries are numbered from 1 and
/// stored as given (the bytes the chain hash covers, so the backend never re-serialises them).
/// The legacy v1 chain (one chain for every event, before per-tenant chains) is read-only.
pub trait AuditLog: Send + Sync {
    /// Names of the chains that have entries, in a stable order.
    fn chains(&self) -> Result<Vec<String>, StorageError>;
    /// Stores entry `seq` of `chain` (the caller keeps sequence numbers contiguous; appending
    /// seq 1 creates the chain). Not durable until [`AuditLog::flush`].
    fn append(&self, chain: &str, seq: u64, entry: &[u8]) -> Result<(), StorageError>;
    /// The last entry of `chain`.
    fn head(&self, chain: &str) -> Result<Option<Entry>, StorageError>;
    /// Entries of `chain` with `from <= seq <= to`.
    fn range(&self, chain: &str, from: u64, to: u64) -> Entries<'_>;
    /// Stores a checkpoint of `chain` taken at entry `seq`.
    fn put_checkpoint(&self, chain: &str, seq: u64, entry: &[u8]) -> Result<(), StorageError>;
    /// Every checkpoint of `chain`, in ascending sequence order.
    fn checkpoints(&self, chain: &str) -> Entries<'_>;
    /// The checkpoint of `chain` with the highest sequence number.
    fn latest_checkpoint(&self, chain: &str) -> Result<Option<Entry>, StorageError>;
    /// Entries of the legacy v1 chain.
    fn legacy(&self) -> Entries<'_>;
    /// The last entry of the legacy v1 chain.
    fn legacy_head(&self) -> Result<Option<Entry>, StorageError>;
    /// Makes everything stored so far durable.
    fn flush(&self) -> Result<(), StorageError>;
}

/// Named secrets (private keys as PKCS#8 PEM) and published public keys.
pub trait KeyStore: Send + Sync {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores `value` under `name` unless something is there already; returns what is stored
    /// afterwards (so two racing creators agree on one key).
    fn put_if_absent(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StorageError>;
    /// Names and values of the entries whose name starts with `prefix`, in name order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
    /// In one durable step: if `name` still holds `expected`, stores `new` under it and `also`
    /// beside it (key rotation: the new key and the old one's public record). False on a lost race.
    fn replace(
        &self,
        name: &str,
        expected: &[u8],
        new: &[u8],
        also: (&str, &[u8]),
    ) -> Result<bool, StorageError>;
    fn remove(&self, name: &str) -> Result<(), StorageError>;
}

/// Registered agents and their lifecycle state (see `crate::agents`): one opaque record per
/// agent id. Every write is durable when it returns.
pub trait AgentStore: Send + Sync {
    fn get(&self, agent: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the record if it still equals `expected` (None: absent); false on a lost race.
    fn compare_and_swap(
        &self,
        agent: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StorageError>;
    /// Every agent id and record, in id order.
    fn list(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
}

/// Approval requests, pending and decided, by id; and which request is the latest for each call
/// digest (so the identical call finds its approval).
pub trait ApprovalStore: Send + Sync {
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the record if it still equals `expected` (None: absent), durably; false on a
    /// lost race.
    fn compare_and_swap(
        &self,
        id: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StorageError>;
    /// The id of the latest request for the call with this digest.
    fn latest_for(&self, call: &str) -> Result<Option<String>, StorageError>;
    /// Makes `id` the latest request for the call with this digest, durably, if the latest is
    /// still `expected` (None: none yet); false when another request got there first.
    fn claim_latest(
        &self,
        call: &str,
        expected: Option<&str>,
        id: &str,
    ) -> Result<bool, StorageError>;
    /// Every request, in id order.
    fn list(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError>;
    /// Forgets request `id` (a finished one, past its retention) and, when it is still the
    /// latest for its call's digest `call`, that index entry too.
    fn remove(&self, id: &str, call: &str) -> Result<(), StorageError>;
}

/// The handoff ledger: one record per handoff token Mandate minted, by its `jti` (see
/// `handoff`). Writes are durable when they return.
pub trait HandoffStore: Send + Sync {
    /// Records a new handoff; false if `jti` is known already.
    fn insert(&self, jti: &str, record: &[u8]) -> Result<bool, StorageError>;
    fn get(&self, jti: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the record if it still equals `expected` (marking a use); false on a lost race.
    fn compare_and_swap(
        &self,
        jti: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, StorageError>;
    /// Forgets every record for which `keep` is false; returns how many.
    fn prune(&self, keep: &mut dyn FnMut(&[u8]) -> bool) -> Result<u64, StorageError>;
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

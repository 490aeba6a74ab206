//! The embedded backend: sled on disk. The only module that knows sled's trees and key layouts.
//!
//! Trees:
//! - `audit`: the legacy v1 chain (read-only since audit v2): key = sequence number (u64
//!   big-endian), value = the v1 record's JSON
//! - `audit_v2`: audit entries, key = [`chain_key`]`(chain) ‖ seq` (u64 big-endian), value = the
//!   entry's exact bytes (one JSON line, see `audit::chain`)
//! - `audit_checkpoints`: signed checkpoints, same key layout as `audit_v2`; the legacy v1 chain's
//!   checkpoints are under chain `legacy-v1`
//! - `audit_chains`: key = chain name, value = empty; written before a chain's first entry
//! - `keys`: key = key name (`issuer/es256`, `audit/es256`), value = PKCS#8 PEM private key;
//!   `issuer/es256/retired/<kid>`: a rotated-out issuer key's public part (JSON, no private key),
//!   published until the tokens it signed have expired
//! - `approvals`: key = approval id, value = the request's JSON (see `approval`)
//! - `approvals_by_call`: key = digest of the exact call, value = the id of its latest request
//! - `agents`: key = agent id, value = the agent's record (JSON, see `crate::agents`; a client
//!   secret only as its SHA-256)
//! - `handoffs`: the handoff ledger, key = the handoff token's `jti`, value = its record (JSON,
//!   see `handoff`: user, tenant, missions, actor chain, issued, expires, used)
//!
//! Permissions: the store holds private signing keys, so it is private to its owner. Opening it
//! adds `077` to the process's umask (sled creates files later, such as snapshots, and they must
//! be owner-only too), creates the folder 0700, and tightens whatever an older version left open
//! (folders to 0700, files to 0600), logging what it changed.
//!
//! A chain key is the chain name's length (u16 big-endian) followed by the name, so one chain's
//! keys are never a prefix of another's (`tenant:a` vs `tenant:ab`) and a prefix scan is exact.

use std::path::{Path, PathBuf};

use super::{
    AgentStore, ApprovalStore, AuditLog, Entries, Entry, HandoffStore, KeyStore, StorageError,
};

/// Tree holding the legacy v1 audit chain.
pub const AUDIT_TREE: &str = "audit";
/// Tree holding audit v2 entries.
pub const AUDIT_V2_TREE: &str = "audit_v2";
/// Tree holding signed audit checkpoints.
pub const CHECKPOINTS_TREE: &str = "audit_checkpoints";
/// Tree indexing the audit chain names.
pub const CHAINS_TREE: &str = "audit_chains";
/// Tree holding signing keys.
pub const KEYS_TREE: &str = "keys";
/// Tree holding the handoff ledger.
pub const HANDOFFS_TREE: &str = "handoffs";
/// Tree holding approval requests.
pub const APPROVALS_TREE: &str = "approvals";
/// Tree indexing the latest approval request of each call digest.
pub const APPROVALS_BY_CALL_TREE: &str = "approvals_by_call";
/// Key of the embedded issuer's private key in [`KEYS_TREE`].
pub const ISSUER_KEY: &str = "issuer/es256";
/// Prefix of the rotated-out issuer keys' public records in [`KEYS_TREE`] (then the `kid`).
pub const ISSUER_RETIRED_PREFIX: &str = "issuer/es256/retired/";

/// Tree holding the agent registry.
pub const AGENTS_TREE: &str = "agents";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store `{0}` is in use by another process (a running `mandate serve`?)")]
    Locked(PathBuf),
    #[error("cannot open store `{path}`: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error(
        "cannot make `{path}` private to its owner ({source}): run mandate as the user that owns the store, or fix its permissions (`chmod -R go= {path}`)"
    )]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
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
        restrict_new_files();
        if let Err(source) = std::fs::create_dir_all(path) {
            return Err(StoreError::Open {
                path: path.to_owned(),
                source: sled::Error::Io(source),
            });
        }
        let tightened = tighten(path)?;
        if !tightened.is_empty() {
            let listed: Vec<String> = tightened.iter().map(|p| p.display().to_string()).collect();
            tracing::warn!(
                store.path = %path.display(),
                tightened = %listed.join(", "),
                "tightened permissions of the store: other users could read it (folders are now 0700, files 0600); if they could, consider rotating the signing keys"
            );
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

    /// Tests that reopen a store they just dropped: sled releases its file lock only when its
    /// I/O threads let go of the log, a moment after the last handle is dropped, so the reopen
    /// waits (up to 10 s) for that instead of failing with `Locked`.
    #[cfg(test)]
    pub(crate) fn reopen(path: &Path) -> Self {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Self::open(path) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap_or_else(|e| unreachable!("{e}")),
            }
        }
    }

    /// Raw access to a tree (for the embedded issuer's key until it moves to [`KeyStore`]).
    pub fn tree(&self, name: &str) -> sled::Result<sled::Tree> {
        self.db.open_tree(name)
    }

    pub fn flush(&self) -> sled::Result<usize> {
        self.db.flush()
    }

    /// The approval requests in this store.
    pub fn approvals(&self) -> Result<SledApprovalStore, StorageError> {
        Ok(SledApprovalStore {
            requests: self.tree(APPROVALS_TREE).map_err(StorageError::new)?,
            by_call: self
                .tree(APPROVALS_BY_CALL_TREE)
                .map_err(StorageError::new)?,
        })
    }

    /// The audit log in this store.
    pub fn audit_log(&self) -> Result<SledAuditLog, StorageError> {
        Ok(SledAuditLog {
            db: self.db.clone(),
            legacy: self.tree(AUDIT_TREE).map_err(StorageError::new)?,
            entries: self.tree(AUDIT_V2_TREE).map_err(StorageError::new)?,
            checkpoints: self.tree(CHECKPOINTS_TREE).map_err(StorageError::new)?,
            chains: self.tree(CHAINS_TREE).map_err(StorageError::new)?,
        })
    }

    /// The key store in this store.
    pub fn keys(&self) -> Result<SledKeyStore, StorageError> {
        Ok(SledKeyStore {
            tree: self.tree(KEYS_TREE).map_err(StorageError::new)?,
        })
    }

    /// The agent registry in this store.
    pub fn agents(&self) -> Result<SledAgentStore, StorageError> {
        Ok(SledAgentStore {
            tree: self.tree(AGENTS_TREE).map_err(StorageError::new)?,
        })
    }
}

/// Adds `077` to the process's umask: files and folders created from now on are owner-only.
fn restrict_new_files() {
    #[cfg(unix)]
    {
        use nix::sys::stat::{Mode, umask};
        let previous = umask(Mode::from_bits_truncate(0o077));
        umask(previous | Mode::from_bits_truncate(0o077));
    }
}

/// Makes `root` and everything in it owner-only (folders 0700, files 0600); returns the paths
/// whose permissions it changed. Symbolic links are not followed.
fn tighten(root: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut changed = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Permissions { path, source }
        };
        let mut pending = vec![root.to_owned()];
        while let Some(path) = pending.pop() {
            let meta = if path == root {
                std::fs::metadata(&path)
            } else {
                std::fs::symlink_metadata(&path)
            }
            .map_err(failed(&path))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.permissions().mode() & 0o077 != 0 {
                let mode = if meta.is_dir() { 0o700 } else { 0o600 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(failed(&path))?;
                changed.push(path.clone());
            }
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path).map_err(failed(&path))? {
                    pending.push(entry.map_err(failed(&path))?.path());
                }
            }
        }
    }
    Ok(changed)
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().contains("lock")
        || e.raw_os_error() == Some(11)
}

/// The key prefix of a chain: its name's length (u16 big-endian), then the name.
pub fn chain_key(chain: &str) -> Result<Vec<u8>, StorageError> {
    let len = u16::try_from(chain.len()).map_err(|_| {
        StorageError(format!(
            "audit chain name of {} bytes is too long (at most 65535): use a shorter tenant id",
            chain.len()
        ))
    })?;
    let mut key = Vec::with_capacity(2 + chain.len() + 8);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(chain.as_bytes());
    Ok(key)
}

fn entry_key(chain: &str, seq: u64) -> Result<Vec<u8>, StorageError> {
    let mut key = chain_key(chain)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

/// Room for the key of an entry whose chain name has at most 54 bytes.
const INLINE_KEY: usize = 64;

/// [`entry_key`] into `buf`, when it fits.
fn inline_entry_key<'a>(chain: &str, seq: u64, buf: &'a mut [u8; INLINE_KEY]) -> Option<&'a [u8]> {
    let len = 2 + chain.len() + 8;
    let name_len = u16::try_from(chain.len()).ok()?;
    let key = buf.get_mut(..len)?;
    let (prefix, rest) = key.split_at_mut(2);
    let (name, tail) = rest.split_at_mut(chain.len());
    prefix.copy_from_slice(&name_len.to_be_bytes());
    name.copy_from_slice(chain.as_bytes());
    tail.copy_from_slice(&seq.to_be_bytes());
    Some(key)
}

/// The sequence number at the end of a key.
fn seq_of(key: &[u8]) -> Result<u64, StorageError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError(format!("audit key {} is malformed", hex::encode(key))))
}

fn entries(
    iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send + 'static,
) -> Entries<'static> {
    Box::new(iter.map(|item| {
        let (key, value) = item.map_err(StorageError::new)?;
        Ok((seq_of(&key)?, value.to_vec()))
    }))
}

fn failed(e: StorageError) -> Entries<'static> {
    Box::new(std::iter::once(Err(e)))
}

fn last_with_prefix(tree: &sled::Tree, chain: &str) -> Result<Option<Entry>, StorageError> {
    let prefix = chain_key(chain)?;
    match tree.scan_prefix(prefix).next_back() {
        None => Ok(None),
        Some(item) => {
            let (key, value) = item.map_err(StorageError::new)?;
            Ok(Some((seq_of(&key)?, value.to_vec())))
        }
    }
}

/// [`AuditLog`] on sled.
#[derive(Clone)]
pub struct SledAuditLog {
    db: sled::Db,
    legacy: sled::Tree,
    entries: sled::Tree,
    checkpoints: sled::Tree,
    chains: sled::Tree,
}

impl AuditLog for SledAuditLog {
    fn chains(&self) -> Result<Vec<String>, StorageError> {
        self.chains
            .iter()
            .keys()
            .map(|key| {
                let key = key.map_err(StorageError::new)?;
                String::from_utf8(key.to_vec()).map_err(StorageError::new)
            })
            .collect()
    }

    fn append(&self, chain: &str, seq: u64, entry: &[u8]) -> Result<(), StorageError> {
        // The index first: a crash in between leaves an empty chain, never an unlisted one.
        if seq == 1 {
            self.chains
                .insert(chain.as_bytes(), &[])
                .map_err(StorageError::new)?;
        }
        // The key is built on the stack when the chain name is short (any usual tenant id):
        // this runs once per audit record.
        let mut inline = [0u8; INLINE_KEY];
        let owned;
        let key = match inline_entry_key(chain, seq, &mut inline) {
            Some(key) => key,
            None => {
                owned = entry_key(chain, seq)?;
                owned.as_slice()
            }
        };
        self.entries.insert(key, entry).map_err(StorageError::new)?;
        Ok(())
    }

    fn head(&self, chain: &str) -> Result<Option<Entry>, StorageError> {
        last_with_prefix(&self.entries, chain)
    }

    fn range(&self, chain: &str, from: u64, to: u64) -> Entries<'_> {
        if from > to {
            return Box::new(std::iter::empty());
        }
        match (entry_key(chain, from), entry_key(chain, to)) {
            (Ok(from), Ok(to)) => entries(self.entries.range(from..=to)),
            (Err(e), _) | (_, Err(e)) => failed(e),
        }
    }

    fn put_checkpoint(&self, chain: &str, seq: u64, entry: &[u8]) -> Result<(), StorageError> {
        self.checkpoints
            .insert(entry_key(chain, seq)?, entry)
            .map_err(StorageError::new)?;
        Ok(())
    }

    fn checkpoints(&self, chain: &str) -> Entries<'_> {
        match chain_key(chain) {
            Ok(prefix) => entries(self.checkpoints.scan_prefix(prefix)),
            Err(e) => failed(e),
        }
    }

    fn latest_checkpoint(&self, chain: &str) -> Result<Option<Entry>, StorageError> {
        last_with_prefix(&self.checkpoints, chain)
    }

    fn legacy(&self) -> Entries<'_> {
        entries(self.legacy.iter())
    }

    fn legacy_head(&self) -> Result<Option<Entry>, StorageError> {
        match self.legacy.last().map_err(StorageError::new)? {
            None => Ok(None),
            Some((key, value)) => Ok(Some((seq_of(&key)?, value.to_vec()))),
        }
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(StorageError::new)
    }
}

/// [`KeyStore`] on sled.
#[derive(Clone)]
pub struct SledKeyStore {
    tree: sled::Tree,
}

impl KeyStore for SledKeyStore {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree
            .get(name.as_bytes())
            .map_err(StorageError::new)?
            .map(|v| v.to_vec()))
    }

    fn put_if_absent(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StorageError> {
        match self
            .tree
            .compare_and_swap(name.as_bytes(), None::<&[u8]>, Some(value))
            .map_err(StorageError::new)?
        {
            Ok(()) => {
                self.tree.flush().map_err(StorageError::new)?;
                Ok(value.to_vec())
            }
            Err(current) => Ok(current.current.map(|v| v.to_vec()).unwrap_or_default()),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.tree
            .scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (name, value) = item.map_err(StorageError::new)?;
                Ok((String::from_utf8_lossy(&name).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn replace(
        &self,
        name: &str,
        expected: &[u8],
        new: &[u8],
        also: (&str, &[u8]),
    ) -> Result<bool, StorageError> {
        let result: sled::transaction::TransactionResult<bool, ()> = self.tree.transaction(|tx| {
            if tx.get(name.as_bytes())?.as_deref() != Some(expected) {
                return Ok(false);
            }
            tx.insert(name.as_bytes(), new)?;
            tx.insert(also.0.as_bytes(), also.1)?;
            Ok(true)
        });
        let replaced = result.map_err(|e| StorageError(format!("{e:?}")))?;
        self.tree.flush().map_err(StorageError::new)?;
        Ok(replaced)
    }

    fn remove(&self, name: &str) -> Result<(), StorageError> {
        self.tree
            .remove(name.as_bytes())
            .map_err(StorageError::new)?;
        self.tree.flush().map_err(StorageError::new)?;
        Ok(())
    }
}

/// [`AgentStore`] on the `agents` tree.
pub struct SledAgentStore {
    tree: sled::Tree,
}

impl AgentStore for SledAgentStore {
    fn get(&self, agent: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree
            .get(agent.as_bytes())
            .map_err(StorageError::new)?
            .map(|v| v.to_vec()))
    }

    fn compare_and_swap(
        &self,
        agent: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StorageError> {
        let swapped = self
            .tree
            .compare_and_swap(agent.as_bytes(), expected, Some(new))
            .map_err(StorageError::new)?
            .is_ok();
        if swapped {
            self.tree.flush().map_err(StorageError::new)?;
        }
        Ok(swapped)
    }

    fn list(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.tree
            .iter()
            .map(|item| {
                let (id, value) = item.map_err(StorageError::new)?;
                Ok((String::from_utf8_lossy(&id).into_owned(), value.to_vec()))
            })
            .collect()
    }
}

impl Store {
    /// The handoff ledger.
    pub fn handoffs(&self) -> Result<SledHandoffStore, StorageError> {
        Ok(SledHandoffStore {
            tree: self.tree(HANDOFFS_TREE).map_err(StorageError::new)?,
        })
    }
}

/// [`HandoffStore`] on sled. Every write is flushed before it returns: a handoff token exists
/// only once its record is durable, and a use is final once recorded.
#[derive(Clone)]
pub struct SledHandoffStore {
    tree: sled::Tree,
}

impl HandoffStore for SledHandoffStore {
    fn insert(&self, jti: &str, record: &[u8]) -> Result<bool, StorageError> {
        let inserted = self
            .tree
            .compare_and_swap(jti.as_bytes(), None::<&[u8]>, Some(record))
            .map_err(StorageError::new)?
            .is_ok();
        self.tree.flush().map_err(StorageError::new)?;
        Ok(inserted)
    }

    fn get(&self, jti: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree
            .get(jti.as_bytes())
            .map_err(StorageError::new)?
            .map(|v| v.to_vec()))
    }

    fn compare_and_swap(
        &self,
        jti: &str,
        expected: &[u8],
        new: &[u8],
    ) -> Result<bool, StorageError> {
        let swapped = self
            .tree
            .compare_and_swap(jti.as_bytes(), Some(expected), Some(new))
            .map_err(StorageError::new)?
            .is_ok();
        self.tree.flush().map_err(StorageError::new)?;
        Ok(swapped)
    }

    fn prune(&self, keep: &mut dyn FnMut(&[u8]) -> bool) -> Result<u64, StorageError> {
        let mut removed = 0;
        for item in self.tree.iter() {
            let (jti, record) = item.map_err(StorageError::new)?;
            // Removed only if unchanged since read: a concurrent use is never lost.
            if !keep(&record)
                && self
                    .tree
                    .compare_and_swap(&jti, Some(&record), None::<&[u8]>)
                    .map_err(StorageError::new)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            self.tree.flush().map_err(StorageError::new)?;
        }
        Ok(removed)
    }
}

/// [`ApprovalStore`] on sled. Every write is flushed: an approval survives a crash.
#[derive(Clone)]
pub struct SledApprovalStore {
    requests: sled::Tree,
    by_call: sled::Tree,
}

impl ApprovalStore for SledApprovalStore {
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .requests
            .get(id.as_bytes())
            .map_err(StorageError::new)?
            .map(|v| v.to_vec()))
    }

    fn compare_and_swap(
        &self,
        id: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StorageError> {
        let swapped = self
            .requests
            .compare_and_swap(id.as_bytes(), expected, Some(new))
            .map_err(StorageError::new)?
            .is_ok();
        if swapped {
            self.requests.flush().map_err(StorageError::new)?;
        }
        Ok(swapped)
    }

    fn latest_for(&self, call: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .by_call
            .get(call.as_bytes())
            .map_err(StorageError::new)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn claim_latest(
        &self,
        call: &str,
        expected: Option<&str>,
        id: &str,
    ) -> Result<bool, StorageError> {
        let claimed = self
            .by_call
            .compare_and_swap(
                call.as_bytes(),
                expected.map(str::as_bytes),
                Some(id.as_bytes()),
            )
            .map_err(StorageError::new)?
            .is_ok();
        if claimed {
            self.by_call.flush().map_err(StorageError::new)?;
        }
        Ok(claimed)
    }

    fn list(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        self.requests
            .iter()
            .map(|item| {
                let (id, value) = item.map_err(StorageError::new)?;
                Ok((String::from_utf8_lossy(&id).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn remove(&self, id: &str, call: &str) -> Result<(), StorageError> {
        // The index first: a call looking up its latest request then finds none (and asks
        // anew) rather than an id whose record is gone.
        let _ = self
            .by_call
            .compare_and_swap(call.as_bytes(), Some(id.as_bytes()), None::<&[u8]>)
            .map_err(StorageError::new)?;
        self.requests
            .remove(id.as_bytes())
            .map_err(StorageError::new)?;
        self.by_call.flush().map_err(StorageError::new)?;
        self.requests.flush().map_err(StorageError::new)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_do_not_bleed_into_each_other_and_ranges_are_inclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = store.audit_log().unwrap();
        for seq in 1..=3 {
            log.append("tenant:a", seq, format!("a{seq}").as_bytes())
                .unwrap();
        }
        log.append("tenant:ab", 1, b"ab1").unwrap();
        assert_eq!(log.chains().unwrap(), vec!["tenant:a", "tenant:ab"]);
        assert_eq!(log.head("tenant:a").unwrap(), Some((3, b"a3".to_vec())));
        let got: Vec<Entry> = log.range("tenant:a", 2, 9).map(Result::unwrap).collect();
        assert_eq!(got, vec![(2, b"a2".to_vec()), (3, b"a3".to_vec())]);
        assert_eq!(log.range("tenant:a", 1, 0).count(), 0);
        assert_eq!(log.head("broker").unwrap(), None);
        log.put_checkpoint("tenant:a", 3, b"cp").unwrap();
        assert_eq!(
            log.latest_checkpoint("tenant:a").unwrap(),
            Some((3, b"cp".to_vec()))
        );
        assert_eq!(log.latest_checkpoint("tenant:ab").unwrap(), None);
    }

    #[test]
    fn entry_keys_built_on_the_stack_match_the_key_layout_and_long_names_still_work() {
        let mut buf = [0u8; INLINE_KEY];
        for (chain, seq) in [("broker", 1), ("tenant:acme", u64::MAX), ("", 7)] {
            let inline = inline_entry_key(chain, seq, &mut buf).map(<[u8]>::to_vec);
            assert_eq!(inline, Some(entry_key(chain, seq).unwrap()));
        }
        let long = format!("tenant:{}", "x".repeat(60));
        assert_eq!(inline_entry_key(&long, 1, &mut buf), None);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = store.audit_log().unwrap();
        log.append(&long, 1, b"l1").unwrap();
        log.append(&long, 2, b"l2").unwrap();
        assert_eq!(log.head(&long).unwrap(), Some((2, b"l2".to_vec())));
        assert_eq!(log.chains().unwrap(), vec![long]);
    }

    #[test]
    fn approvals_swap_only_from_the_expected_state_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = Store::open(dir.path()).unwrap().approvals().unwrap();
            assert!(a.compare_and_swap("apr-1", None, b"pending").unwrap());
            assert!(!a.compare_and_swap("apr-1", None, b"again").unwrap());
            assert!(
                a.compare_and_swap("apr-1", Some(b"pending"), b"approved")
                    .unwrap()
            );
            // Single use: only one of two racing users wins.
            assert!(
                a.compare_and_swap("apr-1", Some(b"approved"), b"used")
                    .unwrap()
            );
            assert!(
                !a.compare_and_swap("apr-1", Some(b"approved"), b"used")
                    .unwrap()
            );
            assert!(a.claim_latest("call", None, "apr-1").unwrap());
            assert!(!a.claim_latest("call", None, "apr-2").unwrap());
            assert!(a.claim_latest("call", Some("apr-1"), "apr-2").unwrap());
        }
        let a = Store::reopen(dir.path()).approvals().unwrap();
        assert_eq!(a.get("apr-1").unwrap(), Some(b"used".to_vec()));
        assert_eq!(a.latest_for("call").unwrap().as_deref(), Some("apr-2"));
        assert_eq!(a.list().unwrap(), [("apr-1".to_owned(), b"used".to_vec())]);
    }

    #[test]
    fn put_if_absent_keeps_the_first_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Store::open(dir.path()).unwrap().keys().unwrap();
        assert_eq!(keys.put_if_absent("k", b"one").unwrap(), b"one");
        assert_eq!(keys.put_if_absent("k", b"two").unwrap(), b"one");
        assert_eq!(keys.get("k").unwrap(), Some(b"one".to_vec()));
    }

    #[test]
    fn replace_swaps_only_the_expected_value_and_stores_both_entries() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Store::open(dir.path()).unwrap().keys().unwrap();
        keys.put_if_absent("k", b"one").unwrap();
        assert!(
            !keys
                .replace("k", b"stale", b"two", ("k/old/x", b"x"))
                .unwrap()
        );
        assert_eq!(keys.list("k/old/").unwrap(), vec![]);
        assert!(
            keys.replace("k", b"one", b"two", ("k/old/1", b"1"))
                .unwrap()
        );
        assert_eq!(keys.get("k").unwrap(), Some(b"two".to_vec()));
        assert_eq!(
            keys.list("k/old/").unwrap(),
            vec![("k/old/1".to_owned(), b"1".to_vec())]
        );
        keys.remove("k/old/1").unwrap();
        assert_eq!(keys.list("k/old/").unwrap(), vec![]);
    }
}

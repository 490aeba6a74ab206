//! Audit: one tamper-evident record per event, in per-tenant hash chains with signed checkpoints.
//!
//! - [`chain`]: the v2 record format (header + payload, hashed over the stored bytes) and the
//!   verification state machine; pure.
//! - [`checkpoint`]: signed checkpoints and the broker's audit key.
//! - [`writer`]: the single owner of every chain head, on its own thread, fed by [`Auditor`].
//! - [`export`]: streaming export and verification of a store or an export file.
//! - [`v1`]: the legacy v1 format, still verified (not migrated; see there).
//!
//! An event sent with [`Auditor::record_durable`] is flushed to disk before the call returns:
//! write and irreversible tool calls use it before their downstream is called, and are refused if
//! it fails. Storage goes through [`crate::store::AuditLog`] and [`crate::store::KeyStore`].

pub mod aggregate;
pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod v1;
pub mod writer;

use std::io::{BufRead, Write};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use chain::VerifyError;
pub use checkpoint::{AuditKey, PublicKey};
pub use export::{ChainRange, ExportError, Report};
pub use writer::Checkpoints;

use crate::store::Store;
use writer::{Job, Writer};

/// What happened. Serialized into the record as `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A tool call that reached its downstream (or was about to: see `outcome`).
    Call,
    /// Durable intent written before a write or irreversible call reaches its downstream.
    CallIntent,
    /// A call refused by scope or policy.
    Denial,
    /// Arguments or output that violated the pinned schema.
    ValidationFailure,
    /// A request without a valid token, or a token not allowed on the mission.
    AuthFailure,
    /// A downstream served tool definitions that differ from the lock file.
    Drift,
    /// Configuration loaded at startup.
    ConfigLoad,
    /// An embedded-issuer token was minted.
    TokenIssued,
    /// The embedded issuer's signing key was rotated (`mandate keys rotate`).
    KeyRotated,
    /// Resource or prompt access through a mission.
    Access,
    /// A step of a human approval: `outcome` is `requested`, `approved`, `denied`, `used` or
    /// `expired`; `approval` names the request.
    Approval,
    /// An agent was onboarded, suspended, resumed or offboarded (by a person, by configuration
    /// or by the zombie sweep).
    AgentLifecycle,
}

/// The agent's stated reasoning for a call (`_meta["io.mandate/reasoning"]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reasoning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// One auditable event. Every field but `kind` is optional so each event carries what it knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Mandate's id of one tool call: links a write's `call_intent` record to its completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// W3C trace id from the request's `_meta.traceparent`, when the caller sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mission: Option<String>,
    /// The tool as the mission exposes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `<manifest id>/<downstream tool name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// SHA-256 of the canonical JSON arguments (raw values are not stored until PII redaction lands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_digest: Option<String>,
    /// Top-level argument names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argument_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Reasoning>,
    /// `allow` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Which rule decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `ok`, `tool_error`, `timeout`, `cancelled`, `downstream_error`, `invalid_output`, `denied`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Human-readable reason or detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// SHA-256 of the canonical JSON result returned to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_digest: Option<String>,
    /// The approval request a call waited for or used, or an approval record's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// The downstream token the call carried (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeRecord>,
    /// The issuer that authenticated the caller (the token's `iss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// A handoff's earlier actors, most recent first, as verified against the handoff ledger.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<crate::handoff::Actor>,
    /// The handoff token minted for this call's downstream (its id, never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffIssued>,
}

/// What an audit record says about a call's token exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    /// The exchange profile.
    pub profile: String,
    /// The token's audience (the downstream).
    pub audience: String,
    /// The token's `jti`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
    /// Whether the token came from the cache.
    pub cached: bool,
}

/// A handoff token minted for a call, as the audit record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffIssued {
    /// The token's `jti` (its handoff ledger key).
    pub jti: String,
    /// The mission it opens.
    pub to: String,
    /// Unix seconds.
    pub expires: u64,
}

impl Event {
    pub fn new(kind: EventKind) -> Self {
        Self {
            kind,
            tenant: None,
            request_id: None,
            call_id: None,
            trace_id: None,
            subject: None,
            agent: None,
            token_id: None,
            mission: None,
            tool: None,
            downstream_tool: None,
            effect: None,
            arguments_digest: None,
            argument_keys: Vec::new(),
            reasoning: None,
            decision: None,
            policy: None,
            outcome: None,
            detail: None,
            latency_us: None,
            output_digest: None,
            approval: None,
            exchange: None,
            issuer: None,
            actors: Vec::new(),
            handoff: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Why an audit write failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store is unavailable: {0}")]
    Store(String),
    #[error("audit writer has stopped")]
    Stopped,
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Job>,
    /// The writer thread, unparked when someone waits for it.
    thread: std::thread::Thread,
}

impl Auditor {
    /// Starts the writer on `store`, continuing the chains found there, with the default
    /// checkpoint policy. The returned handle completes once the writer has signed, flushed and
    /// stopped (after [`Auditor::stop`], or when every handle is dropped).
    pub fn start(store: &Store) -> Result<(Self, tokio::task::JoinHandle<()>), AuditError> {
        Self::start_with(store, Checkpoints::default())
    }

    /// [`Auditor::start`] with a given checkpoint policy.
    pub fn start_with(
        store: &Store,
        policy: Checkpoints,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), AuditError> {
        let store_error = |e: crate::store::StorageError| AuditError::Store(e.to_string());
        let log = store.audit_log().map_err(store_error)?;
        let key =
            AuditKey::load_or_create(&store.keys().map_err(store_error)?).map_err(store_error)?;
        let writer = Writer::open(Box::new(log), key, policy)?;
        let (tx, rx) = mpsc::channel(writer::QUEUE);
        let (done, finished) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mandate-audit".into())
            .spawn(move || {
                writer.run(rx);
                let _ = done.send(());
            })
            .map_err(|e| AuditError::Store(format!("cannot start the audit writer: {e}")))?
            .thread()
            .clone();
        // The ticker holds only a weak sender, so dropping every handle still stops the writer.
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + policy.interval;
            let mut ticks = tokio::time::interval_at(start, policy.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(tx) = weak.upgrade() else { break };
                if tx.send(Job::Tick).await.is_err() {
                    break;
                }
            }
        });
        let handle = tokio::spawn(async move {
            let _ = finished.await;
        });
        Ok((Self { tx, thread }, handle))
    }

    /// Appends an event; returns once it is queued (not yet durable).
    pub async fn record(&self, event: Event) {
        if self
            .tx
            .send(Job::Append {
                event: Box::new(event),
                durable: false,
                ack: None,
            })
            .await
            .is_err()
        {
            tracing::error!("audit writer has stopped; event lost");
        }
        self.wake_if_filling();
    }

    /// Appends an event without waiting (for drop guards and sync contexts).
    pub fn record_now(&self, event: Event) {
        let sent = self.tx.try_send(Job::Append {
            event: Box::new(event),
            durable: false,
            ack: None,
        });
        self.wake_if_filling();
        if let Err(e) = sent {
            // The queue is full or closed: fall back to a task so nothing is lost while the
            // writer lives.
            let tx = self.tx.clone();
            let job = match e {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            tokio::spawn(async move {
                if tx.send(job).await.is_err() {
                    tracing::error!("audit writer has stopped; event lost");
                }
            });
        }
    }

    /// Appends an event and returns its sequence number in its chain once it is flushed to disk.
    pub async fn record_durable(&self, event: Event) -> Result<u64, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.send(Job::Append {
            event: Box::new(event),
            durable: true,
            ack: Some(ack),
        })
        .await?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Signs a checkpoint of every chain with records since its last one (after flushing them);
    /// an export taken afterwards ends at signed records.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.send(Job::Checkpoint(ack)).await?;
        rx.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }

    /// Signs, flushes everything queued so far and stops the writer; later events are refused.
    pub async fn stop(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.send(Job::Stop(ack)).await?;
        rx.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }

    /// Waits until every event queued so far is flushed.
    pub async fn sync(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.send(Job::Sync(ack)).await?;
        rx.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }

    /// Wakes the writer when the queue is more than half full, so a burst never waits out the
    /// batch window (`writer::BATCH_WINDOW`) with senders blocked on a full queue.
    fn wake_if_filling(&self) {
        if self.tx.capacity() < writer::QUEUE_HIGH {
            self.thread.unpark();
        }
    }

    /// Sends a job someone waits for, and wakes the writer at once (see `writer::BATCH_WINDOW`).
    async fn send(&self, job: Job) -> Result<(), AuditError> {
        let sent = self.tx.send(job).await.map_err(|_| AuditError::Stopped);
        self.thread.unpark();
        sent
    }
}

/// Current time as RFC 3339 with microseconds, UTC.
pub fn now_rfc3339() -> String {
    let mut time = String::new();
    write_now_rfc3339(&mut time);
    time
}

/// [`now_rfc3339`] into a buffer the caller reuses (the audit writer, once per record).
pub fn write_now_rfc3339(out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    // Writing to a `String` cannot fail.
    let _ = write!(
        out,
        "{}",
        humantime::format_rfc3339_micros(SystemTime::now())
    );
}

/// Filter for `mandate audit export`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportFilter {
    /// Only this tenant's chain.
    pub tenant: Option<String>,
    /// RFC 3339; each chain from its first record at or after this time.
    pub since: Option<String>,
}

/// Writes an export of the store to `out` (blocking: call it from a blocking thread). Records
/// not yet covered by a checkpoint are left out: sign first ([`Auditor::checkpoint`]).
pub fn export(
    store: &Store,
    filter: &ExportFilter,
    out: &mut dyn Write,
) -> Result<Vec<ChainRange>, ExportError> {
    let log = store.audit_log()?;
    let key = AuditKey::load_or_create(&store.keys()?)?;
    export::export(&log, &key, filter, out)
}

/// Streams an export in chunks of about 64 KiB, produced on a blocking thread. The filter is
/// checked before anything is produced; a later failure ends the stream with an error.
pub fn export_stream(
    store: Store,
    filter: ExportFilter,
) -> Result<mpsc::Receiver<Result<Vec<u8>, std::io::Error>>, ExportError> {
    export::parse_since(&filter)?;
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = export(&store, &filter, &mut out).and_then(|_| Ok(out.flush()?));
        if let Err(e) = result {
            tracing::error!(error = %e, "audit export failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Ok(rx)
}

const CHUNK: usize = 64 * 1024;

/// A writer that hands full chunks to an async reader.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the export's reader went away",
            )
        })
    }
}

/// Verifies every chain in the store (blocking).
pub fn verify_store(store: &Store) -> Result<Report, VerifyError> {
    let unreadable = |e: crate::store::StorageError| {
        VerifyError::Export(format!("audit store is unreadable: {e}"))
    };
    let log = store.audit_log().map_err(unreadable)?;
    let key = AuditKey::load(&store.keys().map_err(unreadable)?).map_err(unreadable)?;
    export::verify_log(&log, key.as_ref().map(AuditKey::public))
}

/// Verifies an export file (blocking); `pinned` is the published public key, if the auditor has
/// it (otherwise the key in the file's first line is used and the report names it).
pub fn verify_file(input: impl BufRead, pinned: Option<&PublicKey>) -> Result<Report, VerifyError> {
    export::verify_file(input, pinned)
}

/// SHA-256 hex of bytes.
pub fn digest_bytes(bytes: &[u8]) -> String {
    let mut hex = [0u8; 64];
    write_digest(bytes, &mut hex).to_owned()
}

/// SHA-256 hex of `bytes`, written into `out` (no allocation; a few times per call, so not
/// through `hex::encode`, which builds its string a character at a time).
pub(crate) fn write_digest<'a>(bytes: &[u8], out: &'a mut [u8; 64]) -> &'a str {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    // 32 bytes always fill exactly 64 hex digits, and hex digits are ASCII: neither can fail.
    let _ = hex::encode_to_slice(digest, out);
    std::str::from_utf8(out).unwrap_or_default()
}

/// SHA-256 hex of the canonical (RFC 8785) JSON of a value.
pub fn digest_json(value: &impl Serialize) -> String {
    let bytes = serde_jcs::to_vec(value).unwrap_or_default();
    digest_bytes(&bytes)
}

#[cfg(test)]
mod tests;

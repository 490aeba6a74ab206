//! Audit: one tamper-evident record per event, hash-chained, stored in sled.
//!
//! Each [`Record`] carries the SHA-256 of the previous record (`prev`) and its own `hash`, the
//! SHA-256 over the RFC 8785 canonical JSON of the record without `hash`. One writer task owns the
//! chain head ([`Auditor`]); everything else sends it [`Event`]s over a channel. An event sent with
//! [`Auditor::record_durable`] is flushed to disk before the call returns: write and irreversible
//! tool calls use it before their downstream is called, and are refused if it fails.

pub mod chain;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use chain::{Record, VerifyError, verify_records};

use crate::store::{AUDIT_TREE, Store};

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
    /// Resource or prompt access through a mission.
    Access,
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

type Ack = oneshot::Sender<Result<u64, AuditError>>;

enum Job {
    /// Append an event; `durable` flushes before acking.
    Append {
        event: Box<Event>,
        durable: bool,
        ack: Option<Ack>,
    },
    /// Flush everything queued so far, then ack.
    Sync(Ack),
    /// Flush everything queued so far, ack, and stop.
    Stop(Ack),
}

/// Handle to the audit writer task. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Job>,
}

impl Auditor {
    /// Starts the writer task on `store`, continuing the chain found there.
    pub fn start(store: &Store) -> Result<(Self, tokio::task::JoinHandle<()>), AuditError> {
        let tree = store
            .tree(AUDIT_TREE)
            .map_err(|e| AuditError::Store(e.to_string()))?;
        let head = chain::head(&tree).map_err(AuditError::Store)?;
        let (tx, rx) = mpsc::channel(4096);
        let handle = tokio::spawn(writer(tree, head, rx));
        Ok((Self { tx }, handle))
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
    }

    /// Appends an event without waiting (for drop guards and sync contexts).
    pub fn record_now(&self, event: Event) {
        if let Err(e) = self.tx.try_send(Job::Append {
            event: Box::new(event),
            durable: false,
            ack: None,
        }) {
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

    /// Appends an event and returns its sequence number once it is flushed to disk.
    pub async fn record_durable(&self, event: Event) -> Result<u64, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Job::Append {
                event: Box::new(event),
                durable: true,
                ack: Some(ack),
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Flushes everything queued so far and stops the writer; later events are refused.
    pub async fn stop(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Job::Stop(ack))
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }

    /// Waits until every event queued so far is flushed.
    pub async fn sync(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Job::Sync(ack))
            .await
            .map_err(|_| AuditError::Stopped)?;
        rx.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
    }
}

async fn writer(tree: sled::Tree, mut head: chain::Head, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(64);
    let mut stopping = false;
    while !stopping && rx.recv_many(&mut batch, 256).await > 0 {
        let mut needs_flush = false;
        let mut acks = Vec::new();
        for job in batch.drain(..) {
            let (event, durable, ack) = match job {
                Job::Sync(ack) => {
                    needs_flush = true;
                    acks.push((Some(ack), Ok(head.seq)));
                    continue;
                }
                Job::Stop(ack) => {
                    needs_flush = true;
                    stopping = true;
                    acks.push((Some(ack), Ok(head.seq)));
                    continue;
                }
                Job::Append {
                    event,
                    durable,
                    ack,
                } => (event, durable, ack),
            };
            needs_flush |= durable;
            match append(&tree, &mut head, *event) {
                Ok(seq) => acks.push((ack, Ok(seq))),
                Err(e) => {
                    tracing::error!(error = %e, "audit append failed");
                    acks.push((ack, Err(e)));
                }
            }
        }
        if needs_flush && let Err(e) = tree.flush_async().await {
            tracing::error!(error = %e, "audit flush failed");
            for (ack, _) in acks.drain(..) {
                if let Some(ack) = ack {
                    let _ = ack.send(Err(AuditError::Store(e.to_string())));
                }
            }
        }
        for (ack, result) in acks {
            if let Some(ack) = ack {
                let _ = ack.send(result);
            }
        }
    }
    let _ = tree.flush_async().await;
}

fn append(tree: &sled::Tree, head: &mut chain::Head, event: Event) -> Result<u64, AuditError> {
    let record = Record::next(head, now_rfc3339(), event);
    let bytes = serde_json::to_vec(&record).map_err(|e| AuditError::Store(e.to_string()))?;
    tree.insert(record.seq.to_be_bytes(), bytes)
        .map_err(|e| AuditError::Store(e.to_string()))?;
    head.advance(&record);
    Ok(record.seq)
}

/// Current time as RFC 3339 with microseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Reads every record from the store in order.
pub fn read_all(store: &Store) -> Result<Vec<Result<Record, String>>, String> {
    let tree = store.tree(AUDIT_TREE).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in tree.iter() {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let seq = key
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or_default();
        out.push(
            serde_json::from_slice::<Record>(&value)
                .map_err(|e| format!("record {seq} is not valid JSON: {e}")),
        );
    }
    Ok(out)
}

/// Filter for `mandate audit export`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportFilter {
    pub tenant: Option<String>,
    /// RFC 3339; records at or after this time.
    pub since: Option<String>,
}

impl ExportFilter {
    pub fn matches(&self, record: &Record) -> bool {
        if let Some(t) = &self.tenant
            && record.event.tenant.as_deref() != Some(t.as_str())
        {
            return false;
        }
        if let Some(since) = &self.since {
            let (Ok(since), Ok(at)) = (
                humantime::parse_rfc3339_weak(since),
                humantime::parse_rfc3339_weak(&record.time),
            ) else {
                return false;
            };
            if at < since {
                return false;
            }
        }
        true
    }
}

/// Exports matching records as JSON lines.
pub fn export(store: &Store, filter: &ExportFilter) -> Result<String, String> {
    let mut out = String::new();
    for record in read_all(store)? {
        let record = record?;
        if filter.matches(&record) {
            out.push_str(&serde_json::to_string(&record).map_err(|e| e.to_string())?);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Verifies the chain in the store; returns the number of records.
pub fn verify_store(store: &Store) -> Result<u64, VerifyError> {
    let records = read_all(store).map_err(|e| VerifyError::Unreadable { line: 0, reason: e })?;
    verify_records(records.into_iter())
}

/// Verifies a JSON-lines export (a full, unfiltered one).
pub fn verify_jsonl(text: &str) -> Result<u64, VerifyError> {
    verify_records(
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str::<Record>(line)
                    .map_err(|e| format!("line {} is not a valid record: {e}", i + 1))
            }),
    )
}

/// SHA-256 hex of bytes.
pub fn digest_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// SHA-256 hex of the canonical (RFC 8785) JSON of a value.
pub fn digest_json(value: &impl Serialize) -> String {
    use sha2::Digest;
    let bytes = serde_jcs::to_vec(value).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn durable_records_survive_reopen_and_a_stopped_writer_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (audit, writer) = Auditor::start(&store).unwrap();
        let seq = audit
            .record_durable(Event::new(EventKind::ConfigLoad))
            .await
            .unwrap();
        assert_eq!(seq, 1);
        audit.record(Event::new(EventKind::Call)).await;
        audit.stop().await.unwrap();
        writer.await.unwrap();
        // The writer is gone: a durable write must fail, so the caller refuses the call.
        assert!(
            audit
                .record_durable(Event::new(EventKind::CallIntent))
                .await
                .is_err()
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(verify_store(&store), Ok(2));
        // A new writer continues the chain.
        let (audit, writer) = Auditor::start(&store).unwrap();
        assert_eq!(
            audit
                .record_durable(Event::new(EventKind::Call))
                .await
                .unwrap(),
            3
        );
        audit.stop().await.unwrap();
        writer.await.unwrap();
        assert_eq!(verify_store(&store), Ok(3));
    }
}

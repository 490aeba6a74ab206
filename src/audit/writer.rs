//! The writer: the single owner of every chain head, on its own thread.
//!
//! Everything else sends it [`Job`]s over a bounded channel. When it wakes it drains everything
//! queued, up to 256 jobs at a time: appends each event to its chain (serialise once into a
//! reused buffer, hash, store), flushes when a job in the batch needs durability, and then
//! answers. Then, unless someone was waiting, it lets ordinary records accumulate for
//! [`BATCH_WINDOW`] instead of waking once per record.
//!
//! It signs a checkpoint of a chain when the chain has grown by [`Checkpoints::every`] records
//! (checked after each batch, so at most one batch later), on every tick
//! ([`Checkpoints::interval`]) for chains with records since their last checkpoint, on request
//! ([`super::Auditor::checkpoint`], used before an export) and when it stops. Records are flushed before the checkpoint that covers them is
//! written, so a crash never leaves a checkpoint pointing past the durable records.
//!
//! Why a thread and not a task: storage calls block (see [`crate::store`]), and a long-running
//! `spawn_blocking` task would stop tokio's paused test clock from advancing.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::chain::{self, LEGACY_CHAIN};
use super::checkpoint::AuditKey;
use super::{AuditError, Event, now_rfc3339, v1, write_now_rfc3339};
use crate::store::{AuditLog, StorageError};

/// When the writer signs checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    /// After this many records in a chain.
    pub every: u64,
    /// And this often for chains with records since their last checkpoint.
    pub interval: Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            every: 1000,
            interval: Duration::from_secs(5),
        }
    }
}

pub(super) type Ack = oneshot::Sender<Result<u64, AuditError>>;

pub(super) enum Job {
    /// Append an event; `durable` flushes before acking.
    Append {
        event: Box<Event>,
        durable: bool,
        ack: Option<Ack>,
    },
    /// Flush everything queued so far, then ack.
    Sync(Ack),
    /// Flush, sign a checkpoint of every chain with unsigned records, then ack.
    Checkpoint(Ack),
    /// Time for the periodic checkpoints.
    Tick,
    /// Like `Checkpoint`, then stop.
    Stop(Ack),
}

/// How long the writer lets ordinary records accumulate after a batch. Ordinary records are
/// not durable before the store's next periodic flush anyway (every 200 ms), so waiting this
/// long loses nothing a crash would not; senders that wait, and a queue filling up
/// ([`QUEUE_HIGH`]), wake the writer at once.
pub(super) const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Jobs the writer handles between two looks at its queue.
const MAX_BATCH: usize = 256;
/// The queue's capacity.
pub(super) const QUEUE: usize = 4096;
/// A sender that leaves fewer free slots than this in the queue wakes the writer.
pub(super) const QUEUE_HIGH: usize = QUEUE / 2;

impl Job {
    /// Whether someone waits for this job (it must not sit in the batch window).
    fn is_urgent(&self) -> bool {
        match self {
            Job::Append { durable, ack, .. } => *durable || ack.is_some(),
            Job::Sync(_) | Job::Checkpoint(_) | Job::Stop(_) => true,
            Job::Tick => false,
        }
    }
}

struct Head {
    seq: u64,
    /// The chain's last hash (hex; overwritten in place).
    hash: String,
    /// Sequence number of the chain's latest checkpoint (0: none).
    sealed: u64,
}

pub(super) struct Writer {
    log: Box<dyn AuditLog>,
    key: AuditKey,
    heads: HashMap<String, Head>,
    policy: Checkpoints,
    /// Buffers reused by every append (chain id, time, payload, sealed record), so a record
    /// costs no allocation once they have grown.
    chain: String,
    time: String,
    payload: Vec<u8>,
    sealer: chain::Sealer,
}

fn store_error(e: impl std::fmt::Display) -> AuditError {
    AuditError::Store(e.to_string())
}

impl Writer {
    /// Reads every chain's head and latest checkpoint.
    pub(super) fn open(
        log: Box<dyn AuditLog>,
        key: AuditKey,
        policy: Checkpoints,
    ) -> Result<Self, AuditError> {
        let mut heads = HashMap::new();
        for chain in log.chains().map_err(store_error)? {
            let Some((seq, line)) = log.head(&chain).map_err(store_error)? else {
                continue;
            };
            let hash = chain::stored_hash(&line).map_err(|e| {
                AuditError::Store(format!(
                    "the last record of audit chain `{chain}` is unreadable ({e}): run `mandate audit verify`"
                ))
            })?;
            let sealed = latest_sealed(log.as_ref(), &chain)?;
            heads.insert(chain, Head { seq, hash, sealed });
        }
        // The frozen v1 chain gets one checkpoint (below, at the first seal), so truncating it
        // later is detected too.
        if let Some((seq, line)) = log.legacy_head().map_err(store_error)? {
            match v1::check_line(&line) {
                Ok(Some(record)) => {
                    let sealed = latest_sealed(log.as_ref(), LEGACY_CHAIN)?;
                    heads.insert(
                        LEGACY_CHAIN.to_owned(),
                        Head {
                            seq,
                            hash: record.hash,
                            sealed,
                        },
                    );
                }
                Ok(None) | Err(_) => tracing::warn!(
                    seq,
                    "the last legacy v1 audit record does not verify; not signing the legacy chain: run `mandate audit verify`"
                ),
            }
        }
        Ok(Self {
            log,
            key,
            heads,
            policy,
            chain: String::new(),
            time: String::new(),
            payload: Vec::with_capacity(1024),
            sealer: chain::Sealer::default(),
        })
    }

    /// Runs until `Stop` or until every sender is gone; signs and flushes before returning.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(job) = rx.blocking_recv() {
            batch.push(job);
            // Drain everything queued, a batch at a time, before waiting again: a full batch
            // means more is waiting, and parking then would only let the queue fill up.
            let mut urgent = false;
            loop {
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let full = batch.len() == MAX_BATCH;
                urgent |= batch.iter().any(Job::is_urgent);
                if self.process(&mut batch) {
                    return;
                }
                if !full {
                    break;
                }
            }
            if !urgent {
                // Let ordinary records accumulate for a moment instead of waking this thread
                // once per record (a futex wake and a context switch each, on every tool call).
                // Senders that wait for the writer (durable, sync, checkpoint, stop) unpark it,
                // and so does a sender that finds the queue more than half full.
                std::thread::park_timeout(BATCH_WINDOW);
            }
        }
        if let Err(e) = self.checkpoint(|_| true).and_then(|()| self.flush()) {
            tracing::error!(error = %e, "audit log could not be signed and flushed at close");
        }
    }

    /// Handles one batch; true when the writer must stop.
    fn process(&mut self, batch: &mut Vec<Job>) -> bool {
        let (mut flush, mut sign_all, mut stop) = (false, false, false);
        let mut acks: Vec<(Option<Ack>, Result<u64, AuditError>)> = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Append {
                    event,
                    durable,
                    ack,
                } => {
                    flush |= durable;
                    let result = self.append(&event);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "audit append failed");
                    }
                    // Nobody waits for an ordinary record: no bookkeeping (and no allocation).
                    if ack.is_some() {
                        acks.push((ack, result));
                    }
                }
                Job::Sync(ack) => {
                    flush = true;
                    acks.push((Some(ack), Ok(0)));
                }
                Job::Checkpoint(ack) => {
                    sign_all = true;
                    acks.push((Some(ack), Ok(0)));
                }
                Job::Tick => sign_all = true,
                Job::Stop(ack) => {
                    (sign_all, stop) = (true, true);
                    acks.push((Some(ack), Ok(0)));
                }
            }
        }
        let every = self.policy.every;
        let signed = if sign_all {
            self.checkpoint(|_| true)
        } else {
            self.checkpoint(|head| head.seq - head.sealed >= every)
        };
        let result = signed.and_then(|()| {
            if flush || sign_all || stop {
                self.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "audit flush or checkpoint failed");
            for (_, r) in &mut acks {
                // Fail closed: nothing in this batch is known to be durable.
                *r = Err(AuditError::Store(e.to_string()));
            }
        }
        for (ack, r) in acks {
            if let Some(ack) = ack {
                let _ = ack.send(r);
            }
        }
        stop
    }

    /// Appends one event to its chain: serialise once, hash those bytes, store those bytes.
    fn append(&mut self, event: &Event) -> Result<u64, AuditError> {
        chain::write_chain_id(event.tenant.as_deref(), &mut self.chain);
        self.payload.clear();
        serde_json::to_writer(&mut self.payload, event).map_err(store_error)?;
        write_now_rfc3339(&mut self.time);
        let head = self.heads.get(self.chain.as_str());
        let (seq, prev) = match head {
            Some(head) => (head.seq + 1, head.hash.as_str()),
            None => (1, chain::GENESIS),
        };
        let meta = chain::RecordMeta {
            chain: &self.chain,
            seq,
            time: &self.time,
            tenant: event.tenant.as_deref(),
            kind: event.kind,
            prev,
        };
        self.sealer
            .seal(&meta, &self.payload)
            .map_err(store_error)?;
        self.log
            .append(&self.chain, seq, self.sealer.line())
            .map_err(store_error)?;
        let hash = self.sealer.hash();
        match self.heads.get_mut(self.chain.as_str()) {
            Some(head) => {
                head.seq = seq;
                head.hash.clear();
                head.hash.push_str(hash);
            }
            None => {
                self.heads.insert(
                    self.chain.clone(),
                    Head {
                        seq,
                        hash: hash.to_owned(),
                        sealed: 0,
                    },
                );
            }
        }
        Ok(seq)
    }

    /// Signs a checkpoint of every chain with unsigned records that `due` selects, after
    /// flushing the records it covers.
    fn checkpoint(&mut self, due: impl Fn(&Head) -> bool) -> Result<(), StorageError> {
        let chains: Vec<(String, u64, String)> = self
            .heads
            .iter()
            .filter(|(_, h)| h.seq > h.sealed && due(h))
            .map(|(c, h)| (c.clone(), h.seq, h.hash.clone()))
            .collect();
        if chains.is_empty() {
            return Ok(());
        }
        self.log.flush()?;
        let time = now_rfc3339();
        for (chain, seq, hash) in chains {
            let line = self
                .key
                .checkpoint(&chain, seq, &hash, &time)
                .map_err(StorageError::new)?;
            self.log.put_checkpoint(&chain, seq, &line)?;
            if let Some(head) = self.heads.get_mut(&chain) {
                head.sealed = seq;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.log.flush()
    }
}

fn latest_sealed(log: &dyn AuditLog, chain: &str) -> Result<u64, AuditError> {
    Ok(log
        .latest_checkpoint(chain)
        .map_err(store_error)?
        .map(|(seq, _)| seq)
        .unwrap_or(0))
}

//! Export and verification: streams records out of an [`AuditLog`], and checks a store or an
//! export file line by line (memory stays flat whatever the log's size). Blocking: run it on a
//! blocking thread.
//!
//! An export is JSON lines:
//!
//! 1. `{"audit_export":{"v":2,"time":…,"tenant":…,"since":…,"public_key":<JWK>}}`
//! 2. for each chain: its records (the stored lines, byte for byte), then its latest checkpoint.
//!    A chain is exported up to that checkpoint, so every exported chain ends at a signed record
//!    (the admin API and the CLI sign a checkpoint of the current heads first). Without `since`
//!    a chain starts at record 1 (anchored by [`GENESIS`](super::chain::GENESIS)); with `since`
//!    it starts at its first record at or after that time, anchored by the checkpoint. The
//!    legacy v1 chain is included (as its original lines) when nothing is filtered.
//! 3. `{"audit_export_end":{"v":2,…,"chains":[{"chain":…,"first":…,"last":…}],"records":n},"sig":…}`,
//!    signed like a checkpoint: it fixes which chains and ranges the export holds, so dropping a
//!    whole chain, the first records of a chain, or the end of the file is detected.
//!
//! Verifying a file needs only the file and the public key (from its first line, or pinned with
//! `--public-key`; the report names the key's `kid` so an auditor can compare it with the
//! published one).

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::chain::{
    self, ChainState, Checked, LEGACY_CHAIN, LineFault, VERSION, VerifyError, chain_id,
};
use super::checkpoint::{self, AuditKey, CheckpointFault, PublicKey};
use super::{ExportFilter, now_rfc3339, v1};
use crate::store::{AuditLog, StorageError};

/// Tag of the export's first line.
const HEADER_TAG: &str = "audit_export";
/// Tag of the export's signed last line.
const TRAILER_TAG: &str = "audit_export_end";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportHeader {
    v: u32,
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    public_key: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderLine {
    audit_export: ExportHeader,
}

/// One chain's records in an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainRange {
    pub chain: String,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    v: u32,
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    chains: Vec<ChainRange>,
    records: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedTrailer<'a> {
    #[serde(borrow)]
    audit_export_end: &'a RawValue,
    sig: String,
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Invalid(String),
    #[error("audit store is unavailable: {0}")]
    Store(#[from] StorageError),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
}

/// The parsed `since` of a filter.
pub fn parse_since(filter: &ExportFilter) -> Result<Option<std::time::SystemTime>, ExportError> {
    filter
        .since
        .as_deref()
        .map(|s| {
            humantime::parse_rfc3339_weak(s).map_err(|e| {
                ExportError::Invalid(format!(
                    "`--since {s}` is not an RFC 3339 time ({e}): use e.g. 2026-01-31T00:00:00Z"
                ))
            })
        })
        .transpose()
}

/// Writes an export of `log` to `out`; returns the chains it holds.
pub fn export(
    log: &dyn AuditLog,
    key: &AuditKey,
    filter: &ExportFilter,
    out: &mut dyn Write,
) -> Result<Vec<ChainRange>, ExportError> {
    let since = parse_since(filter)?;
    // The trailer repeats the header's time and filter, so the unsigned first line is bound too.
    let time = now_rfc3339();
    let header = serde_json::to_vec(&serde_json::json!({
        HEADER_TAG: ExportHeader {
            v: VERSION,
            time: time.clone(),
            tenant: filter.tenant.clone(),
            since: filter.since.clone(),
            public_key: key.public().jwk(),
        }
    }))
    .map_err(|e| ExportError::Invalid(e.to_string()))?;
    out.write_all(&header)?;
    out.write_all(b"\n")?;
    let mut ranges = Vec::new();
    if filter.tenant.is_none() && since.is_none() {
        let checkpoint = log.latest_checkpoint(LEGACY_CHAIN)?;
        let to = checkpoint.as_ref().map_or(u64::MAX, |(seq, _)| *seq);
        let records = log
            .legacy()
            .take_while(|e| e.as_ref().map_or(true, |(s, _)| *s <= to));
        if let Some(range) = copy_chain(LEGACY_CHAIN, records, None, checkpoint, out)? {
            ranges.push(range);
        }
    }
    let chains = match &filter.tenant {
        Some(tenant) => vec![chain_id(Some(tenant))],
        None => log.chains()?,
    };
    for chain in chains {
        let checkpoint = log.latest_checkpoint(&chain)?;
        let to = checkpoint.as_ref().map_or(u64::MAX, |(seq, _)| *seq);
        if let Some(range) = copy_chain(&chain, log.range(&chain, 1, to), since, checkpoint, out)? {
            ranges.push(range);
        }
    }
    let trailer = serde_json::to_vec(&Trailer {
        v: VERSION,
        time,
        tenant: filter.tenant.clone(),
        since: filter.since.clone(),
        records: ranges.iter().map(|r| r.last - r.first + 1).sum(),
        chains: ranges.clone(),
    })
    .map_err(|e| ExportError::Invalid(e.to_string()))?;
    out.write_all(&key.signed_line(TRAILER_TAG, &trailer))?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(ranges)
}

/// Copies one chain's records (from the first at or after `since`) and then its checkpoint.
fn copy_chain(
    chain: &str,
    records: impl Iterator<Item = Result<(u64, Vec<u8>), StorageError>>,
    since: Option<std::time::SystemTime>,
    checkpoint: Option<(u64, Vec<u8>)>,
    out: &mut dyn Write,
) -> Result<Option<ChainRange>, ExportError> {
    let mut range: Option<ChainRange> = None;
    for entry in records {
        let (seq, line) = entry?;
        if range.is_none()
            && let Some(since) = since
        {
            // Only the records before the first match are parsed; the rest are copied as is.
            let time = chain::header_time(&line).map_err(|e| {
                StorageError(format!("chain `{chain}`: record {seq} is unreadable: {e}"))
            })?;
            if humantime::parse_rfc3339_weak(&time).is_ok_and(|at| at < since) {
                continue;
            }
        }
        out.write_all(&line)?;
        out.write_all(b"\n")?;
        match &mut range {
            None => {
                range = Some(ChainRange {
                    chain: chain.to_owned(),
                    first: seq,
                    last: seq,
                })
            }
            Some(r) => r.last = seq,
        }
    }
    if range.is_some()
        && let Some((_, line)) = checkpoint
    {
        out.write_all(&line)?;
        out.write_all(b"\n")?;
    }
    Ok(range)
}

/// One chain's verification result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainReport {
    pub chain: String,
    pub first: u64,
    pub last: u64,
    pub records: u64,
    /// Records whose payload was erased (the chain still covers their digest).
    pub erased: u64,
    /// The last record covered by a verified checkpoint.
    pub signed: Option<u64>,
}

/// What verification found: every chain intact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub chains: Vec<ChainReport>,
    /// Thumbprint of the key the checkpoints were verified with.
    pub kid: Option<String>,
    /// A v1 export (no signatures; a removed tail cannot be detected).
    pub legacy_file: bool,
}

impl Report {
    pub fn records(&self) -> u64 {
        self.chains.iter().map(|c| c.records).sum()
    }

    fn new(chains: Vec<ChainState>, kid: Option<String>, legacy_file: bool) -> Self {
        let chains = chains
            .into_iter()
            .filter(|c| c.records > 0)
            .map(|c| ChainReport {
                first: c.first.unwrap_or(0),
                last: c.last,
                records: c.records,
                erased: c.erased,
                signed: c.sealed,
                chain: c.chain,
            })
            .collect();
        Self {
            chains,
            kid,
            legacy_file,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {} record(s) in {} chain(s), chains intact",
            self.records(),
            self.chains.len()
        )?;
        match (&self.kid, self.legacy_file) {
            (_, true) => write!(
                f,
                "; a v1 export: unsigned, so a removed tail cannot be detected"
            )?,
            (Some(kid), false) => write!(f, "; checkpoints signed by key `{kid}`")?,
            (None, false) => {}
        }
        for c in &self.chains {
            write!(f, "\n  {}: records {} to {}", c.chain, c.first, c.last)?;
            match c.signed {
                Some(s) if s == c.last => write!(f, ", signed")?,
                Some(s) => write!(
                    f,
                    ", signed up to {s} (records {} to {} not yet: the broker signs them within seconds, or at its next start)",
                    s + 1,
                    c.last
                )?,
                None if self.legacy_file => {}
                None => write!(f, ", not yet signed")?,
            }
            if c.erased > 0 {
                write!(f, ", {} payload(s) erased", c.erased)?;
            }
        }
        Ok(())
    }
}

fn line_fault(line: u64, fault: LineFault) -> VerifyError {
    match fault {
        LineFault::Unreadable(reason) => VerifyError::Unreadable { line, reason },
        LineFault::Altered { chain, seq } => VerifyError::Altered { chain, seq },
        LineFault::PayloadAltered { chain, seq } => VerifyError::PayloadAltered { chain, seq },
    }
}

fn checkpoint_fault(line: u64, fault: CheckpointFault) -> VerifyError {
    match fault {
        CheckpointFault::Unreadable(reason) => VerifyError::Unreadable { line, reason },
        CheckpointFault::Signature { chain, seq, reason } => {
            VerifyError::Checkpoint { chain, seq, reason }
        }
    }
}

/// Chains by name, in first-seen order.
#[derive(Default)]
struct Chains {
    states: Vec<ChainState>,
    index: HashMap<String, usize>,
}

impl Chains {
    fn get(&mut self, chain: &str) -> &mut ChainState {
        let i = match self.index.get(chain) {
            Some(i) => *i,
            None => {
                self.states.push(ChainState::new(chain));
                self.index.insert(chain.to_owned(), self.states.len() - 1);
                self.states.len() - 1
            }
        };
        &mut self.states[i]
    }
}

/// Verifies an export read from `input`. `pinned` overrides the key in the export's first line.
pub fn verify_file(input: impl BufRead, pinned: Option<&PublicKey>) -> Result<Report, VerifyError> {
    let mut key = pinned.cloned();
    let mut header: Option<ExportHeader> = None;
    let mut chains = Chains::default();
    let mut legacy_file = false;
    let mut ended = false;
    let mut n = 0u64;
    for line in input.split(b'\n') {
        n += 1;
        let mut line = line.map_err(|e| VerifyError::Unreadable {
            line: n,
            reason: e.to_string(),
        })?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if ended {
            return Err(VerifyError::Export(format!(
                "line {n}: content after the export's signed last line (lines appended)"
            )));
        }
        let first = header.is_none() && !legacy_file;
        if line.starts_with(br#"{"audit_export":"#) {
            if !first {
                return Err(VerifyError::Export(format!(
                    "line {n}: a second export header (files concatenated?): verify each export on its own"
                )));
            }
            let parsed: HeaderLine =
                serde_json::from_slice(&line).map_err(|e| VerifyError::Unreadable {
                    line: n,
                    reason: format!("export header is malformed: {e}"),
                })?;
            if parsed.audit_export.v != VERSION {
                return Err(VerifyError::Unreadable {
                    line: n,
                    reason: format!(
                        "export version {} (this mandate reads version {VERSION}): upgrade mandate",
                        parsed.audit_export.v
                    ),
                });
            }
            let named = PublicKey::from_jwk(&parsed.audit_export.public_key)
                .map_err(|reason| VerifyError::Unreadable { line: n, reason })?;
            if named.jwk() != parsed.audit_export.public_key {
                return Err(VerifyError::Unreadable {
                    line: n,
                    reason: "the export's public key has unexpected members (header altered)"
                        .into(),
                });
            }
            match &key {
                Some(pinned) if pinned.kid != named.kid => {
                    return Err(VerifyError::Export(format!(
                        "the export names key `{}`, not the given public key `{}` (signed by another broker, or re-signed)",
                        named.kid, pinned.kid
                    )));
                }
                Some(_) => {}
                None => key = Some(named),
            }
            header = Some(parsed.audit_export);
        } else if first && v1::looks_like_v1(&line) {
            legacy_file = true;
            push_legacy(&mut chains, n, &line)?;
        } else if legacy_file {
            push_legacy(&mut chains, n, &line)?;
        } else {
            let Some(header) = &header else {
                return Err(VerifyError::Unreadable {
                    line: n,
                    reason: "an export starts with its `audit_export` line: export again with `mandate audit export`".into(),
                });
            };
            if line.starts_with(br#"{"h":"#) {
                let Checked {
                    header: h,
                    hash,
                    erased,
                } = chain::check_line(&line).map_err(|f| line_fault(n, f))?;
                let state = chains.get(&h.chain);
                state.push(h.seq, &h.prev, &hash, header.since.is_none())?;
                state.erased += u64::from(erased);
            } else if line.starts_with(br#"{"checkpoint":"#) {
                let key = key.as_ref().ok_or_else(|| no_key(n))?;
                let cp =
                    checkpoint::open_checkpoint(&line, key).map_err(|f| checkpoint_fault(n, f))?;
                chains.get(&cp.chain).checkpoint(cp.seq, &cp.head)?;
            } else if line.starts_with(br#"{"audit_export_end":"#) {
                let key = key.as_ref().ok_or_else(|| no_key(n))?;
                check_trailer(n, &line, key, header, &mut chains)?;
                ended = true;
            } else if v1::looks_like_v1(&line) && header.tenant.is_none() {
                push_legacy(&mut chains, n, &line)?;
            } else {
                return Err(VerifyError::Unreadable {
                    line: n,
                    reason: "not an audit export line".into(),
                });
            }
        }
    }
    if legacy_file {
        return Ok(Report::new(chains.states, None, true));
    }
    if header.is_none() {
        return Err(VerifyError::Export("the file holds no audit export".into()));
    }
    if !ended {
        // Name the chain whose end is unsigned, if one is; else the file lost its last line.
        for state in &chains.states {
            unsealed(state)?;
        }
        return Err(VerifyError::Export(
            "the export's signed last line (`audit_export_end`) is missing: the file was truncated"
                .into(),
        ));
    }
    Ok(Report::new(chains.states, key.map(|k| k.kid), false))
}

fn no_key(line: u64) -> VerifyError {
    VerifyError::Unreadable {
        line,
        reason: "no public key to check signatures with: give `--public-key`".into(),
    }
}

fn push_legacy(chains: &mut Chains, n: u64, line: &[u8]) -> Result<(), VerifyError> {
    let record =
        v1::check_line(line).map_err(|reason| VerifyError::Unreadable { line: n, reason })?;
    let Some(record) = record else {
        let seq = serde_json::from_slice::<v1::Record>(line).map_or(0, |r| r.seq);
        return Err(VerifyError::Altered {
            chain: LEGACY_CHAIN.into(),
            seq,
        });
    };
    chains
        .get(LEGACY_CHAIN)
        .push(record.seq, &record.prev, &record.hash, true)
}

/// A chain must end at its checkpoint.
fn unsealed(state: &ChainState) -> Result<(), VerifyError> {
    if state.records > 0 && state.sealed != Some(state.last) {
        return Err(VerifyError::Unsealed {
            chain: state.chain.clone(),
            from: state.sealed.map_or(state.first.unwrap_or(1), |s| s + 1),
            to: state.last,
        });
    }
    Ok(())
}

fn check_trailer(
    n: u64,
    line: &[u8],
    key: &PublicKey,
    header: &ExportHeader,
    chains: &mut Chains,
) -> Result<(), VerifyError> {
    let bad = |reason: String| VerifyError::Export(format!("line {n}: {reason}"));
    let signed: SignedTrailer<'_> = serde_json::from_slice(line)
        .map_err(|e| bad(format!("the export's last line is malformed: {e}")))?;
    let body = signed.audit_export_end.get();
    if !key.verifies(body.as_bytes(), &signed.sig) {
        return Err(bad(
            "the signature of the export's last line does not verify (export altered, or signed by another key)".into(),
        ));
    }
    let trailer: Trailer = serde_json::from_str(body)
        .map_err(|e| bad(format!("the export's last line is malformed: {e}")))?;
    if trailer.v != header.v
        || trailer.time != header.time
        || trailer.tenant != header.tenant
        || trailer.since != header.since
    {
        return Err(bad(
            "the export's first line does not match the time and filter it was signed with (header altered)"
                .into(),
        ));
    }
    for range in &trailer.chains {
        let state = chains.get(&range.chain);
        if state.records == 0 {
            return Err(VerifyError::Missing {
                chain: range.chain.clone(),
                from: range.first,
                to: range.last,
                next: None,
                checkpoint: None,
            });
        }
        let first = state.first.unwrap_or(0);
        if first > range.first {
            return Err(VerifyError::Missing {
                chain: range.chain.clone(),
                from: range.first,
                to: first - 1,
                next: Some(first),
                checkpoint: None,
            });
        }
        if state.last < range.last {
            return Err(VerifyError::Missing {
                chain: range.chain.clone(),
                from: state.last + 1,
                to: range.last,
                next: None,
                checkpoint: None,
            });
        }
        if first != range.first || state.last != range.last {
            return Err(bad(format!(
                "chain `{}` holds records {} to {} but the export was signed with records {} to {}",
                range.chain, first, state.last, range.first, range.last
            )));
        }
        unsealed(state)?;
    }
    if let Some(extra) = chains
        .states
        .iter()
        .find(|s| s.records > 0 && !trailer.chains.iter().any(|r| r.chain == s.chain))
    {
        return Err(bad(format!(
            "chain `{}` is not part of the signed export (records added)",
            extra.chain
        )));
    }
    Ok(())
}

/// Verifies every chain in `log`, each checkpoint against the record it signs. Records after a
/// chain's last checkpoint are reported, not refused (a crash leaves them; the next start signs).
pub fn verify_log(log: &dyn AuditLog, key: Option<&PublicKey>) -> Result<Report, VerifyError> {
    let store_fault =
        |e: StorageError| VerifyError::Export(format!("audit store is unreadable: {e}"));
    let mut states = Vec::new();
    // The legacy chain.
    let mut state = ChainState::new(LEGACY_CHAIN);
    let mut cps = log.checkpoints(LEGACY_CHAIN).peekable();
    for entry in log.legacy() {
        let (seq, line) = entry.map_err(store_fault)?;
        let record = v1::check_line(&line)
            .map_err(|reason| stored(LEGACY_CHAIN, seq, reason))?
            .ok_or_else(|| VerifyError::Altered {
                chain: LEGACY_CHAIN.into(),
                seq,
            })?;
        if record.seq != seq {
            return Err(stored(
                LEGACY_CHAIN,
                seq,
                format!("it says it is record {}", record.seq),
            ));
        }
        state.push(seq, &record.prev, &record.hash, true)?;
        apply_checkpoints(&mut state, &mut cps, key, seq)?;
    }
    apply_checkpoints(&mut state, &mut cps, key, u64::MAX)?;
    states.push(state);
    for chain in log.chains().map_err(store_fault)? {
        // The writer may be appending meanwhile: verify up to the head as of now. The latest
        // checkpoint is read first, so in an intact store the head is at or past it; a
        // checkpoint past the head means records are missing from the tail.
        let signed = log.latest_checkpoint(&chain).map_err(store_fault)?;
        let head = log.head(&chain).map_err(store_fault)?;
        let limit = signed.map_or(0, |(s, _)| s).max(head.map_or(0, |(s, _)| s));
        let mut state = ChainState::new(&chain);
        let mut cps = log.checkpoints(&chain).peekable();
        for entry in log.range(&chain, 1, limit) {
            let (seq, line) = entry.map_err(store_fault)?;
            let checked = chain::check_line(&line).map_err(|f| match f {
                LineFault::Unreadable(reason) => stored(&chain, seq, reason),
                LineFault::Altered { .. } => VerifyError::Altered {
                    chain: chain.clone(),
                    seq,
                },
                LineFault::PayloadAltered { .. } => VerifyError::PayloadAltered {
                    chain: chain.clone(),
                    seq,
                },
            })?;
            if checked.header.seq != seq || checked.header.chain != chain {
                return Err(stored(
                    &chain,
                    seq,
                    format!(
                        "it says it is record {} of chain `{}` (store rewritten)",
                        checked.header.seq, checked.header.chain
                    ),
                ));
            }
            state.push(seq, &checked.header.prev, &checked.hash, true)?;
            state.erased += u64::from(checked.erased);
            apply_checkpoints(&mut state, &mut cps, key, seq)?;
        }
        apply_checkpoints(&mut state, &mut cps, key, limit)?;
        states.push(state);
    }
    Ok(Report::new(states, key.map(|k| k.kid.clone()), false))
}

fn stored(chain: &str, seq: u64, reason: String) -> VerifyError {
    VerifyError::Export(format!(
        "chain `{chain}`: stored record {seq} is unreadable: {reason}"
    ))
}

/// Applies the checkpoints up to `upto` (the record just pushed, or the verification limit at the
/// end, where any checkpoint left names records missing from the tail).
fn apply_checkpoints(
    state: &mut ChainState,
    cps: &mut std::iter::Peekable<crate::store::Entries<'_>>,
    key: Option<&PublicKey>,
    upto: u64,
) -> Result<(), VerifyError> {
    while let Some(next) = cps.peek() {
        match next {
            Ok((seq, _)) if *seq > upto => break,
            _ => {}
        }
        let Some(entry) = cps.next() else { break };
        let (seq, line) =
            entry.map_err(|e| VerifyError::Export(format!("audit store is unreadable: {e}")))?;
        let key = key.ok_or_else(|| VerifyError::Checkpoint {
            chain: state.chain.clone(),
            seq,
            reason:
                "the store has checkpoints but no audit key (`audit/es256`): restore the key store"
                    .into(),
        })?;
        let cp = checkpoint::open_checkpoint(&line, key).map_err(|f| match f {
            CheckpointFault::Unreadable(reason) => VerifyError::Checkpoint {
                chain: state.chain.clone(),
                seq,
                reason,
            },
            CheckpointFault::Signature { reason, .. } => VerifyError::Checkpoint {
                chain: state.chain.clone(),
                seq,
                reason,
            },
        })?;
        if cp.seq != seq || cp.chain != state.chain {
            return Err(VerifyError::Checkpoint {
                chain: state.chain.clone(),
                seq,
                reason: format!(
                    "it signs record {} of chain `{}` (store rewritten)",
                    cp.seq, cp.chain
                ),
            });
        }
        state.checkpoint(cp.seq, &cp.head)?;
    }
    Ok(())
}

//! Audit record format v2 and the per-chain verification state machine. Pure; no I/O.
//!
//! A record is one JSON line, stored and exported byte for byte:
//!
//! ```text
//! {"h":<header>,"p":<payload>,"hash":"<hex>"}
//! ```
//!
//! - `header`: `{"v":2,"chain":…,"seq":…,"time":…,"tenant":…,"kind":…,"prev":…,"payload_digest":…}`
//!   (`tenant` absent on the broker chain). `prev` is the previous record's `hash` ([`GENESIS`]
//!   for seq 1); `payload_digest` is the SHA-256 of the payload's exact bytes.
//! - `payload`: the serialised [`Event`](super::Event), or `null` once erased (crypto-shredded):
//!   the header keeps its digest, so the chain still verifies and says the payload is gone.
//! - `hash`: SHA-256 of the exact header bytes. The chain covers the payload through its digest.
//!
//! The writer serialises the event once, hashes those bytes, serialises the small header once,
//! hashes it, and stores the concatenation: nothing is ever re-serialised to be hashed, so adding
//! a field to [`Event`](super::Event) never changes an old record's hash. Verification reads the
//! header and payload as raw JSON text ([`serde_json::value::RawValue`]) and hashes that text.
//!
//! Chains: one per tenant (`tenant:<id>`) and one for events without a tenant (`broker`), so a
//! tenant's export verifies on its own. Sequence numbers are per chain, from 1, contiguous.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{EventKind, digest_bytes, write_digest};

/// Hash carried by the first record of a chain as its `prev`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Format version in headers, checkpoints and exports.
pub const VERSION: u32 = 2;
/// The chain of events without a tenant.
pub const BROKER_CHAIN: &str = "broker";
/// The frozen chain of records written before audit v2 (see [`super::v1`]).
pub const LEGACY_CHAIN: &str = "legacy-v1";

/// The chain an event with this tenant belongs to.
pub fn chain_id(tenant: Option<&str>) -> String {
    let mut id = String::new();
    write_chain_id(tenant, &mut id);
    id
}

/// [`chain_id`] into a buffer the caller reuses (the writer, once per record).
pub fn write_chain_id(tenant: Option<&str>, out: &mut String) {
    out.clear();
    match tenant {
        None => out.push_str(BROKER_CHAIN),
        Some(t) => {
            out.push_str("tenant:");
            out.push_str(t);
        }
    }
}

/// A header as written (borrowed, so the hot path copies nothing).
#[derive(Serialize)]
pub struct HeaderOut<'a> {
    pub v: u32,
    pub chain: &'a str,
    pub seq: u64,
    pub time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    pub kind: EventKind,
    pub prev: &'a str,
    pub payload_digest: &'a str,
}

/// A header as read back. `kind` stays a string so a verifier accepts kinds added later.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub v: u32,
    pub chain: String,
    pub seq: u64,
    pub time: String,
    #[serde(default)]
    pub tenant: Option<String>,
    pub kind: String,
    pub prev: String,
    pub payload_digest: String,
}

/// A new record's line and hash.
pub struct Sealed {
    pub line: Vec<u8>,
    pub hash: String,
}

/// Builds record `seq` of `chain` from an already serialised payload.
pub fn seal(
    chain: &str,
    seq: u64,
    time: &str,
    tenant: Option<&str>,
    kind: EventKind,
    prev: &str,
    payload: &[u8],
) -> Result<Sealed, serde_json::Error> {
    let mut sealer = Sealer::default();
    let meta = RecordMeta {
        chain,
        seq,
        time,
        tenant,
        kind,
        prev,
    };
    sealer.seal(&meta, payload)?;
    let hash = sealer.hash().to_owned();
    Ok(Sealed {
        line: sealer.line,
        hash,
    })
}

/// What a record's header says besides its payload's digest.
pub struct RecordMeta<'a> {
    pub chain: &'a str,
    pub seq: u64,
    /// RFC 3339 (see [`super::now_rfc3339`]).
    pub time: &'a str,
    pub tenant: Option<&'a str>,
    pub kind: EventKind,
    /// The previous record's hash ([`GENESIS`] for seq 1).
    pub prev: &'a str,
}

/// Builds records into buffers it keeps, so sealing a record allocates nothing once they have
/// grown to the size of a record (the writer keeps one). Produces exactly [`seal`]'s bytes.
pub struct Sealer {
    header: Vec<u8>,
    line: Vec<u8>,
    hash: [u8; 64],
}

impl Default for Sealer {
    fn default() -> Self {
        Self {
            header: Vec::with_capacity(384),
            line: Vec::with_capacity(2048),
            hash: [b'0'; 64],
        }
    }
}

impl Sealer {
    /// Seals record `seq` of `chain`; its line and hash are then [`Sealer::line`] and
    /// [`Sealer::hash`].
    pub fn seal(&mut self, meta: &RecordMeta<'_>, payload: &[u8]) -> Result<(), serde_json::Error> {
        let mut payload_digest = [0u8; 64];
        let payload_digest = write_digest(payload, &mut payload_digest);
        self.header.clear();
        serde_json::to_writer(
            &mut self.header,
            &HeaderOut {
                v: VERSION,
                chain: meta.chain,
                seq: meta.seq,
                time: meta.time,
                tenant: meta.tenant,
                kind: meta.kind,
                prev: meta.prev,
                payload_digest,
            },
        )?;
        write_digest(&self.header, &mut self.hash);
        self.line.clear();
        self.line.extend_from_slice(br#"{"h":"#);
        self.line.extend_from_slice(&self.header);
        self.line.extend_from_slice(br#","p":"#);
        self.line.extend_from_slice(payload);
        self.line.extend_from_slice(br#","hash":""#);
        self.line.extend_from_slice(&self.hash);
        self.line.extend_from_slice(br#""}"#);
        Ok(())
    }

    /// The line of the record sealed last.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The hash of the record sealed last (hex).
    pub fn hash(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.hash).unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord<'a> {
    #[serde(borrow)]
    h: &'a RawValue,
    #[serde(borrow)]
    p: Option<&'a RawValue>,
    hash: String,
}

/// Only the stored hash of a record line (the writer's head at start; verification recomputes).
pub fn stored_hash(line: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<RawRecord<'_>>(line)
        .map(|r| r.hash)
        .map_err(|e| format!("not an audit v2 record: {e}"))
}

/// The time in a record line's header (unchecked; for filtering).
pub fn header_time(line: &[u8]) -> Result<String, String> {
    let raw: RawRecord<'_> =
        serde_json::from_slice(line).map_err(|e| format!("not an audit v2 record: {e}"))?;
    let header: Header = serde_json::from_str(raw.h.get())
        .map_err(|e| format!("record header is malformed: {e}"))?;
    Ok(header.time)
}

/// A record line whose own content is consistent (hash and payload digest).
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub header: Header,
    pub hash: String,
    /// The payload was erased; the chain still covers its digest.
    pub erased: bool,
}

/// Why a single record line is bad, before looking at its neighbours.
#[derive(Debug, Clone, PartialEq)]
pub enum LineFault {
    Unreadable(String),
    /// The header does not hash to `hash` (the header or the hash was changed).
    Altered {
        chain: String,
        seq: u64,
    },
    /// The payload does not match the header's digest.
    PayloadAltered {
        chain: String,
        seq: u64,
    },
}

/// Checks one record line: hashes the header's exact text and the payload's exact text.
pub fn check_line(line: &[u8]) -> Result<Checked, LineFault> {
    let raw: RawRecord<'_> = serde_json::from_slice(line)
        .map_err(|e| LineFault::Unreadable(format!("not an audit v2 record: {e}")))?;
    let header: Header = serde_json::from_str(raw.h.get())
        .map_err(|e| LineFault::Unreadable(format!("record header is malformed: {e}")))?;
    if header.v != VERSION {
        return Err(LineFault::Unreadable(format!(
            "record header has version {} (this mandate reads version {VERSION}): upgrade mandate",
            header.v
        )));
    }
    if digest_bytes(raw.h.get().as_bytes()) != raw.hash {
        return Err(LineFault::Altered {
            chain: header.chain,
            seq: header.seq,
        });
    }
    let erased = match raw.p {
        None => true,
        Some(p) => {
            if digest_bytes(p.get().as_bytes()) != header.payload_digest {
                return Err(LineFault::PayloadAltered {
                    chain: header.chain,
                    seq: header.seq,
                });
            }
            false
        }
    };
    if header.chain != chain_id(header.tenant.as_deref()) {
        return Err(LineFault::Unreadable(format!(
            "record {} names chain `{}` but its tenant belongs to chain `{}`",
            header.seq,
            header.chain,
            chain_id(header.tenant.as_deref())
        )));
    }
    Ok(Checked {
        header,
        hash: raw.hash,
        erased,
    })
}

/// The first problem found by verification, naming the chain and the record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    #[error("line {line}: {reason}")]
    Unreadable { line: u64, reason: String },
    #[error("chain `{chain}`: record {seq}: content does not match its hash (record altered)")]
    Altered { chain: String, seq: u64 },
    #[error(
        "chain `{chain}`: record {seq}: payload does not match the digest in its header (payload altered)"
    )]
    PayloadAltered { chain: String, seq: u64 },
    #[error("chain `{chain}`: {}", missing(*from, *to, *next, *checkpoint))]
    Missing {
        chain: String,
        from: u64,
        to: u64,
        /// The record found after the gap, if any.
        next: Option<u64>,
        /// The checkpoint that proves the records existed, if that is how the gap was found.
        checkpoint: Option<u64>,
    },
    #[error(
        "chain `{chain}`: record {seq} comes after record {after} (records reordered or duplicated)"
    )]
    Reordered { chain: String, seq: u64, after: u64 },
    #[error(
        "chain `{chain}`: record {seq}: `prev` does not match the hash of record {previous} (chain broken)"
    )]
    Link {
        chain: String,
        seq: u64,
        previous: u64,
    },
    #[error(
        "chain `{chain}`: the first record is {seq}, but this export must start at record 1 (records 1 to {} missing)", seq.saturating_sub(1)
    )]
    Start { chain: String, seq: u64 },
    #[error("chain `{chain}`: checkpoint at seq {seq}: {reason}")]
    Checkpoint {
        chain: String,
        seq: u64,
        reason: String,
    },
    #[error(
        "chain `{chain}`: records {from} to {to} are not covered by a signed checkpoint (records after them may have been removed)"
    )]
    Unsealed { chain: String, from: u64, to: u64 },
    #[error("{0}")]
    Export(String),
}

fn missing(from: u64, to: u64, next: Option<u64>, checkpoint: Option<u64>) -> String {
    let what = if from == to {
        format!("record {from} is missing")
    } else {
        format!("records {from} to {to} are missing")
    };
    match (next, checkpoint) {
        (_, Some(cp)) => format!("{what} (checkpoint at seq {cp})"),
        (Some(next), None) => format!("{what} (record {next} follows record {})", from - 1),
        (None, None) => what,
    }
}

/// Verification state of one chain, fed records in order.
#[derive(Debug, Clone)]
pub struct ChainState {
    pub chain: String,
    /// First record seen.
    pub first: Option<u64>,
    /// Last record seen (0 before any).
    pub last: u64,
    /// Its hash ([`GENESIS`] before any).
    pub head: String,
    pub records: u64,
    pub erased: u64,
    /// Highest checkpoint verified against this chain.
    pub sealed: Option<u64>,
}

impl ChainState {
    pub fn new(chain: &str) -> Self {
        Self {
            chain: chain.to_owned(),
            first: None,
            last: 0,
            head: GENESIS.to_owned(),
            records: 0,
            erased: 0,
            sealed: None,
        }
    }

    /// Adds the next record. With `from_start`, the chain must begin at record 1 (linked to
    /// [`GENESIS`]); otherwise the first record's `prev` is taken as given, to be anchored by a
    /// checkpoint (an export `--since`).
    pub fn push(
        &mut self,
        seq: u64,
        prev: &str,
        hash: &str,
        from_start: bool,
    ) -> Result<(), VerifyError> {
        let chain = || self.chain.clone();
        if self.first.is_none() {
            if from_start && seq != 1 {
                return Err(VerifyError::Start {
                    chain: chain(),
                    seq,
                });
            }
            if seq == 1 && prev != GENESIS {
                return Err(VerifyError::Link {
                    chain: chain(),
                    seq,
                    previous: 0,
                });
            }
            self.first = Some(seq);
        } else if seq > self.last + 1 {
            return Err(VerifyError::Missing {
                chain: chain(),
                from: self.last + 1,
                to: seq - 1,
                next: Some(seq),
                checkpoint: None,
            });
        } else if seq <= self.last {
            return Err(VerifyError::Reordered {
                chain: chain(),
                seq,
                after: self.last,
            });
        } else if prev != self.head {
            return Err(VerifyError::Link {
                chain: chain(),
                seq,
                previous: self.last,
            });
        }
        self.last = seq;
        self.head = hash.to_owned();
        self.records += 1;
        Ok(())
    }

    /// Applies a checkpoint (already signature-checked) taken at `seq` with head `head`.
    /// It must be at the last record pushed: feed checkpoints right after the record they cover.
    pub fn checkpoint(&mut self, seq: u64, head: &str) -> Result<(), VerifyError> {
        if seq > self.last {
            return Err(VerifyError::Missing {
                chain: self.chain.clone(),
                from: self.last + 1,
                to: seq,
                next: None,
                checkpoint: Some(seq),
            });
        }
        if seq < self.last || self.first.is_none_or(|first| seq < first) {
            return Err(VerifyError::Checkpoint {
                chain: self.chain.clone(),
                seq,
                reason: format!(
                    "it is not at the chain's last record {} (records out of order)",
                    self.last
                ),
            });
        }
        if head != self.head {
            return Err(VerifyError::Checkpoint {
                chain: self.chain.clone(),
                seq,
                reason: format!("record {seq} does not have the signed hash (chain rewritten)"),
            });
        }
        self.sealed = Some(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(chain: &str, tenant: Option<&str>, seq: u64, prev: &str) -> Sealed {
        let payload = format!(r#"{{"kind":"call","tool":"t{seq}"}}"#);
        seal(
            chain,
            seq,
            "2026-01-01T00:00:00.000000Z",
            tenant,
            EventKind::Call,
            prev,
            payload.as_bytes(),
        )
        .unwrap()
    }

    /// The record format, spelled out independently of the sealer: what every earlier release
    /// wrote, so old records and new ones verify alike.
    fn expected_line(
        chain: &str,
        seq: u64,
        tenant: Option<&str>,
        prev: &str,
        payload: &str,
    ) -> (String, String) {
        let tenant = tenant
            .map(|t| format!(r#","tenant":"{t}""#))
            .unwrap_or_default();
        let header = format!(
            r#"{{"v":2,"chain":"{chain}","seq":{seq},"time":"2026-01-01T00:00:00.000000Z"{tenant},"kind":"call","prev":"{prev}","payload_digest":"{}"}}"#,
            digest_bytes(payload.as_bytes())
        );
        let hash = digest_bytes(header.as_bytes());
        (
            format!(r#"{{"h":{header},"p":{payload},"hash":"{hash}"}}"#),
            hash,
        )
    }

    #[test]
    fn digests_are_lowercase_sha256_hex() {
        assert_eq!(
            digest_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_reused_sealer_writes_exactly_the_record_format_whatever_came_before() {
        let mut sealer = Sealer::default();
        let long = format!(r#"{{"kind":"call","tool":"{}"}}"#, "x".repeat(3000));
        let cases = [
            ("tenant:acme", Some("acme"), 7, GENESIS, long.as_str()),
            ("broker", None, 1, GENESIS, r#"{"kind":"call"}"#),
            ("tenant:a", Some("a"), 12345678901, &"ab".repeat(32), "{}"),
        ];
        for (chain, tenant, seq, prev, payload) in cases {
            let meta = RecordMeta {
                chain,
                seq,
                time: "2026-01-01T00:00:00.000000Z",
                tenant,
                kind: EventKind::Call,
                prev,
            };
            sealer.seal(&meta, payload.as_bytes()).unwrap();
            let (line, hash) = expected_line(chain, seq, tenant, prev, payload);
            assert_eq!(std::str::from_utf8(sealer.line()).unwrap(), line);
            assert_eq!(sealer.hash(), hash);
            assert_eq!(check_line(sealer.line()).unwrap().hash, hash);
        }
    }

    #[test]
    fn a_sealed_line_checks_and_its_hash_is_over_the_header_text() {
        let r = record("tenant:acme", Some("acme"), 1, GENESIS);
        let checked = check_line(&r.line).unwrap();
        assert_eq!(checked.hash, r.hash);
        assert_eq!(checked.header.seq, 1);
        assert!(!checked.erased);
        let text = String::from_utf8(r.line).unwrap();
        let header = &text[5..text.find(r#","p":"#).unwrap()];
        assert_eq!(digest_bytes(header.as_bytes()), r.hash);
    }

    #[test]
    fn an_erased_payload_still_checks() {
        let r = record("broker", None, 1, GENESIS);
        let text = String::from_utf8(r.line).unwrap();
        let start = text.find(r#","p":"#).unwrap() + 5;
        let end = text.find(r#","hash":"#).unwrap();
        let erased = format!("{}null{}", &text[..start], &text[end..]);
        let checked = check_line(erased.as_bytes()).unwrap();
        assert!(checked.erased);
    }

    #[test]
    fn a_header_claiming_another_tenants_chain_is_refused() {
        let r = record("tenant:acme", Some("globex"), 1, GENESIS);
        assert!(matches!(check_line(&r.line), Err(LineFault::Unreadable(_))));
    }

    #[test]
    fn missing_texts_name_the_records() {
        let e = VerifyError::Missing {
            chain: "tenant:acme".into(),
            from: 3,
            to: 3,
            next: Some(4),
            checkpoint: None,
        };
        assert_eq!(
            e.to_string(),
            "chain `tenant:acme`: record 3 is missing (record 4 follows record 2)"
        );
        let e = VerifyError::Missing {
            chain: "broker".into(),
            from: 6,
            to: 7,
            next: None,
            checkpoint: Some(7),
        };
        assert_eq!(
            e.to_string(),
            "chain `broker`: records 6 to 7 are missing (checkpoint at seq 7)"
        );
    }
}

//! The hash chain: record layout, hashing and verification. Pure; no I/O.

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::Event;

/// Hash carried by the first record as its `prev`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 1-based, contiguous.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// `hash` of the previous record ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 (hex) of the RFC 8785 canonical JSON of this record without `hash`.
    pub hash: String,
    #[serde(flatten)]
    pub event: Event,
}

/// The chain head: what the next record links to.
#[derive(Debug, Clone)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }

    pub fn advance(&mut self, record: &Record) {
        self.seq = record.seq;
        self.hash = record.hash.clone();
    }
}

impl Record {
    /// Builds the record following `head`.
    pub fn next(head: &Head, time: String, event: Event) -> Self {
        let mut record = Record {
            seq: head.seq + 1,
            time,
            prev: head.hash.clone(),
            hash: String::new(),
            event,
        };
        record.hash = record.compute_hash();
        record
    }

    /// The hash this record should carry.
    pub fn compute_hash(&self) -> String {
        let mut value = match serde_json::to_value(self) {
            Ok(v) => v,
            Err(_) => return String::new(),
        };
        if let Some(map) = value.as_object_mut() {
            map.remove("hash");
        }
        let bytes = serde_jcs::to_vec(&value).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(bytes))
    }
}

/// Reads the head from the last record of the tree.
pub fn head(tree: &sled::Tree) -> Result<Head, String> {
    match tree.last().map_err(|e| e.to_string())? {
        None => Ok(Head::genesis()),
        Some((_, value)) => {
            let record: Record = serde_json::from_slice(&value)
                .map_err(|e| format!("last audit record is unreadable: {e}"))?;
            Ok(Head {
                seq: record.seq,
                hash: record.hash,
            })
        }
    }
}

/// The first bad record found by verification.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    #[error("record {line} is unreadable: {reason}")]
    Unreadable { line: u64, reason: String },
    #[error("record {seq}: expected sequence number {expected} (a record is missing or reordered)")]
    Sequence { seq: u64, expected: u64 },
    #[error("record {seq}: `prev` does not match the hash of record {previous} (chain broken)")]
    Link { seq: u64, previous: u64 },
    #[error("record {seq}: content does not match its hash (record altered)")]
    Hash { seq: u64 },
}

/// Recomputes the chain; returns the number of records or the first bad one.
pub fn verify_records(
    records: impl Iterator<Item = Result<Record, String>>,
) -> Result<u64, VerifyError> {
    let mut head = Head::genesis();
    for (i, record) in records.enumerate() {
        let record = record.map_err(|reason| VerifyError::Unreadable {
            line: i as u64 + 1,
            reason,
        })?;
        if record.seq != head.seq + 1 {
            return Err(VerifyError::Sequence {
                seq: record.seq,
                expected: head.seq + 1,
            });
        }
        if record.compute_hash() != record.hash {
            return Err(VerifyError::Hash { seq: record.seq });
        }
        if record.prev != head.hash {
            return Err(VerifyError::Link {
                seq: record.seq,
                previous: head.seq,
            });
        }
        head.advance(&record);
    }
    Ok(head.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventKind;

    fn chain(n: usize) -> Vec<Record> {
        let mut head = Head::genesis();
        (0..n)
            .map(|i| {
                let mut event = Event::new(EventKind::Call);
                event.tool = Some(format!("tool-{i}"));
                event.subject = Some("alice".into());
                let r = Record::next(&head, format!("2026-01-01T00:00:0{}Z", i % 10), event);
                head.advance(&r);
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let records = chain(20);
        assert_eq!(verify_records(records.into_iter().map(Ok)), Ok(20));
    }

    #[test]
    fn flipping_any_byte_of_any_record_is_detected() {
        let records = chain(6);
        let lines: Vec<String> = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_default())
            .collect();
        for (i, line) in lines.iter().enumerate() {
            for pos in 0..line.len() {
                let mut bytes = line.clone().into_bytes();
                bytes[pos] ^= 0x01;
                let Ok(altered) = String::from_utf8(bytes) else {
                    continue;
                };
                let parsed: Vec<Result<Record, String>> = lines
                    .iter()
                    .enumerate()
                    .map(|(j, l)| {
                        let text = if j == i { &altered } else { l };
                        serde_json::from_str::<Record>(text).map_err(|e| e.to_string())
                    })
                    .collect();
                // A flip that still parses to the identical record (e.g. in insignificant
                // whitespace) is not tampering; anything else must fail verification.
                let unchanged = matches!(&parsed[i], Ok(r) if *r == records[i]);
                let result = verify_records(parsed.into_iter());
                if unchanged {
                    assert!(result.is_ok());
                } else {
                    assert!(
                        result.is_err(),
                        "flip at record {i} byte {pos} not detected"
                    );
                }
            }
        }
    }

    #[test]
    fn removed_record_is_named() {
        let mut records = chain(5);
        records.remove(2);
        assert_eq!(
            verify_records(records.into_iter().map(Ok)),
            Err(VerifyError::Sequence {
                seq: 4,
                expected: 3
            })
        );
    }

    #[test]
    fn rehashed_altered_record_breaks_the_link() {
        let mut records = chain(4);
        records[1].event.subject = Some("mallory".into());
        records[1].hash = records[1].compute_hash();
        assert_eq!(
            verify_records(records.into_iter().map(Ok)),
            Err(VerifyError::Link {
                seq: 3,
                previous: 2
            })
        );
    }
}

//! The legacy v1 record format, kept so stores written before audit v2 keep verifying.
//!
//! A v1 record is one JSON object: `seq`, `time`, `prev`, `hash` and the event's fields
//! flattened, where `hash` is the SHA-256 of the RFC 8785 canonical JSON of the record without
//! `hash` (a re-serialisation, which is why v2 replaced it). All events shared one chain.
//!
//! Decision: v1 records are not migrated. They stay in the store's legacy tree, frozen, as the
//! chain `legacy-v1`; new events go to the v2 chains. At its first start on such a store the
//! writer signs a checkpoint of the legacy head, so truncating the frozen chain later is detected
//! too. `mandate audit verify` reports the legacy chain beside the v2 chains, an unfiltered export
//! includes it (as its original lines), and a v1 export file still verifies. Pure; no I/O.

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::Event;
pub use super::chain::GENESIS;

/// One legacy record.
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

impl Record {
    /// Builds the record following one with `seq` and `hash` (tests and fixtures only: nothing
    /// writes v1 records any more).
    pub fn next(seq: u64, hash: &str, time: String, event: Event) -> Self {
        let mut record = Record {
            seq: seq + 1,
            time,
            prev: hash.to_owned(),
            hash: String::new(),
            event,
        };
        record.hash = record.compute_hash().unwrap_or_default();
        record
    }

    /// The hash this record should carry.
    pub fn compute_hash(&self) -> Result<String, String> {
        let mut value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Some(map) = value.as_object_mut() {
            map.remove("hash");
        }
        let bytes = serde_jcs::to_vec(&value).map_err(|e| e.to_string())?;
        Ok(hex::encode(sha2::Sha256::digest(bytes)))
    }
}

/// Whether a line is (probably) a v1 record rather than a v2 line.
pub fn looks_like_v1(line: &[u8]) -> bool {
    line.starts_with(br#"{"seq":"#)
}

/// Parses a v1 record and checks its own hash; `Ok(None)` if the content does not match it.
pub fn check_line(line: &[u8]) -> Result<Option<Record>, String> {
    let record: Record =
        serde_json::from_slice(line).map_err(|e| format!("not a valid v1 audit record: {e}"))?;
    if record.compute_hash()? != record.hash {
        return Ok(None);
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventKind;
    use crate::audit::chain::{ChainState, LEGACY_CHAIN, VerifyError};

    fn chain(n: usize) -> Vec<Record> {
        let (mut seq, mut hash) = (0, GENESIS.to_owned());
        (0..n)
            .map(|i| {
                let mut event = Event::new(EventKind::Call);
                event.tool = Some(format!("tool-{i}"));
                event.subject = Some("alice".into());
                let r = Record::next(seq, &hash, format!("2026-01-01T00:00:0{}Z", i % 10), event);
                (seq, hash) = (r.seq, r.hash.clone());
                r
            })
            .collect()
    }

    /// What the verifier does with legacy lines.
    fn verify(lines: &[String]) -> Result<u64, VerifyError> {
        let mut state = ChainState::new(LEGACY_CHAIN);
        for (i, line) in lines.iter().enumerate() {
            let record = check_line(line.as_bytes())
                .map_err(|reason| VerifyError::Unreadable {
                    line: i as u64 + 1,
                    reason,
                })?
                .ok_or(VerifyError::Altered {
                    chain: LEGACY_CHAIN.into(),
                    seq: i as u64 + 1,
                })?;
            state.push(record.seq, &record.prev, &record.hash, true)?;
        }
        Ok(state.records)
    }

    fn lines(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect()
    }

    #[test]
    fn intact_legacy_chain_verifies() {
        let lines = lines(&chain(20));
        assert!(lines.iter().all(|l| looks_like_v1(l.as_bytes())));
        assert_eq!(verify(&lines), Ok(20));
    }

    #[test]
    fn flipping_any_byte_of_any_legacy_record_is_detected() {
        let records = chain(4);
        let lines = lines(&records);
        for (i, line) in lines.iter().enumerate() {
            for pos in 0..line.len() {
                let mut bytes = line.clone().into_bytes();
                bytes[pos] ^= 0x01;
                let Ok(altered) = String::from_utf8(bytes) else {
                    continue;
                };
                // A flip that still parses to the identical record is not tampering.
                let unchanged =
                    serde_json::from_str::<Record>(&altered).is_ok_and(|r| r == records[i]);
                let mut tampered = lines.clone();
                tampered[i] = altered;
                assert_eq!(
                    verify(&tampered).is_ok(),
                    unchanged,
                    "flip at record {i} byte {pos}"
                );
            }
        }
    }

    #[test]
    fn removed_legacy_record_is_named() {
        let mut lines = lines(&chain(5));
        lines.remove(2);
        assert_eq!(
            verify(&lines),
            Err(VerifyError::Missing {
                chain: LEGACY_CHAIN.into(),
                from: 3,
                to: 3,
                next: Some(4),
                checkpoint: None,
            })
        );
    }

    #[test]
    fn rehashed_altered_legacy_record_breaks_the_link() {
        let mut records = chain(4);
        records[1].event.subject = Some("mallory".into());
        records[1].hash = records[1].compute_hash().unwrap();
        assert_eq!(
            verify(&lines(&records)),
            Err(VerifyError::Link {
                chain: LEGACY_CHAIN.into(),
                seq: 3,
                previous: 2
            })
        );
    }
}

//! End-to-end tests of the audit log: a real sled store, the writer, exports and verification.

use std::io::Cursor;

use super::*;
use crate::store::{AuditLog, SledAuditLog};

fn event(tenant: Option<&str>, tool: &str) -> Event {
    let mut event = Event::new(EventKind::Call);
    event.tenant = tenant.map(str::to_owned);
    event.tool = Some(tool.to_owned());
    event.subject = Some("alice@acme.example".into());
    event
}

/// A store with records of two tenants and the broker, cleanly stopped (so signed).
async fn populated(policy: Checkpoints) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (audit, writer) = Auditor::start_with(&store, policy).unwrap();
    // Durable, so each record is a batch of its own (checkpoints are due after a batch).
    audit
        .record_durable(Event::new(EventKind::ConfigLoad))
        .await
        .unwrap();
    for i in 0..4 {
        audit
            .record_durable(event(Some("acme"), &format!("acme-{i}")))
            .await
            .unwrap();
        if i % 2 == 0 {
            audit
                .record(event(Some("globex"), &format!("globex-{i}")))
                .await;
        }
    }
    audit.stop().await.unwrap();
    writer.await.unwrap();
    (dir, store)
}

fn export_text(store: &Store, tenant: Option<&str>, since: Option<&str>) -> String {
    let mut out = Vec::new();
    export(
        store,
        &ExportFilter {
            tenant: tenant.map(str::to_owned),
            since: since.map(str::to_owned),
        },
        &mut out,
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

fn verify_text(text: &str) -> Result<Report, VerifyError> {
    verify_file(Cursor::new(text.as_bytes()), None)
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// Index of the line holding record `seq` (of the only chain in a tenant export).
fn record_line(lines: &[String], seq: u64) -> usize {
    lines
        .iter()
        .position(|l| {
            l.starts_with(r#"{"h":"#) && chain::header_time(l.as_bytes()).is_ok() && {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["h"]["seq"] == seq
            }
        })
        .unwrap()
}

fn err(lines: &[String]) -> String {
    verify_text(&(lines.join("\n") + "\n"))
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn each_tenant_export_verifies_on_its_own_and_chains_are_independent() {
    let (_dir, store) = populated(Checkpoints::default()).await;
    let acme = export_text(&store, Some("acme"), None);
    let report = verify_text(&acme).unwrap();
    assert_eq!(report.chains.len(), 1);
    assert_eq!(
        (
            report.chains[0].chain.as_str(),
            report.chains[0].first,
            report.chains[0].last
        ),
        ("tenant:acme", 1, 4)
    );
    assert_eq!(report.chains[0].signed, Some(4));
    assert!(!acme.contains("globex"), "another tenant's record leaked");
    let globex = verify_text(&export_text(&store, Some("globex"), None)).unwrap();
    assert_eq!((globex.chains[0].first, globex.chains[0].last), (1, 2));
    // The full export holds all three chains; the store verifies too.
    let all = verify_text(&export_text(&store, None, None)).unwrap();
    let names: Vec<&str> = all.chains.iter().map(|c| c.chain.as_str()).collect();
    assert_eq!(names, ["broker", "tenant:acme", "tenant:globex"]);
    assert_eq!(all.records(), 7);
    assert_eq!(verify_store(&store).unwrap().records(), 7);
    assert!(
        all.to_string().starts_with("ok: 7 record(s) in 3 chain(s)"),
        "{all}"
    );
    // A tenant without records: an export with no records, which verifies.
    let none = verify_text(&export_text(&store, Some("initech"), None)).unwrap();
    assert_eq!(none.records(), 0);
}

#[tokio::test]
async fn flipping_any_byte_of_any_exported_line_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (audit, writer) = Auditor::start(&store).unwrap();
    audit.record(event(Some("acme"), "a")).await;
    audit.record(event(Some("acme"), "b")).await;
    audit.stop().await.unwrap();
    writer.await.unwrap();
    let text = export_text(&store, Some("acme"), None);
    let lines = lines(&text);
    assert_eq!(lines.len(), 5, "header, 2 records, checkpoint, trailer");
    assert!(verify_text(&text).is_ok());
    for (i, line) in lines.iter().enumerate() {
        for pos in 0..line.len() {
            let mut bytes = line.clone().into_bytes();
            bytes[pos] ^= 0x01;
            let mut tampered = lines.clone();
            tampered[i] = String::from_utf8(bytes).unwrap();
            assert!(
                verify_text(&(tampered.join("\n") + "\n")).is_err(),
                "flip at line {i} byte {pos} not detected: {}",
                tampered[i]
            );
        }
    }
}

#[tokio::test]
async fn removed_middle_record_is_named() {
    let (_dir, store) = populated(Checkpoints::default()).await;
    let mut lines = lines(&export_text(&store, Some("acme"), None));
    lines.remove(record_line(&lines, 2));
    assert_eq!(
        err(&lines),
        "chain `tenant:acme`: record 2 is missing (record 3 follows record 1)"
    );
}

#[tokio::test]
async fn removed_last_record_is_named_by_its_checkpoint() {
    let (_dir, store) = populated(Checkpoints::default()).await;
    let mut lines = lines(&export_text(&store, Some("acme"), None));
    lines.remove(record_line(&lines, 4));
    assert_eq!(
        err(&lines),
        "chain `tenant:acme`: record 4 is missing (checkpoint at seq 4)"
    );
    // Removing the checkpoint too leaves the signed last line to tell.
    let cp = lines
        .iter()
        .position(|l| l.starts_with(r#"{"checkpoint":"#))
        .unwrap();
    lines.remove(cp);
    assert_eq!(err(&lines), "chain `tenant:acme`: record 4 is missing");
    // And cutting the file after any record is named as well.
    let full = self::lines(&export_text(&store, Some("acme"), None));
    let cut = &full[..record_line(&full, 3) + 1];
    assert_eq!(
        err(cut),
        "chain `tenant:acme`: records 1 to 3 are not covered by a signed checkpoint (records after them may have been removed)"
    );
    let mut no_trailer = full.clone();
    no_trailer.pop();
    assert!(err(&no_trailer).contains("signed last line (`audit_export_end`) is missing"));
}

#[tokio::test]
async fn reordered_records_are_named() {
    let (_dir, store) = populated(Checkpoints::default()).await;
    let mut lines = lines(&export_text(&store, Some("acme"), None));
    let (a, b) = (record_line(&lines, 2), record_line(&lines, 3));
    lines.swap(a, b);
    // Read in order, record 3 arrives where 2 belongs.
    assert_eq!(
        err(&lines),
        "chain `tenant:acme`: record 2 is missing (record 3 follows record 1)"
    );
    // Moving the first record to the end.
    let mut lines = self::lines(&export_text(&store, Some("acme"), None));
    let first = lines.remove(record_line(&lines, 1));
    let at = record_line(&lines, 4) + 1;
    lines.insert(at, first);
    assert!(err(&lines).contains("chain `tenant:acme`: the first record is 2"));
    // A duplicated record.
    let mut lines = self::lines(&export_text(&store, Some("acme"), None));
    let dup = lines[record_line(&lines, 2)].clone();
    lines.insert(record_line(&lines, 3), dup);
    assert_eq!(
        err(&lines),
        "chain `tenant:acme`: record 2 comes after record 2 (records reordered or duplicated)"
    );
}

#[tokio::test]
async fn forged_checkpoints_and_a_foreign_key_fail() {
    let (_dir, store) = populated(Checkpoints::default()).await;
    let text = export_text(&store, Some("acme"), None);
    let mut lines = lines(&text);
    let cp = lines
        .iter()
        .position(|l| l.starts_with(r#"{"checkpoint":"#))
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&lines[cp]).unwrap();
    let body = serde_json::to_vec(&body["checkpoint"]).unwrap();
    // Same body, signed by another key that claims the broker's kid.
    let forger = AuditKey::ephemeral();
    lines[cp] = String::from_utf8(forger.signed_line("checkpoint", &body)).unwrap();
    assert!(
        err(&lines).contains("signature does not verify (checkpoint forged or altered)"),
        "{}",
        err(&lines)
    );
    // A whole export re-signed by another key verifies only against that key: pinning the
    // published key catches it.
    let genuine = verify_text(&text).unwrap().kid.unwrap();
    let published = AuditKey::load(&store.keys().unwrap()).unwrap().unwrap();
    assert_eq!(published.public().kid, genuine);
    let pinned = verify_file(Cursor::new(text.as_bytes()), Some(forger.public()));
    assert!(
        pinned
            .unwrap_err()
            .to_string()
            .contains("not the given public key")
    );
    assert!(verify_file(Cursor::new(text.as_bytes()), Some(published.public())).is_ok());
}

#[tokio::test]
async fn an_erased_payload_keeps_the_chain_verifiable_and_is_reported() {
    let (_dir, store) = populated(Checkpoints::default()).await;
    let mut lines = lines(&export_text(&store, Some("acme"), None));
    let i = record_line(&lines, 2);
    let (start, end) = (
        lines[i].find(r#","p":"#).unwrap() + 5,
        lines[i].find(r#","hash":"#).unwrap(),
    );
    lines[i] = format!("{}null{}", &lines[i][..start], &lines[i][end..]);
    let report = verify_text(&(lines.join("\n") + "\n")).unwrap();
    assert_eq!(report.chains[0].erased, 1);
    assert!(
        report.to_string().contains("1 payload(s) erased"),
        "{report}"
    );
}

#[tokio::test]
async fn dropping_a_whole_chain_or_editing_the_filter_is_detected() {
    let (_dir, store) = populated(Checkpoints::default()).await;
    let all = lines(&export_text(&store, None, None));
    let without_globex: Vec<String> = all
        .iter()
        .filter(|l| !l.contains("tenant:globex") || l.starts_with(r#"{"audit_export_end":"#))
        .cloned()
        .collect();
    assert_eq!(
        err(&without_globex),
        "chain `tenant:globex`: records 1 to 2 are missing"
    );
    let acme = lines(&export_text(&store, Some("acme"), None));
    let mut header = acme.clone();
    header[0] = header[0].replace(r#""tenant":"acme""#, r#""tenant":"acme2""#);
    assert!(err(&header).contains("header altered"));
}

#[tokio::test]
async fn a_since_export_is_anchored_by_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (audit, writer) = Auditor::start(&store).unwrap();
    audit.record(event(Some("acme"), "old")).await;
    audit.sync().await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let since = now_rfc3339();
    audit.record(event(Some("acme"), "new-1")).await;
    audit.record(event(Some("acme"), "new-2")).await;
    audit.stop().await.unwrap();
    writer.await.unwrap();
    let text = export_text(&store, Some("acme"), Some(&since));
    let report = verify_text(&text).unwrap();
    assert_eq!((report.chains[0].first, report.chains[0].last), (2, 3));
    assert!(!text.contains("\"old\""));
    // Its first record removed: the signed range names it.
    let mut lines = lines(&text);
    lines.remove(record_line(&lines, 2));
    assert_eq!(
        err(&lines),
        "chain `tenant:acme`: record 2 is missing (record 3 follows record 1)"
    );
    // Nothing after `since`: no chains at all.
    let future = export_text(&store, Some("acme"), Some("2999-01-01T00:00:00Z"));
    assert_eq!(verify_text(&future).unwrap().records(), 0);
    let bad = export(
        &store,
        &ExportFilter {
            tenant: None,
            since: Some("yesterday".into()),
        },
        &mut Vec::new(),
    );
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("is not an RFC 3339 time")
    );
}

#[tokio::test]
async fn checkpoints_every_n_records_and_at_stop_and_store_verify_finds_tampering() {
    let (dir, store) = populated(Checkpoints {
        every: 2,
        interval: std::time::Duration::from_secs(3600),
    })
    .await;
    let log = store.audit_log().unwrap();
    let seqs = |chain: &str| -> Vec<u64> { log.checkpoints(chain).map(|e| e.unwrap().0).collect() };
    assert_eq!(seqs("tenant:acme"), [2, 4]);
    assert_eq!(seqs("tenant:globex"), [2]);
    assert_eq!(seqs("broker"), [1], "signed at stop");
    assert!(verify_store(&store).is_ok());
    // Truncate the store's acme tail: the checkpoint at 4 names the missing record.
    let tree = store.tree(crate::store::embedded::AUDIT_V2_TREE).unwrap();
    let key = |seq: u64| {
        let mut k = crate::store::embedded::chain_key("tenant:acme").unwrap();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    };
    let last = tree.remove(key(4)).unwrap().unwrap();
    assert_eq!(
        verify_store(&store).unwrap_err().to_string(),
        "chain `tenant:acme`: record 4 is missing (checkpoint at seq 4)"
    );
    // Rewrite record 3 consistently (new payload, new hash) and re-link 4: the signature at 4
    // no longer matches.
    let log2: &SledAuditLog = &log;
    let prev =
        chain::stored_hash(&log2.range("tenant:acme", 2, 2).next().unwrap().unwrap().1).unwrap();
    let forged = chain::seal(
        "tenant:acme",
        3,
        "2026-01-01T00:00:00Z",
        Some("acme"),
        EventKind::Call,
        &prev,
        br#"{"kind":"call","tenant":"acme","tool":"innocent"}"#,
    )
    .unwrap();
    tree.insert(key(3), forged.line).unwrap();
    let old4 = chain::check_line(&last).unwrap();
    let relinked = chain::seal(
        "tenant:acme",
        4,
        &old4.header.time,
        Some("acme"),
        EventKind::Call,
        &forged.hash,
        br#"{"kind":"call","tenant":"acme"}"#,
    )
    .unwrap();
    tree.insert(key(4), relinked.line).unwrap();
    assert_eq!(
        verify_store(&store).unwrap_err().to_string(),
        "chain `tenant:acme`: checkpoint at seq 4: record 4 does not have the signed hash (chain rewritten)"
    );
    drop(dir);
}

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
    let store = Store::reopen(dir.path());
    assert_eq!(verify_store(&store).unwrap().records(), 2);
    // A new writer continues the chain; dropping every handle also signs and stops it.
    let (audit, writer) = Auditor::start(&store).unwrap();
    assert_eq!(
        audit
            .record_durable(Event::new(EventKind::Call))
            .await
            .unwrap(),
        3
    );
    drop(audit);
    writer.await.unwrap();
    let report = verify_store(&store).unwrap();
    assert_eq!(report.records(), 3);
    assert_eq!(report.chains[0].signed, Some(3));
}

#[tokio::test]
async fn a_legacy_v1_chain_keeps_verifying_and_is_signed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let legacy = store.tree(crate::store::AUDIT_TREE).unwrap();
    let (mut seq, mut hash) = (0, chain::GENESIS.to_owned());
    let mut v1_lines = Vec::new();
    for i in 0..3 {
        let r = v1::Record::next(
            seq,
            &hash,
            now_rfc3339(),
            event(Some("acme"), &format!("v1-{i}")),
        );
        (seq, hash) = (r.seq, r.hash.clone());
        let bytes = serde_json::to_vec(&r).unwrap();
        legacy.insert(r.seq.to_be_bytes(), bytes.clone()).unwrap();
        v1_lines.push(String::from_utf8(bytes).unwrap());
    }
    // A v1 export file still verifies (unsigned).
    let v1_report = verify_text(&(v1_lines.join("\n") + "\n")).unwrap();
    assert!(v1_report.legacy_file && v1_report.records() == 3);
    let (audit, writer) = Auditor::start(&store).unwrap();
    audit.record(event(Some("acme"), "v2")).await;
    audit.stop().await.unwrap();
    writer.await.unwrap();
    let report = verify_store(&store).unwrap();
    let legacy_report = &report.chains[0];
    assert_eq!(
        (
            legacy_report.chain.as_str(),
            legacy_report.last,
            legacy_report.signed
        ),
        ("legacy-v1", 3, Some(3))
    );
    // The full export carries the legacy lines and verifies; a tenant export does not.
    let all = export_text(&store, None, None);
    assert_eq!(verify_text(&all).unwrap().records(), 4);
    assert!(!export_text(&store, Some("acme"), None).contains("v1-0"));
    // Dropping the legacy tail is named by its checkpoint.
    legacy.remove(3u64.to_be_bytes()).unwrap();
    assert_eq!(
        verify_store(&store).unwrap_err().to_string(),
        "chain `legacy-v1`: record 3 is missing (checkpoint at seq 3)"
    );
}

/// Many more ordinary records than the writer's queue holds, from two chains, with payloads of
/// varying size: the writer drains them all (no batch window stalls a full queue), and its
/// reused buffers never leak one record's bytes into the next (every record verifies).
#[tokio::test]
async fn a_burst_larger_than_the_queue_is_all_appended_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (audit, writer) = Auditor::start(&store).unwrap();
    let total = 2 * writer::QUEUE + 300;
    for i in 0..total {
        let tenant = if i % 3 == 0 { None } else { Some("acme") };
        audit
            .record(event(tenant, &"t".repeat(1 + (i * 37) % 500)))
            .await;
    }
    audit.sync().await.unwrap();
    audit.stop().await.unwrap();
    writer.await.unwrap();
    let report = verify_store(&store).unwrap();
    assert_eq!(report.records(), total as u64);
    let text = export_text(&store, Some("acme"), None);
    assert_eq!(
        verify_text(&text).unwrap().records(),
        (total - total.div_ceil(3)) as u64
    );
}

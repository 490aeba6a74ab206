//! Unit tests: the digest binds every part of the call; the webhook signature scheme.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::Binding;
use super::webhook::{SignatureError, sign, verify};

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("test arguments are objects"),
    }
}

fn base_args() -> Map<String, Value> {
    args(json!({ "invoice": "INV-1", "amount": 100, "note": { "a": 1, "b": [1, 2] } }))
}

fn digest<'a>(arguments: &'a Map<String, Value>, f: impl FnOnce(&mut Binding<'a>)) -> String {
    let mut b = Binding {
        issuer: "https://issuer",
        subject: "alice",
        tenant: "acme",
        agent: "bot",
        mission: "finance/prod/review",
        tool: "pay_invoice",
        downstream_tool: "finance/ledger/pay_invoice",
        arguments,
        policy_version: "v1",
    };
    f(&mut b);
    b.digest().unwrap()
}

#[test]
fn the_digest_is_canonical_in_argument_order_and_number_form() {
    let a = base_args();
    let base = digest(&a, |_| {});
    assert_eq!(base, digest(&base_args(), |_| {}));
    // Same arguments written in another key order and number form (RFC 8785).
    let reordered: Map<String, Value> =
        serde_json::from_str(r#"{"note":{"b":[1,2],"a":1.0},"amount":1e2,"invoice":"INV-1"}"#)
            .unwrap();
    assert_eq!(base, digest(&reordered, |_| {}));
}

#[test]
fn the_digest_changes_with_every_bound_part() {
    let a = base_args();
    let base = digest(&a, |_| {});
    let other_args =
        args(json!({ "invoice": "INV-1", "amount": 101, "note": { "a": 1, "b": [1, 2] } }));
    let nested =
        args(json!({ "invoice": "INV-1", "amount": 100, "note": { "a": 1, "b": [2, 1] } }));
    let changed = [
        digest(&a, |b| b.issuer = "https://other"),
        digest(&a, |b| b.subject = "bob"),
        digest(&a, |b| b.tenant = "globex"),
        digest(&a, |b| b.agent = "other-bot"),
        digest(&a, |b| b.mission = "finance/prod/other"),
        digest(&a, |b| b.tool = "pay"),
        digest(&a, |b| b.downstream_tool = "finance/other/pay_invoice"),
        digest(&other_args, |_| {}),
        digest(&nested, |_| {}),
        digest(&a, |b| b.policy_version = "v2"),
    ];
    for (i, d) in changed.iter().enumerate() {
        assert_ne!(&base, d, "change {i} kept the digest");
    }
}

#[test]
fn a_signature_verifies_only_for_its_body_secret_and_time() {
    let secret = b"s3cret";
    let body = br#"{"id":"apr-1","decision":"approve","approver":"bob"}"#;
    let header = sign(secret, 1_000, body);
    assert!(header.starts_with("t=1000,v1="), "{header}");
    let window = Duration::from_secs(300);
    assert_eq!(verify(secret, Some(&header), body, 1_100, window), Ok(()));
    assert_eq!(
        verify(secret, Some(&header), br#"{"id":"apr-2"}"#, 1_100, window),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(b"other", Some(&header), body, 1_100, window),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(secret, Some(&header), body, 1_301, window),
        Err(SignatureError::Stale)
    );
    // The timestamp is signed: moving it forward breaks the signature.
    let moved = header.replace("t=1000", "t=1290");
    assert_eq!(
        verify(secret, Some(&moved), body, 1_300, window),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(secret, None, body, 1_000, window),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        verify(secret, Some("v1=abc"), body, 1_000, window),
        Err(SignatureError::Malformed)
    );
    // The documented scheme, computed independently: HMAC-SHA256 over "<t>.<body>".
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(b"1000.");
    mac.update(body);
    assert_eq!(
        header,
        format!("t=1000,v1={}", hex::encode(mac.finalize().into_bytes()))
    );
}

/// Housekeeping: a pending request past its expiry is marked expired (and audited) without
/// anyone looking at it; a finished one past `[approvals] retain` is forgotten with its call
/// index; a live one and a recently finished one stay.
#[tokio::test]
async fn the_sweep_expires_unseen_requests_and_forgets_old_finished_ones() {
    use super::{Approvals, Request, State};
    use crate::store::{ApprovalStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (audit, _writer) = crate::audit::Auditor::start(&store).unwrap();
    let requests = std::sync::Arc::new(store.approvals().unwrap());
    let settings = crate::config::ApprovalSettings {
        retain: Duration::from_secs(3600),
        ..Default::default()
    };
    let approvals = Approvals::new(requests.clone(), settings, audit, None);
    let now = crate::authn::unix_now();
    let put = |id: &str, state: State, expires_at: u64| {
        let r = Request {
            id: id.into(),
            state,
            call: format!("call-{id}"),
            tenant: "acme".into(),
            issuer: "https://issuer".into(),
            subject: "alice".into(),
            agent: "bot".into(),
            mission: "finance/prod/review".into(),
            tool: "pay_invoice".into(),
            downstream_tool: "finance/ledger/pay_invoice".into(),
            arguments: "{}".into(),
            policy_version: "v1".into(),
            created_at: expires_at.saturating_sub(60),
            expires_at,
            decided_by: None,
            decided_at: None,
            reason: None,
            used_at: None,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert!(requests.compare_and_swap(id, None, &bytes).unwrap());
        assert!(requests.claim_latest(&r.call, None, id).unwrap());
    };
    put("unseen", State::Pending, now - 10);
    put("live", State::Pending, now + 600);
    put("used-long-ago", State::Used, now - 2 * 3600);
    put("denied-recently", State::Denied, now - 60);
    assert_eq!(approvals.sweep().await.unwrap(), (1, 1));
    let state = |id: &str| {
        requests
            .get(id)
            .unwrap()
            .map(|b| serde_json::from_slice::<Request>(&b).unwrap().state)
    };
    assert_eq!(state("unseen"), Some(State::Expired));
    assert_eq!(state("live"), Some(State::Pending));
    assert_eq!(state("used-long-ago"), None);
    assert_eq!(requests.latest_for("call-used-long-ago").unwrap(), None);
    assert_eq!(state("denied-recently"), Some(State::Denied));
    assert_eq!(
        requests.latest_for("call-live").unwrap().as_deref(),
        Some("live")
    );
    // Nothing more to do on a second pass.
    assert_eq!(approvals.sweep().await.unwrap(), (0, 0));
}

/// A request the webhook never takes (every attempt fails) is audited as undelivered, with why
/// and what to do; the request itself stays as it was (pending, decidable with the CLI).
#[tokio::test]
async fn a_request_the_webhook_never_takes_is_audited_as_undelivered() {
    use super::{Request, State};
    use crate::store::{AuditLog, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (audit, _writer) = crate::audit::Auditor::start(&store).unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let notifier = super::webhook::Notifier::start(
        format!("http://127.0.0.1:{port}/hook"),
        secrecy::SecretString::from("secret"),
        "http://127.0.0.1:8080/approvals/webhook".into(),
        audit.clone(),
    );
    let now = crate::authn::unix_now();
    let request = Request {
        id: "apr-1".into(),
        state: State::Pending,
        call: "call-1".into(),
        tenant: "acme".into(),
        issuer: "https://issuer".into(),
        subject: "alice".into(),
        agent: "bot".into(),
        mission: "finance/prod/review".into(),
        tool: "pay_invoice".into(),
        downstream_tool: "finance/ledger/pay_invoice".into(),
        arguments: "{}".into(),
        policy_version: "v1".into(),
        created_at: now,
        expires_at: now + 600,
        decided_by: None,
        decided_at: None,
        reason: None,
        used_at: None,
    };
    let mut template = crate::audit::Event::new(crate::audit::EventKind::Approval);
    template.tenant = Some("acme".into());
    template.approval = Some("apr-1".into());
    template.outcome = Some("webhook_undelivered".into());
    notifier.notify(&request, template);
    let log = store.audit_log().unwrap();
    let mut found = None;
    // Three attempts, 1 s and 2 s apart.
    for _ in 0..100 {
        audit.sync().await.unwrap();
        found = log
            .range("tenant:acme", 1, u64::MAX)
            .map(|e| String::from_utf8(e.unwrap().1).unwrap())
            .find(|line| line.contains("webhook_undelivered"));
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = found.expect("no webhook_undelivered record");
    assert!(line.contains("\"approval\":\"apr-1\""), "{line}");
    assert!(line.contains("after 3 attempts"), "{line}");
    assert!(line.contains("unreachable"), "{line}");
    assert!(line.contains("mandate approvals"), "{line}");
}

//! Human approval bound to the exact call, and `[limits]` quotas: the real broker, the real
//! sled store, the real `mandate approvals` CLI, a real HTTP receiver for the signed webhook.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RoleClient;
use serde_json::{Value, json};

use crate::common::*;

const MISSION: &str = "finance/prod/review";

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = arguments.as_object().cloned();
    p
}

fn approve_invoice(id: &str) -> CallToolRequestParams {
    call("approve_invoice", json!({ "invoice_id": id }))
}

/// The ledger with `approve_invoice` needing an approver, the mission, and `settings` as the
/// `[approvals]` section.
fn workspace(approvals: &str, limits: &str) -> Workspace {
    let ws = Workspace::new();
    ws.ledger(&[]);
    let manifest = ws.path().join("tool-manifests/finance/ledger.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "name = \"approve_invoice\"\neffect = \"write\"\n",
        "name = \"approve_invoice\"\neffect = \"write\"\napproval = \"approver\"\n",
    );
    assert!(text.contains("approval = \"approver\""));
    std::fs::write(&manifest, text).unwrap();
    ws.mission(
        MISSION,
        r#""finance/ledger/get_invoice", "finance/ledger/approve_invoice""#,
        limits,
    );
    ws.write("mandate.toml", &format!("[approvals]\n{approvals}\n"));
    ws.pin();
    ws
}

type Client = rmcp::service::RunningService<RoleClient, ()>;

async fn connect(ws: &Workspace, server: &Server) -> Client {
    client(&server.mission_url(MISSION), &ws.token(Some(MISSION))).await
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The approval id a pending result names.
fn pending_id(r: &CallToolResult) -> String {
    let t = text(r);
    assert_eq!(r.is_error, Some(true), "expected a pending result: {t}");
    assert!(t.starts_with("approval required"), "{t}");
    let start = t
        .find("apr-")
        .unwrap_or_else(|| panic!("no approval id in: {t}"));
    let id: String = t[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    assert!(
        t.contains(&format!("mandate approvals approve {id}")),
        "{t}"
    );
    id
}

fn cli(ws: &Workspace, args: &[&str]) -> (bool, String, String) {
    let out = ws.mandate(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn approval_outcomes(ws: &Workspace, id: &str) -> Vec<String> {
    audit_records(ws)
        .into_iter()
        .filter(|r| r["kind"] == "approval" && r["approval"] == id)
        .map(|r| r["outcome"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_approved_call_runs_once_and_other_arguments_need_their_own_approval() {
    let ws = workspace("wait = \"300ms\"", "");
    let server = ws.serve();
    let client = connect(&ws, &server).await;

    let first = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    let id = pending_id(&first);
    // Waiting again for the same undecided call names the same request.
    let again = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert_eq!(pending_id(&again), id);

    let (ok, listed, err) = cli(&ws, &["approvals", "list"]);
    assert!(ok, "{err}");
    assert!(
        listed.contains(&id) && listed.contains("pending"),
        "{listed}"
    );
    assert!(listed.contains(r#"{"invoice_id":"INV-1001"}"#), "{listed}");

    let (ok, out, err) = cli(
        &ws,
        &["approvals", "approve", &id, "--reason", "PO matches"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("approved"), "{out}");
    // Decided requests cannot be decided again.
    let (ok, _, err) = cli(&ws, &["approvals", "deny", &id]);
    assert!(!ok);
    assert!(err.contains("already approved"), "{err}");

    let ran = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert_eq!(ran.is_error, Some(false), "{}", text(&ran));
    // Single use: the identical call again needs a new approval.
    let second = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    let id2 = pending_id(&second);
    assert_ne!(id2, id);
    // Changed arguments: a request of their own.
    let other = client.call_tool(approve_invoice("INV-1002")).await.unwrap();
    let id3 = pending_id(&other);
    assert!(id3 != id && id3 != id2);
    // Tools without approval are untouched.
    let read = client
        .call_tool(call("get_invoice", json!({ "invoice_id": "INV-1001" })))
        .await
        .unwrap();
    assert_eq!(read.is_error, Some(false), "{}", text(&read));

    assert_eq!(
        approval_outcomes(&ws, &id),
        ["requested", "approved", "used"],
        "every step of the request is audited"
    );
    let calls: Vec<Value> = audit_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "call" && r["approval"] == id.as_str())
        .collect();
    assert!(
        calls.iter().filter(|r| r["outcome"] == "ok").count() == 1,
        "exactly one call ran on the approval: {calls:?}"
    );
    client.cancel().await.unwrap();
    server.stop();
}

#[tokio::test]
async fn a_denied_request_refuses_the_call_with_the_reason() {
    let ws = workspace("wait = \"0s\"", "");
    let server = ws.serve();
    let client = connect(&ws, &server).await;
    let id = pending_id(&client.call_tool(approve_invoice("INV-1001")).await.unwrap());
    let (ok, _, err) = cli(
        &ws,
        &["approvals", "deny", &id, "--reason", "duplicate invoice"],
    );
    assert!(ok, "{err}");
    let r = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    let t = text(&r);
    assert_eq!(r.is_error, Some(true));
    assert!(
        t.contains(&format!("approval request `{id}` was denied"))
            && t.contains("duplicate invoice"),
        "{t}"
    );
    assert_eq!(approval_outcomes(&ws, &id), ["requested", "denied"]);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_waiting_call_proceeds_when_approved_while_it_waits() {
    let ws = workspace("wait = \"20s\"", "");
    let server = ws.serve();
    let client = Arc::new(connect(&ws, &server).await);
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.call_tool(approve_invoice("INV-1001")).await })
    };
    // The request appears while the call waits; approving it lets the call through.
    let mut id = None;
    for _ in 0..100 {
        let (_, out, _) = cli(&ws, &["approvals", "list", "--json"]);
        if let Some(line) = out.lines().next() {
            let r: Value = serde_json::from_str(line).unwrap();
            id = r["id"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.expect("the waiting call's request is listed");
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id]);
    assert!(ok, "{err}");
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.is_error, Some(false), "{}", text(&r));
}

#[tokio::test]
async fn an_unused_approval_expires() {
    // 3 s: the approval below (a CLI process) must land before the request expires even on a
    // loaded machine (1 s was seen to be too short while the whole suite ran).
    let ws = workspace("wait = \"0s\"\nttl = \"3s\"", "");
    let server = ws.serve();
    let client = connect(&ws, &server).await;
    let id = pending_id(&client.call_tool(approve_invoice("INV-1001")).await.unwrap());
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id]);
    assert!(ok, "{err}");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    let t = text(&r);
    assert_eq!(r.is_error, Some(true));
    assert!(
        t.contains(&format!("approval request `{id}` expired")),
        "{t}"
    );
    // The next identical call asks anew.
    let fresh = pending_id(&client.call_tool(approve_invoice("INV-1001")).await.unwrap());
    assert_ne!(fresh, id);
    assert_eq!(
        approval_outcomes(&ws, &id),
        ["requested", "approved", "expired"]
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn separation_of_duties_the_requester_and_non_approvers_cannot_decide() {
    let ws = workspace("wait = \"0s\"", "");
    let server = ws.serve();
    let client = connect(&ws, &server).await;
    let id = pending_id(&client.call_tool(approve_invoice("INV-1001")).await.unwrap());

    // The requester, even with the approver role.
    let alice = token_with_roles(&ws, "alice@acme.example", &["approver"]);
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id, "--token", &alice]);
    assert!(!ok);
    assert!(err.contains("separation of duties"), "{err}");
    // Someone without the approver role.
    let carol = token_with_roles(&ws, "carol@acme.example", &["clerk"]);
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id, "--token", &carol]);
    assert!(!ok);
    assert!(err.contains("only users with the `approver` role"), "{err}");
    let (ok, _, err) = cli(&ws, &["approvals", "list", "--token", &carol]);
    assert!(!ok, "a non-approver may not list requests either");
    assert!(err.contains("approver"), "{err}");
    // A call still waits: nothing was decided.
    let still = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert_eq!(pending_id(&still), id);

    // Another approver of the tenant may.
    let bob = token_with_roles(&ws, "bob@acme.example", &["approver"]);
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id, "--token", &bob]);
    assert!(ok, "{err}");
    let r = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{}", text(&r));
    let decided = audit_records(&ws)
        .into_iter()
        .find(|r| {
            r["kind"] == "approval" && r["approval"] == id.as_str() && r["outcome"] == "approved"
        })
        .unwrap();
    assert!(
        decided["detail"]
            .as_str()
            .unwrap()
            .contains("bob@acme.example"),
        "the approver is recorded: {decided}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn an_approval_survives_a_broker_restart() {
    let ws = workspace("wait = \"0s\"", "");
    // The same address both times: the embedded issuer (part of the call's digest) stays the same.
    let listen = format!("127.0.0.1:{}", free_port());
    let server = ws.serve_on(&listen);
    let client = connect(&ws, &server).await;
    let id = pending_id(&client.call_tool(approve_invoice("INV-1001")).await.unwrap());
    client.cancel().await.unwrap();
    server.stop();

    // With the broker stopped the CLI decides in the store directly.
    let (ok, listed, err) = cli(&ws, &["approvals", "list"]);
    assert!(ok, "{err}");
    assert!(listed.contains(&id), "{listed}");
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id]);
    assert!(ok, "{err}");

    let server = ws.serve_on(&listen);
    let client = connect(&ws, &server).await;
    let r = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{}", text(&r));
    client.cancel().await.unwrap();
    server.stop();
}

/// What the webhook receiver saw: each request's signature header and body.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook receiver: an axum server recording each request's signature header and body.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let sig = headers
                        .get("x-mandate-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().unwrap().push((sig, body.to_vec()));
                    "ok"
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// The receiver's side of the documented scheme: HMAC-SHA256 over `<t>.<body>`, hex.
fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn the_webhook_is_signed_and_takes_signed_decisions() {
    const SECRET: &str = "0123456789abcdef-test-secret";
    let (url, seen) = receiver().await;
    let ws = workspace(
        &format!(
            "wait = \"0s\"\nwebhook_url = \"{url}\"\nwebhook_secret_env = \"TEST_HOOK_SECRET\""
        ),
        "",
    );
    let server = ws.serve_with("127.0.0.1:0", &[("TEST_HOOK_SECRET", SECRET)]);
    let client = connect(&ws, &server).await;
    let id = pending_id(&client.call_tool(approve_invoice("INV-1001")).await.unwrap());

    eventually(10, "the webhook request", || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let (header, body) = seen.lock().unwrap()[0].clone();
    // Verify as a receiver would: recompute over the timestamp and the exact body bytes.
    let t: u64 = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(now().abs_diff(t) < 60);
    assert_eq!(header, signature(SECRET, t, &body), "signature verifies");
    let request: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(request["type"], "approval.requested");
    assert_eq!(request["id"], id.as_str());
    assert_eq!(request["tool"], "approve_invoice");
    assert_eq!(request["requester"]["subject"], "alice@acme.example");
    assert_eq!(request["arguments"], json!({ "invoice_id": "INV-1001" }));
    let decide_url = request["decide_url"].as_str().unwrap().to_owned();
    assert_eq!(decide_url, format!("{}/approvals/webhook", server.url));

    let http = reqwest::Client::new();
    let post = |body: Vec<u8>, sig: String| {
        http.post(&decide_url)
            .header("content-type", "application/json")
            .header("X-Mandate-Signature", sig)
            .body(body)
            .send()
    };
    let decision = |approver: &str| {
        serde_json::to_vec(&json!({
            "id": id, "decision": "approve", "approver": approver, "reason": "CHG0001 approved"
        }))
        .unwrap()
    };
    // A bad signature, a stale one, and the requester approving their own call: refused.
    let good = decision("bob@acme.example");
    let r = post(good.clone(), signature("wrong-secret", now(), &good))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(good.clone(), signature(SECRET, now() - 3600, &good))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(good.clone(), String::new()).await.unwrap();
    assert_eq!(r.status(), 401);
    let own = decision("alice@acme.example");
    let r = post(own.clone(), signature(SECRET, now(), &own))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let still = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert_eq!(pending_id(&still), id, "refused decisions changed nothing");

    let r = post(good.clone(), signature(SECRET, now(), &good))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Replayed inside the window: the request is no longer pending.
    let r = post(good.clone(), signature(SECRET, now(), &good))
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    let ran = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert_eq!(ran.is_error, Some(false), "{}", text(&ran));
    let decided = audit_records(&ws)
        .into_iter()
        .find(|r| r["approval"] == id.as_str() && r["outcome"] == "approved")
        .unwrap();
    assert!(
        decided["detail"]
            .as_str()
            .unwrap()
            .contains("bob@acme.example (webhook)"),
        "{decided}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_quota_refuses_with_a_retry_hint_and_is_audited() {
    let ws = workspace("wait = \"0s\"", "[limits]\nper_tool = 2\nper_agent = 100");
    let server = ws.serve();
    let client = connect(&ws, &server).await;
    let get = || call("get_invoice", json!({ "invoice_id": "INV-1001" }));
    for _ in 0..2 {
        let r = client.call_tool(get()).await.unwrap();
        assert_eq!(r.is_error, Some(false), "{}", text(&r));
    }
    let refused = client.call_tool(get()).await.unwrap_err();
    let rmcp::ServiceError::McpError(e) = refused else {
        panic!("expected a JSON-RPC error, got {refused:?}");
    };
    assert_eq!(e.code.0, -32029);
    assert!(
        e.message
            .contains("the tool `get_invoice` limit of 2 calls per minute")
            && e.message.contains("retry after"),
        "{}",
        e.message
    );
    let retry = e.data.as_ref().unwrap()["retryAfter"].as_u64().unwrap();
    assert!(
        (1..=30).contains(&retry),
        "2 per minute refills one every 30s: {retry}"
    );
    // Another tool has its own bucket.
    let other = client.call_tool(approve_invoice("INV-1001")).await.unwrap();
    assert!(
        text(&other).starts_with("approval required"),
        "{}",
        text(&other)
    );
    // A caller hammering the used-up limit does not flood the audit log: the first refusal is
    // recorded in full, the rest counted (written at the window's end or at shutdown).
    for _ in 0..3 {
        assert!(client.call_tool(get()).await.is_err());
    }
    client.cancel().await.unwrap();
    server.stop();
    let records = audit_records(&ws);
    let limited: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 1, "{records:?}");
    assert_eq!(limited[0]["kind"], "denial");
    assert_eq!(limited[0]["policy"], "mandate:quota");
    assert!(
        limited[0]["detail"]
            .as_str()
            .unwrap()
            .contains("retry after")
    );
    let counted: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] == "aggregated" && r["policy"] == "mandate:quota")
        .collect();
    assert_eq!(counted.len(), 1, "{records:?}");
    assert!(
        counted[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("3 more `rate_limited: tool `get_invoice``"),
        "{}",
        counted[0]["detail"]
    );
}

/// A client that declares elicitation and answers every confirmation with `accept`.
#[derive(Clone)]
struct User {
    accept: bool,
    asked: Arc<Mutex<Vec<String>>>,
}

impl rmcp::ClientHandler for User {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::new(
            rmcp::model::ClientCapabilities::builder()
                .enable_elicitation()
                .build(),
            rmcp::model::Implementation::new("user-test", "1"),
        )
    }

    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _ctx: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        self.asked
            .lock()
            .unwrap()
            .push(serde_json::to_string(&request).unwrap());
        let action = if self.accept {
            rmcp::model::ElicitationAction::Accept
        } else {
            rmcp::model::ElicitationAction::Decline
        };
        Ok(rmcp::model::ElicitResult::new(action).with_content(json!({ "confirm": self.accept })))
    }
}

#[tokio::test]
async fn approval_by_the_user_asks_in_their_own_client() {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let ws = workspace("wait = \"0s\"", "");
    let manifest = ws.path().join("tool-manifests/finance/ledger.toml");
    let edited = std::fs::read_to_string(&manifest).unwrap().replace(
        "name = \"get_invoice\"\neffect = \"read\"\n",
        "name = \"get_invoice\"\neffect = \"read\"\napproval = \"user\"\n",
    );
    assert!(edited.contains("approval = \"user\""));
    std::fs::write(&manifest, edited).unwrap();
    let server = ws.serve();
    let url = server.mission_url(MISSION);
    let token = ws.token(Some(MISSION));
    let get = || call("get_invoice", json!({ "invoice_id": "INV-1001" }));
    for accept in [true, false] {
        let asked = Arc::default();
        let config =
            StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token.clone());
        let user = User {
            accept,
            asked: Arc::clone(&asked),
        }
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
        let r = user.call_tool(get()).await.unwrap();
        let question = asked.lock().unwrap().clone();
        assert_eq!(question.len(), 1, "the user is asked once");
        assert!(
            question[0].contains("get_invoice") && question[0].contains("INV-1001"),
            "the question names the tool and arguments: {question:?}"
        );
        if accept {
            assert_eq!(r.is_error, Some(false), "{}", text(&r));
        } else {
            assert_eq!(r.is_error, Some(true));
            assert!(
                text(&r).contains("the user declined this call"),
                "{}",
                text(&r)
            );
        }
        user.cancel().await.unwrap();
    }
    // A client without elicitation cannot confirm: a clear error, nothing runs.
    let plain = client(&url, &token).await;
    let r = plain.call_tool(get()).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(
        text(&r).contains("does not support MCP elicitation"),
        "{}",
        text(&r)
    );
    let outcomes: Vec<String> = audit_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| r["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        outcomes,
        ["user_confirmed", "user_declined", "user_unreachable"]
    );
    plain.cancel().await.unwrap();
}

#[test]
fn approvals_settings_are_validated_with_positions() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(MISSION, r#""finance/ledger/get_invoice""#, "");
    ws.pin();
    ws.write(
        "mandate.toml",
        "[approvals]\nttl = \"0s\"\nwait = \"soon\"\nwebhook_url = \"ftp://x\"\napprover_role = \"\"\nwebhok_url = \"x\"\n",
    );
    let out = ws.mandate(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "mandate.toml:2:7: `ttl` `0s` must be between 1s and 7days",
        "mandate.toml:3:8: invalid duration `soon` in `wait` (write e.g. `30s` or `1h`)",
        "mandate.toml:4:15: `webhook_url` must be an http(s) URL, not `ftp://x`",
        "mandate.toml:5:17: `approver_role` must not be empty (e.g. `approver`)",
        "mandate.toml:6:1: unknown field `webhok_url` in `[approvals]` (did you mean `webhook_url`?)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    // `approval = "user"` and `"approver"` are accepted in a manifest; anything else is not.
    ws.write("mandate.toml", "");
    let manifest = ws.path().join("tool-manifests/finance/ledger.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "name = \"get_invoice\"\neffect = \"read\"\n",
        "name = \"get_invoice\"\neffect = \"read\"\napproval = \"manager\"\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let out = ws.mandate(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown approval `manager` (expected one of none, approver, user)"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_webhook_without_its_secret() {
    let ws = workspace(
        "webhook_url = \"http://127.0.0.1:9/hook\"\nwebhook_secret_env = \"MANDATE_TEST_UNSET_SECRET\"",
        "",
    );
    let out = ws.mandate(&["serve", "--listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "the environment variable `MANDATE_TEST_UNSET_SECRET` holding its secret is not"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_permit_marked_approval_approver_holds_large_payments_until_approved_once() {
    // No approval in the manifest: the mission's policy asks for one above a threshold.
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.write(
        &format!("missions/{MISSION}.cedar"),
        r#"@id("small") permit (principal, action == Action::"call:pay_invoice", resource) when { context.args.amount_cents <= 1000000 };
@id("large") @approval("approver") permit (principal, action == Action::"call:pay_invoice", resource) when { context.args.amount_cents > 1000000 };
"#,
    );
    ws.mission(MISSION, r#""finance/ledger/pay_invoice""#, "");
    ws.write("mandate.toml", "[approvals]\nwait = \"300ms\"\n");
    ws.pin();
    let server = ws.serve();
    let client = connect(&ws, &server).await;
    // The ledger's approved invoices: INV-1005 (215 075 cents), INV-1003 (1 250 000 cents).
    let pay = |amount: u64| {
        let invoice = if amount > 1_000_000 {
            "INV-1003"
        } else {
            "INV-1005"
        };
        call(
            "pay_invoice",
            json!({ "invoice_id": invoice, "amount_cents": amount }),
        )
    };

    let small = client.call_tool(pay(215_075)).await.unwrap();
    assert_eq!(small.is_error, Some(false), "{}", text(&small));
    let large = client.call_tool(pay(1_250_000)).await.unwrap();
    let id = pending_id(&large);
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id, "--reason", "CFO ok"]);
    assert!(ok, "{err}");
    let ran = client.call_tool(pay(1_250_000)).await.unwrap();
    assert_eq!(ran.is_error, Some(false), "{}", text(&ran));
    // Once: the identical call again needs a new approval.
    let again = client.call_tool(pay(1_250_000)).await.unwrap();
    assert_ne!(pending_id(&again), id);
    client.cancel().await.unwrap();
    server.stop();
    let paid: Vec<Value> = audit_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "pay_invoice" && r["outcome"] == "ok")
        .collect();
    assert_eq!(
        paid.len(),
        2,
        "the small one and the approved one: {paid:#?}"
    );
    assert_eq!(
        paid[1]["policy"],
        format!("{MISSION}.cedar:large"),
        "{}",
        paid[1]
    );
    assert!(approval_outcomes(&ws, &id).contains(&"approved".to_owned()));
}

#[tokio::test]
async fn a_permit_s_approval_by_the_user_does_not_lower_the_manifest_s_approver() {
    // The manifest says `approve_invoice` needs an approver; the permit asks only the user.
    // The stricter one holds: a human approver, through `mandate approvals approve`.
    let ws = workspace("wait = \"300ms\"", "");
    ws.write(
        &format!("missions/{MISSION}.cedar"),
        "@id(\"ask-user\") @approval(\"user\") permit (principal, action, resource);\n",
    );
    let server = ws.serve();
    let client = connect(&ws, &server).await;
    let first = client.call_tool(approve_invoice("INV-1002")).await.unwrap();
    // Not an elicitation to the user (this client cannot answer one): an approver's request.
    let id = pending_id(&first);
    let (ok, _, err) = cli(&ws, &["approvals", "approve", &id]);
    assert!(ok, "{err}");
    let ran = client.call_tool(approve_invoice("INV-1002")).await.unwrap();
    assert_eq!(ran.is_error, Some(false), "{}", text(&ran));
    client.cancel().await.unwrap();
    server.stop();
}

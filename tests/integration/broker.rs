//! End-to-end behaviour of the broker with the sample ledger downstream and an rmcp client:
//! the real binary, real child processes, a real sled store in a temp dir.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

use crate::common::*;

fn args(v: Value) -> Option<serde_json::Map<String, Value>> {
    v.as_object().cloned()
}

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = args(arguments);
    p
}

async fn tool_names(
    client: &rmcp::service::RunningService<RoleClient, impl ClientHandler>,
) -> Vec<String> {
    client
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect()
}

fn reasoned(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut p = call(name, arguments);
    let mut meta = rmcp::model::RequestMetaObject::default();
    meta.insert(
        "io.mandate/reasoning".into(),
        json!({"goal": "pay approved invoices", "step": "approve", "rationale": "matches PO", "confidence": 0.9}),
    );
    meta.set_traceparent("00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
    p.meta = Some(meta);
    p
}

/// Serves `ws` and connects a client to `finance/prod/review` with a fresh token.
async fn review(ws: &Workspace) -> (Server, rmcp::service::RunningService<RoleClient, ()>) {
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let client = client(&server.mission_url("finance/prod/review"), &token).await;
    (server, client)
}

/// The standard workspace: ledger + mission `finance/prod/review`.
fn ledger_ws(env: &[(&str, &str)], tools: &str, extra: &str) -> Workspace {
    let ws = Workspace::new();
    ws.ledger(env);
    ws.mission("finance/prod/review", tools, extra);
    ws.pin();
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_list_is_exactly_the_mission_toolset_with_pinned_definitions() {
    let ws = ledger_ws(
        &[],
        r#""finance/ledger/get_invoice", { tool = "finance/ledger/get_supplier", as = "lookup_supplier" }"#,
        "",
    );
    let (server, client) = review(&ws).await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["get_invoice", "lookup_supplier"]);

    // Definitions are the pinned ones (renamed where the mission says so).
    let lock: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path().join("tool-manifests/finance/ledger.lock.json"))
            .unwrap(),
    )
    .unwrap();
    let pinned = lock["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "get_supplier")
        .unwrap();
    let mut expected = pinned["definition"].clone();
    expected["name"] = json!("lookup_supplier");
    let served =
        serde_json::to_value(tools.iter().find(|t| t.name == "lookup_supplier").unwrap()).unwrap();
    assert_eq!(served, expected);

    let r = client
        .call_tool(call("lookup_supplier", json!({"supplier_id": "SUP-001"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    assert_eq!(r.structured_content.unwrap()["id"], "SUP-001");

    // A tool of the same server that the mission does not expose fails exactly like a tool
    // that does not exist anywhere.
    let hidden = client
        .call_tool(call("list_invoices", json!({})))
        .await
        .unwrap_err()
        .to_string();
    let unknown = client
        .call_tool(call("no_such_tool", json!({})))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        hidden.replace("list_invoices", "X"),
        unknown.replace("no_such_tool", "X")
    );
    assert!(hidden.contains("tool not found"), "{hidden}");
    let original = client
        .call_tool(call("get_supplier", json!({"supplier_id": "SUP-001"})))
        .await;
    assert!(
        original.is_err(),
        "the original name of a renamed tool is not exposed"
    );
    client.cancel().await.unwrap();
    server.stop();

    let records = audit_records(&ws);
    let denial = records
        .iter()
        .find(|r| r["kind"] == "denial" && r["tool"] == "list_invoices")
        .unwrap();
    assert_eq!(denial["detail"], "tool is not in the mission's toolset");
    assert_eq!(denial["subject"], "alice@acme.example");
    let ok = records
        .iter()
        .find(|r| r["kind"] == "call" && r["tool"] == "lookup_supplier")
        .unwrap();
    assert_eq!(ok["downstream_tool"], "finance/ledger/get_supplier");
    assert_eq!(ok["outcome"], "ok");
    assert!(ok["output_digest"].as_str().unwrap().len() == 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_arguments_never_reach_the_downstream() {
    // The ledger exits after answering its first call. Three invalid calls then one valid
    // call: if an invalid one had reached it, the ledger would have restarted (logged).
    let ws = ledger_ws(
        &[("LEDGER_CRASH_AFTER", "1")],
        r#""finance/ledger/get_invoice""#,
        "",
    );
    let (server, client) = review(&ws).await;
    let cases = [
        (json!({"invoice_id": "INV-12"}), "/invoice_id"),
        // A missing property is named itself (`/invoice_id` is required), not its parent.
        (json!({}), "/invoice_id"),
        (json!({"invoice_id": "INV-1001", "extra": 1}), "/"),
    ];
    for (arguments, field) in cases {
        let e = client
            .call_tool(call("get_invoice", arguments))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("argument `{field}`")), "{e}");
        assert!(
            e.contains("invalid arguments for tool `get_invoice`"),
            "{e}"
        );
    }
    let r = client
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    assert!(
        !server.log().contains("restarting"),
        "an invalid call reached the downstream:\n{}",
        server.log()
    );
    client.cancel().await.unwrap();
    server.stop();
    let records = audit_records(&ws);
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "validation_failure")
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_required_and_checked() {
    let ws = ledger_ws(&[], r#""finance/ledger/get_invoice""#, "");
    ws.permit_all("hr/prod/other");
    ws.write(
        "missions/hr/prod/other.toml",
        "description = \"x\"\ntenant = \"globex\"\nowner = \"o\"\nexpires = 2099-01-01\nagents = [\"bot\"]\ntools = []\n",
    );
    // A mission for `rogue-bot`, so that a broker-wide token can be minted for it.
    ws.permit_all("finance/prod/rogue");
    ws.write(
        "missions/finance/prod/rogue.toml",
        "description = \"x\"\ntenant = \"acme\"\nowner = \"o\"\nexpires = 2099-01-01\nagents = [\"rogue-bot\"]\ntools = []\n",
    );
    ws.ledger(&[]); // manifest must allow env prod: it does
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let http = reqwest::Client::new();
    let post = |token: Option<String>| {
        let mut r = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // No token: 401, resource_metadata, no error code (RFC 6750).
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/finance/prod/review\"",
            server.url
        )
    );
    // The metadata document names the resource and the issuer.
    let prm: Value = http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp/finance/prod/review",
            server.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], url);
    assert_eq!(prm["authorization_servers"], json!([server.url]));
    // Garbage and tampered tokens: 401 invalid_token.
    let r = post(Some("garbage".into())).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    let good = ws.token(Some("finance/prod/review"));
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = "eyJzdWIiOiJtYWxsb3J5In0";
    parts[1] = forged;
    assert_eq!(post(Some(parts.join("."))).await.unwrap().status(), 401);
    // A token for another mission's resource is not accepted here.
    let other = ws.token_for("bob@globex.example", "globex", "bot", Some("hr/prod/other"));
    assert_eq!(post(Some(other)).await.unwrap().status(), 401);
    // A broker-wide token of another tenant or agent: 403.
    let wrong_tenant = ws.token_for("bob@globex.example", "globex", "bot", None);
    assert_eq!(post(Some(wrong_tenant)).await.unwrap().status(), 403);
    let wrong_agent = ws.token_for("alice@acme.example", "acme", "rogue-bot", None);
    assert_eq!(post(Some(wrong_agent)).await.unwrap().status(), 403);
    // The right token works.
    assert_eq!(post(Some(good)).await.unwrap().status(), 200);
    // A token in the query string is ignored.
    let q = http
        .post(format!("{url}?access_token={}", ws.token(None)))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 401);
    server.stop();
    let records = audit_records(&ws);
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "auth_failure")
            .count()
            >= 6
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn write_calls_need_reasoning_and_are_durable_before_the_downstream() {
    let ws = ledger_ws(
        &[],
        r#""finance/ledger/approve_invoice", "finance/ledger/pay_invoice""#,
        "require_reasoning = [\"write\", \"irreversible\"]",
    );
    let (server, client) = review(&ws).await;
    let e = client
        .call_tool(call("approve_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("requires reasoning for `write` tools"),
        "{e}"
    );
    let r = client
        .call_tool(reasoned(
            "approve_invoice",
            json!({"invoice_id": "INV-1001"}),
        ))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let r = client
        .call_tool(reasoned(
            "pay_invoice",
            json!({"invoice_id": "INV-1001", "amount_cents": 482050}),
        ))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    // Readable while the server runs (through the admin API).
    let records = audit_records(&ws);
    let seq_of = |kind: &str, tool: &str| {
        records
            .iter()
            .find(|r| r["kind"] == kind && r["tool"] == tool)
            .map(|r| r["seq"].as_u64().unwrap())
    };
    let intent = seq_of("call_intent", "pay_invoice").expect("durable intent record");
    let done = seq_of("call", "pay_invoice").expect("outcome record");
    assert!(intent < done);
    let rec = records
        .iter()
        .find(|r| r["kind"] == "call" && r["tool"] == "pay_invoice")
        .unwrap();
    assert_eq!(rec["reasoning"]["rationale"], "matches PO");
    assert_eq!(rec["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(rec["effect"], "irreversible");
    assert_eq!(rec["decision"], "allow");
    // The intent and its completion are linked by the call id, unique per call.
    let call_id = |kind: &str, tool: &str| {
        records
            .iter()
            .find(|r| r["kind"] == kind && r["tool"] == tool)
            .and_then(|r| r["call_id"].as_str())
            .map(str::to_owned)
    };
    let paid = call_id("call", "pay_invoice").expect("call id on the completion");
    assert_eq!(call_id("call_intent", "pay_invoice"), Some(paid.clone()));
    assert_ne!(call_id("call", "approve_invoice"), Some(paid));
    // Filters work through the running server's admin API too.
    assert!(export_records(&ws, &["--tenant", "globex"]).is_empty());
    assert_eq!(
        export_records(&ws, &["--tenant", "acme"]).len(),
        records.iter().filter(|r| r["tenant"] == "acme").count()
    );
    let verify = ws.mandate(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    client.cancel().await.unwrap();
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn drifted_definitions_are_quarantined_until_pinned_again() {
    let ws = ledger_ws(
        &[],
        r#""finance/ledger/get_invoice", "finance/ledger/list_invoices""#,
        "",
    );
    // The downstream changes behind our back (a "rug pull"): same lock, drifted server.
    ws.ledger(&[("LEDGER_VARIANT", "drifted")]);
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let client = client(&server.mission_url("finance/prod/review"), &token).await;
    let names = tool_names(&client).await;
    assert_eq!(names, ["list_invoices"]);
    let e = client
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tool not found"), "{e}");
    client.cancel().await.unwrap();
    server.stop();
    let records = audit_records(&ws);
    let drift = records
        .iter()
        .find(|r| r["kind"] == "drift")
        .expect("drift audited");
    assert_eq!(
        drift["detail"],
        "changed: get_invoice; added: export_all; quarantined until `mandate pin finance/ledger` after review"
    );
    let denial = records
        .iter()
        .find(|r| r["kind"] == "denial" && r["tool"] == "get_invoice")
        .unwrap();
    assert!(denial["detail"].as_str().unwrap().contains("quarantined"));

    // After review, pinning again accepts the change.
    ws.pin();
    let server = ws.serve();
    // A new port is a new issuer URL: mint a new token.
    let token = ws.token(Some("finance/prod/review"));
    let client = crate::common::client(&server.mission_url("finance/prod/review"), &token).await;
    let names = tool_names(&client).await;
    assert_eq!(names, ["get_invoice", "list_invoices"]);
    client.cancel().await.unwrap();
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_downstream_is_restarted() {
    let ws = ledger_ws(
        &[("LEDGER_CRASH_AFTER", "2")],
        r#""finance/ledger/get_invoice""#,
        "",
    );
    let (server, client) = review(&ws).await;
    let mut ok = 0;
    let mut failed = 0;
    for _ in 0..8 {
        match client
            .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
            .await
        {
            Ok(r) if r.is_error == Some(false) => ok += 1,
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        ok >= 4,
        "calls keep working after restarts: ok={ok} failed={failed}\n{}",
        server.log()
    );
    assert!(server.log().contains("downstream exited; restarting"));
    client.cancel().await.unwrap();
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_downstream_times_out_with_a_clear_error() {
    let ws = ledger_ws(&[], r#""finance/ledger/slow_report""#, "");
    let (server, client) = review(&ws).await;
    let r = client
        .call_tool(call("slow_report", json!({"seconds": 10})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    let text = serde_json::to_string(&r.content).unwrap();
    assert!(text.contains("did not answer within 2s"), "{text}");
    client.cancel().await.unwrap();
    server.stop();
    let records = audit_records(&ws);
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "call" && r["outcome"] == "timeout")
    );
}

/// An MCP client of `sub` (tenant acme, agent bot) on `url` whose handler records what it gets.
async fn connect_as<H: ClientHandler + Clone + Default>(
    ws: &Workspace,
    url: &str,
    sub: &str,
) -> (rmcp::service::RunningService<RoleClient, H>, H) {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let token = ws.token_for(sub, "acme", "bot", Some("finance/prod/review"));
    let handler = H::default();
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let client = handler
        .clone()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    (client, handler)
}

#[derive(Clone, Default)]
pub(crate) struct Progress(pub Arc<Mutex<Vec<f64>>>);

impl ClientHandler for Progress {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params.progress);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_reaches_only_the_caller_that_asked() {
    let ws = ledger_ws(
        &[],
        r#""finance/ledger/slow_report", "finance/ledger/get_invoice""#,
        "",
    );
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let (alice, alice_progress) = connect_as::<Progress>(&ws, &url, "alice@acme.example").await;
    let (bob, bob_progress) = connect_as::<Progress>(&ws, &url, "bob@acme.example").await;
    let slow = alice.call_tool(call("slow_report", json!({"seconds": 1})));
    let quick = async {
        for _ in 0..5 {
            bob.call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
                .await
                .unwrap();
        }
    };
    let (r, ()) = tokio::join!(slow, quick);
    assert_eq!(r.unwrap().is_error, Some(false));
    eventually(5, "alice's progress", || {
        !alice_progress.0.lock().unwrap().is_empty()
    })
    .await;
    assert!(
        bob_progress.0.lock().unwrap().is_empty(),
        "bob must not see alice's progress"
    );
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    server.stop();
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<Value>>>);

impl ClientHandler for Logs {
    #[allow(deprecated)]
    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params.data);
    }
}

/// A stdio tool that keeps logging after it answered: those lines belong to no call in flight
/// and must never reach another user's stream.
#[tokio::test(flavor = "multi_thread")]
async fn background_logs_of_one_user_never_reach_another() {
    let ws = ledger_ws(
        &[("LEDGER_LOG_AFTER", "1")],
        r#""finance/ledger/slow_report", "finance/ledger/get_invoice""#,
        "",
    );
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let (alice, _alice_logs) = connect_as::<Logs>(&ws, &url, "alice@acme.example").await;
    let (bob, bob_logs) = connect_as::<Logs>(&ws, &url, "bob@acme.example").await;
    // Alice's call returns at once; the ledger keeps logging about it for a second, while
    // bob's call is the only one in flight.
    let r = alice
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    let r = bob
        .call_tool(call("slow_report", json!({"seconds": 1})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    let leaked: Vec<Value> = bob_logs
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l["event"] == "background" && l["after"] == "get_invoice")
        .cloned()
        .collect();
    assert!(
        leaked.is_empty(),
        "alice's background logs reached bob: {leaked:?}"
    );
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_leaves_a_chain_that_verifies() {
    let ws = ledger_ws(
        &[],
        r#""finance/ledger/get_invoice", "finance/ledger/approve_invoice""#,
        "",
    );
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let url = server.mission_url("finance/prod/review");
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let client = client(&url, &token).await;
            for n in 0.. {
                let name = if (n + i) % 3 == 0 {
                    "approve_invoice"
                } else {
                    "get_invoice"
                };
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.call_tool(call(name, json!({"invoice_id": "INV-1002"}))),
                )
                .await;
                if !matches!(r, Ok(Ok(_))) {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    let out = ws.mandate(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let n: u64 = stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n > 20, "expected a loaded chain, got {n} records");
    // And the broker starts again on the same store and continues the chain.
    let server = ws.serve();
    server.stop();
    assert!(ws.mandate(&["audit", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_mission_with_mandate_token() {
    use rmcp::transport::TokioChildProcess;
    let ws = ledger_ws(&[], r#""finance/ledger/get_invoice""#, "");
    let token = ws.token(Some("finance/prod/review"));
    let mut cmd = tokio::process::Command::new(mandate_bin());
    cmd.args(["serve", "--stdio", "--mission", "finance/prod/review"])
        .current_dir(ws.path())
        .env("MANDATE_TOKEN", &token)
        .env("MANDATE_LOG", "warn");
    let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1);
    let r = client
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1003"})))
        .await
        .unwrap();
    assert_eq!(r.structured_content.unwrap()["status"], "approved");
    client.cancel().await.unwrap();
    // Without a token it refuses to start, and says what to do.
    let out = std::process::Command::new(mandate_bin())
        .args(["serve", "--stdio", "--mission", "finance/prod/review"])
        .current_dir(ws.path())
        .env_remove("MANDATE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set MANDATE_TOKEN"));
    let records = audit_records(&ws);
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "call" && r["tool"] == "get_invoice" && r["outcome"] == "ok")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_revisions_and_bad_requests_get_proper_answers() {
    let ws = ledger_ws(&[], r#""finance/ledger/get_invoice""#, "");
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let url = server.mission_url("finance/prod/review");
    let http = reqwest::Client::new();
    let post = |body: String, extra: &[(&str, &str)]| {
        let mut r = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let init = |v: &str| {
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":v,"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string()
    };
    // Legacy revisions negotiate their own version.
    for v in ["2025-06-18", "2025-11-25"] {
        let r = post(init(v), &[]).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&format!("\"protocolVersion\":\"{v}\"")),
            "{text}"
        );
    }
    // 2026-07-28: stateless discovery.
    let discover = json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let r = post(
        discover.to_string(),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ],
    )
    .await
    .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("\"supportedVersions\"") && text.contains("2026-07-28"),
        "{text}"
    );
    // Malformed JSON: 400 with a JSON-RPC parse error.
    let r = post("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":".into(), &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32700);
    // Oversize body: 413 with a JSON-RPC error.
    let r = post("a".repeat(5 * 1024 * 1024), &[]).await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32600);
    // Unknown method on a session: method not found.
    let client = client(&url, &token).await;
    let e = client
        .send_request(rmcp::model::ClientRequest::CustomRequest(
            rmcp::model::CustomRequest::new("foo/bar", None),
        ))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("-32601")
            || e.to_string().to_lowercase().contains("method not found"),
        "{e}"
    );
    client.cancel().await.unwrap();
    // DNS rebinding: a foreign Host is refused before anything else.
    let r = post(init("2025-11-25"), &[("host", "evil.example")])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn downstreams_are_not_shared_across_tenants_or_environments() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice", "finance/ledger/approve_invoice""#,
        "",
    );
    ws.mission(
        "finance/staging/review",
        r#""finance/ledger/get_invoice""#,
        "",
    );
    ws.permit_all("finance/prod/globex");
    ws.write(
        "missions/finance/prod/globex.toml",
        "description = \"x\"\ntenant = \"globex\"\nowner = \"o\"\nexpires = 2099-01-01\nagents = [\"bot\"]\ntools = [\"finance/ledger/get_invoice\"]\n",
    );
    ws.pin();
    let server = ws.serve();
    for key in [
        "acme:prod:finance/ledger",
        "acme:staging:finance/ledger",
        "globex:prod:finance/ledger",
    ] {
        let line = format!("downstream connected downstream={key}");
        eventually(5, &line, || server.log().contains(&line)).await;
    }
    // One process per group: state changed through one tenant is invisible to the other.
    let acme = ws.token(Some("finance/prod/review"));
    let globex = ws.token_for(
        "g@globex.example",
        "globex",
        "bot",
        Some("finance/prod/globex"),
    );
    let a = client(&server.mission_url("finance/prod/review"), &acme).await;
    let g = client(&server.mission_url("finance/prod/globex"), &globex).await;
    let approved = a
        .call_tool(call("approve_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(approved.structured_content.unwrap()["status"], "approved");
    let seen_by_acme = a
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    let seen_by_globex = g
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(
        seen_by_acme.structured_content.unwrap()["status"],
        "approved"
    );
    assert_eq!(seen_by_globex.structured_content.unwrap()["status"], "open");
    a.cancel().await.unwrap();
    g.cancel().await.unwrap();
    // A probe process per group, plus one per principal that called (the ledger is
    // per-principal: acme's caller and globex's caller each got their own), all stopped with
    // the broker.
    let children = children_of(server.child.id());
    assert_eq!(children.len(), 5, "{children:?}");
    server.stop();
    for pid in children {
        eventually(10, "downstream stopped on shutdown", || !alive(pid)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downstream_speaking_2025_06_18_works() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    let manifest = std::fs::read_to_string(ws.path().join("tool-manifests/finance/ledger.toml"))
        .unwrap()
        .replace(
            "kind = \"stdio\"",
            "kind = \"stdio\"\nprotocol = \"2025-06-18\"",
        );
    ws.write("tool-manifests/finance/ledger.toml", &manifest);
    ws.mission("finance/prod/review", r#""finance/ledger/get_invoice""#, "");
    ws.pin();
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let c = client(&server.mission_url("finance/prod/review"), &token).await;
    let r = c
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1002"})))
        .await
        .unwrap();
    assert_eq!(r.structured_content.unwrap()["id"], "INV-1002");
    c.cancel().await.unwrap();
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn output_that_violates_the_pinned_schema_is_withheld() {
    // Pin the normal ledger, then run the variant whose definitions are identical but whose
    // get_invoice returns structuredContent that breaks its own output schema.
    let ws = ledger_ws(&[], r#""finance/ledger/get_invoice""#, "");
    ws.ledger(&[("LEDGER_VARIANT", "bad-output")]);
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let c = client(&server.mission_url("finance/prod/review"), &token).await;
    let tools = c.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1, "same definitions: no drift");
    let r = c
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(
        r.structured_content.is_none(),
        "the bad output must not reach the caller"
    );
    let text = serde_json::to_string(&r.content).unwrap();
    assert!(
        text.contains("violates its pinned schema: output field `/amount_cents`"),
        "{text}"
    );
    c.cancel().await.unwrap();
    server.stop();
    let records = audit_records(&ws);
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "validation_failure" && r["outcome"] == "invalid_output")
    );
}

#[derive(Clone, Default)]
struct ListChanged(Arc<Mutex<u32>>);

impl ClientHandler for ListChanged {
    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        *self.0.lock().unwrap() += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rug_pull_mid_session_quarantines_and_tells_the_caller() {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    // After its 2nd call the ledger changes get_invoice's description and announces it.
    let ws = ledger_ws(
        &[("LEDGER_DRIFT_AFTER", "2")],
        r#""finance/ledger/get_invoice", "finance/ledger/list_invoices""#,
        "",
    );
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let changed = ListChanged::default();
    let config = StreamableHttpClientTransportConfig::with_uri(
        server.mission_url("finance/prod/review").as_str(),
    )
    .auth_header(token);
    let client = changed
        .clone()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    assert_eq!(client.list_all_tools().await.unwrap().len(), 2);
    for _ in 0..2 {
        let r = client
            .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
            .await
            .unwrap();
        assert_eq!(r.is_error, Some(false));
    }
    eventually(10, "tools/list_changed relayed to the caller", || {
        *changed.0.lock().unwrap() > 0
    })
    .await;
    let names = tool_names(&client).await;
    assert_eq!(names, ["list_invoices"]);
    let e = client
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tool not found"), "{e}");
    client.cancel().await.unwrap();
    server.stop();
    let records = audit_records(&ws);
    assert!(records.iter().any(|r| r["kind"] == "drift"));
}

//! Handoffs between agents, end to end: the real broker, the real example handoff agents
//! (`examples/handoff_agent.rs`, B's and C's agents as HTTP downstreams of missions A and B),
//! the real ledger downstream and a real sled store. A's agent is the test's rmcp client.
//!
//! Missions (tenant acme): A `finance/prod/review` (agent a-bot: ledger `list_invoices`,
//! `pay_invoice`, and `ask` = B's agent) hands to B `finance/prod/payments` (agent b-bot:
//! `list_invoices`, `get_invoice`, and `ask` = C's agent), which hands to C `finance/prod/audit`
//! (agent c-bot: `get_invoice`).

use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use crate::common::*;

const A: &str = "finance/prod/review";
const B: &str = "finance/prod/payments";
const C: &str = "finance/prod/audit";
const USER: &str = "alice@acme.example";

/// A workspace with the three missions and both agents running, pinned.
struct Setup {
    ws: Workspace,
    port: u16,
    _agents: Vec<HandoffAgent>,
}

fn agent_manifest(url: &str, mission: &str, agent: &str) -> String {
    format!(
        r#"description = "the agent of {mission}"
environments = ["prod"]
region = "eu-west-1"

[transport]
kind = "http"
url = "{url}"

[auth]
exchange = "handoff"
mission = "{mission}"
agent = "{agent}"

[[tools]]
name = "ask"
effect = "write"
"#
    )
}

fn mission(agent: &str, tools: &str, handoffs: &str) -> String {
    format!(
        r#"description = "handoff test mission"
tenant = "acme"
owner = "alice@acme.example"
expires = 2099-12-31
agents = ["{agent}"]
tools = [{tools}]
handoffs = [{handoffs}]
"#
    )
}

/// `settings`: extra `mandate.toml` lines; `b_calls`: the mission B's agent calls Mandate at
/// (its own, unless a test makes it misbehave).
fn setup(settings: &str, b_calls: &str) -> Setup {
    let ws = Workspace::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    ws.write(
        "mandate.toml",
        &format!("[server]\npublic_url = \"{base}\"\n{settings}\n"),
    );
    ws.ledger(&[]);
    let b = HandoffAgent::start(&format!("{base}/mcp/{b_calls}"));
    let c = HandoffAgent::start(&format!("{base}/mcp/{C}"));
    ws.write(
        "tool-manifests/agents/payments.toml",
        &agent_manifest(&b.url, B, "b-bot"),
    );
    ws.write(
        "tool-manifests/agents/audit.toml",
        &agent_manifest(&c.url, C, "c-bot"),
    );
    ws.write(
        &format!("missions/{A}.toml"),
        &mission(
            "a-bot",
            r#""finance/ledger/list_invoices", "finance/ledger/pay_invoice", "agents/payments/ask""#,
            &format!("\"{B}\""),
        ),
    );
    ws.write(
        &format!("missions/{B}.toml"),
        &mission(
            "b-bot",
            r#""finance/ledger/list_invoices", "finance/ledger/get_invoice", "agents/audit/ask""#,
            &format!("\"{C}\""),
        ),
    );
    ws.write(
        &format!("missions/{C}.toml"),
        &mission("c-bot", r#""finance/ledger/get_invoice""#, ""),
    );
    ws.pin();
    Setup {
        ws,
        port,
        _agents: vec![b, c],
    }
}

impl Setup {
    fn serve(&self) -> Server {
        self.ws.serve_on(&format!("127.0.0.1:{}", self.port))
    }

    fn token_a(&self) -> String {
        self.ws.token_for(USER, "acme", "a-bot", Some(A))
    }
}

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = arguments.as_object().cloned();
    p
}

/// A's agent asks B's agent to do `ask` (the arguments of B's `ask`); returns B's attempts.
async fn hand_to_b(server: &Server, token: &str, ask: Value) -> Vec<Value> {
    let client = client(&server.mission_url(A), token).await;
    let r = client.call_tool(call("ask", ask)).await.unwrap();
    client.cancel().await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    r.structured_content.unwrap()["attempts"]
        .as_array()
        .unwrap()
        .clone()
}

/// Whether an attempt of the agent was refused with 401 (rmcp's client says `Auth required`).
fn refused_401(attempt: &Value) -> bool {
    attempt["ok"] == false
        && attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("Auth required"))
}

fn records_of(records: &[Value], mission: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["mission"] == mission)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_to_b_and_on_to_c_works_and_every_record_carries_the_chain() {
    let s = setup("", B);
    let server = s.serve();
    let token = s.token_a();

    // A → B: B's agent lists invoices on mission B with the handoff token Mandate gave it.
    let attempts = hand_to_b(&server, &token, json!({ "tool": "list_invoices" })).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["ok"], true, "{attempts:?}");
    let listed = &attempts[0]["result"]["structuredContent"]["invoices"];
    assert!(!listed.as_array().unwrap().is_empty(), "{attempts:?}");

    // A → B → C: B's agent asks C's agent, which reads an invoice on mission C.
    let attempts = hand_to_b(
        &server,
        &token,
        json!({ "tool": "ask", "arguments": { "tool": "get_invoice", "arguments": { "invoice_id": "INV-1001" } } }),
    )
    .await;
    assert_eq!(attempts[0]["ok"], true, "{attempts:?}");
    let inner = &attempts[0]["result"]["structuredContent"]["attempts"][0];
    assert_eq!(inner["ok"], true, "{attempts:?}");
    assert_eq!(inner["result"]["structuredContent"]["id"], "INV-1001");
    server.stop();

    let records = audit_records(&s.ws);
    let issuer = format!("http://127.0.0.1:{}", s.port);
    // A's own call: a direct caller (no actors), and the handoff minted for it (id only).
    let a_calls: Vec<Value> = records_of(&records, A)
        .into_iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "ask")
        .collect();
    assert_eq!(a_calls.len(), 2, "{records:#?}");
    assert!(a_calls.iter().all(|r| r["actors"].is_null()));
    assert_eq!(a_calls[0]["issuer"], issuer.as_str());
    let first_jti = a_calls[0]["handoff"]["jti"].as_str().unwrap().to_owned();
    assert_eq!(a_calls[0]["handoff"]["to"], B);
    // B's call: the user stays the subject, B's agent acts, A's agent is the verified chain.
    let b_list = records_of(&records, B)
        .into_iter()
        .find(|r| r["kind"] == "call" && r["tool"] == "list_invoices")
        .unwrap_or_else(|| panic!("no call on B: {records:#?}"));
    assert_eq!(b_list["outcome"], "ok");
    assert_eq!(b_list["subject"], USER);
    assert_eq!(b_list["agent"], "b-bot");
    assert_eq!(b_list["issuer"], issuer.as_str());
    assert_eq!(b_list["token_id"], first_jti.as_str());
    assert_eq!(
        b_list["actors"],
        json!([{ "agent": "a-bot", "mission": A }])
    );
    // C's call: two earlier hops, most recent first; B's hop names the handoff it came by.
    let c_get = records_of(&records, C)
        .into_iter()
        .find(|r| r["kind"] == "call" && r["tool"] == "get_invoice")
        .unwrap_or_else(|| panic!("no call on C: {records:#?}"));
    assert_eq!(c_get["subject"], USER);
    assert_eq!(c_get["agent"], "c-bot");
    let second_jti = a_calls[1]["handoff"]["jti"].as_str().unwrap();
    assert_eq!(
        c_get["actors"],
        json!([
            { "agent": "b-bot", "mission": B, "handoff": second_jti },
            { "agent": "a-bot", "mission": A },
        ])
    );
    // The tokens themselves are nowhere in the audit trail.
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(&token));
    assert!(!all.contains("eyJ"), "a JWT in the audit trail");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_token_opens_one_session_and_a_replay_is_refused_and_audited() {
    let s = setup("", B);
    let server = s.serve();
    let attempts = hand_to_b(
        &server,
        &s.token_a(),
        json!({ "tool": "list_invoices", "attempts": 2 }),
    )
    .await;
    assert_eq!(attempts[0]["ok"], true, "{attempts:?}");
    assert_eq!(attempts[1]["ok"], false, "{attempts:?}");
    assert!(refused_401(&attempts[1]), "{attempts:?}");
    server.stop();
    let records = audit_records(&s.ws);
    let refused = records_of(&records, B)
        .into_iter()
        .find(|r| r["kind"] == "auth_failure")
        .unwrap_or_else(|| panic!("replay not audited: {records:#?}"));
    assert_eq!(refused["outcome"], "unauthenticated");
    assert_eq!(refused["agent"], "b-bot");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("handoff token was already used"),
        "{refused}"
    );
    // One successful call on B, not two.
    let calls = records_of(&records, B)
        .into_iter()
        .filter(|r| r["kind"] == "call")
        .count();
    assert_eq!(calls, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_handoff_token_is_refused_and_audited() {
    let s = setup("[handoff]\nttl = \"1s\"", B);
    let server = s.serve();
    let attempts = hand_to_b(
        &server,
        &s.token_a(),
        json!({ "tool": "list_invoices", "wait_ms": 2500 }),
    )
    .await;
    assert_eq!(attempts[0]["ok"], false, "{attempts:?}");
    server.stop();
    let records = audit_records(&s.ws);
    let refused = records_of(&records, B)
        .into_iter()
        .find(|r| r["kind"] == "auth_failure")
        .unwrap_or_else(|| panic!("expiry not audited: {records:#?}"));
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("handoff token expired"),
        "{refused}"
    );
    assert!(
        !records_of(&records, B).iter().any(|r| r["kind"] == "call"),
        "an expired handoff reached mission B's tools"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_deeper_than_max_depth_is_refused_and_audited() {
    let s = setup("[handoff]\nmax_depth = 1", B);
    let server = s.serve();
    // A → B is one hop: allowed.
    let token = s.token_a();
    let attempts = hand_to_b(&server, &token, json!({ "tool": "list_invoices" })).await;
    assert_eq!(attempts[0]["ok"], true, "{attempts:?}");
    // A → B → C would be two: B's call to C's agent is refused before anything reaches C.
    let attempts = hand_to_b(
        &server,
        &token,
        json!({ "tool": "ask", "arguments": { "tool": "get_invoice", "arguments": { "invoice_id": "INV-1001" } } }),
    )
    .await;
    assert_eq!(attempts[0]["ok"], true, "{attempts:?}");
    let result = &attempts[0]["result"];
    assert_eq!(result["isError"], true, "{attempts:?}");
    assert!(result.to_string().contains("max_depth"), "{attempts:?}");
    server.stop();
    let records = audit_records(&s.ws);
    let refused = records_of(&records, B)
        .into_iter()
        .find(|r| r["tool"] == "ask" && r["kind"] != "call_intent")
        .unwrap_or_else(|| panic!("no record of B's handoff: {records:#?}"));
    assert_eq!(refused["kind"], "denial");
    assert_eq!(refused["outcome"], "handoff_refused");
    assert_eq!(
        refused["actors"],
        json!([{ "agent": "a-bot", "mission": A }])
    );
    assert!(refused["handoff"].is_null(), "no token was minted");
    assert!(records_of(&records, C).iter().all(|r| r["kind"] != "call"));
}

/// A's agent asks B's agent to pay an invoice (A's mission may; B's may not).
async fn ask_b_to_pay(s: &Setup, server: &Server) -> Vec<Value> {
    hand_to_b(
        server,
        &s.token_a(),
        json!({ "tool": "pay_invoice", "arguments": { "invoice_id": "INV-1003", "amount_cents": 1250000 } }),
    )
    .await
}

/// No `pay_invoice` reached the ledger.
fn assert_never_paid(records: &[Value]) {
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "call" && r["downstream_tool"] == "finance/ledger/pay_invoice")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn b_cannot_do_for_a_what_b_s_mission_does_not_allow() {
    // Confused deputy: A's mission may pay invoices, B's may not. A asks B to pay: B's handoff
    // token gives B nothing of A's, so the tool does not exist for it.
    let s = setup("", B);
    let server = s.serve();
    let attempts = ask_b_to_pay(&s, &server).await;
    assert_eq!(attempts[0]["ok"], false, "{attempts:?}");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("tool not found"),
        "{attempts:?}"
    );
    server.stop();
    let records = audit_records(&s.ws);
    let denial = records_of(&records, B)
        .into_iter()
        .find(|r| r["kind"] == "denial" && r["tool"] == "pay_invoice")
        .unwrap_or_else(|| panic!("no denial on B: {records:#?}"));
    assert_eq!(denial["agent"], "b-bot");
    assert_eq!(
        denial["actors"],
        json!([{ "agent": "a-bot", "mission": A }])
    );
    assert_never_paid(&records);
}

#[tokio::test(flavor = "multi_thread")]
async fn b_cannot_use_its_handoff_token_on_a_s_mission() {
    // Confused deputy: B's agent takes the token it got for mission B to mission A (where the
    // user may pay invoices). The token's audience is B's mission: refused.
    let s = setup("", A);
    let server = s.serve();
    let attempts = ask_b_to_pay(&s, &server).await;
    assert_eq!(attempts[0]["ok"], false, "{attempts:?}");
    assert!(refused_401(&attempts[0]), "{attempts:?}");
    server.stop();
    let records = audit_records(&s.ws);
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "auth_failure" && r["mission"] == A),
        "{records:#?}"
    );
    assert_never_paid(&records);
}

/// Mints a handoff to B's agent, then (while B's agent still holds the token, waiting) restarts
/// the broker with mission A rewritten to `changed_a`; returns the audit record of B's call.
async fn restart_while_b_holds_the_token(changed_a: &str) -> Value {
    let s = setup("", B);
    let server = s.serve();
    let token = s.token_a();
    let url = server.mission_url(A);
    let call_a = tokio::spawn(async move {
        let client = client(&url, &token).await;
        let _ = client
            .call_tool(call(
                "ask",
                json!({ "tool": "list_invoices", "wait_ms": 6000 }),
            ))
            .await;
    });
    // Wait until the handoff was minted (the ledger write precedes the call to B's agent).
    let ws = &s.ws;
    eventually(10, "the handoff to B", || {
        export_records(ws, &[])
            .iter()
            .any(|r| r["kind"] == "call_intent" && r["tool"] == "ask")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.kill9();
    s.ws.write(&format!("missions/{A}.toml"), changed_a);
    let server = s.serve();
    let ws = &s.ws;
    eventually(15, "B's refused call", || {
        export_records(ws, &[])
            .iter()
            .any(|r| r["kind"] == "auth_failure" && r["mission"] == B)
    })
    .await;
    call_a.abort();
    server.stop();
    let records = audit_records(&s.ws);
    assert!(!records_of(&records, B).iter().any(|r| r["kind"] == "call"));
    records_of(&records, B)
        .into_iter()
        .find(|r| r["kind"] == "auth_failure")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actor_no_longer_on_its_mission_revokes_the_handoff() {
    // a-bot is taken off mission A after it handed on: an earlier actor that is gone revokes
    // the chain (the agent registry's suspension plugs in at the same check, `actor_active`).
    let refused = restart_while_b_holds_the_token(&mission(
        "other-bot",
        r#""finance/ledger/list_invoices", "agents/payments/ask""#,
        &format!("\"{B}\""),
    ))
    .await;
    assert_eq!(refused["outcome"], "forbidden");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("agent `a-bot` in the handoff chain is no longer active on mission `finance/prod/review`"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_edge_removed_after_minting_refuses_the_token() {
    // A no longer lists B in `handoffs` (nor uses B's agent): the token minted before is
    // refused, since every edge is re-checked against the missions when it is used.
    let refused =
        restart_while_b_holds_the_token(&mission("a-bot", r#""finance/ledger/list_invoices""#, ""))
            .await;
    assert_eq!(refused["outcome"], "forbidden");
    assert!(
        refused["detail"].as_str().unwrap().contains(
            "mission `finance/prod/review` may not hand work to mission `finance/prod/payments`"
        ),
        "{refused}"
    );
}

#[test]
fn a_handoff_downstream_needs_the_edge_an_existing_mission_and_its_agent() {
    let s = setup("", B);
    // A without the edge to B.
    s.ws.write(
        &format!("missions/{A}.toml"),
        &mission("a-bot", r#""agents/payments/ask""#, ""),
    );
    // C's agent manifest names an unknown mission; B's names an agent B does not list.
    let audit = std::fs::read_to_string(s.ws.path().join("tool-manifests/agents/audit.toml"))
        .unwrap()
        .replace(
            &format!("mission = \"{C}\""),
            "mission = \"finance/prod/audti\"",
        );
    s.ws.write("tool-manifests/agents/audit.toml", &audit);
    let payments = std::fs::read_to_string(s.ws.path().join("tool-manifests/agents/payments.toml"))
        .unwrap()
        .replace("agent = \"b-bot\"", "agent = \"a-bot\"");
    s.ws.write("tool-manifests/agents/payments.toml", &payments);
    let out = s.ws.mandate(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "tool-manifests/agents/payments.toml:11:11: mission `{A}` uses this handoff to `{B}` but does not list it in `handoffs`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "tool-manifests/agents/payments.toml:12:9: agent `a-bot` is not in the `agents` of mission `finance/prod/payments`"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "tool-manifests/agents/audit.toml:11:11: unknown mission `finance/prod/audti` in `[auth] mission` (did you mean `finance/prod/audit`?)"
        ),
        "{stderr}"
    );
}

#[test]
fn handoff_settings_and_handoff_auth_fields_are_validated() {
    let s = setup("", B);
    s.ws.write(
        "mandate.toml",
        "[server]\npublic_url = \"http://127.0.0.1:1\"\n[handoff]\nmax_dept = 2\nttl = \"10m\"\n",
    );
    // A stdio downstream cannot be a handoff, and a handoff names its mission and agent.
    let ledger =
        std::fs::read_to_string(s.ws.path().join("tool-manifests/finance/ledger.toml")).unwrap();
    s.ws.write(
        "tool-manifests/finance/ledger.toml",
        &format!("{ledger}\n[auth]\nexchange = \"handoff\"\n"),
    );
    // `mission` without `exchange = "handoff"`.
    let audit = std::fs::read_to_string(s.ws.path().join("tool-manifests/agents/audit.toml"))
        .unwrap()
        .replace("exchange = \"handoff\"", "exchange = \"none\"");
    s.ws.write("tool-manifests/agents/audit.toml", &audit);
    let out = s.ws.mandate(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "mandate.toml:4:1: unknown field `max_dept` in `[handoff]` (did you mean `max_depth`?)",
        "mandate.toml:5:7: `ttl` must be a duration between `1s` and `5m`, not `10m`",
        "tool-manifests/finance/ledger.toml:37:12: `exchange = \"handoff\"` needs `[transport] kind = \"http\"`",
        "tool-manifests/finance/ledger.toml:36:1: `exchange = \"handoff\"` needs `mission` (the mission whose agent this downstream is) and `agent`",
        "tool-manifests/agents/audit.toml:11:11: `mission` in `[auth]` needs `exchange = \"handoff\"`",
        "tool-manifests/agents/audit.toml:12:9: `agent` in `[auth]` needs `exchange = \"handoff\"`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
}

/// The text of a tool result.
fn result_text(r: &rmcp::model::CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn b_s_policy_sees_a_s_agent_in_the_chain() {
    // B's policy refuses work handed on by A's agent (`context.chain`), and only that: the same
    // call by B's agent on its own token is permitted.
    let s = setup("", B);
    s.ws.write(
        &format!("missions/{B}.cedar"),
        "permit (principal, action, resource);\n@id(\"not-for-a\") forbid (principal, action in Action::\"call\", resource) when { context.chain.contains(\"a-bot\") };\n",
    );
    let server = s.serve();
    let attempts = hand_to_b(&server, &s.token_a(), json!({ "tool": "list_invoices" })).await;
    assert_eq!(attempts[0]["ok"], false, "{attempts:?}");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("denied by policy"),
        "{attempts:?}"
    );
    // Without a handoff: B's agent's own token, the same call.
    let direct = s.ws.token_for(USER, "acme", "b-bot", Some(B));
    let client = client(&server.mission_url(B), &direct).await;
    let r = client
        .call_tool(call("list_invoices", json!({})))
        .await
        .unwrap();
    client.cancel().await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    server.stop();
    let records = audit_records(&s.ws);
    let on_b = records_of(&records, B);
    let denial = on_b
        .iter()
        .find(|r| r["kind"] == "denial" && r["tool"] == "list_invoices")
        .unwrap_or_else(|| panic!("no denial on B: {records:#?}"));
    assert_eq!(denial["policy"], format!("{B}.cedar:not-for-a"), "{denial}");
    assert_eq!(
        denial["actors"],
        json!([{ "agent": "a-bot", "mission": A }])
    );
    let ran: Vec<&Value> = on_b
        .iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "list_invoices")
        .collect();
    assert_eq!(ran.len(), 1, "{records:#?}");
    assert_eq!(ran[0]["outcome"], "ok");
    assert!(ran[0]["actors"].is_null(), "{}", ran[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_s_policy_decides_the_handoff_before_a_token_is_minted() {
    // A's policy permits every call but forbids handing work to B: the `ask` call is refused
    // before any token exists, nothing reaches B, the audit names the policy.
    let s = setup("", B);
    s.ws.write(
        &format!("missions/{A}.cedar"),
        &format!(
            "permit (principal, action, resource);\n@id(\"not-to-b\") forbid (principal, action == Action::\"handoff\", resource == Mission::\"{B}\");\n"
        ),
    );
    let server = s.serve();
    let client = client(&server.mission_url(A), &s.token_a()).await;
    // No context could permit the handoff: `tools/list` does not offer the tool.
    let listed: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!listed.contains(&"ask".to_owned()), "{listed:?}");
    assert!(listed.contains(&"list_invoices".to_owned()), "{listed:?}");
    let r = client
        .call_tool(call("ask", json!({ "tool": "list_invoices" })))
        .await
        .unwrap();
    // A's other tools still work.
    let listed = client
        .call_tool(call("list_invoices", json!({})))
        .await
        .unwrap();
    client.cancel().await.unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let text = result_text(&r);
    assert!(
        text.contains(&format!(
            "policies do not permit handing work to mission `{B}`"
        )),
        "{text}"
    );
    assert!(
        !text.contains("not-to-b"),
        "no policy ids reach the caller: {text}"
    );
    assert_eq!(listed.is_error, Some(false), "{listed:?}");
    server.stop();
    let records = audit_records(&s.ws);
    let denial = records_of(&records, A)
        .into_iter()
        .find(|r| r["kind"] == "denial" && r["tool"] == "ask")
        .unwrap_or_else(|| panic!("no denial on A: {records:#?}"));
    assert_eq!(denial["policy"], format!("{A}.cedar:not-to-b"), "{denial}");
    assert!(denial["handoff"].is_null(), "no token was minted");
    assert!(
        records_of(&records, B).iter().all(
            |r| !["call", "denial", "auth_failure"].contains(&r["kind"].as_str().unwrap_or(""))
        ),
        "nothing reached B: {records:#?}"
    );
}

/// A handoff decision that cannot be evaluated fails closed; the audit record says why, the
/// caller is not told.
#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_decision_that_cannot_be_evaluated_refuses_and_the_audit_says_why() {
    let s = setup("", B);
    // The forbid overflows (the risk counter is at least 1): an evaluation error.
    s.ws.write(
        &format!("missions/{A}.cedar"),
        "permit (principal, action, resource);\n@id(\"overflow\") forbid (principal, action == Action::\"handoff\", resource) when { context.risk.calls_last_minute + 9223372036854775807 > 0 };\n",
    );
    let server = s.serve();
    let client = client(&server.mission_url(A), &s.token_a()).await;
    let r = client
        .call_tool(call("ask", json!({ "tool": "list_invoices" })))
        .await
        .unwrap();
    client.cancel().await.unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let text = result_text(&r);
    assert!(text.contains("do not permit handing work"), "{text}");
    assert!(!text.contains("evaluation error"), "{text}");
    server.stop();
    let records = audit_records(&s.ws);
    let denial = records_of(&records, A)
        .into_iter()
        .find(|r| r["kind"] == "denial" && r["tool"] == "ask")
        .unwrap_or_else(|| panic!("no denial on A: {records:#?}"));
    let detail = denial["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("evaluation error"), "{denial}");
    assert!(detail.contains("overflow"), "{denial}");
}

#[tokio::test(flavor = "multi_thread")]
async fn suspending_a_s_agent_while_b_holds_the_token_refuses_b_s_call() {
    let s = setup("", B);
    let server = s.serve();
    let token = s.token_a();
    let url = server.mission_url(A);
    let call_a = tokio::spawn(async move {
        let client = client(&url, &token).await;
        let _ = client
            .call_tool(call(
                "ask",
                json!({ "tool": "list_invoices", "wait_ms": 4000 }),
            ))
            .await;
    });
    let ws = &s.ws;
    eventually(10, "the handoff to B", || {
        export_records(ws, &[])
            .iter()
            .any(|r| r["kind"] == "call_intent" && r["tool"] == "ask")
    })
    .await;
    // Through the running broker's admin API.
    let out =
        s.ws.mandate(&["agents", "suspend", "a-bot", "--reason", "investigation"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(15, "B's refused call", || {
        export_records(ws, &[])
            .iter()
            .any(|r| r["kind"] == "auth_failure" && r["mission"] == B)
    })
    .await;
    call_a.abort();
    server.stop();
    let records = audit_records(&s.ws);
    assert!(
        !records_of(&records, B).iter().any(|r| r["kind"] == "call"),
        "{records:#?}"
    );
    let refused = records_of(&records, B)
        .into_iter()
        .find(|r| r["kind"] == "auth_failure")
        .unwrap();
    assert_eq!(refused["outcome"], "forbidden", "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("agent `a-bot` in the handoff chain is no longer active"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn b_s_policy_refuses_a_user_it_does_not_serve_even_through_a_handoff() {
    // Confused deputy, user-limited: B has `get_invoice`, but B's policy serves the finance
    // department only. A (which permits everyone) hands a sales user's work to B: denied on B,
    // nothing reaches the ledger; a finance user through the same path is served.
    let s = setup("", B);
    s.ws.write(
        &format!("missions/{B}.cedar"),
        "@id(\"finance-only\") permit (principal, action in Action::\"call\", resource) when { principal has department && principal.department == \"finance\" };\n",
    );
    let server = s.serve();
    let ask = json!({ "tool": "get_invoice", "arguments": { "invoice_id": "INV-1001" } });
    let sales =
        s.ws.agent_token_with("sam@acme.example", "a-bot", A, &["department=sales"]);
    let attempts = hand_to_b(&server, &sales, ask.clone()).await;
    assert_eq!(attempts[0]["ok"], false, "{attempts:?}");
    let finance =
        s.ws.agent_token_with("fay@acme.example", "a-bot", A, &["department=finance"]);
    let attempts = hand_to_b(&server, &finance, ask).await;
    assert_eq!(attempts[0]["ok"], true, "{attempts:?}");
    assert_eq!(
        attempts[0]["result"]["structuredContent"]["id"], "INV-1001",
        "{attempts:?}"
    );
    server.stop();
    let records = audit_records(&s.ws);
    let on_b = records_of(&records, B);
    let denial = on_b
        .iter()
        .find(|r| r["kind"] == "denial" && r["subject"] == "sam@acme.example")
        .unwrap_or_else(|| panic!("no denial on B: {records:#?}"));
    assert_eq!(denial["tool"], "get_invoice");
    assert_eq!(
        denial["actors"],
        json!([{ "agent": "a-bot", "mission": A }])
    );
    assert!(
        !on_b
            .iter()
            .any(|r| r["kind"] == "call" && r["subject"] == "sam@acme.example"),
        "sam's call reached the downstream: {records:#?}"
    );
    let served = on_b
        .iter()
        .find(|r| r["kind"] == "call" && r["subject"] == "fay@acme.example")
        .unwrap_or_else(|| panic!("fay's call did not run: {records:#?}"));
    assert_eq!(served["outcome"], "ok");
    assert_eq!(
        served["actors"],
        json!([{ "agent": "a-bot", "mission": A }])
    );
}

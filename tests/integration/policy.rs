//! Cedar policy on the real broker: decisions per call, denial texts, audit policy ids,
//! `tools/list` filtering, fail-closed evaluation errors, `check` diagnostics, `mandate test`,
//! and the hard tenant and region walls.

use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use crate::common::*;

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = arguments.as_object().cloned();
    p
}

const TOOLS: &str = r#""finance/ledger/get_invoice", "finance/ledger/get_supplier", "finance/ledger/pay_invoice", "finance/ledger/slow_report", "finance/ledger/approve_invoice""#;

const POLICY: &str = r#"@id("reads")
permit (principal, action in Action::"call", resource) when { resource.effect == "read" };

@id("pay-small")
permit (principal, action == Action::"call:pay_invoice", resource)
when { context.args.amount_cents < 1000 };

@id("no-supplier")
forbid (principal, action == Action::"call:get_supplier", resource);

// Overflows for any argument: the forbid errors, and the call must still be denied.
@id("overflow")
forbid (principal, action == Action::"call:slow_report", resource)
when { context.args.seconds * 9223372036854775807 > 1 };
"#;

fn policy_ws(policy: &str) -> Workspace {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.write("missions/finance/prod/review.cedar", policy);
    ws.mission("finance/prod/review", TOOLS, "");
    ws.pin();
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_decide_each_call_and_the_audit_names_them() {
    let ws = policy_ws(POLICY);
    let server = ws.serve();
    let token = ws.token(Some("finance/prod/review"));
    let client = client(&server.mission_url("finance/prod/review"), &token).await;

    // tools/list: only what the caller could be permitted; argument-dependent tools stay.
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["get_invoice", "pay_invoice", "slow_report"]);

    let ok = client
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(ok.is_error, Some(false), "{ok:?}");

    // A forbid on the tool: answered exactly like an unknown tool.
    let forbidden = client
        .call_tool(call("get_supplier", json!({"supplier_id": "SUP-001"})))
        .await
        .unwrap_err()
        .to_string();
    let unknown = client
        .call_tool(call("no_such_tool", json!({})))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        forbidden.replace("get_supplier", "X"),
        unknown.replace("no_such_tool", "X")
    );
    // No permit at all: also unknown.
    let unpermitted = client
        .call_tool(call("approve_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap_err()
        .to_string();
    assert!(unpermitted.contains("tool not found"), "{unpermitted}");

    // Denied on its arguments: "denied by policy", nothing more.
    let small = client
        .call_tool(call(
            "pay_invoice",
            json!({"invoice_id": "INV-1001", "amount_cents": 999}),
        ))
        .await;
    assert!(small.is_ok(), "{small:?}");
    let big = client
        .call_tool(call(
            "pay_invoice",
            json!({"invoice_id": "INV-1001", "amount_cents": 482050}),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(big.contains("denied by policy"), "{big}");
    assert!(
        !big.contains("pay-small") && !big.contains("cedar"),
        "{big}"
    );

    // An evaluation error denies (fail closed), with the same text.
    let errored = client
        .call_tool(call("slow_report", json!({"seconds": 2})))
        .await
        .unwrap_err()
        .to_string();
    assert!(errored.contains("denied by policy"), "{errored}");
    assert!(!errored.contains("overflow"), "{errored}");

    client.cancel().await.unwrap();
    server.stop();
    let records = audit_records(&ws);
    let find = |tool: &str, decision: &str| {
        records
            .iter()
            .find(|r| r["tool"] == tool && r["decision"] == decision)
            .unwrap_or_else(|| panic!("no {decision} record for {tool}: {records:#?}"))
            .clone()
    };
    assert_eq!(
        find("get_invoice", "allow")["policy"],
        "finance/prod/review.cedar:reads"
    );
    assert_eq!(
        find("pay_invoice", "allow")["policy"],
        "finance/prod/review.cedar:pay-small"
    );
    assert_eq!(
        find("get_supplier", "deny")["policy"],
        "finance/prod/review.cedar:no-supplier"
    );
    assert_eq!(
        find("pay_invoice", "deny")["policy"],
        "mandate:default-deny"
    );
    let errored = find("slow_report", "deny");
    assert!(
        errored["detail"]
            .as_str()
            .unwrap()
            .contains("evaluation error"),
        "{errored}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mission_without_policies_denies_and_says_so() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission("finance/prod/review", r#""finance/ledger/get_invoice""#, "");
    std::fs::remove_file(ws.path().join("missions/finance/prod/review.cedar")).unwrap();
    ws.pin();
    let out = ws.mandate(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("review.toml: warning: DENIES EVERY CALL: no policy file `review.cedar`"),
        "{stderr}"
    );
    assert!(!stderr.contains("not enforced yet; this file"), "{stderr}");
    let server = ws.serve();
    eventually(10, "the warning at startup", || {
        server.log().contains("DENIES EVERY CALL")
    })
    .await;
    let token = ws.token(Some("finance/prod/review"));
    let client = client(&server.mission_url("finance/prod/review"), &token).await;
    assert!(client.list_all_tools().await.unwrap().is_empty());
    let e = client
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tool not found"), "{e}");
    client.cancel().await.unwrap();
    server.stop();
}

#[test]
fn check_reports_every_policy_problem_and_serve_refuses_to_start() {
    let ws = policy_ws(
        "permit (principal, action == Action::\"call:pay_invoice\", resource)\n  when { context.args.amount > 1 };\npermit (principal, action, resource) when { principal.department == \"x\" };\n",
    );
    let out = ws.mandate(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let path = "missions/finance/prod/review.cedar";
    assert!(
        stderr.contains(&format!("{path}:2:10: for policy `finance/prod/review.cedar:policy0`, attribute `args.amount` in context for Action::\"call:pay_invoice\" not found (did you mean `amount_cents`?)")),
        "{stderr}"
    );
    assert!(
        stderr.contains("    |   when { context.args.amount > 1 };"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:3:45: for policy `finance/prod/review.cedar:policy1`, unable to guarantee safety of access to optional attribute `department`")),
        "{stderr}"
    );
    // A syntax error.
    ws.write(path, "permit (principal, action, resource) when { 1 + };\n");
    let stderr = String::from_utf8_lossy(&ws.mandate(&["check"]).stderr).into_owned();
    assert!(
        stderr.contains(&format!("{path}:1:49: unexpected token `}}`")),
        "{stderr}"
    );
    let out = ws.mandate(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{path}:1:49")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn schema_cedar_prints_typed_arguments() {
    let ws = policy_ws(PERMIT_ALL);
    let out = ws.mandate(&["schema", "cedar", "--mission", "finance/prod/review"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("entity User in [Tenant]"), "{text}");
    assert!(
        text.contains("action \"call:pay_invoice\" in [call] appliesTo"),
        "{text}"
    );
    assert!(
        text.contains("args: {\"invoice_id\": String, \"amount_cents\": Long}"),
        "{text}"
    );
}

/// A decision case can describe a handed-over call (`chain`: the agents of the earlier hops),
/// so a mission author tests chain policies as the broker decides them.
#[test]
fn decision_cases_describe_the_actor_chain() {
    let ws = policy_ws(&format!(
        "{POLICY}\n@id(\"not-for-a\")\nforbid (principal, action in Action::\"call\", resource) when {{ context.chain.contains(\"a-bot\") }};\n"
    ));
    ws.write(
        "missions/finance/prod/review.cases.toml",
        r#"[[case]]
name = "a direct read"
tool = "get_invoice"
arguments = { invoice_id = "INV-1001" }
expect = "allow"
policies = ["reads"]

[[case]]
name = "a read handed over by a-bot"
tool = "get_invoice"
arguments = { invoice_id = "INV-1001" }
chain = ["a-bot"]
expect = "deny"
policies = ["not-for-a"]

[[case]]
name = "a read handed over by another agent"
tool = "get_invoice"
arguments = { invoice_id = "INV-1001" }
chain = ["c-bot"]
expect = "allow"
"#,
    );
    let out = ws.mandate(&["test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("test result: ok. 3 passed; 0 failed"),
        "{stdout}"
    );
    // Expecting the handed-over read to pass fails, naming the chain policy.
    ws.write(
        "missions/finance/prod/review.cases.toml",
        r#"[[case]]
name = "a read handed over by a-bot"
tool = "get_invoice"
arguments = { invoice_id = "INV-1001" }
chain = ["a-bot"]
expect = "allow"
"#,
    );
    let out = ws.mandate(&["test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("expected allow, got deny"), "{stdout}");
}

#[test]
fn mandate_test_runs_the_cases_and_fails_on_a_mismatch() {
    let ws = policy_ws(POLICY);
    ws.write(
        "missions/finance/prod/review.cases.toml",
        r#"[[case]]
name = "reads are open"
tool = "get_invoice"
arguments = { invoice_id = "INV-1001" }
expect = "allow"
policies = ["reads"]

[[case]]
name = "large payments are refused"
tool = "pay_invoice"
arguments = { invoice_id = "INV-1001", amount_cents = 5000 }
expect = "deny"
"#,
    );
    let out = ws.mandate(&["test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("case finance/prod/review :: reads are open ... ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("test result: ok. 2 passed; 0 failed"),
        "{stdout}"
    );
    // A wrong expectation fails the run and says what differed.
    ws.write(
        "missions/finance/prod/review.cases.toml",
        r#"[[case]]
name = "suppliers are open"
tool = "get_supplier"
arguments = { supplier_id = "SUP-001" }
expect = "allow"
"#,
    );
    let out = ws.mandate(&["test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("suppliers are open ... FAILED"), "{stdout}");
    assert!(stdout.contains("expected allow, got deny"), "{stdout}");
    assert!(
        stdout.contains("test result: FAILED. 0 passed; 1 failed"),
        "{stdout}"
    );
    // A case naming a tool the mission lacks is a located error.
    ws.write(
        "missions/finance/prod/review.cases.toml",
        "[[case]]\nname = \"x\"\ntool = \"get_invoce\"\nexpect = \"allow\"\n",
    );
    let out = ws.mandate(&["test"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("review.cases.toml:3:8: unknown tool `get_invoce`"),
        "{stderr}"
    );
    // `mandate check` reads the cases files too, so the same mistake fails the check.
    let out = ws.mandate(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("review.cases.toml:3:8: unknown tool `get_invoce`"),
        "{stderr}"
    );
    ws.write(
        "missions/finance/prod/review.cases.toml",
        "[[case]]\nname = \"x\"\ntool = \"get_invoice\"\nexpekt = \"allow\"\n",
    );
    let out = ws.mandate(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("review.cases.toml:4:1:") && stderr.contains("expekt"),
        "{stderr}"
    );
}

#[test]
fn shipped_missions_pass_their_decision_cases() {
    let out = std::process::Command::new(mandate_bin())
        .args(["test", "--config"])
        .arg(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("has no decision cases"), "{stdout}");
    assert!(stdout.contains("test result: ok."), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn walls_hold_against_a_permit_everything_policy() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice""#,
        "regions = [\"eu-west-1\"]",
    );
    // globex's mission on the same broker, with a permit-everything policy.
    ws.permit_all("finance/prod/globex");
    ws.write(
        "missions/finance/prod/globex.toml",
        "description = \"x\"\ntenant = \"globex\"\nowner = \"o\"\nexpires = 2099-01-01\nagents = [\"bot\"]\ntools = [\"finance/ledger/get_invoice\"]\n",
    );
    ws.pin();
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");

    // A caller of the right tenant and region gets through.
    let eu = ws.token_with(
        "alice@acme.example",
        "acme",
        "finance/prod/review",
        &["region=eu-west-1"],
    );
    let c = client(&url, &eu).await;
    let ok = c
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(ok.is_error, Some(false));
    c.cancel().await.unwrap();

    // A token bound to another region is refused on the mission, whatever the policy says.
    let us = ws.token_with(
        "alice@acme.example",
        "acme",
        "finance/prod/review",
        &["region=us-east-1"],
    );
    let status = initialize_status(&url, &us).await;
    assert_eq!(status, 403);

    // A globex token (broker-wide audience) is refused on acme's mission.
    let globex = ws.token_for("bob@globex.example", "globex", "bot", None);
    assert_eq!(initialize_status(&url, &globex).await, 403);
    server.stop();
    let records = audit_records(&ws);
    let refused = |tenant: &str, why: &str| {
        records.iter().any(|r| {
            r["tenant"] == tenant
                && r["outcome"] == "forbidden"
                && r["detail"].as_str().is_some_and(|d| d.contains(why))
        })
    };
    assert!(
        refused("globex", "token tenant is not the mission's tenant"),
        "{records:#?}"
    );
    assert!(
        refused("acme", "token region is not one of the mission's regions"),
        "{records:#?}"
    );
}

async fn initialize_status(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

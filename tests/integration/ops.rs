//! Operating one configuration (issue 7 items 6, 11, 14 and `keys rotate`): `serve --stdio`
//! bridged to a running broker, a start no CLI command can break, key rotation while serving,
//! refusals that keep the connection, and a broker behind a TLS-terminating proxy.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

use crate::common::*;

const MISSION: &str = "finance/prod/review";

/// The mission `hr/prod/other` of tenant globex (agent bot), without tools.
fn other_tenant_mission(ws: &Workspace) {
    ws.write(
        "missions/hr/prod/other.toml",
        "description = \"x\"\ntenant = \"globex\"\nowner = \"o\"\nexpires = 2099-01-01\nagents = [\"bot\"]\ntools = []\n",
    );
}

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = arguments.as_object().cloned();
    p
}

fn ledger_ws(tools: &str) -> Workspace {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(MISSION, tools, "");
    ws.pin();
    ws
}

/// `get_invoice` of the approved sample invoice answers it, through whatever `client` reaches.
async fn assert_reads_an_approved_invoice<H: ClientHandler>(
    client: &RunningService<RoleClient, H>,
) {
    let r = client
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1003"})))
        .await
        .unwrap();
    assert_eq!(r.structured_content.unwrap()["status"], "approved");
}

/// An MCP client over `mandate serve --stdio --mission <mission>` with `token`.
async fn stdio_client<H: ClientHandler>(
    ws: &Workspace,
    mission: &str,
    token: &str,
    handler: H,
) -> Result<RunningService<RoleClient, H>, rmcp::service::ClientInitializeError> {
    use rmcp::transport::TokioChildProcess;
    let mut cmd = tokio::process::Command::new(mandate_bin());
    cmd.args(["serve", "--stdio", "--mission", mission])
        .current_dir(ws.path())
        .env("MANDATE_TOKEN", token)
        .env("MANDATE_LOG", "warn");
    handler.serve(TokioChildProcess::new(cmd).unwrap()).await
}

/// Item 11: with a broker serving the configuration, `serve --stdio` relays to it; both
/// transports run at once, the calls land in one audit chain, and it verifies.
#[tokio::test(flavor = "multi_thread")]
async fn stdio_is_bridged_to_the_running_broker_and_both_transports_share_one_chain() {
    let ws = ledger_ws(r#""finance/ledger/get_invoice", "finance/ledger/slow_report""#);
    let server = ws.serve();
    // Over HTTP, as alice.
    let alice = client(&server.mission_url(MISSION), &ws.token(Some(MISSION))).await;
    // Over stdio on the same configuration, as bob, while alice's session stays open.
    let bob_token = ws.token_for("bob@acme.example", "acme", "bot", Some(MISSION));
    let progress = crate::broker::Progress::default();
    let bob = stdio_client(&ws, MISSION, &bob_token, progress.clone())
        .await
        .expect("serve --stdio must start while the broker runs");
    let r = alice
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    assert_reads_an_approved_invoice(&bob).await;
    // Notifications cross the bridge: progress of a slow call reaches the stdio client.
    let r = bob
        .call_tool(call("slow_report", json!({"seconds": 1})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    eventually(5, "progress over the bridge", || {
        !progress.0.lock().unwrap().is_empty()
    })
    .await;
    bob.cancel().await.unwrap();
    alice.cancel().await.unwrap();

    // A token the broker refuses fails the stdio client's start (the broker decides).
    let Err(refused) = stdio_client(&ws, MISSION, "not-a-token", ()).await else {
        panic!("a garbage MANDATE_TOKEN must not connect");
    };
    // The client learns the broker's reason.
    assert!(
        refused.to_string().contains("malformed bearer token"),
        "{refused}"
    );

    // Both calls are in the broker's chain (read through its admin API while it runs).
    let records = audit_records(&ws);
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "get_invoice" && r["outcome"] == "ok")
        .collect();
    for sub in ["alice@acme.example", "bob@acme.example"] {
        assert!(
            calls.iter().any(|r| r["subject"] == sub),
            "{sub}'s call is audited: {calls:?}"
        );
    }
    assert_eq!(calls[0]["chain"], calls[1]["chain"], "{calls:?}");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "auth_failure" && r["outcome"] == "unauthenticated"),
        "the refused stdio token is audited by the broker"
    );
    server.stop();
    let out = ws.mandate(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Item 11: a credential left by a broker that is gone (killed) does not send `serve --stdio`
/// to a dead address: it serves standalone on the store.
#[tokio::test(flavor = "multi_thread")]
async fn stdio_runs_standalone_when_the_broker_that_left_a_credential_is_gone() {
    let ws = ledger_ws(r#""finance/ledger/get_invoice""#);
    let token = ws.token(Some(MISSION));
    let server = ws.serve();
    let url = server.url.clone();
    server.kill9();
    assert!(ws.path().join(".mandate/admin.json").exists());
    assert!(reqwest::get(format!("{url}/healthz")).await.is_err());
    let client = stdio_client(&ws, MISSION, &token, ()).await.unwrap();
    assert_reads_an_approved_invoice(&client).await;
    client.cancel().await.unwrap();
    let out = ws.mandate(&["audit", "verify"]);
    assert!(out.status.success());
}

/// Item 11: server→client requests cross the bridge too (`roots/list` from a downstream that
/// asks during a call, answered by the stdio client).
#[tokio::test(flavor = "multi_thread")]
async fn server_requests_cross_the_stdio_bridge() {
    let ws = crate::interop::conformance_workspace(None);
    let server = ws.serve();
    let token = ws.token_for(
        "alice@example.com",
        "conformance",
        "conformance-suite",
        Some("conformance/dev/suite"),
    );
    let client = stdio_client(
        &ws,
        "conformance/dev/suite",
        &token,
        crate::interop::Roots("file:///home/alice-over-stdio"),
    )
    .await
    .unwrap();
    let r = client
        .call_tool(CallToolRequestParams::new("test_roots"))
        .await
        .unwrap();
    let text = serde_json::to_string(&r.content).unwrap();
    assert!(text.contains("file:///home/alice-over-stdio"), "{text}");
    client.cancel().await.unwrap();
    server.stop();
}

/// Item 11, race-free start: CLI commands run while the broker starts (before, during and
/// right after it takes the store) all succeed, and the broker always comes up.
#[test]
fn cli_commands_racing_a_starting_broker_never_take_it_down() {
    let ws = Workspace::new();
    ws.mission(MISSION, "", "");
    for attempt in 0..10 {
        let mut broker = Command::new(mandate_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(ws.path())
            .env("MANDATE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // At once, without waiting for the port.
        for args in [
            &[
                "token",
                "--sub",
                "a@acme.example",
                "--tenant",
                "acme",
                "--agent",
                "bot",
                "--mission",
                MISSION,
            ][..],
            &["audit", "verify"][..],
            &[
                "token",
                "--sub",
                "b@acme.example",
                "--tenant",
                "acme",
                "--agent",
                "bot",
                "--mission",
                MISSION,
            ][..],
        ] {
            let out = ws.mandate(args);
            assert!(
                out.status.success(),
                "attempt {attempt}: `mandate {}` failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut lines = BufReader::new(broker.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        if !first.starts_with("mandate listening on") {
            let _ = broker.kill();
            let out = broker.wait_with_output().unwrap();
            panic!(
                "attempt {attempt}: the broker did not come up: {first}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::spawn(move || for _ in lines {});
        // Right after the port opens, through the admin API.
        let out = ws.mandate(&["audit", "verify"]);
        assert!(out.status.success(), "attempt {attempt}");
        assert!(
            broker.try_wait().unwrap().is_none(),
            "attempt {attempt}: broker exited"
        );
        // A second broker on the same store is refused at once, naming the first.
        if attempt == 9 {
            let second = ws.mandate(&["serve", "--listen", "127.0.0.1:0"]);
            assert!(!second.status.success());
            let err = String::from_utf8_lossy(&second.stderr);
            assert!(
                err.contains(&format!("pid {}", broker.id())),
                "the refusal names the running server: {err}"
            );
        }
        Command::new("kill")
            .args(["-TERM", &broker.id().to_string()])
            .status()
            .unwrap();
        assert!(broker.wait().unwrap().success(), "attempt {attempt}");
    }
}

use crate::security::kid;

/// `mandate keys rotate` while the broker runs: the new key signs new tokens at once, the old
/// one stays in the JWKS and its tokens stay valid.
#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_while_serving_signs_new_tokens_at_once() {
    let ws = Workspace::new();
    ws.mission(MISSION, "", "");
    let server = ws.serve();
    let old = ws.token(Some(MISSION));
    let out = ws.mandate(&["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&kid(&old)), "names the retired key: {said}");
    let new = ws.token(Some(MISSION));
    assert_ne!(
        kid(&old),
        kid(&new),
        "the running server signs with the new key"
    );
    assert!(said.contains(&kid(&new)), "names the new key: {said}");
    let kids = jwks_kids(&server.url).await;
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(kids.contains(&kid(&old)) && kids.contains(&kid(&new)));
    for token in [&old, &new] {
        let c = client(&server.mission_url(MISSION), token).await;
        c.list_all_tools().await.unwrap();
        c.cancel().await.unwrap();
    }
    let records = audit_records(&ws);
    assert!(
        records.iter().any(|r| r["kind"] == "key_rotated"
            && r["detail"].as_str().is_some_and(|d| d.contains(&kid(&new)))),
        "the rotation is audited"
    );
    server.stop();
    // The rotation is in the store: after a restart the new key still signs.
    let server = ws.serve();
    assert_eq!(kid(&ws.token(Some(MISSION))), kid(&new));
    server.stop();
}

/// Item 14: thousands of refusals of every shape on ONE kept-alive connection — garbage and
/// missing tokens, no body, small and chunked bodies, bodies far larger than the old drain
/// bound, a valid token of another tenant (403), an unknown mission path — each gets its answer
/// and the connection stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_of_every_shape_keep_one_connection_alive() {
    let ws = Workspace::new();
    ws.mission(MISSION, "", "");
    other_tenant_mission(&ws);
    let server = ws.serve();
    let foreign = ws.token_for("eve@globex.example", "globex", "bot", None);
    let address = server.url.trim_start_matches("http://").to_owned();
    tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(&address).unwrap();
        socket.set_nodelay(true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let small = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}"#;
        let large = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"pad":"{}"}}}}}}"#,
            "x".repeat(300 * 1024)
        );
        let head = |method: &str, path: &str, auth: &str| {
            format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n")
        };
        let mission = format!("/mcp/{MISSION}");
        let garbage = "Authorization: Bearer not-a-token\r\n";
        let mut buffer = Vec::new();
        for i in 0..3000 {
            let (request, expected) = match i % 7 {
                0 => (
                    format!("{}Content-Length: {}\r\n\r\n{small}", head("POST", &mission, garbage), small.len()),
                    "401",
                ),
                1 => (format!("{}Content-Length: 0\r\n\r\n", head("POST", &mission, "")), "401"),
                2 => (format!("{}\r\n", head("GET", &mission, garbage)), "401"),
                3 => (
                    format!(
                        "{}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\n",
                        head("POST", &mission, garbage),
                        small.len()
                    ),
                    "401",
                ),
                4 => (
                    format!(
                        "{}Content-Length: {}\r\n\r\n{small}",
                        head("POST", "/mcp/nowhere/prod/none", garbage),
                        small.len()
                    ),
                    "401",
                ),
                5 => (
                    format!(
                        "{}Content-Length: {}\r\n\r\n{small}",
                        head("POST", &mission, &format!("Authorization: Bearer {foreign}\r\n")),
                        small.len()
                    ),
                    "403",
                ),
                // Far beyond what used to be read before answering (64 KiB), now and then.
                _ if i % 70 == 6 => (
                    format!("{}Content-Length: {}\r\n\r\n{large}", head("POST", &mission, garbage), large.len()),
                    "401",
                ),
                _ => (
                    format!("{}Content-Length: {}\r\n\r\n{small}", head("POST", &mission, "Authorization: Basic Zm9vOmJhcg==\r\n"), small.len()),
                    "401",
                ),
            };
            socket.write_all(request.as_bytes()).unwrap();
            let head = read_response(&mut socket, &mut buffer, i);
            assert!(
                head.starts_with(&format!("http/1.1 {expected}")),
                "request {i}: {head}"
            );
            assert!(!head.contains("connection: close"), "request {i}: {head}");
        }
    })
    .await
    .unwrap();
    server.stop();
}

/// `mandate serve --listen <addr>` that must exit at once; its stderr.
fn serve_refused(ws: &Workspace, listen: &str) -> String {
    let mut child = Command::new(mandate_bin())
        .args(["serve", "--listen", listen])
        .current_dir(ws.path())
        .env("MANDATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "`serve --listen {listen}` must be refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Item 6: beyond loopback without `[server] tls`, the start is refused naming both ways out;
/// an https `public_url` (TLS terminated by a proxy in front) is allowed, and the broker then
/// answers the proxy's plain HTTP with URLs of the public https origin.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_tls_terminating_proxy_an_https_public_url_allows_a_plain_listener() {
    let ws = Workspace::new();
    ws.mission(MISSION, "", "");
    let err = serve_refused(&ws, "0.0.0.0:0");
    assert!(err.contains("add `[server] tls"), "{err}");
    assert!(err.contains("public_url = \"https://"), "{err}");
    // An http public URL is not a TLS-terminating proxy.
    ws.write(
        "mandate.toml",
        "[server]\npublic_url = \"http://mandate.example.com\"\n",
    );
    let err = serve_refused(&ws, "0.0.0.0:0");
    assert!(err.contains("add `[server] tls"), "{err}");

    ws.write(
        "mandate.toml",
        "[server]\npublic_url = \"https://mandate.example.com\"\n",
    );
    let server = ws.serve_on("0.0.0.0:0");
    assert_eq!(server.url, "https://mandate.example.com");
    let cred: Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path().join(".mandate/admin.json")).unwrap(),
    )
    .unwrap();
    let direct = format!("{}/mcp/{MISSION}", cred["url"].as_str().unwrap());
    // What the proxy forwards: plain HTTP with the public Host.
    let http = reqwest::Client::new();
    let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = http
        .post(&direct)
        .header("host", "mandate.example.com")
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"https://mandate.example.com/.well-known/oauth-protected-resource/mcp/{MISSION}\""
        )),
        "{challenge}"
    );
    let token = ws.token(Some(MISSION));
    let r = http
        .post(&direct)
        .header("host", "mandate.example.com")
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(&token)
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    server.stop();
}

/// A TOML document as the JSON an editor validates (dates and times as strings).
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// The manifests under `dir` (not the policy decision cases, `<mission>.cases.toml`, which
/// `mandate test` reads and checks).
fn toml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let cases = path.to_string_lossy().ends_with(".cases.toml");
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") && !cases {
            out.push(path);
        }
    }
}

/// The errors of `text` (TOML) against the JSON Schema `schema`.
fn schema_errors(schema: &Value, text: &str) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).unwrap();
    let instance = toml_to_json(toml::Value::Table(toml::from_str(text).unwrap()));
    validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect()
}

/// Item 15: `mandate schema manifests` writes the schemas that ship in `schemas/` (they are
/// current), every shipped mission and tool manifest points at its schema with `#:schema` and
/// validates against it, and a misspelt field is rejected in each file type.
#[test]
fn editor_schemas_are_current_and_every_shipped_file_validates() {
    let out = tempfile::tempdir().unwrap();
    let written = Command::new(mandate_bin())
        .args(["schema", "manifests", "--out"])
        .arg(out.path())
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(written.status.success());
    let schemas = repo().join("schemas");
    let mut by_name = std::collections::BTreeMap::new();
    for name in [
        "mandate.schema.json",
        "mission.schema.json",
        "tool-manifest.schema.json",
    ] {
        let generated = std::fs::read_to_string(out.path().join(name)).unwrap();
        let shipped = std::fs::read_to_string(schemas.join(name)).unwrap_or_default();
        assert_eq!(
            generated, shipped,
            "schemas/{name} is out of date: run `mandate schema manifests` and commit it"
        );
        by_name.insert(name, serde_json::from_str::<Value>(&generated).unwrap());
    }
    let mut files = Vec::new();
    toml_files(&repo().join("missions"), &mut files);
    toml_files(&repo().join("tool-manifests"), &mut files);
    assert!(files.len() >= 4, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected = if file.starts_with(repo().join("missions")) {
            "mission.schema.json"
        } else {
            "tool-manifest.schema.json"
        };
        let directive = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("#:schema "))
            .unwrap_or_else(|| panic!("{} has no `#:schema` first line", file.display()));
        let target = file.parent().unwrap().join(directive.trim());
        assert_eq!(
            target.canonicalize().unwrap(),
            schemas.join(expected).canonicalize().unwrap(),
            "{}",
            file.display()
        );
        let errors = schema_errors(&by_name[expected], &text);
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
    // A misspelt field is rejected, in each file type.
    let mission =
        std::fs::read_to_string(repo().join("missions/finance/prod/invoice-review.toml")).unwrap();
    let misspelt = mission.replacen("tenant = ", "tennant = ", 1);
    assert!(!schema_errors(&by_name["mission.schema.json"], &misspelt).is_empty());
    let manifest =
        std::fs::read_to_string(repo().join("tool-manifests/finance/ledger.toml")).unwrap();
    let misspelt = manifest.replacen("effect = ", "effct = ", 1);
    assert_ne!(misspelt, manifest);
    assert!(!schema_errors(&by_name["tool-manifest.schema.json"], &misspelt).is_empty());
    let settings = &by_name["mandate.schema.json"];
    assert!(schema_errors(settings, "[server]\nlisten = \"127.0.0.1:8080\"\n").is_empty());
    assert!(!schema_errors(settings, "[server]\nlisen = \"127.0.0.1:8080\"\n").is_empty());
}

/// Item 5: an authenticated caller refused for a mission learns which rule refused it (and the
/// audit record has it); an unknown path answers another tenant's caller like a mission of
/// another tenant does.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_caller_learns_which_rule_refused_it() {
    let ws = Workspace::new();
    ws.mission(MISSION, "", "");
    ws.write(
        "missions/finance/prod/helpdesk.toml",
        "description = \"x\"\ntenant = \"acme\"\nowner = \"o\"\nexpires = 2099-01-01\nagents = [\"helper\"]\ntools = []\n",
    );
    other_tenant_mission(&ws);
    let server = ws.serve();
    let http = reqwest::Client::new();
    let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let refusal = |path: String, token: String| {
        let request = http
            .post(format!("{}{path}", server.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let other_agent = ws.token_for("alice@acme.example", "acme", "helper", None);
    let other_tenant = ws.token_for("eve@globex.example", "globex", "bot", None);
    let (status, body) = refusal(format!("/mcp/{MISSION}"), other_agent).await;
    assert_eq!(status, 403);
    assert!(
        body.contains("agent is not allowed on this mission"),
        "{body}"
    );
    let (status, body) = refusal(format!("/mcp/{MISSION}"), other_tenant.clone()).await;
    assert_eq!(status, 403);
    assert!(
        body.contains("tenant is not the mission's tenant"),
        "{body}"
    );
    assert_eq!(
        refusal("/mcp/finance/prod/nothing-here".into(), other_tenant).await,
        (status, body)
    );
    server.stop();
    let records = audit_records(&ws);
    assert!(
        records.iter().any(|r| r["kind"] == "auth_failure"
            && r["outcome"] == "forbidden"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("agent is not allowed"))),
        "the audit names the rule too"
    );
}

const PY_STDIO_CLIENT: &str = r#"
import sys, json, anyio
from mcp import Client
from mcp.client.stdio import stdio_client, StdioServerParameters
binary, config, mission, token, mode = sys.argv[1:6]
async def main():
    params = StdioServerParameters(command=binary, args=["serve", "--stdio", "--mission", mission, "--config", config],
                                   env={"MANDATE_TOKEN": token, "MANDATE_LOG": "warn"})
    async with Client(stdio_client(params), mode=mode) as c:
        tools = await c.list_tools()
        r = await c.call_tool("get_current_time", {"timezone": "Etc/UTC"})
        print(json.dumps({"protocol": str(c.protocol_version), "tools": [t.name for t in tools.tools],
                          "is_error": r.is_error, "timezone": (r.structured_content or {}).get("timezone")}))
anyio.run(main)
"#;

/// Item 11 with a client nobody here wrote: the Python `mcp` SDK's stdio client, in `auto`
/// (2026-07-28, no handshake) and `legacy` (2025-11-25) modes, through `serve --stdio` bridged to
/// the running broker.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_stdio_client_through_the_bridge_in_both_revisions() {
    let ws = crate::interop::time_workspace("2025-11-25");
    let server = ws.serve();
    let token = ws.token(Some("ops/prod/clock"));
    for (mode, protocol) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let out = Command::new(peers().join("venv/bin/python"))
            .args(["-c", PY_STDIO_CLIENT])
            .arg(mandate_bin())
            .arg(ws.path())
            .args(["ops/prod/clock", &token, mode])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python stdio client ({mode}) failed: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let v: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
        assert_eq!(v["protocol"], protocol, "{v}");
        assert_eq!(v["tools"], json!(["get_current_time"]), "{v}");
        assert_eq!(v["is_error"], false, "{v}");
        assert_eq!(v["timezone"], "Etc/UTC", "{v}");
    }
    server.stop();
    let calls = audit_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "get_current_time" && r["outcome"] == "ok")
        .count();
    assert_eq!(calls, 2, "both stdio calls are in the broker's audit log");
}

/// Item 11 on a broker serving HTTPS: the bridge reaches the mission on the broker's plain
/// loopback port (the one the CLI uses), and the broker still verifies the token.
#[tokio::test(flavor = "multi_thread")]
async fn the_stdio_bridge_reaches_a_broker_that_serves_https() {
    let ws = ledger_ws(r#""finance/ledger/get_invoice""#);
    certificate(&ws);
    ws.write(
        "mandate.toml",
        "[server]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
    );
    let server = ws.serve();
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let client = stdio_client(&ws, MISSION, &ws.token(Some(MISSION)), ())
        .await
        .unwrap();
    assert_reads_an_approved_invoice(&client).await;
    client.cancel().await.unwrap();
    assert!(stdio_client(&ws, MISSION, "not-a-token", ()).await.is_err());
    server.stop();
}

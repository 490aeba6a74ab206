//! Interop with peers nobody here wrote: the official MCP conformance suite, the Python `mcp`
//! SDK client (modes auto and legacy), and the MCP Inspector CLI, through Mandate, to
//! third-party downstreams.

use std::process::Command;

use crate::common::*;

/// The conformance fixture (examples/conformance_fixture.py) behind a Mandate mission, as a
/// stdio child, or (with `http`) as a streamable HTTP server started here.
/// The Python conformance fixture serving streamable HTTP on a free port, once it answers.
async fn start_http_fixture() -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fixture = tokio::process::Command::new(peers().join("venv/bin/python"))
        .arg(repo().join("examples/conformance_fixture.py"))
        .args(["--http", &port.to_string()])
        .kill_on_drop(true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let probe = reqwest::Client::new();
    for _ in 0..100 {
        if probe.get(&url).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (fixture, url)
}

pub fn conformance_workspace(http: Option<&str>) -> Workspace {
    let peers = peers();
    let ws = Workspace::new();
    let tools = [
        "test_simple_text",
        "test_image_content",
        "test_audio_content",
        "test_embedded_resource",
        "test_multiple_content_types",
        "test_tool_with_logging",
        "test_tool_with_progress",
        "test_error_handling",
        "test_sampling",
        "test_elicitation",
        "test_elicitation_sep1034_defaults",
        "test_elicitation_sep1330_enums",
        "json_schema_2020_12_tool",
        "test_reconnection",
        "test_roots",
    ];
    let transport = match http {
        Some(url) => format!("kind = \"http\"\nurl = \"{url}\"\n"),
        None => format!(
            "kind = \"stdio\"\ncommand = \"{}\"\nargs = [\"{}\"]\n",
            peers.join("venv/bin/python").display(),
            repo().join("examples/conformance_fixture.py").display()
        ),
    };
    let mut manifest = format!(
        "description = \"MCP conformance fixture\"\nenvironments = [\"dev\"]\nregion = \"local\"\n\n[transport]\n{transport}"
    );
    for t in tools {
        manifest.push_str(&format!("\n[[tools]]\nname = \"{t}\"\neffect = \"read\"\n"));
    }
    ws.write("tool-manifests/conformance/fixture.toml", &manifest);
    ws.permit_all("conformance/dev/suite");
    ws.write(
        "missions/conformance/dev/suite.toml",
        r#"description = "every conformance fixture"
tenant = "conformance"
owner = "ci@mandate.example"
expires = 2099-12-31
agents = ["conformance-suite"]
tools = ["conformance/fixture/*"]
resources = ["conformance/fixture"]
prompts = ["conformance/fixture"]
"#,
    );
    ws.pin();
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_through_mandate_to_a_stdio_downstream() {
    run_conformance(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_passes_through_mandate_to_an_http_downstream() {
    let (mut fixture, url) = start_http_fixture().await;
    run_conformance(Some(&url)).await;
    let _ = fixture.kill().await;
}

async fn run_conformance(http: Option<&str>) {
    let ws = conformance_workspace(http);
    let server = ws.serve();
    let token = ws.token_for(
        "ci@mandate.example",
        "conformance",
        "conformance-suite",
        Some("conformance/dev/suite"),
    );
    let front = auth_front(&server.url, &token).await;
    let url = format!("{front}/mcp/conformance/dev/suite");
    let bin = node22_bin_dir();
    let out_dir = ws.path().join("conformance-results");
    let output = tokio::process::Command::new(peers().join("npm/node_modules/.bin/conformance"))
        .args(["server", "--url", &url, "-o"])
        .arg(&out_dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("HOME", ws.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let total = stdout
        .lines()
        .rev()
        .find(|l| l.contains("Total:"))
        .unwrap_or("no total")
        .to_owned();
    println!("conformance: {total}");
    assert!(
        output.status.success() && total.contains(" 0 failed"),
        "conformance failed: {total}\n{stdout}\n{}\nmandate log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    let passed: u32 = total
        .split("Total:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 40,
        "expected all 40 checks of the 30 scenarios: {total}"
    );
    server.stop();
    let verify = ws.mandate(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// A workspace fronting PyPI `mcp-server-time` (mcp 2.x: speaks 2026-07-28 and the handshake
/// revisions) with one mission; `protocol` is the revision Mandate speaks to it.
pub(crate) fn time_workspace(protocol: &str) -> Workspace {
    let peers = peers();
    let ws = Workspace::new();
    ws.write(
        "tool-manifests/ops/clock.toml",
        &format!(
            r#"description = "mcp-server-time"
environments = ["prod"]
region = "eu-west-1"

[transport]
kind = "stdio"
command = "{}"
args = ["--local-timezone", "Etc/UTC"]
protocol = "{protocol}"

[[tools]]
name = "get_current_time"
effect = "read"
"#,
            peers.join("venv/bin/mcp-server-time").display()
        ),
    );
    ws.mission("ops/prod/clock", r#""ops/clock/get_current_time""#, "");
    ws.pin();
    ws
}

const PY_CLIENT: &str = r#"
import sys, json, anyio, httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
url, token, mode = sys.argv[1], sys.argv[2], sys.argv[3]
async def main():
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + token}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as c:
            tools = await c.list_tools()
            r = await c.call_tool("get_current_time", {"timezone": "Etc/UTC"})
            hidden = None
            try:
                await c.call_tool("convert_time", {"source_timezone": "Etc/UTC", "time": "12:00", "target_timezone": "Europe/Paris"})
            except Exception as e:
                hidden = str(e)
            print(json.dumps({"protocol": str(c.protocol_version), "tools": [t.name for t in tools.tools],
                              "is_error": r.is_error, "timezone": (r.structured_content or {}).get("timezone"),
                              "hidden": hidden}))
anyio.run(main)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_auto_and_legacy_through_mandate_to_mcp_server_time() {
    python_client_through_mandate("2025-11-25").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_through_mandate_to_a_stateless_2026_downstream() {
    python_client_through_mandate("2026-07-28").await;
}

async fn python_client_through_mandate(downstream_protocol: &str) {
    let ws = time_workspace(downstream_protocol);
    let server = ws.serve();
    let token = ws.token(Some("ops/prod/clock"));
    let url = server.mission_url("ops/prod/clock");
    for (mode, protocol) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let out = Command::new(peers().join("venv/bin/python"))
            .args(["-c", PY_CLIENT, &url, &token, mode])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python client ({mode}) failed: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let v: serde_json::Value =
            serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
        assert_eq!(v["protocol"], protocol, "{v}");
        // mcp-server-time serves two tools; the mission exposes one.
        assert_eq!(v["tools"], serde_json::json!(["get_current_time"]), "{v}");
        assert_eq!(v["is_error"], false);
        assert_eq!(v["timezone"], "Etc/UTC");
        assert!(
            v["hidden"]
                .as_str()
                .unwrap_or("")
                .contains("tool not found"),
            "{v}"
        );
    }
    // Without a token the Python client gets a 401.
    let out = Command::new(peers().join("venv/bin/python"))
        .args(["-c", PY_CLIENT, &url, "not-a-token", "legacy"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad token must be refused");
    server.stop();
    let records = audit_records(&ws);
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "auth_failure" && r["mission"] == "ops/prod/clock"),
        "the refused token must be audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_inspector_cli_lists_and_calls_through_mandate() {
    let ws = time_workspace("2025-06-18");
    let server = ws.serve();
    let token = ws.token(Some("ops/prod/clock"));
    let url = server.mission_url("ops/prod/clock");
    let inspector = peers().join("npm/node_modules/.bin/mcp-inspector");
    let path = format!(
        "{}:{}",
        node22_bin_dir().display(),
        std::env::var("PATH").unwrap()
    );
    let auth = format!("Authorization: Bearer {token}");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--cli",
            "--format",
            "json",
            "-q",
            url.as_str(),
            "--transport",
            "http",
            "--header",
            auth.as_str(),
        ];
        args.extend_from_slice(extra);
        Command::new(&inspector)
            .args(&args)
            .env("PATH", &path)
            .env("HOME", ws.path())
            .output()
            .unwrap()
    };
    let list = run(&["--method", "tools/list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "inspector tools/list failed: {text}\n{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_current_time"]);
    let call = run(&[
        "--method",
        "tools/call",
        "--tool-name",
        "get_current_time",
        "--tool-arg",
        "timezone=Etc/UTC",
    ]);
    let text = String::from_utf8_lossy(&call.stdout);
    assert!(
        call.status.success(),
        "inspector tools/call failed: {text}\n{}",
        String::from_utf8_lossy(&call.stderr)
    );
    assert!(text.contains("Etc/UTC"), "{text}");
    server.stop();
}

/// An MCP client that answers `roots/list` with its own root.
#[derive(Clone)]
pub(crate) struct Roots(pub &'static str);

#[allow(deprecated)]
impl rmcp::ClientHandler for Roots {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::new(
            rmcp::model::ClientCapabilities::builder()
                .enable_roots()
                .build(),
            rmcp::model::Implementation::new("roots-test", "1"),
        )
    }

    async fn list_roots(
        &self,
        _ctx: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::ListRootsResult, rmcp::ErrorData> {
        Ok(rmcp::model::ListRootsResult::new(vec![
            rmcp::model::Root::new(self.0),
        ]))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn roots_requests_reach_only_the_calling_client() {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let ws = conformance_workspace(None);
    let server = ws.serve();
    let url = server.mission_url("conformance/dev/suite");
    let connect = |sub: &'static str, root: &'static str| {
        let token = ws.token_for(
            sub,
            "conformance",
            "conformance-suite",
            Some("conformance/dev/suite"),
        );
        let url = url.clone();
        async move {
            let config =
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token);
            Roots(root)
                .serve(StreamableHttpClientTransport::from_config(config))
                .await
                .unwrap()
        }
    };
    let alice = connect("alice@example.com", "file:///home/alice").await;
    let bob = connect("bob@example.com", "file:///home/bob").await;
    let call = || rmcp::model::CallToolRequestParams::new("test_roots");
    let text = |r: rmcp::model::CallToolResult| serde_json::to_string(&r.content).unwrap();
    // One at a time: each caller is asked for its own roots.
    assert!(text(alice.call_tool(call()).await.unwrap()).contains("file:///home/alice"));
    assert!(text(bob.call_tool(call()).await.unwrap()).contains("file:///home/bob"));
    // At the same time on one stdio downstream the request cannot be attributed for sure:
    // Mandate refuses it rather than risk asking the wrong user; never the other's roots.
    for _ in 0..3 {
        let (a, b) = tokio::join!(alice.call_tool(call()), bob.call_tool(call()));
        if let Ok(r) = a {
            assert!(!text(r).contains("bob"));
        }
        if let Ok(r) = b {
            assert!(!text(r).contains("alice"));
        }
    }
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    server.stop();
}

/// Sampling requests a downstream sends during a call reach the session that made the call, and
/// its answer goes back to that call only: two principals, four concurrent calls each, through
/// Mandate's native paths to the Python fixture over HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn sampling_reaches_only_the_calling_session_under_parallel_load() {
    use crate::native::Raw;
    let (mut fixture, fixture_url) = start_http_fixture().await;
    let ws = conformance_workspace(Some(&fixture_url));
    let server = ws.serve();
    let url = server.mission_url("conformance/dev/suite");
    let caps = serde_json::json!({"sampling": {}});
    let mut sessions = Vec::new();
    for who in ["alice", "bob"] {
        let token = ws.token_for(
            &format!("{who}@mandate.example"),
            "conformance",
            "conformance-suite",
            Some("conformance/dev/suite"),
        );
        sessions.push((who, Raw::open_with(&url, &token, caps.clone()).await));
    }
    let mut calls = Vec::new();
    for (who, raw) in &sessions {
        for i in 0..4 {
            let prompt = format!("{who}-{i}");
            calls.push(async move {
                let asked = std::sync::Mutex::new(Vec::new());
                let msgs = raw
                    .call_answering(
                        serde_json::json!(prompt.clone()),
                        "test_sampling",
                        serde_json::json!({"prompt": prompt.clone()}),
                        |request| {
                            let text = request["params"]["messages"][0]["content"]["text"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned();
                            asked.lock().unwrap().push(text.clone());
                            serde_json::json!({"role": "assistant", "model": "test",
                                "content": {"type": "text", "text": format!("answer to {text}")}})
                        },
                    )
                    .await;
                (prompt, asked.into_inner().unwrap(), msgs)
            });
        }
    }
    for (prompt, asked, msgs) in futures::future::join_all(calls).await {
        assert_eq!(asked, vec![prompt.clone()], "{prompt}: {msgs:#?}");
        let result = msgs.last().unwrap();
        assert_eq!(result["id"], prompt.as_str());
        assert_eq!(
            result["result"]["content"][0]["text"],
            format!("LLM response: answer to {prompt}"),
            "{msgs:#?}"
        );
    }
    server.stop();
    let _ = fixture.kill().await;
}

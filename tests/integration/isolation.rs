//! Isolation between callers on shared downstreams (issue 6): per-principal downstream instances
//! (one ledger child process per principal), their cap and idle close, the `shared` mode that
//! relays nothing unattributable, and a session deleted while a call is in flight on either
//! inbound path. The real broker, real ledger child processes (observed by pid), real clients.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use rmcp::model::CallToolRequestParams;
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

use crate::common::*;

fn call(name: &str, arguments: Value) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = arguments.as_object().cloned();
    p
}

/// The log lines a client received.
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

impl Logs {
    /// The pids in the ledger's background log lines received.
    fn background_pids(&self) -> BTreeSet<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["event"] == "background")
            .filter_map(|l| l["pid"].as_u64())
            .collect()
    }
}

type Client = rmcp::service::RunningService<RoleClient, Logs>;

async fn connect(ws: &Workspace, url: &str, sub: &str) -> (Client, Logs) {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let token = ws.token_for(sub, "acme", "bot", Some("finance/prod/review"));
    let logs = Logs::default();
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let client = logs
        .clone()
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap();
    (client, logs)
}

/// A ledger workspace (background logging on) whose manifest gets `isolation` appended.
fn workspace(isolation: &str) -> Workspace {
    let ws = unpinned(isolation);
    ws.pin();
    ws
}

fn unpinned(isolation: &str) -> Workspace {
    let ws = Workspace::new();
    ws.ledger(&[("LEDGER_LOG_AFTER", "1")]);
    let path = ws.path().join("tool-manifests/finance/ledger.toml");
    let mut manifest = std::fs::read_to_string(&path).unwrap();
    manifest.push_str(isolation);
    std::fs::write(&path, manifest).unwrap();
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice", "finance/ledger/slow_report""#,
        "",
    );
    ws
}

/// The broker's ledger child processes.
fn ledgers(server: &Server) -> BTreeSet<u32> {
    children_of(server.child.id()).into_iter().collect()
}

async fn readyz(server: &Server) -> Value {
    reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn text(result: &rmcp::model::CallToolResult) -> String {
    serde_json::to_value(&result.content).unwrap().to_string()
}

/// Alice's and bob's calls reach different ledger processes; each one's background log lines
/// (sent after its call returned, tied to no request) reach only that principal, even while the
/// other's call is in flight on the same downstream.
#[tokio::test(flavor = "multi_thread")]
async fn each_principal_gets_its_own_downstream_process() {
    let ws = workspace("");
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    // The probe instance (pins for /readyz) is the only child before any call.
    eventually(30, "the probe instance", || ledgers(&server).len() == 1).await;
    let probe = ledgers(&server);
    let (alice, alice_logs) = connect(&ws, &url, "alice@acme.example").await;
    let (bob, bob_logs) = connect(&ws, &url, "bob@acme.example").await;

    // Both calls return at once; each ledger keeps logging about it for a second.
    let invoice = json!({"invoice_id": "INV-1001"});
    let r = alice
        .call_tool(call("get_invoice", invoice.clone()))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert_eq!(
        ledgers(&server).len(),
        2,
        "alice's first call starts her instance"
    );
    let r = bob
        .call_tool(call("get_invoice", invoice.clone()))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    assert_eq!(
        ledgers(&server).len(),
        3,
        "bob's first call starts his instance"
    );

    // Both have a call in flight while both ledgers log in the background.
    let slow = json!({"seconds": 1});
    let (a, b) = tokio::join!(
        alice.call_tool(call("slow_report", slow.clone())),
        bob.call_tool(call("slow_report", slow.clone()))
    );
    assert_eq!(a.unwrap().is_error, Some(false));
    assert_eq!(b.unwrap().is_error, Some(false));

    let (alice_pids, bob_pids) = (alice_logs.background_pids(), bob_logs.background_pids());
    assert_eq!(
        alice_pids.len(),
        1,
        "alice's own background lines reach her: {alice_pids:?}"
    );
    assert_eq!(
        bob_pids.len(),
        1,
        "bob's own background lines reach him: {bob_pids:?}"
    );
    assert!(
        alice_pids.is_disjoint(&bob_pids),
        "alice and bob share a downstream process: {alice_pids:?} / {bob_pids:?}"
    );
    let children = ledgers(&server);
    for pid in alice_pids.iter().chain(&bob_pids) {
        assert!(
            children.contains(&(*pid as u32)),
            "{pid} is not a child of the broker"
        );
        assert!(
            !probe.contains(&(*pid as u32)),
            "a call reached the probe instance"
        );
    }

    // A later call of alice's reuses her instance.
    let r = alice.call_tool(call("get_invoice", invoice)).await.unwrap();
    assert_eq!(r.is_error, Some(false));
    assert_eq!(ledgers(&server).len(), 3);
    let status = readyz(&server).await;
    let ledger = &status["downstreams"][0];
    assert_eq!(ledger["isolation"], "per-principal", "{status}");
    assert_eq!(ledger["instances"], 2, "{status}");
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    server.stop();
}

/// With `max_instances = 1`, a second principal's first call is refused with an error naming the
/// cap and what to do; the first principal keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn the_instance_cap_refuses_a_new_principal_clearly() {
    let ws = workspace("\n[isolation]\nmax_instances = 1\n");
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let (alice, _) = connect(&ws, &url, "alice@acme.example").await;
    let (bob, _) = connect(&ws, &url, "bob@acme.example").await;
    let invoice = json!({"invoice_id": "INV-1001"});
    let r = alice
        .call_tool(call("get_invoice", invoice.clone()))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let r = bob
        .call_tool(call("get_invoice", invoice.clone()))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let message = text(&r);
    assert!(
        message.contains("already runs 1 per-principal instances")
            && message.contains("raise `max_instances` under `[isolation]`")
            && message.contains("ledger.toml"),
        "{message}"
    );
    let r = alice.call_tool(call("get_invoice", invoice)).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let records = audit_records(&ws);
    assert!(
        records.iter().any(|r| r["outcome"] == "at_capacity"),
        "the refusal is audited: {records:?}"
    );
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    server.stop();
}

/// An instance unused for `idle_timeout` is closed (its process exits); the principal's next
/// call starts a new one.
#[tokio::test(flavor = "multi_thread")]
async fn idle_instances_are_closed() {
    let ws = workspace("\n[isolation]\nidle_timeout = \"500ms\"\n");
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    eventually(30, "the probe instance", || ledgers(&server).len() == 1).await;
    let probe = ledgers(&server);
    let (alice, _) = connect(&ws, &url, "alice@acme.example").await;
    let invoice = json!({"invoice_id": "INV-1001"});
    let r = alice
        .call_tool(call("get_invoice", invoice.clone()))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let first: BTreeSet<u32> = ledgers(&server).difference(&probe).copied().collect();
    assert_eq!(first.len(), 1);
    let pid = *first.iter().next().unwrap();
    eventually(10, "the idle instance to close", || !alive(pid)).await;
    assert_eq!(ledgers(&server), probe, "only the probe is left");
    let r = alice.call_tool(call("get_invoice", invoice)).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let second: BTreeSet<u32> = ledgers(&server).difference(&probe).copied().collect();
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "a new instance serves the next call");
    alice.cancel().await.unwrap();
    server.stop();
}

/// In `shared` mode one process carries every caller, and what it sends that no call can be tied
/// to is dropped and counted, never relayed — not even to the principal it came from.
#[tokio::test(flavor = "multi_thread")]
async fn shared_mode_relays_nothing_unattributable() {
    let ws = workspace("\n[isolation]\nmode = \"shared\"\n");
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let (alice, alice_logs) = connect(&ws, &url, "alice@acme.example").await;
    let (bob, bob_logs) = connect(&ws, &url, "bob@acme.example").await;
    let r = alice
        .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let slow = json!({"seconds": 1});
    let (a, b) = tokio::join!(
        alice.call_tool(call("slow_report", slow.clone())),
        bob.call_tool(call("slow_report", slow.clone()))
    );
    assert_eq!(a.unwrap().is_error, Some(false));
    assert_eq!(b.unwrap().is_error, Some(false));
    assert!(alice_logs.background_pids().is_empty());
    assert!(bob_logs.background_pids().is_empty());
    assert_eq!(ledgers(&server).len(), 1, "one shared process");
    let status = readyz(&server).await;
    let ledger = &status["downstreams"][0];
    assert_eq!(ledger["isolation"], "shared", "{status}");
    assert!(
        ledger["unattributable_dropped"].as_u64().unwrap() > 0,
        "{status}"
    );
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
    server.stop();
}

/// `shared` is refused for a downstream that receives per-user credentials.
#[test]
fn shared_mode_is_refused_with_a_token_exchange() {
    let ws = unpinned("\n[auth]\nexchange = \"embedded\"\n\n[isolation]\nmode = \"shared\"\n");
    let out = ws.mandate(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("ledger.toml")
            && stderr.contains(
                "would let a downstream session bound to one user's token carry another user's call"
            ),
        "{stderr}"
    );
}

/// A raw MCP session over HTTP (for requests rmcp's client would not send as the test needs).
struct RawSession {
    http: reqwest::Client,
    url: String,
    token: String,
    session: String,
}

impl RawSession {
    async fn open(url: &str, token: &str) -> Self {
        let http = reqwest::Client::new();
        let init = http
            .post(url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(init.status(), 200);
        let session = init.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = init.text().await;
        let raw = Self {
            http,
            url: url.to_owned(),
            token: token.to_owned(),
            session,
        };
        let r = raw
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(r.status(), 202);
        raw
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        self.http
            .request(method, &self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", "2025-11-25")
    }

    async fn post(&self, body: Value) -> reqwest::Response {
        self.request(reqwest::Method::POST)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body`, deletes the session half a second later, and returns the POST's status and
    /// its JSON-RPC messages (JSON or SSE).
    async fn deleted_during(&self, body: Value) -> (reqwest::StatusCode, Vec<Value>) {
        let post = async {
            let r = self.post(body).await;
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let messages = text
                .split("\n\n")
                .flat_map(|event| {
                    let data: Vec<&str> = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    let data = if data.is_empty() {
                        event.to_owned()
                    } else {
                        data.join("\n")
                    };
                    serde_json::from_str::<Value>(&data).ok()
                })
                .collect();
            (status, messages)
        };
        let delete = async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let r = self.request(reqwest::Method::DELETE).send().await.unwrap();
            assert!(r.status().is_success(), "DELETE: {}", r.status());
        };
        let (answer, ()) = tokio::join!(post, delete);
        answer
    }
}

/// Deleting a session while a request is in flight answers that request with a clear
/// cancellation (JSON-RPC -32800), never `500 Session service terminated` — on the native path
/// (`tools/call`) and on the rmcp path (here a slow `resources/read` passed through).
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_session_cancels_its_calls_in_flight_on_both_paths() {
    let ws = Workspace::new();
    ws.ledger(&[("LEDGER_SLOW_READ", "5")]);
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/slow_report""#,
        r#"resources = ["finance/ledger"]"#,
    );
    ws.pin();
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let token = ws.token(Some("finance/prod/review"));
    let requests = [
        (
            "native tools/call",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "slow_report", "arguments": {"seconds": 5}}}),
        ),
        (
            "rmcp resources/read",
            json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read",
                "params": {"uri": "ledger://suppliers"}}),
        ),
    ];
    for (path, body) in requests {
        let session = RawSession::open(&url, &token).await;
        let started = std::time::Instant::now();
        let (status, messages) = session.deleted_during(body.clone()).await;
        assert_eq!(status, 200, "{path}: {messages:?}");
        let last = messages.last().unwrap_or(&Value::Null);
        assert_eq!(last["id"], body["id"], "{path}: {messages:?}");
        assert_eq!(last["error"]["code"], -32800, "{path}: {messages:?}");
        let message = last["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("cancelled"), "{path}: {message}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(4),
            "{path}: answered when the session closed, not when the downstream finished"
        );
    }
    server.stop();
}

/// An HTTP downstream that receives per-user credentials (`[auth] exchange` not `none`) gets one
/// downstream session per principal; one that does not is shared.
#[tokio::test(flavor = "multi_thread")]
async fn http_downstreams_get_per_principal_sessions_when_they_receive_user_credentials() {
    let ledger = crate::native::HttpLedger::start();
    for (auth, isolation, instances) in [
        ("exchange = \"embedded\"", "per-principal", json!(2)),
        ("exchange = \"none\"", "shared", Value::Null),
    ] {
        let ws = Workspace::new();
        ws.write(
            "tool-manifests/finance/ledger.toml",
            &format!(
                "description = \"ledger over HTTP\"\nenvironments = [\"prod\"]\nregion = \"eu-west-1\"\n\n[transport]\nkind = \"http\"\nurl = \"{}\"\n\n[auth]\n{auth}\n\n[[tools]]\nname = \"get_invoice\"\neffect = \"read\"\n",
                ledger.url
            ),
        );
        ws.mission("finance/prod/review", r#""finance/ledger/get_invoice""#, "");
        ws.pin();
        let server = ws.serve();
        let url = server.mission_url("finance/prod/review");
        for who in ["alice@acme.example", "bob@acme.example"] {
            let (client, _) = connect(&ws, &url, who).await;
            let r = client
                .call_tool(call("get_invoice", json!({"invoice_id": "INV-1001"})))
                .await
                .unwrap();
            assert_eq!(r.is_error, Some(false), "{auth}: {r:?}");
            client.cancel().await.unwrap();
        }
        let status = readyz(&server).await;
        let downstream = &status["downstreams"][0];
        assert_eq!(downstream["isolation"], isolation, "{auth}: {status}");
        assert_eq!(downstream["instances"], instances, "{auth}: {status}");
        server.stop();
    }
}

/// Every wrong `[isolation]` value is reported at once, each at its line and column.
#[test]
fn isolation_settings_are_validated_with_locations() {
    let ws = unpinned(
        "\n[isolation]\nmode = \"per-user\"\nmax_instances = 0\nidle_timeout = \"2h\"\nidle_timout = \"1m\"\n",
    );
    let d: Vec<String> = match mandate::config::load(ws.path(), false) {
        Ok(_) => vec![],
        Err(d) => d
            .iter()
            .map(|d| {
                let file = d.file.strip_prefix(ws.path()).unwrap_or(&d.file);
                format!("{}:{}:{}: {}", file.display(), d.line, d.col, d.message)
            })
            .collect(),
    };
    let manifest = "tool-manifests/finance/ledger.toml";
    let line = |field: &str| {
        let text = std::fs::read_to_string(ws.path().join(manifest)).unwrap();
        text.lines().position(|l| l.starts_with(field)).unwrap() + 1
    };
    for (field, message) in [
        (
            "mode",
            "unknown mode `per-user` (expected one of per-principal, shared)",
        ),
        (
            "max_instances",
            "`max_instances` is 0; it must be between 1 and 10000",
        ),
        ("idle_timeout", "timeout `2h` must be between 1ms and 1h"),
        (
            "idle_timout",
            "unknown field `idle_timout` in `[isolation]` (did you mean `idle_timeout`?)",
        ),
    ] {
        let at = format!("{manifest}:{}:", line(field));
        assert!(
            d.iter().any(|l| l.starts_with(&at) && l.contains(message)),
            "{field}: {d:?}"
        );
    }
}

/// Sampling requests a stdio downstream sends (no wire field ties them to a call) reach the
/// principal whose call caused them, with two principals' calls in flight at once: each has
/// its own instance of the Python fixture.
#[tokio::test(flavor = "multi_thread")]
async fn stdio_sampling_reaches_only_the_calling_principal() {
    use crate::native::Raw;
    let ws = crate::interop::conformance_workspace(None);
    let server = ws.serve();
    let url = server.mission_url("conformance/dev/suite");
    let caps = json!({"sampling": {}});
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
    let calls = sessions.iter().map(|(who, raw)| async move {
        let asked = Mutex::new(Vec::new());
        let msgs = raw
            .call_answering(
                json!(who),
                "test_sampling",
                json!({"prompt": who}),
                |request| {
                    let text = request["params"]["messages"][0]["content"]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    asked.lock().unwrap().push(text.clone());
                    json!({"role": "assistant", "model": "test",
                    "content": {"type": "text", "text": format!("answer to {text}")}})
                },
            )
            .await;
        (who.to_string(), asked.into_inner().unwrap(), msgs)
    });
    for (who, asked, msgs) in futures::future::join_all(calls).await {
        assert_eq!(asked, vec![who.clone()], "{who}: {msgs:#?}");
        let result = msgs.last().unwrap();
        assert_eq!(
            result["result"]["content"][0]["text"],
            format!("LLM response: answer to {who}"),
            "{msgs:#?}"
        );
    }
    server.stop();
}

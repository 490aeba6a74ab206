//! The native paths: `tools/call` on an established session answered by Mandate itself (JSON, or
//! SSE when the call streams), calls to an HTTP downstream posted on its kept session, and what
//! the downstream sends about a call reaching only the session that made it — under parallel
//! load, across principals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::*;

/// The sample ledger serving streamable HTTP on a free port.
pub struct HttpLedger {
    child: Child,
    pub url: String,
}

impl HttpLedger {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    fn start_on(addr: &str) -> Self {
        let mut child = Command::new(ledger_bin())
            .args(["--http", addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let url = first
            .trim()
            .strip_prefix("ledger listening on ")
            .unwrap_or_else(|| panic!("unexpected ledger output: {first:?}"))
            .to_owned();
        Self { child, url }
    }
}

impl Drop for HttpLedger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_ws(ledger: &HttpLedger) -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "tool-manifests/finance/ledger.toml",
        &format!(
            r#"description = "ledger over HTTP"
environments = ["prod"]
region = "eu-west-1"
timeout = "10s"

[transport]
kind = "http"
url = "{}"

[[tools]]
name = "get_invoice"
effect = "read"

[[tools]]
name = "slow_report"
effect = "read"
"#,
            ledger.url
        ),
    );
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice", "finance/ledger/slow_report""#,
        "",
    );
    ws.pin();
    ws
}

/// The HTTP ledger, a workspace fronting it, the running broker and the mission URL.
fn live() -> (HttpLedger, Workspace, Server, String) {
    let ledger = HttpLedger::start();
    let ws = http_ws(&ledger);
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    (ledger, ws, server, url)
}

/// A raw MCP session over HTTP, as a client that opens no GET stream sees it.
pub struct Raw {
    http: reqwest::Client,
    url: String,
    pub token: String,
    pub session: String,
}

/// The JSON-RPC messages of a response, whether JSON or SSE, and its content type.
async fn messages(response: reqwest::Response) -> (String, Vec<Value>) {
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.unwrap();
    let messages = if kind.starts_with("text/event-stream") {
        text.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                (!data.is_empty())
                    .then(|| serde_json::from_str(&data.join("\n")).ok())
                    .flatten()
            })
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap_or(Value::Null)]
    };
    (kind, messages)
}

impl Raw {
    pub async fn open(url: &str, token: &str) -> Self {
        Self::open_with(url, token, json!({})).await
    }

    /// Opens a session advertising these client capabilities.
    pub async fn open_with(url: &str, token: &str, capabilities: Value) -> Self {
        let http = reqwest::Client::new();
        let init = http
            .post(url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": capabilities,
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
        let _ = messages(init).await;
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

    /// Calls a tool, reading the response as it streams and answering each server→client
    /// request on it with `answer(request)` (POSTed back on the session).
    pub async fn call_answering(
        &self,
        id: Value,
        name: &str,
        arguments: Value,
        answer: impl Fn(&Value) -> Value,
    ) -> Vec<Value> {
        use futures::StreamExt;
        let r = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments}}))
            .await;
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        let (mut buffer, mut out) = (String::new(), Vec::new());
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                let Ok(message) = serde_json::from_str::<Value>(&data.join("\n")) else {
                    continue;
                };
                if message["method"].is_string() && message["id"] != Value::Null {
                    let reply = self
                        .post(json!({"jsonrpc": "2.0", "id": message["id"], "result": answer(&message)}))
                        .await;
                    assert_eq!(reply.status(), 202);
                }
                out.push(message);
            }
        }
        out
    }

    async fn call(
        &self,
        id: Value,
        name: &str,
        arguments: Value,
        meta: Value,
    ) -> (String, Vec<Value>) {
        let r = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": name, "arguments": arguments, "_meta": meta}}))
            .await;
        assert_eq!(r.status(), 200);
        messages(r).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_on_a_session_is_answered_natively_as_json() {
    let (_ledger, ws, server, url) = live();
    let alice = Raw::open(&url, &ws.token(Some("finance/prod/review"))).await;
    let (kind, msgs) = alice
        .call(
            json!(7),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
        )
        .await;
    // rmcp answers every session request with SSE; a plain JSON answer is Mandate's own path.
    assert_eq!(kind, "application/json", "{msgs:?}");
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["id"], 7);
    assert_eq!(msgs[0]["result"]["isError"], false, "{msgs:?}");
    assert_eq!(msgs[0]["result"]["structuredContent"]["id"], "INV-1001");
    // A rebound DNS name is refused on the native path as on rmcp's, token or not.
    let rebound = alice
        .request(reqwest::Method::POST)
        .header("host", "evil.example")
        .json(&json!({"jsonrpc": "2.0", "id": 70, "method": "tools/call",
            "params": {"name": "get_invoice", "arguments": {"invoice_id": "INV-1001"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    // Denied, invalid and unknown calls get the same answers as on the rmcp path.
    let (_, msgs) = alice
        .call(json!(8), "export_all", json!({}), json!({}))
        .await;
    assert_eq!(msgs[0]["error"]["code"], -32602);
    assert_eq!(msgs[0]["error"]["message"], "tool not found: export_all");
    let (_, msgs) = alice
        .call(
            json!("s-9"),
            "get_invoice",
            json!({"invoice": 1}),
            json!({}),
        )
        .await;
    assert_eq!(msgs[0]["id"], "s-9");
    assert_eq!(msgs[0]["error"]["code"], -32602);
    let r = alice
        .post(json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
            "params": {"name": "get_invoice", "arguments": [1, 2]}}))
        .await;
    let (_, msgs) = messages(r).await;
    assert_eq!(
        msgs[0]["error"]["message"],
        "`arguments` must be a JSON object"
    );
    // Everything was audited, one record per call, with the downstream call id linking nothing
    // else (reads write no intent).
    let records = audit_records(&ws);
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["mission"] == "finance/prod/review" && r["tool"].is_string())
        .collect();
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(calls[0]["outcome"], "ok");
    assert!(calls[0]["output_digest"].is_string());
    assert_eq!(calls[1]["outcome"], "denied");
    assert_eq!(calls[2]["outcome"], "invalid_arguments");
    assert_eq!(calls[3]["outcome"], "invalid_arguments");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_and_logs_reach_only_the_calling_session_under_parallel_load() {
    let (_ledger, ws, server, url) = live();
    let alice_token = ws.token_for(
        "alice@acme.example",
        "acme",
        "bot",
        Some("finance/prod/review"),
    );
    let bob_token = ws.token_for(
        "bob@acme.example",
        "acme",
        "bot",
        Some("finance/prod/review"),
    );
    let alice = Raw::open(&url, &alice_token).await;
    let bob = Raw::open(&url, &bob_token).await;
    // Eight streaming calls per principal at once, each with its own progress token; alice's
    // reports take 1 s, bob's 2 s, so their log lines differ too.
    let mut calls = Vec::new();
    for i in 0..8 {
        for (who, raw, seconds) in [("alice", &alice, 1), ("bob", &bob, 2)] {
            let token = format!("{who}-{i}");
            calls.push(async move {
                let (kind, msgs) = raw
                    .call(
                        json!(format!("{token}-id")),
                        "slow_report",
                        json!({"seconds": seconds}),
                        json!({"progressToken": token}),
                    )
                    .await;
                (token, seconds, kind, msgs)
            });
        }
    }
    let results = futures::future::join_all(calls).await;
    for (token, seconds, kind, msgs) in results {
        assert!(kind.starts_with("text/event-stream"), "{token}: {kind}");
        let (last, before) = msgs.split_last().unwrap();
        assert_eq!(last["id"], format!("{token}-id"), "{token}: {msgs:#?}");
        assert_eq!(last["result"]["isError"], false);
        let progress: Vec<&Value> = before
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        assert_eq!(progress.len(), seconds, "{token}: {msgs:#?}");
        for p in &progress {
            assert_eq!(p["params"]["progressToken"], token.as_str(), "{msgs:#?}");
        }
        // The ledger (an rmcp server in session mode) sends its log lines on its standalone
        // stream, where they belong to no call: they must not reach anyone. Any that arrive on a
        // call's stream must be that call's own.
        let logs: Vec<&Value> = before
            .iter()
            .filter(|m| m["method"] == "notifications/message")
            .collect();
        for l in &logs {
            assert_eq!(
                l["params"]["data"]["seconds"], seconds,
                "{token}: {msgs:#?}"
            );
        }
        assert!(
            before
                .iter()
                .all(|m| m["method"] == "notifications/progress"
                    || m["method"] == "notifications/message"),
            "{msgs:#?}"
        );
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_answers_only_its_principal_and_refuses_reused_ids() {
    let (_ledger, ws, server, url) = live();
    let alice = Raw::open(&url, &ws.token(Some("finance/prod/review"))).await;
    let bob_token = ws.token_for(
        "bob@acme.example",
        "acme",
        "bot",
        Some("finance/prod/review"),
    );
    let bob_on_alices = Raw {
        http: reqwest::Client::new(),
        url: url.clone(),
        token: bob_token,
        session: alice.session.clone(),
    };
    // Bob holds alice's session id and his own valid token: every method is refused as an
    // unknown session, and alice's session is untouched.
    let r = bob_on_alices
        .post(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "get_invoice", "arguments": {"invoice_id": "INV-1001"}}}))
        .await;
    assert_eq!(r.status(), 404);
    let r = bob_on_alices
        .request(reqwest::Method::GET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = bob_on_alices
        .request(reqwest::Method::DELETE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, msgs) = alice
        .call(
            json!(2),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
        )
        .await;
    assert_eq!(msgs[0]["result"]["isError"], false, "{msgs:?}");
    let records = audit_records(&ws);
    let refused = records
        .iter()
        .filter(|r| r["outcome"] == "unknown_session" && r["subject"] == "bob@acme.example")
        .count();
    assert_eq!(refused, 3, "POST, GET and DELETE audited");

    // A request id still in flight on the session is refused, the first call is unaffected.
    let slow = alice.call(
        json!("dup"),
        "slow_report",
        json!({"seconds": 1}),
        json!({}),
    );
    let again = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        alice
            .call(
                json!("dup"),
                "get_invoice",
                json!({"invoice_id": "INV-1001"}),
                json!({}),
            )
            .await
    };
    let ((_, first), (_, second)) = tokio::join!(slow, again);
    assert_eq!(second[0]["error"]["code"], -32600, "{second:?}");
    assert_eq!(
        first.last().unwrap()["result"]["isError"],
        false,
        "{first:?}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_native_call_ends_at_once_and_is_audited() {
    let (_ledger, ws, server, url) = live();
    let alice = Raw::open(&url, &ws.token(Some("finance/prod/review"))).await;
    let started = std::time::Instant::now();
    let slow = alice.call(json!(41), "slow_report", json!({"seconds": 8}), json!({}));
    let cancel = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let r = alice
            .post(
                json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": 41, "reason": "user pressed stop"}}),
            )
            .await;
        assert_eq!(r.status(), 202);
    };
    let ((_, msgs), ()) = tokio::join!(slow, cancel);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(msgs.last().unwrap()["error"]["code"], -32800, "{msgs:?}");
    let records = audit_records(&ws);
    assert!(
        records
            .iter()
            .any(|r| r["tool"] == "slow_report" && r["outcome"] == "cancelled"),
        "{records:#?}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversize_requests_get_json_rpc_errors_and_bounded_records() {
    let (_ledger, ws, server, url) = live();
    let alice = Raw::open(&url, &ws.token(Some("finance/prod/review"))).await;
    let raw_post = |body: Vec<u8>| {
        alice
            .request(reqwest::Method::POST)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Batches, bad ids, deep nesting: JSON-RPC errors with a 4xx status, never plain text.
    for (body, status, code) in [
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#.to_owned(),
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/list"}"#.to_owned(),
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":null,"method":"tools/list"}"#.to_owned(),
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"x\nINFO forged","method":"tools/list"}"#.to_owned(),
            400,
            -32600,
        ),
        (
            format!(
                r#"{{"jsonrpc":"2.0","id":"{}","method":"tools/list"}}"#,
                "i".repeat(500)
            ),
            400,
            -32600,
        ),
        (
            format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"get_invoice","arguments":{{"a":{}1{}}}}}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            400,
            -32700,
        ),
    ] {
        let r = raw_post(body.clone().into_bytes()).await.unwrap();
        assert_eq!(r.status(), status, "{body:.80}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{body:.80}: {v}");
    }
    // Oversize fields are refused before anything is stored; the record stays small.
    let huge_name = "t".repeat(3_900_000);
    let (_, msgs) = alice.call(json!(3), &huge_name, json!({}), json!({})).await;
    assert_eq!(
        msgs[0]["error"]["code"],
        -32602,
        "{:.200}",
        msgs[0].to_string()
    );
    let reasoning = json!({"rationale": "r".repeat(100_000)});
    let (_, msgs) = alice
        .call(
            json!(4),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({"io.mandate/reasoning": reasoning}),
        )
        .await;
    assert_eq!(msgs[0]["error"]["code"], -32602);
    let many: serde_json::Map<String, Value> =
        (0..250_000).map(|i| (format!("k{i}"), json!(1))).collect();
    let (_, msgs) = alice
        .call(json!(5), "get_invoice", Value::Object(many), json!({}))
        .await;
    assert_eq!(msgs[0]["error"]["code"], -32602);
    assert!(
        msgs[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    let records = audit_records(&ws);
    let too_large: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] == "too_large")
        .collect();
    assert_eq!(too_large.len(), 3, "{too_large:#?}");
    for r in &too_large {
        let size = r.to_string().len();
        assert!(
            size < 4096,
            "a refused oversize call left a {size}-byte record"
        );
        assert!(r["reasoning"].is_null() && r["argument_keys"].is_null());
    }
    assert!(
        too_large[0]["tool"]
            .as_str()
            .unwrap()
            .contains("3900000 bytes, sha256 ")
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_capped_per_principal_and_a_delete_cancels_calls_in_flight() {
    let (_ledger, ws, server, url) = live();
    let token = ws.token(Some("finance/prod/review"));
    let mut sessions = Vec::new();
    for _ in 0..64 {
        sessions.push(Raw::open(&url, &token).await);
    }
    let refused = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let v: Value = refused.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("close unused ones"),
        "{v}"
    );
    // Another principal is not affected by alice's sessions.
    let bob = ws.token_for(
        "bob@acme.example",
        "acme",
        "bot",
        Some("finance/prod/review"),
    );
    let _bob = Raw::open(&url, &bob).await;
    // Closing a session with a call in flight ends that call with a cancellation, not a 500.
    let last = sessions.pop().unwrap();
    let slow = last.call(json!(9), "slow_report", json!({"seconds": 5}), json!({}));
    let delete = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let r = last.request(reqwest::Method::DELETE).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    };
    let ((_, msgs), ()) = tokio::join!(slow, delete);
    assert_eq!(msgs.last().unwrap()["error"]["code"], -32800, "{msgs:?}");
    // The slot is free again.
    let _again = Raw::open(&url, &token).await;
    server.stop();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A bounded black-box fuzz of the HTTP ingress on a live broker: mutated JSON-RPC bodies on a
/// session and without one never get a 5xx or hang, and the audit chain verifies afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn fuzzed_requests_never_get_a_5xx_or_hang_and_the_chain_stays_intact() {
    let (_ledger, ws, server, url) = live();
    let alice = Raw::open(&url, &ws.token(Some("finance/prod/review"))).await;
    let seeds = [
        CALL_SEED.to_owned(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":2,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"f","version":"1"}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","id":"mandate-ask-1","result":{}}"#.to_owned(),
    ];
    // xorshift: reproducible without a dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..1500 {
        let mut body = seeds[(next() % seeds.len() as u64) as usize]
            .clone()
            .into_bytes();
        for _ in 0..(1 + next() % 6) {
            let at = (next() % body.len().max(1) as u64) as usize;
            let byte = (next() & 0xff) as u8;
            match next() % 3 {
                0 if !body.is_empty() => body[at] = byte,
                1 => body.insert(at.min(body.len()), byte),
                _ if !body.is_empty() => {
                    body.remove(at);
                }
                _ => {}
            }
        }
        let with_session = i % 2 == 0;
        let mut request = if with_session {
            alice.request(reqwest::Method::POST)
        } else {
            reqwest::Client::new()
                .post(&url)
                .bearer_auth(&alice.token)
                .header("accept", "application/json, text/event-stream")
        };
        request = request
            .header("content-type", "application/json")
            .body(body.clone());
        let sent = tokio::time::timeout(std::time::Duration::from_secs(15), async {
            let r = request.send().await.unwrap();
            let status = r.status();
            let _ = r.bytes().await;
            status
        })
        .await;
        let status =
            sent.unwrap_or_else(|_| panic!("request {i} hung: {}", String::from_utf8_lossy(&body)));
        assert!(
            status.as_u16() < 500,
            "request {i} got {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // Still serving, chain intact.
    let (_, msgs) = alice
        .call(
            json!("after"),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
        )
        .await;
    assert_eq!(msgs[0]["result"]["isError"], false, "{msgs:?}");
    let verify = ws.mandate(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    server.stop();
}

const CALL_SEED: &str = r#"{"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":{"name":"get_invoice","arguments":{"invoice_id":"INV-1001"},"_meta":{"progressToken":7,"io.mandate/reasoning":{"rationale":"r"}}}}"#;

/// One token opening 10,000 sessions: all but the first 64 are refused, memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_initialize_requests_keeps_memory_bounded() {
    let (_ledger, ws, server, url) = live();
    let token = ws.token(Some("finance/prod/review"));
    let pid = server.child.id();
    let _warm = Raw::open(&url, &token).await;
    let before = rss_kib(pid);
    let http = reqwest::Client::new();
    let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "flood", "version": "1"}}});
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..(10_000 / 16) {
        let batch = (0..16).map(|_| {
            http.post(&url)
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .json(&body)
                .send()
        });
        for r in futures::future::join_all(batch).await {
            match r.unwrap().status().as_u16() {
                200 => ok += 1,
                429 => refused += 1,
                other => panic!("initialize answered {other}"),
            }
        }
    }
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    assert_eq!(
        ok + 1,
        64,
        "one warm session plus 63 more fit under the cap"
    );
    assert_eq!(refused, 10_000 - 63);
    assert!(grown_mib <= 150, "RSS grew {grown_mib} MiB");
    server.stop();
}

/// A stateless 2026-07-28 `tools/call` (no session) is answered natively too, with the
/// revision's `resultType`; one without the per-request envelope gets the SDK's error.
#[tokio::test(flavor = "multi_thread")]
async fn a_stateless_2026_call_is_answered_natively() {
    let (_ledger, ws, server, url) = live();
    let token = ws.token(Some("finance/prod/review"));
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .json(&body)
            .send()
    };
    let envelope = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let r = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "get_invoice", "arguments": {"invoice_id": "INV-1001"}, "_meta": envelope}}),
    )
    .await
    .unwrap();
    let (kind, msgs) = messages(r).await;
    assert_eq!(kind, "application/json", "{msgs:?}");
    assert_eq!(msgs[0]["result"]["resultType"], "complete", "{msgs:?}");
    assert_eq!(msgs[0]["result"]["structuredContent"]["id"], "INV-1001");
    let r = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "export_all", "arguments": {}, "_meta": envelope}}),
    )
    .await
    .unwrap();
    let (_, msgs) = messages(r).await;
    assert_eq!(msgs[0]["error"]["message"], "tool not found: export_all");
    let r = post(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "get_invoice", "arguments": {"invoice_id": "INV-1001"}}}),
    )
    .await
    .unwrap();
    let (_, msgs) = messages(r).await;
    assert_eq!(msgs[0]["error"]["code"], -32602, "{msgs:?}");
    server.stop();
}

/// Unauthenticated traffic cannot flood the audit log: the first failure of each kind from each
/// source is recorded in full, the rest are counted in one record.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_failures_and_session_openings_are_aggregated() {
    let (_ledger, ws, server, url) = live();
    let token = ws.token(Some("finance/prod/review"));
    let http = reqwest::Client::new();
    for i in 0..600 {
        let mut r = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        if i % 2 == 0 {
            r = r.bearer_auth("garbage");
        }
        assert_eq!(r.send().await.unwrap().status(), 401);
    }
    for _ in 0..20 {
        let _ = Raw::open(&url, &token).await;
    }
    server.stop();
    let records = audit_records(&ws);
    let failures: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "auth_failure")
        .collect();
    assert_eq!(failures.len(), 4, "{failures:#?}");
    assert!(
        failures.iter().any(|r| r["outcome"] == "aggregated"
            && r["detail"].as_str().unwrap().starts_with("299 more")),
        "{failures:#?}"
    );
    let opened: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["outcome"] == "session_opened"
                || (r["outcome"] == "aggregated" && r["kind"] == "access")
        })
        .collect();
    assert_eq!(opened.len(), 2, "{opened:#?}");
    assert!(opened[1]["detail"].as_str().unwrap().starts_with("19 more"));
}

/// A downstream that restarts forgets its sessions: the next call is not lost, Mandate
/// re-initializes and answers it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_http_downstream_is_reconnected_without_failing_a_call() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ledger = HttpLedger::start_on(&format!("127.0.0.1:{port}"));
    let ws = http_ws(&ledger);
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let alice = Raw::open(&url, &ws.token(Some("finance/prod/review"))).await;
    let (_, msgs) = alice
        .call(
            json!(1),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
        )
        .await;
    assert_eq!(msgs[0]["result"]["isError"], false, "{msgs:?}");
    drop(ledger);
    let _ledger = HttpLedger::start_on(&format!("127.0.0.1:{port}"));
    let (_, msgs) = alice
        .call(
            json!(2),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
        )
        .await;
    assert_eq!(msgs[0]["result"]["isError"], false, "{msgs:?}");
    let (_, msgs) = alice
        .call(
            json!(3),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
        )
        .await;
    assert_eq!(msgs[0]["result"]["isError"], false, "{msgs:?}");
    server.stop();
}

/// A refusal never drops a kept-alive connection: thousands of 401s on one raw connection
/// (no client-side retry to hide a close) each get their answer.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_keep_the_connection_alive() {
    use std::io::Write;
    let (_ledger, _ws, server, url) = live();
    let address = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let path = format!(
        "/{}",
        url.trim_start_matches("http://").split_once('/').unwrap().1
    );
    tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(&address).unwrap();
        socket.set_nodelay(true).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_invoice","arguments":{"invoice_id":"INV-1001"}}}"#;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer not-a-token\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut buffer = Vec::new();
        for i in 0..3000 {
            socket.write_all(request.as_bytes()).unwrap();
            let head = read_response(&mut socket, &mut buffer, i);
            assert!(head.starts_with("http/1.1 401"), "request {i}: {head}");
        }
    })
    .await
    .unwrap();
    server.stop();
}

/// Origin is validated by default (the broker's own origin only), with a valid token too, on
/// the native path and on rmcp's.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_origin_is_refused_by_default() {
    let (_ledger, ws, server, url) = live();
    let token = ws.token(Some("finance/prod/review"));
    let alice = Raw::open(&url, &token).await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "get_invoice", "arguments": {"invoice_id": "INV-1001"}}});
    let r = alice
        .request(reqwest::Method::POST)
        .header("origin", "http://evil.example")
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .header("origin", "http://evil.example")
        .json(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The broker's own origin is fine.
    let own = server.url.clone();
    let r = alice
        .request(reqwest::Method::POST)
        .header("origin", own.as_str())
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
}

/// `/readyz` says whether every downstream is connected with verified pins; a downstream that
/// cannot start says why, at once, to callers and to `/readyz`.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_a_downstream_that_cannot_start() {
    let (_ledger, ws, server, url) = live();
    let ready = reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let v: Value = ready.json().await.unwrap();
    assert_eq!(v["downstreams"][0]["state"], "connected", "{v}");
    server.stop();
    drop(url);

    // The same mission, its downstream now a command that does not exist.
    ws.write(
        "tool-manifests/finance/ledger.toml",
        r#"description = "ledger that cannot start"
environments = ["prod"]
region = "eu-west-1"

[transport]
kind = "stdio"
command = "no-such-ledger-command"

[[tools]]
name = "get_invoice"
effect = "read"

[[tools]]
name = "slow_report"
effect = "read"
"#,
    );
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let ready = reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let v: Value = ready.json().await.unwrap();
    let error = v["downstreams"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("command `no-such-ledger-command` not found on PATH"),
        "{v}"
    );
    let alice = Raw::open(&url, &ws.token(Some("finance/prod/review"))).await;
    let started = std::time::Instant::now();
    let (_, msgs) = alice
        .call(
            json!(1),
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
        )
        .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let text = msgs[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("not found on PATH"), "{msgs:?}");
    server.stop();
}

/// The bench's floor (`examples/floor_proxy.rs`) is a working MCP pass-through: an unmodified
/// client opens a session through it and gets the ledger's real result, so the floor the bench
/// reports is measured on calls that did the same work as the direct and via-Mandate ones.
#[tokio::test]
async fn floor_proxy_forwards_mcp_sessions_unchanged() {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    let ledger = HttpLedger::start();
    let bin = ledger_bin().with_file_name("floor_proxy");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test` builds examples",
        bin.display()
    );
    let mut proxy = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--to", &ledger.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(proxy.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let origin = first
        .trim()
        .strip_prefix("floor proxy listening on ")
        .unwrap_or_else(|| panic!("unexpected floor proxy output: {first:?}"))
        .to_owned();
    let url = format!("{origin}/mcp");
    let client = ().serve(StreamableHttpClientTransport::from_uri(url)).await.unwrap();
    let mut params = rmcp::model::CallToolRequestParams::new("get_invoice".to_owned());
    params.arguments = json!({"invoice_id": "INV-1001"}).as_object().cloned();
    let result = client.call_tool(params).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let structured = result.structured_content.expect("structured content");
    assert_eq!(structured["id"], "INV-1001");
    assert_eq!(structured["amount_cents"], 482050);
    client.cancel().await.unwrap();
    // With the downstream gone, the proxy answers 502 and says why (it does not hang or crash).
    drop(ledger);
    let response = reqwest::Client::new()
        .post(format!("{origin}/mcp"))
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert!(response.text().await.unwrap().starts_with("floor proxy: "));
    let _ = proxy.kill();
    let _ = proxy.wait();
}

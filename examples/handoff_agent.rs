//! # A handoff agent: an MCP server that is itself an agent reached through Mandate
//!
//! Mission A's agent hands work to mission B's agent. This program plays B's agent: a small MCP
//! server (streamable HTTP) that mission A uses as a downstream whose tool manifest says
//! `[auth] exchange = "handoff"`. For each call from A, Mandate mints a single-use handoff token
//! and sends it as the call's `Authorization: Bearer`. The agent's tool takes that token and
//! calls Mandate's mission B endpoint with it, as any MCP client would, and returns what it got.
//!
//! ```text
//! cargo run --example handoff_agent -- --http 127.0.0.1:0 --mandate http://127.0.0.1:8080/mcp/finance/prod/payments
//! ```
//!
//! The first stdout line is `handoff agent listening on http://IP:PORT/mcp`.
//!
//! ## Tool
//!
//! `ask` — `{ "tool": "<tool of mission B>", "arguments": {…}, "attempts": 1, "wait_ms": 0 }`:
//! opens an MCP session on mission B with the handoff token it received, calls `tool` with
//! `arguments`, and returns `{ "attempts": [ { "ok": true, "result": … } | { "ok": false,
//! "error": "…" } ] }`. `attempts` (1–3) repeats the whole thing with the same token, each time
//! in a new session (a handoff token opens one session: the second attempt shows the replay
//! refused); `wait_ms` (at most 10 000) waits before the first attempt (to see an expired token
//! refused). Without a bearer token on the call the tool fails.
//!
//! Nothing here trusts the token: the agent only passes it on. Mandate verifies it, and every
//! earlier hop, against its handoff ledger.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Map, Value, json};

/// Longest wait before the first attempt.
const MAX_WAIT_MS: u64 = 10_000;
/// Most attempts with one token.
const MAX_ATTEMPTS: u64 = 3;

#[derive(Clone)]
struct Agent {
    /// Mandate's endpoint of this agent's own mission.
    mandate: String,
    tools: Arc<Vec<Tool>>,
}

fn tools() -> Vec<Tool> {
    let schema: JsonObject = match json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "tool": { "type": "string", "minLength": 1, "maxLength": 256, "description": "The tool of this agent's mission to call." },
            "arguments": { "type": "object", "description": "Its arguments." },
            "attempts": { "type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS, "description": "How often to try with the same handoff token (each in a new session)." },
            "wait_ms": { "type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS, "description": "Milliseconds to wait before the first attempt." },
        },
        "required": ["tool"],
        "additionalProperties": false,
    }) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    vec![Tool::new(
        "ask",
        "Hand the work to this agent: it calls a tool of its own mission through Mandate, with the handoff token Mandate gave for this call, and returns what it got.",
        Arc::new(schema),
    )]
}

/// The bearer token of the HTTP request that carried this call.
fn bearer(ctx: &RequestContext<RoleServer>) -> Option<String> {
    let parts = ctx.extensions.get::<http::request::Parts>()?;
    let value = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

impl Agent {
    /// One attempt: a session on Mandate's mission with `token`, one tool call.
    async fn attempt(
        &self,
        token: &str,
        tool: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Value {
        let config =
            StreamableHttpClientTransportConfig::with_uri(self.mandate.as_str()).auth_header(token);
        let client = match ().serve(StreamableHttpClientTransport::from_config(config)).await {
            Ok(c) => c,
            Err(e) => return json!({ "ok": false, "error": format!("cannot open a session: {e}") }),
        };
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = arguments;
        let outcome = match client.call_tool(params).await {
            Ok(result) => json!({ "ok": true, "result": result }),
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        };
        let _ = client.cancel().await;
        outcome
    }
}

impl ServerHandler for Agent {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("handoff-agent", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != "ask" {
            return Err(ErrorData::invalid_params(
                format!("unknown tool: {}", request.name),
                None,
            ));
        }
        let fail = |text: &str| {
            Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                ContentBlock::text(text.to_owned()),
            ])))
        };
        let Some(token) = bearer(&context) else {
            return fail(
                "no handoff token: this agent is reached through Mandate, which sends one per call",
            );
        };
        let args = request.arguments.unwrap_or_default();
        let Some(tool) = args.get("tool").and_then(Value::as_str) else {
            return fail("`tool` is required");
        };
        let arguments = args.get("arguments").and_then(Value::as_object).cloned();
        let attempts = args
            .get("attempts")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, MAX_ATTEMPTS);
        let wait = args
            .get("wait_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(MAX_WAIT_MS);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut outcomes = Vec::new();
        for _ in 0..attempts {
            outcomes.push(self.attempt(&token, tool, arguments.clone()).await);
        }
        Ok(CallToolResponse::Complete(CallToolResult::structured(
            json!({ "attempts": outcomes }),
        )))
    }
}

const USAGE: &str = "usage: handoff_agent --http ADDR --mandate URL   (ADDR e.g. 127.0.0.1:0; URL: Mandate's endpoint of this agent's mission)";

fn parse_args() -> Result<(String, String), String> {
    let mut http = None;
    let mut mandate = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http" => http = args.next(),
            "--mandate" => mandate = args.next(),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    match (http, mandate) {
        (Some(h), Some(m)) => Ok((h, m)),
        _ => Err(USAGE.to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (addr, mandate) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match serve(addr, mandate).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: String, mandate: String) -> Result<(), String> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let agent = Agent {
        mandate,
        tools: Arc::new(tools()),
    };
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        local.ip().to_string(),
    ]);
    let service = StreamableHttpService::new(
        move || Ok(agent.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().route_service("/mcp", service);
    println!("handoff agent listening on http://{local}/mcp");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("HTTP server failed: {e}"))
}

//! # A protected downstream: an MCP server that requires an audience-bound bearer token
//!
//! A small MCP streamable HTTP server that plays a downstream protected by OAuth, to show and test
//! Mandate's token exchange. Every HTTP request must carry `Authorization: Bearer <JWT>` signed
//! by a key of the given JWKS (ES256 or RS256), with `iss` = `--issuer`, `aud` containing
//! `--audience` (default: its own URL) and an `exp` in the future; anything else is answered
//! `401`. The tool `whoami` reports the claims of the token the request carried.
//!
//! ```text
//! cargo run --example protected -- --jwks http://127.0.0.1:8080/.well-known/jwks.json \
//!     --issuer http://127.0.0.1:8080 [--http 127.0.0.1:0] [--audience URL] [--record FILE]
//! ```
//!
//! * `--jwks` is a URL (fetched at the first request, again when a token names an unknown
//!   `kid`, at most once a second) or a file holding the JWKS.
//! * `--record FILE` appends one JSON line per HTTP request (method, every header, the body),
//!   so a test can prove what the server received — and what it did not.
//! * The first stdout line is `protected listening on http://IP:PORT/mcp`.
//! * `--stdio`: serve one MCP session over stdin/stdout instead. There is no HTTP header, so
//!   `whoami` verifies the token in the call's `_meta["io.mandate/authorization"]` (what Mandate
//!   sends a stdio downstream whose manifest says `deliver = "meta"`); `--audience` is required.
//!
//! Tool: `whoami` (read, no arguments) → `{ sub, aud, act, scope, client_id, iss, jti, exp }`
//! of the verified token.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

/// The verified claims of a request, passed from the middleware to the tool.
#[derive(Clone)]
struct Claims(Value);

struct Keys {
    source: String,
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
}

struct Verifier {
    keys: tokio::sync::Mutex<Keys>,
    issuer: String,
    audience: String,
    record: Option<Mutex<std::fs::File>>,
    http: reqwest::Client,
}

impl Verifier {
    fn new(jwks: String, issuer: String, audience: String, record: Option<std::fs::File>) -> Self {
        Self {
            keys: tokio::sync::Mutex::new(Keys {
                source: jwks,
                keys: HashMap::new(),
                fetched: None,
            }),
            issuer,
            audience,
            record: record.map(Mutex::new),
            http: reqwest::Client::new(),
        }
    }

    async fn load(&self, keys: &mut Keys) -> Result<(), String> {
        if keys
            .fetched
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        keys.fetched = Some(Instant::now());
        let text = if keys.source.starts_with("http://") || keys.source.starts_with("https://") {
            self.http
                .get(&keys.source)
                .send()
                .await
                .map_err(|e| format!("cannot fetch the JWKS: {e}"))?
                .text()
                .await
                .map_err(|e| format!("cannot read the JWKS: {e}"))?
        } else {
            std::fs::read_to_string(&keys.source)
                .map_err(|e| format!("cannot read the JWKS file: {e}"))?
        };
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("bad JWKS: {e}"))?;
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk))
            else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => Algorithm::ES256,
            };
            keys.keys.insert(kid, (key, alg));
        }
        Ok(())
    }

    async fn verify(&self, token: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        let kid = header.kid.ok_or("token has no `kid`")?;
        let mut keys = self.keys.lock().await;
        if !keys.keys.contains_key(&kid) {
            self.load(&mut keys).await?;
        }
        let (key, alg) = keys.keys.get(&kid).ok_or("unknown `kid`")?;
        if header.alg != *alg {
            return Err("algorithm does not match the key".into());
        }
        let mut validation = Validation::new(*alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Value>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| format!("invalid token: {e}"))
    }

    fn record(&self, method: &str, headers: &axum::http::HeaderMap, body: &[u8]) {
        let Some(file) = &self.record else { return };
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let line =
            json!({ "method": method, "headers": headers, "body": String::from_utf8_lossy(body) });
        if let Ok(mut f) = file.lock() {
            let _ = writeln!(f, "{line}");
        }
    }
}

async fn authenticate(State(v): State<Arc<Verifier>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 4 * 1024 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    v.record(parts.method.as_str(), &parts.headers, &bytes);
    let token = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    let Some(token) = token else {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer")],
            "no bearer token",
        )
            .into_response();
    };
    match v.verify(token).await {
        Ok(claims) => {
            parts.extensions.insert(Claims(claims));
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer error=\"invalid_token\"")],
            e,
        )
            .into_response(),
    }
}

#[derive(Clone)]
struct Protected {
    /// Set in `--stdio` mode: the token comes in `_meta`, verified by the tool.
    stdio: Option<Arc<Verifier>>,
}

/// Where Mandate puts the token for stdio downstreams that opted in.
const AUTHORIZATION_META: &str = "io.mandate/authorization";

fn whoami() -> Tool {
    let input: JsonObject = serde_json::from_value(json!({
        "type": "object", "properties": {}, "additionalProperties": false
    }))
    .unwrap_or_default();
    Tool::new(
        "whoami",
        "Report the claims of the bearer token this request carried (sub, aud, act, scope).",
        Arc::new(input),
    )
    .with_annotations(ToolAnnotations::new().read_only(true))
}

impl ServerHandler for Protected {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("protected", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![whoami()]))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        (name == "whoami").then(whoami)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != "whoami" {
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{}`", request.name),
                None,
            ));
        }
        let claims = match &self.stdio {
            None => context
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|p| p.extensions.get::<Claims>())
                .map(|c| c.0.clone())
                .unwrap_or(Value::Null),
            Some(verifier) => {
                let token = context.meta.get(AUTHORIZATION_META).and_then(Value::as_str);
                let Some(token) = token else {
                    return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                        ContentBlock::text(format!(
                            "no token in `_meta[\"{AUTHORIZATION_META}\"]`"
                        )),
                    ])));
                };
                match verifier.verify(token).await {
                    Ok(claims) => claims,
                    Err(e) => {
                        return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                            ContentBlock::text(e),
                        ])));
                    }
                }
            }
        };
        let pick = |k: &str| claims.get(k).cloned().unwrap_or(Value::Null);
        let seen = json!({
            "sub": pick("sub"), "aud": pick("aud"), "act": pick("act"), "scope": pick("scope"),
            "client_id": pick("client_id"), "iss": pick("iss"), "jti": pick("jti"), "exp": pick("exp"),
        });
        Ok(CallToolResponse::Complete(CallToolResult::success(vec![
            ContentBlock::text(seen.to_string()),
        ])))
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("protected: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    use axum::serve::ListenerExt;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jwks = arg(&args, "--jwks").ok_or("`--jwks URL|FILE` is required")?;
    let issuer = arg(&args, "--issuer").ok_or("`--issuer ISS` is required")?;
    if args.iter().any(|a| a == "--stdio") {
        use rmcp::ServiceExt;
        let audience = arg(&args, "--audience").ok_or("`--stdio` needs `--audience`")?;
        let verifier = Arc::new(Verifier::new(jwks, issuer, audience, None));
        let service = Protected {
            stdio: Some(verifier),
        }
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| e.to_string())?;
        service.waiting().await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let addr = arg(&args, "--http").unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let url = format!("http://{local}/mcp");
    let audience = arg(&args, "--audience").unwrap_or_else(|| url.clone());
    let record = match arg(&args, "--record") {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open {path}: {e}"))?,
        ),
        None => None,
    };
    let verifier = Arc::new(Verifier::new(jwks, issuer, audience, record));
    let config = StreamableHttpServerConfig::default().with_allowed_hosts(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        local.ip().to_string(),
    ]);
    let service = StreamableHttpService::new(
        || Ok(Protected { stdio: None }),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(verifier, authenticate));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "protected listening on {url}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}

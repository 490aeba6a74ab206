//! The native outbound path for streamable HTTP downstreams.
//!
//! rmcp keeps the connection's handshake, pinning, drift checks and list-changed notifications.
//! Each tool call is one pooled POST on the session rmcp established, with per-call headers
//! (the `Authorization` the exchange stage sets, Mandate's `traceparent`), the arguments spliced
//! in as the raw JSON the caller sent, and the response (JSON, or SSE) read inline in wire order:
//! progress, log messages and server→client requests on the call's stream reach the calling
//! session's sink before the result, because they are read from the same stream before it.
//!
//! [`Capture`] wraps the `reqwest` client rmcp uses so the lane learns the session id.
//! Plain-HTTP downstreams get the lane's POSTs on its own pooled hyper connections
//! ([`super::h1`]); `https://` ones through `reqwest`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::DownstreamError;
use super::h1::{H1, Rest};
use crate::call::{CallSink, RpcError};

const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const METHOD: HeaderName = HeaderName::from_static("mcp-method");
const NAME: HeaderName = HeaderName::from_static("mcp-name");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const ACCEPT: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");
const TOOLS_CALL: HeaderValue = HeaderValue::from_static("tools/call");

/// The session rmcp established with the downstream.
#[derive(Clone)]
struct LaneSession {
    id: HeaderValue,
    protocol: HeaderValue,
}

/// One HTTP downstream's native lane.
pub struct HttpLane {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    /// The lane's own connections (plain-HTTP downstreams).
    native: Option<H1>,
    session: Arc<RwLock<Option<HeaderValue>>>,
    protocol: RwLock<Option<HeaderValue>>,
    next: AtomicU64,
}

impl HttpLane {
    pub fn new(name: String, url: reqwest::Url, client: reqwest::Client) -> Self {
        Self {
            name,
            native: H1::for_url(&url),
            url,
            client,
            session: Arc::new(RwLock::new(None)),
            protocol: RwLock::new(None),
            next: AtomicU64::new(1),
        }
    }

    /// The client rmcp connects with: it reports the session id to this lane.
    pub fn capture(&self) -> Capture {
        if let Ok(mut s) = self.session.write() {
            *s = None;
        }
        Capture {
            inner: self.client.clone(),
            session: self.session.clone(),
        }
    }

    /// Called once the handshake is done with the negotiated revision (`None` when the
    /// connection ends).
    pub fn set_protocol(&self, protocol: Option<&str>) {
        if let Ok(mut p) = self.protocol.write() {
            *p = protocol.and_then(|p| HeaderValue::from_str(p).ok());
        }
        if protocol.is_none()
            && let Ok(mut s) = self.session.write()
        {
            *s = None;
        }
    }

    fn current(&self) -> Option<LaneSession> {
        let id = self.session.read().ok()?.clone()?;
        let protocol = self.protocol.read().ok()?.clone()?;
        Some(LaneSession { id, protocol })
    }

    /// Whether the lane can take calls (a session is established).
    pub fn ready(&self) -> bool {
        self.current().is_some()
    }

    fn transport(&self, e: impl std::fmt::Display) -> DownstreamError {
        DownstreamError::Transport(self.name.clone(), e.to_string())
    }

    fn post(&self, session: &LaneSession, body: String) -> Outbound<'_> {
        let outbound = match &self.native {
            Some(h1) => Outbound::Native(h1, h1.request(body)),
            None => Outbound::Pooled(self.client.post(self.url.clone()).body(body)),
        };
        outbound
            .header(http::header::CONTENT_TYPE, JSON)
            .header(http::header::ACCEPT, ACCEPT)
            .header(SESSION_ID, session.id.clone())
            .header(PROTOCOL_VERSION, session.protocol.clone())
    }

    /// Sends a request whose answer nobody reads (answers to the downstream's requests,
    /// cancellations); on the native lane the connection is kept when the answer was short.
    async fn send_only(&self, outbound: Outbound<'_>) -> Result<(), String> {
        match outbound {
            Outbound::Native(h1, request) => {
                let (response, lease) = h1.send(request).await?;
                if response.into_body().collect().await.is_ok() {
                    h1.give_back(lease, None);
                }
                Ok(())
            }
            Outbound::Pooled(b) => b.send().await.map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    /// One `tools/call`; see the module docs.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        tool: &str,
        raw_arguments: &str,
        authorization: Option<&secrecy::SecretString>,
        sink: &dyn CallSink,
        traceparent: Option<&str>,
        timeout: Duration,
        ct: &CancellationToken,
    ) -> Result<Box<RawValue>, DownstreamError> {
        let session = self
            .current()
            .ok_or_else(|| DownstreamError::Unavailable(self.name.clone(), "no session".into()))?;
        let id = format!("mandate-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let name = serde_json::to_string(tool).map_err(|e| self.transport(e))?;
        let mut meta = String::new();
        if sink.wants_progress() {
            meta.push_str(&format!(r#""progressToken":"{id}""#));
        }
        if let Some(tp) = traceparent.and_then(|tp| serde_json::to_string(tp).ok()) {
            if !meta.is_empty() {
                meta.push(',');
            }
            meta.push_str(&format!(r#""traceparent":{tp}"#));
        }
        let meta = if meta.is_empty() {
            String::new()
        } else {
            format!(r#","_meta":{{{meta}}}"#)
        };
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":"{id}","method":"tools/call","params":{{"name":{name},"arguments":{raw_arguments}{meta}}}}}"#
        );
        let tool_name = HeaderValue::from_str(tool).map_err(|e| self.transport(e))?;
        let mut request = self
            .post(&session, body)
            .header(METHOD, TOOLS_CALL)
            .header(NAME, tool_name);
        if let Some(tp) = traceparent.and_then(|tp| HeaderValue::from_str(tp).ok()) {
            request = request.header(TRACEPARENT, tp);
        }
        if let Some(auth) = authorization {
            let mut value = HeaderValue::from_str(auth.expose_secret()).map_err(|_| {
                self.transport("the downstream credential is not a valid header value")
            })?;
            value.set_sensitive(true);
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let exchange = self.exchange(&session, request, &id, sink);
        tokio::select! {
            r = exchange => r,
            _ = tokio::time::sleep(timeout) => {
                self.cancel(&session, &id, "timeout").await;
                Err(DownstreamError::Timeout(self.name.clone(), timeout))
            }
            _ = ct.cancelled() => {
                self.cancel(&session, &id, "cancelled by the caller").await;
                Err(DownstreamError::Cancelled)
            }
        }
    }

    async fn exchange(
        &self,
        session: &LaneSession,
        request: Outbound<'_>,
        id: &str,
        sink: &dyn CallSink,
    ) -> Result<Box<RawValue>, DownstreamError> {
        match request {
            Outbound::Native(h1, request) => {
                let (response, lease) = h1.send(request).await.map_err(|e| self.transport(e))?;
                let (outcome, rest) = self.read(session, response, id, sink).await;
                // Only a connection whose answer was read (or whose event stream is past the
                // result) is reused; anything else closes with it.
                if let Some(rest) = rest {
                    h1.give_back(lease, rest);
                }
                outcome
            }
            Outbound::Pooled(request) => {
                let response = request.send().await.map_err(|e| self.transport(e))?;
                self.read(session, http::Response::from(response), id, sink)
                    .await
                    .0
            }
        }
    }

    /// Reads the answer to a `tools/call`: the outcome, and whether the connection can be
    /// reused (`Some`, with the unread end of an event stream if any).
    async fn read<B>(
        &self,
        session: &LaneSession,
        response: http::Response<B>,
        id: &str,
        sink: &dyn CallSink,
    ) -> (Result<Box<RawValue>, DownstreamError>, Option<Option<Rest>>)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let status = response.status();
        if status == http::StatusCode::NOT_FOUND {
            // The downstream forgot the session: rmcp re-initializes on its next request.
            if let Ok(mut s) = self.session.write() {
                *s = None;
            }
            return (
                Err(DownstreamError::Unavailable(
                    self.name.clone(),
                    "the downstream session expired; retry".into(),
                )),
                None,
            );
        }
        let is_sse = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            let bytes = match response.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return (Err(self.transport(e)), None),
            };
            let outcome = match parse(&bytes) {
                Some(Message::Response { id: rid, outcome }) if rid == id => outcome,
                _ if !status.is_success() => Err(self.transport(format!("HTTP {status}"))),
                _ => Err(self.transport("unexpected answer to tools/call")),
            };
            return (outcome, Some(None));
        }
        let mut events = Box::pin(sse_stream::SseStream::new(response.into_body()));
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => return (Err(self.transport(e)), None),
            };
            let Some(data) = event.data else { continue };
            match parse(data.as_bytes()) {
                Some(Message::Response { id: rid, outcome }) if rid == id => {
                    let rest: Rest = Box::pin(events.map(|_| ()));
                    return (outcome, Some(Some(rest)));
                }
                Some(Message::Notification { method, params }) => match method.as_str() {
                    "notifications/progress" => {
                        if let Some(mut p) = params
                            && p.get("progressToken").and_then(Value::as_str) == Some(id)
                        {
                            p.remove("progressToken");
                            sink.progress(p).await;
                        }
                    }
                    // On this call's own stream: attributable to this call only.
                    "notifications/message" => sink.log(params.unwrap_or_default()).await,
                    _ => {}
                },
                Some(Message::Request {
                    id: ask,
                    method,
                    params,
                }) => {
                    let answer = sink.ask(&method, params.map(Value::Object)).await;
                    self.reply(session, &ask, answer).await;
                }
                _ => {}
            }
        }
        (
            Err(self.transport("the response stream ended before the result")),
            None,
        )
    }

    /// Sends the caller's answer to a server→client request back to the downstream.
    async fn reply(&self, session: &LaneSession, id: &RawValue, answer: Result<Value, RpcError>) {
        let body = match answer {
            Ok(result) => serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => serde_json::json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": e.code, "message": e.message, "data": e.data}}),
        };
        if let Err(e) = self.send_only(self.post(session, body.to_string())).await {
            tracing::warn!(downstream = %self.name, error = %e, "cannot answer the downstream's request");
        }
    }

    async fn cancel(&self, session: &LaneSession, id: &str, reason: &str) {
        let body = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": id, "reason": reason}});
        let send = self.send_only(self.post(session, body.to_string()));
        let _ = tokio::time::timeout(Duration::from_secs(2), send).await;
    }
}

/// A POST being built: on the lane's own connections (with their pool), or through `reqwest`.
enum Outbound<'a> {
    Native(&'a H1, http::Request<Full<Bytes>>),
    Pooled(reqwest::RequestBuilder),
}

impl Outbound<'_> {
    fn header(self, name: HeaderName, value: HeaderValue) -> Self {
        match self {
            Self::Native(h1, mut r) => {
                r.headers_mut().insert(name, value);
                Self::Native(h1, r)
            }
            Self::Pooled(b) => Self::Pooled(b.header(name, value)),
        }
    }
}

/// A JSON-RPC message from the downstream, as far as the lane needs it.
enum Message {
    Response {
        id: String,
        outcome: Result<Box<RawValue>, DownstreamError>,
    },
    Notification {
        method: String,
        params: Option<serde_json::Map<String, Value>>,
    },
    Request {
        id: Box<RawValue>,
        method: String,
        params: Option<serde_json::Map<String, Value>>,
    },
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    id: Option<Box<RawValue>>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Option<Value>,
}

fn parse(bytes: &[u8]) -> Option<Message> {
    let wire: Wire = serde_json::from_slice(bytes).ok()?;
    match (wire.id, wire.method) {
        (Some(id), Some(method)) => Some(Message::Request {
            id,
            method,
            params: wire.params,
        }),
        (None, Some(method)) => Some(Message::Notification {
            method,
            params: wire.params,
        }),
        (Some(id), None) => {
            let id = serde_json::from_str::<String>(id.get()).unwrap_or_default();
            let outcome = match (wire.result, wire.error) {
                (Some(result), _) => Ok(result),
                (None, Some(e)) => Err(DownstreamError::Mcp(RpcError {
                    code: e.code,
                    message: e.message,
                    data: e.data,
                })),
                (None, None) => return None,
            };
            Some(Message::Response { id, outcome })
        }
        (None, None) => None,
    }
}

/// The `reqwest` client rmcp uses for an HTTP downstream, reporting the session id to the lane.
#[derive(Clone)]
pub struct Capture {
    inner: reqwest::Client,
    session: Arc<RwLock<Option<HeaderValue>>>,
}

impl Capture {
    fn saw(&self, session_id: &Option<Arc<str>>) {
        if let Some(id) = session_id
            && let Ok(value) = HeaderValue::from_str(id)
            && let Ok(mut s) = self.session.write()
            && s.as_ref() != Some(&value)
        {
            *s = Some(value);
        }
    }
}

type HttpResult<T> = Result<T, StreamableHttpError<reqwest::Error>>;

impl StreamableHttpClient for Capture {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<StreamableHttpPostResponse> {
        self.saw(&session_id);
        self.inner
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> HttpResult<StreamableHttpPostResponse> {
        self.saw(&session_id);
        self.inner
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<()> {
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<futures::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>> {
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> HttpResult<futures::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>> {
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

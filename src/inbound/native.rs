//! The native inbound path: `tools/call` on an established session is parsed once by Mandate, run
//! through the call core inline on the connection's task, and answered with JSON — or with SSE
//! written by Mandate when the call streams (progress, log messages, server→client requests).
//! Also here: the caller's answers to server→client requests sent on native streams, and
//! `notifications/cancelled` for native calls. Everything else goes to rmcp with the body
//! already read.
//!
//! Ordering is exact: what the downstream sends about a call is pushed, in wire order, into the
//! call's channel before the call's result is produced, and the response drains the channel
//! before writing the result.

// Logging is deprecated by SEP-2577 but legacy clients use it.
#![allow(deprecated)]

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::handler::{MissionState, level_rank};
use super::ingress::Envelope;
use super::session::Session;
use crate::authn::Caller;
use crate::call::{
    self, Answer, Asked, CallRequest, CallSink, Completed, Reject, Relaying, RpcError,
};

#[derive(Deserialize)]
struct CallParams<'a> {
    name: Cow<'a, str>,
    #[serde(default)]
    arguments: Option<Box<RawValue>>,
    #[serde(default, rename = "_meta")]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<String>,
    #[serde(default, rename = "io.modelcontextprotocol/clientCapabilities")]
    client_capabilities: Option<Box<RawValue>>,
    #[serde(default, rename = "io.modelcontextprotocol/logLevel")]
    log_level: Option<rmcp::model::LoggingLevel>,
    #[serde(default, rename = "progressToken")]
    progress_token: Option<Box<RawValue>>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default, rename = "io.mandate/reasoning")]
    reasoning: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct CancelledParams {
    #[serde(rename = "requestId")]
    request_id: Box<RawValue>,
}

/// One message for the caller's SSE stream, serialised.
type Frame = String;

/// Messages a native call may have waiting for the caller before the downstream is slowed down.
const FRAMES: usize = 256;

/// The sink of a native call: frames into the call's channel.
struct NativeSink {
    session_id: u64,
    /// The caller's session; `None` for a stateless 2026-07-28 request (no server→client
    /// requests there: the client must be asked with an `InputRequiredResult` instead).
    session: Option<Arc<Session>>,
    principal: String,
    progress: Option<Box<RawValue>>,
    /// Whether log messages go to the caller at all (a 2026-07-28 request opts in with
    /// `_meta["io.modelcontextprotocol/logLevel"]`), and from which level.
    logs: bool,
    log_level: Option<rmcp::model::LoggingLevel>,
    /// Bounded: a downstream that streams faster than the caller reads is slowed down (back
    /// pressure to the downstream), never buffered without limit.
    frames: mpsc::Sender<Frame>,
}

fn notification(method: &str, params: &serde_json::Map<String, Value>) -> Frame {
    let params = serde_json::to_string(params).unwrap_or_else(|_| "{}".into());
    format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{params}}}"#)
}

impl CallSink for NativeSink {
    fn session(&self) -> u64 {
        self.session_id
    }

    fn principal(&self) -> &str {
        &self.principal
    }

    fn wants_progress(&self) -> bool {
        self.progress.is_some()
    }

    fn progress(&self, mut params: serde_json::Map<String, Value>) -> Relaying<'_> {
        if let Some(token) = &self.progress
            && let Ok(token) = serde_json::from_str::<Value>(token.get())
        {
            params.insert("progressToken".into(), token);
            let frame = notification("notifications/progress", &params);
            return Box::pin(async move {
                let _ = self.frames.send(frame).await;
            });
        }
        Box::pin(std::future::ready(()))
    }

    fn log(&self, params: serde_json::Map<String, Value>) -> Relaying<'_> {
        if !self.logs {
            return Box::pin(std::future::ready(()));
        }
        let below = params
            .get("level")
            .and_then(|l| serde_json::from_value::<rmcp::model::LoggingLevel>(l.clone()).ok())
            .zip(self.log_level)
            .is_some_and(|(level, min)| level_rank(level) < level_rank(min));
        if below {
            return Box::pin(std::future::ready(()));
        }
        let frame = notification("notifications/message", &params);
        Box::pin(async move {
            let _ = self.frames.send(frame).await;
        })
    }

    fn can_elicit(&self) -> Option<bool> {
        match &self.session {
            Some(s) => s.state.can_elicit(),
            // A stateless request has no back-channel to ask on.
            None => Some(false),
        }
    }

    fn ask(&self, method: &str, params: Option<Value>) -> Asked {
        let Some(session) = &self.session else {
            let method = method.to_owned();
            return Box::pin(async move {
                Err(RpcError {
                    code: -32601,
                    message: format!(
                        "`{method}` cannot reach a 2026-07-28 caller mid-call (no back-channel on a stateless request)"
                    ),
                    data: None,
                })
            });
        };
        let (id, answer) = session.open_ask();
        let params = params
            .map(|p| serde_json::to_string(&p).unwrap_or_else(|_| "null".into()))
            .map(|p| format!(r#","params":{p}"#))
            .unwrap_or_default();
        let frame = format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"{method}"{params}}}"#);
        let frames = self.frames.clone();
        // Forgotten however the wait ends (answered, call timed out, caller gone).
        let pending = PendingAsk {
            session: session.clone(),
            id,
        };
        Box::pin(async move {
            let _pending = pending;
            if frames.send(frame).await.is_err() {
                return Err(call::reject::internal("the caller's stream is closed"));
            }
            answer
                .await
                .unwrap_or_else(|_| Err(call::reject::internal("the caller did not answer")))
        })
    }
}

/// A server→client request awaiting the caller's answer; forgotten when dropped.
struct PendingAsk {
    session: Arc<Session>,
    id: String,
}

impl Drop for PendingAsk {
    fn drop(&mut self) {
        self.session.forget_ask(&self.id);
    }
}

/// Handles a POST on an established session if it is a `tools/call`, an answer to a native
/// server→client request, or a cancellation of a native call; `None` when rmcp should.
pub async fn handle(
    state: &Arc<MissionState>,
    core: &call::Core,
    session: &Arc<Session>,
    caller: Arc<Caller>,
    envelope: &Envelope<'_>,
) -> Option<Response> {
    match (envelope.method.as_deref(), envelope.id) {
        (Some("tools/call"), Some(id)) => {
            let params = envelope.params?;
            let params = match serde_json::from_str::<CallParams>(params.get()) {
                Ok(p) => p,
                Err(e) => {
                    return Some(error_response(
                        id.get(),
                        StatusCode::OK,
                        &RpcError {
                            code: crate::call::reject::INVALID_PARAMS,
                            message: format!("invalid `tools/call` params: {e}"),
                            data: None,
                        },
                    ));
                }
            };
            Some(tools_call(state, core, Some(session), caller, id.get(), params).await)
        }
        (None, Some(id)) if envelope.result.is_some() || envelope.error.is_some() => {
            let key = serde_json::from_str::<String>(id.get()).unwrap_or_default();
            let answer = match (envelope.result, &envelope.error) {
                (Some(r), _) => {
                    serde_json::from_str(r.get()).map_err(|e| call::reject::internal(e.to_string()))
                }
                (None, Some(e)) => Err(RpcError {
                    code: e.code,
                    message: e.message.clone(),
                    data: e.data.clone(),
                }),
                (None, None) => Err(call::reject::internal("empty answer")),
            };
            session
                .answer_ask(&key, answer)
                .then(|| StatusCode::ACCEPTED.into_response())
        }
        (Some("notifications/cancelled"), None) => {
            let cancelled = envelope
                .params
                .and_then(|p| serde_json::from_str::<CancelledParams>(p.get()).ok())?;
            session
                .cancel_call(cancelled.request_id.get())
                .then(|| StatusCode::ACCEPTED.into_response())
        }
        _ => None,
    }
}

/// Handles a stateless 2026-07-28 `tools/call` (no session) natively when it carries the
/// per-request envelope the revision requires; `None` leaves anything else (and every error
/// the SDK words itself: a missing envelope, mismatched standard headers) to rmcp.
pub async fn stateless(
    state: &Arc<MissionState>,
    core: &call::Core,
    caller: Arc<Caller>,
    envelope: &Envelope<'_>,
    headers: &axum::http::HeaderMap,
) -> Option<Response> {
    const MODERN: &str = "2026-07-28";
    if envelope.method.as_deref() != Some("tools/call")
        || headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            != Some(MODERN)
    {
        return None;
    }
    let id = envelope.id?;
    let params = serde_json::from_str::<CallParams>(envelope.params?.get()).ok()?;
    let meta = params.meta.as_ref()?;
    if meta.protocol_version.as_deref() != Some(MODERN) || meta.client_capabilities.is_none() {
        return None;
    }
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if header("mcp-method").is_some_and(|m| m != "tools/call")
        || header("mcp-name").is_some_and(|n| n != params.name)
    {
        return None;
    }
    Some(tools_call(state, core, None, caller, id.get(), params).await)
}

async fn tools_call(
    state: &Arc<MissionState>,
    core: &call::Core,
    session: Option<&Arc<Session>>,
    caller: Arc<Caller>,
    id: &str,
    params: CallParams<'_>,
) -> Response {
    let inflight = match session.map(|s| s.start_call(id, true)) {
        Some(Ok(f)) => Some(f),
        None => None,
        Some(Err(_)) => {
            return error_response(
                id,
                StatusCode::OK,
                &RpcError {
                    code: crate::call::reject::INVALID_REQUEST,
                    message: "a request with this id is already in flight on this session".into(),
                    data: None,
                },
            );
        }
    };
    let stateless = session.is_none();
    let cancel = inflight
        .as_ref()
        .map(|f| f.cancel.clone())
        .unwrap_or_default();
    let (frames, mut rx) = mpsc::channel(FRAMES);
    let meta = params.meta;
    let (progress, traceparent, reasoning, requested_level) = match meta {
        Some(m) => (m.progress_token, m.traceparent, m.reasoning, m.log_level),
        None => (None, None, None, None),
    };
    let (logs, log_level) = match session {
        Some(s) => (true, s.state.log_level()),
        None => (requested_level.is_some(), requested_level),
    };
    let tool = params.name.into_owned();
    let principal = call::principal_key(&caller);
    let request = CallRequest {
        caller,
        tool: tool.clone(),
        arguments: params.arguments,
        reasoning,
        request_id: id.to_owned(),
        traceparent,
        cancel,
        sink: Arc::new(NativeSink {
            session_id: session
                .map_or_else(|| super::handler::SessionState::new().id, |s| s.state.id),
            session: session.cloned(),
            principal,
            progress,
            logs,
            log_level,
            frames,
        }),
    };
    let id: Arc<str> = Arc::from(id);
    let state = state.clone();
    let core = core.clone();
    let mut run = Box::pin(async move {
        let _inflight = inflight;
        call::run(&core, &state.mission, request).await
    });
    // Until the first frame or the result: a JSON answer if nothing streams.
    let first = tokio::select! {
        biased;
        frame = rx.recv() => frame,
        result = &mut run => {
            // Frames sent before the result are streamed first, in order.
            let mut batch: Vec<Frame> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
            if batch.is_empty() {
                return json_answer(&id, &tool, result, stateless);
            }
            batch.push(answer(&id, &tool, result, stateless));
            return sse(futures::stream::once(std::future::ready(Ok(batch))));
        }
    };
    let Some(first) = first else {
        // The sink is gone but the call still runs: wait for its result.
        return json_answer(&id, &tool, run.await, stateless);
    };
    // Streaming: the response body drives the call from here, inline on the connection's task.
    let stream = futures::stream::unfold(
        (Some(vec![first]), Some(run), rx, id, tool),
        move |(pending, run, mut rx, id, tool)| async move {
            if let Some(batch) = pending {
                return Some((Ok::<_, Infallible>(batch), (None, run, rx, id, tool)));
            }
            let mut run = run?;
            tokio::select! {
                biased;
                Some(frame) = rx.recv() => Some((Ok(vec![frame]), (None, Some(run), rx, id, tool))),
                result = &mut run => {
                    let mut batch: Vec<Frame> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
                    batch.push(answer(&id, &tool, result, stateless));
                    Some((Ok(batch), (None, None, rx, id, tool)))
                }
            }
        },
    );
    sse(stream)
}

/// The JSON-RPC response message for a call's result.
fn answer(id: &str, tool: &str, result: Result<Completed, Reject>, modern: bool) -> String {
    match result {
        Ok(Completed::Result { raw, .. }) if modern => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#,
            with_result_type(raw.get())
        ),
        Ok(Completed::Result { raw, .. }) | Ok(Completed::InputRequired(raw)) => {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#, raw.get())
        }
        Err(reject) => match reject.answer(tool) {
            Answer::ToolError(text) => {
                let text = serde_json::to_string(&text).unwrap_or_else(|_| "\"\"".into());
                let result_type = if modern {
                    r#","resultType":"complete""#
                } else {
                    ""
                };
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":{text}}}],"isError":true{result_type}}}}}"#
                )
            }
            Answer::Error { error, .. } => error_message(id, &error),
        },
    }
}

/// A complete result for a 2026-07-28 caller must say so (`resultType`); legacy downstreams
/// do not write it. Spliced into the raw object without re-serialising it.
fn with_result_type(raw: &str) -> Cow<'_, str> {
    let trimmed = raw.trim_end();
    if raw.contains("\"resultType\"") || !trimmed.ends_with('}') {
        return Cow::Borrowed(raw);
    }
    let body = &trimmed[..trimmed.len() - 1];
    let empty = body
        .trim_start()
        .strip_prefix('{')
        .is_some_and(|b| b.trim().is_empty());
    Cow::Owned(if empty {
        r#"{"resultType":"complete"}"#.to_owned()
    } else {
        format!(r#"{body},"resultType":"complete"}}"#)
    })
}

fn json_answer(id: &str, tool: &str, result: Result<Completed, Reject>, modern: bool) -> Response {
    let status = match &result {
        Err(reject) => match reject.answer(tool) {
            Answer::Error { status, .. } => StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            Answer::ToolError(_) => StatusCode::OK,
        },
        Ok(_) => StatusCode::OK,
    };
    json(status, answer(id, tool, result, modern))
}

fn error_message(id: &str, error: &RpcError) -> String {
    let message = serde_json::to_string(&error.message).unwrap_or_else(|_| "\"\"".into());
    let data = error
        .data
        .as_ref()
        .and_then(|d| serde_json::to_string(d).ok())
        .map(|d| format!(r#","data":{d}"#))
        .unwrap_or_default();
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{},"message":{message}{data}}}}}"#,
        error.code
    )
}

/// A JSON-RPC error response.
pub fn error_response(id: &str, status: StatusCode, error: &RpcError) -> Response {
    json(status, error_message(id, error))
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// An SSE response whose events are the given batches of JSON-RPC messages.
fn sse(
    batches: impl futures::Stream<Item = Result<Vec<Frame>, Infallible>> + Send + 'static,
) -> Response {
    use futures::StreamExt;
    let body = batches.map(|batch| {
        batch.map(|batch| {
            let mut out = String::new();
            for message in &batch {
                out.push_str("event: message\n");
                // A raw downstream result may contain newlines: one `data:` line each.
                for line in message.split('\n') {
                    out.push_str("data: ");
                    out.push_str(line.trim_end_matches('\r'));
                    out.push('\n');
                }
                out.push('\n');
            }
            Bytes::from(out)
        })
    });
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

//! A transport wrapper that sees each downstream message before rmcp dispatches it, and the
//! native call path of stdio downstreams.
//!
//! **Stdio lane.** Tool calls to a stdio downstream do not go through rmcp's client: the
//! [`StdioLane`] writes them on the connection (ids `mandate-<n>`) and this wrapper's reader takes
//! their replies and progress (by Mandate's own progress token) out of the stream before rmcp
//! sees them, pushing them in wire order into the call's own channel: one reader, a request-id →
//! reply map, and progress always before the result.
//!
//! **Fence** (for what still goes through rmcp: pass-through of resources and prompts). rmcp
//! hands every incoming notification to its own task, so a progress or log message sent just
//! before a result may be relayed after it. The fence counts notifications as they arrive, in
//! wire order; the relay counts them down once relayed; a finished request waits (bounded) until
//! the notifications that arrived before its result are relayed.
//!
//! A stdio wire carries no association for log messages and server→client requests: on a
//! per-principal connection (one principal's calls only) a log message goes to a native call in
//! flight; on a shared one it is dropped, never guessed (see `Routes::log_route`). Requests go to
//! rmcp's relay, which applies the same rule.

// Logging is deprecated by SEP-2577 but still relayed.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
    ClientNotification, ClientRequest, GetExtensions, JsonRpcMessage, JsonRpcNotification,
    JsonRpcRequest, NumberOrString, ProgressToken, RequestId, ServerNotification, ServerResult,
};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::relay::{Routes, Seq};
use super::{DownstreamError, rpc_error};
use crate::call::CallSink;

/// What the reader hands a native stdio call, in wire order.
enum LaneEvent {
    Progress(serde_json::Map<String, Value>),
    Log(serde_json::Map<String, Value>),
    Done(Result<Box<RawValue>, DownstreamError>),
}

type Pending = mpsc::UnboundedSender<LaneEvent>;

/// The native call path of one stdio downstream.
pub struct StdioLane {
    name: String,
    outbound: Mutex<Option<mpsc::UnboundedSender<TxJsonRpcMessage<RoleClient>>>>,
    /// Calls in flight by their numeric part of `mandate-<n>`.
    pending: Mutex<BTreeMap<u64, Pending>>,
    next: AtomicU64,
}

const PREFIX: &str = "mandate-";

fn lane_id(id: &NumberOrString) -> Option<u64> {
    match id {
        NumberOrString::String(s) => s.strip_prefix(PREFIX)?.parse().ok(),
        NumberOrString::Number(_) => None,
    }
}

impl StdioLane {
    pub fn new(name: String) -> Self {
        Self {
            name,
            outbound: Mutex::new(None),
            pending: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// A new connection: its outbound queue. Calls of an earlier connection fail.
    fn attach(&self) -> mpsc::UnboundedReceiver<TxJsonRpcMessage<RoleClient>> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut o) = self.outbound.lock() {
            *o = Some(tx);
        }
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        rx
    }

    /// The connection ended: calls in flight fail at once.
    pub fn detach(&self) {
        if let Ok(mut o) = self.outbound.lock() {
            *o = None;
        }
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
    }

    fn send(&self, message: TxJsonRpcMessage<RoleClient>) -> bool {
        self.outbound
            .lock()
            .ok()
            .and_then(|o| o.as_ref().map(|tx| tx.send(message).is_ok()))
            .unwrap_or(false)
    }

    /// Whether a connection is attached.
    pub fn ready(&self) -> bool {
        self.outbound
            .lock()
            .map(|o| o.as_ref().is_some_and(|tx| !tx.is_closed()))
            .unwrap_or(false)
    }

    /// One `tools/call`; see the module docs.
    // The call's parts as the permit and the adapter hand them over; a struct would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, Value>,
        sink: Arc<dyn CallSink>,
        routes: &Arc<Routes>,
        traceparent: Option<&str>,
        timeout: Duration,
        ct: &CancellationToken,
    ) -> Result<Box<RawValue>, DownstreamError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = RequestId::String(Arc::from(format!("{PREFIX}{n}")));
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = Some(arguments);
        let mut meta = rmcp::model::RequestMetaObject::default();
        if sink.wants_progress() {
            meta.set_progress_token(ProgressToken(id.clone()));
        }
        if let Some(tp) = traceparent {
            meta.set_traceparent(tp);
        }
        params.meta = Some(meta);
        let (events, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(n, events);
        }
        let _guard = Forget { lane: self, n };
        // Server→client requests arriving during the call go through rmcp's relay, which finds
        // the call here (the wire does not say which call they belong to).
        let _route = routes.register_native(id.clone(), super::CallRoute::new(sink.clone()));
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        if !self.send(JsonRpcMessage::Request(JsonRpcRequest::new(
            id.clone(),
            request,
        ))) {
            return Err(DownstreamError::Unavailable(
                self.name.clone(),
                "not connected (restarting?)".into(),
            ));
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(LaneEvent::Progress(p)) => sink.progress(p).await,
                    Some(LaneEvent::Log(p)) => sink.log(p).await,
                    Some(LaneEvent::Done(result)) => return result,
                    None => return Err(DownstreamError::Transport(
                        self.name.clone(),
                        "the downstream exited during the call".into(),
                    )),
                },
                _ = &mut deadline => {
                    self.cancel(id, "timeout");
                    return Err(DownstreamError::Timeout(self.name.clone(), timeout));
                }
                _ = ct.cancelled() => {
                    self.cancel(id, "cancelled by the caller");
                    return Err(DownstreamError::Cancelled);
                }
            }
        }
    }

    fn cancel(&self, id: RequestId, reason: &str) {
        let notification = ClientNotification::CancelledNotification(CancelledNotification::new(
            CancelledNotificationParam::new(Some(id), Some(reason.to_owned())),
        ));
        self.send(JsonRpcMessage::Notification(JsonRpcNotification {
            jsonrpc: rmcp::model::JsonRpcVersion2_0,
            notification,
        }));
    }

    fn deliver(&self, n: u64, event: LaneEvent) -> bool {
        self.pending
            .lock()
            .ok()
            .and_then(|p| p.get(&n).map(|c| c.send(event).is_ok()))
            .unwrap_or(false)
    }

    /// Takes a message meant for a native call out of the stream; returns it otherwise.
    fn intercept(
        &self,
        message: RxJsonRpcMessage<RoleClient>,
        routes: &Routes,
    ) -> Option<RxJsonRpcMessage<RoleClient>> {
        match message {
            JsonRpcMessage::Response(r) => match lane_id(&r.id) {
                Some(n) => {
                    let raw = match r.result {
                        ServerResult::CallToolResult(r) => serde_json::value::to_raw_value(&r),
                        ServerResult::InputRequiredResult(r) => serde_json::value::to_raw_value(&r),
                        _ => {
                            self.deliver(
                                n,
                                LaneEvent::Done(Err(DownstreamError::Transport(
                                    self.name.clone(),
                                    "the downstream answered tools/call with another kind of result"
                                        .into(),
                                ))),
                            );
                            return None;
                        }
                    };
                    let done = raw
                        .map_err(|e| DownstreamError::Transport(self.name.clone(), e.to_string()));
                    self.deliver(n, LaneEvent::Done(done));
                    None
                }
                None => Some(JsonRpcMessage::Response(r)),
            },
            JsonRpcMessage::Error(e) => match e.id.as_ref().and_then(lane_id) {
                Some(n) => {
                    self.deliver(
                        n,
                        LaneEvent::Done(Err(DownstreamError::Mcp(rpc_error(e.error)))),
                    );
                    None
                }
                None => Some(JsonRpcMessage::Error(e)),
            },
            JsonRpcMessage::Notification(n) => match &n.notification {
                ServerNotification::ProgressNotification(p) => {
                    match lane_id(&p.params.progress_token.0) {
                        Some(call) => {
                            let mut params = object(&p.params);
                            params.remove("progressToken");
                            self.deliver(call, LaneEvent::Progress(params));
                            None
                        }
                        None => Some(JsonRpcMessage::Notification(n)),
                    }
                }
                ServerNotification::LoggingMessageNotification(l) => {
                    let no_native = self.pending.lock().map(|p| p.is_empty()).unwrap_or(true);
                    if no_native {
                        return Some(JsonRpcMessage::Notification(n));
                    }
                    // Native calls are registered in `routes` too; see `Routes::log_route`.
                    routes.log_route(&rmcp::model::Extensions::default())?;
                    let oldest = self
                        .pending
                        .lock()
                        .ok()
                        .and_then(|p| p.keys().next().copied());
                    if let Some(call) = oldest {
                        self.deliver(call, LaneEvent::Log(object(&l.params)));
                    }
                    None
                }
                _ => Some(JsonRpcMessage::Notification(n)),
            },
            other => Some(other),
        }
    }
}

fn object<T: serde::Serialize>(params: &T) -> serde_json::Map<String, Value> {
    match serde_json::to_value(params) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// Removes a finished (or abandoned) call from the lane.
struct Forget<'a> {
    lane: &'a StdioLane,
    n: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.lane.pending.lock() {
            p.remove(&self.n);
        }
    }
}

/// Wraps a downstream transport; see the module docs.
pub struct Fenced<T> {
    inner: T,
    routes: Arc<Routes>,
    lane: Option<(
        Arc<StdioLane>,
        mpsc::UnboundedReceiver<TxJsonRpcMessage<RoleClient>>,
    )>,
}

impl<T> Fenced<T> {
    pub fn new(inner: T, routes: Arc<Routes>, lane: Option<Arc<StdioLane>>) -> Self {
        let lane = lane.map(|lane| {
            let rx = lane.attach();
            (lane, rx)
        });
        Self {
            inner,
            routes,
            lane,
        }
    }

    fn fence(&self, message: &mut Option<RxJsonRpcMessage<RoleClient>>) {
        if let Some(JsonRpcMessage::Notification(JsonRpcNotification { notification, .. })) =
            message
        {
            let seq = match notification {
                ServerNotification::ProgressNotification(n) => {
                    Some(self.routes.arrived(Some(n.params.progress_token.clone())))
                }
                ServerNotification::LoggingMessageNotification(_) => {
                    Some(self.routes.arrived(None))
                }
                _ => None,
            };
            if let Some(seq) = seq {
                // rmcp moves these extensions into the handler's NotificationContext.
                notification.extensions_mut().insert(Seq(seq));
            }
        }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Fenced<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let mut message = match &mut self.lane {
                None => match self.inner.receive().await {
                    Some(m) => Some(m),
                    None => return None,
                },
                Some((lane, outbound)) => {
                    tokio::select! {
                        // Both branches are cancel-safe: the inner transports read from a
                        // framed stream or a channel.
                        m = self.inner.receive() => match m {
                            Some(m) => lane.intercept(m, &self.routes),
                            None => return None,
                        },
                        Some(out) = outbound.recv() => {
                            if self.inner.send(out).await.is_err() {
                                tracing::warn!("cannot write to the downstream");
                            }
                            continue;
                        }
                    }
                }
            };
            if message.is_none() {
                continue;
            }
            self.fence(&mut message);
            return message;
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        if let Some((lane, _)) = &self.lane
            && let Ok(mut o) = lane.outbound.lock()
        {
            *o = None;
        }
        self.inner.close()
    }
}

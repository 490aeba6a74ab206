//! A transport wrapper that sees each downstream message before rmcp dispatches it, and the
//! native call path of stdio downstreams.
//!
//! **Stdio lane.** Tool calls to a stdio downstream do not go through rmcp's client: the
//! [`StdioLane`] writes them on the connection (ids `mandate-<n>`) and the [`LaneTap`] under
//! rmcp's line reader takes their replies and progress (by Mandate's own progress token) out of
//! the child's raw output before rmcp parses it, pushing them in wire order into the call's own
//! channel: one reader, a request-id → reply map, and progress always before the result.
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
    JsonRpcRequest, ProgressToken, RequestId, ServerNotification,
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

/// The number of a lane id (`mandate-<n>`), as request id or progress token.
fn lane_number(id: &str) -> Option<u64> {
    id.strip_prefix(PREFIX)?.parse().ok()
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
}

/// Just enough of a downstream line to tell whether it is the lane's, borrowing from it.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<rmcp::ErrorData>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

impl StdioLane {
    /// A log message on a connection carrying one principal's calls goes to the oldest native
    /// call in flight (see `Routes::log_route`).
    fn log_to_oldest(&self, params: serde_json::Map<String, Value>) {
        let oldest = self
            .pending
            .lock()
            .ok()
            .and_then(|p| p.keys().next().copied());
        if let Some(call) = oldest {
            self.deliver(call, LaneEvent::Log(params));
        }
    }

    fn has_pending(&self) -> bool {
        self.pending.lock().map(|p| !p.is_empty()).unwrap_or(false)
    }

    /// Takes a raw line meant for a native call out of the stream, before rmcp parses it: the
    /// lane's replies, its progress and (while a native call is in flight) log messages; `false`
    /// leaves the line to rmcp. A line that only looks like the lane's but does not parse is left
    /// to rmcp too, which answers or drops it as it does any other.
    fn take_raw(&self, line: &[u8], routes: &Routes) -> bool {
        let ours = memchr::memmem::find(line, PREFIX.as_bytes()).is_some();
        let a_log_for_a_call =
            || self.has_pending() && memchr::memmem::find(line, b"notifications/message").is_some();
        if !ours && !a_log_for_a_call() {
            return false;
        }
        let line = line
            .strip_prefix(b"\xEF\xBB\xBF".as_slice())
            .unwrap_or(line);
        let Ok(peek) = serde_json::from_slice::<Peek<'_>>(line) else {
            return false;
        };
        match (peek.id, peek.method.as_deref()) {
            (Some(id), None) => {
                let Some(n) = serde_json::from_str::<&str>(id.get())
                    .ok()
                    .and_then(lane_number)
                else {
                    return false;
                };
                let done = match (peek.result, peek.error) {
                    (Some(result), _) => self.tool_result(result),
                    (None, Some(e)) => Err(DownstreamError::Mcp(rpc_error(e))),
                    (None, None) => return false,
                };
                self.deliver(n, LaneEvent::Done(done));
                true
            }
            (None, Some("notifications/progress")) => {
                let Some(mut params) = peek.params.and_then(|p| {
                    serde_json::from_str::<serde_json::Map<String, Value>>(p.get()).ok()
                }) else {
                    return false;
                };
                let Some(n) = params
                    .get("progressToken")
                    .and_then(Value::as_str)
                    .and_then(lane_number)
                else {
                    return false;
                };
                params.remove("progressToken");
                self.deliver(n, LaneEvent::Progress(params));
                true
            }
            (None, Some("notifications/message")) => {
                if !self.has_pending() {
                    return false;
                }
                // Native calls are registered in `routes` too; see `Routes::log_route`. An
                // unattributable message is dropped (and counted) there.
                if routes
                    .log_route(&rmcp::model::Extensions::default())
                    .is_none()
                {
                    return true;
                }
                self.log_to_oldest(
                    peek.params
                        .and_then(|p| serde_json::from_str(p.get()).ok())
                        .unwrap_or_default(),
                );
                true
            }
            _ => false,
        }
    }

    /// A `tools/call` result as received, if it is one (a tool result, or a request for input).
    fn tool_result(&self, result: &RawValue) -> Result<Box<RawValue>, DownstreamError> {
        let json = result.get();
        let is_tool_result = serde_json::from_str::<rmcp::model::CallToolResult>(json).is_ok()
            || serde_json::from_str::<rmcp::model::InputRequiredResult>(json).is_ok();
        if is_tool_result {
            Ok(result.to_owned())
        } else {
            Err(DownstreamError::Transport(
                self.name.clone(),
                "the downstream answered tools/call with another kind of result".into(),
            ))
        }
    }
}

/// How long a partial line may grow in [`LaneTap`] before it is handed to rmcp as it comes
/// (rmcp applies its own line limit); the lane's messages are far smaller.
const TAP_LINE: usize = 1 << 20;

/// The child's stdout as rmcp reads it, with the stdio lane's messages taken out first, as raw
/// lines: rmcp parses every line into its typed messages (an untagged enum that buffers each
/// value and tries every variant), which cost ~15% of a stdio call. Lines keep their order;
/// every line not the lane's reaches rmcp unchanged.
pub struct LaneTap<R> {
    inner: R,
    lane: Option<(Arc<StdioLane>, Arc<Routes>)>,
    /// Bytes of a line not yet complete.
    partial: Vec<u8>,
    /// A line longer than [`TAP_LINE`] is being passed through until its newline.
    long_line: bool,
    /// Lines for rmcp, and how far it has read them.
    out: Vec<u8>,
    read: usize,
    eof: bool,
}

impl<R> LaneTap<R> {
    pub fn new(inner: R, lane: Option<Arc<StdioLane>>, routes: Arc<Routes>) -> Self {
        Self {
            inner,
            lane: lane.map(|l| (l, routes)),
            partial: Vec::new(),
            long_line: false,
            out: Vec::new(),
            read: 0,
            eof: false,
        }
    }

    /// Sorts the bytes just read into lines: the lane's are taken, the rest queued for rmcp.
    fn sort(&mut self, mut bytes: &[u8]) {
        let Some((lane, routes)) = &self.lane else {
            self.out.extend_from_slice(bytes);
            return;
        };
        while !bytes.is_empty() {
            let newline = memchr::memchr(b'\n', bytes);
            let (chunk, rest) = match newline {
                Some(i) => bytes.split_at(i + 1),
                None => (bytes, &[][..]),
            };
            bytes = rest;
            if self.long_line {
                self.out.extend_from_slice(chunk);
                self.long_line = newline.is_none();
                continue;
            }
            if newline.is_none() {
                self.partial.extend_from_slice(chunk);
                if self.partial.len() > TAP_LINE {
                    self.out.append(&mut self.partial);
                    self.long_line = true;
                }
                continue;
            }
            let line: &[u8] = if self.partial.is_empty() {
                chunk
            } else {
                self.partial.extend_from_slice(chunk);
                &self.partial
            };
            let content = line.strip_suffix(b"\n").unwrap_or(line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if !lane.take_raw(content, routes) {
                self.out.extend_from_slice(line);
            }
            self.partial.clear();
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LaneTap<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.read < this.out.len() {
                let n = (this.out.len() - this.read).min(buf.remaining());
                buf.put_slice(&this.out[this.read..this.read + n]);
                this.read += n;
                if this.read == this.out.len() {
                    this.out.clear();
                    this.read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is a last line without a newline: rmcp decides about it.
                if this.partial.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out.append(&mut this.partial);
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.sort(read.filled()),
            }
        }
    }
}

/// A stdio downstream's process and its MCP connection (rmcp's line transport over the
/// child's stdin and the [`LaneTap`] on its stdout). Closing closes stdin and waits up to
/// three seconds for the child to exit, then sends SIGTERM and waits three more, then kills it
/// (as rmcp's own child transport does); dropping it kills the child.
pub struct ChildTransport<R: tokio::io::AsyncRead> {
    child: Option<tokio::process::Child>,
    io: rmcp::transport::async_rw::AsyncRwTransport<RoleClient, R, tokio::process::ChildStdin>,
}

impl<R: tokio::io::AsyncRead + Send + Unpin + 'static> ChildTransport<R> {
    pub fn new(child: tokio::process::Child, stdout: R, stdin: tokio::process::ChildStdin) -> Self {
        Self {
            child: Some(child),
            io: rmcp::transport::async_rw::AsyncRwTransport::new_client(stdout, stdin),
        }
    }
}

impl<R: tokio::io::AsyncRead + Send + Unpin + 'static> Transport<RoleClient> for ChildTransport<R> {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.io.send(item)
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.io.receive()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.io.close().await?;
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if exited(&mut child).await {
            return Ok(());
        }
        // Still running with its input closed: asked to stop, then stopped.
        #[cfg(unix)]
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok())
            && nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .is_ok()
            && exited(&mut child).await
        {
            return Ok(());
        }
        child.kill().await
    }
}

/// Whether `child` exits within three seconds.
async fn exited(child: &mut tokio::process::Child) -> bool {
    tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_ok()
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

    fn fence(&self, message: &mut RxJsonRpcMessage<RoleClient>) {
        if let JsonRpcMessage::Notification(JsonRpcNotification { notification, .. }) = message {
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
            // The lane's own messages never get here: the [`LaneTap`] below rmcp took them.
            let mut message = match &mut self.lane {
                None => self.inner.receive().await?,
                Some((_, outbound)) => {
                    tokio::select! {
                        // Both branches are cancel-safe: the inner transports read from a
                        // framed stream or a channel.
                        m = self.inner.receive() => m?,
                        Some(out) = outbound.recv() => {
                            if self.inner.send(out).await.is_err() {
                                tracing::warn!("cannot write to the downstream");
                            }
                            continue;
                        }
                    }
                }
            };
            self.fence(&mut message);
            return Some(message);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A reader that hands out its bytes a few at a time, so lines cross reads.
    struct Trickle(Vec<u8>, usize);

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let Trickle(bytes, at) = &mut *self;
            let n = (bytes.len() - *at).min(buf.remaining()).min(7);
            buf.put_slice(&bytes[*at..*at + n]);
            *at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A downstream that keeps running when its input closes is asked to stop with SIGTERM
    /// (and given the chance to clean up) before it would be killed.
    #[cfg(unix)]
    #[tokio::test]
    async fn closing_a_child_that_ignores_its_closed_input_sends_sigterm_first() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("terminated");
        let script = format!(
            "trap 'touch {}; exit 0' TERM; while true; do sleep 0.1; done",
            marker.display()
        );
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let tap = LaneTap::new(stdout, None, Arc::new(Routes::default()));
        let mut transport = ChildTransport::new(child, tap, stdin);
        let closed = tokio::time::timeout(Duration::from_secs(20), transport.close()).await;
        assert!(matches!(closed, Ok(Ok(()))), "{closed:?}");
        assert!(
            marker.exists(),
            "the child was killed without a SIGTERM first"
        );
    }

    /// The tap takes the lane's lines (its progress, replies and, while a
    /// call is in flight, log messages), in wire order, and hands every other byte to rmcp
    /// unchanged — lines split across reads, a line longer than its buffer, a last line
    /// without a newline.
    #[tokio::test]
    async fn the_tap_takes_the_lanes_lines_in_order_and_passes_the_rest_unchanged() {
        let lane = Arc::new(StdioLane::new("t".into()));
        let (one, mut first) = mpsc::unbounded_channel();
        let (two, mut second) = mpsc::unbounded_channel();
        if let Ok(mut p) = lane.pending.lock() {
            p.insert(1, one);
            p.insert(2, two);
        }
        let theirs = r#"{"jsonrpc":"2.0","id":7,"result":{}}
"#;
        let changed = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\r\n";
        let long = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(TAP_LINE + 10));
        let tail = r#"{"tail":1}"#;
        let wire = [
            theirs,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"mandate-1","progress":1}}
"#,
            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}
"#,
            "{\"jsonrpc\":\"2.0\",\"id\":\"mandate-1\",\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}]}}\r\n",
            changed,
            r#"{"jsonrpc":"2.0","id":"mandate-2","error":{"code":-32602,"message":"bad"}}
"#,
            &long,
            tail,
        ]
        .concat();
        let routes = Arc::new(Routes::default());
        let mut tap = LaneTap::new(Trickle(wire.into_bytes(), 0), Some(lane), routes.clone());
        let mut passed = Vec::new();
        tap.read_to_end(&mut passed).await.unwrap();
        assert!(
            passed == [theirs, changed, &long, tail].concat().into_bytes(),
            "passed through: {} bytes",
            passed.len()
        );
        match first.recv().await {
            Some(LaneEvent::Progress(p)) => {
                assert_eq!(Value::Object(p), serde_json::json!({"progress": 1}))
            }
            _ => unreachable!("progress first"),
        }
        // The log message came while calls were in flight on a shared connection: it cannot
        // be attributed, so it is dropped (counted), never relayed.
        assert_eq!(routes.dropped(), 1);
        match first.recv().await {
            Some(LaneEvent::Done(Ok(raw))) => {
                assert_eq!(raw.get(), r#"{"content":[{"type":"text","text":"ok"}]}"#);
            }
            _ => unreachable!("then the result"),
        }
        match second.recv().await {
            Some(LaneEvent::Done(Err(DownstreamError::Mcp(e)))) => assert_eq!(e.code, -32602),
            _ => unreachable!("the error reply"),
        }
    }
}

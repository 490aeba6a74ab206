//! The relay: the downstream connection's client handler. It routes what the downstream sends
//! (progress, log messages, server→client requests, resource updates, list changes) to the
//! upstream caller it belongs to, and nowhere else.

// Sampling, roots and logging are deprecated by SEP-2577 but clients still use them: relay them.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, Implementation, ListRootsResult,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken, ProtocolVersion,
    RequestId, ResourceUpdatedNotificationParam,
};
use rmcp::service::{InboundStreamOrigin, NotificationContext, RequestContext, RoleClient};
use rmcp::{ClientHandler, ErrorData, Peer, RoleServer};
use tokio::sync::Notify;

use crate::call::CallSink;

/// Where a call came from: the calling session's sink (see [`CallSink`]).
#[derive(Clone)]
pub struct CallRoute {
    /// The upstream session (one principal) the call belongs to.
    pub session: u64,
    pub sink: Arc<dyn CallSink>,
}

impl CallRoute {
    pub fn new(sink: Arc<dyn CallSink>) -> Self {
        Self {
            session: sink.session(),
            sink,
        }
    }
}

/// Upstream sessions to tell about list changes, by session id: the session's principal and
/// peer. Shared by every instance of one downstream.
pub type Listeners = Mutex<HashMap<u64, (String, Peer<RoleServer>)>>;

/// Routing tables of one downstream connection.
#[derive(Default)]
pub struct Routes {
    /// The one principal whose calls this connection carries (a per-principal instance), or
    /// `None` for a shared connection, where nothing unattributable is relayed.
    owner: Option<String>,
    inflight: Mutex<HashMap<RequestId, CallRoute>>,
    /// Calls being sent: their request id is not known yet (rmcp assigns it while sending), but
    /// the downstream may already answer with a server→client request.
    sending: Mutex<HashMap<u64, CallRoute>>,
    next_sending: std::sync::atomic::AtomicU64,
    progress: Mutex<HashMap<ProgressToken, CallRoute>>,
    /// Resource URI → subscribed upstream sessions (by session id).
    subscribers: Mutex<HashMap<String, HashMap<u64, Peer<RoleServer>>>>,
    /// Upstream sessions to tell about list changes.
    listeners: Arc<Listeners>,
    /// Log messages and server→client requests not relayed: they could not be attributed.
    dropped: std::sync::atomic::AtomicU64,
    /// Signalled on `notifications/tools/list_changed` (drift re-check).
    pub tools_changed: Notify,
    /// Notifications received (in wire order) and not yet relayed: sequence → (progress token,
    /// or `None` for a log message; arrival time).
    unrelayed: Mutex<Unrelayed>,
    /// Signalled whenever a notification has been relayed.
    relayed: Notify,
}

/// How long a finished call's progress route stays: rmcp hands each downstream notification to
/// its own task, so a progress message sent just before the result may be processed after it.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Sequence number the fence puts in a notification's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Seq(pub u64);

/// See [`Routes`]'s `unrelayed`.
#[derive(Default)]
pub struct Unrelayed {
    next: u64,
    items: std::collections::BTreeMap<u64, (Option<ProgressToken>, std::time::Instant)>,
}

/// After this long an unrelayed notification no longer holds results back.
const STALE: std::time::Duration = std::time::Duration::from_secs(2);

/// Marks a call as being sent until it is registered (or abandoned).
pub struct Sending {
    routes: Arc<Routes>,
    key: u64,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Ok(mut m) = self.routes.sending.lock() {
            m.remove(&self.key);
        }
    }
}

/// Retires a call's routes when the call ends, however it ends.
pub struct Registration {
    routes: Arc<Routes>,
    id: RequestId,
    progress: ProgressToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.routes.inflight.lock() {
            m.remove(&self.id);
        }
        // Progress is routed by its token, which is unambiguous: let it linger.
        let (routes, progress) = (self.routes.clone(), self.progress.clone());
        let remove = move || {
            if let Ok(mut m) = routes.progress.lock() {
                m.remove(&progress);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    remove();
                });
            }
            Err(_) => remove(),
        }
    }
}

/// See [`Routes::register_native`].
pub struct NativeRegistration {
    routes: Arc<Routes>,
    id: RequestId,
}

impl Drop for NativeRegistration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.routes.inflight.lock() {
            m.remove(&self.id);
        }
    }
}

impl Routes {
    /// The routes of a connection carrying only `owner`'s calls (`None`: shared), telling list
    /// changes to `listeners`.
    pub fn new(owner: Option<String>, listeners: Arc<Listeners>) -> Self {
        Self {
            owner,
            listeners,
            ..Self::default()
        }
    }

    /// The principal this connection is reserved for, if any.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Where a log message goes. By the HTTP stream it came on when it says; otherwise (stdio,
    /// or a downstream's standalone stream) the wire does not say which call caused it — it may
    /// be a background message of a call that already returned. A per-principal connection
    /// carries one principal's calls only, so it goes to that principal's call in flight; on a
    /// shared connection it is dropped, logged and counted ([`Routes::dropped`]).
    pub fn log_route(&self, extensions: &rmcp::model::Extensions) -> Option<CallRoute> {
        let route = self.attribute(extensions);
        if route.is_none() {
            self.drop_unattributable("log message");
        }
        route
    }

    fn drop_unattributable(&self, what: &str) {
        let n = self
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            dropped = n + 1,
            shared = self.owner.is_none(),
            "downstream {what} not attributable to one caller; not relayed"
        );
    }

    /// How many log messages and server→client requests could not be attributed and were
    /// dropped (or refused).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a call is in flight (or being sent) on this connection.
    pub fn busy(&self) -> bool {
        self.inflight.lock().map(|m| !m.is_empty()).unwrap_or(true) || self.is_sending()
    }

    /// Whether an upstream session still holds a resource subscription on this connection.
    pub fn has_subscribers(&self) -> bool {
        self.subscribers
            .lock()
            .map(|s| {
                s.values()
                    .any(|m| m.values().any(|p| !p.is_transport_closed()))
            })
            .unwrap_or(true)
    }

    /// Announces a call about to be sent (before its request id exists).
    pub fn sending(self: &Arc<Self>, route: CallRoute) -> Sending {
        let key = self
            .next_sending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.sending.lock() {
            m.insert(key, route);
        }
        Sending {
            routes: self.clone(),
            key,
        }
    }

    /// Called by the transport fence, in wire order, for each progress (`Some(token)`) or log
    /// (`None`) notification; returns its sequence number.
    pub fn arrived(&self, progress: Option<ProgressToken>) -> u64 {
        let Ok(mut u) = self.unrelayed.lock() else {
            return 0;
        };
        let seq = u.next;
        u.next += 1;
        let now = std::time::Instant::now();
        // Self-healing: entries never relayed (a handler that did not run) stop counting.
        u.items.retain(|_, (_, at)| now.duration_since(*at) < STALE);
        u.items.insert(seq, (progress, now));
        seq
    }

    fn relayed(&self, seq: Option<&Seq>) {
        if let Some(Seq(seq)) = seq
            && let Ok(mut u) = self.unrelayed.lock()
        {
            u.items.remove(seq);
        }
        self.relayed.notify_waiters();
    }

    /// Whether every notification that arrived before `before` and concerns this call (its
    /// progress token, or any log message) has been relayed or gone stale.
    fn settled(&self, token: &ProgressToken, before: u64) -> bool {
        let Ok(u) = self.unrelayed.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        !u.items.range(..before).any(|(_, (t, at))| {
            now.duration_since(*at) < STALE && t.as_ref().is_none_or(|t| t == token)
        })
    }

    /// Waits (at most `limit`) until the notifications that arrived before a call's result are
    /// relayed, so the caller gets them first.
    pub async fn settle(&self, token: &ProgressToken, limit: std::time::Duration) {
        let before = self.unrelayed.lock().map(|u| u.next).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.relayed.notified();
            if self.settled(token, before) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Registers a native stdio call (id `mandate-<n>`) so that server→client requests arriving
    /// during it can be attributed; retired when the returned guard drops.
    pub fn register_native(
        self: &Arc<Self>,
        id: RequestId,
        route: CallRoute,
    ) -> NativeRegistration {
        if let Ok(mut m) = self.inflight.lock() {
            m.insert(id.clone(), route);
        }
        NativeRegistration {
            routes: self.clone(),
            id,
        }
    }

    /// The upstream sessions with calls in flight or being sent.
    pub fn sessions(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .inflight
            .lock()
            .map(|m| m.values().map(|r| r.session).collect())
            .unwrap_or_default();
        if let Ok(m) = self.sending.lock() {
            out.extend(m.values().map(|r| r.session));
        }
        out
    }

    fn is_sending(&self) -> bool {
        self.sending.lock().map(|m| !m.is_empty()).unwrap_or(false)
    }

    /// [`Self::attribute`], waiting (up to 200 ms) for calls still being sent to register.
    async fn attribute_when_registered(
        &self,
        extensions: &rmcp::model::Extensions,
    ) -> Option<CallRoute> {
        for _ in 0..200 {
            if let Some(route) = self.attribute(extensions) {
                return Some(route);
            }
            if !self.is_sending() {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        None
    }
    /// Registers an outbound call so that what the downstream sends about it reaches the caller.
    pub fn register(
        self: &Arc<Self>,
        id: RequestId,
        downstream_progress: ProgressToken,
        route: CallRoute,
    ) -> Registration {
        if route.sink.wants_progress()
            && let Ok(mut m) = self.progress.lock()
        {
            m.insert(downstream_progress.clone(), route.clone());
        }
        if let Ok(mut m) = self.inflight.lock() {
            m.insert(id.clone(), route);
        }
        Registration {
            routes: self.clone(),
            id,
            progress: downstream_progress,
        }
    }

    /// The call a server→client message belongs to: by the HTTP stream it arrived on; else, on
    /// a per-principal connection (every call on it is its owner's), a call in flight —
    /// preferably a registered one (its request id is the right stream to answer on). `None`
    /// on a shared connection: never guess between users.
    fn attribute(&self, extensions: &rmcp::model::Extensions) -> Option<CallRoute> {
        let inflight = self.inflight.lock().ok()?;
        if let Some(InboundStreamOrigin::OutboundRequest(id)) = extensions.get() {
            return inflight.get(id).cloned();
        }
        self.owner.as_ref()?;
        if let Some(route) = inflight.values().next() {
            return Some(route.clone());
        }
        let sending = self.sending.lock().ok()?;
        sending.values().next().cloned()
    }

    pub fn subscribe(&self, uri: &str, session: u64, peer: Peer<RoleServer>) -> bool {
        let Ok(mut subs) = self.subscribers.lock() else {
            return false;
        };
        let entry = subs.entry(uri.to_owned()).or_default();
        let first = entry.is_empty();
        entry.insert(session, peer);
        first
    }

    /// Returns whether nobody is subscribed to `uri` any more.
    pub fn unsubscribe(&self, uri: &str, session: u64) -> bool {
        let Ok(mut subs) = self.subscribers.lock() else {
            return false;
        };
        let Some(entry) = subs.get_mut(uri) else {
            return false;
        };
        entry.remove(&session);
        entry.retain(|_, p| !p.is_transport_closed());
        if entry.is_empty() {
            subs.remove(uri);
            true
        } else {
            false
        }
    }

    pub fn listen(&self, session: u64, principal: &str, peer: Peer<RoleServer>) {
        if let Ok(mut l) = self.listeners.lock() {
            l.retain(|_, (_, p)| !p.is_transport_closed());
            l.insert(session, (principal.to_owned(), peer));
        }
    }

    /// Tells every listening upstream session that its visible tool list changed (the
    /// quarantine is the same for every caller of the downstream).
    pub async fn notify_tools_list_changed(&self) {
        for peer in self.listeners(false) {
            let _ = peer.notify_tool_list_changed().await;
        }
    }

    /// The listening sessions; `owned`: only the owner's, on a per-principal connection.
    fn listeners(&self, owned: bool) -> Vec<Peer<RoleServer>> {
        let owner = self.owner.as_deref().filter(|_| owned);
        self.listeners
            .lock()
            .map(|l| {
                l.values()
                    .filter(|(who, p)| owner.is_none_or(|o| o == who) && !p.is_transport_closed())
                    .map(|(_, p)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The client handler of a downstream connection.
pub struct Relay {
    routes: Arc<Routes>,
    protocol: ProtocolVersion,
}

impl Relay {
    pub fn new(routes: Arc<Routes>, protocol: ProtocolVersion) -> Self {
        Self { routes, protocol }
    }

    async fn route(
        &self,
        extensions: &rmcp::model::Extensions,
        what: &str,
    ) -> Result<CallRoute, ErrorData> {
        self.routes
            .attribute_when_registered(extensions)
            .await
            .ok_or_else(|| {
                self.routes.drop_unattributable(what);
                tracing::warn!(
                    request = what,
                    "downstream request cannot be attributed to one caller; refused"
                );
                ErrorData::internal_error(
                    format!(
                        "mandate cannot attribute this {what} request to a single caller; refused"
                    ),
                    None,
                )
            })
    }
}

/// Sends a server→client request to the calling session and converts the answer back.
async fn ask_upstream<T: serde::de::DeserializeOwned>(
    route: CallRoute,
    method: &str,
    params: Option<serde_json::Value>,
) -> Result<T, ErrorData> {
    let answer =
        route.sink.ask(method, params).await.map_err(|e| {
            ErrorData::new(rmcp::model::ErrorCode(e.code as i32), e.message, e.data)
        })?;
    serde_json::from_value(answer).map_err(|e| {
        ErrorData::internal_error(
            format!("the caller answered {method} with an unexpected result: {e}"),
            None,
        )
    })
}

/// A notification's params as a JSON object (what a [`CallSink`] takes).
fn params_object<T: serde::Serialize>(params: &T) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(params) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

impl ClientHandler for Relay {
    fn get_info(&self) -> ClientConfig {
        let capabilities = ClientCapabilities::builder()
            .enable_roots()
            .enable_roots_list_changed()
            .enable_sampling()
            .enable_elicitation()
            .build();
        ClientConfig::new(
            capabilities,
            Implementation::new("mandate", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(self.protocol.clone())
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let route = self.route(&context.extensions, "sampling").await?;
        let params = serde_json::to_value(&params).ok();
        ask_upstream(route, "sampling/createMessage", params).await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let route = self.route(&context.extensions, "elicitation").await?;
        let params = serde_json::to_value(&params).ok();
        ask_upstream(route, "elicitation/create", params).await
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        let route = self.route(&context.extensions, "roots").await?;
        ask_upstream(route, "roots/list", None).await
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        context: NotificationContext<RoleClient>,
    ) {
        let target = self
            .routes
            .progress
            .lock()
            .ok()
            .and_then(|m| m.get(&params.progress_token).cloned());
        if let Some(route) = target {
            let mut params = params_object(&params);
            params.remove("progressToken");
            route.sink.progress(params).await;
        }
        self.routes.relayed(context.extensions.get::<Seq>());
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        context: NotificationContext<RoleClient>,
    ) {
        if let Some(route) = self.routes.log_route(&context.extensions) {
            route.sink.log(params_object(&params)).await;
        }
        self.routes.relayed(context.extensions.get::<Seq>());
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let peers: Vec<Peer<RoleServer>> = self
            .routes
            .subscribers
            .lock()
            .map(|s| {
                s.get(&params.uri)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        for peer in peers {
            let _ = peer.notify_resource_updated(params.clone()).await;
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        // Callers see pinned definitions, so their list changes only if the quarantine does:
        // the supervisor re-checks drift and notifies them then.
        self.routes.tools_changed.notify_one();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        for peer in self.routes.listeners(true) {
            let _ = peer.notify_resource_list_changed().await;
        }
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        for peer in self.routes.listeners(true) {
            let _ = peer.notify_prompt_list_changed().await;
        }
    }
}

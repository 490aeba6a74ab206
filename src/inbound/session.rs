//! Mandate's session registry for one mission: the one place that knows which upstream MCP
//! sessions exist, which principal owns each, and what is in flight on them. It serves both the
//! rmcp path and the native `tools/call` path.
//!
//! [`Sessions`] wraps rmcp's `LocalSessionManager`. A session is bound to its principal when it is
//! created (inside the `initialize` request, whose verified caller the HTTP layer puts in a
//! task-local, [`OPENING`]), so there is no window in which another principal could claim it.
//! Every later request carrying the session id is checked against that owner before anything
//! else runs; a mismatch is answered exactly like an unknown session.
//!
//! rmcp's own idle timer is off: native calls never touch rmcp's session worker, so Mandate tracks
//! activity itself and closes sessions idle longer than [`IDLE_TIMEOUT`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    RestoreOutcome, ServerSseMessage, SessionId, SessionManager,
};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::handler::SessionState;
use crate::authn::Caller;
use crate::call::RpcError;

/// Sessions idle this long are closed (clients re-initialize on the 404 that follows).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most open sessions per principal on one mission endpoint.
pub const MAX_PER_PRINCIPAL: usize = 64;
/// Most open sessions on one mission endpoint.
pub const MAX_TOTAL: usize = 10_000;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub tenant: String,
    pub agent: String,
}

impl Principal {
    pub fn of(caller: &Caller) -> Self {
        Self {
            subject: caller.subject.clone(),
            tenant: caller.tenant.clone(),
            agent: caller.agent.clone(),
        }
    }

    pub fn matches(&self, caller: &Caller) -> bool {
        self.subject == caller.subject && self.tenant == caller.tenant && self.agent == caller.agent
    }
}

/// What the `initialize` request's handling knows while rmcp creates the session.
pub struct Opening {
    pub caller: Arc<Caller>,
    /// Set by the handler factory: the state the new session's handler uses.
    pub state: Option<Arc<SessionState>>,
}

tokio::task_local! {
    /// Set by the HTTP layer around a request that may open a session.
    pub static OPENING: RefCell<Option<Opening>>;
}

/// The session state for a handler the factory is creating: the opening session's, or a fresh
/// one (stateless requests, which have no session).
pub fn state_for_new_handler() -> Arc<SessionState> {
    OPENING
        .try_with(|o| {
            let mut o = o.borrow_mut();
            match o.as_mut() {
                Some(opening) => opening.state.get_or_insert_with(SessionState::new).clone(),
                None => SessionState::new(),
            }
        })
        .unwrap_or_else(|_| SessionState::new())
}

/// One live session.
pub struct Session {
    pub id: Arc<str>,
    pub owner: Principal,
    pub state: Arc<SessionState>,
    /// Milliseconds since the registry's epoch at the last request.
    last_active: AtomicU64,
    /// Requests in flight, by the caller's request id (its JSON text): the cancellation of a
    /// native call, `None` for a request rmcp answers (rmcp cancels those itself).
    inflight: Mutex<HashMap<String, Option<CancellationToken>>>,
    /// Server→client requests sent on native streams, awaiting the caller's response.
    asks: Mutex<HashMap<String, oneshot::Sender<Result<Value, RpcError>>>>,
    next_ask: AtomicU64,
    /// Cancelled when the session ends (DELETE, idle close): requests rmcp is answering on it
    /// are then answered with a cancellation by the gate.
    closed: CancellationToken,
}

/// Why a native call could not be registered.
#[derive(Debug, PartialEq, Eq)]
pub struct DuplicateId;

impl Session {
    /// Registers a request (`native`: a call Mandate runs itself); a request id already in
    /// flight on this session is refused.
    pub fn start_call(self: &Arc<Self>, id: &str, native: bool) -> Result<InFlight, DuplicateId> {
        let mut inflight = self.inflight.lock().map_err(|_| DuplicateId)?;
        if inflight.contains_key(id) {
            return Err(DuplicateId);
        }
        let cancel = CancellationToken::new();
        inflight.insert(id.to_owned(), native.then(|| cancel.clone()));
        Ok(InFlight {
            session: self.clone(),
            id: id.to_owned(),
            cancel,
        })
    }

    /// Marks the session busy while a standalone stream (GET) is open.
    pub fn hold_open(self: &Arc<Self>) -> Option<InFlight> {
        let n = self.next_ask.fetch_add(1, Ordering::Relaxed);
        // Not a JSON value, so it can never collide with a request id.
        self.start_call(&format!("GET stream {n}"), false).ok()
    }

    /// Cancels a native call (`notifications/cancelled`); false if none has that id.
    pub fn cancel_call(&self, id: &str) -> bool {
        match self
            .inflight
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned().flatten())
        {
            Some(ct) => {
                ct.cancel();
                true
            }
            None => false,
        }
    }

    /// Opens a server→client request: its id on the wire and where the answer arrives.
    pub fn open_ask(&self) -> (String, oneshot::Receiver<Result<Value, RpcError>>) {
        let id = format!(
            "mandate-ask-{}",
            self.next_ask.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        if let Ok(mut asks) = self.asks.lock() {
            asks.insert(id.clone(), tx);
        }
        (id, rx)
    }

    /// Delivers the caller's answer to a server→client request; false if none has that id.
    pub fn answer_ask(&self, id: &str, answer: Result<Value, RpcError>) -> bool {
        match self.asks.lock().ok().and_then(|mut a| a.remove(id)) {
            Some(tx) => {
                let _ = tx.send(answer);
                true
            }
            None => false,
        }
    }

    /// Cancelled when the session ends.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    pub fn forget_ask(&self, id: &str) {
        if let Ok(mut asks) = self.asks.lock() {
            asks.remove(id);
        }
    }
}

/// A native call in flight; unregisters itself when dropped.
pub struct InFlight {
    session: Arc<Session>,
    id: String,
    pub cancel: CancellationToken,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut m) = self.session.inflight.lock() {
            m.remove(&self.id);
        }
    }
}

/// Room for one session being opened (see [`Sessions::reserve`]); released when dropped.
pub struct Reservation {
    sessions: Arc<Sessions>,
    key: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut opening) = self.sessions.opening.lock()
            && let Some(n) = opening.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                opening.remove(&self.key);
            }
        }
    }
}

/// The registry; see the module docs.
pub struct Sessions {
    inner: LocalSessionManager,
    map: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    /// `initialize` requests in progress, per principal.
    opening: Mutex<HashMap<String, usize>>,
    epoch: Instant,
}

impl Sessions {
    pub fn new() -> Arc<Self> {
        let mut inner = LocalSessionManager::default();
        // Mandate closes idle sessions itself (native calls never reach rmcp's worker).
        inner.session_config.keep_alive = None;
        // Completed request streams are kept this long for late SSE resumption. rmcp's default
        // (60 s) holds every response of a busy session in memory and makes the session worker
        // rescan them on every loop.
        inner.session_config.completed_cache_ttl = Duration::from_secs(2);
        let sessions = Arc::new(Self {
            inner,
            map: RwLock::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        });
        tokio::spawn(reap(Arc::downgrade(&sessions)));
        sessions
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The live session with this id, marked active.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let session = self.map.read().ok()?.get(id).cloned()?;
        session.last_active.store(self.now_ms(), Ordering::Relaxed);
        Some(session)
    }

    /// Reserves room for a new session of `caller` while its `initialize` runs, or says why
    /// there is none. Sessions being opened count against the caps too, so concurrent
    /// `initialize` requests cannot overshoot them.
    pub fn reserve(self: &Arc<Self>, caller: &Caller) -> Result<Reservation, String> {
        let key = crate::call::principal_key(caller);
        let mut opening = self
            .opening
            .lock()
            .map_err(|_| "session registry unavailable: retry".to_owned())?;
        let (total, mine) = {
            let map = self
                .map
                .read()
                .map_err(|_| "session registry unavailable: retry".to_owned())?;
            (
                map.len(),
                map.values().filter(|s| s.owner.matches(caller)).count(),
            )
        };
        let pending_mine = opening.get(&key).copied().unwrap_or(0);
        let pending_all: usize = opening.values().sum();
        if total + pending_all >= MAX_TOTAL {
            return Err(format!(
                "this mission has {MAX_TOTAL} open sessions, its limit: retry later"
            ));
        }
        if mine + pending_mine >= MAX_PER_PRINCIPAL {
            return Err(format!(
                "you have {MAX_PER_PRINCIPAL} open sessions on this mission, the limit: close unused ones (HTTP DELETE with their Mcp-Session-Id) or wait for idle ones to close ({} s)",
                IDLE_TIMEOUT.as_secs()
            ));
        }
        *opening.entry(key.clone()).or_default() += 1;
        Ok(Reservation {
            sessions: self.clone(),
            key,
        })
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a session; its native calls in flight end with a cancellation.
    fn remove(&self, id: &str) {
        let removed = self.map.write().ok().and_then(|mut m| m.remove(id));
        if let Some(session) = &removed {
            session.closed.cancel();
        }
        if let Some(session) = removed
            && let Ok(inflight) = session.inflight.lock()
        {
            for cancel in inflight.values().flatten() {
                cancel.cancel();
            }
        }
    }
}

/// Closes sessions idle longer than [`IDLE_TIMEOUT`] until the registry is dropped.
async fn reap(sessions: Weak<Sessions>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        let limit = sessions
            .now_ms()
            .saturating_sub(IDLE_TIMEOUT.as_millis() as u64);
        let idle: Vec<Arc<str>> = sessions
            .map
            .read()
            .map(|m| {
                m.values()
                    .filter(|s| s.last_active.load(Ordering::Relaxed) < limit)
                    .filter(|s| s.inflight.lock().map(|f| f.is_empty()).unwrap_or(true))
                    .map(|s| s.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in idle {
            tracing::debug!(session = %id, "closing idle session");
            let _ = sessions.close_session(&SessionId::from(id.as_ref())).await;
        }
    }
}

impl SessionManager for Sessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let opening = OPENING
            .try_with(|o| {
                o.borrow()
                    .as_ref()
                    .map(|o| (o.caller.clone(), o.state.clone()))
            })
            .ok()
            .flatten();
        let (id, transport) = self.inner.create_session().await?;
        match opening {
            Some((caller, Some(state))) => {
                let session = Arc::new(Session {
                    id: Arc::from(id.as_ref()),
                    owner: Principal::of(&caller),
                    state,
                    last_active: AtomicU64::new(self.now_ms()),
                    inflight: Mutex::new(HashMap::new()),
                    asks: Mutex::new(HashMap::new()),
                    next_ask: AtomicU64::new(1),
                    closed: CancellationToken::new(),
                });
                if let Ok(mut m) = self.map.write() {
                    m.insert(session.id.clone(), session);
                }
            }
            // No verified opener: the session is never registered, so every request on it is
            // refused as unknown (fail closed).
            _ => tracing::error!("session created outside an authenticated initialize; unusable"),
        }
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<rmcp::model::ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.remove(id.as_ref());
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl futures::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error>
    {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl futures::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error>
    {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl futures::Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error>
    {
        self.inner.resume(id, last_event_id).await
    }

    async fn restore_session(
        &self,
        _id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        // Sessions are bound to their principal in memory; none is restored from elsewhere.
        Ok(RestoreOutcome::NotSupported)
    }
}

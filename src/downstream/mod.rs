//! Downstream MCP servers: supervised client connections per (tenant, environment, manifest),
//! and the relay that routes a downstream's notifications and server→client requests back to the
//! caller whose call caused them.
//!
//! **Isolation** ([`Isolation`], `[isolation]` in the manifest). A `per-principal` downstream
//! (the default for stdio, and for HTTP when `[auth] exchange` is not `none`) runs one
//! [`Instance`] per principal (issuer, subject, tenant, agent): a downstream session never
//! carries two principals' calls, so whatever it sends — even a background log line or a
//! sampling request no wire field ties to a call — can only reach its own principal. Instances
//! start on the principal's first call (same handshake and pin verification as any connection),
//! close after `idle_timeout` unused, and are capped at `max_instances`. A probe instance, started
//! with the broker, verifies the pins for `/readyz` and carries no call. A `shared` downstream
//! has one instance for every caller; what it sends that cannot be attributed is dropped, logged
//! and counted.
//!
//! - stdio downstreams are child processes started once and reused, restarted with exponential
//!   backoff (200 ms doubling to 30 s) when they exit, and stopped on shutdown. They get a clean
//!   environment (`PATH`, `HOME`, `LANG` and the manifest's `env`), never the broker's secrets.
//!   Their stderr goes to the log.
//! - streamable HTTP downstreams use one pooled `reqwest` client with `TCP_NODELAY`.
//! - Connections are never shared across tenants or environments ([`GroupKey`]).
//! - After every (re)connect and on `notifications/tools/list_changed` the served tool
//!   definitions are compared with the lock file; differing tools are quarantined and a drift
//!   event is audited.
//!
//! Routing back (never broadcast): progress by the progress token Mandate put on the outbound
//! request; server→client requests and log messages by the HTTP stream they arrived on (the
//! outbound request id), or — where the wire carries no association — to a call in flight of the
//! instance's one principal. A shared instance relays nothing it cannot attribute.

pub mod authed;
mod fence;
mod h1;
mod http_lane;
pub mod passthrough;
mod relay;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::Peer;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientRequest, RequestId,
    ServerResult,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, PeerRequestOptions, RoleClient};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::{Auditor, Event, EventKind};
use crate::call::{CallSink, RpcError};
use crate::config::{Config, Isolation, ToolManifest, Transport};
use crate::exchange::{Credentialed, Exchanger, ServiceAuth};
use crate::tools::Drift;
use secrecy::ExposeSecret;

pub use relay::{CallRoute, Listeners, Relay, Routes};

/// How long a call waits for a (re)starting downstream before failing.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Longest wait, after a result arrives, for the notifications that preceded it to be relayed.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(1);
/// How long a downstream may take to start and answer the MCP handshake. Generous because the
/// shipped sample is started through `cargo run`, which may compile it first.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections are grouped by tenant, environment and manifest, and never shared across groups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub tenant: String,
    pub env: String,
    pub manifest: String,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.tenant, self.env, self.manifest)
    }
}

/// Why a downstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    #[error("downstream `{0}` is unavailable: {1}")]
    Unavailable(String, String),
    #[error("downstream `{0}` did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("call cancelled by the caller")]
    Cancelled,
    #[error("downstream `{0}` failed: {1}")]
    Transport(String, String),
    #[error("{}", .0.message)]
    Mcp(RpcError),
    #[error(
        "downstream `{manifest}` already runs {max} per-principal instances, its limit: raise `max_instances` under `[isolation]` in `{path}`, or lower `idle_timeout` there so unused ones close sooner, then retry"
    )]
    AtCapacity {
        manifest: String,
        max: usize,
        path: String,
    },
}

/// One supervised downstream connection: the shared one, a principal's own, or the probe that
/// verifies pins for `/readyz` when instances are per principal.
pub struct Instance {
    pub key: GroupKey,
    pub manifest: Arc<ToolManifest>,
    /// Names the instance in logs and in the quarantine (`probe`, `shared`, or a number).
    label: String,
    peer: watch::Sender<Option<Peer<RoleClient>>>,
    pub routes: Arc<Routes>,
    /// The downstream's quarantine (shared by its instances).
    quarantine: Arc<Quarantine>,
    last_drift: Mutex<Option<Drift>>,
    /// What `/readyz` reports: the connection's phase and its last error.
    state: Mutex<(&'static str, Option<String>)>,
    audit: Auditor,
    http: reqwest::Client,
    /// The native call path of an HTTP downstream with sessions (see [`http_lane`]).
    lane: Option<http_lane::HttpLane>,
    /// The native call path of a stdio downstream (see [`fence`]).
    stdio: Option<Arc<fence::StdioLane>>,
    /// Leases held (calls and pass-through requests using the instance).
    active: AtomicUsize,
    /// Milliseconds since the downstream's epoch when a lease last ended.
    last_used: AtomicU64,
    /// Stops this instance's supervisor (idle close, shutdown).
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The token exchange, when this downstream's manifest names a profile.
    exchange: Option<Arc<Exchanger>>,
}

impl Instance {
    #[allow(clippy::too_many_arguments)]
    fn new(
        key: GroupKey,
        manifest: Arc<ToolManifest>,
        label: String,
        routes: Routes,
        quarantine: Arc<Quarantine>,
        audit: Auditor,
        http: reqwest::Client,
        stop: CancellationToken,
        exchange: Option<Arc<Exchanger>>,
    ) -> Self {
        let (peer, _) = watch::channel(None);
        let exchange = exchange.filter(|e| e.protects(&manifest.id));
        let lane = match &manifest.transport {
            // 2026-07-28 downstreams are stateless (no session to post on): rmcp serves them.
            Transport::Http { url, protocol, .. } if protocol != "2026-07-28" => {
                reqwest::Url::parse(url.as_str())
                    .ok()
                    .map(|url| http_lane::HttpLane::new(manifest.id.clone(), url, http.clone()))
            }
            _ => None,
        };
        let stdio = match &manifest.transport {
            // A 2026-07-28 downstream needs the per-request envelope rmcp writes: rmcp serves it.
            Transport::Stdio { protocol, .. } if protocol != "2026-07-28" => {
                Some(Arc::new(fence::StdioLane::new(manifest.id.clone())))
            }
            Transport::Stdio { .. } | Transport::Http { .. } => None,
        };
        Self {
            lane,
            stdio,
            key,
            manifest,
            label,
            peer,
            routes: Arc::new(routes),
            quarantine,
            last_drift: Mutex::new(None),
            state: Mutex::new(("starting", None)),
            audit,
            http,
            active: AtomicUsize::new(0),
            last_used: AtomicU64::new(0),
            stop,
            task: Mutex::new(None),
            exchange,
        }
    }

    /// Starts the supervisor (see [`Instance::supervise`]).
    fn start(self: &Arc<Self>) {
        let task = tokio::spawn(self.clone().supervise(self.stop.clone()));
        if let Ok(mut t) = self.task.lock() {
            *t = Some(task);
        }
    }

    /// Stops the supervisor (the child process exits) and waits for it.
    async fn close(&self) {
        self.stop.cancel();
        self.quarantine.forget(&self.label);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// The token exchange of this downstream's calls (`None`: its calls carry no token).
    pub fn exchanger(&self) -> Option<&Arc<Exchanger>> {
        self.exchange.as_ref()
    }

    /// Mandate's own credential for this downstream's connection.
    fn service_auth(&self) -> Option<ServiceAuth> {
        self.exchange
            .as_ref()
            .and_then(|e| e.service_auth(&self.manifest))
    }

    /// Whether a downstream tool is quarantined (definition drifted from the lock).
    pub fn is_quarantined(&self, tool: &str) -> bool {
        self.quarantine.contains(tool)
    }

    fn set_state(&self, phase: &'static str, error: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            *s = (phase, error);
        }
        // Callers waiting for a connection learn at once that it failed.
        self.peer.send_modify(|_| {});
    }

    /// Connected, with every pinned tool verified (nothing quarantined).
    pub fn ready(&self) -> bool {
        self.connected() && self.quarantine.is_empty()
    }

    fn connected(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.0 == "connected")
            .unwrap_or(false)
    }

    /// The connection's state for `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let (phase, error) = self
            .state
            .lock()
            .map(|s| (s.0, s.1.clone()))
            .unwrap_or(("unknown", None));
        let quarantined = self.quarantine.names();
        serde_json::json!({
            "downstream": self.manifest.id,
            "tenant": self.key.tenant,
            "environment": self.key.env,
            "state": phase,
            "error": error,
            "quarantined": quarantined,
            "ready": self.ready(),
            "unattributable_dropped": self.routes.dropped(),
        })
    }

    /// The connected peer, waiting up to [`CONNECT_WAIT`] for a (re)connect. Private: nothing
    /// outside this module reaches a downstream without a permit. A downstream that cannot
    /// start fails at once, saying why.
    async fn peer(&self) -> Result<Peer<RoleClient>, DownstreamError> {
        if let Ok(s) = self.state.lock()
            && s.0 == "failed"
            && let Some(error) = &s.1
        {
            return Err(self.unavailable(error));
        }
        let failed = || self.state.lock().map(|s| s.0 == "failed").unwrap_or(false);
        let mut rx = self.peer.subscribe();
        let wait =
            rx.wait_for(|p| failed() || p.as_ref().is_some_and(|p| !p.is_transport_closed()));
        // A new per-principal instance may be compiling or starting: give it the handshake's time.
        let limit = match self.state.lock().map(|s| s.0) {
            Ok("starting") => HANDSHAKE_TIMEOUT,
            _ => CONNECT_WAIT,
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(peer)) => peer.clone().ok_or_else(|| {
                let why = self.state.lock().ok().and_then(|s| s.1.clone());
                self.unavailable(why.as_deref().unwrap_or("not connected"))
            }),
            Ok(Err(_)) => Err(self.unavailable("shut down")),
            Err(_) => Err(self.unavailable("not connected (restarting?)")),
        }
    }

    fn unavailable(&self, why: &str) -> DownstreamError {
        DownstreamError::Unavailable(self.manifest.id.clone(), why.to_owned())
    }

    /// Sends a request over the rmcp client and waits for its result, routing what the
    /// downstream sends about it to `route`.
    async fn forward(
        &self,
        request: ClientRequest,
        route: Option<CallRoute>,
        timeout: Duration,
        ct: CancellationToken,
    ) -> Result<ServerResult, DownstreamError> {
        let peer = self.peer().await?;
        let sending = route.as_ref().map(|r| self.routes.sending(r.clone()));
        let handle = peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(|e| DownstreamError::Transport(self.manifest.id.clone(), e.to_string()))?;
        let id = handle.id.clone();
        let progress_token = handle.progress_token.clone();
        let _registration = route.map(|route| {
            self.routes
                .register(id.clone(), handle.progress_token.clone(), route)
        });
        drop(sending);
        let name = self.manifest.id.clone();
        tokio::select! {
            response = handle.await_response() => match response {
                Ok(result) => {
                    // Relay what the downstream sent before its result first (see `fence`).
                    self.routes.settle(&progress_token, SETTLE_LIMIT).await;
                    Ok(result)
                }
                Err(rmcp::ServiceError::McpError(e)) => Err(DownstreamError::Mcp(rpc_error(e))),
                Err(e) => Err(DownstreamError::Transport(name, e.to_string())),
            },
            _ = tokio::time::sleep(timeout) => {
                cancel(&peer, id, "timeout").await;
                Err(DownstreamError::Timeout(name, timeout))
            }
            _ = ct.cancelled() => {
                cancel(&peer, id, "cancelled by the caller").await;
                Err(DownstreamError::Cancelled)
            }
        }
    }

    /// Re-reads the served tool definitions and updates the quarantine; audits any change.
    async fn check_drift(&self, peer: &Peer<RoleClient>) {
        let Some(lock) = &self.manifest.lock else {
            return;
        };
        let served = match peer.list_all_tools().await {
            Ok(tools) => tools
                .iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(downstream = %self.key, error = %e, "cannot list downstream tools; quarantining all");
                let all: BTreeSet<String> = lock.tools.iter().map(|t| t.name.clone()).collect();
                self.quarantine.set(&self.label, all);
                return;
            }
        };
        let drift = lock.drift(&served);
        let quarantine = drift.quarantined();
        let visible_change = self.quarantine.set(&self.label, quarantine);
        if visible_change {
            // What callers may list changed: tell the upstream sessions that listed tools.
            self.routes.notify_tools_list_changed().await;
        }
        let changed = match self.last_drift.lock() {
            Ok(mut last) => {
                let changed = last.as_ref() != Some(&drift);
                *last = Some(drift.clone());
                changed
            }
            Err(_) => true,
        };
        if changed && !drift.is_empty() {
            tracing::warn!(downstream = %self.key, drift = %drift.describe(), "tool definitions drifted from the lock file; quarantined");
            let mut event = Event::new(EventKind::Drift).detail(format!(
                "{}; quarantined until `mandate pin {}` after review",
                drift.describe(),
                self.manifest.id
            ));
            event.tenant = Some(self.key.tenant.clone());
            event.downstream_tool = Some(self.manifest.id.clone());
            event.outcome = Some("quarantined".into());
            self.audit.record(event).await;
        } else if changed {
            tracing::info!(downstream = %self.key, "tool definitions match the lock file");
        }
    }

    /// Runs the connection until `shutdown`: connect, check drift, wait, restart with backoff.
    async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let label = format!("{} ({})", self.key, self.label);
            let connecting = connect(
                &self.manifest,
                self.routes.clone(),
                &self.http,
                &label,
                self.lane.as_ref(),
                self.stdio.clone(),
                self.service_auth(),
            );
            let connected = tokio::select! {
                c = connecting => c,
                _ = shutdown.cancelled() => break,
            };
            match connected {
                Ok(service) => {
                    let started = Instant::now();
                    let peer = service.peer().clone();
                    self.check_drift(&peer).await;
                    if let Some(lane) = &self.lane {
                        let version = peer.peer_info().map(|i| i.protocol_version.to_string());
                        lane.set_protocol(version.as_deref());
                    }
                    self.set_state("connected", None);
                    self.peer.send_replace(Some(peer.clone()));
                    tracing::info!(downstream = %self.key, instance = %self.label, "downstream connected");
                    let ct = service.cancellation_token();
                    let waiting = service.waiting();
                    tokio::pin!(waiting);
                    let stop = loop {
                        tokio::select! {
                            _ = &mut waiting => break false,
                            _ = shutdown.cancelled() => break true,
                            _ = self.routes.tools_changed.notified() => {
                                // The downstream says its tools changed: re-check against the lock.
                                let (this, peer) = (self.clone(), peer.clone());
                                tokio::spawn(async move { this.check_drift(&peer).await });
                            }
                        }
                    };
                    self.peer.send_replace(None);
                    self.set_state("restarting", Some("the downstream exited".into()));
                    if let Some(lane) = &self.lane {
                        lane.set_protocol(None);
                    }
                    if let Some(lane) = &self.stdio {
                        lane.detach();
                    }
                    if stop {
                        ct.cancel();
                        let _ = tokio::time::timeout(Duration::from_secs(5), waiting).await;
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(200);
                    }
                    tracing::warn!(downstream = %self.key, retry_in = ?backoff, "downstream exited; restarting");
                }
                Err(e) => {
                    tracing::error!(downstream = %self.key, error = %e, retry_in = ?backoff, "cannot start downstream");
                    self.set_state("failed", Some(format!("cannot start: {e}")));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        tracing::info!(downstream = %self.key, "downstream stopped");
    }
}

/// The tools quarantined on one downstream: what each of its instances found drifted, and
/// their union (what callers see; read on every call, so kept ready).
#[derive(Default)]
struct Quarantine {
    by_instance: Mutex<BTreeMap<String, BTreeSet<String>>>,
    union: RwLock<BTreeSet<String>>,
}

impl Quarantine {
    fn contains(&self, tool: &str) -> bool {
        self.union.read().map(|q| q.contains(tool)).unwrap_or(true)
    }

    fn is_empty(&self) -> bool {
        self.union.read().map(|q| q.is_empty()).unwrap_or(false)
    }

    fn names(&self) -> Vec<String> {
        self.union
            .read()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Sets one instance's findings; returns whether what callers see changed.
    fn set(&self, instance: &str, tools: BTreeSet<String>) -> bool {
        let Ok(mut by) = self.by_instance.lock() else {
            return true;
        };
        if tools.is_empty() {
            by.remove(instance);
        } else {
            by.insert(instance.to_owned(), tools);
        }
        let union: BTreeSet<String> = by.values().flatten().cloned().collect();
        match self.union.write() {
            Ok(mut u) => {
                let changed = *u != union;
                *u = union;
                changed
            }
            Err(_) => true,
        }
    }

    /// A closed instance's findings no longer count.
    fn forget(&self, instance: &str) {
        self.set(instance, BTreeSet::new());
    }
}

/// One downstream of a (tenant, environment): its instances, by [`Isolation`].
pub struct Downstream {
    pub key: GroupKey,
    pub manifest: Arc<ToolManifest>,
    /// The shared instance, or (per principal) the probe that verifies pins for `/readyz`.
    probe: Arc<Instance>,
    /// Per-principal instances by principal key (empty when shared).
    instances: RwLock<HashMap<String, Arc<Instance>>>,
    quarantine: Arc<Quarantine>,
    listeners: Arc<Listeners>,
    audit: Auditor,
    http: reqwest::Client,
    epoch: Instant,
    next_instance: AtomicU64,
    shutdown: CancellationToken,
    /// The token exchange, when this downstream's manifest names a profile.
    exchange: Option<Arc<Exchanger>>,
}

/// The right to use an instance for one call or request; holds it open (not idle) while it
/// lives.
pub struct Lease {
    instance: Arc<Instance>,
    epoch: Instant,
}

impl std::ops::Deref for Lease {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        &self.instance
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.touch(self.epoch);
        self.instance.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Instance {
    fn touch(&self, epoch: Instant) {
        let now = epoch.elapsed().as_millis() as u64;
        self.last_used.store(now, Ordering::Relaxed);
    }

    /// Not leased, no call in flight, no live subscription, and unused since `limit`.
    fn idle_since(&self, limit: u64) -> bool {
        self.active.load(Ordering::Acquire) == 0
            && self.last_used.load(Ordering::Relaxed) < limit
            && !self.routes.busy()
            && !self.routes.has_subscribers()
    }
}

impl Downstream {
    fn new(
        key: GroupKey,
        manifest: Arc<ToolManifest>,
        audit: Auditor,
        http: reqwest::Client,
        shutdown: CancellationToken,
        exchange: Option<Arc<Exchanger>>,
    ) -> Self {
        let quarantine = Arc::new(Quarantine::default());
        let listeners = Arc::new(Listeners::default());
        let label = match manifest.isolation {
            Isolation::Shared => "shared",
            Isolation::PerPrincipal { .. } => "probe",
        };
        let probe = Arc::new(Instance::new(
            key.clone(),
            manifest.clone(),
            label.into(),
            Routes::new(None, listeners.clone()),
            quarantine.clone(),
            audit.clone(),
            http.clone(),
            shutdown.child_token(),
            exchange.clone(),
        ));
        Self {
            key,
            manifest,
            probe,
            exchange,
            instances: RwLock::new(HashMap::new()),
            quarantine,
            listeners,
            audit,
            http,
            epoch: Instant::now(),
            next_instance: AtomicU64::new(1),
            shutdown,
        }
    }

    /// The token exchange of this downstream's calls (`None`: its calls carry no token).
    pub fn exchanger(&self) -> Option<&Arc<Exchanger>> {
        self.probe.exchanger()
    }

    /// The routes that upstream sessions listen on for list changes.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.probe.routes
    }

    /// Whether a downstream tool is quarantined (its definition drifted from the lock on any
    /// instance).
    pub fn is_quarantined(&self, tool: &str) -> bool {
        self.quarantine.contains(tool)
    }

    /// Connected, with every pinned tool verified (nothing quarantined), as the probe (or shared
    /// instance) found it.
    pub fn ready(&self) -> bool {
        self.probe.ready()
    }

    /// The downstream's state for `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let mut status = self.probe.status();
        if let serde_json::Value::Object(map) = &mut status {
            let (mode, instances) = match self.manifest.isolation {
                Isolation::Shared => ("shared", serde_json::Value::Null),
                Isolation::PerPrincipal { .. } => (
                    "per-principal",
                    self.instances.read().map(|m| m.len()).unwrap_or(0).into(),
                ),
            };
            map.insert("isolation".into(), mode.into());
            map.insert("instances".into(), instances);
        }
        status
    }

    /// The instance that carries `principal`'s calls: the shared one, or the principal's own,
    /// started on its first call. A known principal costs one hash-map lookup.
    pub fn lease(&self, principal: &str) -> Result<Lease, DownstreamError> {
        let Isolation::PerPrincipal { max_instances, .. } = self.manifest.isolation else {
            return Ok(self.hold(&self.probe));
        };
        if let Ok(m) = self.instances.read()
            && let Some(instance) = m.get(principal)
        {
            // Taken under the read lock: the reaper (write lock) sees the lease.
            return Ok(self.hold(instance));
        }
        let mut m = self
            .instances
            .write()
            .map_err(|_| self.probe.unavailable("instance table poisoned"))?;
        if let Some(instance) = m.get(principal) {
            return Ok(self.hold(instance));
        }
        if m.len() >= max_instances {
            tracing::warn!(downstream = %self.key, max = max_instances, "per-principal instance cap reached; call refused");
            return Err(DownstreamError::AtCapacity {
                manifest: self.manifest.id.clone(),
                max: max_instances,
                path: self.manifest.path.display().to_string(),
            });
        }
        let n = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let instance = Arc::new(Instance::new(
            self.key.clone(),
            self.manifest.clone(),
            format!("principal #{n}"),
            Routes::new(Some(principal.to_owned()), self.listeners.clone()),
            self.quarantine.clone(),
            self.audit.clone(),
            self.http.clone(),
            self.shutdown.child_token(),
            self.exchange.clone(),
        ));
        instance.start();
        tracing::info!(downstream = %self.key, instance = n, "per-principal instance started");
        let lease = self.hold(&instance);
        m.insert(principal.to_owned(), instance);
        Ok(lease)
    }

    fn hold(&self, instance: &Arc<Instance>) -> Lease {
        // Not idle while leased; the lease notes the time of use when it ends.
        instance.active.fetch_add(1, Ordering::AcqRel);
        Lease {
            instance: instance.clone(),
            epoch: self.epoch,
        }
    }

    /// The principal's instance if it runs (never starts one).
    pub fn running(&self, principal: &str) -> Option<Lease> {
        match self.manifest.isolation {
            Isolation::Shared => Some(self.hold(&self.probe)),
            Isolation::PerPrincipal { .. } => {
                let m = self.instances.read().ok()?;
                m.get(principal).map(|i| self.hold(i))
            }
        }
    }

    /// Closes per-principal instances unused for `idle_timeout`, until shutdown.
    async fn reap(self: Arc<Self>) {
        let Isolation::PerPrincipal { idle_timeout, .. } = self.manifest.isolation else {
            return;
        };
        let every = (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let now = self.epoch.elapsed().as_millis() as u64;
            let limit = now.saturating_sub(idle_timeout.as_millis() as u64);
            let idle: Vec<Arc<Instance>> = match self.instances.write() {
                Ok(mut m) => {
                    let keys: Vec<String> = m
                        .iter()
                        .filter(|(_, i)| i.idle_since(limit))
                        .map(|(k, _)| k.clone())
                        .collect();
                    keys.iter().filter_map(|k| m.remove(k)).collect()
                }
                Err(_) => return,
            };
            for instance in idle {
                tracing::info!(downstream = %self.key, instance = %instance.label, "idle per-principal instance closed");
                instance.close().await;
            }
        }
    }

    /// Stops every instance and waits for them.
    async fn close(&self) {
        let all: Vec<Arc<Instance>> = self
            .instances
            .write()
            .map(|mut m| m.drain().map(|(_, i)| i).collect())
            .unwrap_or_default();
        for instance in all {
            instance.close().await;
        }
        self.probe.close().await;
    }
}

/// Calls a tool: the only way a tool call reaches a downstream, and it takes only a
/// [`Credentialed`] call. The caller's `traceparent` is passed on so traces join up; nothing else
/// of its `_meta`. Returns the downstream's result object as raw JSON.
pub async fn call(
    permit: Credentialed,
    sink: Arc<dyn CallSink>,
    traceparent: Option<&str>,
    ct: CancellationToken,
) -> Result<Box<serde_json::value::RawValue>, DownstreamError> {
    let tool = permit.tool().clone();
    let downstream = permit.downstream().lease(sink.principal())?;
    debug_assert!(
        downstream
            .routes
            .owner()
            .is_none_or(|owner| owner == sink.principal()),
        "a per-principal instance carries another principal's call"
    );
    if !downstream.connected() {
        // A principal's new instance: wait for its handshake (which verifies the pins), then
        // take the native lane.
        downstream.peer().await?;
        if downstream.is_quarantined(&tool.tool) {
            return Err(downstream.unavailable(&format!(
                "tool `{}` is quarantined: its definition drifted from the lock file",
                tool.tool
            )));
        }
    }
    if let Some(lane) = downstream.lane.as_ref().filter(|l| l.ready()) {
        let result = lane
            .call(
                &tool.tool,
                permit.raw_arguments(),
                permit.authorization(),
                sink.as_ref(),
                traceparent,
                tool.timeout,
                &ct,
            )
            .await;
        // The downstream forgot its session (restarted, or expired it): the lane stepped
        // back, and rmcp re-initializes on the call below; anything else is the answer.
        if !matches!(result, Err(DownstreamError::Unavailable(..))) || lane.ready() {
            return result;
        }
    }
    let meta_token = permit.meta_token().map(|t| t.expose_secret().to_owned());
    if let Some(lane) = downstream
        .stdio
        .as_ref()
        .filter(|l| l.ready() && meta_token.is_none())
    {
        return lane
            .call(
                &tool.tool,
                permit.arguments().clone(),
                sink,
                &downstream.routes,
                traceparent,
                tool.timeout,
                &ct,
            )
            .await;
    }
    if permit.authorization().is_some() && permit.issued().is_none() {
        // An exchanged token rides on the request (see `authed`); a handoff token cannot: the
        // call fails closed rather than going out without it.
        return Err(downstream.unavailable(
            "its per-call credential can only be sent on the native HTTP path, which is not ready: retry shortly",
        ));
    }
    let mut params = CallToolRequestParams::new(tool.tool.clone());
    params.arguments = Some(permit.arguments().clone());
    if traceparent.is_some() || meta_token.is_some() {
        let mut meta = rmcp::model::RequestMetaObject::default();
        if let Some(tp) = traceparent {
            meta.set_traceparent(tp);
        }
        // A stdio downstream that opted in (`deliver = "meta"`) gets its token here.
        if let Some(token) = meta_token {
            meta.0.insert(
                crate::exchange::AUTHORIZATION_META.to_owned(),
                serde_json::Value::String(token),
            );
        }
        params.meta = Some(meta);
    }
    let mut request = CallToolRequest::new(params);
    if let Some(issued) = permit.issued() {
        request.extensions.insert(authed::CallAuth(issued.clone()));
    }
    let request = ClientRequest::CallToolRequest(request);
    let result = downstream
        .forward(request, Some(CallRoute::new(sink)), tool.timeout, ct)
        .await?;
    let raw = match result {
        ServerResult::CallToolResult(r) => serde_json::value::to_raw_value(&r),
        ServerResult::InputRequiredResult(r) => serde_json::value::to_raw_value(&r),
        _ => {
            return Err(DownstreamError::Transport(
                downstream.manifest.id.clone(),
                "the downstream answered tools/call with another kind of result".into(),
            ));
        }
    };
    raw.map_err(|e| DownstreamError::Transport(downstream.manifest.id.clone(), e.to_string()))
}

/// An rmcp error as the transport-free [`RpcError`].
pub fn rpc_error(e: rmcp::ErrorData) -> RpcError {
    RpcError {
        code: i64::from(e.code.0),
        message: e.message.into_owned(),
        data: e.data,
    }
}

async fn cancel(peer: &Peer<RoleClient>, id: RequestId, reason: &str) {
    let _ = peer
        .notify_cancelled(CancelledNotificationParam::new(
            Some(id),
            Some(reason.to_owned()),
        ))
        .await;
}

/// Every downstream connection of a running broker.
pub struct Pool {
    downstreams: BTreeMap<GroupKey, Arc<Downstream>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    /// One connection per (tenant, environment, manifest) used by the missions; starts them.
    pub fn start(config: &Config, audit: &Auditor) -> Arc<Self> {
        Self::start_with_exchange(config, audit, None)
    }

    /// As [`Pool::start`], with the token exchange for the downstreams whose manifests name one.
    pub fn start_with_exchange(
        config: &Config,
        audit: &Auditor,
        exchange: Option<Arc<Exchanger>>,
    ) -> Arc<Self> {
        let http = http_client();
        let shutdown = CancellationToken::new();
        let mut downstreams = BTreeMap::new();
        for mission in config.missions.values() {
            for manifest_id in mission.manifest_ids() {
                let key = GroupKey {
                    tenant: mission.tenant.clone(),
                    env: mission.env.clone(),
                    manifest: manifest_id.clone(),
                };
                let Some(manifest) = config.manifests.get(&manifest_id) else {
                    continue;
                };
                downstreams.entry(key.clone()).or_insert_with(|| {
                    Arc::new(Downstream::new(
                        key,
                        Arc::new(manifest.clone()),
                        audit.clone(),
                        http.clone(),
                        shutdown.child_token(),
                        exchange.clone(),
                    ))
                });
            }
        }
        for d in downstreams.values() {
            d.probe.start();
        }
        let tasks = downstreams
            .values()
            .map(|d| tokio::spawn(d.clone().reap()))
            .collect();
        Arc::new(Self {
            downstreams,
            shutdown,
            tasks: Mutex::new(tasks),
        })
    }

    /// Waits (up to `limit`) until every downstream has connected once, so that the first calls
    /// after startup do not race a starting child process. Returns those still not connected.
    pub async fn wait_ready(&self, limit: Duration) -> Vec<GroupKey> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pending = Vec::new();
        for d in self.downstreams.values() {
            // Until it connects, or fails to start (no point waiting: it says why).
            let settled = async {
                loop {
                    if d.probe.peer.borrow().is_some()
                        || d.probe
                            .state
                            .lock()
                            .map(|s| s.0 == "failed")
                            .unwrap_or(false)
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let _ = tokio::time::timeout_at(deadline, settled).await;
            if d.probe.peer.borrow().is_none() {
                pending.push(d.key.clone());
            }
        }
        pending
    }

    /// Whether every downstream is connected with verified pins, and each one's state.
    pub fn readiness(&self) -> (bool, Vec<serde_json::Value>) {
        let ready = self.downstreams.values().all(|d| d.ready());
        (
            ready,
            self.downstreams.values().map(|d| d.status()).collect(),
        )
    }

    pub fn get(&self, key: &GroupKey) -> Option<Arc<Downstream>> {
        self.downstreams.get(key).cloned()
    }

    /// Stops every downstream and waits for them.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        for d in self.downstreams.values() {
            d.close().await;
        }
    }
}

/// The HTTP client for downstreams: pooled, `TCP_NODELAY`, no redirects across origins.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        // Downstream URLs are explicit in the manifests: calls carrying per-user credentials
        // never take a detour through a proxy picked up from the environment.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .unwrap_or_default()
}

/// Connects to a downstream (used by the supervisor and by `mandate pin`).
pub async fn connect(
    manifest: &ToolManifest,
    routes: Arc<Routes>,
    http: &reqwest::Client,
    label: &str,
    lane: Option<&http_lane::HttpLane>,
    stdio: Option<Arc<fence::StdioLane>>,
    auth: Option<ServiceAuth>,
) -> anyhow::Result<rmcp::service::RunningService<RoleClient, Relay>> {
    let (protocol, lifecycle) = match &manifest.transport {
        Transport::Stdio { protocol, .. } | Transport::Http { protocol, .. } => lifecycle(protocol),
    };
    let relay = Relay::new(routes.clone(), protocol);
    let service = match &manifest.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
            ..
        } => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(args).current_dir(cwd).env_clear();
            for var in ["PATH", "HOME", "LANG", "SYSTEMROOT"] {
                if let Ok(v) = std::env::var(var) {
                    cmd.env(var, v);
                }
            }
            cmd.envs(env)
                .kill_on_drop(true)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    anyhow::anyhow!("command `{command}` not found on PATH")
                }
                _ => anyhow::anyhow!("`{command}` could not be started: {e}"),
            })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                anyhow::bail!("`{command}` started without its standard input and output");
            };
            let stderr = child.stderr.take();
            // The lane's replies are taken from the raw output before rmcp parses it.
            let tap = fence::LaneTap::new(stdout, stdio.clone(), routes.clone());
            let transport = fence::ChildTransport::new(child, tap, stdin);
            if let Some(stderr) = stderr {
                let label = label.to_owned();
                tokio::spawn(async move {
                    use tokio::io::AsyncBufReadExt;
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::info!(target: "mandate::downstream::stderr", downstream = %label, "{line}");
                    }
                });
            }
            let transport = fence::Fenced::new(transport, routes.clone(), stdio);
            handshake(relay.serve_with_lifecycle(transport, lifecycle)).await?
        }
        Transport::Http { url, .. } => {
            let config =
                rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                    url.as_str(),
                );
            match lane {
                Some(lane) => {
                    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
                        authed::Authed::new(lane.capture(), auth, label),
                        config,
                    );
                    let transport = fence::Fenced::new(transport, routes.clone(), None);
                    handshake(relay.serve_with_lifecycle(transport, lifecycle)).await?
                }
                None => {
                    let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
                        authed::Authed::new(http.clone(), auth, label),
                        config,
                    );
                    let transport = fence::Fenced::new(transport, routes.clone(), None);
                    handshake(relay.serve_with_lifecycle(transport, lifecycle)).await?
                }
            }
        }
    };
    service
        .peer()
        .set_response_cache_config(rmcp::service::ClientCacheConfig::disabled())
        .await;
    Ok(service)
}

/// Bounds the MCP handshake so a downstream that never answers cannot hang Mandate.
async fn handshake<T, E: std::error::Error + Send + Sync + 'static>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!(
            "no MCP handshake within {}s (is it an MCP server speaking on stdout/HTTP?)",
            HANDSHAKE_TIMEOUT.as_secs()
        ),
    }
}

fn lifecycle(protocol: &str) -> (rmcp::model::ProtocolVersion, ClientLifecycleMode) {
    use rmcp::model::ProtocolVersion;
    match protocol {
        "2026-07-28" => (
            ProtocolVersion::V_2026_07_28,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        ),
        "2025-06-18" => (
            ProtocolVersion::V_2025_06_18,
            ClientLifecycleMode::Initialize,
        ),
        _ => (
            ProtocolVersion::V_2025_11_25,
            ClientLifecycleMode::Initialize,
        ),
    }
}

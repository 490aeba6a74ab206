//! Downstream MCP servers: one supervised client connection per (tenant, environment, manifest),
//! and the relay that routes a downstream's notifications and server→client requests back to the
//! caller whose call caused them.
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
//! outbound request id), or — on stdio, where the wire carries no association — to the single call
//! in flight on that connection. With several calls in flight such a request is refused rather
//! than risk delivering it to the wrong user.

pub mod authed;
mod fence;
mod http_lane;
pub mod passthrough;
mod relay;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientRequest, RequestId,
    ServerResult,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, PeerRequestOptions, RoleClient};
use rmcp::{Peer, RoleServer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::{Auditor, Event, EventKind};
use crate::call::{CallSink, RpcError};
use crate::config::{Config, ToolManifest, Transport};
use secrecy::ExposeSecret;

use crate::exchange::{Credentialed, Exchanger, ServiceAuth};
use crate::tools::Drift;

pub use relay::{CallRoute, Relay, Routes};

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
}

/// One supervised downstream connection.
pub struct Downstream {
    pub key: GroupKey,
    pub manifest: Arc<ToolManifest>,
    peer: watch::Sender<Option<Peer<RoleClient>>>,
    pub routes: Arc<Routes>,
    quarantine: RwLock<BTreeSet<String>>,
    last_drift: Mutex<Option<Drift>>,
    /// What `/readyz` reports: the connection's phase and its last error.
    state: Mutex<(&'static str, Option<String>)>,
    audit: Auditor,
    http: reqwest::Client,
    /// The native call path of an HTTP downstream with sessions (see [`http_lane`]).
    lane: Option<http_lane::HttpLane>,
    /// The native call path of a stdio downstream (see [`fence`]).
    stdio: Option<Arc<fence::StdioLane>>,
    /// The token exchange, when this downstream's manifest names a profile.
    exchange: Option<Arc<Exchanger>>,
}

impl Downstream {
    fn new(
        key: GroupKey,
        manifest: Arc<ToolManifest>,
        audit: Auditor,
        http: reqwest::Client,
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
            peer,
            routes: Arc::new(Routes::default()),
            quarantine: RwLock::new(BTreeSet::new()),
            last_drift: Mutex::new(None),
            state: Mutex::new(("starting", None)),
            audit,
            http,
            exchange,
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
        self.quarantine
            .read()
            .map(|q| q.contains(tool))
            .unwrap_or(true)
    }

    fn set_state(&self, phase: &'static str, error: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            *s = (phase, error);
        }
    }

    /// Connected, with every pinned tool verified (nothing quarantined).
    pub fn ready(&self) -> bool {
        let connected = self
            .state
            .lock()
            .map(|s| s.0 == "connected")
            .unwrap_or(false);
        connected
            && self
                .quarantine
                .read()
                .map(|q| q.is_empty())
                .unwrap_or(false)
    }

    /// The connection's state for `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let (phase, error) = self
            .state
            .lock()
            .map(|s| (s.0, s.1.clone()))
            .unwrap_or(("unknown", None));
        let quarantined: Vec<String> = self
            .quarantine
            .read()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        serde_json::json!({
            "downstream": self.manifest.id,
            "tenant": self.key.tenant,
            "environment": self.key.env,
            "state": phase,
            "error": error,
            "quarantined": quarantined,
            "ready": self.ready(),
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
        let mut rx = self.peer.subscribe();
        let wait = rx.wait_for(|p| p.as_ref().is_some_and(|p| !p.is_transport_closed()));
        match tokio::time::timeout(CONNECT_WAIT, wait).await {
            Ok(Ok(peer)) => peer
                .clone()
                .ok_or_else(|| self.unavailable("not connected")),
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
                if let Ok(mut q) = self.quarantine.write() {
                    *q = all;
                }
                return;
            }
        };
        let drift = lock.drift(&served);
        let quarantine = drift.quarantined();
        let visible_change = match self.quarantine.write() {
            Ok(mut q) => {
                let changed = *q != quarantine;
                *q = quarantine;
                changed
            }
            Err(_) => true,
        };
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
            let label = self.key.to_string();
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
                    tracing::info!(downstream = %self.key, "downstream connected");
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

/// Calls a tool: the only way a tool call reaches a downstream, and it takes only a
/// [`Credentialed`] call. The caller's `traceparent` is passed on so traces join up; nothing else
/// of its `_meta`. Returns the downstream's result object as raw JSON.
pub async fn call(
    permit: Credentialed,
    sink: Arc<dyn CallSink>,
    traceparent: Option<&str>,
    ct: CancellationToken,
) -> Result<Box<serde_json::value::RawValue>, DownstreamError> {
    let downstream = permit.downstream().clone();
    let tool = permit.tool().clone();
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
                        exchange.clone(),
                    ))
                });
            }
        }
        let tasks = downstreams
            .values()
            .map(|d| tokio::spawn(d.clone().supervise(shutdown.child_token())))
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
                    if d.peer.borrow().is_some()
                        || d.state.lock().map(|s| s.0 == "failed").unwrap_or(false)
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let _ = tokio::time::timeout_at(deadline, settled).await;
            if d.peer.borrow().is_none() {
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
            cmd.envs(env).kill_on_drop(true);
            let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        anyhow::anyhow!("command `{command}` not found on PATH")
                    }
                    _ => anyhow::anyhow!("`{command}` could not be started: {e}"),
                })?;
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

/// Upstream peers to tell about list changes, keyed by an opaque session id.
pub type Listeners = HashMap<u64, Peer<RoleServer>>;

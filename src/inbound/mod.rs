//! The HTTP face of Mandate: every mission at `/mcp/<domain>/<env>/<name>` (MCP streamable HTTP),
//! RFC 9728 protected-resource metadata, the embedded issuer's discovery and JWKS, `/healthz`, and
//! the loopback admin API the CLI uses while the server owns the store.
//!
//! Bearer tokens are verified by a layer in front of each mission's MCP service: no token or a bad
//! one is a 401 with `WWW-Authenticate: Bearer resource_metadata="…"`; a valid token of another
//! tenant or agent, or for an expired mission, is a 403. The MCP handler then finds the verified
//! [`Caller`] in the request.

mod agents_admin;
pub mod approvals;
pub mod bridge;
pub mod handler;
pub(crate) mod ingress;
pub mod native;
pub mod oauth;
mod rebinding;
pub mod session;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::audit::{Auditor, Event, EventKind, ExportFilter};
use crate::authn::{
    AuthnError, Caller, InsufficientScope, Issuer, Refusal, TokenRequest, Verifier,
};
use crate::config::Config;
use crate::downstream::Pool;
use crate::mission::MissionRuntime;
use crate::store::Store;
use handler::{MissionHandler, MissionState};

/// Everything a running broker shares.
pub struct Broker {
    pub config: Arc<Config>,
    pub store: Store,
    pub audit: Auditor,
    pub issuer: Arc<Issuer>,
    /// Verifies bearer tokens of the embedded and the external issuers.
    pub verifier: Arc<Verifier>,
    pub pool: Arc<Pool>,
    pub missions: BTreeMap<String, Arc<MissionState>>,
    /// Mints handoff tokens and verifies them against the handoff ledger.
    pub handoffs: Arc<crate::handoff::Handoffs>,
    /// Credential of the admin API (written to the store directory with mode 0600).
    pub admin_token: String,
    /// The token exchange: `forget_agent` on suspension, the `/oauth/token` exchange grant.
    pub exchange: Arc<crate::exchange::Exchanger>,
    /// The agent registry, consulted on every request.
    pub agents: Arc<crate::agents::Registry>,
    /// Approval requests and decisions.
    pub approvals: Arc<crate::approval::Approvals>,
    /// `[limits]` token buckets.
    pub quotas: Arc<crate::quota::Quotas>,
}

impl Broker {
    /// The call core's shared parts.
    pub fn core(&self) -> crate::call::Core {
        crate::call::Core {
            audit: self.audit.clone(),
            handoffs: Some(self.handoffs.clone()),
            approvals: self.approvals.clone(),
            quotas: self.quotas.clone(),
            agents: Some(self.agents.clone()),
        }
    }
}

struct Gate {
    runtime: Arc<MissionRuntime>,
    /// Repeated failures and session openings, recorded first in full and then counted.
    aggregate: crate::audit::aggregate::Aggregator,
    state: Arc<MissionState>,
    core: crate::call::Core,
    sessions: Arc<session::Sessions>,
    allowed: rebinding::Allowed,
    verifier: Arc<Verifier>,
    agents: Arc<crate::agents::Registry>,
    public_url: String,
    metadata_url: String,
}

/// Builds the router for a broker.
pub fn router(broker: Arc<Broker>, aggregate: crate::audit::aggregate::Aggregator) -> Router {
    let settings = &broker.config.settings;
    let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(url) = reqwest::Url::parse(&settings.public_url)
        && let Some(host) = url.host_str()
    {
        hosts.push(host.trim_matches(['[', ']']).to_owned());
    }
    hosts.extend(settings.allowed_hosts.iter().cloned());

    // Origin is always checked (the MCP transport's MUST against DNS rebinding): by default
    // only the broker's own origin may send a browser request; requests without Origin (every
    // non-browser client) pass.
    let origins: Vec<String> = if settings.allowed_origins.is_empty() {
        let mut own = Vec::new();
        if let Ok(url) = reqwest::Url::parse(&settings.public_url) {
            own.push(url.origin().ascii_serialization());
            // A broker on loopback also takes pages served from loopback (local tools and
            // inspectors): they are not a rebinding of a foreign name.
            let loopback = url.host_str().is_some_and(|h| {
                h.eq_ignore_ascii_case("localhost")
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if loopback {
                for host in ["localhost", "127.0.0.1", "[::1]"] {
                    own.push(format!("http://{host}:*"));
                }
            }
        }
        own
    } else {
        settings.allowed_origins.clone()
    };
    let mut app = Router::new();
    for (id, state) in &broker.missions {
        let path = state.runtime.mission.http_path();
        let sessions = session::Sessions::new();
        let gate = Arc::new(Gate {
            aggregate: aggregate.clone(),
            runtime: state.runtime.clone(),
            state: state.clone(),
            core: broker.core(),
            sessions: sessions.clone(),
            allowed: rebinding::Allowed::new(&hosts, &origins),
            verifier: broker.verifier.clone(),
            agents: broker.agents.clone(),
            public_url: settings.public_url.clone(),
            metadata_url: format!(
                "{}/.well-known/oauth-protected-resource{}",
                settings.public_url, path
            ),
        });
        let mut config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(hosts.clone())
            .with_sse_keep_alive(Some(std::time::Duration::from_secs(15)));
        config = config.with_allowed_origins(origins.clone());
        let (state, core) = (state.clone(), broker.core());
        let service = StreamableHttpService::new(
            move || {
                Ok(MissionHandler::new(
                    state.clone(),
                    core.clone(),
                    None,
                    session::state_for_new_handler(),
                ))
            },
            sessions,
            config,
        );
        tracing::debug!(mission = %id, %path, "serving mission");
        app = app.route(
            &path,
            axum::routing::any_service(service)
                .layer(axum::middleware::from_fn_with_state(gate, authenticate)),
        );
    }
    let metadata_broker = broker.clone();
    let admin = broker.clone();
    let authorization_server = oauth::routes(broker.clone(), aggregate.clone());
    let unknown_broker = broker.clone();
    app.route(
        // Paths of missions this broker does not serve: answered like a mission would.
        "/mcp/{*rest}",
        axum::routing::any(
            move |axum::extract::Path(rest): axum::extract::Path<String>, request: Request| {
                let broker = unknown_broker.clone();
                let aggregate = aggregate.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let response = unknown_mission(&broker, &aggregate, &rest, &parts).await;
                    drained(Request::from_parts(parts, body), response).await
                }
            },
        ),
    )
    .route(
        "/.well-known/oauth-protected-resource/mcp/{*mission}",
        get(
            move |axum::extract::Path(mission): axum::extract::Path<String>| {
                let broker = metadata_broker.clone();
                async move { protected_resource(&broker, &mission) }
            },
        ),
    )
    .route(
        "/.well-known/openid-configuration",
        get({
            let b = broker.clone();
            move || async move {
                // The authorization server's metadata, plus what OpenID discovery requires.
                let mut document = oauth::metadata_document(&b);
                document["id_token_signing_alg_values_supported"] = serde_json::json!(["ES256"]);
                document["subject_types_supported"] = serde_json::json!(["public"]);
                Json(document)
            }
        }),
    )
    .route(
        "/.well-known/jwks.json",
        get({
            let b = broker.clone();
            move || async move { Json(b.issuer.jwks().clone()) }
        }),
    )
    .route("/healthz", get(|| async { "ok\n" }))
    .route(
        "/readyz",
        get({
            let b = broker.clone();
            move || async move {
                let (ready, downstreams) = b.pool.readiness();
                let (issuers_ready, issuers) = b.verifier.readiness();
                let ready = ready && issuers_ready;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (
                    status,
                    Json(serde_json::json!({ "ready": ready, "downstreams": downstreams, "issuers": issuers })),
                )
            }
        }),
    )
    .route("/admin/token", post(admin_token))
    .route("/admin/audit/export", get(admin_export))
    .route("/admin/audit/verify", get(admin_verify))
    .route("/admin/approvals", get(approvals::list))
    .route("/admin/approvals/{id}/approve", post(approvals::approve))
    .route("/admin/approvals/{id}/deny", post(approvals::deny))
    .route(
        crate::approval::webhook::DECISION_PATH,
        post(approvals::webhook),
    )
    .route(
        "/admin/agents",
        get(agents_admin::list).post(agents_admin::onboard),
    )
    .route("/admin/agents/{id}/{change}", post(agents_admin::change))
    .route("/admin/keys/rotate", post(admin_keys_rotate))
    .with_state(admin)
    .merge(authorization_server)
}

/// The protected-resource metadata (RFC 9728) of `/mcp/<mission>`. It answers for any path, known
/// mission or not, with the same document shape, so it does not reveal which missions exist; a
/// client of an unknown path then learns that its token is refused, like everyone else.
fn protected_resource(broker: &Broker, mission: &str) -> Response {
    let public_url = &broker.config.settings.public_url;
    let resource = match broker.missions.get(mission) {
        Some(state) => state.runtime.resource_url.clone(),
        None => format!("{public_url}/mcp/{mission}"),
    };
    // The embedded authorization server first, then every external issuer whose tokens it takes.
    let servers: Vec<&str> = std::iter::once(public_url.as_str())
        .chain(broker.verifier.external_issuers())
        .collect();
    let mut document = serde_json::json!({
        "resource": resource,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Mandate mission {mission}"),
        "resource_documentation": "https://github.com/mandate/mandate#readme",
    });
    let scopes = broker.verifier.required_scopes();
    if !scopes.is_empty() {
        document["scopes_supported"] = scopes.into();
    }
    Json(document).into_response()
}

/// A request to `/mcp/<path>` where no mission is served. It is answered as a mission would
/// answer it, so nobody can tell which missions exist: 401 without a valid token (pointing at this
/// path's metadata), 403 with one (no token opens a mission that is not there). The refusal is
/// audited and aggregated like those of the missions.
async fn unknown_mission(
    broker: &Broker,
    aggregate: &crate::audit::aggregate::Aggregator,
    rest: &str,
    request: &axum::http::request::Parts,
) -> Response {
    let peer = request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown peer".into());
    let public_url = &broker.config.settings.public_url;
    let metadata_url = format!("{public_url}/.well-known/oauth-protected-resource/mcp/{rest}");
    let resource_url = format!("{public_url}/mcp/{rest}");
    let audiences = [public_url.as_str(), resource_url.as_str()];
    let verified = broker
        .verifier
        .verify_request(&request.headers, &audiences)
        .await;
    let mut event = Event::new(EventKind::AuthFailure);
    let refusal = match &verified {
        Err(e) => {
            event.outcome = Some("unauthenticated".into());
            event.detail = Some(format!("{e} (from {peer}; no mission at `/mcp/{rest}`)"));
            aggregate.record(&format!("unauthenticated: {e}"), &peer, event);
            return challenge(&metadata_url, &broker.verifier, &e.error);
        }
        Ok(caller) if let Err(missing) = broker.verifier.check_scopes(caller) => {
            return insufficient_scope(&metadata_url, aggregate, caller, &missing, event);
        }
        Ok(caller) => {
            event.outcome = Some("forbidden".into());
            event.tenant = Some(caller.tenant.clone());
            event.detail = Some(format!("no mission at `/mcp/{rest}`"));
            aggregate.record(
                "forbidden: no mission at this path",
                &crate::call::principal_key(caller),
                event,
            );
            format!(
                "Bearer error=\"insufficient_scope\", error_description=\"not allowed on this mission\", resource_metadata=\"{metadata_url}\""
            )
        }
    };
    (
        StatusCode::FORBIDDEN,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&refusal).unwrap_or(HeaderValue::from_static("Bearer")),
        )],
        // What a mission of another tenant answers: no token opens a mission that is not there,
        // and the answer does not tell a missing mission from another tenant's.
        forbidden_text(crate::mission::Denied::Tenant),
    )
        .into_response()
}

/// The body of a 403 for an authenticated caller: the rule that refused it, and what to do.
fn forbidden_text(denied: crate::mission::Denied) -> String {
    format!(
        "this token may not use this mission: {denied} (use a token of the mission's tenant and one of its agents, for a mission that has not expired)\n"
    )
}

impl Gate {
    /// An audit event about `caller` on this mission.
    fn caller_event(&self, kind: EventKind, caller: &Caller) -> Event {
        let mut event = Event::new(kind);
        event.mission = Some(self.runtime.mission.id.clone());
        event.tenant = Some(caller.tenant.clone());
        event.subject = Some(caller.subject.clone());
        event.agent = Some(caller.agent.clone());
        event.token_id = Some(caller.token_id.clone());
        event.issuer = Some(caller.issuer.clone());
        event.actors = caller.actors.clone();
        event
    }
}

/// The authentication layer in front of a mission.
async fn authenticate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown peer".into());
    let audiences = [gate.public_url.as_str(), gate.runtime.resource_url.as_str()];
    let verified = gate
        .verifier
        .verify_request(request.headers(), &audiences)
        .await;
    let caller: Arc<Caller> = match verified {
        Ok(c) => c,
        Err(e) => {
            let mut event = Event::new(EventKind::AuthFailure);
            event.mission = Some(gate.runtime.mission.id.clone());
            event.outcome = Some("unauthenticated".into());
            event.detail = Some(format!("{e} (from {peer})"));
            gate.aggregate
                .record(&format!("unauthenticated: {e}"), &peer, event);
            return drained(request, unauthorized(&gate, &e)).await;
        }
    };
    if let Err(missing) = gate.verifier.check_scopes(&caller) {
        let event = gate.caller_event(EventKind::AuthFailure, &caller);
        let response = insufficient_scope(
            &gate.metadata_url,
            &gate.aggregate,
            &caller,
            &missing,
            event,
        );
        return drained(request, response).await;
    }
    // A token carrying `act` is a handoff: every hop is re-verified against the ledger, and the
    // request that opens a session (or a stateless call) uses the token up.
    let caller = match &caller.act {
        None => caller,
        Some(_) => {
            let opening = request.method() == axum::http::Method::POST
                && !request.headers().contains_key("mcp-session-id");
            let admitted = match &gate.core.handoffs {
                Some(handoffs) => {
                    handoffs
                        .admit(&caller, &gate.runtime.mission.id, opening)
                        .await
                }
                None => Err(crate::handoff::HandoffError::Foreign),
            };
            match admitted {
                Ok(verified) => verified,
                Err(refused) => {
                    let response = handoff_refused(&gate, &caller, &refused);
                    return drained(request, response).await;
                }
            }
        }
    };
    if let Err(denied) = gate.runtime.admit(&caller, crate::authn::unix_now()) {
        let mut event = gate.caller_event(EventKind::AuthFailure, &caller);
        event.outcome = Some("forbidden".into());
        event.detail = Some(denied.to_string());
        gate.aggregate.record(
            &format!("forbidden: {denied}"),
            &crate::call::principal_key(&caller),
            event,
        );
        let challenge = format!(
            "Bearer error=\"insufficient_scope\", error_description=\"not allowed on this mission\", resource_metadata=\"{}\"",
            gate.metadata_url
        );
        // The caller is authenticated: it learns which rule refused it (as the audit does).
        let response = (
            StatusCode::FORBIDDEN,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
            )],
            forbidden_text(denied),
        )
            .into_response();
        return drained(request, response).await;
    }
    // The agent registry, on every request: a suspension acts on the next one.
    if let Err(refusal) = gate.agents.admit(
        &caller.agent,
        &gate.runtime.mission.id,
        crate::authn::unix_now(),
    ) {
        let mut event = gate.caller_event(EventKind::AuthFailure, &caller);
        event.outcome = Some("forbidden".into());
        event.detail = Some(refusal.to_string());
        gate.aggregate.record(
            &format!("forbidden: {}", refusal.label()),
            &crate::call::principal_key(&caller),
            event,
        );
        // No `insufficient_scope` challenge: no other token of this agent would do.
        let response = (StatusCode::FORBIDDEN, format!("{refusal}\n")).into_response();
        return drained(request, response).await;
    }
    request.extensions_mut().insert(caller.clone());
    let session_id = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(session_id) = session_id else {
        // No session yet: this may be an `initialize`, which binds the new session to this
        // caller while rmcp creates it.
        if request.method() != axum::http::Method::POST {
            return next.run(request).await;
        }
        let (parts, body) = request.into_parts();
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(response) => return response,
        };
        let envelope = match ingress::parse(&body) {
            Err(refused) => return refusal(refused),
            Ok(envelope) => envelope,
        };
        if gate.allowed.check(&parts.headers).is_ok()
            && let Some(response) = native::stateless(
                &gate.state,
                &gate.core,
                caller.clone(),
                &envelope,
                &parts.headers,
            )
            .await
        {
            return response;
        }
        let _reservation = if envelope.method.as_deref() == Some("initialize") {
            match gate.sessions.reserve(&caller) {
                Ok(reservation) => Some(reservation),
                Err(why) => {
                    return native::error_response(
                        envelope.id.map_or("null", |id| id.get()),
                        StatusCode::TOO_MANY_REQUESTS,
                        &crate::call::RpcError {
                            code: crate::call::reject::INVALID_REQUEST,
                            message: why,
                            data: None,
                        },
                    );
                }
            }
        } else {
            None
        };
        let request = Request::from_parts(parts, axum::body::Body::from(body));
        let opening = session::Opening {
            caller: caller.clone(),
            state: None,
        };
        let response = session::OPENING
            .scope(std::cell::RefCell::new(Some(opening)), next.run(request))
            .await;
        if _reservation.is_some() && response.headers().contains_key("mcp-session-id") {
            // Session creation is audited, aggregated per principal like failures.
            let mut event = gate.caller_event(EventKind::Access, &caller);
            event.outcome = Some("session_opened".into());
            event.detail = Some("MCP session opened".into());
            gate.aggregate.record(
                "session opened",
                &crate::call::principal_key(&caller),
                event,
            );
        }
        return response;
    };
    // Every method on a session (POST, GET, DELETE) must come from the session's principal; a
    // stranger is told the session does not exist.
    let live = gate.sessions.get(&session_id);
    let Some(live) = live.filter(|s| s.owner.matches(&caller)) else {
        let reject = crate::call::Reject::UnknownSession;
        let (kind, outcome) = reject.audit();
        let mut event = gate.caller_event(kind, &caller);
        event.outcome = Some(outcome.into());
        event.detail = Some(format!(
            "{} on a session that is unknown or belongs to another principal",
            request.method()
        ));
        gate.aggregate.record(
            &format!("unknown session: {}", request.method()),
            &crate::call::principal_key(&caller),
            event,
        );
        return native::error_response(
            "null",
            StatusCode::NOT_FOUND,
            &crate::call::RpcError {
                code: crate::call::reject::INVALID_REQUEST,
                message: reject.to_string(),
                data: None,
            },
        );
    };
    if request.method() == axum::http::Method::GET {
        // An open standalone stream keeps its session from being closed as idle.
        let guard = live.hold_open();
        let response = next.run(request).await;
        return hold_until_finished(response, guard);
    }
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    // What Mandate answers itself gets the transport's DNS-rebinding checks too.
    if let Err(refusal) = gate.allowed.check(request.headers()) {
        return (StatusCode::FORBIDDEN, refusal).into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    // The envelope is parsed once: the native path answers what it owns, rmcp the rest.
    let envelope = match ingress::parse(&body) {
        Ok(e) => e,
        Err(refused) => return refusal(refused),
    };
    if let Some(response) = native::handle(&gate.state, &gate.core, &live, caller, &envelope).await
    {
        return response;
    }
    // A request rmcp answers holds its id on the session until its response is finished, so a
    // second request reusing an id in flight is refused on this path as on the native one.
    let inflight = match (envelope.id, envelope.method.is_some()) {
        (Some(id), true) => match live.start_call(id.get(), false) {
            Ok(guard) => Some(guard),
            Err(_) => {
                return native::error_response(
                    id.get(),
                    StatusCode::OK,
                    &crate::call::RpcError {
                        code: crate::call::reject::INVALID_REQUEST,
                        message: "a request with this id is already in flight on this session"
                            .into(),
                        data: None,
                    },
                );
            }
        },
        _ => None,
    };
    let request_id = envelope
        .id
        .filter(|_| envelope.method.is_some())
        .map(|id| id.get().to_owned());
    let running = next.run(Request::from_parts(parts, axum::body::Body::from(body)));
    let Some(id) = request_id else {
        return running.await;
    };
    // A session deleted while rmcp answers a request: the request ends with a cancellation,
    // never with rmcp's `500 Session service terminated` or a stream cut short.
    let closed = live.closed();
    let response = tokio::select! {
        biased;
        response = running => response,
        _ = closed.cancelled() => return closed_during(&id),
    };
    let response = end_on_close(response, closed, id);
    match inflight {
        None => response,
        Some(guard) => hold_until_finished(response, guard),
    }
}

/// The error a request in flight gets when its session is closed.
fn session_closed_error() -> crate::call::RpcError {
    crate::call::RpcError {
        code: crate::call::reject::REQUEST_CANCELLED,
        message: "request cancelled: its session was closed (HTTP DELETE, or idle) while it was in flight; open a new session and retry".into(),
        data: None,
    }
}

/// The answer to request `id` when its session closed before rmcp answered it.
fn closed_during(id: &str) -> Response {
    native::error_response(id, StatusCode::OK, &session_closed_error())
}

/// An SSE response rmcp is streaming for request `id`: when the session closes before the stream
/// ends, the stream ends with the cancellation of that request instead of being cut short.
fn end_on_close(response: Response, closed: CancellationToken, id: String) -> Response {
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse || !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream();
    // rmcp may end the stream of a closed session before the session's `closed` token fires:
    // a stream that ends without the answer to `id` waits briefly for it, so the request still
    // ends with its cancellation rather than cut short.
    let answer = [
        format!("\"id\":{id},\"result\""),
        format!("\"id\":{id},\"error\""),
    ];
    let state = (body, closed, id, answer, false);
    let stream = futures::stream::unfold(Some(state), |state| async move {
        use futures::StreamExt;
        let (mut body, closed, id, answer, mut answered) = state?;
        let cancelled = tokio::select! {
            biased;
            chunk = body.next() => match chunk {
                Some(chunk) => {
                    if let Ok(bytes) = &chunk {
                        let text = String::from_utf8_lossy(bytes);
                        answered |= answer.iter().any(|a| text.contains(a.as_str()));
                    }
                    return Some((chunk, Some((body, closed, id, answer, answered))));
                }
                None if answered => return None,
                None => tokio::time::timeout(CLOSE_GRACE, closed.cancelled()).await.is_ok(),
            },
            _ = closed.cancelled() => true,
        };
        if !cancelled {
            return None;
        }
        let error = session_closed_error();
        let error = serde_json::json!({"code": error.code, "message": error.message});
        // The id as the caller sent it (raw JSON), not re-encoded.
        let event = format!(
            "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"error\":{error}}}\n\n"
        );
        Some((Ok(axum::body::Bytes::from(event)), None))
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// How long a stream that ended without its answer waits for its session's close to show.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps `guard` alive until the response body is finished or dropped.
fn hold_until_finished<G: Send + Sync + 'static>(response: Response, guard: G) -> Response {
    use futures::StreamExt;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &guard;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}

/// Reads and discards a refused request's body, then gives `response`: a body left unread would
/// make the server close the kept-alive connection (without an answer when the close races the
/// client's next request). Bodies are read as a stream up to [`MAX_BODY_BYTES`] (what an accepted
/// request may carry) without being held; a longer one is not read further, and the response
/// says `Connection: close` so the client knows the connection ends after it.
async fn drained(request: Request, mut response: Response) -> Response {
    use futures::StreamExt;
    let mut body = request.into_body().into_data_stream();
    let mut read = 0usize;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                read += bytes.len();
                if read > MAX_BODY_BYTES {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    break;
                }
            }
            // The client broke off its body: the connection is gone either way.
            Err(_) => break,
        }
    }
    response
}

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The response for a body refused at ingress.
fn refusal(refused: ingress::Refused) -> Response {
    native::error_response("null", refused.status, &refused.error)
}

/// Reads a request body up to [`MAX_BODY_BYTES`].
async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            let mut response = jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                &format!("request body exceeds {} MiB", MAX_BODY_BYTES / 1024 / 1024),
            );
            // The rest of the body is not read: the connection ends after this answer.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        })
}

fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": code, "message": message }
        })),
    )
        .into_response()
}

/// A handoff token refused by the ledger check: audited with the reason (aggregated per
/// principal), 401 `invalid_token` when the token is unusable, 403 when the chain is refused.
fn handoff_refused(gate: &Gate, caller: &Caller, e: &crate::handoff::HandoffError) -> Response {
    let invalid = e.invalid_token();
    let mut event = gate.caller_event(EventKind::AuthFailure, caller);
    event.outcome = Some(
        if invalid {
            "unauthenticated"
        } else {
            "forbidden"
        }
        .into(),
    );
    event.detail = Some(format!("handoff refused: {e}"));
    gate.aggregate.record(
        &format!("handoff refused: {e}"),
        &crate::call::principal_key(caller),
        event,
    );
    let (status, error) = if invalid {
        (StatusCode::UNAUTHORIZED, "invalid_token")
    } else {
        (StatusCode::FORBIDDEN, "insufficient_scope")
    };
    let challenge = format!(
        "Bearer error=\"{error}\", error_description=\"{}\", resource_metadata=\"{}\"",
        e.to_string().replace('"', "'"),
        gate.metadata_url
    );
    (
        status,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
        )],
        format!("{e}\n"),
    )
        .into_response()
}

fn unauthorized(gate: &Gate, e: &Refusal) -> Response {
    challenge(&gate.metadata_url, &gate.verifier, &e.error)
}

/// The 401 for `e`, pointing at the resource's metadata document (and naming the scopes the
/// issuers require, if any: RFC 6750 §3).
fn challenge(metadata_url: &str, verifier: &Verifier, e: &AuthnError) -> Response {
    let scopes = verifier.required_scopes();
    let scope = if scopes.is_empty() {
        String::new()
    } else {
        format!(", scope=\"{}\"", scopes.join(" "))
    };
    let challenge = if e.token_presented() {
        format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"{scope}, resource_metadata=\"{metadata_url}\"",
            e.to_string().replace('"', "'"),
        )
    } else {
        format!("Bearer resource_metadata=\"{metadata_url}\"{scope}")
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
        )],
        format!("{e}\n"),
    )
        .into_response()
}

/// The 403 for a valid token that lacks scopes its issuer requires (RFC 6750 §3.1), naming every
/// scope needed; audited (aggregated per principal).
fn insufficient_scope(
    metadata_url: &str,
    aggregate: &crate::audit::aggregate::Aggregator,
    caller: &Caller,
    missing: &InsufficientScope,
    mut event: Event,
) -> Response {
    event.outcome = Some("forbidden".into());
    event.tenant = Some(caller.tenant.clone());
    event.detail = Some(missing.to_string());
    aggregate.record(
        &format!("forbidden: {missing}"),
        &crate::call::principal_key(caller),
        event,
    );
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\", resource_metadata=\"{metadata_url}\"",
        missing.to_string().replace('"', "'"),
        missing.required.join(" "),
    );
    (
        StatusCode::FORBIDDEN,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
        )],
        format!("{missing}\n"),
    )
        .into_response()
}

/// Whether an admin request comes from this machine's loopback with the admin credential.
///
/// Every admin handler asks this before it looks at the request's body or query, so a caller
/// without the credential learns nothing about what the API expects.
fn admin_authorized(broker: &Broker, peer: SocketAddr, headers: &axum::http::HeaderMap) -> bool {
    // The admin API serves the local CLI only, even when the MCP endpoints listen more widely.
    // On a dual-stack `[::]` listener an IPv4 loopback peer arrives as `::ffff:127.0.0.1`.
    if !peer.ip().to_canonical().is_loopback() {
        return false;
    }
    let Ok(token) = crate::authn::bearer(headers.get(header::AUTHORIZATION)) else {
        return false;
    };
    constant_time_eq(token.as_bytes(), broker.admin_token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn forbidden_admin() -> Response {
    (StatusCode::UNAUTHORIZED, "admin credential required\n").into_response()
}

async fn admin_token(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !admin_authorized(&broker, peer, &headers) {
        return forbidden_admin();
    }
    let request: crate::cli::AdminTokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid token request: {e}\n"),
            )
                .into_response();
        }
    };
    let resolved = match request.resolve(&broker.config, &broker.config.settings.public_url) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match mint(&broker.issuer, &broker.audit, &resolved.request).await {
        Ok(minted) => Json(crate::cli::AdminTokenResponse {
            minted,
            missions: resolved.missions,
        })
        .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// The audit record of a token the embedded issuer minted (its id, never the token).
pub(crate) fn token_issued(minted: &crate::authn::MintedToken, detail: String) -> Event {
    let mut event = Event::new(EventKind::TokenIssued);
    event.tenant = Some(minted.claims.tenant.clone());
    event.subject = Some(minted.claims.sub.clone());
    event.agent = Some(minted.claims.azp.clone());
    event.token_id = Some(minted.claims.jti.clone());
    event.detail = Some(detail);
    event
}

/// Mints a token and audits it.
pub async fn mint(
    issuer: &Issuer,
    audit: &Auditor,
    request: &TokenRequest,
) -> anyhow::Result<crate::authn::MintedToken> {
    let minted = issuer.mint(request)?;
    let event = token_issued(
        &minted,
        format!(
            "audience {} expires {}",
            minted.claims.aud, minted.claims.exp
        ),
    );
    audit.record_durable(event).await?;
    Ok(minted)
}

#[derive(Deserialize)]
struct ExportQuery {
    tenant: Option<String>,
    since: Option<String>,
}

async fn admin_export(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if !admin_authorized(&broker, peer, &headers) {
        return forbidden_admin();
    }
    let q = match Query::<ExportQuery>::try_from_uri(&uri) {
        Ok(Query(q)) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid export query: {}\n", e.body_text()),
            )
                .into_response();
        }
    };
    // Sign the current heads so the export ends at signed records.
    if let Err(e) = broker.audit.checkpoint().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
    }
    let filter = ExportFilter {
        tenant: q.tenant,
        since: q.since,
    };
    // Streamed: produced on a blocking thread, never held in memory whole.
    match crate::audit::export_stream(broker.store.clone(), filter) {
        Ok(rx) => {
            let chunks = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            (
                [(header::CONTENT_TYPE, "application/jsonl")],
                axum::body::Body::from_stream(chunks),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn admin_verify(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !admin_authorized(&broker, peer, &headers) {
        return forbidden_admin();
    }
    let _ = broker.audit.sync().await;
    let store = broker.store.clone();
    match tokio::task::spawn_blocking(move || crate::audit::verify_store(&store)).await {
        Ok(Ok(report)) => Json(serde_json::json!({
            "ok": true, "records": report.records(), "report": report.to_string(),
        }))
        .into_response(),
        Ok(Err(e)) => {
            Json(serde_json::json!({ "ok": false, "error": e.to_string() })).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("audit verification failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Serves HTTP on a pre-bound listener until `shutdown`; HTTPS with `tls`.
pub async fn serve_http(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let aggregate = crate::audit::aggregate::Aggregator::start(broker.audit.clone());
    let app = router(broker, aggregate.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = async move { shutdown.cancelled().await };
    let served = match tls {
        Some(acceptor) => {
            // `tap_io` (a no-op here) is what gives axum's `ConnectInfo<SocketAddr>` for a listener
            // of our own.
            let listener = tls::Listener::new(listener, acceptor)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    // Counts gathered since the last window are written before the audit log closes.
    aggregate.flush();
    served
}

/// What `POST /admin/keys/rotate` answers (and `mandate keys rotate` prints).
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct AdminRotation {
    /// `kid` of the key that signs new tokens.
    pub current: String,
    /// `kid` of the rotated-out key.
    pub retired: String,
    /// Unix seconds until which the rotated-out key stays published.
    pub published_until: u64,
}

/// Audits a key rotation (by key ids; key material never reaches the log).
pub async fn record_rotation(audit: &Auditor, rotation: &AdminRotation) -> anyhow::Result<()> {
    let mut event = Event::new(EventKind::KeyRotated);
    event.detail = Some(format!(
        "signing key `{}` replaces `{}`, which stays published until {}",
        rotation.current, rotation.retired, rotation.published_until
    ));
    audit.record_durable(event).await?;
    Ok(())
}

/// Rotates the embedded issuer's signing key of the running server: the store gets the new key,
/// and the issuer in memory signs with it from this answer on.
async fn admin_keys_rotate(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !admin_authorized(&broker, peer, &headers) {
        return forbidden_admin();
    }
    let (store, issuer) = (broker.store.clone(), broker.issuer.clone());
    let rotated = tokio::task::spawn_blocking(move || {
        let rotation = Issuer::rotate(&store)?;
        store.flush()?;
        issuer.reload(&store)?;
        anyhow::Ok(rotation)
    })
    .await;
    match rotated {
        Ok(Ok(r)) => {
            tracing::info!(kid = %r.current, retired = %r.retired, "issuer signing key rotated");
            let rotation = AdminRotation {
                current: r.current,
                retired: r.retired,
                published_until: r.published_until,
            };
            if let Err(e) = record_rotation(&broker.audit, &rotation).await {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the key was rotated, but the audit log could not record it: {e}\n"),
                )
                    .into_response();
            }
            Json(rotation).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("key rotation failed: {e}\n"),
        )
            .into_response(),
    }
}

//! The approvals HTTP API: `/admin/approvals…` for the CLI (admin credential on loopback) and for
//! approvers with their own bearer token (approver role, same tenant, not the requester), and
//! `/approvals/webhook` for decisions a ticketing system signs with the webhook secret.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::approval::webhook::{SIGNATURE_HEADER, WebhookRefused};
use crate::approval::{DecideError, Decider, Decision, Request};

use super::{Broker, admin_authorized};

/// Body of `POST /admin/approvals/{id}/approve|deny`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Answer of `GET /admin/approvals`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Listing {
    pub approvals: Vec<Request>,
}

/// The admin, or an approver by their own token (from any trusted issuer); `None`: neither
/// (401).
async fn decider(broker: &Broker, peer: SocketAddr, headers: &HeaderMap) -> Option<Decider> {
    if admin_authorized(broker, peer, headers) {
        return Some(Decider::Admin);
    }
    let caller = broker
        .verifier
        .verify_request(headers, &[broker.config.settings.public_url.as_str()])
        .await
        .ok()?;
    Some(Decider::Approver(caller))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "admin credential or an approver's bearer token required\n",
    )
        .into_response()
}

pub(super) async fn list(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(decider) = decider(&broker, peer, &headers).await else {
        return unauthorized();
    };
    let role = &broker.approvals.settings().approver_role;
    let tenant = match &decider {
        Decider::Admin => None,
        Decider::Approver(c) if c.roles.contains(role) => Some(c.tenant.clone()),
        Decider::Approver(_) | Decider::Webhook { .. } => {
            return (
                StatusCode::FORBIDDEN,
                format!("{}\n", DecideError::NotApprover(role.clone())),
            )
                .into_response();
        }
    };
    match broker.approvals.list().await {
        Ok(mut all) => {
            if let Some(t) = tenant {
                all.retain(|r| r.tenant == t);
            }
            Json(Listing { approvals: all }).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

pub(super) async fn approve(
    state: State<Arc<Broker>>,
    peer: ConnectInfo<SocketAddr>,
    id: Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    decide(state, peer, id, headers, body, Decision::Approve).await
}

pub(super) async fn deny(
    state: State<Arc<Broker>>,
    peer: ConnectInfo<SocketAddr>,
    id: Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    decide(state, peer, id, headers, body, Decision::Deny).await
}

async fn decide(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
    decision: Decision,
) -> Response {
    let Some(decider) = decider(&broker, peer, &headers).await else {
        return unauthorized();
    };
    let body: DecideBody = if body.is_empty() {
        DecideBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("invalid decision body: {e} (expected {{\"reason\": \"…\"}})\n"),
                )
                    .into_response();
            }
        }
    };
    decided(
        broker
            .approvals
            .decide(&id, decision, &decider, body.reason)
            .await,
    )
}

/// The answer to a decision: the decided request, or why not.
fn decided(result: Result<Request, DecideError>) -> Response {
    match result {
        Ok(request) => Json(request).into_response(),
        Err(e) => {
            let status = match &e {
                DecideError::Unknown(_) => StatusCode::NOT_FOUND,
                DecideError::NotPending { .. } => StatusCode::CONFLICT,
                DecideError::NotApprover(_) | DecideError::OwnRequest(_) => StatusCode::FORBIDDEN,
                DecideError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, format!("{e}\n")).into_response()
        }
    }
}

/// `POST /approvals/webhook`: a decision signed like the requests Mandate sends.
pub(super) async fn webhook(
    State(broker): State<Arc<Broker>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    match broker.approvals.decide_from_webhook(signature, &body).await {
        Ok(result) => decided(result),
        Err(e) => {
            let status = match &e {
                WebhookRefused::NotConfigured => StatusCode::NOT_FOUND,
                WebhookRefused::Signature(_) => StatusCode::UNAUTHORIZED,
                WebhookRefused::Body(_) => StatusCode::BAD_REQUEST,
            };
            (status, format!("{e}\n")).into_response()
        }
    }
}

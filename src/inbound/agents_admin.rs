//! The admin API of the agent registry (`mandate agents …` while the server runs): list,
//! onboard, suspend, resume, offboard. Loopback and the admin credential only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Broker, admin_authorized, forbidden_admin};
use crate::agents::{Change, ChangeRequest, LifecycleError, OnboardRequest};

/// `GET /admin/agents`: every record (no secrets: only hashes are stored).
pub(super) async fn list(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !admin_authorized(&broker, peer, &headers) {
        return forbidden_admin();
    }
    Json(broker.agents.list()).into_response()
}

/// `POST /admin/agents`: onboard; the answer carries the client secret once.
pub(super) async fn onboard(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !admin_authorized(&broker, peer, &headers) {
        return forbidden_admin();
    }
    let request: OnboardRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid onboarding request: {e}\n"),
            )
                .into_response();
        }
    };
    match broker.agents.onboard(&broker.config, request, "cli").await {
        Ok(onboarded) => Json(onboarded).into_response(),
        Err(e) => failure(&e),
    }
}

/// `POST /admin/agents/{id}/{suspend|resume|offboard}`.
pub(super) async fn change(
    State(broker): State<Arc<Broker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((id, change)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if !admin_authorized(&broker, peer, &headers) {
        return forbidden_admin();
    }
    let change = match change.as_str() {
        "suspend" => Change::Suspend,
        "resume" => Change::Resume,
        "offboard" => Change::Offboard,
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("unknown agent operation `{other}`: use suspend, resume or offboard\n"),
            )
                .into_response();
        }
    };
    let request: ChangeRequest = if body.is_empty() {
        ChangeRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("invalid request: {e}\n"))
                    .into_response();
            }
        }
    };
    match broker.agents.change(&id, change, &request, "cli").await {
        Ok(record) => Json(record).into_response(),
        Err(e) => failure(&e),
    }
}

fn failure(e: &LifecycleError) -> Response {
    let status = match e {
        LifecycleError::Unknown(_) => StatusCode::NOT_FOUND,
        LifecycleError::AlreadyOnboarded(_)
        | LifecycleError::Offboarded(_)
        | LifecycleError::WrongStatus { .. }
        | LifecycleError::Race(_) => StatusCode::CONFLICT,
        LifecycleError::Invalid(_) => StatusCode::BAD_REQUEST,
        LifecycleError::Storage(_) | LifecycleError::Audit(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, format!("{e}\n")).into_response()
}

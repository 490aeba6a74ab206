//! [`Reject`]: every way a request can be refused or fail, each with its audit outcome and the
//! answer the caller gets, mapped in one exhaustive match each (no catch-all arm, so a new
//! variant forces a decision).

use crate::approval::ApprovalError;
use crate::audit::EventKind;
use crate::downstream::DownstreamError;
use crate::exchange::ExchangeError;
use crate::handoff::HandoffError;
use crate::mission::{Denied, Invalid};
use crate::policy::{PolicyDenied, SCOPE_POLICY, WALL_POLICY};
use crate::quota::{QUOTA_POLICY, QuotaExceeded};

use super::RpcError;

/// Why a request did not produce a tool result.
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    /// The token expired between verification and the call.
    #[error("token expired: mint a new one with `mandate token`")]
    TokenExpired,
    /// The request names a session that is unknown, closed, or belongs to another principal.
    #[error("unknown session: start a new session (initialize)")]
    UnknownSession,
    /// `_meta["io.mandate/reasoning"]` does not have the documented shape.
    #[error(
        "invalid `_meta[\"io.mandate/reasoning\"]`: {0} (expected goal, step, rationale, alternatives, confidence)"
    )]
    InvalidReasoning(String),
    /// The tool is not in the mission, is quarantined, or the caller may not use the mission.
    #[error("{0}")]
    Scope(#[from] Denied),
    /// `params.arguments` is not a JSON object.
    #[error("`arguments` must be a JSON object")]
    ArgumentsNotObject,
    /// A caller-supplied field exceeds its size limit (see [`crate::call::limits`]).
    #[error("{0}")]
    TooLarge(String),
    /// The arguments violate the pinned input schema.
    #[error("invalid arguments: {0}")]
    InvalidArguments(Invalid),
    /// A policy denied the call.
    #[error("{0}")]
    Policy(#[from] PolicyDenied),
    /// A `[limits]` quota refused the call.
    #[error("{0}")]
    Quota(#[from] QuotaExceeded),
    /// The call needs an approval it does not have (yet).
    #[error("{0}")]
    Approval(#[from] ApprovalError),
    /// The durable intent record of a write could not be written: fail closed.
    #[error("audit unavailable: {0}")]
    AuditUnavailable(String),
    /// The downstream could not be reached, timed out, or answered with an error.
    #[error("{0}")]
    Downstream(#[from] DownstreamError),
    /// The result violates the pinned output schema; it is withheld.
    #[error("output violates the pinned schema: {0}")]
    InvalidOutput(Invalid),
    /// No downstream token could be had: the call fails closed (never the caller's token).
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
    /// A handoff to another mission's agent was refused (edge, depth, recipient) or could not
    /// be recorded.
    #[error("handoff refused: {0}")]
    Handoff(#[from] HandoffError),
}

/// What the caller gets for a [`Reject`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A JSON-RPC error response; `status` is the HTTP status on the native path.
    Error { status: u16, error: RpcError },
    /// A `CallToolResult` with `isError: true` and this text (readable by the agent).
    ToolError(String),
}

fn error(code: i64, message: String) -> Answer {
    Answer::Error {
        status: 200,
        error: RpcError {
            code,
            message,
            data: None,
        },
    }
}

/// JSON-RPC `invalid params`.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC `invalid request`.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC `internal error`.
pub const INTERNAL_ERROR: i64 = -32603;
/// A `[limits]` quota refused the call (implementation-defined server error; `data.retryAfter`
/// says in how many seconds to retry).
pub const RATE_LIMITED: i64 = -32029;
/// MCP: request cancelled.
pub const REQUEST_CANCELLED: i64 = -32800;

impl Reject {
    /// The record kind and outcome this refusal is audited with.
    pub fn audit(&self) -> (EventKind, &'static str) {
        match self {
            Reject::TokenExpired => (EventKind::AuthFailure, "unauthenticated"),
            Reject::UnknownSession => (EventKind::AuthFailure, "unknown_session"),
            Reject::InvalidReasoning(_) => (EventKind::ValidationFailure, "invalid_reasoning"),
            Reject::Scope(_) => (EventKind::Denial, "denied"),
            Reject::ArgumentsNotObject | Reject::InvalidArguments(_) => {
                (EventKind::ValidationFailure, "invalid_arguments")
            }
            Reject::TooLarge(_) => (EventKind::ValidationFailure, "too_large"),
            Reject::Policy(_) => (EventKind::Denial, "denied"),
            Reject::Quota(_) => (EventKind::Denial, "rate_limited"),
            Reject::Approval(e) => match e {
                ApprovalError::Pending { .. } => (EventKind::Call, "approval_pending"),
                ApprovalError::Denied { .. } => (EventKind::Denial, "approval_denied"),
                ApprovalError::Expired { .. } => (EventKind::Denial, "approval_expired"),
                ApprovalError::UserDeclined => (EventKind::Denial, "user_declined"),
                ApprovalError::UserUnreachable => (EventKind::Denial, "user_unreachable"),
                ApprovalError::Unavailable(_) => (EventKind::Call, "refused"),
            },
            Reject::AuditUnavailable(_) => (EventKind::Call, "refused"),
            Reject::Downstream(e) => match e {
                DownstreamError::Timeout(..) => (EventKind::Call, "timeout"),
                DownstreamError::Cancelled => (EventKind::Call, "cancelled"),
                DownstreamError::AtCapacity { .. } => (EventKind::Call, "at_capacity"),
                DownstreamError::Unavailable(..)
                | DownstreamError::Transport(..)
                | DownstreamError::Mcp(_) => (EventKind::Call, "downstream_error"),
            },
            Reject::InvalidOutput(_) => (EventKind::ValidationFailure, "invalid_output"),
            Reject::Exchange(_) => (EventKind::Call, "exchange_failed"),
            Reject::Handoff(HandoffError::Ledger(_)) => (EventKind::Call, "refused"),
            Reject::Handoff(_) => (EventKind::Denial, "handoff_refused"),
        }
    }

    /// The rule(s) that decided, for denials.
    pub fn policy(&self) -> Option<String> {
        match self {
            Reject::Scope(d) => Some(
                match d {
                    Denied::Tenant | Denied::Region | Denied::Residency => WALL_POLICY,
                    Denied::Agent
                    | Denied::MissionExpired
                    | Denied::NotInMission
                    | Denied::Quarantined => SCOPE_POLICY,
                }
                .into(),
            ),
            Reject::Policy(p) => Some(p.policy()),
            Reject::Quota(_) => Some(QUOTA_POLICY.into()),
            Reject::TokenExpired
            | Reject::Approval(_)
            | Reject::UnknownSession
            | Reject::InvalidReasoning(_)
            | Reject::ArgumentsNotObject
            | Reject::TooLarge(_)
            | Reject::InvalidArguments(_)
            | Reject::AuditUnavailable(_)
            | Reject::Downstream(_)
            | Reject::InvalidOutput(_)
            | Reject::Exchange(_) => None,
            Reject::Handoff(_) => None,
        }
    }

    /// What the caller sees. A tool denied by scope answers exactly like an unknown tool.
    pub fn answer(&self, tool: &str) -> Answer {
        match self {
            Reject::TokenExpired => Answer::Error {
                status: 401,
                error: RpcError {
                    code: INVALID_REQUEST,
                    message: self.to_string(),
                    data: None,
                },
            },
            Reject::UnknownSession => Answer::Error {
                status: 404,
                error: RpcError {
                    code: INVALID_REQUEST,
                    message: self.to_string(),
                    data: None,
                },
            },
            Reject::Scope(_) | Reject::Policy(PolicyDenied::Tool { .. }) => {
                error(INVALID_PARAMS, format!("tool not found: {tool}"))
            }
            // No policy details reach the caller (STYLE §9).
            Reject::Policy(
                PolicyDenied::WrongMission
                | PolicyDenied::Call { .. }
                | PolicyDenied::Error { .. },
            ) => error(INVALID_PARAMS, "denied by policy".into()),
            Reject::InvalidReasoning(_)
            | Reject::Policy(PolicyDenied::ReasoningRequired(_))
            | Reject::ArgumentsNotObject
            | Reject::TooLarge(_) => {
                error(INVALID_PARAMS, self.to_string())
            }
            Reject::InvalidArguments(invalid) => error(
                INVALID_PARAMS,
                format!("invalid arguments for tool `{tool}`: {invalid}"),
            ),
            Reject::Quota(q) => Answer::Error {
                status: 200,
                error: RpcError {
                    code: RATE_LIMITED,
                    message: self.to_string(),
                    data: Some(serde_json::json!({
                        "retryAfter": q.retry_after_secs,
                        "limit": q.scope,
                        "callsPerMinute": q.per_minute,
                    })),
                },
            },
            // The agent reads these and acts (waits for the approver, retries, stops).
            Reject::Approval(e) => Answer::ToolError(e.to_string()),
            Reject::AuditUnavailable(_) => Answer::ToolError(
                "mandate refused the call: the audit store is unavailable, so write and irreversible tools are disabled"
                    .into(),
            ),
            Reject::Downstream(e) => match e {
                DownstreamError::Mcp(e) => Answer::Error {
                    status: 200,
                    error: e.clone(),
                },
                DownstreamError::Cancelled => error(REQUEST_CANCELLED, "cancelled".into()),
                // The tool could not run: the caller sees why, as a tool error the agent reads.
                DownstreamError::Timeout(..)
                | DownstreamError::Unavailable(..)
                | DownstreamError::AtCapacity { .. }
                | DownstreamError::Transport(..) => Answer::ToolError(e.to_string()),
            },
            Reject::InvalidOutput(invalid) => Answer::ToolError(format!(
                "tool `{tool}` returned output that violates its pinned schema: {invalid}"
            )),
            // The agent reads why (and whether to get the user); the call did not run.
            Reject::Exchange(e) => Answer::ToolError(format!(
                "mandate could not get a token for tool `{tool}`: {e}"
            )),
            // The agent reads why its handoff was refused (the edge, the depth) and can adapt.
            Reject::Handoff(_) | Reject::Policy(PolicyDenied::Handoff { .. }) => {
                Answer::ToolError(self.to_string())
            }
        }
    }
}

/// Kept for callers that map a [`Reject`] to a bare internal error.
pub fn internal(message: impl Into<String>) -> RpcError {
    RpcError {
        code: INTERNAL_ERROR,
        message: message.into(),
        data: None,
    }
}

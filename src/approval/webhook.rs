//! The approval webhook: each new approval request is POSTed as JSON to `[approvals]
//! webhook_url`, and decisions come back to `<public_url>/approvals/webhook`. Both directions are
//! signed with the shared secret (from the environment variable `[approvals] webhook_secret_env`):
//!
//! ```text
//! X-Mandate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! A receiver recomputes the HMAC over the timestamp, a dot and the exact body bytes, compares
//! in constant time, and refuses a timestamp outside its replay window (Mandate's own:
//! `[approvals] replay_window`, default 5 minutes). A replayed decision inside the window finds
//! the request no longer pending, so it changes nothing.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use super::{Decision, Request};
use crate::audit::{Auditor, Event};

/// Deliveries of one request to the webhook (1 s, then 2 s apart).
const ATTEMPTS: u32 = 3;

/// The signature header, both directions.
pub const SIGNATURE_HEADER: &str = "X-Mandate-Signature";
/// The path (under the public URL) that takes signed decisions.
pub const DECISION_PATH: &str = "/approvals/webhook";

/// The `X-Mandate-Signature` value for `body` at unix time `t`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(secret, t, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], t: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(e) => unreachable!("hmac accepts any key length: {e}"),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "missing `X-Mandate-Signature` header: sign the body as the README's Approvals section describes"
    )]
    Missing,
    #[error("malformed `X-Mandate-Signature` header: expected `t=<unix seconds>,v1=<hex hmac>`")]
    Malformed,
    #[error(
        "the signature's timestamp is outside the replay window: sign each request when it is sent"
    )]
    Stale,
    #[error(
        "the signature does not match the body: sign the exact body bytes with the shared secret"
    )]
    Mismatch,
}

/// Checks a signature header against `body`, with `t` within `window` of `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: u64,
    window: Duration,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            // Other schemes (a future `v2`) are ignored, as receivers of such headers do.
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(t) > window.as_secs() {
        return Err(SignatureError::Stale);
    }
    let matches = signatures
        .iter()
        .any(|s| mac(secret, t, body).verify_slice(s).is_ok());
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Why a webhook decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRefused {
    #[error("no approval webhook is configured: set `[approvals] webhook_url` in mandate.toml")]
    NotConfigured,
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error(
        "invalid decision body: {0} (expected {{\"id\": \"apr-…\", \"decision\": \"approve\" or \"deny\", \"approver\": \"…\", \"reason\": \"…\"}})"
    )]
    Body(String),
}

/// A decision a ticketing system posts back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDecision {
    /// The approval request id (`id` of the request body).
    pub id: String,
    /// `approve` or `deny`.
    pub decision: Decision,
    /// Who decided in the ticketing system (recorded; must not be the requester).
    pub approver: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Sends new requests to the webhook from one task, in order, retrying a few times. A request
/// the webhook never took (every attempt failed, or the queue was full) is audited
/// (`webhook_undelivered`): it stays pending and can still be decided with the CLI or the admin API.
pub struct Notifier {
    tx: tokio::sync::mpsc::Sender<(Vec<u8>, Event)>,
    audit: Auditor,
    decide_url: String,
    /// Verifies decisions coming back.
    secret: SecretString,
}

impl Notifier {
    /// Starts the sender task (call within the runtime).
    pub fn start(url: String, secret: SecretString, decide_url: String, audit: Auditor) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, Event)>(256);
        let kept = secret.clone();
        let auditor = audit.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default();
            while let Some((body, mut undelivered)) = rx.recv().await {
                let mut last = String::new();
                for attempt in 0..ATTEMPTS {
                    let t = crate::authn::unix_now();
                    let signature = sign(secret.expose_secret().as_bytes(), t, &body);
                    let sent = client
                        .post(&url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .header(SIGNATURE_HEADER, signature)
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            last.clear();
                            break;
                        }
                        Ok(r) => {
                            tracing::warn!(status = %r.status(), attempt, "approval webhook refused a request");
                            last = format!("the webhook answered {}", r.status());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, attempt, "approval webhook unreachable");
                            last = format!("the webhook is unreachable ({e})");
                        }
                    }
                    if attempt + 1 < ATTEMPTS {
                        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                    }
                }
                if !last.is_empty() {
                    undelivered.detail = Some(format!(
                        "approval request not delivered to the webhook after {ATTEMPTS} attempts: {last}; it stays pending: decide it with `mandate approvals` or the admin API"
                    ));
                    auditor.record(undelivered).await;
                }
            }
        });
        Self {
            tx,
            audit,
            decide_url,
            secret: kept,
        }
    }

    /// Checks a signed decision and reads it.
    pub fn verify_decision(
        &self,
        header: Option<&str>,
        body: &[u8],
        window: Duration,
    ) -> Result<WebhookDecision, WebhookRefused> {
        verify(
            self.secret.expose_secret().as_bytes(),
            header,
            body,
            crate::authn::unix_now(),
            window,
        )?;
        serde_json::from_slice(body).map_err(|e| WebhookRefused::Body(e.to_string()))
    }

    /// Queues the notification of a new request; `undelivered` is the audit record written if
    /// the webhook never takes it (its detail is filled in then).
    pub fn notify(&self, request: &Request, mut undelivered: Event) {
        let body = serde_json::json!({
            "type": "approval.requested",
            "id": request.id,
            "tenant": request.tenant,
            "mission": request.mission,
            "tool": request.tool,
            "downstream_tool": request.downstream_tool,
            "requester": {
                "issuer": request.issuer,
                "subject": request.subject,
                "agent": request.agent,
            },
            "arguments": serde_json::from_str::<serde_json::Value>(&request.arguments)
                .unwrap_or(serde_json::Value::Null),
            "call_digest": request.call,
            "policy_version": request.policy_version,
            "created_at": super::rfc3339(request.created_at),
            "expires_at": super::rfc3339(request.expires_at),
            "decide_url": self.decide_url,
        });
        match serde_json::to_vec(&body) {
            Ok(bytes) => {
                if let Err(full) = self.tx.try_send((bytes, undelivered)) {
                    tracing::warn!(approval = %request.id, "approval webhook queue full; request not sent");
                    let (_, mut undelivered) = full.into_inner();
                    undelivered.detail = Some(
                        "approval request not sent to the webhook: its queue is full; it stays pending: decide it with `mandate approvals` or the admin API".into(),
                    );
                    self.audit.record_now(undelivered);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise the approval webhook body");
                undelivered.detail = Some(format!(
                    "approval request not sent to the webhook: cannot serialise it ({e})"
                ));
                self.audit.record_now(undelivered);
            }
        }
    }
}

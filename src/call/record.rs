//! The audit record of one call: filled in stage by stage, finalized exactly once — by
//! [`CallRecord::finish`] with the pipeline's result, or as `cancelled` when the request is
//! dropped before a result (the caller went away).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::audit::{Auditor, Event, EventKind, Reasoning, digest_bytes};
use crate::mission::Scoped;
use crate::policy::Authorized;

use super::{CallRequest, Completed, Reject};

static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

/// Process-unique call ids: a random per-process prefix and a counter (no allocation of
/// randomness per call).
fn call_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| crate::authn::random_id().chars().take(12).collect());
    format!("{prefix}-{}", NEXT_CALL.fetch_add(1, Ordering::Relaxed))
}

/// Extracts the trace id from a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: Option<&str>) -> Option<String> {
    traceparent
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// A caller-supplied string as stored: itself when within `limit` bytes, else its first bytes
/// with its size and SHA-256, so the record stays bounded and still identifies it.
pub fn bounded(value: &str, limit: usize) -> String {
    if value.len() <= limit {
        return value.to_owned();
    }
    let mut end = limit.min(64);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… ({} bytes, sha256 {})",
        &value[..end],
        value.len(),
        digest_bytes(value.as_bytes())
    )
}

/// The record of one call; see the module docs.
pub struct CallRecord {
    audit: Auditor,
    event: Option<Event>,
    started: Instant,
}

impl CallRecord {
    /// Starts the record with what is known before any stage runs.
    pub fn start(audit: Auditor, mission: &str, request: &CallRequest) -> Self {
        let caller = &request.caller;
        let mut e = Event::new(EventKind::Call);
        e.call_id = Some(call_id());
        e.tenant = Some(caller.tenant.clone());
        e.subject = Some(caller.subject.clone());
        e.agent = Some(caller.agent.clone());
        e.token_id = Some(caller.token_id.clone());
        e.issuer = Some(caller.issuer.clone());
        e.actors = caller.actors.clone();
        e.mission = Some(mission.to_owned());
        e.request_id = Some(bounded(&request.request_id, super::limits::REQUEST_ID));
        e.trace_id = trace_id(request.traceparent.as_deref());
        e.tool = Some(bounded(&request.tool, super::limits::TOOL_NAME));
        if let Some(args) = &request.arguments {
            // Digest of the bytes as received: no re-serialisation on the hot path.
            e.arguments_digest = Some(digest_bytes(args.get().as_bytes()));
        }
        Self {
            audit,
            event: Some(e),
            started: Instant::now(),
        }
    }

    /// The call id linking this call's records.
    pub fn call_id(&self) -> Option<&str> {
        self.event.as_ref().and_then(|e| e.call_id.as_deref())
    }

    pub fn reasoning(&mut self, reasoning: Option<&Reasoning>) {
        if let Some(e) = &mut self.event {
            e.reasoning = reasoning.cloned();
        }
    }

    pub fn scoped(&mut self, scoped: &Scoped) {
        if let Some(e) = &mut self.event {
            e.downstream_tool = Some(scoped.tool().qualified());
            e.effect = Some(scoped.tool().effect().as_str().into());
        }
    }

    pub fn authorized(&mut self, authorized: &Authorized) {
        if let Some(e) = &mut self.event {
            e.argument_keys = authorized.arguments().keys().cloned().collect();
            e.decision = Some("allow".into());
            e.policy = Some(authorized.policies().join(", "));
        }
    }

    /// The approval the call waits for (pending, denied or expired).
    pub fn approval(&mut self, error: &crate::approval::ApprovalError) {
        use crate::approval::ApprovalError as E;
        if let Some(e) = &mut self.event {
            match error {
                E::Pending { id, .. } | E::Denied { id, .. } | E::Expired { id } => {
                    e.approval = Some(id.clone());
                }
                E::UserDeclined | E::UserUnreachable | E::Unavailable(_) => {}
            }
        }
    }

    /// The approval the call used, if it needed one.
    pub fn approved(&mut self, approved: &crate::approval::Approved) {
        if let Some(e) = &mut self.event {
            e.approval = approved.approval().map(str::to_owned);
        }
    }

    /// The downstream token the call carries (profile, audience, `jti`, expiry; never the token).
    pub fn exchange(&mut self, credentialed: &crate::exchange::Credentialed) {
        if let Some(e) = &mut self.event {
            e.exchange = credentialed.record();
            e.handoff = credentialed.handoff().cloned();
        }
    }

    pub fn output(&mut self, completed: &Completed) {
        if let Some(e) = &mut self.event {
            let raw = match completed {
                Completed::Result { raw, .. } | Completed::InputRequired(raw) => raw,
            };
            e.output_digest = Some(digest_bytes(raw.get().as_bytes()));
        }
    }

    /// The intent record of a write: the record so far, as `call_intent` / `pending`.
    pub fn intent(&self) -> Event {
        let mut intent = self
            .event
            .clone()
            .unwrap_or_else(|| Event::new(EventKind::CallIntent));
        intent.kind = EventKind::CallIntent;
        intent.outcome = Some("pending".into());
        intent
    }

    /// Finalizes the record with the pipeline's result.
    pub fn finish(&mut self, result: &Result<Completed, Reject>) {
        let audit = self.audit.clone();
        self.finish_with(result, |event| audit.record_now(event));
    }

    /// Finalizes the record with the pipeline's result and hands it to `write` (which may
    /// aggregate records a caller can produce at will).
    pub fn finish_with(&mut self, result: &Result<Completed, Reject>, write: impl FnOnce(Event)) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        match result {
            Ok(Completed::Result { is_error, .. }) => {
                event.outcome = Some(if *is_error { "tool_error" } else { "ok" }.into());
            }
            Ok(Completed::InputRequired(_)) => event.outcome = Some("input_required".into()),
            Err(reject) => {
                let (kind, outcome) = reject.audit();
                event.kind = kind;
                event.outcome = Some(outcome.into());
                event.detail = Some(match reject {
                    // The caller is not told why a handoff decision failed to evaluate; the
                    // audit record is.
                    Reject::Policy(crate::policy::PolicyDenied::Handoff { errors, .. })
                        if !errors.is_empty() =>
                    {
                        format!("{reject} (evaluation error: {})", errors.join("; "))
                    }
                    _ => reject.to_string(),
                });
                if let Some(policy) = reject.policy() {
                    event.decision = Some("deny".into());
                    event.policy = Some(policy);
                }
            }
        }
        event.latency_us = Some(self.started.elapsed().as_micros() as u64);
        write(event);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            event.outcome = Some("cancelled".into());
            event.detail = Some("the request ended before a result".into());
            event.latency_us = Some(self.started.elapsed().as_micros() as u64);
            self.audit.record_now(event);
        }
    }
}

/// Shared, for adapters that keep the record next to a response stream.
pub type SharedRecord = Arc<std::sync::Mutex<CallRecord>>;

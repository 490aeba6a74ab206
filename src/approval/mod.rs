//! Human approval bound to the exact call: the approval stage ([`Approvals::check`] →
//! [`Approved`]), approval requests and their decisions ([`Approvals::decide`]), and the signed
//! webhook that tells a ticketing system about new requests ([`webhook`]).
//!
//! A call needs approval when its tool's manifest says `approval = "approver"` (or `"user"`), or
//! a permitting policy asks for it ([`Authorized::approval_required`]; the stricter of the two
//! holds, `approver` over `user`: a policy never lowers the manifest's). An `approver` request is
//! bound to the digest of the exact call ([`call_digest`]: the user, agent, mission, tool, the
//! RFC 8785 canonical arguments and the policy version), expires after `[approvals] ttl`, and
//! approves one call: the identical call, retried after the approval, runs once; anything else
//! (other arguments, another user, a changed policy) needs a request of its own. Requests live
//! in the store ([`crate::store::ApprovalStore`]), so they survive a restart.
//!
//! Approvers are humans whose token carries the approver role (`[approvals] approver_role`), of
//! the request's tenant, and never the requester (separation of duties); the local admin (the
//! CLI with the store or the admin credential) and a webhook decision signed with the shared
//! secret may also decide. Every step is audited as an `approval` record.
//!
//! `approval = "user"` asks the user in their own client (MCP elicitation) instead.

pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::audit::{Auditor, Event, EventKind};
use crate::authn::{Caller, unix_now};
use crate::call::CallSink;
use crate::config::ApprovalSettings;
use crate::policy::Authorized;
use crate::store::{ApprovalStore, StorageError};

/// A call that needs no approval, or whose approval was just used (single use).
pub struct Approved {
    authorized: Authorized,
    approval: Option<String>,
}

impl Approved {
    pub fn authorized(&self) -> &Authorized {
        &self.authorized
    }
    pub fn into_authorized(self) -> Authorized {
        self.authorized
    }
    /// The approval request this call used, if it needed one.
    pub fn approval(&self) -> Option<&str> {
        self.approval.as_deref()
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    /// Approved and used by its one call.
    Used,
    Expired,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Used => "used",
            State::Expired => "expired",
        }
    }
}

/// One approval request, as stored (JSON) and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub state: State,
    /// Digest of the exact call ([`call_digest`]).
    pub call: String,
    pub tenant: String,
    pub issuer: String,
    pub subject: String,
    pub agent: String,
    pub mission: String,
    /// The tool as the mission exposes it.
    pub tool: String,
    /// `<manifest id>/<downstream tool name>`.
    pub downstream_tool: String,
    /// The canonical (RFC 8785) arguments, for the approver to read.
    pub arguments: String,
    pub policy_version: String,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<u64>,
}

impl Request {
    /// The state as of `now`: a pending or approved request past its expiry is expired.
    pub fn state_at(&self, now: u64) -> State {
        match self.state {
            State::Pending | State::Approved if now >= self.expires_at => State::Expired,
            s => s,
        }
    }
}

/// What the digest of a call covers. Field order does not matter: RFC 8785 sorts keys.
#[derive(Debug, Clone, Serialize)]
pub struct Binding<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub tenant: &'a str,
    pub agent: &'a str,
    pub mission: &'a str,
    pub tool: &'a str,
    pub downstream_tool: &'a str,
    pub arguments: &'a serde_json::Map<String, Value>,
    pub policy_version: &'a str,
}

impl Binding<'_> {
    /// SHA-256 (hex) of the binding's RFC 8785 canonical JSON.
    pub fn digest(&self) -> Result<String, String> {
        let canonical = serde_jcs::to_string(self).map_err(|e| e.to_string())?;
        Ok(crate::audit::digest_bytes(canonical.as_bytes()))
    }
}

/// The canonical arguments and the digest of the exact call.
pub fn call_digest(authorized: &Authorized, mission: &str) -> Result<(String, String), String> {
    let caller = authorized.caller();
    let tool = authorized.tool();
    let downstream_tool = tool.qualified();
    let digest = Binding {
        issuer: &caller.issuer,
        subject: &caller.subject,
        tenant: &caller.tenant,
        agent: &caller.agent,
        mission,
        tool: &tool.exposed,
        downstream_tool: &downstream_tool,
        arguments: authorized.arguments(),
        policy_version: authorized.policy_version(),
    }
    .digest()?;
    let arguments = serde_jcs::to_string(authorized.arguments()).map_err(|e| e.to_string())?;
    Ok((arguments, digest))
}

/// Why a call that needs approval does not run (now).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error(
        "approval required: this call waits for approval request `{id}`; ask an approver to run `mandate approvals approve {id}` (or decide it in your ticketing system), then retry this exact call (same tool and arguments) before {expires}; changed arguments need a new approval"
    )]
    Pending { id: String, expires: String },
    #[error(
        "approval request `{id}` was denied by `{by}`{reason}: do not retry this call; change it or ask an approver"
    )]
    Denied {
        id: String,
        by: String,
        reason: String,
    },
    #[error(
        "approval request `{id}` expired before it was used: retry this exact call to request a new approval"
    )]
    Expired { id: String },
    #[error("the user declined this call in their client: do not retry it unless the user asks")]
    UserDeclined,
    #[error(
        "this tool needs the user's confirmation, but the client cannot ask (it does not support MCP elicitation): use a client that supports elicitation"
    )]
    UserUnreachable,
    #[error(
        "approvals are unavailable (the approval store failed): the call was not run; try again later"
    )]
    Unavailable(String),
}

/// Why a decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("unknown approval request `{0}`: run `mandate approvals list`")]
    Unknown(String),
    #[error("approval request `{id}` is already {state}: only pending requests can be decided")]
    NotPending { id: String, state: &'static str },
    #[error("only users with the `{0}` role may decide approval requests")]
    NotApprover(String),
    #[error(
        "separation of duties: `{0}` made this request and cannot decide it; another approver must"
    )]
    OwnRequest(String),
    #[error("approval store unavailable: {0}")]
    Storage(String),
}

/// Approve or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny,
}

/// Who decides.
#[derive(Debug, Clone)]
pub enum Decider {
    /// The local operator (the CLI with the store or the admin credential).
    Admin,
    /// A human with their own verified token.
    Approver(Arc<Caller>),
    /// A ticketing system, by a decision signed with the webhook secret, naming the approver.
    Webhook { approver: String },
}

impl Decider {
    fn name(&self) -> String {
        match self {
            Decider::Admin => "admin (local)".into(),
            Decider::Approver(c) => c.subject.clone(),
            Decider::Webhook { approver } => format!("{approver} (webhook)"),
        }
    }
}

/// The approval service a broker shares across calls.
pub struct Approvals {
    store: Arc<dyn ApprovalStore>,
    settings: ApprovalSettings,
    audit: Auditor,
    /// Bumped on every decision: waiting calls look again.
    decided: tokio::sync::watch::Sender<u64>,
    webhook: Option<webhook::Notifier>,
}

impl Approvals {
    pub fn new(
        store: Arc<dyn ApprovalStore>,
        settings: ApprovalSettings,
        audit: Auditor,
        webhook: Option<webhook::Notifier>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            audit,
            decided: tokio::sync::watch::channel(0).0,
            webhook,
        })
    }

    pub fn settings(&self) -> &ApprovalSettings {
        &self.settings
    }

    /// Checks a signed webhook decision and applies it.
    pub async fn decide_from_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Result<Request, DecideError>, webhook::WebhookRefused> {
        let Some(notifier) = &self.webhook else {
            return Err(webhook::WebhookRefused::NotConfigured);
        };
        let d = notifier.verify_decision(signature, body, self.settings.replay_window)?;
        let decider = Decider::Webhook {
            approver: d.approver,
        };
        Ok(self.decide(&d.id, d.decision, &decider, d.reason).await)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ApprovalStore) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(StorageError::new)?
    }

    async fn load(&self, id: &str) -> Result<Option<(Vec<u8>, Request)>, StorageError> {
        let id = id.to_owned();
        let bytes = self.blocking(move |s| s.get(&id)).await?;
        match bytes {
            None => Ok(None),
            Some(b) => {
                let r = serde_json::from_slice(&b).map_err(StorageError::new)?;
                Ok(Some((b, r)))
            }
        }
    }

    /// Replaces `old` (the stored bytes) with `new`; false on a lost race.
    async fn swap(&self, old: Option<Vec<u8>>, new: &Request) -> Result<bool, StorageError> {
        let bytes = serde_json::to_vec(new).map_err(StorageError::new)?;
        let id = new.id.clone();
        self.blocking(move |s| s.compare_and_swap(&id, old.as_deref(), &bytes))
            .await
    }

    /// Every request, oldest first. Requests found expired are marked (and audited) now.
    pub async fn list(&self) -> Result<Vec<Request>, StorageError> {
        Ok(self.list_marking().await?.0)
    }

    /// [`Approvals::list`], and how many requests it found expired.
    async fn list_marking(&self) -> Result<(Vec<Request>, usize), StorageError> {
        let now = unix_now();
        let entries = self.blocking(|s| s.list()).await?;
        let mut out = Vec::with_capacity(entries.len());
        let mut expired = 0;
        for (_, bytes) in entries {
            let mut r: Request = serde_json::from_slice(&bytes).map_err(StorageError::new)?;
            if r.state != r.state_at(now) {
                self.expire(bytes, r.clone()).await;
                r.state = State::Expired;
                expired += 1;
            }
            out.push(r);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok((out, expired))
    }

    /// Housekeeping, run every minute while serving: marks (and audits) requests that expired
    /// since they were last looked at, and forgets finished ones (used, denied, expired) more
    /// than `[approvals] retain` past their expiry. Returns (expired, forgotten).
    pub async fn sweep(&self) -> Result<(usize, usize), StorageError> {
        let (requests, expired) = self.list_marking().await?;
        let now = unix_now();
        let retain = self.settings.retain.as_secs();
        let mut forgotten = 0;
        for r in requests {
            let finished = matches!(r.state, State::Used | State::Denied | State::Expired);
            if finished && now >= r.expires_at.saturating_add(retain) {
                let (id, call) = (r.id, r.call);
                self.blocking(move |s| s.remove(&id, &call)).await?;
                forgotten += 1;
            }
        }
        Ok((expired, forgotten))
    }

    /// The approval stage: lets the call through when it needs no approval or its approval is
    /// granted (and uses that approval up); otherwise requests one and waits up to
    /// `[approvals] wait` for a decision.
    pub async fn check(
        &self,
        authorized: Authorized,
        mission: &str,
        sink: &Arc<dyn CallSink>,
        cancel: &CancellationToken,
    ) -> Result<Approved, ApprovalError> {
        match authorized.approval_required() {
            None => Ok(Approved {
                authorized,
                approval: None,
            }),
            Some("user") => self.confirm_with_user(authorized, sink).await,
            Some(_) => self.check_approver(authorized, mission, cancel).await,
        }
    }

    async fn check_approver(
        &self,
        authorized: Authorized,
        mission: &str,
        cancel: &CancellationToken,
    ) -> Result<Approved, ApprovalError> {
        let unavailable = |e: StorageError| ApprovalError::Unavailable(e.to_string());
        let (arguments, call) =
            call_digest(&authorized, mission).map_err(ApprovalError::Unavailable)?;
        let key = call.clone();
        let latest = self
            .blocking(move |s| s.latest_for(&key))
            .await
            .map_err(unavailable)?;
        let now = unix_now();
        let mut current = None;
        if let Some(id) = &latest
            && let Some((bytes, request)) = self.load(id).await.map_err(unavailable)?
        {
            match request.state_at(now) {
                State::Approved => return self.use_approval(authorized, bytes, request).await,
                State::Pending => current = Some(request),
                // A denial stands until the request would have expired; then the call may ask again.
                State::Denied if now < request.expires_at => return Err(denied(&request)),
                State::Denied => {}
                State::Expired => {
                    self.expire(bytes, request.clone()).await;
                    if request.state == State::Pending || request.state == State::Approved {
                        return Err(ApprovalError::Expired { id: request.id });
                    }
                }
                // Used: the identical call needs a new approval.
                State::Used => {}
            }
        }
        let request = match current {
            Some(r) => r,
            None => self
                .create(&authorized, mission, arguments, call, latest.as_deref())
                .await
                .map_err(unavailable)?,
        };
        self.wait(authorized, request, cancel).await
    }

    async fn create(
        &self,
        authorized: &Authorized,
        mission: &str,
        arguments: String,
        call: String,
        latest: Option<&str>,
    ) -> Result<Request, StorageError> {
        let caller = authorized.caller();
        let now = unix_now();
        let request = Request {
            id: format!("apr-{}", &crate::authn::random_id()[..20]),
            state: State::Pending,
            call,
            tenant: caller.tenant.clone(),
            issuer: caller.issuer.clone(),
            subject: caller.subject.clone(),
            agent: caller.agent.clone(),
            mission: mission.to_owned(),
            tool: authorized.tool().exposed.clone(),
            downstream_tool: authorized.tool().qualified(),
            arguments,
            policy_version: authorized.policy_version().to_owned(),
            created_at: now,
            expires_at: now + self.settings.ttl.as_secs(),
            decided_by: None,
            decided_at: None,
            reason: None,
            used_at: None,
        };
        self.swap(None, &request).await?;
        let (call, id, expected) = (
            request.call.clone(),
            request.id.clone(),
            latest.map(str::to_owned),
        );
        let claimed = self
            .blocking(move |s| s.claim_latest(&call, expected.as_deref(), &id))
            .await?;
        if !claimed {
            // An identical call created its request first: this call waits for that one, and
            // this request (never announced) is void.
            let mut void = request.clone();
            void.state = State::Expired;
            let bytes = serde_json::to_vec(&request).map_err(StorageError::new)?;
            self.swap(Some(bytes), &void).await?;
            let call = request.call.clone();
            let winner = self.blocking(move |s| s.latest_for(&call)).await?;
            if let Some(id) = winner
                && let Some((_, r)) = self.load(&id).await?
            {
                return Ok(r);
            }
            return Err(StorageError::new(
                "the approval request index changed under this call",
            ));
        }
        let mut event = self.event(&request, "requested");
        event.detail = Some(format!(
            "approval requested for `{}`; expires {}",
            request.tool,
            rfc3339(request.expires_at)
        ));
        self.record(event).await;
        if let Some(webhook) = &self.webhook {
            webhook.notify(&request, self.event(&request, "webhook_undelivered"));
        }
        Ok(request)
    }

    async fn wait(
        &self,
        authorized: Authorized,
        request: Request,
        cancel: &CancellationToken,
    ) -> Result<Approved, ApprovalError> {
        let deadline = tokio::time::Instant::now() + self.settings.wait;
        let mut decided = self.decided.subscribe();
        let pending = |r: &Request| ApprovalError::Pending {
            id: r.id.clone(),
            expires: rfc3339(r.expires_at),
        };
        loop {
            let Some((bytes, current)) = self
                .load(&request.id)
                .await
                .map_err(|e| ApprovalError::Unavailable(e.to_string()))?
            else {
                return Err(pending(&request));
            };
            match current.state_at(unix_now()) {
                State::Pending => {}
                State::Approved => return self.use_approval(authorized, bytes, current).await,
                State::Denied => return Err(denied(&current)),
                State::Expired => {
                    self.expire(bytes, current.clone()).await;
                    return Err(ApprovalError::Expired { id: current.id });
                }
                // Another identical call used it first: this one needs its own approval.
                State::Used => return Err(pending(&current)),
            }
            let until_expiry = Duration::from_secs(current.expires_at.saturating_sub(unix_now()));
            tokio::select! {
                changed = decided.changed() => {
                    if changed.is_err() {
                        return Err(pending(&current));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(pending(&current)),
                _ = tokio::time::sleep(until_expiry) => {}
                _ = cancel.cancelled() => return Err(pending(&current)),
            }
        }
    }

    /// Marks an approved request used (single use: the compare-and-swap lets one call win).
    async fn use_approval(
        &self,
        authorized: Authorized,
        bytes: Vec<u8>,
        request: Request,
    ) -> Result<Approved, ApprovalError> {
        let mut used = request.clone();
        used.state = State::Used;
        used.used_at = Some(unix_now());
        let won = self
            .swap(Some(bytes), &used)
            .await
            .map_err(|e| ApprovalError::Unavailable(e.to_string()))?;
        if !won {
            return Err(ApprovalError::Pending {
                id: request.id,
                expires: rfc3339(request.expires_at),
            });
        }
        self.record(self.event(&used, "used")).await;
        Ok(Approved {
            authorized,
            approval: Some(used.id),
        })
    }

    /// Records that a request expired (once: whoever wins the swap).
    async fn expire(&self, bytes: Vec<u8>, request: Request) {
        if !matches!(request.state, State::Pending | State::Approved) {
            return;
        }
        let mut expired = request;
        expired.state = State::Expired;
        if let Ok(true) = self.swap(Some(bytes), &expired).await {
            self.record(self.event(&expired, "expired")).await;
        }
    }

    /// `approval = "user"`: the user confirms the call in their own client.
    async fn confirm_with_user(
        &self,
        authorized: Authorized,
        sink: &Arc<dyn CallSink>,
    ) -> Result<Approved, ApprovalError> {
        let arguments = serde_jcs::to_string(authorized.arguments()).unwrap_or_default();
        let params = serde_json::json!({
            "message": format!(
                "Allow the agent `{}` to call `{}` with {}?",
                authorized.caller().agent,
                authorized.tool().exposed,
                crate::call::record::bounded(&arguments, 2048)
            ),
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "confirm": { "type": "boolean", "title": "Allow this call" }
                },
                "required": ["confirm"]
            }
        });
        let answer = match sink.can_elicit() {
            Some(false) => Err(()),
            Some(true) | None => sink
                .ask("elicitation/create", Some(params))
                .await
                .map_err(|_| ()),
        };
        let mut event = Event::new(EventKind::Approval);
        let caller = authorized.caller();
        event.tenant = Some(caller.tenant.clone());
        event.subject = Some(caller.subject.clone());
        event.agent = Some(caller.agent.clone());
        event.tool = Some(authorized.tool().exposed.clone());
        let result = match answer {
            Err(_) => Err(ApprovalError::UserUnreachable),
            Ok(v) => {
                let accepted = v.get("action").and_then(Value::as_str) == Some("accept")
                    && v.pointer("/content/confirm").and_then(Value::as_bool) == Some(true);
                if accepted {
                    Ok(())
                } else {
                    Err(ApprovalError::UserDeclined)
                }
            }
        };
        event.outcome = Some(
            match &result {
                Ok(()) => "user_confirmed",
                Err(ApprovalError::UserUnreachable) => "user_unreachable",
                Err(_) => "user_declined",
            }
            .into(),
        );
        self.record(event).await;
        result.map(|()| Approved {
            authorized,
            approval: None,
        })
    }

    /// Approves or denies a pending request. `Approver` deciders must hold the approver role, be
    /// of the request's tenant (others are told the request does not exist) and not be its
    /// requester; a webhook's named approver must not be the requester either.
    pub async fn decide(
        &self,
        id: &str,
        decision: Decision,
        decider: &Decider,
        reason: Option<String>,
    ) -> Result<Request, DecideError> {
        let storage = |e: StorageError| DecideError::Storage(e.to_string());
        let Some((bytes, request)) = self.load(id).await.map_err(storage)? else {
            return Err(DecideError::Unknown(id.to_owned()));
        };
        match decider {
            Decider::Admin => {}
            Decider::Approver(caller) => {
                if caller.tenant != request.tenant {
                    return Err(DecideError::Unknown(id.to_owned()));
                }
                if !caller.roles.contains(&self.settings.approver_role) {
                    return Err(DecideError::NotApprover(
                        self.settings.approver_role.clone(),
                    ));
                }
                if caller.subject == request.subject && caller.issuer == request.issuer {
                    return Err(DecideError::OwnRequest(caller.subject.clone()));
                }
            }
            Decider::Webhook { approver } => {
                if *approver == request.subject {
                    return Err(DecideError::OwnRequest(approver.clone()));
                }
            }
        }
        let now = unix_now();
        match request.state_at(now) {
            State::Pending => {}
            State::Expired => {
                self.expire(bytes, request.clone()).await;
                return Err(DecideError::NotPending {
                    id: id.to_owned(),
                    state: "expired",
                });
            }
            s @ (State::Approved | State::Denied | State::Used) => {
                return Err(DecideError::NotPending {
                    id: id.to_owned(),
                    state: s.as_str(),
                });
            }
        }
        let mut decided = request;
        decided.state = match decision {
            Decision::Approve => State::Approved,
            Decision::Deny => State::Denied,
        };
        decided.decided_by = Some(decider.name());
        decided.decided_at = Some(now);
        decided.reason = reason.map(|r| crate::call::record::bounded(&r, 1024));
        if !self.swap(Some(bytes), &decided).await.map_err(storage)? {
            return Err(DecideError::NotPending {
                id: id.to_owned(),
                state: "decided",
            });
        }
        let mut event = self.event(&decided, decided.state.as_str());
        event.detail = Some(format!(
            "{} by {}{}",
            decided.state.as_str(),
            decider.name(),
            decided
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ));
        self.record(event).await;
        self.decided.send_modify(|n| *n += 1);
        Ok(decided)
    }

    fn event(&self, request: &Request, outcome: &str) -> Event {
        let mut e = Event::new(EventKind::Approval);
        e.tenant = Some(request.tenant.clone());
        e.subject = Some(request.subject.clone());
        e.agent = Some(request.agent.clone());
        e.mission = Some(request.mission.clone());
        e.tool = Some(request.tool.clone());
        e.downstream_tool = Some(request.downstream_tool.clone());
        e.arguments_digest = Some(crate::audit::digest_bytes(request.arguments.as_bytes()));
        e.policy = Some(format!("policy-version:{}", request.policy_version));
        e.approval = Some(request.id.clone());
        e.outcome = Some(outcome.into());
        e
    }

    async fn record(&self, event: Event) {
        if let Err(e) = self.audit.record_durable(event).await {
            tracing::error!(error = %e, "audit unavailable for an approval record");
        }
    }
}

fn denied(request: &Request) -> ApprovalError {
    ApprovalError::Denied {
        id: request.id.clone(),
        by: request.decided_by.clone().unwrap_or_default(),
        reason: request
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    }
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

#[cfg(test)]
mod tests;

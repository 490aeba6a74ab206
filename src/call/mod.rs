//! The call core: one transport-free tool-call pipeline.
//!
//! A [`CallRequest`] (the verified caller, the tool name, the arguments as the raw JSON the
//! caller sent, its reasoning, trace context, cancellation and a [`CallSink`] for what the
//! downstream sends back while the call runs) goes in; a [`Completed`] result or a [`Reject`]
//! comes out. The rmcp handler, the native HTTP fast path, stdio and (later) the resumption of a
//! call after approval are thin adapters over [`run`].
//!
//! The stages read top to bottom in [`stages`], each producing the permit the next one needs:
//!
//! ```text
//! authn (fresh token) → scope → Scoped → validate → Valid → policy → Authorized → quota
//!   → approval → Approved → journal → Journaled → exchange → Credentialed → downstream
//!   → output check → Completed
//! ```
//!
//! Every permit has private fields and one constructor in its stage's module, and carries the
//! mission and the resolved downstream it was checked against; the downstream accepts only a
//! [`Credentialed`](crate::exchange::Credentialed) call. Every request ends in exactly one audit
//! record ([`record::CallRecord`] finalizes on every exit path, including cancellation).

pub mod journal;
pub mod record;
pub mod reject;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::audit::{Auditor, Reasoning};
use crate::authn::Caller;
use crate::downstream::Downstream;
use crate::mission::{self, ExposedTool, MissionRuntime};
use crate::{downstream, exchange, policy};

pub use reject::{Answer, Reject};

/// `_meta` key under which agents pass their reasoning.
pub const REASONING_META: &str = "io.mandate/reasoning";

/// Size limits on caller-supplied data, checked before anything is stored.
pub mod limits {
    /// Longest tool name, in bytes.
    pub const TOOL_NAME: usize = 256;
    /// Largest reasoning object, in bytes of JSON.
    pub const REASONING: usize = 16 * 1024;
    /// Most top-level argument names.
    pub const ARGUMENTS: usize = 256;
    /// Longest argument name, in bytes.
    pub const ARGUMENT_NAME: usize = 256;
    /// Longest request id kept in a record, in bytes.
    pub const REQUEST_ID: usize = 128;
}

/// A JSON-RPC error as a downstream or a caller returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

/// A future the sink returns for a server→client request.
pub type Asked = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;
/// A future the sink returns while relaying a notification (awaited, so order is kept).
pub type Relaying<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where what a downstream sends about a call goes: the calling session, and nobody else.
///
/// Implemented by each inbound adapter (the rmcp peer of a session, the native SSE writer).
pub trait CallSink: Send + Sync {
    /// The upstream session the call belongs to (one principal).
    fn session(&self) -> u64;
    /// The principal (tenant, subject, agent) the call belongs to, as one key.
    fn principal(&self) -> &str;
    /// Whether the caller asked for progress (sent a progress token).
    fn wants_progress(&self) -> bool;
    /// A `notifications/progress` for this call; `params` lacks `progressToken` (the sink adds
    /// the caller's own).
    fn progress(&self, params: serde_json::Map<String, Value>) -> Relaying<'_>;
    /// A `notifications/message` caused by this call (the sink applies the caller's level).
    fn log(&self, params: serde_json::Map<String, Value>) -> Relaying<'_>;
    /// A server→client request (sampling, elicitation, roots) caused by this call.
    fn ask(&self, method: &str, params: Option<Value>) -> Asked;
    /// Whether the caller declared MCP elicitation support (`None`: not known to this sink).
    fn can_elicit(&self) -> Option<bool> {
        None
    }
}

/// One tool call as an adapter hands it to the core.
pub struct CallRequest {
    pub caller: Arc<Caller>,
    /// The tool name as the caller sent it (the mission's exposed name).
    pub tool: String,
    /// `params.arguments` exactly as received (`None` when absent).
    pub arguments: Option<Box<RawValue>>,
    /// `params._meta["io.mandate/reasoning"]` as received.
    pub reasoning: Option<Box<RawValue>>,
    /// The caller's JSON-RPC request id (for the audit record).
    pub request_id: String,
    /// The caller's W3C `traceparent`, if it sent one.
    pub traceparent: Option<String>,
    pub cancel: CancellationToken,
    pub sink: Arc<dyn CallSink>,
}

/// The key of a principal (issuer, tenant, subject, agent) for [`CallSink::principal`]; a
/// per-principal downstream runs one instance per key.
pub fn principal_key(caller: &Caller) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        caller.issuer, caller.tenant, caller.subject, caller.agent
    )
}

/// What the broker shares across calls.
#[derive(Clone)]
pub struct Core {
    pub audit: Auditor,
    /// Mints handoff tokens for handoff downstreams (none: such calls are refused).
    pub handoffs: Option<Arc<crate::handoff::Handoffs>>,
    /// Approval requests and decisions.
    pub approvals: Arc<crate::approval::Approvals>,
    /// `[limits]` token buckets.
    pub quotas: Arc<crate::quota::Quotas>,
    /// The agent registry: what policy knows of the calling agent (`Agent` owner and status).
    pub agents: Option<Arc<crate::agents::Registry>>,
}

/// A mission with its resolved downstream connections: what the pipeline runs against.
pub struct Mission {
    pub runtime: Arc<MissionRuntime>,
    downstreams: BTreeMap<String, Arc<Downstream>>,
}

impl Mission {
    /// Resolves every downstream the mission names from the pool.
    pub fn new(runtime: Arc<MissionRuntime>, pool: &downstream::Pool) -> Result<Self, String> {
        let m = &runtime.mission;
        let mut downstreams = BTreeMap::new();
        for manifest in m.manifest_ids() {
            let key = downstream::GroupKey {
                tenant: m.tenant.clone(),
                env: m.env.clone(),
                manifest: manifest.clone(),
            };
            let d = pool
                .get(&key)
                .ok_or_else(|| format!("no downstream connection for `{key}`"))?;
            downstreams.insert(manifest, d);
        }
        Ok(Self {
            runtime,
            downstreams,
        })
    }

    pub fn id(&self) -> &str {
        &self.runtime.mission.id
    }

    /// The downstream serving a tool, when it is connected to this mission.
    pub fn downstream_of(&self, tool: &ExposedTool) -> Option<&Arc<Downstream>> {
        self.downstreams.get(&tool.manifest)
    }

    /// Whether a tool is hidden from callers (quarantined, or no downstream).
    pub fn quarantined(&self, tool: &ExposedTool) -> bool {
        self.downstream_of(tool)
            .is_none_or(|d| d.is_quarantined(&tool.tool))
    }

    /// Downstreams whose resources the mission passes through.
    pub fn resource_downstreams(&self) -> Vec<Arc<Downstream>> {
        self.named(&self.runtime.mission.resources)
    }

    /// Downstreams whose prompts the mission passes through.
    pub fn prompt_downstreams(&self) -> Vec<Arc<Downstream>> {
        self.named(&self.runtime.mission.prompts)
    }

    /// Every downstream of the mission.
    pub fn downstreams(&self) -> impl Iterator<Item = &Arc<Downstream>> {
        self.downstreams.values()
    }

    fn named(&self, ids: &[String]) -> Vec<Arc<Downstream>> {
        ids.iter()
            .filter_map(|m| self.downstreams.get(m).cloned())
            .collect()
    }
}

/// A finished call: the downstream's result object, checked, as raw JSON.
#[derive(Debug)]
pub enum Completed {
    /// A `CallToolResult`; `is_error` when the tool says it failed (`isError: true`).
    Result { raw: Box<RawValue>, is_error: bool },
    /// A 2026-07-28 `InputRequiredResult`: the caller must retry with input responses.
    InputRequired(Box<RawValue>),
}

/// Runs one tool call through every stage; exactly one audit record results.
pub async fn run(
    core: &Core,
    mission: &Mission,
    request: CallRequest,
) -> Result<Completed, Reject> {
    let mut record = record::CallRecord::start(core.audit.clone(), mission.id(), &request);
    let result = stages(core, mission, request, &mut record).await;
    match &result {
        Err(Reject::Quota(refused)) => {
            record.finish_with(&result, |e| core.quotas.audit_refusal(refused, e))
        }
        _ => record.finish(&result),
    }
    result
}

/// The pipeline, top to bottom.
async fn stages(
    core: &Core,
    mission: &Mission,
    request: CallRequest,
    record: &mut record::CallRecord,
) -> Result<Completed, Reject> {
    let CallRequest {
        caller,
        tool,
        arguments,
        reasoning,
        traceparent,
        cancel,
        sink,
        ..
    } = request;
    // 1. authn: the caller was verified by the adapter; its token must still be fresh.
    if caller.expired() {
        return Err(Reject::TokenExpired);
    }
    if tool.len() > limits::TOOL_NAME {
        return Err(Reject::TooLarge(format!(
            "the tool name is {} bytes; the limit is {}",
            tool.len(),
            limits::TOOL_NAME
        )));
    }
    let reasoning = parse_reasoning(reasoning.as_deref())?;
    record.reasoning(reasoning.as_ref());

    // 2. scope
    let scoped = mission::scope(mission, caller, &tool)?;
    record.scoped(&scoped);

    // 3. validate
    let valid = mission::validate(scoped, arguments)?;

    // 4. policy
    let agent = core
        .agents
        .as_ref()
        .and_then(|registry| registry.policy_facts(&valid.caller().agent));
    let authorized = policy::authorize(&mission.runtime, valid, reasoning.as_ref(), agent)?;
    record.authorized(&authorized);

    // 4a. quota: the mission's `[limits]` token buckets.
    core.quotas.check(
        mission.id(),
        &mission.runtime.mission.limits,
        authorized.caller(),
        &authorized.tool().exposed,
    )?;

    // 4b. approval: a human approved this exact call, or it needs none.
    let approved = core
        .approvals
        .check(authorized, mission.id(), &sink, &cancel)
        .await
        .inspect_err(|e| record.approval(e))?;
    record.approved(&approved);

    // 5. journal: a write's intent is durable before anything leaves.
    let journaled = journal::write_intent(&core.audit, approved, record).await?;

    // 6. exchange: the per-call downstream credential.
    let credentialed = exchange::credential(journaled, core.handoffs.as_deref()).await?;
    record.exchange(&credentialed);

    // 7. downstream
    let tool = credentialed.tool().clone();
    let raw = downstream::call(credentialed, sink, traceparent.as_deref(), cancel).await?;

    // 8. output
    let completed = mission::check_output(&tool, raw)?;
    record.output(&completed);
    Ok(completed)
}

fn parse_reasoning(raw: Option<&RawValue>) -> Result<Option<Reasoning>, Reject> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.get().len() > limits::REASONING {
        return Err(Reject::TooLarge(format!(
            "`_meta[\"{REASONING_META}\"]` is {} bytes; the limit is {}",
            raw.get().len(),
            limits::REASONING
        )));
    }
    serde_json::from_str::<Reasoning>(raw.get())
        .map(Some)
        .map_err(|e| Reject::InvalidReasoning(e.to_string()))
}

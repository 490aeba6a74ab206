//! Policy: the decision stage, and [`Authorized`], the only thing a downstream accepts.
//!
//! Today the decision is the mission's scope plus its rules that do not need Cedar (reasoning
//! required for some effects). Cedar policies (`<mission>.cedar`) plug in here: they will decide
//! from the same [`Valid`] call, and any evaluation error will deny.

use std::sync::Arc;

use crate::audit::Reasoning;
use crate::authn::Caller;
use crate::downstream::Downstream;
use crate::mission::{ExposedTool, MissionRuntime, Valid};

/// Identifies the rule that decided, for the audit record.
pub const SCOPE_POLICY: &str = "mandate:mission-scope";
pub const REASONING_POLICY: &str = "mandate:require-reasoning";

/// A call that passed every check before the downstream.
pub struct Authorized {
    valid: Valid,
    policy: &'static str,
}

impl Authorized {
    pub fn caller(&self) -> &Arc<Caller> {
        self.valid.caller()
    }
    pub fn tool(&self) -> &Arc<ExposedTool> {
        self.valid.tool()
    }
    pub fn downstream(&self) -> &Arc<Downstream> {
        self.valid.downstream()
    }
    pub fn arguments(&self) -> &serde_json::Map<String, serde_json::Value> {
        self.valid.arguments()
    }
    pub fn raw_arguments(&self) -> &str {
        self.valid.raw_arguments()
    }
    pub fn policy(&self) -> &'static str {
        self.policy
    }
    /// The mission the call was checked against.
    pub fn mission(&self) -> &Arc<MissionRuntime> {
        self.valid.mission()
    }
    /// Whether the call needs approval before it runs, and by whom: `approver` (a human
    /// approver) or `user` (the user, in their own client). From the tool's manifest here; a
    /// permitting Cedar policy's `@approval(...)` annotation adds to it with the Cedar engine.
    pub fn approval_required(&self) -> Option<&str> {
        match self.tool().spec.approval.as_str() {
            "none" => None,
            mode => Some(mode),
        }
    }
    /// The version of the policy that decided: bound into approvals, so a policy change makes
    /// earlier approvals void.
    pub fn policy_version(&self) -> &str {
        &self.valid.mission().policy_version
    }
}

/// The policy version of a mission: the SHA-256 of its `<name>.cedar` text beside the manifest,
/// or of its id when it has none. Computed once, when the mission loads.
pub fn policy_version(mission: &crate::config::Mission) -> String {
    match std::fs::read(mission.path.with_extension("cedar")) {
        Ok(text) => crate::audit::digest_bytes(&text),
        Err(_) => crate::audit::digest_bytes(mission.id.as_bytes()),
    }
}

/// Why the policy stage denied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyDenied {
    #[error(
        "this mission requires reasoning for `{0}` tools: send `_meta[\"io.mandate/reasoning\"]` with at least a `rationale`"
    )]
    ReasoningRequired(&'static str),
    /// A permit checked against another mission (a bug in an adapter; never allowed).
    #[error("denied by policy")]
    WrongMission,
}

impl PolicyDenied {
    pub fn policy(&self) -> &'static str {
        match self {
            PolicyDenied::ReasoningRequired(_) => REASONING_POLICY,
            PolicyDenied::WrongMission => SCOPE_POLICY,
        }
    }
}

/// Stage 4: decide. The call must be for this mission (permits are bound to theirs).
pub fn authorize(
    mission: &MissionRuntime,
    valid: Valid,
    reasoning: Option<&Reasoning>,
) -> Result<Authorized, PolicyDenied> {
    if valid.mission().mission.id != mission.mission.id {
        return Err(PolicyDenied::WrongMission);
    }
    let effect = valid.tool().effect();
    if mission.mission.require_reasoning.contains(&effect) {
        let has_rationale = reasoning
            .and_then(|r| r.rationale.as_deref())
            .is_some_and(|r| !r.trim().is_empty());
        if !has_rationale {
            return Err(PolicyDenied::ReasoningRequired(effect.as_str()));
        }
    }
    Ok(Authorized {
        valid,
        policy: SCOPE_POLICY,
    })
}

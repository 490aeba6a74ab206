//! Policy: the hard walls, the Cedar decision stage, and [`Authorized`], the only thing a
//! downstream accepts.
//!
//! Every mission has a Cedar engine ([`MissionPolicy`]): a schema generated from the mission and
//! its pinned tools ([`schema`]), the policies of `<mission>.cedar` parsed and strictly validated
//! once at load, and the static entities. Per call only the `User`, the `Agent` and the context
//! are built. Deny by default: a mission without policies denies every call, and any evaluation
//! error denies. The hard walls ([`walls`]: tenant, region, residency) are checked in code
//! before policy, so no policy can open them.

pub mod cases;
pub mod clock;
pub mod engine;
mod fast;
pub mod risk;
pub mod schema;
pub mod walls;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use engine::{AgentFacts, Decision, MissionPolicy, Query, policy_path};
pub use risk::RiskSignals;

use crate::audit::Reasoning;
use crate::authn::Caller;
use crate::config::diag::Warning;
use crate::config::{Config, Mission};
use crate::downstream::Downstream;
use crate::mission::{ExposedTool, MissionRuntime, Valid};

/// Identifies the rule that decided, for the audit record.
pub const SCOPE_POLICY: &str = "mandate:mission-scope";
pub const REASONING_POLICY: &str = "mandate:require-reasoning";
/// A hard wall (tenant, region, residency) refused the call.
pub const WALL_POLICY: &str = "mandate:wall";
/// No policy permitted the call (deny by default).
pub const DEFAULT_DENY: &str = "mandate:default-deny";

/// A call that passed every check before the downstream.
pub struct Authorized {
    valid: Valid,
    policies: Vec<String>,
    approval: Option<String>,
    version: String,
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
    /// The policies that permitted the call (`<mission-id>.cedar:<policy id>`).
    pub fn policies(&self) -> &[String] {
        &self.policies
    }
    /// Whether the call needs approval before it runs, and by whom: `approver` (a human
    /// approver) or `user` (the user, in their own client) — the strictest of a permitting
    /// policy's `@approval(...)` and the tool's manifest (`approval = "approver" | "user"`):
    /// a policy can add or raise an approval, never lower the manifest's.
    pub fn approval_required(&self) -> Option<&str> {
        self.approval.as_deref()
    }
    /// The mission the call was checked against.
    pub fn mission(&self) -> &Arc<MissionRuntime> {
        self.valid.mission()
    }
    /// A digest of the mission's loaded policy set (approvals bind to it).
    pub fn policy_version(&self) -> &str {
        &self.version
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
    /// No context or arguments could permit this caller this tool: answered like an unknown tool.
    #[error("denied by policy: no policy permits this tool to this caller")]
    Tool { policies: Vec<String> },
    /// Denied for this call (its arguments or context).
    #[error("denied by policy")]
    Call { policies: Vec<String> },
    /// The decision could not be evaluated: fail closed.
    #[error("denied by policy: evaluation error: {}", errors.join("; "))]
    Error { errors: Vec<String> },
    /// The call would hand work to mission `to`, and no policy of this mission permits the
    /// Cedar action `handoff` to it (or one forbids it, or it could not be evaluated).
    #[error(
        "denied by policy: this mission's policies do not permit handing work to mission `{to}`: the mission owner must permit `Action::\"handoff\"` to it"
    )]
    Handoff {
        to: String,
        policies: Vec<String>,
        errors: Vec<String>,
    },
}

impl PolicyDenied {
    /// The rule(s) that decided, for the audit record.
    pub fn policy(&self) -> String {
        match self {
            PolicyDenied::ReasoningRequired(_) => REASONING_POLICY.into(),
            PolicyDenied::WrongMission => SCOPE_POLICY.into(),
            PolicyDenied::Tool { policies }
            | PolicyDenied::Call { policies }
            | PolicyDenied::Handoff { policies, .. } => {
                if policies.is_empty() {
                    DEFAULT_DENY.into()
                } else {
                    policies.join(", ")
                }
            }
            PolicyDenied::Error { .. } => DEFAULT_DENY.into(),
        }
    }
}

/// Whether a path is a mission's decision cases file (`<name>.cases.toml`).
pub fn is_cases_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".cases.toml"))
}

/// The warning for a mission without a policy file (it denies every call).
pub fn missing_policy_warning(mission: &Mission) -> Option<Warning> {
    let path = policy_path(mission);
    if path.exists() {
        return None;
    }
    Some(Warning {
        file: mission.path.clone(),
        message: format!(
            "DENIES EVERY CALL: no policy file `{}` beside this mission (deny by default); write one (README: Writing policies)",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    })
}

/// The missions naming each agent.
pub fn agent_missions(config: &Config) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in config.missions.values() {
        for a in &m.agents {
            out.entry(a.clone()).or_default().push(m.id.clone());
        }
    }
    out
}

/// SHA-256 of a policy text, hex.
pub fn digest(text: &str) -> String {
    crate::audit::digest_bytes(text.as_bytes())
}

/// Whether `caller` could be permitted `tool` on this mission (for `tools/list`); for a tool
/// that hands work to another mission, the handoff too.
pub fn visible(mission: &MissionRuntime, caller: &Caller, tool: &str) -> bool {
    mission.policy.could_permit(caller, tool)
        && mission
            .tools
            .get(tool)
            .and_then(|t| t.handoff_to.as_deref())
            .is_none_or(|to| mission.policy.could_permit_handoff(caller, to))
}

/// The strictest of the approvals a permit and a tool manifest ask for (`approver` over `user`
/// over none; the manifest's `"none"` asks for none).
pub fn strictest_approval(policy: Option<&str>, manifest: &str) -> Option<String> {
    let manifest = match manifest {
        "none" => None,
        mode => Some(mode),
    };
    fast::strictest_approval([policy, manifest].into_iter())
}

/// Stage 4: decide. The call must be for this mission (permits are bound to theirs); the
/// mission's reasoning rule, then Cedar: the call, and when the tool's downstream is another
/// mission's agent, the `handoff` to that mission (before any handoff token is minted).
pub fn authorize(
    mission: &MissionRuntime,
    valid: Valid,
    reasoning: Option<&Reasoning>,
    agent: Option<AgentFacts>,
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
    let caller = valid.caller().clone();
    let query = Query {
        caller: &caller,
        tool: &valid.tool().exposed,
        arguments: valid.arguments(),
        now: crate::authn::unix_now(),
        // What the agent registry knows about the agent (owner, status).
        agent,
        risk: None,
    };
    let decision = mission.policy.decide(&query);
    if !decision.errors.is_empty() {
        return Err(PolicyDenied::Error {
            errors: decision.errors,
        });
    }
    if !decision.allow {
        let policies = decision.policies;
        return Err(
            if mission.policy.could_permit(&caller, &valid.tool().exposed) {
                PolicyDenied::Call { policies }
            } else {
                PolicyDenied::Tool { policies }
            },
        );
    }
    let mut policies = decision.policies;
    if let Some(target) = &valid.downstream().manifest.handoff {
        let handoff = mission.policy.decide_handoff(&query, &target.mission);
        if !handoff.allow {
            return Err(PolicyDenied::Handoff {
                to: target.mission.clone(),
                policies: handoff.policies,
                errors: handoff.errors,
            });
        }
        policies.extend(handoff.policies);
    }
    let approval = strictest_approval(decision.approval.as_deref(), &valid.tool().spec.approval);
    Ok(Authorized {
        valid,
        policies,
        approval,
        version: mission.policy.version().to_owned(),
    })
}

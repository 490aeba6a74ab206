//! Decision cases for mission authors: `<mission>.cases.toml` beside the mission, run by
//! `mandate test` as `cargo test` runs code tests (one line per case, a summary, exit 1 on a
//! mismatch). Each case states a caller, a tool, arguments and context, and the expected
//! decision (and optionally the determining policies and the approval kind).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{Query, RiskSignals, WALL_POLICY, walls};
use crate::authn::Caller;
use crate::config::diag::Source;
use crate::mission::MissionRuntime;

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// The cases, in order.
    #[serde(default)]
    pub case: Vec<Case>,
}

/// Expected decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

/// One decision case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows (printed).
    pub name: String,
    /// The exposed tool name.
    pub tool: Spanned<String>,
    /// The call's arguments (default: none).
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// The user (default `alice@acme.example`).
    #[serde(default = "default_user")]
    pub user: String,
    /// The user's tenant (default: the mission's).
    pub tenant: Option<String>,
    /// The agent (default: the mission's first agent).
    pub agent: Option<String>,
    /// The user's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The user's policy attributes (`groups`, `department`, `region`, `clearance`).
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The request time, RFC 3339 (default 2026-01-05T10:00:00Z, a Monday morning).
    pub time: Option<Spanned<String>>,
    /// The risk signals (default: 1 call in the last minute, 100 % of baseline).
    pub risk: Option<RiskSignals>,
    /// The agents of the earlier hops when the call was handed over (`context.chain`; default:
    /// none, a direct call).
    #[serde(default)]
    pub chain: Vec<String>,
    /// `allow` or `deny`.
    pub expect: Expect,
    /// The determining policies (ids as in the file, e.g. `pay-limit`, or in full).
    pub policies: Option<Vec<String>>,
    /// The approval a permit asks for (`approver` or `user`); absent: none.
    pub approval: Option<String>,
}

fn default_user() -> String {
    "alice@acme.example".into()
}

/// Default case time: 2026-01-05T10:00:00Z (a Monday).
const DEFAULT_TIME: u64 = 1_767_607_200;

/// The cases file beside a mission.
pub fn cases_path(mission: &crate::config::Mission) -> PathBuf {
    mission.path.with_extension("cases.toml")
}

/// The caller a case describes (no token: its entity store is built per decision).
pub fn caller(mission: &crate::config::Mission, case: &Case) -> Caller {
    Caller {
        issuer: "mandate-test".into(),
        subject: case.user.clone(),
        tenant: case
            .tenant
            .clone()
            .unwrap_or_else(|| mission.tenant.clone()),
        agent: case
            .agent
            .clone()
            .or_else(|| mission.agents.first().cloned())
            .unwrap_or_default(),
        roles: case.roles.clone(),
        token_id: String::new(),
        audience: String::new(),
        expires_at: u64::MAX,
        scopes: Vec::new(),
        attributes: case.attributes.clone(),
        act: None,
        actors: case
            .chain
            .iter()
            .map(|agent| crate::handoff::Actor {
                agent: agent.clone(),
                mission: String::new(),
                handoff: None,
            })
            .collect(),
        token: Default::default(),
    }
}

/// The decision question of a case for `caller` at `now`.
pub fn query<'a>(case: &'a Case, caller: &'a Caller, now: u64) -> Query<'a> {
    Query {
        caller,
        tool: case.tool.get_ref(),
        arguments: &case.arguments,
        now,
        agent: None,
        risk: Some(case.risk.unwrap_or(RiskSignals {
            calls_last_minute: 1,
            baseline_percent: 100,
        })),
    }
}

/// The outcome of one case: `Ok(())` or what differed.
pub fn run_case(runtime: &MissionRuntime, case: &Case, now: u64) -> Result<(), String> {
    let mission = &runtime.mission;
    let caller = self::caller(mission, case);
    let tool = case.tool.get_ref();
    let Some(exposed) = runtime.tools.get(tool) else {
        return Err(format!("unknown tool `{tool}`"));
    };
    let (allow, policies, errors, approval) =
        match walls::admit(mission, &caller).and_then(|()| walls::residency(mission, exposed)) {
            Err(denied) => (
                false,
                vec![WALL_POLICY.to_owned()],
                vec![denied.to_string()],
                None,
            ),
            Ok(()) => {
                let q = query(case, &caller, now);
                let d = runtime.policy.decide(&q);
                match (&exposed.handoff_to, d.allow) {
                    // As a call does: a tool that hands work to another mission needs the
                    // `handoff` action permitted too.
                    (Some(to), true) => {
                        let h = runtime.policy.decide_handoff(&q, to);
                        if h.allow {
                            let mut policies = d.policies;
                            policies.extend(h.policies);
                            (true, policies, d.errors, d.approval)
                        } else {
                            (false, h.policies, h.errors, None)
                        }
                    }
                    _ => (d.allow, d.policies, d.errors, d.approval),
                }
            }
        };
    let mut problems = Vec::new();
    let got = if allow { Expect::Allow } else { Expect::Deny };
    if got != case.expect {
        problems.push(format!("expected {}, got {}", word(case.expect), word(got)));
    }
    if let Some(expected) = &case.policies {
        let matches = |e: &String, a: &String| a == e || a.ends_with(&format!(".cedar:{e}"));
        let same = expected.len() == policies.len()
            && expected
                .iter()
                .all(|e| policies.iter().any(|a| matches(e, a)));
        if !same {
            problems.push(format!(
                "expected determining policies [{}], got [{}]",
                expected.join(", "),
                policies.join(", ")
            ));
        }
    }
    if case.approval != approval {
        problems.push(format!(
            "expected approval {}, got {}",
            case.approval.as_deref().unwrap_or("none"),
            approval.as_deref().unwrap_or("none")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        if !errors.is_empty() {
            problems.push(format!("errors: {}", errors.join("; ")));
        }
        Err(problems.join("; "))
    }
}

fn word(e: Expect) -> &'static str {
    match e {
        Expect::Allow => "allow",
        Expect::Deny => "deny",
    }
}

/// A mission with its cases, each with its request time (unix seconds).
pub type MissionCases = (Arc<MissionRuntime>, Vec<(Case, u64)>);

/// Reads every mission's cases file. Errors are `path:line:col: message`.
pub fn load_all(
    missions: &BTreeMap<String, Arc<MissionRuntime>>,
) -> Result<Vec<MissionCases>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for m in missions.values() {
        let path = cases_path(&m.mission);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.push((m.clone(), Vec::new()));
                continue;
            }
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        let src = Source {
            path: &path,
            text: &text,
        };
        let file: CasesFile = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                errors.push(src.toml_error(&e).to_string());
                continue;
            }
        };
        let mut cases = Vec::new();
        for case in file.case {
            if !m.tools.contains_key(case.tool.get_ref()) {
                errors.push(
                    src.at(
                        case.tool.span().start,
                        format!(
                            "unknown tool `{}` (mission `{}` exposes {})",
                            case.tool.get_ref(),
                            m.mission.id,
                            m.tools.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    )
                    .to_string(),
                );
                continue;
            }
            let now = match &case.time {
                None => DEFAULT_TIME,
                Some(t) => match humantime::parse_rfc3339_weak(t.get_ref()) {
                    Ok(time) => time
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    Err(_) => {
                        errors.push(
                            src.at(
                                t.span().start,
                                format!(
                                    "invalid `time` `{}` (write e.g. 2026-11-30T10:00:00Z)",
                                    t.get_ref()
                                ),
                            )
                            .to_string(),
                        );
                        continue;
                    }
                },
            };
            cases.push((case, now));
        }
        out.push((m.clone(), cases));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Runs every case and prints the report; `Ok(true)` when all pass.
pub fn run_all(missions: &BTreeMap<String, Arc<MissionRuntime>>) -> Result<bool, Vec<String>> {
    let all = load_all(missions)?;
    let total: usize = all.iter().map(|(_, c)| c.len()).sum();
    println!("running {total} decision case(s)");
    let mut failures = Vec::new();
    for (m, cases) in &all {
        if cases.is_empty() {
            println!(
                "note: mission `{}` has no decision cases (`{}`)",
                m.mission.id,
                cases_path(&m.mission).display()
            );
        }
        for (case, now) in cases {
            let label = format!("{} :: {}", m.mission.id, case.name);
            match run_case(m, case, *now) {
                Ok(()) => println!("case {label} ... ok"),
                Err(why) => {
                    println!("case {label} ... FAILED");
                    failures.push(format!("{label}: {why}"));
                }
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("    {f}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failures.is_empty() { "ok" } else { "FAILED" },
        total - failures.len(),
        failures.len()
    );
    Ok(failures.is_empty())
}

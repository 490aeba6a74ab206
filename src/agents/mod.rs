//! The agent registry: agents are non-human identities with an accountable owner and a
//! lifecycle (active → suspended ⇄ active → offboarded).
//!
//! Records live behind the [`AgentStore`] seam; the broker keeps an in-memory view of every
//! record, replaced on every change, and consults it on every request ([`Registry::admit`]: one
//! read lock and one hash lookup, no store read), so a suspension or an offboarding acts on the
//! next request of every open session, whatever token verification was cached. Suspending or
//! offboarding also calls the revocation hooks ([`Registry::on_revoke`]), which drop whatever
//! was cached for the agent (downstream tokens).
//!
//! **Declared by mission** (a compatibility decision): the quickstart, `mandate token` and the
//! existing tests use agents named in a mission's `agents = [...]` without onboarding them. So
//! at start ([`Registry::register_declared`]) each agent a mission names that is not registered
//! yet is registered with origin `declared by mission`: owner and tenant of the first mission
//! (by id) naming it, missions = those naming it, expiry = the latest of their expiries. It has
//! no credential (it cannot use `/oauth/token` until it is onboarded). An agent once suspended
//! or offboarded stays so: configuration never resurrects it. `[agents]
//! register_mission_agents = false` turns this off.
//!
//! Zombie detection ([`Registry::sweep`]): agents past their expiry or review date, or idle
//! longer than `[agents] max_idle`, are suspended with a `zombie` marker, each with an audit
//! event. When an agent was last seen is kept in memory (no store write per call) and written
//! to the store by each sweep.
//!
//! Every lifecycle change is one `agent_lifecycle` audit record. The store calls block: the
//! async operations run them on a blocking thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::audit::{Auditor, Event, EventKind};
use crate::config::{AgentSettings, Config};
use crate::store::{AgentStore, StorageError};

/// Longest agent id, in bytes.
pub const MAX_ID: usize = 128;

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `mandate agents onboard` (or the admin API).
    Onboarded,
    /// Registered at start because a mission's `agents` names it.
    DeclaredByMission,
}

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Suspended,
    /// Final: an offboarded agent never calls again.
    Offboarded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Offboarded => "offboarded",
        }
    }
}

/// How an agent authenticates at `/oauth/token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    /// None (declared by mission): the agent gets tokens from `mandate token` or an external
    /// issuer only.
    None,
    /// A client secret, stored only as its SHA-256 (hex). The secret is 256 random bits made by
    /// Mandate, so a fast hash is enough: there is nothing to guess.
    ClientSecret { sha256: String },
    /// `private_key_jwt` (RFC 7523): the agent's public key, an ES256 JWK.
    PrivateKeyJwt { jwk: serde_json::Value },
}

impl Credential {
    pub fn method(&self) -> &'static str {
        match self {
            Credential::None => "none",
            Credential::ClientSecret { .. } => "client_secret",
            Credential::PrivateKeyJwt { .. } => "private_key_jwt",
        }
    }
}

/// One registered agent, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub tenant: String,
    /// The accountable human.
    pub owner: String,
    /// Ids of the missions it may use.
    pub missions: Vec<String>,
    /// Unix seconds after which it may not call (`None`: no expiry).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Unix seconds by which its owner must review it, or the sweep suspends it.
    #[serde(default)]
    pub review_at: Option<u64>,
    pub credential: Credential,
    pub origin: Origin,
    pub status: Status,
    /// Why it is in its status (set on suspension and offboarding).
    #[serde(default)]
    pub reason: Option<String>,
    /// Who changed the status last (`cli`, `configuration`, `zombie sweep`).
    #[serde(default)]
    pub changed_by: Option<String>,
    /// Unix seconds of the last status change.
    pub changed_at: u64,
    /// Whether the zombie sweep suspended it.
    #[serde(default)]
    pub zombie: bool,
    /// Unix seconds of onboarding or declaration.
    pub registered_at: u64,
    /// Unix seconds of its last request, as of the last sweep.
    #[serde(default)]
    pub last_seen: Option<u64>,
}

/// Why an agent may not call. The texts are what the caller sees: they say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRefusal {
    #[error(
        "agent `{0}` is not registered: its owner must onboard it (`mandate agents onboard {0} …`)"
    )]
    Unregistered(String),
    #[error(
        "agent `{agent}` is suspended ({reason}): ask its owner `{owner}` to resume it (`mandate agents resume {agent}`)"
    )]
    Suspended {
        agent: String,
        owner: String,
        reason: String,
    },
    #[error("agent `{0}` was offboarded: it can no longer call; onboard a new agent")]
    Offboarded(String),
    #[error(
        "agent `{agent}` expired at {at}: ask its owner `{owner}` to resume it with a new `--expires`"
    )]
    Expired {
        agent: String,
        owner: String,
        at: String,
    },
    #[error(
        "agent `{agent}` is not registered for mission `{mission}`: its owner must onboard it for that mission"
    )]
    NotForMission { agent: String, mission: String },
}

impl AgentRefusal {
    /// A short stable label (audit outcome detail, aggregation key).
    pub fn label(&self) -> &'static str {
        match self {
            AgentRefusal::Unregistered(_) => "agent unregistered",
            AgentRefusal::Suspended { .. } => "agent suspended",
            AgentRefusal::Offboarded(_) => "agent offboarded",
            AgentRefusal::Expired { .. } => "agent expired",
            AgentRefusal::NotForMission { .. } => "agent not registered for the mission",
        }
    }
}

/// A lifecycle operation that could not be done. Texts say what to do.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("unknown agent `{0}`: `mandate agents list` shows the registered agents")]
    Unknown(String),
    #[error("agent `{0}` is already onboarded: offboard it first, or pick another id")]
    AlreadyOnboarded(String),
    #[error("agent `{0}` was offboarded: an offboarded agent never comes back; onboard a new id")]
    Offboarded(String),
    #[error("agent `{agent}` is {status}: {what}")]
    WrongStatus {
        agent: String,
        status: &'static str,
        what: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the agent store failed: {0}")]
    Storage(#[from] StorageError),
    #[error("agent `{0}` changed while it was being updated: run the command again")]
    Race(String),
    #[error("the audit log could not record the change, so it was not made: {0}")]
    Audit(String),
}

/// What `mandate agents onboard` asks for (also the admin API's body).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnboardRequest {
    pub id: String,
    pub tenant: String,
    pub owner: String,
    pub missions: Vec<String>,
    /// RFC 3339 time or `YYYY-MM-DD` (end of that day, UTC).
    #[serde(default)]
    pub expires: Option<String>,
    /// RFC 3339 time or `YYYY-MM-DD` (end of that day, UTC).
    #[serde(default)]
    pub review: Option<String>,
    /// An ES256 public JWK for `private_key_jwt`; without it a client secret is made.
    #[serde(default)]
    pub public_jwk: Option<serde_json::Value>,
}

/// The answer to an onboarding: the record and, once, the client secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Onboarded {
    pub agent: AgentRecord,
    /// Shown once; only its hash is stored.
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// A status change request (suspend, resume, offboard).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    #[serde(default)]
    pub reason: Option<String>,
    /// Resume only: a new expiry (RFC 3339 or `YYYY-MM-DD`).
    #[serde(default)]
    pub expires: Option<String>,
    /// Resume only: a new review date.
    #[serde(default)]
    pub review: Option<String>,
}

/// A status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Suspend,
    Resume,
    Offboard,
}

/// A record in the in-memory view, with when it was last seen.
struct Entry {
    record: AgentRecord,
    /// The record's bytes in the store (for compare-and-swap).
    bytes: Vec<u8>,
    last_seen: AtomicU64,
}

/// A hook called with an agent id when it is suspended or offboarded.
pub type RevokeHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The registry: the store, the in-memory view, the audit log and the revocation hooks.
pub struct Registry {
    store: Arc<dyn AgentStore>,
    view: RwLock<HashMap<String, Arc<Entry>>>,
    audit: Auditor,
    hooks: Mutex<Vec<RevokeHook>>,
}

impl Registry {
    /// Loads every record into the view.
    pub async fn load(
        store: Arc<dyn AgentStore>,
        audit: Auditor,
    ) -> Result<Arc<Self>, LifecycleError> {
        let registry = Arc::new(Self {
            store,
            view: RwLock::new(HashMap::new()),
            audit,
            hooks: Mutex::new(Vec::new()),
        });
        let store = registry.store.clone();
        let rows = blocking(move || store.list()).await??;
        let mut view = HashMap::new();
        for (id, bytes) in rows {
            let record: AgentRecord = serde_json::from_slice(&bytes).map_err(|e| {
                LifecycleError::Invalid(format!(
                    "agent `{id}` in the store is unreadable ({e}): restore the store from a backup"
                ))
            })?;
            let seen = record.last_seen.unwrap_or(0);
            view.insert(
                id,
                Arc::new(Entry {
                    record,
                    bytes,
                    last_seen: AtomicU64::new(seen),
                }),
            );
        }
        if let Ok(mut v) = registry.view.write() {
            *v = view;
        }
        Ok(registry)
    }

    /// Calls `hook` with the agent's id whenever an agent is suspended or offboarded (after the
    /// view has changed, so the agent's next request is already refused). The exchange cache
    /// connects its `forget_agent` here.
    pub fn on_revoke(&self, hook: RevokeHook) {
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push(hook);
        }
    }

    /// Whether `agent` may make a request on `mission` now; marks it seen. Called on every
    /// request: a read lock and a lookup.
    pub fn admit(&self, agent: &str, mission: &str, now: u64) -> Result<(), AgentRefusal> {
        let entry = self.entry(agent)?;
        usable(&entry.record, now)?;
        if !entry.record.missions.iter().any(|m| m == mission) {
            return Err(AgentRefusal::NotForMission {
                agent: agent.to_owned(),
                mission: mission.to_owned(),
            });
        }
        entry.last_seen.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    /// The record of an agent that may act now (any mission), for `/oauth/token`.
    pub fn active(&self, agent: &str, now: u64) -> Result<AgentRecord, AgentRefusal> {
        let entry = self.entry(agent)?;
        usable(&entry.record, now)?;
        entry.last_seen.fetch_max(now, Ordering::Relaxed);
        Ok(entry.record.clone())
    }

    /// What Cedar may know of `agent` (its `Agent` entity): accountable owner and status, from
    /// the in-memory view (no store read).
    pub fn policy_facts(&self, agent: &str) -> Option<crate::policy::AgentFacts> {
        let view = self.view.read().ok()?;
        let entry = view.get(agent)?;
        Some(crate::policy::AgentFacts {
            owner: Some(entry.record.owner.clone()),
            status: Some(entry.record.status.as_str().to_owned()),
        })
    }

    /// The record of `agent`, whatever its status.
    pub fn get(&self, agent: &str) -> Option<AgentRecord> {
        self.view
            .read()
            .ok()
            .and_then(|v| v.get(agent).map(|e| self.with_seen(e)))
    }

    fn entry(&self, agent: &str) -> Result<Arc<Entry>, AgentRefusal> {
        self.view
            .read()
            .ok()
            .and_then(|v| v.get(agent).cloned())
            .ok_or_else(|| AgentRefusal::Unregistered(agent.to_owned()))
    }

    fn with_seen(&self, entry: &Entry) -> AgentRecord {
        let mut record = entry.record.clone();
        let seen = entry.last_seen.load(Ordering::Relaxed);
        if seen > 0 {
            record.last_seen = Some(seen);
        }
        record
    }

    /// Every record, in id order, with when each was last seen.
    pub fn list(&self) -> Vec<AgentRecord> {
        let mut all: Vec<AgentRecord> = self
            .view
            .read()
            .map(|v| v.values().map(|e| self.with_seen(e)).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Onboards an agent: checks the request against the configuration, stores the record and
    /// returns it with the client secret (shown once). An agent declared by a mission is taken
    /// over (it gets its credential, owner and expiry).
    pub async fn onboard(
        &self,
        config: &Config,
        request: OnboardRequest,
        by: &str,
    ) -> Result<Onboarded, LifecycleError> {
        let now = crate::authn::unix_now();
        let mut problems = Vec::new();
        let id = request.id.trim().to_owned();
        if id.is_empty()
            || id.len() > MAX_ID
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
        {
            problems.push(format!(
                "agent id `{id}` must be 1 to {MAX_ID} letters, digits, `-`, `_`, `.`, `@` or `:`"
            ));
        }
        for (name, value) in [("tenant", &request.tenant), ("owner", &request.owner)] {
            if value.trim().is_empty() {
                problems.push(format!("`--{name}` must not be empty"));
            }
        }
        if request.missions.is_empty() {
            problems.push("name at least one mission the agent may use (`--mission <id>`)".into());
        }
        for m in &request.missions {
            match config.missions.get(m) {
                None => problems.push(format!(
                    "unknown mission `{m}`{}",
                    crate::config::diag::suggestion(m, config.missions.keys().map(String::as_str))
                )),
                Some(mission) if mission.tenant != request.tenant => problems.push(format!(
                    "mission `{m}` belongs to tenant `{}`, not `{}`",
                    mission.tenant, request.tenant
                )),
                Some(mission) if !mission.agents.contains(&id) => problems.push(format!(
                    "mission `{m}` does not accept agent `{id}`: add it to `agents` in `{}` first",
                    mission.path.display()
                )),
                Some(_) => {}
            }
        }
        let expires_at = parse_time_opt("--expires", request.expires.as_deref(), &mut problems);
        let review_at = parse_time_opt("--review", request.review.as_deref(), &mut problems);
        for (name, at) in [("--expires", expires_at), ("--review", review_at)] {
            if at.is_some_and(|at| at <= now) {
                problems.push(format!("`{name}` must be in the future"));
            }
        }
        let (credential, secret) = match &request.public_jwk {
            Some(jwk) => match check_jwk(jwk) {
                Ok(()) => (Credential::PrivateKeyJwt { jwk: jwk.clone() }, None),
                Err(e) => {
                    problems.push(e);
                    (Credential::None, None)
                }
            },
            None => {
                let secret = new_secret();
                (
                    Credential::ClientSecret {
                        sha256: secret_hash(&secret),
                    },
                    Some(secret),
                )
            }
        };
        if !problems.is_empty() {
            return Err(LifecycleError::Invalid(problems.join("; ")));
        }
        let existing = self.get(&id);
        match existing.as_ref().map(|r| (r.origin, r.status)) {
            None | Some((Origin::DeclaredByMission, Status::Active)) => {}
            Some((_, Status::Offboarded)) => return Err(LifecycleError::Offboarded(id)),
            Some((Origin::Onboarded, _)) => return Err(LifecycleError::AlreadyOnboarded(id)),
            Some((Origin::DeclaredByMission, Status::Suspended)) => {
                return Err(LifecycleError::WrongStatus {
                    agent: id,
                    status: "suspended",
                    what: "resume it first (`mandate agents resume`), then onboard it",
                });
            }
        }
        let mut missions = request.missions.clone();
        missions.sort();
        missions.dedup();
        let record = AgentRecord {
            id: id.clone(),
            tenant: request.tenant.clone(),
            owner: request.owner.clone(),
            missions,
            expires_at,
            review_at,
            credential,
            origin: Origin::Onboarded,
            status: Status::Active,
            reason: None,
            changed_by: Some(by.to_owned()),
            changed_at: now,
            zombie: false,
            registered_at: now,
            last_seen: existing.as_ref().and_then(|r| r.last_seen),
        };
        let detail = format!(
            "onboarded by {by}: owner {}, missions {}, credential {}{}{}",
            record.owner,
            record.missions.join(", "),
            record.credential.method(),
            record
                .expires_at
                .map(|t| format!(", expires {}", time_text(t)))
                .unwrap_or_default(),
            record
                .review_at
                .map(|t| format!(", review by {}", time_text(t)))
                .unwrap_or_default(),
        );
        self.write(existing.as_ref(), record.clone(), "onboarded", detail)
            .await?;
        Ok(Onboarded {
            agent: record,
            client_secret: secret,
        })
    }

    /// Suspends, resumes or offboards an agent.
    pub async fn change(
        &self,
        agent: &str,
        change: Change,
        request: &ChangeRequest,
        by: &str,
    ) -> Result<AgentRecord, LifecycleError> {
        let now = crate::authn::unix_now();
        let Some(current) = self.get(agent) else {
            return Err(LifecycleError::Unknown(agent.to_owned()));
        };
        if current.status == Status::Offboarded {
            return Err(LifecycleError::Offboarded(agent.to_owned()));
        }
        let mut record = current.clone();
        let reason = request
            .reason
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| format!("by {by}"));
        let outcome = match change {
            Change::Suspend => {
                if current.status == Status::Suspended {
                    return Err(LifecycleError::WrongStatus {
                        agent: agent.to_owned(),
                        status: "suspended",
                        what: "it is suspended already",
                    });
                }
                record.status = Status::Suspended;
                record.reason = Some(reason.clone());
                record.zombie = false;
                "suspended"
            }
            Change::Resume => {
                // An active agent past its expiry or review date (not swept yet) can be renewed.
                let lapsed = current.expires_at.is_some_and(|at| at <= now)
                    || current.review_at.is_some_and(|at| at <= now);
                if current.status == Status::Active && !lapsed {
                    return Err(LifecycleError::WrongStatus {
                        agent: agent.to_owned(),
                        status: "active",
                        what: "only a suspended (or expired) agent can be resumed",
                    });
                }
                let mut problems = Vec::new();
                if let Some(at) =
                    parse_time_opt("--expires", request.expires.as_deref(), &mut problems)
                {
                    record.expires_at = Some(at);
                }
                if let Some(at) =
                    parse_time_opt("--review", request.review.as_deref(), &mut problems)
                {
                    record.review_at = Some(at);
                }
                if record.expires_at.is_some_and(|at| at <= now) {
                    problems.push(format!(
                        "it expired at {}: resume it with a new `--expires`",
                        record.expires_at.map(time_text).unwrap_or_default()
                    ));
                }
                if record.review_at.is_some_and(|at| at <= now) {
                    problems.push(format!(
                        "its review date {} has passed: review it and resume it with a new `--review`",
                        record.review_at.map(time_text).unwrap_or_default()
                    ));
                }
                if !problems.is_empty() {
                    return Err(LifecycleError::Invalid(problems.join("; ")));
                }
                record.status = Status::Active;
                record.reason = None;
                record.zombie = false;
                // A resumed agent starts a new idle period.
                record.last_seen = Some(now);
                "resumed"
            }
            Change::Offboard => {
                record.status = Status::Offboarded;
                record.reason = Some(reason.clone());
                record.zombie = false;
                "offboarded"
            }
        };
        record.changed_by = Some(by.to_owned());
        record.changed_at = now;
        let detail = match change {
            Change::Resume => format!("resumed by {by}"),
            Change::Suspend | Change::Offboard => format!("{outcome} by {by}: {reason}"),
        };
        self.write(Some(&current), record.clone(), outcome, detail)
            .await?;
        Ok(record)
    }

    /// Registers the agents missions name that are not registered yet, and keeps the records
    /// of agents declared earlier in step with the missions (never their status).
    pub async fn register_declared(&self, config: &Config) -> Result<(), LifecycleError> {
        if !config.settings.agents.register_mission_agents {
            return Ok(());
        }
        let now = crate::authn::unix_now();
        // Missions by id (a BTreeMap), so "the first mission naming it" is stable.
        let mut declared: std::collections::BTreeMap<&str, Vec<&crate::config::Mission>> =
            std::collections::BTreeMap::new();
        for mission in config.missions.values() {
            for agent in &mission.agents {
                declared.entry(agent).or_default().push(mission);
            }
        }
        for (agent, missions) in declared {
            let Some(first) = missions.first() else {
                continue;
            };
            let ids: Vec<String> = missions.iter().map(|m| m.id.clone()).collect();
            let expires_at = missions.iter().map(|m| m.expires_at).max();
            let existing = self.get(agent);
            let record = match &existing {
                Some(r) if r.origin == Origin::Onboarded => continue,
                Some(r) => {
                    if r.missions == ids
                        && r.expires_at == expires_at
                        && r.tenant == first.tenant
                        && r.owner == first.owner
                    {
                        continue;
                    }
                    AgentRecord {
                        missions: ids,
                        expires_at,
                        tenant: first.tenant.clone(),
                        owner: first.owner.clone(),
                        ..r.clone()
                    }
                }
                None => AgentRecord {
                    id: agent.to_owned(),
                    tenant: first.tenant.clone(),
                    owner: first.owner.clone(),
                    missions: ids,
                    expires_at,
                    review_at: None,
                    credential: Credential::None,
                    origin: Origin::DeclaredByMission,
                    status: Status::Active,
                    reason: None,
                    changed_by: Some("configuration".into()),
                    changed_at: now,
                    zombie: false,
                    registered_at: now,
                    last_seen: None,
                },
            };
            let (outcome, detail) = match &existing {
                None => (
                    "onboarded",
                    format!(
                        "onboarded by configuration (declared by mission): owner {}, missions {}",
                        record.owner,
                        record.missions.join(", ")
                    ),
                ),
                Some(_) => (
                    "updated",
                    format!(
                        "updated by configuration (declared by mission): owner {}, missions {}",
                        record.owner,
                        record.missions.join(", ")
                    ),
                ),
            };
            self.write(existing.as_ref(), record, outcome, detail)
                .await?;
        }
        Ok(())
    }

    /// The zombie sweep: suspends active agents past their expiry or review date, or idle longer
    /// than `max_idle`, and writes when each agent was last seen to the store. Returns the ids
    /// suspended.
    pub async fn sweep(&self, settings: &AgentSettings) -> Result<Vec<String>, LifecycleError> {
        let now = crate::authn::unix_now();
        let mut suspended = Vec::new();
        for record in self.list() {
            if record.status != Status::Active {
                continue;
            }
            let stored = self.stored_seen(&record.id);
            let reason = zombie_reason(&record, settings.max_idle, now);
            let mut updated = record.clone();
            let outcome = match &reason {
                Some(reason) => {
                    updated.status = Status::Suspended;
                    updated.zombie = true;
                    updated.reason = Some(reason.clone());
                    updated.changed_by = Some("zombie sweep".into());
                    updated.changed_at = now;
                    "suspended"
                }
                None if updated.last_seen != stored => "seen",
                None => continue,
            };
            let current = AgentRecord {
                last_seen: stored,
                ..record.clone()
            };
            let detail = format!(
                "suspended by the zombie sweep: {}",
                reason.as_deref().unwrap_or_default()
            );
            match self.write(Some(&current), updated, outcome, detail).await {
                Ok(()) => {
                    if reason.is_some() {
                        suspended.push(record.id.clone());
                    }
                }
                // Someone changed it meanwhile: the next sweep looks again.
                Err(LifecycleError::Race(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(suspended)
    }

    /// Runs the sweep now and then every `settings.sweep_interval` until `stop`.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        settings: AgentSettings,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(settings.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                match registry.sweep(&settings).await {
                    Ok(ids) if !ids.is_empty() => {
                        tracing::warn!(agents = %ids.join(", "), "zombie sweep suspended agents");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "zombie sweep failed"),
                }
            }
        })
    }

    /// `last_seen` as the store has it.
    fn stored_seen(&self, agent: &str) -> Option<u64> {
        self.view
            .read()
            .ok()
            .and_then(|v| v.get(agent).and_then(|e| e.record.last_seen))
    }

    /// Stores `record` if the stored one is still `expected` (the view's record), audits the
    /// change (`outcome` `seen`: not audited, only when it was last seen), updates the view, and
    /// calls the revocation hooks when the agent can no longer act.
    async fn write(
        &self,
        expected: Option<&AgentRecord>,
        record: AgentRecord,
        outcome: &str,
        detail: String,
    ) -> Result<(), LifecycleError> {
        let id = record.id.clone();
        let new = serde_json::to_vec(&record)
            .map_err(|e| LifecycleError::Invalid(format!("cannot encode agent `{id}`: {e}")))?;
        let old = match expected {
            None => None,
            Some(_) => self
                .view
                .read()
                .ok()
                .and_then(|v| v.get(&id).map(|e| e.bytes.clone())),
        };
        if outcome != "seen" {
            // The record of the change is durable before the change: an unaudited lifecycle
            // change never happens.
            let mut event = Event::new(EventKind::AgentLifecycle);
            event.agent = Some(id.clone());
            event.tenant = Some(record.tenant.clone());
            event.subject = Some(record.owner.clone());
            event.outcome = Some(outcome.to_owned());
            event.detail = Some(detail);
            self.audit
                .record_durable(event)
                .await
                .map_err(|e| LifecycleError::Audit(e.to_string()))?;
        }
        let store = self.store.clone();
        let key = id.clone();
        let stored = new.clone();
        let swapped =
            blocking(move || store.compare_and_swap(&key, old.as_deref(), &stored)).await??;
        if !swapped {
            return Err(LifecycleError::Race(id));
        }
        let revoked = record.status != Status::Active;
        let seen = record.last_seen.unwrap_or(0);
        if let Ok(mut view) = self.view.write() {
            let previous = view
                .get(&id)
                .map(|e| e.last_seen.load(Ordering::Relaxed))
                .unwrap_or(0);
            view.insert(
                id.clone(),
                Arc::new(Entry {
                    record,
                    bytes: new,
                    last_seen: AtomicU64::new(previous.max(seen)),
                }),
            );
        }
        if revoked && matches!(outcome, "suspended" | "offboarded") {
            let hooks: Vec<RevokeHook> = self.hooks.lock().map(|h| h.clone()).unwrap_or_default();
            for hook in hooks {
                hook(&id);
            }
        }
        Ok(())
    }
}

/// Whether a record may act now (status and expiry).
fn usable(record: &AgentRecord, now: u64) -> Result<(), AgentRefusal> {
    match record.status {
        Status::Active => {}
        Status::Suspended => {
            return Err(AgentRefusal::Suspended {
                agent: record.id.clone(),
                owner: record.owner.clone(),
                reason: record.reason.clone().unwrap_or_else(|| "no reason".into()),
            });
        }
        Status::Offboarded => return Err(AgentRefusal::Offboarded(record.id.clone())),
    }
    if let Some(at) = record.expires_at
        && now > at
    {
        return Err(AgentRefusal::Expired {
            agent: record.id.clone(),
            owner: record.owner.clone(),
            at: time_text(at),
        });
    }
    Ok(())
}

/// Why the sweep suspends an active record, if it does.
fn zombie_reason(record: &AgentRecord, max_idle: Option<Duration>, now: u64) -> Option<String> {
    if let Some(at) = record.expires_at
        && now > at
    {
        return Some(format!("zombie: expired at {}", time_text(at)));
    }
    if let Some(at) = record.review_at
        && now > at
    {
        return Some(format!("zombie: review date {} passed", time_text(at)));
    }
    let max_idle = max_idle?;
    let since = record.last_seen.unwrap_or(record.registered_at);
    if now.saturating_sub(since) > max_idle.as_secs() {
        let seen = match record.last_seen {
            Some(t) => format!("last seen {}", time_text(t)),
            None => format!("never seen since {}", time_text(record.registered_at)),
        };
        return Some(format!(
            "zombie: idle longer than {} ({seen})",
            humantime::format_duration(max_idle)
        ));
    }
    None
}

/// RFC 3339 (UTC, seconds) of unix seconds.
pub fn time_text(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Parses an RFC 3339 time, or a `YYYY-MM-DD` date meaning the end of that day (UTC), to unix
/// seconds.
pub fn parse_time(value: &str) -> Option<u64> {
    let value = value.trim();
    let text = if value.len() == 10 {
        format!("{value}T23:59:59Z")
    } else {
        value.to_owned()
    };
    humantime::parse_rfc3339_weak(&text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

fn parse_time_opt(name: &str, value: Option<&str>, problems: &mut Vec<String>) -> Option<u64> {
    let value = value?;
    let parsed = parse_time(value);
    if parsed.is_none() {
        problems.push(format!(
            "invalid `{name}` `{value}` (write a date like 2027-06-30 or a time like 2027-06-30T12:00:00Z)"
        ));
    }
    parsed
}

/// Checks that a JWK is an ES256 (P-256) public key.
fn check_jwk(jwk: &serde_json::Value) -> Result<(), String> {
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone())
        .map_err(|e| format!("the public key is not a JWK: {e}"))?;
    let ec = matches!(
        &parsed.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)
            if p.curve == jsonwebtoken::jwk::EllipticCurve::P256
    );
    if !ec || jwk.get("d").is_some() {
        return Err(
            "the public key must be an EC P-256 public JWK (`kty` `EC`, `crv` `P-256`, no `d`) for ES256"
                .into(),
        );
    }
    jsonwebtoken::DecodingKey::from_jwk(&parsed)
        .map(|_| ())
        .map_err(|e| format!("the public key is unusable: {e}"))
}

/// A new client secret: 256 random bits, base64url.
fn new_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The stored form of a client secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` is the one whose hash is `sha256` (constant time in the hash).
pub fn secret_matches(secret: &str, sha256: &str) -> bool {
    let given = secret_hash(secret);
    given.len() == sha256.len()
        && given
            .bytes()
            .zip(sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LifecycleError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LifecycleError::Storage(StorageError::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status) -> AgentRecord {
        AgentRecord {
            id: "bot".into(),
            tenant: "acme".into(),
            owner: "alice".into(),
            missions: vec!["a/b/c".into()],
            expires_at: None,
            review_at: None,
            credential: Credential::None,
            origin: Origin::Onboarded,
            status,
            reason: None,
            changed_by: None,
            changed_at: 0,
            zombie: false,
            registered_at: 1_000,
            last_seen: None,
        }
    }

    #[test]
    fn zombie_reasons() {
        let mut r = record(Status::Active);
        assert_eq!(zombie_reason(&r, None, 5_000), None);
        assert!(
            zombie_reason(&r, Some(Duration::from_secs(10)), 5_000)
                .is_some_and(|s| s.contains("never seen"))
        );
        r.last_seen = Some(4_995);
        assert_eq!(
            zombie_reason(&r, Some(Duration::from_secs(10)), 5_000),
            None
        );
        r.review_at = Some(4_000);
        assert!(zombie_reason(&r, None, 5_000).is_some_and(|s| s.contains("review")));
        r.expires_at = Some(4_000);
        assert!(zombie_reason(&r, None, 5_000).is_some_and(|s| s.contains("expired")));
    }

    #[test]
    fn usable_refuses_each_state() {
        assert!(usable(&record(Status::Active), 5).is_ok());
        assert!(matches!(
            usable(&record(Status::Suspended), 5),
            Err(AgentRefusal::Suspended { .. })
        ));
        assert!(matches!(
            usable(&record(Status::Offboarded), 5),
            Err(AgentRefusal::Offboarded(_))
        ));
        let mut r = record(Status::Active);
        r.expires_at = Some(4);
        assert!(matches!(usable(&r, 5), Err(AgentRefusal::Expired { .. })));
    }

    /// A configuration with one mission naming `bot`, and a registry on a fresh store.
    async fn registry(dir: &std::path::Path) -> (Config, Arc<Registry>, Auditor) {
        let write = |rel: &str, text: &str| {
            let path = dir.join(rel);
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(dir));
            let _ = std::fs::write(path, text);
        };
        write(
            "tool-manifests/finance/ledger.toml",
            "description = \"l\"\nenvironments = [\"prod\"]\nregion = \"eu\"\n[transport]\nkind = \"http\"\nurl = \"http://127.0.0.1:1/mcp\"\n[[tools]]\nname = \"t\"\neffect = \"read\"\n",
        );
        write(
            "missions/finance/prod/review.toml",
            "description = \"m\"\ntenant = \"acme\"\nowner = \"alice\"\nexpires = 2099-12-31\nagents = [\"bot\"]\ntools = [\"finance/ledger/t\"]\n",
        );
        let config = crate::config::load(dir, false).unwrap_or_else(|e| unreachable!("{e:?}"));
        let store = crate::store::Store::open(&dir.join(".mandate"))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let (audit, _writer) = Auditor::start(&store).unwrap_or_else(|e| unreachable!("{e}"));
        let agents = store.agents().unwrap_or_else(|e| unreachable!("{e}"));
        let registry = Registry::load(Arc::new(agents), audit.clone())
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        (config, registry, audit)
    }

    #[tokio::test]
    async fn revocation_hooks_fire_on_suspension_and_offboarding_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let (config, registry, _audit) = registry(dir.path()).await;
        registry
            .register_declared(&config)
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        let revoked = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = revoked.clone();
        registry.on_revoke(Arc::new(move |agent: &str| {
            if let Ok(mut v) = seen.lock() {
                v.push(agent.to_owned());
            }
        }));
        let mission = "finance/prod/review";
        assert!(registry.admit("bot", mission, 10).is_ok());
        let req = ChangeRequest::default();
        for change in [Change::Suspend, Change::Resume, Change::Offboard] {
            registry
                .change("bot", change, &req, "test")
                .await
                .unwrap_or_else(|e| unreachable!("{e}"));
        }
        assert_eq!(
            revoked.lock().map(|v| v.clone()).ok(),
            Some(vec!["bot".to_owned(), "bot".to_owned()])
        );
        assert!(matches!(
            registry.admit("bot", mission, 10),
            Err(AgentRefusal::Offboarded(_))
        ));
        // Configuration does not bring it back, and a reload reads the same state.
        registry
            .register_declared(&config)
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            registry.get("bot").map(|r| r.status),
            Some(Status::Offboarded)
        );
        assert!(matches!(
            registry.admit("ghost", mission, 10),
            Err(AgentRefusal::Unregistered(_))
        ));
    }

    #[test]
    fn secrets_and_times() {
        let s = new_secret();
        let h = secret_hash(&s);
        assert!(secret_matches(&s, &h));
        assert!(!secret_matches("other", &h));
        assert_eq!(parse_time("1970-01-02"), Some(86_400 + 86_399));
        assert_eq!(parse_time("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_time("soon"), None);
    }
}

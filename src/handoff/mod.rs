//! Handoffs between agents: the single-use handoff tokens Mandate mints when a mission's agent
//! hands work to another mission's agent, and their re-verification, hop by hop, against
//! Mandate's own handoff ledger when that agent calls Mandate with one.
//!
//! A handoff downstream is an MCP server that is itself an agent (its tool manifest says
//! `[auth] exchange = "handoff"`, `mission = "<B>"`, `agent = "<B's agent>"`), used by a mission A
//! that lists B in `handoffs` and whose policies permit the Cedar action `handoff` to B (decided
//! with the call, in the policy stage, before anything is minted: [`crate::policy::authorize`]).
//! When A's call goes to it, [`Handoffs::mint`] issues a token with
//! `sub` = the user, `azp` = B's agent (the intended recipient), `act` = A's agent nesting the
//! caller's own chain, `aud` = B's mission resource URL, `exp` ≤ 5 minutes, and records its `jti`
//! in the ledger first ([`Record`]: user, tenant, from and to mission, actor chain, issued,
//! expires, used).
//!
//! When B's agent calls mission B with it, [`Handoffs::admit`] runs after the token's signature
//! and claims were verified: the `jti` is a handoff this broker issued for this mission, this
//! recipient and this user; the chain in the token is the recorded one; every earlier hop's own
//! handoff is in the ledger too; every actor is still named by the mission it acted in and
//! active in the agent registry; every edge is still in the missions' `handoffs`; the chain is no
//! longer than `[handoff] max_depth`. A token is used once: the request that opens a session (or
//! a stateless call) marks it used with a compare-and-swap in the store, and a session opened with
//! it accepts no other token; a second opening is a replay and is refused.
//!
//! Per RFC 8693 §4.1 the principal stays the user and the current actor (B's agent) decides with
//! them; the earlier actors ([`Caller::actors`]) are verified, recorded and can revoke (one that
//! is gone refuses the call), but grant nothing. The token carries no scopes and B's mission
//! scope applies, so B can never do more than both the user and B's mission allow.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authn::{Caller, Issuer, random_id, unix_now};
use crate::config::{Config, HandoffSettings, HandoffTarget, Mission};
use crate::store::{HandoffStore, StorageError};

/// One earlier actor of a handed-off call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The agent that acted.
    pub agent: String,
    /// The mission it acted in.
    pub mission: String,
    /// The handoff (`jti`) through which it got the work; none for the agent that started the
    /// chain with its own token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<String>,
}

/// A handoff as the ledger keeps it (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The user (`sub`) the work is done for.
    pub user: String,
    /// The issuer that authenticated the user at the start of the chain.
    pub user_issuer: String,
    pub tenant: String,
    /// The mission handing the work on.
    pub from: String,
    /// The mission receiving it.
    pub to: String,
    /// The agent the token is for (listed in `to`'s `agents`).
    pub agent: String,
    /// The earlier actors, most recent first (the first one is the agent handing on).
    pub actors: Vec<Actor>,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds.
    pub expires: u64,
    /// Unix seconds of the one use, once used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
}

/// The claims of a handoff token.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: &'a str,
    tenant: &'a str,
    /// The intended recipient: the receiving mission's agent.
    azp: &'a str,
    /// The user's roles, as the caller's token had them.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    /// The user's policy attributes (`groups`, `department`, `region`, `clearance`) as the
    /// caller's token mapped them, as top-level claims: the receiving mission's policies see
    /// the same user as the handing mission's did.
    #[serde(flatten)]
    attributes: BTreeMap<&'a str, &'a Value>,
    act: Value,
}

/// A minted handoff token: what the exchange stage sends, and what the audit record keeps.
pub struct Minted {
    pub token: secrecy::SecretString,
    pub jti: String,
    pub to: String,
    pub expires: u64,
}

/// Why a handoff was not minted or a handoff token was refused. The texts are what the caller
/// sees; they never echo a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    #[error(
        "this token carries `act` but is no handoff token of this broker: delegated tokens are accepted only as handoffs Mandate issued"
    )]
    Foreign,
    #[error("handoff token is unknown to this broker's handoff ledger: get a new handoff")]
    Unknown,
    #[error(
        "handoff token is not for this mission, agent or user: a handoff token opens only the mission it was issued for, for its agent"
    )]
    WrongRecipient,
    #[error("handoff token was already used: a handoff token opens one session or one call")]
    Replayed,
    #[error("handoff token expired: the handing agent must hand the work on again")]
    Expired,
    #[error(
        "handoff chain is longer than `[handoff] max_depth` ({0}): hand the work on from an earlier agent"
    )]
    TooDeep(usize),
    #[error("agent `{agent}` in the handoff chain is no longer active on mission `{mission}`")]
    ActorInactive { agent: String, mission: String },
    #[error(
        "mission `{from}` may not hand work to mission `{to}`: add it to `handoffs` of `{from}`"
    )]
    EdgeNotAllowed { from: String, to: String },
    #[error("handoff target mission `{0}` is not served by this broker")]
    UnknownMission(String),
    #[error(
        "this mission runs over stdio and cannot hand work on: handoffs need `mandate serve`, which the receiving agent calls back over HTTP"
    )]
    NeedsHttp,
    #[error("the handoff ledger is unavailable: try again shortly")]
    Ledger(String),
}

impl HandoffError {
    /// Whether the token itself is unusable (401) rather than the chain refused (403).
    pub fn invalid_token(&self) -> bool {
        match self {
            HandoffError::Foreign
            | HandoffError::Unknown
            | HandoffError::WrongRecipient
            | HandoffError::Replayed
            | HandoffError::Expired => true,
            HandoffError::TooDeep(_)
            | HandoffError::ActorInactive { .. }
            | HandoffError::EdgeNotAllowed { .. }
            | HandoffError::UnknownMission(_)
            | HandoffError::NeedsHttp
            | HandoffError::Ledger(_) => false,
        }
    }
}

impl From<StorageError> for HandoffError {
    fn from(e: StorageError) -> Self {
        HandoffError::Ledger(e.0)
    }
}

/// The `act` claim for a chain (most recent first): `{"sub": a1, "mission": m1, "act": {...}}`.
pub fn act_claim(actors: &[Actor]) -> Option<Value> {
    actors.iter().rev().fold(None, |inner, actor| {
        let mut act = serde_json::Map::new();
        act.insert("sub".into(), Value::from(actor.agent.as_str()));
        act.insert("mission".into(), Value::from(actor.mission.as_str()));
        if let Some(jti) = &actor.handoff {
            act.insert("handoff".into(), Value::from(jti.as_str()));
        }
        if let Some(inner) = inner {
            act.insert("act".into(), inner);
        }
        Some(Value::Object(act))
    })
}

/// Mints and verifies handoff tokens; owns the ledger.
pub struct Handoffs {
    issuer: Arc<Issuer>,
    ledger: Arc<dyn HandoffStore>,
    settings: HandoffSettings,
    missions: BTreeMap<String, Mission>,
    public_url: String,
    /// The agent registry: every actor of a chain must be registered, active and onboarded for
    /// the mission it acted in. Always there: a chain is never admitted unchecked.
    agents: Arc<crate::agents::Registry>,
}

impl Handoffs {
    /// Every actor of a chain is checked against `agents`, the agent registry (a suspended or
    /// offboarded agent anywhere in the chain refuses the call).
    pub fn new(
        issuer: Arc<Issuer>,
        ledger: Arc<dyn HandoffStore>,
        config: &Config,
        agents: Arc<crate::agents::Registry>,
    ) -> Self {
        Self {
            issuer,
            ledger,
            settings: config.settings.handoff,
            missions: config.missions.clone(),
            public_url: config.settings.public_url.clone(),
            agents,
        }
    }

    /// Forgets ledger records a day past their token's expiry: a later hop's token, minted
    /// while this one was alive, has expired by then too, so no chain can still name it (a
    /// replayed token is refused by its expiry first). Returns how many were forgotten.
    pub async fn prune(&self) -> Result<u64, HandoffError> {
        const MARGIN: u64 = 24 * 3600;
        let ledger = self.ledger.clone();
        let now = crate::authn::unix_now();
        blocking(move || {
            ledger.prune(&mut |bytes| {
                // An unreadable record is kept: pruning never destroys what it cannot judge.
                serde_json::from_slice::<Record>(bytes)
                    .map_or(true, |r| now < r.expires.saturating_add(MARGIN))
            })
        })
        .await
    }

    /// Whether `agent` is registered, active and onboarded for `mission`, where it acted.
    fn actor_active(&self, agent: &str, mission: &str) -> bool {
        self.agents
            .admit(agent, mission, crate::authn::unix_now())
            .is_ok()
    }

    /// Mints the handoff token for `caller`'s call on mission `from` to the agent `target`.
    pub async fn mint(
        &self,
        caller: &Caller,
        from: &str,
        target: &HandoffTarget,
    ) -> Result<Minted, HandoffError> {
        let to = self
            .missions
            .get(&target.mission)
            .ok_or_else(|| HandoffError::UnknownMission(target.mission.clone()))?;
        let origin = self
            .missions
            .get(from)
            .ok_or_else(|| HandoffError::UnknownMission(from.to_owned()))?;
        if !origin.handoffs.contains(&to.id) {
            return Err(HandoffError::EdgeNotAllowed {
                from: from.to_owned(),
                to: to.id.clone(),
            });
        }
        // The user stays the principal: a handoff never crosses tenants.
        if to.tenant != caller.tenant || !to.agents.contains(&target.agent) {
            return Err(HandoffError::WrongRecipient);
        }
        let mut actors = Vec::with_capacity(caller.actors.len() + 1);
        actors.push(Actor {
            agent: caller.agent.clone(),
            mission: from.to_owned(),
            handoff: (!caller.actors.is_empty()).then(|| caller.token_id.clone()),
        });
        actors.extend(caller.actors.iter().cloned());
        if actors.len() > self.settings.max_depth {
            return Err(HandoffError::TooDeep(self.settings.max_depth));
        }
        let user_issuer = match self.record_of(caller).await? {
            // A handed-on handoff keeps the issuer that authenticated the user first.
            Some(earlier) => earlier.user_issuer,
            None => caller.issuer.clone(),
        };
        let now = unix_now();
        let expires = now + self.settings.ttl.as_secs();
        let jti = random_id();
        let record = Record {
            user: caller.subject.clone(),
            user_issuer,
            tenant: caller.tenant.clone(),
            from: from.to_owned(),
            to: to.id.clone(),
            agent: target.agent.clone(),
            actors,
            issued: now,
            expires,
            used: None,
        };
        let audience = format!("{}{}", self.public_url, to.http_path());
        let claims = Claims {
            iss: self.issuer.issuer(),
            sub: &caller.subject,
            aud: &audience,
            exp: expires,
            iat: now,
            nbf: now,
            jti: &jti,
            tenant: &caller.tenant,
            azp: &target.agent,
            roles: &caller.roles,
            attributes: crate::authn::ATTRIBUTE_CLAIMS
                .iter()
                .filter_map(|name| caller.attributes.get(*name).map(|v| (*name, v)))
                .collect(),
            act: act_claim(&record.actors).unwrap_or(Value::Null),
        };
        let token = self
            .issuer
            .sign(crate::authn::TOKEN_TYPE, &claims)
            .map_err(|e| HandoffError::Ledger(format!("cannot sign the handoff token: {e}")))?;
        let bytes = serde_json::to_vec(&record).map_err(|e| HandoffError::Ledger(e.to_string()))?;
        let ledger = self.ledger.clone();
        let key = jti.clone();
        let inserted = blocking(move || ledger.insert(&key, &bytes)).await?;
        if !inserted {
            return Err(HandoffError::Ledger("handoff id collision".into()));
        }
        Ok(Minted {
            token: token.into(),
            jti,
            to: to.id.clone(),
            expires,
        })
    }

    /// The ledger record of a handoff token's caller (none for a direct caller).
    async fn record_of(&self, caller: &Caller) -> Result<Option<Record>, HandoffError> {
        if caller.actors.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.load(&caller.token_id).await?.1))
    }

    async fn load(&self, jti: &str) -> Result<(Vec<u8>, Record), HandoffError> {
        let ledger = self.ledger.clone();
        let key = jti.to_owned();
        let bytes = blocking(move || ledger.get(&key))
            .await?
            .ok_or(HandoffError::Unknown)?;
        let record = serde_json::from_slice(&bytes)
            .map_err(|e| HandoffError::Ledger(format!("unreadable handoff record: {e}")))?;
        Ok((bytes, record))
    }

    /// Verifies a caller whose token carries `act` on mission `mission` (after its signature and
    /// claims were verified) and returns it with its verified actor chain. `opening`: the request
    /// opens a session or is a stateless call, which uses the token up.
    pub async fn admit(
        &self,
        caller: &Caller,
        mission: &str,
        opening: bool,
    ) -> Result<Arc<Caller>, HandoffError> {
        if caller.issuer != self.issuer.issuer() {
            return Err(HandoffError::Foreign);
        }
        let (bytes, record) = match self.load(&caller.token_id).await {
            Err(HandoffError::Unknown) => return Err(HandoffError::Foreign),
            other => other?,
        };
        if record.to != mission
            || record.agent != caller.agent
            || record.user != caller.subject
            || record.tenant != caller.tenant
            || act_claim(&record.actors) != caller.act
        {
            return Err(HandoffError::WrongRecipient);
        }
        // Mandate issued the token and checks it on the same clock: no leeway.
        let now = unix_now();
        if now > record.expires {
            return Err(HandoffError::Expired);
        }
        self.check_chain(&record).await?;
        if opening {
            if record.used.is_some() {
                return Err(HandoffError::Replayed);
            }
            let mut used = record.clone();
            used.used = Some(now);
            let new = serde_json::to_vec(&used).map_err(|e| HandoffError::Ledger(e.to_string()))?;
            let ledger = self.ledger.clone();
            let key = caller.token_id.clone();
            if !blocking(move || ledger.compare_and_swap(&key, &bytes, &new)).await? {
                // Another request used it first.
                return Err(HandoffError::Replayed);
            }
        }
        let mut verified = caller.clone();
        verified.actors = record.actors;
        Ok(Arc::new(verified))
    }

    /// Every hop of a recorded chain, against the configuration and the ledger.
    async fn check_chain(&self, record: &Record) -> Result<(), HandoffError> {
        if record.actors.is_empty() {
            return Err(HandoffError::WrongRecipient);
        }
        if record.actors.len() > self.settings.max_depth {
            return Err(HandoffError::TooDeep(self.settings.max_depth));
        }
        let mut to = record.to.as_str();
        for (i, actor) in record.actors.iter().enumerate() {
            let inactive = || HandoffError::ActorInactive {
                agent: actor.agent.clone(),
                mission: actor.mission.clone(),
            };
            let Some(m) = self.missions.get(&actor.mission) else {
                return Err(inactive());
            };
            if m.tenant != record.tenant
                || !m.agents.contains(&actor.agent)
                || !self.actor_active(&actor.agent, &actor.mission)
            {
                return Err(inactive());
            }
            if !m.handoffs.iter().any(|h| h == to) {
                return Err(HandoffError::EdgeNotAllowed {
                    from: m.id.clone(),
                    to: to.to_owned(),
                });
            }
            let last = i + 1 == record.actors.len();
            match (&actor.handoff, last) {
                // The agent that started the chain came with its own token.
                (None, true) => {}
                (None, false) => return Err(HandoffError::Unknown),
                (Some(jti), _) => {
                    let (_, earlier) = self.load(jti).await?;
                    if earlier.to != actor.mission
                        || earlier.agent != actor.agent
                        || earlier.user != record.user
                        || earlier.tenant != record.tenant
                        || earlier.actors[..] != record.actors[i + 1..]
                    {
                        return Err(HandoffError::Unknown);
                    }
                }
            }
            to = &actor.mission;
        }
        Ok(())
    }
}

/// Runs a store operation on a blocking thread (the store traits block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, HandoffError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HandoffError::Ledger(e.to_string()))?
        .map_err(HandoffError::from)
}

#[cfg(test)]
mod tests;

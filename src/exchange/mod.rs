//! The exchange stage: the credential a downstream call carries. Never the caller's token.
//!
//! Every call to a downstream whose manifest names an exchange profile (`[auth] exchange`) gets a
//! fresh audience-bound token for (caller, downstream audience, the tool's scopes):
//!
//! - `embedded` ([`sts`]): Mandate's STS mints a short-lived ES256 JWT itself (`sub` = the user,
//!   `aud` = the downstream, `scope`, `act` = Mandate acting for the agent, `jti`).
//! - `rfc8693`, `entra-obo`, `id-jag` ([`remote`]): a token request at an identity provider.
//!
//! Tokens are cached per (caller token digest, target) until shortly before they expire, never
//! past the caller token's `exp`, with one exchange in flight per key ([`cache`]). A cache hit is
//! a mutex-guarded hash lookup and an `Arc` clone. Mandate's own traffic to a protected downstream
//! (handshake, `tools/list`, drift checks, `mandate pin`) authenticates as Mandate itself
//! ([`ServiceAuth`]).

pub mod cache;
pub mod remote;
pub mod sts;

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::ExchangeRecord;
use crate::authn::{Caller, Issuer, unix_now};
use crate::call::Reject;
use crate::call::journal::Journaled;
use crate::config::exchange::{Deliver, ExchangeKind, ExchangeProfile};
use crate::config::{Config, ToolManifest};
use crate::downstream::Downstream;
use crate::mission::ExposedTool;

pub use sts::{TokenExchangeForm, TokenExchangeResponse, token_exchange_grant};

/// `_meta` key under which stdio downstreams with `deliver = "meta"` receive the token.
pub const AUTHORIZATION_META: &str = "io.mandate/authorization";

/// A journaled call with the credential its downstream call carries: the only thing a
/// downstream accepts.
pub struct Credentialed {
    journaled: Journaled,
    /// The exchanged token for this call, when the downstream gets one.
    issued: Option<Arc<Issued>>,
    cached: bool,
}

impl Credentialed {
    pub fn tool(&self) -> &Arc<ExposedTool> {
        self.journaled.tool()
    }
    pub fn downstream(&self) -> &Arc<Downstream> {
        self.journaled.downstream()
    }
    pub fn journaled(&self) -> &Journaled {
        &self.journaled
    }
    /// `Authorization` header value (`Bearer …`) for an HTTP downstream.
    pub fn authorization(&self) -> Option<&SecretString> {
        self.issued
            .as_ref()
            .filter(|i| i.deliver == Deliver::Header)
            .map(|i| &i.header)
    }
    /// The token for `_meta["io.mandate/authorization"]` of a stdio downstream that opted in.
    pub fn meta_token(&self) -> Option<&SecretString> {
        self.issued
            .as_ref()
            .filter(|i| i.deliver == Deliver::Meta)
            .map(|i| &i.token)
    }
    /// The exchanged token (carried to the rmcp path as a request extension).
    pub fn issued(&self) -> Option<&Arc<Issued>> {
        self.issued.as_ref()
    }
    /// What the audit record says about the exchange (never the token).
    pub fn record(&self) -> Option<ExchangeRecord> {
        self.issued.as_ref().map(|i| ExchangeRecord {
            profile: i.profile.to_string(),
            audience: i.audience.to_string(),
            token_id: i.jti.clone(),
            expires_at: i.expires_at,
            cached: self.cached,
        })
    }
    /// The arguments as the caller sent them (validated), as raw JSON for splicing.
    pub fn raw_arguments(&self) -> &str {
        self.journaled.authorized().raw_arguments()
    }
    /// The arguments as a map (for the rmcp path).
    pub fn arguments(&self) -> &serde_json::Map<String, serde_json::Value> {
        self.journaled.authorized().arguments()
    }
}

/// Why no downstream token could be had. Cloneable: one exchange's outcome answers every caller
/// waiting for it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExchangeError {
    #[error(
        "the identity provider will not issue tokens for `{audience}` (`invalid_target`): ask an administrator to allow Mandate's client to exchange tokens for this downstream"
    )]
    InvalidTarget { audience: String },
    #[error(
        "the identity provider needs the user (`{code}`{}): ask the user to sign in again (or give consent), then retry with their fresh token",
        describe(.description)
    )]
    NeedsUser {
        code: String,
        description: Option<String>,
    },
    #[error(
        "the identity provider refused the caller's token for exchange (`{code}`{}): get a fresh token and retry",
        describe(.description)
    )]
    SubjectRefused {
        code: String,
        description: Option<String>,
    },
    #[error(
        "the identity provider refused the exchange of profile `{profile}` (`{code}`{}): check the profile's client credentials and the downstream's scopes",
        describe(.description)
    )]
    Refused {
        profile: String,
        code: String,
        description: Option<String>,
    },
    #[error(
        "the identity provider of exchange profile `{profile}` is unavailable ({reason}) and no unexpired token for `{audience}` is cached: retry when it is back"
    )]
    Unavailable {
        profile: String,
        audience: String,
        reason: String,
    },
    #[error(
        "the identity provider of exchange profile `{profile}` answered with {reason}: check its `token_endpoint`"
    )]
    BadResponse { profile: String, reason: String },
    #[error(
        "the `entra-obo` exchange needs a user's token, and this caller's token is app-only (no user): call with a token issued to a user, or use a profile with client credentials"
    )]
    AppOnly,
    #[error(
        "the token exchange at `{0}` needs the caller's token, which was not kept for this caller: report this to the Mandate operators"
    )]
    NoSubjectToken(String),
    #[error("cannot mint a downstream token: {0}")]
    Mint(String),
    #[error("the caller's token expired: get a fresh token")]
    CallerExpired,
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// A downstream token: what a cache entry holds.
pub struct Issued {
    /// `Bearer <token>`.
    header: SecretString,
    token: SecretString,
    pub jti: Option<String>,
    /// Unix seconds: never past the caller token's `exp`.
    pub expires_at: u64,
    /// Unix seconds after which the next call exchanges again (shortly before `expires_at`).
    pub refresh_at: u64,
    /// The agent it was exchanged for (dropped by [`Exchanger::forget_agent`]).
    pub agent: Arc<str>,
    pub profile: Arc<str>,
    pub audience: Arc<str>,
    deliver: Deliver,
}

impl Issued {
    fn new(
        token: String,
        jti: Option<String>,
        expires_at: u64,
        target: &Target,
        agent: &str,
    ) -> Self {
        let now = unix_now();
        let lifetime = expires_at.saturating_sub(now);
        let margin = (lifetime / 5).clamp(1, 60);
        Self {
            header: SecretString::from(format!("Bearer {token}")),
            token: SecretString::from(token),
            jti,
            expires_at,
            refresh_at: expires_at.saturating_sub(margin),
            agent: Arc::from(agent),
            profile: target.profile.name.clone(),
            audience: target.audience.clone(),
            deliver: target.deliver,
        }
    }

    /// The bare token (for tests and the bench).
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }
}

/// A profile with what it needs at run time (client secrets read, keys loaded).
pub struct Profile {
    pub name: Arc<str>,
    pub kind: ExchangeKind,
    config: ExchangeProfile,
    remote: Option<remote::Remote>,
}

/// One (audience, scopes, profile) a call may need a token for.
pub struct Target {
    /// Small integer: the cache key's second half.
    id: u32,
    pub audience: Arc<str>,
    pub scopes: Vec<String>,
    /// `scopes`, space-separated.
    pub scope: String,
    pub profile: Arc<Profile>,
    pub deliver: Deliver,
}

struct ManifestTargets {
    /// Mandate's own traffic and tools that name no scopes.
    default: Arc<Target>,
    tools: HashMap<String, Arc<Target>>,
}

/// The token exchange: profiles, targets and the cache. One per broker.
pub struct Exchanger {
    issuer: Arc<Issuer>,
    /// Mandate's own identity in `act.sub` and as the subject of its own tokens.
    identity: String,
    /// Audiences a subject token for the embedded `/oauth/token` exchange may carry.
    accepted: Vec<String>,
    manifests: HashMap<String, ManifestTargets>,
    cache: cache::TokenCache,
}

/// The cache key half that stands for Mandate itself (no caller token hashes to it in practice).
const SERVICE_KEY: [u8; 32] = [0xa5; 32];

impl Exchanger {
    /// Builds the profiles (reading client secrets and keys) and targets of every manifest with
    /// an exchange. Fails when a secret or key cannot be read.
    pub fn new(config: &Config, issuer: Arc<Issuer>) -> anyhow::Result<Self> {
        let http = remote::http_client();
        let mut profiles: HashMap<String, Arc<Profile>> = HashMap::new();
        for p in &config.settings.exchange {
            let remote = match p.kind {
                ExchangeKind::Embedded => None,
                ExchangeKind::Rfc8693 | ExchangeKind::EntraObo | ExchangeKind::IdJag => {
                    Some(remote::Remote::new(p, http.clone())?)
                }
            };
            profiles.insert(
                p.name.clone(),
                Arc::new(Profile {
                    name: Arc::from(p.name.as_str()),
                    kind: p.kind,
                    config: p.clone(),
                    remote,
                }),
            );
        }
        let mut next = 0u32;
        let mut manifests = HashMap::new();
        for m in config.manifests.values() {
            // A stdio downstream without `deliver = "meta"` gets no token: none is minted.
            let Some(auth) = m.auth.as_ref().filter(|a| a.deliver != Deliver::None) else {
                continue;
            };
            let Some(profile) = profiles.get(&auth.exchange) else {
                anyhow::bail!(
                    "tool manifest `{}` names the unknown exchange profile `{}`",
                    m.id,
                    auth.exchange
                );
            };
            let mut target = |scopes: &[String]| {
                next += 1;
                Arc::new(Target {
                    id: next,
                    audience: Arc::from(auth.audience.as_str()),
                    scopes: scopes.to_vec(),
                    scope: scopes.join(" "),
                    profile: profile.clone(),
                    deliver: auth.deliver,
                })
            };
            let default = target(&auth.scopes);
            let tools = m
                .tools
                .values()
                .map(|t| {
                    let t_target = if t.scopes.is_empty() {
                        default.clone()
                    } else {
                        target(&t.scopes)
                    };
                    (t.name.clone(), t_target)
                })
                .collect();
            manifests.insert(m.id.clone(), ManifestTargets { default, tools });
        }
        let public = config.settings.public_url.clone();
        let mut accepted = vec![public.clone()];
        accepted.extend(
            config
                .missions
                .values()
                .map(|m| format!("{public}{}", m.http_path())),
        );
        Ok(Self {
            identity: issuer.issuer().to_owned(),
            issuer,
            accepted,
            manifests,
            cache: cache::TokenCache::new(cache::CAPACITY),
        })
    }

    /// Mandate's identity (`act.sub` of embedded tokens; the subject of its own tokens).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether a manifest's downstream gets exchanged tokens.
    pub fn protects(&self, manifest: &str) -> bool {
        self.manifests.contains_key(manifest)
    }

    /// Drops every cached token exchanged for an agent (suspension, offboarding).
    pub fn forget_agent(&self, agent: &str) {
        self.cache.forget_agent(agent);
    }

    /// The number of cached tokens (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn target(&self, manifest: &str, tool: &str) -> Option<&Arc<Target>> {
        let m = self.manifests.get(manifest)?;
        Some(m.tools.get(tool).unwrap_or(&m.default))
    }

    /// A token for a caller's call of `tool` on `manifest`; `None` when the downstream gets none.
    /// The second value says whether it came from the cache.
    pub async fn token_for(
        &self,
        caller: &Arc<Caller>,
        manifest: &str,
        tool: &str,
    ) -> Result<Option<(Arc<Issued>, bool)>, ExchangeError> {
        let Some(target) = self.target(manifest, tool) else {
            return Ok(None);
        };
        if caller.expired() {
            return Err(ExchangeError::CallerExpired);
        }
        let key = caller.token.digest().map(|d| cache::Key {
            caller: *d,
            target: target.id,
        });
        let now = unix_now();
        if let Some(hit) = key.and_then(|k| self.cache.fresh(&k, now)) {
            return Ok(Some((hit, true)));
        }
        let (target, caller) = (target.clone(), caller.clone());
        let issuer = self.issuer.clone();
        let identity = self.identity.clone();
        let agent = caller.agent.clone();
        self.cache
            .get_or_exchange(key, &agent, now, move || {
                async move { exchange(&issuer, &identity, &caller, &target).await }.boxed()
            })
            .await
            .map(Some)
    }

    /// A token for Mandate's own traffic to a manifest's downstream; `None` when it gets none.
    pub async fn service_token(
        &self,
        manifest: &str,
    ) -> Result<Option<Arc<Issued>>, ExchangeError> {
        let Some(m) = self.manifests.get(manifest) else {
            return Ok(None);
        };
        let target = m.default.clone();
        let key = cache::Key {
            caller: SERVICE_KEY,
            target: target.id,
        };
        let now = unix_now();
        if let Some(hit) = self.cache.fresh(&key, now) {
            return Ok(Some(hit));
        }
        let issuer = self.issuer.clone();
        let identity = self.identity.clone();
        self.cache
            .get_or_exchange(Some(key), &identity.clone(), now, move || {
                async move { service_exchange(&issuer, &identity, &target).await }.boxed()
            })
            .await
            .map(|(issued, _)| Some(issued))
    }

    /// The credential for Mandate's own traffic to a manifest's downstream.
    pub fn service_auth(self: &Arc<Self>, manifest: &ToolManifest) -> Option<ServiceAuth> {
        self.protects(&manifest.id).then(|| ServiceAuth {
            exchanger: self.clone(),
            manifest: manifest.id.clone(),
        })
    }
}

/// One exchange for a caller (no cache).
async fn exchange(
    issuer: &Issuer,
    identity: &str,
    caller: &Caller,
    target: &Target,
) -> Result<Arc<Issued>, ExchangeError> {
    let profile = &target.profile;
    let issued = match (&profile.remote, profile.kind) {
        (None, _) | (_, ExchangeKind::Embedded) => {
            let minted =
                sts::mint_for_caller(issuer, identity, caller, target, profile.config.ttl)?;
            Issued::new(
                minted.token,
                Some(minted.jti),
                minted.expires_at,
                target,
                &caller.agent,
            )
        }
        (Some(remote), kind) => {
            let subject = sts::subject_token(issuer, caller, remote.issuer_audience())?;
            let got = remote.exchange(kind, caller, &subject, target).await?;
            // Never past the caller token's expiry.
            let expires_at = got.expires_at.min(caller.expires_at);
            Issued::new(got.token, got.jti, expires_at, target, &caller.agent)
        }
    };
    Ok(Arc::new(issued))
}

/// A token for Mandate itself (no caller).
async fn service_exchange(
    issuer: &Issuer,
    identity: &str,
    target: &Target,
) -> Result<Arc<Issued>, ExchangeError> {
    let profile = &target.profile;
    let issued = match &profile.remote {
        None => {
            let minted = sts::mint_for_mandate(issuer, identity, target, profile.config.ttl)?;
            Issued::new(
                minted.token,
                Some(minted.jti),
                minted.expires_at,
                target,
                identity,
            )
        }
        Some(remote) => {
            let got = remote.service_token(target).await?;
            Issued::new(got.token, got.jti, got.expires_at, target, identity)
        }
    };
    Ok(Arc::new(issued))
}

/// Mandate's own credential for one downstream: what its connection (handshake, `tools/list`,
/// drift checks, `mandate pin`) sends.
#[derive(Clone)]
pub struct ServiceAuth {
    exchanger: Arc<Exchanger>,
    manifest: String,
}

impl ServiceAuth {
    /// The bearer token (without `Bearer `) to send now.
    pub async fn bearer(&self) -> Result<String, ExchangeError> {
        match self.exchanger.service_token(&self.manifest).await? {
            Some(issued) => Ok(issued.token.expose_secret().to_owned()),
            None => Err(ExchangeError::Mint(format!(
                "tool manifest `{}` has no exchange",
                self.manifest
            ))),
        }
    }
}

/// Stage 6: obtain the downstream credential (from the exchanger of the call's downstream).
pub async fn credential(journaled: Journaled) -> Result<Credentialed, Reject> {
    let Some(exchanger) = journaled.downstream().exchanger().cloned() else {
        return Ok(Credentialed {
            journaled,
            issued: None,
            cached: false,
        });
    };
    let tool = journaled.tool();
    let caller = journaled.authorized().caller();
    match exchanger
        .token_for(caller, &tool.manifest, &tool.tool)
        .await
    {
        Ok(Some((issued, cached))) => Ok(Credentialed {
            journaled,
            issued: Some(issued),
            cached,
        }),
        Ok(None) => Ok(Credentialed {
            journaled,
            issued: None,
            cached: false,
        }),
        Err(e) => Err(Reject::Exchange(e)),
    }
}

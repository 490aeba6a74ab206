//! The trusted issuers together: a token goes to the issuer its `iss` names exactly (the embedded
//! one or a configured external one; any other is refused), is checked by [`super::token`], and
//! the verified [`Caller`] is cached by the token's SHA-256 until its `exp` — a cached entry is
//! dropped once its signing key leaves the issuer's JWKS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::external::{External, IssuerStatus};
use super::token::{self, MAX_TOKEN_BYTES, Refusal, Rules};
use super::{AuthnError, Caller, Issuer, unix_now};
use crate::config::issuers::{IssuerSettings, TenantFrom, TokenType};

/// Most verified tokens kept.
const CACHE_ENTRIES: usize = 10_000;

/// Which trusted issuer: the embedded one or an external one by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trusted {
    Embedded,
    External(usize),
}

struct Cached {
    caller: Arc<Caller>,
    issuer: Trusted,
    kid: String,
    /// Every value of the token's `aud`.
    audiences: Vec<String>,
}

/// A token lacks scopes its issuer requires: answered 403 `insufficient_scope`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token lacks the required scope `{}`: request it from the issuer", missing.join(" "))]
pub struct InsufficientScope {
    /// What the token must grant (all of it, for the challenge's `scope`).
    pub required: Vec<String>,
    pub missing: Vec<String>,
}

/// Verifies bearer tokens of every trusted issuer.
pub struct Verifier {
    embedded: Arc<Issuer>,
    embedded_rules: Rules,
    externals: Vec<Arc<External>>,
    /// Whether some issuer takes tokens without `typ`.
    untyped: bool,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl Verifier {
    pub fn new(embedded: Arc<Issuer>, issuers: &[IssuerSettings]) -> anyhow::Result<Self> {
        let embedded_rules = Rules {
            issuer: embedded.issuer().to_owned(),
            algorithms: vec![jsonwebtoken::Algorithm::ES256],
            token_type: TokenType::AccessToken,
            audiences: Vec::new(),
            tenant: TenantFrom::Claim("tenant".into()),
            agent_claims: vec!["azp".into()],
            // `mandate token --attr`: the policy attributes as top-level claims.
            groups_claim: Some("groups".into()),
            roles_claim: Some("roles".into()),
            attributes: super::ATTRIBUTE_CLAIMS
                .iter()
                .filter(|c| **c != "groups")
                .map(|c| ((*c).to_owned(), (*c).to_owned()))
                .collect(),
        };
        let externals = issuers
            .iter()
            .map(|s| External::new(s.clone()).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            untyped: issuers.iter().any(|i| i.token_type == TokenType::Jwt),
            embedded,
            embedded_rules,
            externals,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Starts keeping every external issuer's keys fresh (discovery, JWKS, scheduled refresh).
    pub fn start(&self, stop: &CancellationToken) {
        for external in &self.externals {
            tokio::spawn(external.clone().run(stop.clone()));
        }
    }

    /// The embedded issuer.
    pub fn embedded(&self) -> &Arc<Issuer> {
        &self.embedded
    }

    /// Identifiers of the external issuers, as configured.
    pub fn external_issuers(&self) -> impl Iterator<Item = &str> {
        self.externals.iter().map(|e| e.settings.issuer.as_str())
    }

    /// Every scope some issuer requires (for metadata and challenges).
    pub fn required_scopes(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .externals
            .iter()
            .flat_map(|e| e.settings.required_scopes.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Each external issuer's state, and whether all have keys.
    pub fn readiness(&self) -> (bool, Vec<IssuerStatus>) {
        let statuses: Vec<IssuerStatus> = self.externals.iter().map(|e| e.status()).collect();
        (statuses.iter().all(|s| s.ready), statuses)
    }

    /// Verifies the request's bearer token for a resource whose audiences are `audiences`.
    /// Exactly one `Authorization` header; a token anywhere else (query, body) is not looked at.
    pub async fn verify_request(
        &self,
        headers: &HeaderMap,
        audiences: &[&str],
    ) -> Result<Arc<Caller>, Refusal> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(Refusal::new(
                AuthnError::Malformed,
                "more than one `Authorization` header",
            ));
        }
        if first.is_some_and(|v| v.len() > MAX_TOKEN_BYTES + 16) {
            return Err(Refusal::new(
                AuthnError::MalformedToken,
                "`Authorization` longer than 8 KiB",
            ));
        }
        let token = super::bearer(first)?;
        self.verify(token, audiences).await
    }

    /// Verifies a bearer token for a resource whose audiences are `audiences`.
    pub async fn verify(&self, token: &str, audiences: &[&str]) -> Result<Arc<Caller>, Refusal> {
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cached(&digest, audiences) {
            return hit;
        }
        let parsed = token::parse(token, self.untyped)?;
        let iss = parsed.issuer()?;
        let trusted = if iss == self.embedded_rules.issuer {
            Trusted::Embedded
        } else {
            match self.externals.iter().position(|e| e.settings.issuer == iss) {
                Some(i) => Trusted::External(i),
                None => {
                    return Err(Refusal::new(
                        AuthnError::UntrustedIssuer,
                        "`iss` is no configured issuer",
                    ));
                }
            }
        };
        let (rules, keys) = match trusted {
            // Read live: a key rotation in the running server is seen at once.
            Trusted::Embedded => (&self.embedded_rules, self.embedded.key_set()),
            Trusted::External(i) => {
                let external = &self.externals[i];
                let mut keys = external.keys();
                if !keys.contains_key(&parsed.kid) {
                    external.refresh_for_unknown_kid().await;
                    keys = external.keys();
                    if keys.is_empty() {
                        return Err(Refusal::new(
                            AuthnError::IssuerUnavailable,
                            format!(
                                "no keys of `{}`: {}",
                                external.settings.issuer,
                                external.status().error.unwrap_or_default()
                            ),
                        ));
                    }
                }
                (&external.rules, keys)
            }
        };
        token::verify_signature(&parsed, rules, &keys)?;
        let mut caller = token::caller(&parsed, rules, audiences, unix_now(), &digest)?;
        // Kept (as a secret) only for exchanges that must present it to its own issuer.
        caller.token = super::CallerToken::new(token);
        let caller = Arc::new(caller);
        let all_audiences = match parsed.claims.get("aud") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => vec![caller.audience.clone()],
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.retain(|_, c| !c.caller.expired());
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                digest,
                Cached {
                    caller: caller.clone(),
                    issuer: trusted,
                    kid: parsed.kid.clone(),
                    audiences: all_audiences,
                },
            );
        }
        Ok(caller)
    }

    /// A cached verification, re-checked for expiry, key presence and this resource's audience.
    fn cached(
        &self,
        digest: &[u8; 32],
        audiences: &[&str],
    ) -> Option<Result<Arc<Caller>, Refusal>> {
        let mut cache = self.cache.lock().ok()?;
        let entry = cache.get(digest)?;
        let (rules, key_present) = match entry.issuer {
            Trusted::Embedded => (
                &self.embedded_rules,
                self.embedded.key_set().contains_key(&entry.kid),
            ),
            Trusted::External(i) => (
                &self.externals[i].rules,
                self.externals[i].keys().contains_key(&entry.kid),
            ),
        };
        if entry.caller.expired() || !key_present {
            // Verified again from scratch (and refused with the precise reason).
            cache.remove(digest);
            return None;
        }
        let matched = entry
            .audiences
            .iter()
            .find(|a| audiences.contains(&a.as_str()) || rules.audiences.iter().any(|r| r == *a));
        Some(match matched {
            None => Err(Refusal::new(
                AuthnError::WrongAudience,
                "`aud` does not name this resource",
            )),
            Some(a) if *a == entry.caller.audience => Ok(entry.caller.clone()),
            Some(a) => {
                let mut caller = (*entry.caller).clone();
                caller.audience = a.clone();
                Ok(Arc::new(caller))
            }
        })
    }

    /// Whether `caller` holds every scope its issuer requires.
    pub fn check_scopes(&self, caller: &Caller) -> Result<(), InsufficientScope> {
        let Some(external) = self
            .externals
            .iter()
            .find(|e| e.settings.issuer == caller.issuer)
        else {
            return Ok(());
        };
        let required = &external.settings.required_scopes;
        let missing: Vec<String> = required
            .iter()
            .filter(|s| !caller.scopes.contains(s))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(InsufficientScope {
                required: required.clone(),
                missing,
            })
        }
    }
}

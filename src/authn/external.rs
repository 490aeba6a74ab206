//! An external issuer at run time: its metadata discovered (OIDC Discovery, else RFC 8414), its
//! JWKS fetched, cached and refreshed on a schedule, and refreshed early when a token names an
//! unknown `kid` — at most once per `jwks_min_interval`, one fetch at a time (single-flight), so
//! a flood of forged `kid`s costs the issuer nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::token::{Key, KeySet, Rules};
use crate::config::issuers::{IssuerSettings, TenantFrom, check_url};

/// Largest metadata or JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Timeout of one metadata or JWKS request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between retries while an issuer is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What `/readyz` says about an issuer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuerStatus {
    pub issuer: String,
    /// Whether its keys are loaded.
    pub ready: bool,
    pub keys: usize,
    /// JWKS fetches so far (scheduled, retries and unknown-`kid` refreshes).
    pub jwks_fetches: u64,
    /// The last fetch's error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct State {
    jwks_uri: Option<String>,
    /// When the last fetch started.
    last_attempt: Option<Instant>,
    error: Option<String>,
    loaded: bool,
}

/// One configured external issuer.
pub struct External {
    pub settings: IssuerSettings,
    pub rules: Rules,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    state: Mutex<State>,
    /// Held while fetching: one fetch at a time.
    flight: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl External {
    pub fn new(settings: IssuerSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .build()?;
        let mut agent_claims = Vec::new();
        match &settings.agent_claim {
            Some(c) => agent_claims.push(c.clone()),
            None => agent_claims.extend(["client_id".to_owned(), "azp".to_owned()]),
        }
        let rules = Rules {
            issuer: settings.issuer.clone(),
            algorithms: settings.algorithms.clone(),
            token_type: settings.token_type,
            audiences: settings.audiences.clone(),
            tenant: match &settings.tenant {
                TenantFrom::Claim(c) => TenantFrom::Claim(c.clone()),
                TenantFrom::Fixed(t) => TenantFrom::Fixed(t.clone()),
            },
            agent_claims,
            groups_claim: settings.groups_claim.clone(),
            roles_claim: settings.roles_claim.clone(),
            attributes: settings.attributes.clone(),
        };
        Ok(Self {
            settings,
            rules,
            http,
            keys: RwLock::new(Arc::new(KeySet::new())),
            state: Mutex::new(State::default()),
            flight: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        })
    }

    /// The keys known now.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|_| Arc::new(KeySet::new()))
    }

    pub fn status(&self) -> IssuerStatus {
        let (ready, error) = self
            .state
            .lock()
            .map(|s| (s.loaded, s.error.clone()))
            .unwrap_or((false, Some("state unavailable".into())));
        IssuerStatus {
            issuer: self.settings.issuer.clone(),
            ready,
            keys: self.keys().len(),
            jwks_fetches: self.fetches.load(Ordering::Relaxed),
            error,
        }
    }

    /// Keeps the keys fresh until `stop`: fetches now, then every `jwks_refresh`; while the issuer
    /// is unreachable, retries with backoff (1 s doubling to 60 s).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.fetch().await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    self.settings.jwks_refresh
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.settings.issuer, error = %e, "issuer keys unavailable");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_RETRY);
                    wait
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Called for a token whose `kid` is unknown: fetches the JWKS again unless a fetch started
    /// less than `jwks_min_interval` ago. Concurrent callers share one fetch.
    pub async fn refresh_for_unknown_kid(&self) {
        let _flight = self.flight.lock().await;
        let recent = self.state.lock().is_ok_and(|s| {
            s.last_attempt
                .is_some_and(|t| t.elapsed() < self.settings.jwks_min_interval)
        });
        if recent {
            return;
        }
        if let Err(e) = self.fetch_locked().await {
            tracing::warn!(issuer = %self.settings.issuer, error = %e, "issuer keys refresh failed");
        }
    }

    async fn fetch(&self) -> anyhow::Result<()> {
        let _flight = self.flight.lock().await;
        self.fetch_locked().await
    }

    /// Discovers the metadata if needed and loads the JWKS (the caller holds `flight`).
    async fn fetch_locked(&self) -> anyhow::Result<()> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let known = self.state.lock().ok().and_then(|mut s| {
            s.last_attempt = Some(Instant::now());
            s.jwks_uri.clone()
        });
        let result = async {
            let jwks_uri = match known {
                Some(u) => u,
                None => self.discover().await?,
            };
            let jwks = self.get_json(&jwks_uri).await?;
            let keys = key_set(&jwks, &self.settings.algorithms);
            if keys.is_empty() {
                anyhow::bail!("its JWKS at `{jwks_uri}` has no usable signing key");
            }
            Ok((jwks_uri, keys))
        }
        .await;
        let Ok(mut state) = self.state.lock() else {
            anyhow::bail!("issuer state unavailable");
        };
        match result {
            Ok((jwks_uri, keys)) => {
                if !state.loaded || state.error.is_some() {
                    tracing::info!(issuer = %self.settings.issuer, keys = keys.len(), "issuer keys loaded");
                }
                if let Ok(mut k) = self.keys.write() {
                    *k = Arc::new(keys);
                }
                state.jwks_uri = Some(jwks_uri);
                state.error = None;
                state.loaded = true;
                Ok(())
            }
            Err(e) => {
                state.error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The `jwks_uri` from the issuer's metadata, whose `issuer` must be exactly the configured one.
    async fn discover(&self) -> anyhow::Result<String> {
        let issuer = &self.settings.issuer;
        let mut errors = Vec::new();
        for url in metadata_urls(issuer) {
            match self.get_json(&url).await {
                Ok(meta) => {
                    if meta.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
                        anyhow::bail!(
                            "metadata at `{url}` names another issuer: set `issuer` to its `issuer` value exactly"
                        );
                    }
                    let Some(jwks_uri) = meta.get("jwks_uri").and_then(Value::as_str) else {
                        anyhow::bail!("metadata at `{url}` has no `jwks_uri`");
                    };
                    if let Err(why) = check_url(jwks_uri) {
                        anyhow::bail!("`jwks_uri` `{jwks_uri}` {why}");
                    }
                    return Ok(jwks_uri.to_owned());
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        anyhow::bail!("no metadata found: {}", errors.join("; "))
    }

    async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach `{url}`: {e}"))?;
        if !response.status().is_success() {
            anyhow::bail!("`{url}` answered {}", response.status());
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            anyhow::bail!("`{url}` is larger than 256 KiB");
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!("reading `{url}`: {e}"))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            anyhow::bail!("`{url}` is larger than 256 KiB");
        }
        serde_json::from_slice(&body).map_err(|_| anyhow::anyhow!("`{url}` is not JSON"))
    }
}

/// Where the metadata of `issuer` may be: OIDC Discovery's `<issuer>/.well-known/openid-configuration`,
/// then RFC 8414's `<origin>/.well-known/oauth-authorization-server<path>`.
fn metadata_urls(issuer: &str) -> Vec<String> {
    let trimmed = issuer.trim_end_matches('/');
    let mut urls = vec![format!("{trimmed}/.well-known/openid-configuration")];
    if let Ok(url) = reqwest::Url::parse(issuer) {
        let path = url.path().trim_end_matches('/');
        urls.push(format!(
            "{}/.well-known/oauth-authorization-server{path}",
            url.origin().ascii_serialization()
        ));
    }
    urls
}

/// The usable signing keys of a JWKS: with a `kid`, for signatures (`use` absent or `sig`), of
/// an allowed algorithm. Each key verifies only its own algorithm (its `alg`, or the algorithms
/// of its type and curve when it names none). Other keys are skipped.
pub fn key_set(jwks: &Value, allowed: &[Algorithm]) -> KeySet {
    let mut out = KeySet::new();
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        return out;
    };
    for value in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if value.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
            continue;
        }
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            // Symmetric keys never verify access tokens.
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let named = match jwk.common.key_algorithm {
            None => None,
            Some(a) => match key_algorithm(a) {
                Some(a) => Some(a),
                None => continue,
            },
        };
        let algorithms: Vec<Algorithm> = family
            .into_iter()
            .filter(|a| named.is_none_or(|n| n == *a) && allowed.contains(a))
            .collect();
        if algorithms.is_empty() {
            continue;
        }
        let Ok(decoding) = jsonwebtoken::DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.insert(
            kid,
            Key {
                decoding,
                algorithms,
            },
        );
    }
    out
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    match a {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        KeyAlgorithm::HS256
        | KeyAlgorithm::HS384
        | KeyAlgorithm::HS512
        | KeyAlgorithm::RSA1_5
        | KeyAlgorithm::RSA_OAEP
        | KeyAlgorithm::RSA_OAEP_256
        | KeyAlgorithm::UNKNOWN_ALGORITHM => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_signing_keys_with_a_kid_of_an_allowed_algorithm_are_kept() {
        let ec = |kid: &str, extra: Value| {
            let mut k = json!({"kty": "EC", "crv": "P-256", "kid": kid,
                "x": "4zklu6WAIMxf_lcrM5xp7Zs6KJnj3LeR-Kt1baN5UWA",
                "y": "9-1HnAhp4AG60toncyNUnDgojPCxvvWgpRtLE6wNU68"});
            if let (Some(k), Value::Object(e)) = (k.as_object_mut(), extra) {
                k.extend(e);
            }
            k
        };
        let jwks = json!({"keys": [
            ec("plain", json!({})),
            ec("sig", json!({"use": "sig", "alg": "ES256"})),
            ec("enc", json!({"use": "enc"})),
            ec("wrong-alg", json!({"alg": "RS256"})),
            {"kty": "EC", "crv": "P-256", "x": "4zklu6WAIMxf_lcrM5xp7Zs6KJnj3LeR-Kt1baN5UWA",
             "y": "9-1HnAhp4AG60toncyNUnDgojPCxvvWgpRtLE6wNU68"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "weird", "kid": "weird"},
        ]});
        let keys = key_set(&jwks, &[Algorithm::ES256, Algorithm::RS256]);
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["plain", "sig"]);
        assert_eq!(keys["sig"].algorithms, [Algorithm::ES256]);
        // An issuer not allowing ES256 keeps none of them.
        assert!(key_set(&jwks, &[Algorithm::RS256]).is_empty());
    }

    #[test]
    fn metadata_is_looked_for_by_oidc_discovery_then_rfc_8414() {
        assert_eq!(
            metadata_urls("https://login.example.com/tenant/v2.0"),
            [
                "https://login.example.com/tenant/v2.0/.well-known/openid-configuration",
                "https://login.example.com/.well-known/oauth-authorization-server/tenant/v2.0",
            ]
        );
        assert_eq!(
            metadata_urls("https://sts.example.com/t/"),
            [
                "https://sts.example.com/t/.well-known/openid-configuration",
                "https://sts.example.com/.well-known/oauth-authorization-server/t",
            ]
        );
    }
}

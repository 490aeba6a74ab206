//! Caller identity: the embedded issuer (signing keys, minting, JWKS), the external issuers
//! (`[[identity.issuers]]`: discovery, JWKS cache, [`external`]), and bearer-token verification
//! ([`token`] has the rules every token passes, [`verifier`] routes a token to its issuer by
//! exact `iss` and caches verified tokens by SHA-256 until they expire).
//!
//! The embedded issuer signs ES256 `at+jwt` tokens. External issuers' algorithms are an explicit
//! allow-list of asymmetric ones; `none` and HMAC are never accepted, and keys come only from the
//! issuer's JWKS.
//!
//! Key rotation ([`Issuer::rotate`]): new tokens are signed with a new key; the old key's public
//! part stays in the JWKS, and tokens it signed stay valid, until they have expired (at most
//! [`MAX_TTL`] plus leeway after the rotation). Its private part is deleted at once.

pub mod external;
pub mod token;
pub mod verifier;

pub use token::Refusal;
pub use verifier::{InsufficientScope, Verifier};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::store::{ISSUER_KEY, ISSUER_RETIRED_PREFIX, KeyStore, Store};

/// `typ` header of access tokens (RFC 9068).
pub const TOKEN_TYPE: &str = "at+jwt";
/// Clock leeway for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest lifetime `mandate token` will mint.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Claims of a Mandate access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub tenant: String,
    /// The agent (client) acting for `sub`.
    pub azp: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Attributes for policy (`groups`, `department`, `region`, `clearance`), as top-level claims.
    #[serde(flatten, default)]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The claims of an embedded-issuer token that become [`Caller::attributes`].
pub const ATTRIBUTE_CLAIMS: [&str; 4] = ["groups", "department", "region", "clearance"];

/// A verified caller: the human (or service) `subject` and the `agent` acting for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `iss` (the embedded issuer or a configured external one).
    pub issuer: String,
    pub subject: String,
    pub tenant: String,
    pub agent: String,
    pub roles: Vec<String>,
    pub token_id: String,
    /// The token's `aud`.
    pub audience: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// OAuth scopes the token grants (`scope`, space-separated in the token).
    pub scopes: Vec<String>,
    /// Claims mapped for policy (groups, department, region, clearance, ...), by attribute name.
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    /// The token's `act` claim as presented, not yet verified: it grants nothing. Only a handoff
    /// token of the embedded issuer may carry one ([`crate::handoff`] verifies it).
    pub act: Option<serde_json::Value>,
    /// The earlier actors of a handoff, most recent first, each verified against the handoff
    /// ledger; empty for a direct call. Recorded and able to revoke, never granting (RFC 8693
    /// §4.1: decisions use the subject and the current actor, [`Caller::agent`]).
    pub actors: Vec<crate::handoff::Actor>,
    /// The bearer token itself, for the token exchange only (a secret: never logged; compared
    /// and printed by its digest).
    pub token: CallerToken,
}

/// A caller's bearer token: the secret and its SHA-256 (the token-exchange cache key). Only the
/// `rfc8693`-style exchanges of a token an external issuer issued ever send it, and only to that
/// issuer's token endpoint.
#[derive(Clone, Default)]
pub struct CallerToken {
    secret: Option<Arc<secrecy::SecretString>>,
    digest: [u8; 32],
}

impl CallerToken {
    pub fn new(token: &str) -> Self {
        Self {
            secret: Some(Arc::new(secrecy::SecretString::from(token))),
            digest: sha2::Sha256::digest(token.as_bytes()).into(),
        }
    }
    /// The token, when the verifier kept it.
    pub fn secret(&self) -> Option<&secrecy::SecretString> {
        self.secret.as_deref()
    }
    /// SHA-256 of the token; `None` when it was not kept (then nothing is cached for it).
    pub fn digest(&self) -> Option<&[u8; 32]> {
        self.secret.as_ref().map(|_| &self.digest)
    }
}

impl PartialEq for CallerToken {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}
impl Eq for CallerToken {}

impl std::fmt::Debug for CallerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallerToken(sha256:{})", hex::encode(&self.digest[..8]))
    }
}

impl Caller {
    /// Whether the token has expired (with leeway).
    pub fn expired(&self) -> bool {
        unix_now() > self.expires_at + LEEWAY_SECS
    }
}

/// Why a token was refused. Always maps to HTTP 401.
///
/// The texts are what the caller sees: a fixed set that says what to do, never the token
/// library's internals (which would describe the token's bytes and help nobody fix it). The
/// precise reason goes to the audit record ([`Refusal::reason`]).
#[derive(Debug, thiserror::Error, PartialEq, Clone)]
pub enum AuthnError {
    #[error(
        "no bearer token: send `Authorization: Bearer <token>` (mint one with `mandate token`)"
    )]
    Missing,
    #[error("malformed `Authorization` header: expected one `Bearer <token>`")]
    Malformed,
    #[error(
        "malformed bearer token: send the access token your issuer (or `mandate token`) gave, unchanged"
    )]
    MalformedToken,
    #[error(
        "token is not an access token this broker accepts (its `alg`, `typ` or header): send an ES256 `at+jwt` access token from `mandate token` or an access token from a configured issuer"
    )]
    NotAccepted,
    #[error(
        "token signature is invalid: it was not signed by its issuer's published keys, or was changed (get a new token)"
    )]
    BadSignature,
    #[error(
        "token issuer is not trusted: use a token of an issuer in `[[identity.issuers]]`, or mint one with this broker's `mandate token`"
    )]
    UntrustedIssuer,
    #[error(
        "token audience is not this resource: request the token for this mission's URL (`resource`), or mint one with `mandate token --mission <id>`"
    )]
    WrongAudience,
    #[error("token is not valid yet: check the clocks of this machine and the issuer's")]
    NotYetValid,
    #[error("token expired: get a new one (`mandate token` mints one)")]
    Expired,
    #[error(
        "token claims are missing or invalid (`sub`, `exp`, `iat`, tenant or agent): have the issuer include them (see `[[identity.issuers]]`)"
    )]
    BadClaims,
    #[error("token issuer's keys cannot be fetched now: try again shortly")]
    IssuerUnavailable,
}

impl AuthnError {
    /// Whether a token was presented (RFC 6750: no `error=` when there were no credentials).
    pub fn token_presented(&self) -> bool {
        !matches!(self, AuthnError::Missing)
    }
}

/// The embedded issuer: an ES256 key kept in the store, published as a JWKS.
pub struct Issuer {
    issuer: String,
    /// The keys in use; replaced as a whole when a running server rotates ([`Issuer::reload`]).
    keys: std::sync::RwLock<Arc<SigningKeys>>,
}

/// The signing key and the keys that verify, loaded together from the store.
struct SigningKeys {
    kid: String,
    encoding: EncodingKey,
    /// Keys that verify tokens, by `kid`: the current one and the retired ones still published.
    verifying: Arc<token::KeySet>,
    jwks: serde_json::Value,
}

/// The public part of an ES256 key, as published in the JWKS.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PublicJwk {
    kid: String,
    x: String,
    y: String,
}

impl PublicJwk {
    fn of(secret: &p256::SecretKey) -> anyhow::Result<Self> {
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            anyhow::bail!("issuer key has no affine coordinates");
        };
        let (x, y) = (b64.encode(x), b64.encode(y));
        let kid = hex::encode(&sha2::Sha256::digest(format!("{x}.{y}"))[..8]);
        Ok(Self { kid, x, y })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y, "kid": self.kid, "use": "sig", "alg": "ES256" })
    }
}

/// A rotated-out key: published (and accepted) until the tokens it signed have expired.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RetiredKey {
    #[serde(flatten)]
    public: PublicJwk,
    /// Unix seconds.
    retired_at: u64,
}

impl RetiredKey {
    /// Unix seconds after which no token it signed can still be valid.
    fn published_until(&self) -> u64 {
        self.retired_at + MAX_TTL.as_secs() + LEEWAY_SECS
    }
}

/// What [`Issuer::rotate`] did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// `kid` of the key that signs new tokens.
    pub current: String,
    /// `kid` of the rotated-out key.
    pub retired: String,
    /// Unix seconds until which the rotated-out key stays published.
    pub published_until: u64,
}

impl Issuer {
    /// Loads the issuer key from the store, creating it on first use, and the rotated-out keys
    /// still published (forgetting those whose tokens have all expired).
    pub fn load_or_create(store: &Store, issuer: &str) -> anyhow::Result<Self> {
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            keys: std::sync::RwLock::new(Arc::new(SigningKeys::load(store)?)),
        })
    }

    /// Reloads the keys from the store (after [`Issuer::rotate`] in a running server): new
    /// tokens are signed with the new key at once; tokens of the old one stay valid.
    pub fn reload(&self, store: &Store) -> anyhow::Result<()> {
        let fresh = Arc::new(SigningKeys::load(store)?);
        match self.keys.write() {
            Ok(mut keys) => *keys = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// An issuer of the given keys (unit tests build one without a store).
    #[cfg(test)]
    fn from_keys(pem: &str, retired: &[PublicJwk], issuer: &str) -> anyhow::Result<Self> {
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            keys: std::sync::RwLock::new(Arc::new(SigningKeys::from_keys(pem, retired)?)),
        })
    }

    /// The keys in use now.
    fn keys(&self) -> Arc<SigningKeys> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the signing key with a new one. The old key's private part is deleted; its public
    /// part stays published until the tokens it signed have expired. A running server takes it
    /// up with [`Issuer::reload`].
    pub fn rotate(store: &Store) -> anyhow::Result<Rotation> {
        let keys = store.keys()?;
        let old_pem = current_pem(&keys)?;
        let old = PublicJwk::of(&p256::SecretKey::from_pkcs8_pem(&old_pem)?)?;
        let new_secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let new_pem = new_secret.to_pkcs8_pem(LineEnding::LF)?.to_string();
        let new = PublicJwk::of(&new_secret)?;
        let retired = RetiredKey {
            public: old.clone(),
            retired_at: unix_now(),
        };
        let record = serde_json::to_vec(&retired)?;
        let name = format!("{ISSUER_RETIRED_PREFIX}{}", old.kid);
        if !keys.replace(
            ISSUER_KEY,
            old_pem.as_bytes(),
            new_pem.as_bytes(),
            (&name, &record),
        )? {
            anyhow::bail!(
                "the signing key changed while it was being rotated: run `mandate keys rotate` again"
            );
        }
        Ok(Rotation {
            current: new.kid,
            retired: old.kid,
            published_until: retired.published_until(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.keys().jwks.clone()
    }

    /// Mints an access token.
    pub fn mint(&self, request: &TokenRequest) -> anyhow::Result<MintedToken> {
        self.mint_with_scope(request, None)
    }

    /// Mints an access token that also carries `scope` (space-separated OAuth scopes): what the
    /// embedded authorization server's `/oauth/token` issues.
    pub fn mint_scoped(&self, request: &TokenRequest, scope: &str) -> anyhow::Result<MintedToken> {
        self.mint_with_scope(request, Some(scope))
    }

    fn mint_with_scope(
        &self,
        request: &TokenRequest,
        scope: Option<&str>,
    ) -> anyhow::Result<MintedToken> {
        if request.ttl.is_zero() || request.ttl > MAX_TTL {
            anyhow::bail!("`ttl` must be between 1s and 24h");
        }
        for (name, value) in [
            ("sub", &request.subject),
            ("tenant", &request.tenant),
            ("agent", &request.agent),
        ] {
            if value.trim().is_empty() {
                anyhow::bail!("`{name}` must not be empty");
            }
        }
        let now = unix_now();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: request.subject.clone(),
            aud: request.audience.clone(),
            exp: now + request.ttl.as_secs(),
            iat: now,
            nbf: now,
            jti: random_id(),
            tenant: request.tenant.clone(),
            azp: request.agent.clone(),
            roles: request.roles.clone(),
            attributes: request.attributes.clone(),
        };
        let token = match scope {
            None => self.sign(TOKEN_TYPE, &claims)?,
            Some(scope) => {
                #[derive(Serialize)]
                struct WithScope<'a> {
                    #[serde(flatten)]
                    claims: &'a Claims,
                    scope: &'a str,
                }
                self.sign(
                    TOKEN_TYPE,
                    &WithScope {
                        claims: &claims,
                        scope,
                    },
                )?
            }
        };
        Ok(MintedToken { token, claims })
    }

    /// The keys in use now: a rotation in a running server ([`Issuer::reload`]) shows at once.
    pub fn key_set(&self) -> Arc<token::KeySet> {
        self.keys().verifying.clone()
    }

    /// Signs arbitrary claims with the current key (ES256, `kid`, the given `typ`): the embedded
    /// STS's downstream tokens.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> anyhow::Result<String> {
        let keys = self.keys();
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(keys.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &keys.encoding)?)
    }
}

impl SigningKeys {
    /// The issuer key from the store, created on first use, and the rotated-out keys still
    /// published (forgetting those whose tokens have all expired).
    fn load(store: &Store) -> anyhow::Result<Self> {
        let keys = store.keys()?;
        let pem = current_pem(&keys)?;
        let now = unix_now();
        let mut retired = Vec::new();
        for (name, value) in keys.list(ISSUER_RETIRED_PREFIX)? {
            let key: RetiredKey = serde_json::from_slice(&value).map_err(|e| {
                anyhow::anyhow!("retired issuer key `{name}` in the store is unreadable ({e}): restore the store from a backup")
            })?;
            if key.published_until() < now {
                keys.remove(&name)?;
            } else {
                retired.push(key.public);
            }
        }
        Self::from_keys(&pem, &retired)
    }

    fn from_keys(pem: &str, retired: &[PublicJwk]) -> anyhow::Result<Self> {
        let current = PublicJwk::of(&p256::SecretKey::from_pkcs8_pem(pem)?)?;
        let mut verifying = HashMap::new();
        let mut published = Vec::new();
        for key in std::iter::once(&current).chain(retired) {
            verifying.insert(
                key.kid.clone(),
                token::Key {
                    decoding: DecodingKey::from_ec_components(&key.x, &key.y)?,
                    algorithms: vec![Algorithm::ES256],
                },
            );
            published.push(key.json());
        }
        Ok(Self {
            kid: current.kid,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
            verifying: Arc::new(verifying),
            jwks: serde_json::json!({ "keys": published }),
        })
    }
}

/// The current signing key's PEM, created on first use.
fn current_pem(keys: &impl KeyStore) -> anyhow::Result<String> {
    let pem = match keys.get(ISSUER_KEY)? {
        Some(pem) => pem,
        None => {
            let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
            let pem = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
            keys.put_if_absent(ISSUER_KEY, pem.as_bytes())?
        }
    };
    String::from_utf8(pem).map_err(|_| {
        anyhow::anyhow!(
            "the issuer key in the store is not PEM text: restore the store from a backup"
        )
    })
}

/// What `mandate token` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    pub subject: String,
    pub tenant: String,
    pub agent: String,
    /// The broker's public URL, or a mission's resource URL.
    pub audience: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(with = "humantime_serde_secs")]
    pub ttl: Duration,
    /// Policy attributes to carry (see [`ATTRIBUTE_CLAIMS`]).
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

mod humantime_serde_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// A minted token and its claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedToken {
    pub token: String,
    pub claims: Claims,
}

/// Extracts the bearer token from an `Authorization` header value.
pub fn bearer(header: Option<&http::HeaderValue>) -> Result<&str, AuthnError> {
    let Some(value) = header else {
        return Err(AuthnError::Missing);
    };
    let value = value.to_str().map_err(|_| AuthnError::Malformed)?;
    let mut parts = value.splitn(2, ' ');
    let (Some(scheme), Some(token)) = (parts.next(), parts.next()) else {
        return Err(AuthnError::Malformed);
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthnError::Malformed);
    }
    Ok(token)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn issuer() -> Issuer {
        let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|p| p.to_string())
            .unwrap_or_default();
        Issuer::from_keys(&pem, &[], "http://127.0.0.1:8080")
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn request(aud: &str) -> TokenRequest {
        TokenRequest {
            subject: "alice@acme.example".into(),
            tenant: "acme".into(),
            agent: "invoice-bot".into(),
            audience: aud.into(),
            roles: vec![],
            ttl: Duration::from_secs(60),
            attributes: Default::default(),
        }
    }

    /// A verifier trusting only `iss`; `check(token, aud)` verifies and keeps only the error.
    fn verifier(iss: Issuer) -> Verifier {
        Verifier::new(Arc::new(iss), &[]).unwrap_or_else(|e| unreachable!("{e}"))
    }

    async fn check(v: &Verifier, token: &str, aud: &str) -> Result<Arc<Caller>, AuthnError> {
        v.verify(token, &[aud]).await.map_err(|r| r.error)
    }

    #[tokio::test]
    async fn minted_token_verifies_and_is_cached() {
        let v = verifier(issuer());
        let t = v
            .embedded()
            .mint(&request("http://127.0.0.1:8080"))
            .map(|m| m.token);
        let t = t.unwrap_or_default();
        let c = check(&v, &t, "http://127.0.0.1:8080").await;
        assert_eq!(c.map(|c| c.agent.clone()), Ok("invoice-bot".to_string()));
        // Cached path still enforces the audience.
        assert_eq!(
            check(&v, &t, "http://other").await.map(|_| ()),
            Err(AuthnError::WrongAudience)
        );
    }

    #[tokio::test]
    async fn wrong_audience_other_key_and_tampering_are_refused() {
        let v = verifier(issuer());
        let other = verifier(issuer());
        let t = v
            .embedded()
            .mint(&request("http://127.0.0.1:8080"))
            .map(|m| m.token)
            .unwrap_or_default();
        assert_eq!(
            check(&v, &t, "http://127.0.0.1:8080/mcp/x/y/z")
                .await
                .map(|_| ()),
            Err(AuthnError::WrongAudience)
        );
        assert_eq!(
            check(&other, &t, "http://127.0.0.1:8080").await.map(|_| ()),
            Err(AuthnError::BadSignature)
        );
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"http://127.0.0.1:8080","sub":"mallory"}"#);
        assert_eq!(
            check(&v, &parts.join("."), "http://127.0.0.1:8080")
                .await
                .map(|_| ()),
            Err(AuthnError::BadSignature)
        );
        assert_eq!(
            check(&v, "not-a-jwt", "http://127.0.0.1:8080")
                .await
                .map(|_| ()),
            Err(AuthnError::MalformedToken)
        );
    }

    #[tokio::test]
    async fn unsigned_and_hmac_tokens_are_refused() {
        let v = verifier(issuer());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = serde_json::json!({"iss":"http://127.0.0.1:8080","sub":"a","aud":"http://127.0.0.1:8080",
            "exp": unix_now()+60,"nbf":unix_now(),"iat":unix_now(),"jti":"x","tenant":"acme","azp":"bot"});
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"at+jwt"}"#),
            b64.encode(claims.to_string())
        );
        assert_eq!(
            check(&v, &none, "http://127.0.0.1:8080").await.map(|_| ()),
            Err(AuthnError::NotAccepted)
        );
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap_or_default();
        assert_eq!(
            check(&v, &hs, "http://127.0.0.1:8080").await.map(|_| ()),
            Err(AuthnError::NotAccepted)
        );
    }

    #[test]
    fn a_retired_key_is_forgotten_once_its_tokens_have_expired() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let store = Store::open(dir.path()).unwrap_or_else(|e| unreachable!("{e}"));
        let url = "http://127.0.0.1:8080";
        let rotation = Issuer::rotate(&store).unwrap_or_else(|e| unreachable!("{e}"));
        let published = |store: &Store| -> Vec<String> {
            let iss = Issuer::load_or_create(store, url).unwrap_or_else(|e| unreachable!("{e}"));
            let keys = iss.jwks()["keys"].as_array().cloned().unwrap_or_default();
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        };
        assert_eq!(
            published(&store),
            [rotation.current.clone(), rotation.retired.clone()]
        );
        // Pretend the rotation happened longer ago than the longest token lifetime.
        let keys = store.keys().unwrap_or_else(|e| unreachable!("{e}"));
        let name = format!("{ISSUER_RETIRED_PREFIX}{}", rotation.retired);
        let mut record: serde_json::Value = keys
            .get(&name)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default();
        record["retired_at"] = (unix_now() - MAX_TTL.as_secs() - LEEWAY_SECS - 1).into();
        let _ = keys.remove(&name);
        let _ = keys.put_if_absent(&name, record.to_string().as_bytes());
        assert_eq!(published(&store), [rotation.current]);
        assert_eq!(keys.list(ISSUER_RETIRED_PREFIX).ok(), Some(vec![]));
    }

    #[test]
    fn bearer_header_parsing() {
        let v = |s: &str| http::HeaderValue::from_str(s).ok();
        assert_eq!(bearer(v("Bearer abc").as_ref()), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthnError::Missing));
        assert_eq!(bearer(v("Basic abc").as_ref()), Err(AuthnError::Malformed));
        assert_eq!(bearer(v("Bearer ").as_ref()), Err(AuthnError::Malformed));
        assert_eq!(bearer(v("Bearer a b").as_ref()), Err(AuthnError::Malformed));
    }
}

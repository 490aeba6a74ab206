//! Caller identity: the embedded issuer (signing keys, minting, JWKS) and bearer-token
//! verification.
//!
//! Every call carries a bearer token. Its signature (ES256 only; `none` and HMAC are never
//! accepted), `typ` (`at+jwt`), `iss` (exact), `aud` (this broker or the mission's resource URL),
//! `exp` and `nbf` (30 s leeway) are checked. A verified token is cached by its SHA-256 until it
//! expires, so its signature is checked once. External issuers, the agent registry, token exchange
//! and `act` chains build on [`Caller`].
//!
//! Key rotation ([`Issuer::rotate`]): new tokens are signed with a new key; the old key's public
//! part stays in the JWKS, and tokens it signed stay valid, until they have expired (at most
//! [`MAX_TTL`] plus leeway after the rotation). Its private part is deleted at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::store::{ISSUER_KEY, ISSUER_RETIRED_PREFIX, KeyStore, Store};

/// `typ` header of access tokens (RFC 9068).
pub const TOKEN_TYPE: &str = "at+jwt";
/// Clock leeway for `exp` and `nbf`.
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
/// library's internals (which would describe the token's bytes and help nobody fix it).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthnError {
    #[error(
        "no bearer token: send `Authorization: Bearer <token>` (mint one with `mandate token`)"
    )]
    Missing,
    #[error("malformed `Authorization` header: expected `Bearer <token>`")]
    Malformed,
    #[error("malformed bearer token: send the token `mandate token` printed, unchanged")]
    MalformedToken,
    #[error("token is not an ES256 `at+jwt` access token: mint one with `mandate token`")]
    NotAccepted,
    #[error(
        "token signature is invalid: it was not signed by this broker's issuer, or was changed (mint one with `mandate token`)"
    )]
    BadSignature,
    #[error("token issuer is not trusted: mint one with this broker's `mandate token`")]
    UntrustedIssuer,
    #[error(
        "token audience is not this resource: mint one for this mission (`mandate token --mission <id>`)"
    )]
    WrongAudience,
    #[error("token is not valid yet: check the clocks of this machine and the issuer's")]
    NotYetValid,
    #[error("token expired: mint a new one with `mandate token`")]
    Expired,
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
    kid: String,
    encoding: EncodingKey,
    /// Keys that verify tokens, by `kid`: the current one and the retired ones still published.
    verifying: HashMap<String, DecodingKey>,
    jwks: serde_json::Value,
    cache: Mutex<HashMap<[u8; 32], Arc<Caller>>>,
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
        Self::from_keys(&pem, &retired, issuer)
    }

    /// Replaces the signing key with a new one. The old key's private part is deleted; its public
    /// part stays published until the tokens it signed have expired. Takes effect for a server
    /// at its next start.
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

    fn from_keys(pem: &str, retired: &[PublicJwk], issuer: &str) -> anyhow::Result<Self> {
        let current = PublicJwk::of(&p256::SecretKey::from_pkcs8_pem(pem)?)?;
        let mut verifying = HashMap::new();
        let mut published = Vec::new();
        for key in std::iter::once(&current).chain(retired) {
            verifying.insert(
                key.kid.clone(),
                DecodingKey::from_ec_components(&key.x, &key.y)?,
            );
            published.push(key.json());
        }
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            kid: current.kid,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
            verifying,
            jwks: serde_json::json!({ "keys": published }),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// Mints an access token.
    pub fn mint(&self, request: &TokenRequest) -> anyhow::Result<MintedToken> {
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
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)?;
        Ok(MintedToken { token, claims })
    }

    /// Verifies a bearer token for a resource: `aud` must be one of `audiences`.
    pub fn verify(&self, token: &str, audiences: &[&str]) -> Result<Arc<Caller>, AuthnError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.cache.lock()
            && let Some(caller) = cache.get(&key)
        {
            if caller.expired() {
                return Err(AuthnError::Expired);
            }
            if !audiences.contains(&caller.audience.as_str()) {
                return Err(AuthnError::WrongAudience);
            }
            return Ok(caller.clone());
        }
        let caller = Arc::new(self.verify_uncached(token, audiences)?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 10_000 {
                cache.retain(|_, c| !c.expired());
            }
            cache.insert(key, caller.clone());
        }
        Ok(caller)
    }

    fn verify_uncached(&self, token: &str, audiences: &[&str]) -> Result<Caller, AuthnError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::MalformedToken)?;
        if header.alg != Algorithm::ES256 || header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(AuthnError::NotAccepted);
        }
        let Some(decoding) = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
        else {
            return Err(AuthnError::BadSignature);
        };
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        let data = jsonwebtoken::decode::<Claims>(token, decoding, &validation)
            .map_err(|e| refusal(e.kind()))?;
        let c = data.claims;
        Ok(Caller {
            issuer: c.iss,
            subject: c.sub,
            tenant: c.tenant,
            agent: c.azp,
            roles: c.roles,
            token_id: c.jti,
            audience: c.aud,
            expires_at: c.exp,
            scopes: Vec::new(),
            attributes: c
                .attributes
                .into_iter()
                .filter(|(k, _)| ATTRIBUTE_CLAIMS.contains(&k.as_str()))
                .collect(),
        })
    }
}

/// What the caller is told about a token the library refused.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> AuthnError {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::InvalidAudience => AuthnError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthnError::UntrustedIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthnError::NotAccepted,
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey => AuthnError::BadSignature,
        // Undecodable parts, missing or mistyped claims, and whatever else the library adds.
        _ => AuthnError::MalformedToken,
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

    #[test]
    fn minted_token_verifies_and_is_cached() {
        let iss = issuer();
        let t = iss.mint(&request("http://127.0.0.1:8080")).map(|m| m.token);
        let t = t.unwrap_or_default();
        let c = iss.verify(&t, &["http://127.0.0.1:8080"]);
        assert_eq!(c.map(|c| c.agent.clone()), Ok("invoice-bot".to_string()));
        // Cached path still enforces the audience.
        assert!(iss.verify(&t, &["http://other"]).is_err());
    }

    #[test]
    fn wrong_audience_other_key_and_tampering_are_refused() {
        let iss = issuer();
        let other = issuer();
        let t = iss
            .mint(&request("http://127.0.0.1:8080"))
            .map(|m| m.token)
            .unwrap_or_default();
        assert_eq!(
            iss.verify(&t, &["http://127.0.0.1:8080/mcp/x/y/z"])
                .map(|_| ()),
            Err(AuthnError::WrongAudience)
        );
        assert_eq!(
            other.verify(&t, &["http://127.0.0.1:8080"]).map(|_| ()),
            Err(AuthnError::BadSignature)
        );
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#);
        assert_eq!(
            iss.verify(&parts.join("."), &["http://127.0.0.1:8080"])
                .map(|_| ()),
            Err(AuthnError::BadSignature)
        );
        assert_eq!(
            iss.verify("not-a-jwt", &["http://127.0.0.1:8080"])
                .map(|_| ()),
            Err(AuthnError::MalformedToken)
        );
    }

    #[test]
    fn unsigned_and_hmac_tokens_are_refused() {
        let iss = issuer();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = serde_json::json!({"iss":"http://127.0.0.1:8080","sub":"a","aud":"http://127.0.0.1:8080",
            "exp": unix_now()+60,"nbf":unix_now(),"iat":unix_now(),"jti":"x","tenant":"acme","azp":"bot"});
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"at+jwt"}"#),
            b64.encode(claims.to_string())
        );
        assert!(iss.verify(&none, &["http://127.0.0.1:8080"]).is_err());
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap_or_default();
        assert_eq!(
            iss.verify(&hs, &["http://127.0.0.1:8080"]).map(|_| ()),
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

//! Token requests at identity providers: RFC 8693 token exchange, Entra On-Behalf-Of (RFC 7523
//! jwt-bearer with `requested_token_use=on_behalf_of`), ID-JAG (token exchange for an
//! `id-jag`, then a jwt-bearer grant at the downstream's authorization server), and
//! `client_credentials` for Mandate's own traffic.
//!
//! The forms are built here with `reqwest` rather than the `oauth2` crate: `oauth2` 5 has no
//! RFC 8693 request (no `subject_token`/`actor_token`/`requested_token_type`, and its token
//! response type drops `issued_token_type`) and no jwt-bearer grant, so the four grants would be
//! three hand-built and one not; one small form builder serves all of them uniformly. One pooled
//! client (`TCP_NODELAY`, connect and request timeouts, no proxy from the environment, no
//! redirects: a token request carrying a secret never follows one).

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::sts::{GRANT_TOKEN_EXCHANGE, Subject, TYPE_ACCESS_TOKEN};
use super::{ExchangeError, Target};
use crate::authn::{Caller, random_id, unix_now};
use crate::config::exchange::{
    ClientAuth, ExchangeKind, ExchangeProfile, OAuthClient, SecretSource,
};

const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ASSERTION_JWT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `requested_token_type` of the MCP Enterprise-Managed Authorization ID-JAG.
pub const TYPE_ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
/// Lifetime assumed when a response has neither `expires_in` nor a JWT `exp`.
const DEFAULT_LIFETIME: u64 = 60;

/// The one HTTP client for identity providers.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .unwrap_or_default()
}

/// A client with its credential loaded.
struct Client {
    config: OAuthClient,
    secret: Option<SecretString>,
    key: Option<(EncodingKey, Algorithm)>,
}

impl Client {
    fn load(config: &OAuthClient) -> anyhow::Result<Self> {
        let read_secret = |s: &SecretSource| -> anyhow::Result<SecretString> {
            let value = match s {
                SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                    anyhow::anyhow!(
                        "the client secret of `{}` is missing: set the environment variable `{var}`",
                        config.client_id
                    )
                })?,
                SecretSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read the client secret of `{}` from `{}`: {e}",
                        config.client_id,
                        path.display()
                    )
                })?,
            };
            Ok(SecretString::from(value.trim().to_owned()))
        };
        let (secret, key) = match &config.auth {
            ClientAuth::Basic(s) | ClientAuth::Post(s) => (Some(read_secret(s)?), None),
            ClientAuth::PrivateKeyJwt { key_file, .. } => {
                let pem = std::fs::read(key_file).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read `private_key_file` `{}`: {e}",
                        key_file.display()
                    )
                })?;
                let key = match EncodingKey::from_ec_pem(&pem) {
                    Ok(k) => (k, Algorithm::ES256),
                    Err(_) => (
                        EncodingKey::from_rsa_pem(&pem).map_err(|_| {
                            anyhow::anyhow!(
                                "`private_key_file` `{}` is not a PEM EC P-256 or RSA private key",
                                key_file.display()
                            )
                        })?,
                        Algorithm::RS256,
                    ),
                };
                (None, Some(key))
            }
        };
        Ok(Self {
            config: config.clone(),
            secret,
            key,
        })
    }

    /// A POST to the token endpoint with this client's authentication.
    fn request(
        &self,
        http: &reqwest::Client,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<reqwest::RequestBuilder, ExchangeError> {
        let c = &self.config;
        let mut request = http
            .post(&c.token_endpoint)
            .header("accept", "application/json");
        match (&c.auth, &self.secret, &self.key) {
            (ClientAuth::Basic(_), Some(secret), _) => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
                let pair = format!(
                    "{}:{}",
                    urlencode(&c.client_id),
                    urlencode(secret.expose_secret())
                );
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                request = request.header("authorization", format!("Basic {b64}"));
            }
            (ClientAuth::Post(_), Some(secret), _) => {
                form.push(("client_id", c.client_id.clone()));
                form.push(("client_secret", secret.expose_secret().to_owned()));
            }
            (ClientAuth::PrivateKeyJwt { kid, .. }, _, Some((key, alg))) => {
                let now = unix_now();
                let claims = serde_json::json!({
                    "iss": c.client_id, "sub": c.client_id, "aud": c.token_endpoint,
                    "jti": random_id(), "iat": now, "exp": now + 60,
                });
                let mut header = Header::new(*alg);
                header.kid = kid.clone();
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| ExchangeError::Mint(e.to_string()))?;
                form.push(("client_id", c.client_id.clone()));
                form.push(("client_assertion_type", ASSERTION_JWT.to_owned()));
                form.push(("client_assertion", assertion));
            }
            (ClientAuth::Basic(_) | ClientAuth::Post(_) | ClientAuth::PrivateKeyJwt { .. }, ..) => {
                return Err(ExchangeError::Mint(format!(
                    "the credential of client `{}` was not loaded",
                    c.client_id
                )));
            }
        }
        Ok(request.form(&form))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1, Appendix B).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An identity provider's token response (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: String,
    #[serde(default)]
    issued_token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug, Deserialize, Serialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// A token an identity provider issued.
pub struct Got {
    pub token: String,
    pub jti: Option<String>,
    pub expires_at: u64,
}

/// A remote profile at run time.
pub struct Remote {
    profile: String,
    client: Client,
    /// `id-jag`: the downstream's authorization server.
    resource: Option<Client>,
    resource_issuer: Option<String>,
    actor_token: bool,
    http: reqwest::Client,
}

impl Remote {
    pub fn new(profile: &ExchangeProfile, http: reqwest::Client) -> anyhow::Result<Self> {
        let Some(client) = &profile.client else {
            anyhow::bail!("exchange profile `{}` has no client", profile.name);
        };
        Ok(Self {
            profile: profile.name.clone(),
            client: Client::load(client)?,
            resource: profile.resource.as_ref().map(Client::load).transpose()?,
            resource_issuer: profile.resource_issuer.clone(),
            actor_token: profile.actor_token,
            http,
        })
    }

    /// The audience of a subject assertion Mandate mints for this identity provider.
    pub fn issuer_audience(&self) -> &str {
        &self.client.config.token_endpoint
    }

    /// One exchange for a caller.
    pub async fn exchange(
        &self,
        kind: ExchangeKind,
        caller: &Caller,
        subject: &Subject,
        target: &Target,
    ) -> Result<Got, ExchangeError> {
        let subject_token = subject.token.expose_secret().to_owned();
        match kind {
            ExchangeKind::Rfc8693 | ExchangeKind::Embedded => {
                let mut form = vec![
                    ("grant_type", GRANT_TOKEN_EXCHANGE.to_owned()),
                    ("subject_token", subject_token),
                    ("subject_token_type", subject.token_type.to_owned()),
                    ("requested_token_type", TYPE_ACCESS_TOKEN.to_owned()),
                ];
                form.push(target_param(&target.audience));
                if !target.scope.is_empty() {
                    form.push(("scope", target.scope.clone()));
                }
                if self.actor_token {
                    let actor = self.client_credentials(&self.client, target).await?;
                    form.push(("actor_token", actor.token));
                    form.push(("actor_token_type", TYPE_ACCESS_TOKEN.to_owned()));
                }
                let r = self.post(&self.client, form, target).await?;
                self.accept(r, target, Some(TYPE_ACCESS_TOKEN))
            }
            ExchangeKind::EntraObo => {
                if app_only(caller) {
                    return Err(ExchangeError::AppOnly);
                }
                let scope = if target.scope.is_empty() {
                    format!("{}/.default", target.audience)
                } else {
                    target.scope.clone()
                };
                let form = vec![
                    ("grant_type", GRANT_JWT_BEARER.to_owned()),
                    ("assertion", subject_token),
                    ("requested_token_use", "on_behalf_of".to_owned()),
                    ("scope", scope),
                ];
                let r = self.post(&self.client, form, target).await?;
                self.accept(r, target, None)
            }
            ExchangeKind::IdJag => {
                let (Some(resource), Some(resource_issuer)) =
                    (&self.resource, &self.resource_issuer)
                else {
                    return Err(ExchangeError::Mint(format!(
                        "exchange profile `{}` has no downstream authorization server",
                        self.profile
                    )));
                };
                let mut form = vec![
                    ("grant_type", GRANT_TOKEN_EXCHANGE.to_owned()),
                    ("subject_token", subject_token),
                    ("subject_token_type", subject.token_type.to_owned()),
                    ("requested_token_type", TYPE_ID_JAG.to_owned()),
                    ("audience", resource_issuer.clone()),
                    ("resource", target.audience.to_string()),
                ];
                if !target.scope.is_empty() {
                    form.push(("scope", target.scope.clone()));
                }
                let r = self.post(&self.client, form, target).await?;
                if r.issued_token_type.as_deref() != Some(TYPE_ID_JAG) {
                    return Err(self.bad("a token that is not an ID-JAG (`issued_token_type`)"));
                }
                let form = vec![
                    ("grant_type", GRANT_JWT_BEARER.to_owned()),
                    ("assertion", r.access_token),
                ];
                let r = self.post(resource, form, target).await?;
                self.accept(r, target, None)
            }
        }
    }

    /// A token for Mandate itself (`client_credentials`; for `id-jag` at the downstream's
    /// authorization server).
    pub async fn service_token(&self, target: &Target) -> Result<Got, ExchangeError> {
        let client = self.resource.as_ref().unwrap_or(&self.client);
        self.client_credentials(client, target).await
    }

    async fn client_credentials(
        &self,
        client: &Client,
        target: &Target,
    ) -> Result<Got, ExchangeError> {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        form.push(target_param(&target.audience));
        if !target.scope.is_empty() {
            form.push(("scope", target.scope.clone()));
        }
        let r = self.post(client, form, target).await?;
        self.accept(r, target, None)
    }

    fn bad(&self, reason: impl Into<String>) -> ExchangeError {
        ExchangeError::BadResponse {
            profile: self.profile.clone(),
            reason: reason.into(),
        }
    }

    async fn post(
        &self,
        client: &Client,
        form: Vec<(&'static str, String)>,
        target: &Target,
    ) -> Result<TokenResponse, ExchangeError> {
        let unavailable = |reason: String| ExchangeError::Unavailable {
            profile: self.profile.clone(),
            audience: target.audience.to_string(),
            reason,
        };
        let response = client
            .request(&self.http, form)?
            .send()
            .await
            .map_err(|e| {
                unavailable(if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    "cannot connect".to_owned()
                })
            })?;
        let status = response.status();
        if status.is_server_error() {
            return Err(unavailable(format!("HTTP {}", status.as_u16())));
        }
        let body = response
            .bytes()
            .await
            .map_err(|_| unavailable("the response was cut off".to_owned()))?;
        if status.is_success() {
            return serde_json::from_slice::<TokenResponse>(&body)
                .map_err(|_| self.bad("a success that is not a token response"));
        }
        let Ok(e) = serde_json::from_slice::<ErrorResponse>(&body) else {
            return Err(self.bad(format!("HTTP {} without an OAuth error", status.as_u16())));
        };
        Err(self.refusal(e, target))
    }

    fn refusal(&self, e: ErrorResponse, target: &Target) -> ExchangeError {
        let description = e
            .error_description
            .map(|d| d.chars().filter(|c| !c.is_control()).take(300).collect());
        match e.error.as_str() {
            "invalid_target" => ExchangeError::InvalidTarget {
                audience: target.audience.to_string(),
            },
            "interaction_required" | "consent_required" | "login_required" => {
                ExchangeError::NeedsUser {
                    code: e.error,
                    description,
                }
            }
            "invalid_grant" => ExchangeError::SubjectRefused {
                code: e.error,
                description,
            },
            _ => ExchangeError::Refused {
                profile: self.profile.clone(),
                code: e.error.chars().take(64).collect(),
                description,
            },
        }
    }

    /// Checks a token response: the token type, and that the scope is no broader than asked.
    fn accept(
        &self,
        r: TokenResponse,
        target: &Target,
        issued_type: Option<&str>,
    ) -> Result<Got, ExchangeError> {
        if let (Some(expected), Some(got)) = (issued_type, r.issued_token_type.as_deref())
            && expected != got
        {
            return Err(self.bad(format!("`issued_token_type` `{got}`")));
        }
        if !r.token_type.eq_ignore_ascii_case("bearer") {
            return Err(self.bad(format!(
                "`token_type` `{}` (only Bearer tokens are supported)",
                r.token_type
            )));
        }
        if let Some(scope) = &r.scope
            && let Some(extra) = scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .find(|s| !target.scopes.iter().any(|t| t == s))
        {
            return Err(self.bad(format!(
                "a token with scope `{extra}`, broader than requested (refused)"
            )));
        }
        if r.access_token.is_empty() {
            return Err(self.bad("an empty `access_token`"));
        }
        let claims = jwt_claims(&r.access_token);
        let jti = claims
            .as_ref()
            .and_then(|c| c.get("jti"))
            .and_then(|j| j.as_str())
            .map(str::to_owned);
        let now = unix_now();
        let expires_at = match (r.expires_in, claims.as_ref().and_then(|c| c.get("exp"))) {
            (Some(s), _) => now + s,
            (None, Some(exp)) => exp.as_u64().unwrap_or(now + DEFAULT_LIFETIME),
            (None, None) => now + DEFAULT_LIFETIME,
        };
        Ok(Got {
            token: r.access_token,
            jti,
            expires_at,
        })
    }
}

/// RFC 8707 `resource` for an absolute URI, else RFC 8693 `audience`.
fn target_param(audience: &str) -> (&'static str, String) {
    match reqwest::Url::parse(audience) {
        Ok(u) if u.fragment().is_none() && matches!(u.scheme(), "http" | "https" | "urn") => {
            ("resource", audience.to_owned())
        }
        _ => ("audience", audience.to_owned()),
    }
}

/// The payload of a JWT, unverified: only for the audit record's `jti` and the expiry (the
/// downstream verifies the token; Mandate only carries it).
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a caller acts for no user (an app-only token): its subject is the client itself, or
/// its issuer marked it (Entra's `idtyp = app`). Entra OBO only accepts user tokens.
pub fn app_only(caller: &Caller) -> bool {
    caller.subject == caller.agent
        || caller
            .attributes
            .get("idtyp")
            .is_some_and(|t| t.as_str() == Some("app"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::authn::Issuer;
    use crate::exchange::Exchanger;
    use crate::store::Store;

    /// An `rfc8693` profile for a manifest whose tool needs `who.read`: the loaded exchanger
    /// (owning the target) and its directory.
    fn setup() -> (tempfile::TempDir, Exchanger) {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("sts-secret", "s3cret");
        write(
            "mandate.toml",
            "[[exchange]]\nname = \"corp\"\nkind = \"rfc8693\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"mandate\"\nclient_secret_file = \"sts-secret\"\n",
        );
        write(
            "tool-manifests/corp/p.toml",
            "description = \"p\"\nenvironments = [\"prod\"]\nregion = \"eu\"\n[transport]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/mcp\"\n[auth]\nexchange = \"corp\"\n[[tools]]\nname = \"whoami\"\neffect = \"read\"\nscopes = [\"who.read\"]\n",
        );
        write(
            "missions/corp/prod/who.toml",
            "description = \"w\"\ntenant = \"acme\"\nowner = \"a@acme.example\"\nexpires = 2099-12-31\nagents = [\"bot\"]\ntools = [\"corp/p/whoami\"]\n",
        );
        let config = crate::config::load(dir.path(), false).unwrap();
        let store = Store::open(&dir.path().join(".mandate")).unwrap();
        let issuer = Arc::new(Issuer::load_or_create(&store, &config.settings.public_url).unwrap());
        let exchanger = Exchanger::new(&config, issuer).unwrap();
        (dir, exchanger)
    }

    fn target(exchanger: &Exchanger) -> Arc<Target> {
        exchanger.manifests["corp/p"].tools["whoami"].clone()
    }

    fn response(scope: Option<&str>) -> TokenResponse {
        TokenResponse {
            access_token: "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJqLTEiLCJleHAiOjQxMDI0NDQ4MDB9.c2ln"
                .to_owned(),
            token_type: "Bearer".to_owned(),
            issued_token_type: Some(TYPE_ACCESS_TOKEN.to_owned()),
            expires_in: Some(120),
            scope: scope.map(str::to_owned),
        }
    }

    #[test]
    fn a_response_scope_broader_than_requested_is_refused() {
        let (_dir, exchanger) = setup();
        let target = target(&exchanger);
        assert_eq!(target.scope, "who.read");
        let remote = target.profile.remote.as_ref().unwrap();
        // As asked, narrower (no scope) or the same: accepted.
        for scope in [None, Some("who.read"), Some(" who.read ")] {
            let got = remote
                .accept(response(scope), &target, Some(TYPE_ACCESS_TOKEN))
                .unwrap();
            assert_eq!(got.jti.as_deref(), Some("j-1"));
            assert!(got.expires_at <= unix_now() + 120);
        }
        // Broader: one scope more, or another scope altogether.
        for (scope, extra) in [("who.read who.admin", "who.admin"), ("admin", "admin")] {
            let err = remote
                .accept(response(Some(scope)), &target, Some(TYPE_ACCESS_TOKEN))
                .map(|g| g.token)
                .unwrap_err();
            assert_eq!(
                err,
                ExchangeError::BadResponse {
                    profile: "corp".to_owned(),
                    reason: format!(
                        "a token with scope `{extra}`, broader than requested (refused)"
                    ),
                }
            );
        }
    }

    #[test]
    fn provider_errors_map_to_their_answers() {
        let (_dir, exchanger) = setup();
        let target = target(&exchanger);
        let remote = target.profile.remote.as_ref().unwrap();
        let error = |code: &str, description: Option<&str>| ErrorResponse {
            error: code.to_owned(),
            error_description: description.map(str::to_owned),
        };
        // `invalid_grant`: the subject token was refused; the caller gets a fresh token.
        let refused = remote.refusal(
            error("invalid_grant", Some("subject token expired\n")),
            &target,
        );
        assert_eq!(
            refused,
            ExchangeError::SubjectRefused {
                code: "invalid_grant".to_owned(),
                description: Some("subject token expired".to_owned()),
            }
        );
        assert!(
            refused
                .to_string()
                .contains("refused the caller's token for exchange (`invalid_grant`"),
            "{refused}"
        );
        assert!(refused.to_string().contains("get a fresh token and retry"));
        assert_eq!(
            remote.refusal(error("invalid_target", None), &target),
            ExchangeError::InvalidTarget {
                audience: "http://127.0.0.1:9/mcp".to_owned()
            }
        );
        for code in ["interaction_required", "consent_required", "login_required"] {
            assert!(matches!(
                remote.refusal(error(code, None), &target),
                ExchangeError::NeedsUser { code: c, .. } if c == code
            ));
        }
        assert_eq!(
            remote.refusal(error("unauthorized_client", None), &target),
            ExchangeError::Refused {
                profile: "corp".to_owned(),
                code: "unauthorized_client".to_owned(),
                description: None,
            }
        );
    }
}

//! The embedded issuer as a small OAuth authorization server: RFC 8414 metadata at
//! `/.well-known/oauth-authorization-server` and the token endpoint `/oauth/token`.
//!
//! `/oauth/token` takes form-encoded requests and answers RFC 6749 §5 JSON. Grants:
//! - `client_credentials` for registered agents ([`crate::agents`]) authenticating with their
//!   client secret (`client_secret_basic`, `client_secret_post`) or a `private_key_jwt`
//!   assertion (RFC 7523: ES256, signed with the agent's registered key, `iss` = `sub` = the
//!   client id, `aud` = the token endpoint or the issuer, `exp` at most 5 minutes ahead, `jti`
//!   used once). The token's `sub` and `azp` are the agent itself (a service identity), its
//!   tenant the agent's; RFC 8707 `resource` becomes its `aud` (a mission the agent may use, or
//!   the broker); `scope` is narrowed to the scopes of the tools it can reach.
//! - `urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693), served by the embedded STS
//!   ([`crate::exchange::token_exchange_grant`]): an authenticated agent exchanges a token this
//!   broker issued to it for a short-lived token of the same user bound to one configured
//!   downstream (`resource` or `audience`), its scopes narrowed to that downstream's, with `act`
//!   naming Mandate acting for the agent.
//!
//! Failed client authentications are audited, aggregated per reason and peer like failed bearer
//! tokens. The client MCP SDKs require an `authorization_endpoint` in the metadata, so one is
//! published; it answers every request with `unsupported_response_type` (agents use
//! `client_credentials`; people sign in at an external issuer).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use super::Broker;
use crate::agents::{AgentRecord, Credential};
use crate::audit::aggregate::Aggregator;
use crate::audit::{Event, EventKind};
use crate::authn::TokenRequest;

/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth/token";
/// Path of the (refusing) authorization endpoint.
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// Lifetime of a `client_credentials` access token.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Longest accepted lifetime of a `private_key_jwt` assertion (from now to its `exp`).
pub const MAX_ASSERTION_TTL: u64 = 300;
/// Largest token request body.
const MAX_FORM_BYTES: usize = 16 * 1024;

const CLIENT_CREDENTIALS: &str = "client_credentials";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The authorization server's shared state.
pub struct AuthServer {
    broker: Arc<Broker>,
    aggregate: Aggregator,
    /// `private_key_jwt` assertions seen, by `<client id> <jti>`, until their `exp`.
    used_assertions: Mutex<HashMap<String, u64>>,
}

/// The routes of the authorization server.
pub fn routes(broker: Arc<Broker>, aggregate: Aggregator) -> Router {
    let server = Arc::new(AuthServer {
        broker,
        aggregate,
        used_assertions: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            axum::routing::get(metadata),
        )
        .route(TOKEN_PATH, axum::routing::post(token))
        .route(AUTHORIZE_PATH, axum::routing::any(authorize))
        .with_state(server)
}

/// RFC 8414 metadata; `/.well-known/openid-configuration` publishes the same fields.
pub fn metadata_document(broker: &Broker) -> serde_json::Value {
    let base = &broker.config.settings.public_url;
    serde_json::json!({
        "issuer": broker.issuer.issuer(),
        "token_endpoint": format!("{base}{TOKEN_PATH}"),
        "authorization_endpoint": format!("{base}{AUTHORIZE_PATH}"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": [CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "service_documentation": "https://github.com/mandate/mandate#embedded-authorization-server",
    })
}

async fn metadata(State(server): State<Arc<AuthServer>>) -> Response {
    Json(metadata_document(&server.broker)).into_response()
}

async fn authorize() -> Response {
    OAuthError::new(
        Code::UnsupportedResponseType,
        "this authorization server issues tokens to registered agents only: use the `client_credentials` grant at `/oauth/token`",
    )
    .into_response()
}

/// The RFC 6749 §5.2 (and RFC 8707, RFC 6749 §4.1.2.1) error codes this server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    InvalidRequest,
    InvalidClient,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    UnsupportedResponseType,
    TemporarilyUnavailable,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::InvalidClient => "invalid_client",
            Code::UnauthorizedClient => "unauthorized_client",
            Code::UnsupportedGrantType => "unsupported_grant_type",
            Code::InvalidScope => "invalid_scope",
            Code::InvalidTarget => "invalid_target",
            Code::UnsupportedResponseType => "unsupported_response_type",
            Code::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::InvalidClient => StatusCode::UNAUTHORIZED,
            Code::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::InvalidRequest
            | Code::UnauthorizedClient
            | Code::UnsupportedGrantType
            | Code::InvalidScope
            | Code::InvalidTarget
            | Code::UnsupportedResponseType => StatusCode::BAD_REQUEST,
        }
    }
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct OAuthError {
    code: Code,
    description: String,
    /// `WWW-Authenticate: Basic` for a failed `client_secret_basic`.
    basic: bool,
}

impl OAuthError {
    fn new(code: Code, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            basic: false,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.code.status(),
            Json(serde_json::json!({ "error": self.code.as_str(), "error_description": self.description })),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.basic {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mandate\""),
            );
        }
        response
    }
}

/// The form parameters, each at most once (RFC 6749 §3.2).
struct Form(HashMap<String, String>);

impl Form {
    fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let text = std::str::from_utf8(body)
            .map_err(|_| OAuthError::new(Code::InvalidRequest, "the request body is not UTF-8"))?;
        let mut params = HashMap::new();
        for (name, value) in form_pairs(text) {
            if params.insert(name.clone(), value).is_some() {
                return Err(OAuthError::new(
                    Code::InvalidRequest,
                    format!("parameter `{name}` is repeated: send it once"),
                ));
            }
        }
        Ok(Self(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded (by the URL parser reqwest ships).
fn form_pairs(text: &str) -> Vec<(String, String)> {
    let Ok(mut url) = reqwest::Url::parse("http://form.invalid/") else {
        return Vec::new();
    };
    url.set_query(Some(text));
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// One form-urlencoded component, decoded (client id and secret in `Basic`, RFC 6749 §2.3.1).
fn form_decode(text: &str) -> String {
    form_pairs(&format!(
        "v={}",
        text.replace('&', "%26").replace('=', "%3D")
    ))
    .into_iter()
    .next()
    .map(|(_, v)| v)
    .unwrap_or_default()
}

/// How the client authenticated.
enum ClientAuth {
    Secret {
        client_id: String,
        secret: String,
        basic: bool,
    },
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

async fn token(
    State(server): State<Arc<AuthServer>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = match body.len() > MAX_FORM_BYTES {
        true => Err(OAuthError::new(
            Code::InvalidRequest,
            format!("the request body exceeds {MAX_FORM_BYTES} bytes"),
        )),
        false => match Form::parse(&body) {
            Ok(form) => server.grant(&form, &headers, peer).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(body) => {
            let mut response = Json(body).into_response();
            let h = response.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(e) => e.into_response(),
    }
}

impl AuthServer {
    /// Dispatches on `grant_type`.
    async fn grant(
        &self,
        form: &Form,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<serde_json::Value, OAuthError> {
        match form.get("grant_type") {
            None => Err(OAuthError::new(
                Code::InvalidRequest,
                "`grant_type` is missing: send `grant_type=client_credentials`",
            )),
            Some(CLIENT_CREDENTIALS) => self.client_credentials(form, headers, peer).await,
            Some(TOKEN_EXCHANGE) => self.token_exchange(form, headers, peer).await,
            Some(other) => Err(OAuthError::new(
                Code::UnsupportedGrantType,
                format!(
                    "grant type `{other}` is not supported: this server supports `client_credentials`"
                ),
            )),
        }
    }

    /// `client_credentials`: authenticate the agent, check it, bind the token to the resource.
    async fn client_credentials(
        &self,
        form: &Form,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<serde_json::Value, OAuthError> {
        let auth = client_auth(form, headers)?;
        let agent = self.authenticate(auth, peer)?;
        let (audience, missions) = self.resource(&agent, form.get("resource"))?;
        let scope = self.scope(&missions, form.get("scope"))?;
        let request = TokenRequest {
            subject: agent.id.clone(),
            tenant: agent.tenant.clone(),
            agent: agent.id.clone(),
            audience,
            roles: Vec::new(),
            attributes: Default::default(),
            ttl: ACCESS_TOKEN_TTL,
        };
        let broker = &self.broker;
        let minted = match broker.issuer.mint_scoped(&request, &scope) {
            Ok(m) => m,
            Err(e) => return Err(OAuthError::new(Code::InvalidRequest, e.to_string())),
        };
        let event = super::token_issued(
            &minted,
            format!(
                "client_credentials ({}): audience {} scope `{scope}` expires {}",
                agent.credential.method(),
                minted.claims.aud,
                minted.claims.exp
            ),
        );
        if let Err(e) = broker.audit.record_durable(event).await {
            return Err(OAuthError::new(
                Code::TemporarilyUnavailable,
                format!("the audit log is unavailable, so no token is issued: {e}"),
            ));
        }
        let mut body = serde_json::json!({
            "access_token": minted.token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_TTL.as_secs(),
        });
        if !scope.is_empty() {
            body["scope"] = scope.into();
        }
        Ok(body)
    }

    /// Verifies the client's credential against the registry; every failure is audited.
    fn authenticate(&self, auth: ClientAuth, peer: SocketAddr) -> Result<AgentRecord, OAuthError> {
        let now = crate::authn::unix_now();
        let basic = matches!(auth, ClientAuth::Secret { basic: true, .. });
        let (claimed, verdict) = match auth {
            ClientAuth::Secret {
                client_id,
                secret,
                basic: _,
            } => {
                let verdict = match self.broker.agents.get(&client_id) {
                    Some(AgentRecord {
                        credential: Credential::ClientSecret { sha256 },
                        ..
                    }) if crate::agents::secret_matches(&secret, &sha256) => Ok(()),
                    Some(_) => Err("wrong client secret, or the client has none"),
                    None => Err("unknown client"),
                };
                (client_id, verdict)
            }
            ClientAuth::Assertion {
                client_id,
                assertion,
            } => match self.verify_assertion(client_id.as_deref(), &assertion, now) {
                Ok(id) => (id, Ok(())),
                Err((id, why)) => (id, Err(why)),
            },
        };
        if let Err(why) = verdict {
            let mut event = Event::new(EventKind::AuthFailure);
            event.agent = Some(claimed.chars().take(crate::agents::MAX_ID).collect());
            event.outcome = Some("client_authentication_failed".into());
            event.detail = Some(format!("/oauth/token: {why} (from {})", peer.ip()));
            self.aggregate.record(
                &format!("client authentication failed: {why}"),
                &peer.ip().to_string(),
                event,
            );
            let mut e = OAuthError::new(
                Code::InvalidClient,
                "client authentication failed: check the client id and its secret or key (`mandate agents list`)",
            );
            e.basic = basic;
            return Err(e);
        }
        self.broker.agents.active(&claimed, now).map_err(|refusal| {
            let mut event = Event::new(EventKind::AuthFailure);
            event.agent = Some(claimed.clone());
            event.outcome = Some("forbidden".into());
            event.detail = Some(format!("/oauth/token: {refusal}"));
            self.aggregate.record(
                &format!("token refused: {}", refusal.label()),
                &claimed,
                event,
            );
            OAuthError::new(Code::UnauthorizedClient, refusal.to_string())
        })
    }

    /// Verifies a `private_key_jwt` assertion; the client id it names, or (claimed id, why).
    fn verify_assertion(
        &self,
        client_id: Option<&str>,
        assertion: &str,
        now: u64,
    ) -> Result<String, (String, &'static str)> {
        let claimed = match client_id {
            Some(id) => id.to_owned(),
            None => unverified_issuer(assertion).ok_or((String::new(), "unreadable assertion"))?,
        };
        let fail = |why: &'static str| (claimed.clone(), why);
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|_| fail("unreadable assertion"))?;
        if header.alg != jsonwebtoken::Algorithm::ES256 {
            return Err(fail("assertion not signed with ES256"));
        }
        let Some(AgentRecord {
            credential: Credential::PrivateKeyJwt { jwk },
            ..
        }) = self.broker.agents.get(&claimed)
        else {
            return Err(fail("unknown client, or the client has no registered key"));
        };
        // Only the registered key: a `jwk`, `jku`, `x5u` or `x5c` in the header is ignored.
        let key = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwk)
            .ok()
            .and_then(|k| jsonwebtoken::DecodingKey::from_jwk(&k).ok())
            .ok_or_else(|| fail("the registered key is unusable"))?;
        let base = &self.broker.config.settings.public_url;
        let issuer = self.broker.issuer.issuer();
        let audiences = [
            format!("{base}{TOKEN_PATH}"),
            issuer.to_owned(),
            format!("{issuer}/"),
        ];
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.leeway = crate::authn::LEEWAY_SECS;
        validation.set_audience(&audiences);
        validation.set_issuer(&[claimed.as_str()]);
        validation.sub = Some(claimed.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        #[derive(serde::Deserialize)]
        struct Assertion {
            exp: u64,
            jti: Option<String>,
        }
        let data = jsonwebtoken::decode::<Assertion>(assertion, &key, &validation)
            .map_err(|_| fail("assertion invalid (signature, iss, sub, aud or exp)"))?;
        let Assertion { exp, jti } = data.claims;
        if exp > now + MAX_ASSERTION_TTL + crate::authn::LEEWAY_SECS {
            return Err(fail("assertion lives longer than 5 minutes"));
        }
        let Some(jti) = jti.filter(|j| !j.is_empty() && j.len() <= 256) else {
            return Err(fail("assertion has no `jti`"));
        };
        let Ok(mut used) = self.used_assertions.lock() else {
            return Err(fail("replay cache unavailable"));
        };
        used.retain(|_, until| *until + crate::authn::LEEWAY_SECS >= now);
        if used.insert(format!("{claimed} {jti}"), exp).is_some() {
            return Err(fail("assertion replayed (its `jti` was used before)"));
        }
        Ok(claimed)
    }

    /// The token's audience and the missions it reaches: RFC 8707 `resource` must be a served
    /// mission's resource URL that the agent may use, or the broker's URL (every mission the
    /// agent may use).
    fn resource(
        &self,
        agent: &AgentRecord,
        resource: Option<&str>,
    ) -> Result<(String, Vec<String>), OAuthError> {
        let broker = &self.broker;
        let public_url = &broker.config.settings.public_url;
        let allowed = |id: &str| {
            broker.missions.get(id).is_some_and(|m| {
                let mission = &m.runtime.mission;
                mission.tenant == agent.tenant && mission.agents.contains(&agent.id)
            })
        };
        let resource = resource.map(|r| r.trim_end_matches('/'));
        match resource {
            None => {
                let missions: Vec<String> = agent
                    .missions
                    .iter()
                    .filter(|m| allowed(m))
                    .cloned()
                    .collect();
                Ok((public_url.clone(), missions))
            }
            Some(r) if r == public_url => {
                let missions = agent
                    .missions
                    .iter()
                    .filter(|m| allowed(m))
                    .cloned()
                    .collect();
                Ok((public_url.clone(), missions))
            }
            Some(r) => {
                let found = broker
                    .missions
                    .values()
                    .find(|m| m.runtime.resource_url == r);
                match found {
                    Some(m)
                        if agent.missions.contains(&m.runtime.mission.id)
                            && allowed(&m.runtime.mission.id) =>
                    {
                        Ok((r.to_owned(), vec![m.runtime.mission.id.clone()]))
                    }
                    _ => Err(OAuthError::new(
                        Code::InvalidTarget,
                        format!(
                            "resource `{r}` is not a mission agent `{}` may use: name a mission URL it is onboarded for, or `{public_url}`",
                            agent.id
                        ),
                    )),
                }
            }
        }
    }

    /// The granted scope: the requested scopes the reachable tools use (all of them when none
    /// was requested); `invalid_scope` when a request keeps none.
    fn scope(&self, missions: &[String], requested: Option<&str>) -> Result<String, OAuthError> {
        let mut available = BTreeSet::new();
        for id in missions {
            if let Some(m) = self.broker.missions.get(id) {
                for tool in m.runtime.tools.values() {
                    available.extend(tool.spec.scopes.iter().cloned());
                }
            }
        }
        let Some(requested) = requested else {
            return Ok(available.into_iter().collect::<Vec<_>>().join(" "));
        };
        let granted: Vec<&str> = requested
            .split(' ')
            .filter(|s| !s.is_empty() && available.contains(*s))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if granted.is_empty() {
            return Err(OAuthError::new(
                Code::InvalidScope,
                format!(
                    "none of the requested scopes is used by a tool this token reaches (available: {})",
                    available.into_iter().collect::<Vec<_>>().join(" ")
                ),
            ));
        }
        Ok(granted.join(" "))
    }
}

/// The token-exchange grant (RFC 8693) of the embedded STS: an authenticated agent exchanges a
/// token issued to it for an audience-bound downstream token (see [`crate::exchange::sts`]).
impl AuthServer {
    async fn token_exchange(
        &self,
        form: &Form,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<serde_json::Value, OAuthError> {
        let auth = client_auth(form, headers)?;
        let agent = self.authenticate(auth, peer)?;
        let secret = |name: &str| form.get(name).map(secrecy::SecretString::from);
        let text = |name: &str| form.get(name).map(str::to_owned);
        let request = crate::exchange::TokenExchangeForm {
            grant_type: TOKEN_EXCHANGE.to_owned(),
            subject_token: secret("subject_token"),
            subject_token_type: text("subject_token_type"),
            resource: text("resource"),
            audience: text("audience"),
            scope: text("scope"),
            requested_token_type: text("requested_token_type"),
            actor_token: secret("actor_token"),
            actor_token_type: text("actor_token_type"),
        };
        let broker = &self.broker;
        crate::exchange::token_exchange_grant(
            &broker.exchange,
            &broker.verifier,
            &request,
            &agent.id,
        )
        .await
        .map_err(|e| OAuthError::new(sts_code(e.error), e.error_description))
        .and_then(|r| {
            serde_json::to_value(r)
                .map_err(|e| OAuthError::new(Code::TemporarilyUnavailable, e.to_string()))
        })
    }
}

/// The RFC 6749 code of an STS refusal (the STS uses the registered names).
fn sts_code(error: &str) -> Code {
    match error {
        "invalid_client" => Code::InvalidClient,
        "unauthorized_client" => Code::UnauthorizedClient,
        "unsupported_grant_type" => Code::UnsupportedGrantType,
        "invalid_scope" => Code::InvalidScope,
        "invalid_target" => Code::InvalidTarget,
        "temporarily_unavailable" => Code::TemporarilyUnavailable,
        // `invalid_request` and anything the STS adds later: the client's request is at fault.
        _ => Code::InvalidRequest,
    }
}

/// The client's authentication: exactly one of `client_secret_basic`, `client_secret_post`,
/// `private_key_jwt`.
fn client_auth(form: &Form, headers: &HeaderMap) -> Result<ClientAuth, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(parse_basic(value).ok_or_else(|| {
            let mut e = OAuthError::new(
                Code::InvalidClient,
                "malformed `Authorization` header: expected `Basic base64(client_id:client_secret)`",
            );
            e.basic = true;
            e
        })?),
    };
    let post = form.get("client_secret");
    let assertion = form.get("client_assertion");
    let methods = usize::from(basic.is_some())
        + usize::from(post.is_some())
        + usize::from(assertion.is_some());
    if methods > 1 {
        return Err(OAuthError::new(
            Code::InvalidRequest,
            "use one client authentication method per request",
        ));
    }
    if let Some((client_id, secret)) = basic {
        if form.get("client_id").is_some_and(|id| id != client_id) {
            return Err(OAuthError::new(
                Code::InvalidRequest,
                "`client_id` differs from the one in `Authorization`",
            ));
        }
        return Ok(ClientAuth::Secret {
            client_id,
            secret,
            basic: true,
        });
    }
    if let Some(secret) = post {
        let Some(client_id) = form.get("client_id") else {
            return Err(OAuthError::new(
                Code::InvalidRequest,
                "`client_secret` needs `client_id`",
            ));
        };
        return Ok(ClientAuth::Secret {
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
            basic: false,
        });
    }
    if let Some(assertion) = assertion {
        if form.get("client_assertion_type") != Some(JWT_BEARER_ASSERTION) {
            return Err(OAuthError::new(
                Code::InvalidRequest,
                format!("`client_assertion_type` must be `{JWT_BEARER_ASSERTION}`"),
            ));
        }
        return Ok(ClientAuth::Assertion {
            client_id: form.get("client_id").map(str::to_owned),
            assertion: assertion.to_owned(),
        });
    }
    let mut e = OAuthError::new(
        Code::InvalidClient,
        "no client authentication: send the agent's client id and secret (`client_secret_basic` or `client_secret_post`) or a `private_key_jwt` assertion",
    );
    e.basic = true;
    Err(e)
}

/// `Basic base64(urlencode(id):urlencode(secret))`.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine;
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let (id, secret) = (form_decode(id), form_decode(secret));
    (!id.is_empty()).then_some((id, secret))
}

/// The `iss` of an assertion, unverified (to find the key that verifies it).
fn unverified_issuer(assertion: &str) -> Option<String> {
    use base64::Engine;
    let payload = assertion.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value
        .get("iss")
        .and_then(|v| v.as_str())
        .map(|s| s.chars().take(crate::agents::MAX_ID).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%3Ab+c"), "a:b c");
        assert_eq!(form_decode("plain"), "plain");
        let pairs = form_pairs("grant_type=client_credentials&scope=a+b");
        assert_eq!(pairs[1], ("scope".to_owned(), "a b".to_owned()));
    }

    #[test]
    fn basic_header() {
        use base64::Engine;
        let v = base64::engine::general_purpose::STANDARD.encode("bot%40x:s%3Acret");
        let h = HeaderValue::from_str(&format!("Basic {v}")).ok();
        assert_eq!(
            h.as_ref().and_then(parse_basic),
            Some(("bot@x".to_owned(), "s:cret".to_owned()))
        );
    }
}

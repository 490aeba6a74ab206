//! The embedded STS: downstream tokens minted with the embedded issuer's key (ES256, published
//! in its JWKS), and the RFC 8693 token-exchange grant the embedded `/oauth/token` dispatches to.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{ExchangeError, Exchanger, Target};
use crate::authn::{Caller, Issuer, random_id, unix_now};

/// `typ` of minted downstream tokens (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// RFC 8693 token type URIs.
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Lifetime of the subject assertion Mandate mints for an identity provider.
const SUBJECT_TTL: u64 = 60;

/// Claims of a downstream token the embedded STS mints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownstreamClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    /// The client presenting the token: Mandate.
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// RFC 8693 §4.1: Mandate (`sub`) acting for the agent (`client_id`); earlier actors nested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
}

/// A minted token.
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub expires_at: u64,
}

/// `act` for Mandate acting for the caller's agent, nesting the caller token's own `act`.
fn actor(identity: &str, caller: &Caller) -> serde_json::Value {
    let mut act = serde_json::json!({ "sub": identity, "client_id": caller.agent });
    if let Some(earlier) = caller.attributes.get("act").filter(|a| a.is_object()) {
        act["act"] = earlier.clone();
    }
    act
}

fn sign(issuer: &Issuer, typ: &str, claims: &DownstreamClaims) -> Result<String, ExchangeError> {
    issuer
        .sign(typ, claims)
        .map_err(|e| ExchangeError::Mint(e.to_string()))
}

/// A downstream token for a caller's call.
pub fn mint_for_caller(
    issuer: &Issuer,
    identity: &str,
    caller: &Caller,
    target: &Target,
    ttl: Duration,
) -> Result<Minted, ExchangeError> {
    mint_scoped(
        issuer,
        identity,
        caller,
        &target.audience,
        &target.scope,
        ttl,
    )
}

fn mint_scoped(
    issuer: &Issuer,
    identity: &str,
    caller: &Caller,
    audience: &str,
    scope: &str,
    ttl: Duration,
) -> Result<Minted, ExchangeError> {
    let now = unix_now();
    // Never past the caller token's expiry.
    let exp = (now + ttl.as_secs()).min(caller.expires_at);
    if exp <= now {
        return Err(ExchangeError::CallerExpired);
    }
    let claims = DownstreamClaims {
        iss: issuer.issuer().to_owned(),
        sub: caller.subject.clone(),
        aud: audience.to_owned(),
        exp,
        iat: now,
        nbf: now,
        jti: random_id(),
        client_id: identity.to_owned(),
        scope: scope.to_owned(),
        tenant: Some(caller.tenant.clone()),
        act: Some(actor(identity, caller)),
    };
    let token = sign(issuer, ACCESS_TOKEN_TYPE, &claims)?;
    Ok(Minted {
        token,
        jti: claims.jti,
        expires_at: exp,
    })
}

/// A token with Mandate itself as the subject (its own traffic to a protected downstream).
pub fn mint_for_mandate(
    issuer: &Issuer,
    identity: &str,
    target: &Target,
    ttl: Duration,
) -> Result<Minted, ExchangeError> {
    let now = unix_now();
    let claims = DownstreamClaims {
        iss: issuer.issuer().to_owned(),
        sub: identity.to_owned(),
        aud: target.audience.to_string(),
        exp: now + ttl.as_secs(),
        iat: now,
        nbf: now,
        jti: random_id(),
        client_id: identity.to_owned(),
        scope: target.scope.clone(),
        tenant: None,
        act: None,
    };
    let token = sign(issuer, ACCESS_TOKEN_TYPE, &claims)?;
    Ok(Minted {
        token,
        jti: claims.jti,
        expires_at: claims.exp,
    })
}

/// What Mandate presents to an identity provider as the subject of an exchange.
pub struct Subject {
    pub token: SecretString,
    /// RFC 8693 `subject_token_type`.
    pub token_type: &'static str,
}

/// The subject token for a remote exchange.
///
/// A caller whose token an external issuer issued is represented by that token: the identity
/// provider issued it, and its audience is Mandate, exactly what token exchange (and Entra OBO)
/// expect. A caller of the embedded issuer is never represented by its own token (issued for
/// Mandate, meaningless to the identity provider, and passing it on would be token passthrough):
/// Mandate mints a one-minute assertion instead (`sub` = the user, `aud` = the identity provider's
/// token endpoint, `client_id` = the agent, `typ` `JWT`), which an identity provider that trusts
/// Mandate's issuer (its JWKS) verifies like any federated assertion.
pub fn subject_token(
    issuer: &Issuer,
    caller: &Caller,
    idp_audience: &str,
) -> Result<Subject, ExchangeError> {
    if caller.issuer != issuer.issuer() {
        let Some(token) = caller.token.secret() else {
            return Err(ExchangeError::NoSubjectToken(idp_audience.to_owned()));
        };
        return Ok(Subject {
            token: token.clone(),
            token_type: TYPE_ACCESS_TOKEN,
        });
    }
    let now = unix_now();
    let exp = (now + SUBJECT_TTL).min(caller.expires_at);
    if exp <= now {
        return Err(ExchangeError::CallerExpired);
    }
    let claims = DownstreamClaims {
        iss: issuer.issuer().to_owned(),
        sub: caller.subject.clone(),
        aud: idp_audience.to_owned(),
        exp,
        iat: now,
        nbf: now,
        jti: random_id(),
        client_id: caller.agent.clone(),
        scope: caller.scopes.join(" "),
        tenant: Some(caller.tenant.clone()),
        act: caller.attributes.get("act").cloned(),
    };
    Ok(Subject {
        token: SecretString::from(sign(issuer, "JWT", &claims)?),
        token_type: TYPE_JWT,
    })
}

/// The form of an RFC 8693 token-exchange request to the embedded `/oauth/token`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenExchangeForm {
    pub grant_type: String,
    pub subject_token: Option<SecretString>,
    pub subject_token_type: Option<String>,
    /// RFC 8707 `resource` (one value).
    pub resource: Option<String>,
    /// Logical audience (one value); the same namespace as `resource` here.
    pub audience: Option<String>,
    pub scope: Option<String>,
    pub requested_token_type: Option<String>,
    pub actor_token: Option<SecretString>,
    pub actor_token_type: Option<String>,
}

/// The RFC 8693 §2.2.1 response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenExchangeResponse {
    pub access_token: String,
    pub issued_token_type: String,
    pub token_type: String,
    pub expires_in: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// An RFC 6749 §5.2 error response (HTTP 400, or 401 for `invalid_client`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OAuthError {
    pub error: &'static str,
    pub error_description: String,
}

fn oauth(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        error,
        error_description: description.into(),
    }
}

/// The RFC 8693 token-exchange grant of the embedded STS. `client_id` is the client the token
/// endpoint authenticated (a registered agent); the subject token must be a token of this broker
/// issued to that same client. The target (`resource` or `audience`) must be the audience of a
/// configured downstream, and the requested scopes among that downstream's.
pub async fn token_exchange_grant(
    exchanger: &Exchanger,
    verifier: &crate::authn::Verifier,
    form: &TokenExchangeForm,
    client_id: &str,
) -> Result<TokenExchangeResponse, OAuthError> {
    if form.grant_type != GRANT_TOKEN_EXCHANGE {
        return Err(oauth(
            "unsupported_grant_type",
            format!("this grant handles `{GRANT_TOKEN_EXCHANGE}`"),
        ));
    }
    if form.actor_token.is_some() || form.actor_token_type.is_some() {
        return Err(oauth(
            "invalid_request",
            "actor tokens are not accepted: the authenticated client is the actor",
        ));
    }
    if let Some(t) = &form.requested_token_type
        && t != TYPE_ACCESS_TOKEN
    {
        return Err(oauth(
            "invalid_request",
            format!("`requested_token_type` must be `{TYPE_ACCESS_TOKEN}`"),
        ));
    }
    let Some(subject) = &form.subject_token else {
        return Err(oauth("invalid_request", "`subject_token` is required"));
    };
    match form.subject_token_type.as_deref() {
        Some(TYPE_ACCESS_TOKEN | TYPE_JWT) => {}
        _ => {
            return Err(oauth(
                "invalid_request",
                format!("`subject_token_type` must be `{TYPE_ACCESS_TOKEN}`"),
            ));
        }
    }
    let accepted: Vec<&str> = exchanger.accepted.iter().map(String::as_str).collect();
    let caller = verifier
        .verify(subject.expose_secret(), &accepted)
        .await
        .map_err(|e| {
            oauth(
                "invalid_request",
                format!("invalid `subject_token`: {}", e.error),
            )
        })?;
    if caller.agent != client_id {
        return Err(oauth(
            "invalid_request",
            "the `subject_token` was issued to another client: exchange your own tokens only",
        ));
    }
    let audience = match (&form.resource, &form.audience) {
        (Some(r), None) | (None, Some(r)) => r.as_str(),
        (Some(r), Some(a)) if r == a => r.as_str(),
        (None, None) | (Some(_), Some(_)) => {
            return Err(oauth(
                "invalid_target",
                "name one target: `resource` or `audience` (a downstream's audience)",
            ));
        }
    };
    let targets: Vec<&Arc<Target>> = exchanger
        .manifests
        .values()
        .flat_map(|m| std::iter::once(&m.default).chain(m.tools.values()))
        .filter(|t| &*t.audience == audience)
        .collect();
    let Some(first) = targets.first() else {
        return Err(oauth(
            "invalid_target",
            format!("`{audience}` is not the audience of a downstream of this broker"),
        ));
    };
    let allowed: std::collections::BTreeSet<&str> = targets
        .iter()
        .flat_map(|t| t.scopes.iter().map(String::as_str))
        .collect();
    let scope = match form
        .scope
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => first.scope.clone(),
        Some(requested) => {
            if let Some(bad) = requested.split(' ').find(|s| !allowed.contains(s)) {
                return Err(oauth(
                    "invalid_scope",
                    format!("scope `{bad}` is not granted for `{audience}`"),
                ));
            }
            requested.to_owned()
        }
    };
    let ttl = first.profile.config.ttl;
    let minted = mint_scoped(
        &exchanger.issuer,
        &exchanger.identity,
        &caller,
        audience,
        &scope,
        ttl,
    )
    .map_err(|e| oauth("invalid_request", e.to_string()))?;
    Ok(TokenExchangeResponse {
        access_token: minted.token,
        issued_token_type: TYPE_ACCESS_TOKEN.to_owned(),
        token_type: "Bearer".to_owned(),
        expires_in: minted.expires_at.saturating_sub(unix_now()),
        scope: (!scope.is_empty()).then_some(scope),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use base64::Engine;

    use super::*;
    use crate::authn::TokenRequest;
    use crate::store::Store;

    const DOWNSTREAM: &str = "http://127.0.0.1:9/mcp";

    fn setup() -> (
        tempfile::TempDir,
        Exchanger,
        Arc<Issuer>,
        crate::authn::Verifier,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "tool-manifests/corp/p.toml",
            &format!(
                "description = \"p\"\nenvironments = [\"prod\"]\nregion = \"eu\"\n[transport]\nkind = \"http\"\nurl = \"{DOWNSTREAM}\"\n[auth]\nexchange = \"embedded\"\n[[tools]]\nname = \"whoami\"\neffect = \"read\"\nscopes = [\"who.read\"]\n"
            ),
        );
        write(
            "missions/corp/prod/who.toml",
            "description = \"w\"\ntenant = \"acme\"\nowner = \"a@acme.example\"\nexpires = 2099-12-31\nagents = [\"bot\"]\ntools = [\"corp/p/whoami\"]\n",
        );
        let config = crate::config::load(dir.path(), false).unwrap();
        let store = Store::open(&dir.path().join(".mandate")).unwrap();
        let issuer = Arc::new(Issuer::load_or_create(&store, &config.settings.public_url).unwrap());
        let exchanger = Exchanger::new(&config, issuer.clone()).unwrap();
        let verifier = crate::authn::Verifier::new(issuer.clone(), &[]).unwrap();
        (dir, exchanger, issuer, verifier)
    }

    fn subject(issuer: &Issuer, agent: &str) -> SecretString {
        let minted = issuer
            .mint(&TokenRequest {
                subject: "alice@acme.example".into(),
                tenant: "acme".into(),
                agent: agent.into(),
                audience: issuer.issuer().into(),
                roles: Vec::new(),
                attributes: Default::default(),
                ttl: Duration::from_secs(600),
            })
            .unwrap();
        SecretString::from(minted.token)
    }

    fn form(issuer: &Issuer, resource: &str, scope: &str) -> TokenExchangeForm {
        TokenExchangeForm {
            grant_type: GRANT_TOKEN_EXCHANGE.into(),
            subject_token: Some(subject(issuer, "bot")),
            subject_token_type: Some(TYPE_ACCESS_TOKEN.into()),
            resource: Some(resource.into()),
            scope: Some(scope.into()),
            ..TokenExchangeForm::default()
        }
    }

    #[tokio::test]
    async fn the_grant_mints_an_audience_bound_token_with_mandate_acting_for_the_agent() {
        let (_dir, exchanger, issuer, verifier) = setup();
        let r = token_exchange_grant(
            &exchanger,
            &verifier,
            &form(&issuer, DOWNSTREAM, "who.read"),
            "bot",
        )
        .await
        .unwrap();
        assert_eq!(r.issued_token_type, TYPE_ACCESS_TOKEN);
        assert!(r.expires_in <= 300 && r.expires_in > 0);
        let payload = r.access_token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], DOWNSTREAM);
        assert_eq!(claims["sub"], "alice@acme.example");
        assert_eq!(claims["scope"], "who.read");
        assert_eq!(
            claims["act"],
            serde_json::json!({ "sub": issuer.issuer(), "client_id": "bot" })
        );
    }

    #[tokio::test]
    async fn the_grant_refuses_other_clients_unknown_targets_and_wider_scopes() {
        let (_dir, exchanger, issuer, verifier) = setup();
        let other = token_exchange_grant(
            &exchanger,
            &verifier,
            &form(&issuer, DOWNSTREAM, "who.read"),
            "eve",
        )
        .await
        .unwrap_err();
        assert_eq!(other.error, "invalid_request");
        let target = token_exchange_grant(
            &exchanger,
            &verifier,
            &form(&issuer, "http://elsewhere.example/mcp", "who.read"),
            "bot",
        )
        .await
        .unwrap_err();
        assert_eq!(target.error, "invalid_target");
        let scope = token_exchange_grant(
            &exchanger,
            &verifier,
            &form(&issuer, DOWNSTREAM, "who.admin"),
            "bot",
        )
        .await
        .unwrap_err();
        assert_eq!(scope.error, "invalid_scope");
        let mut forged = form(&issuer, DOWNSTREAM, "who.read");
        forged.subject_token = Some(SecretString::from("not-a-token"));
        let forged = token_exchange_grant(&exchanger, &verifier, &forged, "bot")
            .await
            .unwrap_err();
        assert_eq!(forged.error, "invalid_request");
    }
    /// The clamp of the embedded STS: a downstream token never outlives the caller's token
    /// (the profile's 5 minutes are cut to the caller's 30 seconds), and a caller whose token
    /// is past its expiry gets none.
    #[tokio::test]
    async fn a_minted_token_never_outlives_the_callers_token() {
        let (_dir, exchanger, issuer, verifier) = setup();
        let short = issuer
            .mint(&TokenRequest {
                subject: "alice@acme.example".into(),
                tenant: "acme".into(),
                agent: "bot".into(),
                audience: issuer.issuer().into(),
                roles: Vec::new(),
                attributes: Default::default(),
                ttl: Duration::from_secs(30),
            })
            .unwrap();
        let caller = verifier
            .verify(&short.token, &[issuer.issuer()])
            .await
            .unwrap();
        assert!(caller.expires_at <= unix_now() + 30);
        let target = exchanger.target("corp/p", "whoami").unwrap();
        let minted = mint_for_caller(
            &issuer,
            "mandate",
            &caller,
            target,
            Duration::from_secs(300),
        )
        .unwrap();
        assert_eq!(minted.expires_at, caller.expires_at);
        // Over HTTP (the `/oauth/token` grant) the same: `expires_in` within the caller's.
        let mut request = form(&issuer, DOWNSTREAM, "who.read");
        request.subject_token = Some(SecretString::from(short.token.clone()));
        let r = token_exchange_grant(&exchanger, &verifier, &request, "bot")
            .await
            .unwrap();
        assert!(
            unix_now() + r.expires_in <= caller.expires_at + 1,
            "{}",
            r.expires_in
        );
        let mut expired = (*caller).clone();
        expired.expires_at = unix_now().saturating_sub(1);
        assert_eq!(
            mint_for_caller(
                &issuer,
                "mandate",
                &expired,
                target,
                Duration::from_secs(300)
            )
            .map(|m| m.jti)
            .unwrap_err(),
            ExchangeError::CallerExpired
        );
    }
}

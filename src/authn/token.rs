//! The validation rules every access token passes, whichever issuer signed it (RFC 9068 §4,
//! RFC 8725): pure functions over the token's bytes, the issuer's [`Rules`] and its keys.
//!
//! Order: size and shape → header (refused outright: `none`/HMAC, embedded keys `jwk`/`jku`/
//! `x5u`/`x5c`, `crit`, unknown `typ`) → `iss` routes to one issuer → that issuer's algorithm and
//! `typ` rules → its key by `kid` (each key used with one algorithm) → signature → claims
//! (`exp`, `nbf`, `iat`, `aud`, `sub`, tenant, agent). Claims are read only after the signature.
//! JSON with duplicate names, deeper than [`MAX_DEPTH`] or with more than [`MAX_CLAIMS`] claims is
//! refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{AuthnError, Caller, LEEWAY_SECS};
use crate::config::issuers::{TenantFrom, TokenType};

/// Longest token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `kid` accepted (characters).
pub const MAX_KID: usize = 256;
/// Most top-level claims in a token.
pub const MAX_CLAIMS: usize = 100;
/// Deepest nesting of JSON in a header or claims (the top-level object is depth 1).
pub const MAX_DEPTH: usize = 6;
/// Header parameters that would take the key (or where to fetch it) from the token itself.
const KEY_INJECTION: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// A refused token: what the caller is told, and the precise reason for the audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: AuthnError,
    pub reason: String,
}

impl Refusal {
    pub fn new(error: AuthnError, reason: impl Into<String>) -> Self {
        Self {
            error,
            reason: reason.into(),
        }
    }
}

impl From<AuthnError> for Refusal {
    fn from(error: AuthnError) -> Self {
        let reason = match &error {
            AuthnError::Missing => "no `Authorization` header",
            AuthnError::Malformed => "`Authorization` is not one `Bearer <token>`",
            AuthnError::MalformedToken => "malformed token",
            AuthnError::NotAccepted => "token type not accepted",
            AuthnError::BadSignature => "bad signature",
            AuthnError::UntrustedIssuer => "untrusted issuer",
            AuthnError::WrongAudience => "wrong audience",
            AuthnError::NotYetValid => "not valid yet",
            AuthnError::Expired => "expired",
            AuthnError::BadClaims => "bad claims",
            AuthnError::IssuerUnavailable => "issuer unavailable",
        };
        Self::new(error, reason)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.error, self.reason)
    }
}

/// How one trusted issuer's tokens are checked and mapped to a [`Caller`].
#[derive(Debug, Clone)]
pub struct Rules {
    pub issuer: String,
    pub algorithms: Vec<Algorithm>,
    pub token_type: TokenType,
    /// Accepted audiences besides those of the resource being called.
    pub audiences: Vec<String>,
    pub tenant: TenantFrom,
    /// Claims naming the agent, tried in order.
    pub agent_claims: Vec<String>,
    pub groups_claim: Option<String>,
    pub roles_claim: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A verification key, usable with exactly one algorithm family (and one algorithm when the
/// JWKS names it).
#[derive(Clone)]
pub struct Key {
    pub decoding: DecodingKey,
    /// The algorithms this key may verify.
    pub algorithms: Vec<Algorithm>,
}

/// An issuer's keys by `kid`.
pub type KeySet = HashMap<String, Key>;

/// A token split and parsed, not yet verified.
pub struct Parsed<'t> {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    pub alg: Algorithm,
    pub kid: String,
    /// `header.payload`, the signed bytes.
    signed: &'t str,
    signature: &'t str,
}

impl Parsed<'_> {
    /// The token's `iss` (unverified: only to pick the issuer whose rules apply).
    pub fn issuer(&self) -> Result<&str, Refusal> {
        match self.claims.get("iss") {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(Refusal::new(
                AuthnError::MalformedToken,
                "`iss` is not a string",
            )),
            None => Err(Refusal::new(AuthnError::UntrustedIssuer, "no `iss` claim")),
        }
    }
}

/// Splits and parses `token`, refusing what no issuer accepts. `untyped` tells whether some
/// issuer takes tokens without `typ` (the `JWT` rule).
pub fn parse(token: &str, untyped: bool) -> Result<Parsed<'_>, Refusal> {
    let malformed = |reason: &str| Refusal::new(AuthnError::MalformedToken, reason);
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("token longer than 8 KiB"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() == 5 {
        return Err(Refusal::new(
            AuthnError::NotAccepted,
            "an encrypted token (JWE) where a signed one (JWS) is expected",
        ));
    }
    let [header, payload, signature] = parts[..] else {
        return Err(malformed("not three dot-separated parts"));
    };
    if header.is_empty() || payload.is_empty() {
        return Err(malformed("an empty header or payload"));
    }
    for part in [header, payload, signature] {
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(malformed(
                "characters outside unpadded base64url (padding, `+`, `/`, whitespace)",
            ));
        }
    }
    let header_json = object(header, "header")?;
    let alg = match header_json.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(Refusal::new(AuthnError::NotAccepted, "no `alg` header")),
    };
    let alg = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA" => {
            alg.parse::<Algorithm>()
                .map_err(|_| Refusal::new(AuthnError::NotAccepted, "unknown `alg`"))?
        }
        _ => {
            return Err(Refusal::new(
                AuthnError::NotAccepted,
                "`alg` is never accepted (`none`, HMAC or unknown)",
            ));
        }
    };
    for name in KEY_INJECTION {
        if header_json.contains_key(name) {
            return Err(Refusal::new(
                AuthnError::NotAccepted,
                format!("header `{name}` (keys come from the issuer's JWKS only)"),
            ));
        }
    }
    for name in ["crit", "b64", "enc", "zip"] {
        if header_json.contains_key(name) {
            return Err(Refusal::new(
                AuthnError::NotAccepted,
                format!("header `{name}` is not supported"),
            ));
        }
    }
    match header_json.get("typ") {
        Some(Value::String(t)) if typ_matches(t, TokenType::AccessToken) => {}
        Some(Value::String(t)) if typ_matches(t, TokenType::Jwt) => {}
        Some(_) => {
            return Err(Refusal::new(
                AuthnError::NotAccepted,
                "`typ` is not an access token type",
            ));
        }
        None if untyped => {}
        _ => return Err(Refusal::new(AuthnError::NotAccepted, "no `typ` header")),
    }
    let kid = match header_json.get("kid") {
        Some(Value::String(k)) if !k.is_empty() && k.chars().count() <= MAX_KID => k.clone(),
        Some(Value::String(_)) => {
            return Err(Refusal::new(
                AuthnError::BadSignature,
                "`kid` empty or longer than 256 characters",
            ));
        }
        _ => return Err(Refusal::new(AuthnError::BadSignature, "no `kid` header")),
    };
    if base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .is_err()
    {
        return Err(malformed("signature is not base64url"));
    }
    let claims = object(payload, "payload")?;
    if claims.len() > MAX_CLAIMS {
        return Err(malformed("more than 100 claims"));
    }
    let signed_len = header.len() + 1 + payload.len();
    Ok(Parsed {
        header: header_json,
        claims,
        alg,
        kid,
        signed: &token[..signed_len],
        signature,
    })
}

/// Checks the header against the issuer's rules, then the signature with its key.
pub fn verify_signature(parsed: &Parsed, rules: &Rules, keys: &KeySet) -> Result<(), Refusal> {
    if !rules.algorithms.contains(&parsed.alg) {
        return Err(Refusal::new(
            AuthnError::NotAccepted,
            format!("`alg` {:?} is not allowed for this issuer", parsed.alg),
        ));
    }
    let typ = parsed.header.get("typ").and_then(Value::as_str);
    let typed = match typ {
        Some(t) => typ_matches(t, rules.token_type),
        None => rules.token_type == TokenType::Jwt,
    };
    if !typed {
        return Err(Refusal::new(
            AuthnError::NotAccepted,
            "`typ` is not this issuer's access token type",
        ));
    }
    if rules.token_type == TokenType::Jwt
        && (parsed.claims.contains_key("nonce") || parsed.claims.contains_key("at_hash"))
    {
        return Err(Refusal::new(
            AuthnError::NotAccepted,
            "an ID token (`nonce`/`at_hash`) presented as an access token",
        ));
    }
    let Some(key) = keys.get(&parsed.kid) else {
        return Err(Refusal::new(
            AuthnError::BadSignature,
            "unknown `kid` (also after a JWKS refresh)",
        ));
    };
    if !key.algorithms.contains(&parsed.alg) {
        return Err(Refusal::new(
            AuthnError::BadSignature,
            format!("the `kid`'s key is not for `alg` {:?}", parsed.alg),
        ));
    }
    match jsonwebtoken::crypto::verify(
        parsed.signature,
        parsed.signed.as_bytes(),
        &key.decoding,
        parsed.alg,
    ) {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(Refusal::new(
            AuthnError::BadSignature,
            "signature does not verify",
        )),
    }
}

/// Checks the (signed) claims and maps them to a caller. `audiences` are the resource's.
pub fn caller(
    parsed: &Parsed,
    rules: &Rules,
    audiences: &[&str],
    now: u64,
    digest: &[u8; 32],
) -> Result<Caller, Refusal> {
    let c = &parsed.claims;
    let bad = |reason: String| Refusal::new(AuthnError::BadClaims, reason);
    if parsed.issuer()? != rules.issuer {
        return Err(Refusal::new(AuthnError::UntrustedIssuer, "`iss` changed"));
    }
    let exp = numeric(c, "exp")?.ok_or_else(|| bad("no `exp` claim".into()))?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(Refusal::new(AuthnError::Expired, "`exp` is past"));
    }
    if let Some(nbf) = numeric(c, "nbf")?
        && nbf > now + LEEWAY_SECS
    {
        return Err(Refusal::new(
            AuthnError::NotYetValid,
            "`nbf` is in the future",
        ));
    }
    let iat = numeric(c, "iat")?.ok_or_else(|| bad("no `iat` claim".into()))?;
    if iat > now + LEEWAY_SECS {
        return Err(Refusal::new(
            AuthnError::NotYetValid,
            "`iat` is in the future",
        ));
    }
    let audience = audience(c, rules, audiences)?;
    let subject = identity(c, "sub")?.ok_or_else(|| bad("no `sub` claim".into()))?;
    let tenant = match &rules.tenant {
        TenantFrom::Fixed(t) => t.clone(),
        TenantFrom::Claim(name) => {
            identity(c, name)?.ok_or_else(|| bad(format!("no tenant claim `{name}`")))?
        }
    };
    let mut agent = None;
    for name in &rules.agent_claims {
        if let Some(a) = identity(c, name)? {
            agent = Some(a);
            break;
        }
    }
    let agent = agent.ok_or_else(|| {
        bad(format!(
            "no agent claim (`{}`)",
            rules.agent_claims.join("`, `")
        ))
    })?;
    let token_id = match c.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= 256 => j.clone(),
        None => format!("sha256:{}", hex::encode(&digest[..12])),
        Some(_) => return Err(bad("`jti` is not a string of at most 256 bytes".into())),
    };
    let roles = match &rules.roles_claim {
        Some(name) => strings(c.get(name.as_str())),
        None => Vec::new(),
    };
    let mut attributes = BTreeMap::new();
    if let Some(name) = &rules.groups_claim
        && let Some(v) = c.get(name.as_str())
    {
        attributes.insert("groups".to_owned(), Value::from(strings(Some(v))));
    }
    for (attribute, claim) in &rules.attributes {
        if let Some(v) = c.get(claim.as_str()) {
            attributes.insert(attribute.clone(), v.clone());
        }
    }
    // An earlier actor chain (RFC 8693 `act`), nested into downstream tokens' own `act`.
    if let Some(act) = c.get("act").filter(|a| a.is_object()) {
        attributes.insert("act".to_owned(), act.clone());
    }
    Ok(Caller {
        issuer: rules.issuer.clone(),
        subject,
        tenant,
        agent,
        roles,
        token_id,
        audience,
        expires_at: exp,
        scopes: scopes(c),
        attributes,
        token: super::CallerToken::default(),
    })
}

/// The audience value the token was accepted for: an element of its `aud` (string or array)
/// equal to one of the resource's audiences or the issuer's extra ones. No prefix, substring or
/// case folding.
pub fn audience(
    claims: &Map<String, Value>,
    rules: &Rules,
    audiences: &[&str],
) -> Result<String, Refusal> {
    let wrong = |reason: &str| Refusal::new(AuthnError::WrongAudience, reason);
    let values: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(a) => out.push(a.as_str()),
                    _ => return Err(wrong("`aud` array holds a non-string")),
                }
            }
            out
        }
        Some(_) => return Err(wrong("`aud` is neither a string nor an array")),
        None => return Err(wrong("no `aud` claim")),
    };
    values
        .iter()
        .find(|v| audiences.contains(v) || rules.audiences.iter().any(|a| a == *v))
        .map(|v| (*v).to_owned())
        .ok_or_else(|| wrong("`aud` does not name this resource"))
}

/// Whether a `typ` value is the given type (RFC 7515 §4.1.9: `application/` may be omitted,
/// compared case-insensitively).
fn typ_matches(typ: &str, rule: TokenType) -> bool {
    let t = typ
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case("application/"))
        .map_or(typ, |_| &typ[12..]);
    match rule {
        TokenType::AccessToken => t.eq_ignore_ascii_case("at+jwt"),
        TokenType::Jwt => t.eq_ignore_ascii_case("jwt"),
    }
}

/// A NumericDate claim: absent, or a non-negative integer (strings, floats and negatives are
/// refused).
fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(_) => Err(Refusal::new(
            AuthnError::BadClaims,
            format!("`{name}` is not a non-negative integer"),
        )),
    }
}

/// An identity claim (subject, tenant, agent): absent, or a non-empty string of at most 256
/// bytes without control characters.
fn identity(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s))
            if !s.trim().is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Refusal::new(
            AuthnError::BadClaims,
            format!("`{name}` is not a printable string of at most 256 bytes"),
        )),
    }
}

/// A claim holding one string or an array of strings (other entries dropped).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Granted scopes: `scope` (space-separated, RFC 9068/8693), else Entra's `scp` (space-separated
/// string or array).
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let split = |s: &str| s.split_whitespace().map(str::to_owned).collect();
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => split(s),
        (None, Some(Value::String(s))) => split(s),
        (None, Some(v @ Value::Array(_))) => strings(Some(v)),
        _ => Vec::new(),
    }
}

/// Decodes one base64url part as a strict JSON object.
fn object(part: &str, what: &str) -> Result<Map<String, Value>, Refusal> {
    let malformed = |reason: String| Refusal::new(AuthnError::MalformedToken, reason);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("{what} is not base64url")))?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = Strict { depth: 1 }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| malformed(format!("{what} is not strict JSON ({e})")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(malformed(format!("{what} is not a JSON object"))),
    }
}

/// JSON that refuses duplicate object names and nesting deeper than [`MAX_DEPTH`].
struct Strict {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(A::Error::custom("nested too deep"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict {
            depth: self.depth + 1,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth > MAX_DEPTH {
            return Err(A::Error::custom("nested too deep"));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Strict {
                depth: self.depth + 1,
            })?;
            if out.insert(key, value).is_some() {
                return Err(A::Error::custom("duplicate name"));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            issuer: "https://idp.example".into(),
            algorithms: vec![Algorithm::ES256],
            token_type: TokenType::AccessToken,
            audiences: vec!["api://mandate".into()],
            tenant: TenantFrom::Claim("tid".into()),
            agent_claims: vec!["client_id".into(), "azp".into()],
            groups_claim: Some("groups".into()),
            roles_claim: None,
            attributes: BTreeMap::from([("region".to_owned(), "region".to_owned())]),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn typ_rules_are_per_issuer_and_case_insensitive() {
        for t in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            assert!(typ_matches(t, TokenType::AccessToken), "{t}");
            assert!(!typ_matches(t, TokenType::Jwt), "{t}");
        }
        for t in ["JWT", "jwt", "application/jwt"] {
            assert!(typ_matches(t, TokenType::Jwt), "{t}");
            assert!(!typ_matches(t, TokenType::AccessToken), "{t}");
        }
        for t in ["", "id_token", "oauth-id-jag+jwt", "logout+jwt", "at+jwt "] {
            assert!(!typ_matches(t, TokenType::AccessToken), "{t}");
            assert!(!typ_matches(t, TokenType::Jwt), "{t}");
        }
    }

    #[test]
    fn untyped_tokens_parse_only_when_some_issuer_takes_them() {
        let part = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.",
            part(r#"{"alg":"RS256","kid":"k"}"#),
            part(r#"{"iss":"x"}"#)
        );
        assert_eq!(
            parse(&token, false).map(|_| ()).map_err(|r| r.error),
            Err(AuthnError::NotAccepted)
        );
        assert!(parse(&token, true).is_ok());
    }

    #[test]
    fn audiences_match_exactly_as_a_string_or_an_array_element() {
        let r = rules();
        let res = ["https://m.example/mcp/a/b/c", "https://m.example"];
        let ok = |aud: Value| audience(&claims(json!({ "aud": aud })), &r, &res);
        assert_eq!(
            ok(json!("https://m.example")).ok().as_deref(),
            Some("https://m.example")
        );
        assert!(ok(json!(["x", "https://m.example/mcp/a/b/c"])).is_ok());
        assert!(ok(json!("api://mandate")).is_ok());
        for bad in [
            json!("https://m.example/"),
            json!("https://m.example/mcp/a/b/c-other"),
            json!("https://m.example.evil.example"),
            json!("HTTPS://M.EXAMPLE"),
            json!("https://m.example/mcp/a/b"),
            json!([]),
            json!(["https://m.example", 1]),
            json!(42),
        ] {
            assert_eq!(
                ok(bad.clone()).map_err(|r| r.error),
                Err(AuthnError::WrongAudience),
                "{bad}"
            );
        }
        assert!(audience(&Map::new(), &r, &res).is_err());
    }

    #[test]
    fn strict_json_refuses_duplicates_and_deep_nesting() {
        let part = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        assert!(object(&part(r#"{"a":1,"b":{"c":[1,2]}}"#), "payload").is_ok());
        assert!(object(&part(r#"{"a":1,"a":2}"#), "payload").is_err());
        assert!(object(&part(r#"{"a":{"b":1,"b":1}}"#), "payload").is_err());
        assert!(object(&part(r#"[1]"#), "payload").is_err());
        assert!(object(&part(r#"{"a":1} x"#), "payload").is_err());
        let deep = format!("{}1{}", r#"{"a":"#.repeat(7), "}".repeat(7));
        assert!(object(&part(&deep), "payload").is_err());
        let fits = format!("{}1{}", r#"{"a":"#.repeat(6), "}".repeat(6));
        assert!(object(&part(&fits), "payload").is_ok());
    }

    #[test]
    fn numeric_dates_are_non_negative_integers() {
        let c = claims(json!({"a": 5, "b": "5", "c": 5.5, "d": -5, "e": 1e300}));
        assert_eq!(numeric(&c, "a"), Ok(Some(5)));
        assert_eq!(numeric(&c, "z"), Ok(None));
        for k in ["b", "c", "d", "e"] {
            assert!(numeric(&c, k).is_err(), "{k}");
        }
    }

    #[test]
    fn claims_map_to_a_caller() {
        let c = claims(
            json!({"iss": "https://idp.example", "sub": "alice", "aud": "api://mandate",
            "exp": 2000, "iat": 1000, "tid": "acme", "azp": "bot", "groups": ["g1", 2, "g2"],
            "region": "eu", "scp": "read write"}),
        );
        let parsed = Parsed {
            header: Map::new(),
            claims: c,
            alg: Algorithm::ES256,
            kid: "k".into(),
            signed: "",
            signature: "",
        };
        let caller = caller(&parsed, &rules(), &[], 1500, &[0; 32]).map_err(|r| r.error);
        let caller = caller.unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(caller.agent, "bot");
        assert_eq!(caller.tenant, "acme");
        assert_eq!(caller.audience, "api://mandate");
        assert_eq!(caller.scopes, ["read", "write"]);
        assert_eq!(caller.attributes["groups"], json!(["g1", "g2"]));
        assert_eq!(caller.attributes["region"], json!("eu"));
        assert!(caller.token_id.starts_with("sha256:"));
        // Expired, and `iat` in the future.
        assert_eq!(
            super::caller(&parsed, &rules(), &[], 2000 + LEEWAY_SECS + 1, &[0; 32]).map(|_| ()),
            Err(Refusal::new(AuthnError::Expired, "`exp` is past"))
        );
        assert_eq!(
            super::caller(&parsed, &rules(), &[], 1000 - LEEWAY_SECS - 1, &[0; 32])
                .map_err(|r| r.error)
                .map(|_| ()),
            Err(AuthnError::NotYetValid)
        );
    }
}

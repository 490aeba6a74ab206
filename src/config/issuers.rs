//! `[[identity.issuers]]`: the external OAuth/OIDC issuers whose access tokens Mandate accepts,
//! validated purely (no discovery here: that happens when the broker starts).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use toml::Spanned;

use super::diag::{Diagnostic, Source, suggestion};
use super::raw::RawIssuer;

/// Algorithms an issuer may be configured with (asymmetric signatures only).
pub const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// Accepted when `algorithms` is not set.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];
/// Scheduled JWKS refresh (picks up rotations before a new `kid` is seen).
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(3600);
/// Least time between two JWKS fetches triggered by unknown `kid`s.
pub const DEFAULT_JWKS_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// The `typ` header an issuer's access tokens carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// `at+jwt` (or `application/at+jwt`), RFC 9068: the default.
    AccessToken,
    /// `JWT`: issuers that do not type access tokens per RFC 9068 (Microsoft Entra ID, Okta,
    /// Keycloak): `typ` is `JWT` or absent. Tokens that look like ID tokens (`nonce`, `at_hash`)
    /// are still refused.
    Jwt,
}

/// Where a caller's tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantFrom {
    /// A claim of the token (string).
    Claim(String),
    /// Every token of the issuer belongs to this tenant (single-tenant identity providers).
    Fixed(String),
}

/// A validated external issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The issuer identifier, compared byte for byte with the token's `iss`.
    pub issuer: String,
    /// Audiences accepted besides the mission's resource URL and the broker's public URL.
    pub audiences: Vec<String>,
    pub tenant: TenantFrom,
    /// Claim naming the agent (client); `None`: `client_id`, else `azp`.
    pub agent_claim: Option<String>,
    /// Claim holding the caller's groups (→ attribute `groups`).
    pub groups_claim: Option<String>,
    /// Claim holding the caller's roles.
    pub roles_claim: Option<String>,
    /// Attribute name → claim name, for policy.
    pub attributes: BTreeMap<String, String>,
    pub token_type: TokenType,
    pub algorithms: Vec<Algorithm>,
    /// Scopes every token of this issuer must grant (else 403 `insufficient_scope`).
    pub required_scopes: Vec<String>,
    pub jwks_refresh: Duration,
    pub jwks_min_interval: Duration,
}

/// Validates every `[[identity.issuers]]` entry; `embedded` is the broker's own issuer URL.
pub fn build(
    src: &Source,
    raw: &[Spanned<RawIssuer>],
    embedded: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<IssuerSettings> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in raw {
        let r = entry.get_ref();
        let before = diags.len();
        let issuer = r.issuer.get_ref().clone();
        let at = r.issuer.span().start;
        if let Err(why) = check_url(&issuer) {
            diags.push(src.at(at, format!("`issuer` `{issuer}` {why}")));
        }
        if issuer.trim_end_matches('/') == embedded.trim_end_matches('/') {
            diags.push(src.at(
                at,
                format!("`issuer` `{issuer}` is this broker's own embedded issuer: remove this entry (it is always trusted)"),
            ));
        }
        if !seen.insert(issuer.clone()) {
            diags.push(src.at(
                at,
                format!("issuer `{issuer}` is configured twice: merge the two entries"),
            ));
        }
        let tenant = match (&r.tenant_claim, &r.tenant) {
            (Some(c), None) => TenantFrom::Claim(claim_name(src, c, "tenant_claim", diags)),
            (None, Some(t)) => TenantFrom::Fixed(claim_name(src, t, "tenant", diags)),
            (Some(c), Some(_)) => {
                diags.push(src.at(
                    c.span().start,
                    "set either `tenant_claim` (the tenant is in the token) or `tenant` (one tenant for all its tokens), not both",
                ));
                TenantFrom::Fixed(String::new())
            }
            (None, None) => {
                diags.push(src.at(
                    entry.span().start,
                    format!("issuer `{issuer}` needs `tenant_claim = \"<claim>\"` or `tenant = \"<tenant>\"`: Mandate must know each caller's tenant"),
                ));
                TenantFrom::Fixed(String::new())
            }
        };
        let optional = |v: &Option<Spanned<String>>, field: &str, diags: &mut Vec<Diagnostic>| {
            v.as_ref().map(|c| claim_name(src, c, field, diags))
        };
        let agent_claim = optional(&r.agent_claim, "agent_claim", diags);
        let groups_claim = optional(&r.groups_claim, "groups_claim", diags);
        let roles_claim = optional(&r.roles_claim, "roles_claim", diags);
        let mut attributes = BTreeMap::new();
        for (name, claim) in &r.attributes {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid || (name == "groups" && groups_claim.is_some()) {
                diags.push(src.at(
                    claim.span().start,
                    format!("attribute name `{name}` must be lowercase letters, digits and `_`, and not `groups` when `groups_claim` is set"),
                ));
            }
            attributes.insert(name.clone(), claim_name(src, claim, "attributes", diags));
        }
        let token_type = match r
            .typ
            .as_ref()
            .map(|t| (t.get_ref().as_str(), t.span().start))
        {
            None | Some(("at+jwt", _)) => TokenType::AccessToken,
            Some(("JWT", _)) => TokenType::Jwt,
            Some((other, at)) => {
                diags.push(src.at(
                    at,
                    format!("`typ` must be `at+jwt` (RFC 9068, the default) or `JWT` (`JWT` or untyped: Entra ID, Okta, Keycloak), not `{other}`"),
                ));
                TokenType::AccessToken
            }
        };
        let algorithms = if r.algorithms.is_empty() {
            DEFAULT_ALGORITHMS.to_vec()
        } else {
            r.algorithms
                .iter()
                .filter_map(|a| algorithm(src, a, diags))
                .collect()
        };
        for aud in &r.audiences {
            if aud.get_ref().trim().is_empty() {
                diags.push(src.at(
                    aud.span().start,
                    "an entry of `audiences` is empty: remove it",
                ));
            }
        }
        for scope in &r.required_scopes {
            let s = scope.get_ref();
            if s.is_empty() || s.contains(char::is_whitespace) || s.contains('"') {
                diags.push(src.at(
                    scope.span().start,
                    format!("required scope `{s}` must be one scope token (no spaces or quotes)"),
                ));
            }
        }
        let jwks_refresh = duration(
            src,
            r.jwks_refresh.as_ref(),
            "jwks_refresh",
            (Duration::from_secs(60), Duration::from_secs(24 * 3600)),
            DEFAULT_JWKS_REFRESH,
            diags,
        );
        let jwks_min_interval = duration(
            src,
            r.jwks_min_interval.as_ref(),
            "jwks_min_interval",
            (Duration::from_secs(1), Duration::from_secs(3600)),
            DEFAULT_JWKS_MIN_INTERVAL,
            diags,
        );
        if diags.len() == before {
            out.push(IssuerSettings {
                issuer,
                audiences: r.audiences.iter().map(|a| a.get_ref().clone()).collect(),
                tenant,
                agent_claim,
                groups_claim,
                roles_claim,
                attributes,
                token_type,
                algorithms,
                required_scopes: r
                    .required_scopes
                    .iter()
                    .map(|s| s.get_ref().clone())
                    .collect(),
                jwks_refresh,
                jwks_min_interval,
            });
        }
    }
    out
}

/// Whether `url` may be an issuer: https, or http on a loopback address; no query or fragment.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Err("is not a URL: write the issuer identifier exactly as its tokens' `iss`");
    };
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not have a query or fragment");
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        "http" => Err("must use https (plain http is allowed on loopback only)"),
        _ => Err("must be an https URL"),
    }
}

/// Whether the URL's host is a loopback address or `localhost`.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn claim_name(
    src: &Source,
    value: &Spanned<String>,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> String {
    let v = value.get_ref();
    if v.trim().is_empty() || v.len() > 128 {
        diags.push(src.at(
            value.span().start,
            format!("`{field}` must be a non-empty name of at most 128 characters"),
        ));
    }
    v.clone()
}

fn algorithm(
    src: &Source,
    value: &Spanned<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Algorithm> {
    let name = value.get_ref();
    if ALGORITHMS.contains(&name.as_str()) {
        return name.parse().ok();
    }
    let message = if name.eq_ignore_ascii_case("none")
        || name.to_ascii_uppercase().starts_with("HS")
    {
        format!(
            "algorithm `{name}` is never accepted (unsigned and shared-secret tokens can be forged): use the issuer's asymmetric algorithm, e.g. `RS256`"
        )
    } else {
        format!(
            "unknown algorithm `{name}`{} (expected one of {})",
            suggestion(name, ALGORITHMS),
            ALGORITHMS.join(", ")
        )
    };
    diags.push(src.at(value.span().start, message));
    None
}

fn duration(
    src: &Source,
    value: Option<&Spanned<String>>,
    field: &str,
    (min, max): (Duration, Duration),
    default: Duration,
    diags: &mut Vec<Diagnostic>,
) -> Duration {
    let Some(value) = value else {
        return default;
    };
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if d >= min && d <= max => d,
        _ => {
            diags.push(src.at(
                value.span().start,
                format!(
                    "`{field}` must be a duration between {} and {} (e.g. `{}`), not `{}`",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(default),
                    value.get_ref()
                ),
            ));
            default
        }
    }
}

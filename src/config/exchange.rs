//! Token exchange configuration: the `[[exchange]]` profiles of `mandate.toml` and the `[auth]`
//! table of a tool manifest, validated purely (secrets are named here and read at start).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::Transport;
use super::diag::{Diagnostic, Source, suggestion};
use super::raw::{RawAuth, RawExchange};

/// The profile every manifest may name without configuring it.
pub const EMBEDDED: &str = "embedded";
/// Longest lifetime of a token the embedded STS mints.
pub const EMBEDDED_MAX_TTL: Duration = Duration::from_secs(300);

/// What kind of exchange a profile performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Mandate's STS mints the downstream token itself.
    Embedded,
    /// RFC 8693 token exchange at an identity provider.
    Rfc8693,
    /// Microsoft Entra ID On-Behalf-Of (RFC 7523 jwt-bearer with `requested_token_use`).
    EntraObo,
    /// MCP Enterprise-Managed Authorization: an ID-JAG from the IdP, redeemed at the
    /// downstream's authorization server.
    IdJag,
}

impl ExchangeKind {
    pub const NAMES: [&'static str; 4] = ["embedded", "rfc8693", "entra-obo", "id-jag"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "embedded" => Some(Self::Embedded),
            "rfc8693" => Some(Self::Rfc8693),
            "entra-obo" => Some(Self::EntraObo),
            "id-jag" => Some(Self::IdJag),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Rfc8693 => "rfc8693",
            Self::EntraObo => "entra-obo",
            Self::IdJag => "id-jag",
        }
    }
}

/// Where a client secret comes from (never the toml itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// How Mandate authenticates to a token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    Basic(SecretSource),
    /// `client_id` and `client_secret` in the form.
    Post(SecretSource),
    /// A signed client assertion (RFC 7523 §2.2).
    PrivateKeyJwt {
        key_file: PathBuf,
        kid: Option<String>,
    },
}

/// A client at a token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub token_endpoint: String,
    pub client_id: String,
    pub auth: ClientAuth,
}

/// A validated `[[exchange]]` profile.
#[derive(Debug, Clone)]
pub struct ExchangeProfile {
    pub name: String,
    pub kind: ExchangeKind,
    /// `None` only for `embedded`.
    pub client: Option<OAuthClient>,
    /// `rfc8693`: send Mandate's own token as the actor token.
    pub actor_token: bool,
    /// `embedded`: lifetime of minted tokens.
    pub ttl: Duration,
    /// `id-jag`: the downstream's authorization server.
    pub resource: Option<OAuthClient>,
    /// `id-jag`: the issuer of the downstream's authorization server.
    pub resource_issuer: Option<String>,
}

impl ExchangeProfile {
    /// The default `embedded` profile.
    pub fn embedded() -> Self {
        Self {
            name: EMBEDDED.to_owned(),
            kind: ExchangeKind::Embedded,
            client: None,
            actor_token: false,
            ttl: EMBEDDED_MAX_TTL,
            resource: None,
            resource_issuer: None,
        }
    }
}

/// Where a downstream receives its exchanged token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliver {
    /// `Authorization: Bearer` on every HTTP request.
    Header,
    /// `_meta["io.mandate/authorization"]` of the `tools/call` request.
    Meta,
    /// Not delivered (stdio downstreams without `deliver = "meta"`).
    None,
}

/// A manifest's validated `[auth]`, when its exchange is not `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The profile name (`embedded` or one of `[[exchange]]`).
    pub exchange: String,
    /// The `aud` of downstream tokens (default: the HTTP URL, or `urn:mandate:<manifest id>`).
    pub audience: String,
    /// Scopes requested when a tool names none.
    pub scopes: Vec<String>,
    pub deliver: Deliver,
}

/// Validates the `[[exchange]]` profiles; the default `embedded` profile is always present.
pub fn build_profiles(
    root: &Path,
    src: &Source,
    raw: &[Spanned<RawExchange>],
    diags: &mut Vec<Diagnostic>,
) -> Vec<ExchangeProfile> {
    let mut profiles: Vec<ExchangeProfile> = Vec::new();
    for entry in raw {
        let at = entry.span().start;
        let r = entry.get_ref();
        let name = r.name.get_ref().clone();
        if name == "none" || name.trim().is_empty() {
            diags.push(src.at(
                r.name.span().start,
                format!("`{name}` cannot name an exchange profile: choose another `name`"),
            ));
            continue;
        }
        if profiles.iter().any(|p| p.name == name) {
            diags.push(src.at(
                r.name.span().start,
                format!("exchange profile `{name}` is defined twice: rename one"),
            ));
            continue;
        }
        let Some(kind) = ExchangeKind::parse(r.kind.get_ref()) else {
            diags.push(src.at(
                r.kind.span().start,
                format!(
                    "unknown exchange kind `{}` (expected one of {}){}",
                    r.kind.get_ref(),
                    ExchangeKind::NAMES.join(", "),
                    suggestion(r.kind.get_ref(), ExchangeKind::NAMES.iter().copied())
                ),
            ));
            continue;
        };
        if name == EMBEDDED && kind != ExchangeKind::Embedded {
            diags.push(src.at(
                r.name.span().start,
                "the profile named `embedded` must be of kind `embedded`: give this one another `name`",
            ));
        }
        let ttl = match &r.ttl {
            None => EMBEDDED_MAX_TTL,
            Some(t) if kind != ExchangeKind::Embedded => {
                diags.push(src.at(
                    t.span().start,
                    "`ttl` applies to `embedded` profiles only: the identity provider sets the lifetime",
                ));
                EMBEDDED_MAX_TTL
            }
            Some(t) => match humantime::parse_duration(t.get_ref()) {
                Ok(d) if d >= Duration::from_secs(1) && d <= EMBEDDED_MAX_TTL => d,
                _ => {
                    diags.push(src.at(
                        t.span().start,
                        format!("`ttl` must be between 1s and 5m, not `{}`", t.get_ref()),
                    ));
                    EMBEDDED_MAX_TTL
                }
            },
        };
        let client = match kind {
            ExchangeKind::Embedded => {
                if r.token_endpoint.is_some() || r.client_id.is_some() {
                    diags.push(src.at(
                        at,
                        "an `embedded` profile takes no `token_endpoint` or `client_id`: Mandate mints the tokens itself",
                    ));
                }
                None
            }
            ExchangeKind::Rfc8693 | ExchangeKind::EntraObo | ExchangeKind::IdJag => oauth_client(
                root,
                src,
                at,
                OAuthFields {
                    what: "",
                    endpoint: r.token_endpoint.as_ref(),
                    client_id: r.client_id.as_deref(),
                    secret_env: r.client_secret_env.as_deref(),
                    secret_file: r.client_secret_file.as_deref(),
                    auth: r.client_auth.as_ref(),
                    key_file: r.private_key_file.as_deref(),
                    key_id: r.private_key_id.as_deref(),
                },
                diags,
            ),
        };
        let (resource, resource_issuer) = match kind {
            ExchangeKind::IdJag => {
                let resource = oauth_client(
                    root,
                    src,
                    at,
                    OAuthFields {
                        what: "resource_",
                        endpoint: r.resource_token_endpoint.as_ref(),
                        client_id: r.resource_client_id.as_deref(),
                        secret_env: r.resource_client_secret_env.as_deref(),
                        secret_file: r.resource_client_secret_file.as_deref(),
                        auth: None,
                        key_file: None,
                        key_id: None,
                    },
                    diags,
                );
                if r.resource_issuer.is_none() {
                    diags.push(src.at(
                        at,
                        "an `id-jag` profile needs `resource_issuer`: the issuer of the downstream's authorization server",
                    ));
                }
                (resource, r.resource_issuer.clone())
            }
            ExchangeKind::Embedded | ExchangeKind::Rfc8693 | ExchangeKind::EntraObo => {
                if r.resource_token_endpoint.is_some() || r.resource_issuer.is_some() {
                    diags.push(src.at(
                        at,
                        "`resource_token_endpoint` and `resource_issuer` apply to `id-jag` profiles only",
                    ));
                }
                (None, None)
            }
        };
        if r.actor_token && kind != ExchangeKind::Rfc8693 {
            diags.push(src.at(at, "`actor_token` applies to `rfc8693` profiles only"));
        }
        profiles.push(ExchangeProfile {
            name,
            kind,
            client,
            actor_token: r.actor_token,
            ttl,
            resource,
            resource_issuer,
        });
    }
    if !profiles.iter().any(|p| p.name == EMBEDDED) {
        profiles.push(ExchangeProfile::embedded());
    }
    profiles
}

struct OAuthFields<'a> {
    /// Prefix of the field names (`resource_` for the id-jag resource server).
    what: &'a str,
    endpoint: Option<&'a Spanned<String>>,
    client_id: Option<&'a str>,
    secret_env: Option<&'a str>,
    secret_file: Option<&'a str>,
    auth: Option<&'a Spanned<String>>,
    key_file: Option<&'a str>,
    key_id: Option<&'a str>,
}

fn oauth_client(
    root: &Path,
    src: &Source,
    at: usize,
    f: OAuthFields,
    diags: &mut Vec<Diagnostic>,
) -> Option<OAuthClient> {
    let p = f.what;
    let before = diags.len();
    let endpoint = match f.endpoint {
        None => {
            diags.push(src.at(at, format!("this profile needs `{p}token_endpoint`")));
            String::new()
        }
        Some(e) => {
            match reqwest::Url::parse(e.get_ref()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.fragment().is_none() => {}
                _ => diags.push(src.at(
                    e.span().start,
                    format!(
                        "`{p}token_endpoint` must be an http(s) URL, not `{}`",
                        e.get_ref()
                    ),
                )),
            }
            e.get_ref().clone()
        }
    };
    let Some(client_id) = f.client_id.filter(|c| !c.trim().is_empty()) else {
        diags.push(src.at(at, format!("this profile needs `{p}client_id`")));
        return None;
    };
    let secret = match (f.secret_env, f.secret_file) {
        (Some(_), Some(_)) => {
            diags.push(src.at(
                at,
                format!("set one of `{p}client_secret_env` and `{p}client_secret_file`, not both"),
            ));
            None
        }
        (Some(env), None) => Some(SecretSource::Env(env.to_owned())),
        (None, Some(file)) => Some(SecretSource::File(root.join(file))),
        (None, None) => None,
    };
    let method = f.auth.map(|a| a.get_ref().as_str());
    let auth = match (method, secret, f.key_file) {
        (None | Some("client_secret_basic"), Some(s), None) => Some(ClientAuth::Basic(s)),
        (Some("client_secret_post"), Some(s), None) => Some(ClientAuth::Post(s)),
        (None | Some("private_key_jwt"), None, Some(key)) => Some(ClientAuth::PrivateKeyJwt {
            key_file: root.join(key),
            kid: f.key_id.map(str::to_owned),
        }),
        (Some(m @ ("client_secret_basic" | "client_secret_post" | "private_key_jwt")), _, _) => {
            diags.push(src.at(
                f.auth.map_or(at, |a| a.span().start),
                format!(
                    "`client_auth = \"{m}\"` needs {}",
                    if m == "private_key_jwt" {
                        "`private_key_file` and no client secret"
                    } else {
                        "`client_secret_env` or `client_secret_file` and no `private_key_file`"
                    }
                ),
            ));
            None
        }
        (Some(m), _, _) => {
            diags.push(src.at(
                f.auth.map_or(at, |a| a.span().start),
                format!(
                    "unknown `client_auth` `{m}` (expected `client_secret_basic`, `client_secret_post` or `private_key_jwt`)"
                ),
            ));
            None
        }
        (None, _, _) => {
            diags.push(src.at(
                at,
                format!(
                    "this profile needs client credentials: `{p}client_secret_env` or `{p}client_secret_file`{}",
                    if p.is_empty() { ", or `private_key_file`" } else { "" }
                ),
            ));
            None
        }
    };
    if diags.len() > before {
        return None;
    }
    auth.map(|auth| OAuthClient {
        token_endpoint: endpoint,
        client_id: client_id.to_owned(),
        auth,
    })
}

/// Validates a manifest's `[auth]`: `None` when there is none or its exchange is `none`.
pub fn build_auth(
    src: &Source,
    id: &str,
    raw: Option<&Spanned<RawAuth>>,
    transport: &Transport,
    profiles: &[ExchangeProfile],
    diags: &mut Vec<Diagnostic>,
) -> Option<Auth> {
    let raw = raw?.get_ref();
    let exchange = raw.exchange.get_ref();
    if exchange == "none" {
        return None;
    }
    if !profiles.iter().any(|p| &p.name == exchange) {
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        diags.push(src.at(
            raw.exchange.span().start,
            format!(
                "unknown exchange profile `{exchange}` (expected `none`, {}, or a `[[exchange]]` of `mandate.toml`){}",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                suggestion(exchange, names.iter().copied())
            ),
        ));
    }
    let http = matches!(transport, Transport::Http { .. });
    let deliver = match raw.deliver.as_ref().map(|d| (d, d.get_ref().as_str())) {
        None if http => Deliver::Header,
        None => Deliver::None,
        Some((_, "header")) if http => Deliver::Header,
        Some((_, "meta")) if !http => Deliver::Meta,
        Some((d, v @ ("header" | "meta"))) => {
            diags.push(src.at(
                d.span().start,
                format!(
                    "`deliver = \"{v}\"` does not fit this transport: HTTP downstreams take `header`, stdio downstreams `meta`"
                ),
            ));
            Deliver::None
        }
        Some((d, v)) => {
            diags.push(src.at(
                d.span().start,
                format!("unknown `deliver` `{v}` (expected `header` or `meta`)"),
            ));
            Deliver::None
        }
    };
    let audience = match (&raw.audience, transport) {
        (Some(a), _) => a.clone(),
        (None, Transport::Http { url, .. }) => url.trim_end_matches('/').to_owned(),
        (None, Transport::Stdio { .. }) => format!("urn:mandate:{id}"),
    };
    Some(Auth {
        exchange: exchange.clone(),
        audience,
        scopes: raw.scopes.clone(),
        deliver,
    })
}

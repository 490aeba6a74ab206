//! Raw configuration types: exactly what the TOML files may contain. Unknown fields are errors
//! (reported all at once, with a did-you-mean, by [`super::fields`] before these are read).
//! Every field's doc comment is user documentation, and the description of the field in the JSON
//! Schemas `mandate schema manifests` writes for editors (`JsonSchema`; a spanned field names
//! its plain type with `#[schemars(with = …)]`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

/// `mandate.toml`: broker settings. Every section is optional.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// `[server]`: where and how the broker listens.
    #[serde(default)]
    pub server: RawServer,
    /// `[store]`: where the broker keeps its keys and audit log.
    #[serde(default)]
    pub store: RawStore,
    /// `[identity]`: which token issuers are trusted.
    #[serde(default)]
    pub identity: RawIdentity,
    /// Token exchange profiles.
    #[serde(default)]
    #[schemars(with = "Vec<RawExchange>")]
    pub exchange: Vec<Spanned<RawExchange>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on (default `127.0.0.1:8080`).
    #[schemars(with = "Option<String>")]
    pub listen: Option<Spanned<String>>,
    /// Canonical public base URL: the issuer of embedded tokens and the base of every mission's
    /// resource URL (default `http://<listen>`). An `https://` URL without `tls` means a
    /// TLS-terminating proxy in front forwards plain HTTP here.
    #[schemars(with = "Option<String>")]
    pub public_url: Option<Spanned<String>>,
    /// Extra `Host` values accepted besides `localhost`, `127.0.0.1`, `::1` and the public URL's
    /// host (DNS-rebinding protection).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the MCP endpoints (default: none checked for non-browser
    /// clients; requests carrying any other `Origin` are refused).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Serve HTTPS with this certificate chain and private key (PEM files, relative to the
    /// configuration directory). Required to listen on anything but loopback, unless an
    /// `https://` `public_url` says a TLS-terminating proxy is in front.
    pub tls: Option<RawTls>,
}

/// `[server] tls = { cert = "…", key = "…" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM file with the certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the certificate's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: String,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Directory of the sled database, relative to the configuration directory (default `.mandate`).
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// External OIDC issuers (not yet supported: only the embedded issuer is trusted).
    #[serde(default)]
    #[schemars(with = "Vec<RawIssuer>")]
    pub issuers: Vec<Spanned<RawIssuer>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub tenant_claim: Option<String>,
    pub agent_claim: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    pub name: String,
    pub kind: String,
    pub token_endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
}

/// `tool-manifests/<domain>/<name>.toml`: one downstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// What the downstream is.
    pub description: String,
    /// Environments whose missions may use it (`prod`, `staging`, …).
    #[schemars(with = "Vec<String>")]
    pub environments: Vec<Spanned<String>>,
    /// Where its data lives (data residency).
    #[schemars(with = "String")]
    pub region: Spanned<String>,
    /// How to reach it.
    #[schemars(with = "RawTransport")]
    pub transport: Spanned<RawTransport>,
    /// Outbound credentials.
    #[schemars(with = "Option<RawAuth>")]
    pub auth: Option<Spanned<RawAuth>>,
    /// Per-call timeout, e.g. `30s` (default 30s).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// The tools Mandate may expose from it.
    #[serde(default)]
    #[schemars(with = "Vec<RawTool>")]
    pub tools: Vec<Spanned<RawTool>>,
}

/// `[transport]`. (Values inside an internally tagged enum cannot carry spans; diagnostics
/// about its values point at the `[transport]` table. Unknown fields are located exactly, by
/// [`super::fields`].)
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawTransport {
    /// A child process speaking MCP over stdin/stdout.
    Stdio {
        /// Program to run; a relative path containing `/` is relative to the configuration directory.
        command: String,
        /// Arguments passed to the program.
        #[serde(default)]
        args: Vec<String>,
        /// Environment variables set for the child (it inherits none but `PATH`, `HOME`, `LANG`).
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// MCP revision to speak: `2025-11-25` (default), `2025-06-18`, or `2026-07-28` (stateless).
        protocol: Option<String>,
    },
    /// A streamable HTTP MCP endpoint.
    Http {
        /// The endpoint's URL, e.g. `https://ledger.internal/mcp`.
        url: String,
        /// MCP revision to speak (as for stdio).
        protocol: Option<String>,
    },
}

/// `[auth]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// An exchange profile from `mandate.toml`, `embedded`, or `none`.
    #[schemars(with = "String")]
    pub exchange: Spanned<String>,
    /// Audience of downstream tokens.
    pub audience: Option<String>,
    /// Scopes requested for every call.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `[[tools]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// The tool's name on the downstream.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `read`, `write` or `irreversible`.
    #[schemars(with = "String")]
    pub effect: Spanned<String>,
    /// `public`, `internal`, `confidential` or `restricted` (default `internal`).
    #[schemars(with = "Option<String>")]
    pub sensitivity: Option<Spanned<String>>,
    /// Scopes requested in the token exchange for this tool.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `none` or `approver` (default `none`).
    #[schemars(with = "Option<String>")]
    pub approval: Option<Spanned<String>>,
    /// Per-call timeout for this tool, overriding the manifest's.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
}

/// `missions/<domain>/<env>/<name>.toml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMission {
    /// What the mission is for (shown to whoever reviews it).
    pub description: String,
    /// The tenant whose users may use it.
    #[schemars(with = "String")]
    pub tenant: Spanned<String>,
    /// Accountable human.
    pub owner: String,
    /// Last day it serves (`YYYY-MM-DD`).
    #[schemars(with = "String")]
    pub expires: Spanned<toml::value::Datetime>,
    /// Agent ids allowed to use it.
    #[schemars(with = "Vec<String>")]
    pub agents: Vec<Spanned<String>>,
    /// Allowed data regions (empty: any).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub regions: Vec<Spanned<String>>,
    /// `<manifest id>/<tool>`, `<manifest id>/*`, or `{ tool = "…", as = "new_name" }`.
    #[schemars(with = "Vec<RawToolRef>")]
    pub tools: Vec<Spanned<RawToolRef>>,
    /// Manifest ids whose resources pass through.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub resources: Vec<Spanned<String>>,
    /// Manifest ids whose prompts pass through.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub prompts: Vec<Spanned<String>>,
    /// Missions this one may hand work to.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub handoffs: Vec<Spanned<String>>,
    /// Effects whose calls must carry `_meta["io.mandate/reasoning"]`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub require_reasoning: Vec<Spanned<String>>,
    /// `[limits]`: call budgets.
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawToolRef {
    Plain(String),
    Renamed(RawRename),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRename {
    /// `<manifest id>/<tool>`.
    pub tool: String,
    /// The name the mission's callers see.
    #[serde(rename = "as")]
    pub as_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Calls per minute per caller (not yet enforced).
    pub calls_per_minute: Option<u32>,
}

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
    /// Human approval of tool calls (`approval = "approver"` tools).
    #[serde(default)]
    pub approvals: RawApprovals,
    /// The agent registry.
    #[serde(default)]
    pub agents: RawAgents,
    /// `[handoff]`: handoffs between agents (single-use tokens Mandate mints for a mission's
    /// agent handing work to another mission's agent).
    #[serde(default)]
    pub handoff: RawHandoff,
}

/// `[handoff]` in `mandate.toml`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHandoff {
    /// Longest actor chain a handoff may carry: the agents that handed the work on, the first
    /// one included (default 3). A handoff that would make it longer is refused.
    #[schemars(with = "Option<i64>")]
    pub max_depth: Option<Spanned<i64>>,
    /// Lifetime of a handoff token, e.g. `2m` (default and most `5m`).
    #[schemars(with = "Option<String>")]
    pub ttl: Option<Spanned<String>>,
}

/// `[approvals]`: how approval requests wait, expire and reach approvers.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// How long an approval request stays valid, from its creation, for a decision and then for
    /// the one call it approves (default `1h`, at most `7d`).
    #[schemars(with = "Option<String>")]
    pub ttl: Option<Spanned<String>>,
    /// How long a call that needs approval waits for a decision before the agent gets a pending
    /// result naming the approval id (default `30s`; `0s`: answer pending at once).
    #[schemars(with = "Option<String>")]
    pub wait: Option<Spanned<String>>,
    /// The role (in the token's `roles`) that makes a user an approver (default `approver`).
    #[schemars(with = "Option<String>")]
    pub approver_role: Option<Spanned<String>>,
    /// URL that receives each new approval request as a signed JSON POST (e.g. a ServiceNow or
    /// Jira automation endpoint). The same system posts decisions back to
    /// `<public_url>/approvals/webhook`, signed with the same secret.
    #[schemars(with = "Option<String>")]
    pub webhook_url: Option<Spanned<String>>,
    /// Environment variable holding the webhook's HMAC secret (default
    /// `MANDATE_APPROVALS_WEBHOOK_SECRET`); required when `webhook_url` is set.
    #[schemars(with = "Option<String>")]
    pub webhook_secret_env: Option<Spanned<String>>,
    /// How old a signed webhook decision may be, by its signature's timestamp (default `5m`).
    #[schemars(with = "Option<String>")]
    pub replay_window: Option<Spanned<String>>,
    /// How long a finished request (used, denied or expired) stays in the store after its
    /// expiry, for `mandate approvals list` (default `30d`). Every step of it stays in the
    /// audit log regardless.
    #[schemars(with = "Option<String>")]
    pub retain: Option<Spanned<String>>,
}

/// `[agents]`: the agent registry and its zombie sweep.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAgents {
    /// Register at start every agent a mission's `agents` names that is not registered yet
    /// ("declared by mission"; default `true`). `false`: only agents onboarded with
    /// `mandate agents onboard` may call.
    pub register_mission_agents: Option<bool>,
    /// How often agents past their expiry or review date, or idle too long, are suspended
    /// (default `1h`; also done at start).
    #[schemars(with = "Option<String>")]
    pub sweep_interval: Option<Spanned<String>>,
    /// Suspend an agent not seen for this long, e.g. `30d` (default: never for idleness).
    #[schemars(with = "Option<String>")]
    pub max_idle: Option<Spanned<String>>,
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
    /// Threads of the async runtime that serves requests: a count, or `"auto"` for one per CPU
    /// (default 1). Each call costs Mandate tens of microseconds and otherwise waits on the
    /// network, so one event-loop thread serves thousands of calls a second and avoids the
    /// wake-ups between threads that dominate the added latency; raise it when Mandate's CPU
    /// use nears one core.
    #[schemars(with = "Option<RawWorkerThreads>")]
    pub worker_threads: Option<Spanned<RawWorkerThreads>>,
}

/// `[server] worker_threads`: a count or `"auto"`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawWorkerThreads {
    /// This many threads (at least 1).
    Count(i64),
    /// `"auto"`: one per CPU.
    Word(String),
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
    /// External OAuth/OIDC issuers whose access tokens are accepted, besides the embedded issuer.
    #[serde(default)]
    #[schemars(with = "Vec<RawIssuer>")]
    pub issuers: Vec<Spanned<RawIssuer>>,
}

/// `[[identity.issuers]]`: one external identity provider.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Issuer identifier, exactly as its tokens' `iss` (https; http only on loopback). Its
    /// metadata is discovered at `<issuer>/.well-known/openid-configuration` (or RFC 8414's
    /// `oauth-authorization-server`).
    #[schemars(with = "String")]
    pub issuer: Spanned<String>,
    /// Audiences accepted besides the mission's resource URL and the broker's public URL
    /// (e.g. Entra's `api://<app id>`). Matched exactly.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub audiences: Vec<Spanned<String>>,
    /// Claim holding the caller's tenant (multi-tenant IdPs). Set this or `tenant`.
    #[schemars(with = "Option<String>")]
    pub tenant_claim: Option<Spanned<String>>,
    /// The one tenant of every token of this issuer (single-tenant IdPs). Set this or `tenant_claim`.
    #[schemars(with = "Option<String>")]
    pub tenant: Option<Spanned<String>>,
    /// Claim naming the agent (OAuth client) (default: `client_id`, else `azp`).
    #[schemars(with = "Option<String>")]
    pub agent_claim: Option<Spanned<String>>,
    /// Claim holding the caller's groups (array of strings), mapped to the attribute `groups`.
    #[schemars(with = "Option<String>")]
    pub groups_claim: Option<Spanned<String>>,
    /// Claim holding the caller's roles (array of strings or one string).
    #[schemars(with = "Option<String>")]
    pub roles_claim: Option<Spanned<String>>,
    /// Attributes for policy, by name, each from a claim: `{ department = "dept", region = "region" }`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub attributes: BTreeMap<String, Spanned<String>>,
    /// The `typ` header of its access tokens: `at+jwt` (default, RFC 9068) or `JWT` (`JWT` or
    /// no `typ`: Entra ID, Okta, Keycloak).
    #[schemars(with = "Option<String>")]
    pub typ: Option<Spanned<String>>,
    /// Accepted signature algorithms (default `RS256`, `ES256`, `PS256`, `EdDSA`); never `none`
    /// or HMAC.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub algorithms: Vec<Spanned<String>>,
    /// Scopes every token must grant; a token without them is answered 403 `insufficient_scope`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub required_scopes: Vec<Spanned<String>>,
    /// How often its JWKS is fetched again to follow key rotation (default `1h`).
    #[schemars(with = "Option<String>")]
    pub jwks_refresh: Option<Spanned<String>>,
    /// Least time between two JWKS fetches caused by tokens with an unknown `kid` (default `30s`).
    #[schemars(with = "Option<String>")]
    pub jwks_min_interval: Option<Spanned<String>>,
}

/// `[[exchange]]`: a token exchange profile that tool manifests name in `[auth] exchange`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    /// The profile's name (`none` is reserved; `embedded` may be redefined to change its `ttl`).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `embedded` (Mandate's own STS), `rfc8693`, `entra-obo` or `id-jag`.
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    /// The identity provider's token endpoint (every kind but `embedded`).
    #[schemars(with = "Option<String>")]
    pub token_endpoint: Option<Spanned<String>>,
    /// Mandate's client id at the identity provider.
    pub client_id: Option<String>,
    /// Name of the environment variable holding the client secret (never the secret itself).
    pub client_secret_env: Option<String>,
    /// File holding the client secret, relative to the configuration directory.
    pub client_secret_file: Option<String>,
    /// `client_secret_basic` (default with a secret), `client_secret_post`, or
    /// `private_key_jwt` (with `private_key_file`).
    #[schemars(with = "Option<String>")]
    pub client_auth: Option<Spanned<String>>,
    /// PEM private key (EC P-256 → ES256, or RSA → RS256) that signs `private_key_jwt`
    /// client assertions, relative to the configuration directory.
    pub private_key_file: Option<String>,
    /// `kid` header of `private_key_jwt` client assertions.
    pub private_key_id: Option<String>,
    /// `rfc8693`: also send an actor token (a `client_credentials` token of Mandate's own) so the
    /// identity provider records Mandate as the actor (default `false`).
    #[serde(default)]
    pub actor_token: bool,
    /// `embedded`: lifetime of minted downstream tokens, at most `5m` (default `5m`).
    #[schemars(with = "Option<String>")]
    pub ttl: Option<Spanned<String>>,
    /// `id-jag`: the token endpoint of the downstream's own authorization server, which redeems
    /// the ID-JAG with a jwt-bearer grant.
    #[schemars(with = "Option<String>")]
    pub resource_token_endpoint: Option<Spanned<String>>,
    /// `id-jag`: the issuer of the downstream's authorization server (the ID-JAG's audience).
    pub resource_issuer: Option<String>,
    /// `id-jag`: Mandate's client id at the downstream's authorization server.
    pub resource_client_id: Option<String>,
    /// `id-jag`: environment variable holding that client's secret.
    pub resource_client_secret_env: Option<String>,
    /// `id-jag`: file holding that client's secret.
    pub resource_client_secret_file: Option<String>,
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
    /// `[isolation]`: whether callers share one downstream session or each principal gets its
    /// own (see [`RawIsolation`]).
    #[schemars(with = "Option<RawIsolation>")]
    pub isolation: Option<Spanned<RawIsolation>>,
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

/// `[isolation]`: how callers are kept apart on the downstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIsolation {
    /// `per-principal`: every principal (issuer, subject, tenant, agent) gets its own downstream
    /// session (its own child process for stdio), so nothing the downstream sends can reach
    /// another user. `shared`: one session carries every caller's calls, and whatever the
    /// downstream sends that cannot be tied to one call (a background log line, a sampling
    /// request on stdio) is dropped, logged and counted, never relayed. Default: `per-principal`
    /// for stdio and for HTTP downstreams whose `[auth] exchange` is not `none`, else `shared`.
    /// `shared` is refused when `[auth] exchange` is not `none` (a session bound to one user's
    /// token must never carry another user's call).
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
    /// Most per-principal instances of this downstream at once (per tenant and environment;
    /// default 32). A principal's first call beyond it is refused, saying so.
    #[schemars(with = "Option<i64>")]
    pub max_instances: Option<Spanned<i64>>,
    /// How long a per-principal instance may stay unused before it is closed, e.g. `5m`
    /// (default 5m, at most 1h). The principal's next call starts a new one.
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Spanned<String>>,
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
    /// Where the exchanged token goes: `header` (`Authorization: Bearer`, HTTP downstreams, the
    /// default there) or `meta` (`_meta["io.mandate/authorization"]`, stdio downstreams, opt-in).
    #[schemars(with = "Option<String>")]
    pub deliver: Option<Spanned<String>>,
    /// With `exchange = "handoff"`: the mission whose agent this downstream is. Missions using
    /// this manifest must list it in `handoffs`.
    #[schemars(with = "Option<String>")]
    pub mission: Option<Spanned<String>>,
    /// With `exchange = "handoff"`: the agent (listed in `mission`'s `agents`) the handoff token
    /// is for.
    #[schemars(with = "Option<String>")]
    pub agent: Option<Spanned<String>>,
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
    /// `none`, `approver` (a human approver must approve each exact call) or `user` (the user
    /// confirms each call in their own client, through MCP elicitation) (default `none`).
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
    /// Calls per minute to this mission, all callers together (a token bucket: up to this many at
    /// once, refilled evenly over the minute).
    #[schemars(with = "Option<u32>")]
    pub calls_per_minute: Option<Spanned<u32>>,
    /// Calls per minute of each agent on this mission.
    #[schemars(with = "Option<u32>")]
    pub per_agent: Option<Spanned<u32>>,
    /// Calls per minute of each user (issuer, tenant and subject) on this mission.
    #[schemars(with = "Option<u32>")]
    pub per_user: Option<Spanned<u32>>,
    /// Calls per minute to each tool of this mission.
    #[schemars(with = "Option<u32>")]
    pub per_tool: Option<Spanned<u32>>,
}

//! The `mandate` command line. `mandate --help` is the manual.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::approval::{Decider, Decision};
use crate::audit::{Auditor, Event, EventKind, ExportFilter, PublicKey};
use crate::authn::{Issuer, TokenRequest};
use crate::config::{self, Config};
use crate::downstream::{self, Pool};
use crate::inbound::handler::{MissionHandler, MissionState};
use crate::inbound::{self, Broker};
use crate::mission::MissionRuntime;
use crate::store::{self, AdminCredential, Store, StoreError};
use crate::tools::{LockFile, lock_path};

/// Mandate: a Backend-for-Agent broker. It serves each mission's scoped toolset over MCP,
/// verifies every caller, validates every call against pinned tool definitions, and writes a
/// hash-chained audit record of everything.
#[derive(Debug, Parser)]
#[command(
    name = "mandate",
    version,
    propagate_version = true,
    after_help = "Examples:
  mandate check                                  validate the configuration in this directory
  mandate pin finance/ledger                     pin a downstream's tool definitions
  mandate serve                                  serve every mission on 127.0.0.1:8080
  mandate token --sub alice@acme.example --tenant acme --agent invoice-bot \\
                --mission finance/prod/invoice-review
  mandate audit verify                           prove the audit chain intact

Environment:
  MANDATE_LOG    log filter (default `info,rmcp=warn`), e.g. `debug` or `mandate=debug`
  MANDATE_TOKEN  the caller's token for `serve --stdio`
  MANDATE_APPROVER_TOKEN  an approver's token for `approvals` (default: decide as the local admin)

While `mandate serve` runs it owns the store; `token`, `audit` and `approvals` then reach it
through its loopback admin API, so the same commands work either way."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every mission over streamable HTTP at /mcp/<domain>/<env>/<name>, or one mission
    /// over stdio (`--stdio --mission <id>`, caller token from MANDATE_TOKEN).
    Serve {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Address to listen on (overrides [server] listen).
        #[arg(long)]
        listen: Option<String>,
        /// Serve one mission over stdin/stdout instead of HTTP.
        #[arg(long, requires = "mission")]
        stdio: bool,
        /// The mission to serve with --stdio, e.g. finance/prod/invoice-review.
        #[arg(long)]
        mission: Option<String>,
    },
    /// Validate every manifest, mission and lock file; print each problem as path:line:col.
    Check {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
    },
    /// Fetch each downstream's tool definitions and write <manifest>.lock.json beside it.
    Pin {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Only this tool manifest, e.g. finance/ledger.
        manifest: Option<String>,
    },
    /// Mint an access token from the embedded issuer (development and tests). Prints only the
    /// token on stdout.
    Token {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The user the agent acts for.
        #[arg(long)]
        sub: String,
        /// The user's tenant.
        #[arg(long)]
        tenant: String,
        /// The registered agent id (the token's azp).
        #[arg(long)]
        agent: String,
        /// Bind the token to one mission's resource URL. Without it the token is broker-wide:
        /// refused unless a mission of the tenant lists the agent, and stderr names the missions
        /// it opens.
        #[arg(long)]
        mission: Option<String>,
        /// A role of the user (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime, e.g. 15m or 1h (at most 24h).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// A policy attribute of the user, `key=value` (repeatable): `department`, `region`,
        /// `clearance` (an integer) or `groups` (comma-separated).
        #[arg(long = "attr")]
        attrs: Vec<String>,
    },
    /// Print or write a generated schema: the Cedar schema policies are validated against, or
    /// JSON Schemas of the configuration files for editors.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Run every mission's policy decision cases (`<mission>.cases.toml`) and report each.
    Test {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
    },
    /// Manage the embedded issuer's signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Read and verify the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Review and decide human approval requests (tools with `approval = "approver"`). Each
    /// request approves one exact call (user, agent, mission, tool, arguments, policy version)
    /// once, until it expires.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Manage the agent registry: agents are non-human identities with an accountable owner,
    /// the missions they may use, an expiry, a review date and a credential for the embedded
    /// authorization server (`/oauth/token`).
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Print the JSON snippet that registers a mission in an agent client.
    ClientConfig {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The mission to register, e.g. finance/prod/invoice-review.
        #[arg(long)]
        mission: String,
        /// The agent client whose configuration format to print.
        #[arg(long, value_enum)]
        client: ClientKind,
        /// Launch Mandate over stdio instead of connecting over HTTP.
        #[arg(long)]
        stdio: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Register an agent. Without `--public-key` it gets a client secret, printed once (only its
    /// hash is stored); with it, it authenticates with `private_key_jwt` (ES256). Each mission
    /// must list the agent in its `agents`.
    Onboard {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The agent id (its OAuth client id and the `azp` of its tokens).
        id: String,
        /// The agent's tenant.
        #[arg(long)]
        tenant: String,
        /// The accountable human, e.g. alice@acme.example.
        #[arg(long)]
        owner: String,
        /// A mission the agent may use (repeatable).
        #[arg(long = "mission", required = true)]
        missions: Vec<String>,
        /// When it stops working: a date (end of that day, UTC) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// When its owner must have reviewed it, or it is suspended: a date or an RFC 3339 time.
        #[arg(long)]
        review: Option<String>,
        /// A file with the agent's ES256 public key as a JWK, for `private_key_jwt`.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every agent with its status; agents the zombie sweep suspended are marked ZOMBIE.
    List {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Suspend an agent at once: its next request is refused, its cached downstream tokens are
    /// dropped. `resume` undoes it.
    Suspend {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The agent id.
        id: String,
        /// Why (recorded in the audit log and shown to the agent).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a suspended agent (give a new `--expires` or `--review` if those had passed).
    Resume {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The agent id.
        id: String,
        /// A new expiry: a date or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// A new review date: a date or an RFC 3339 time.
        #[arg(long)]
        review: Option<String>,
    },
    /// Offboard an agent for good: it never calls again (configuration does not bring it back).
    Offboard {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The agent id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Sign new tokens with a new key. The old key's private part is deleted; its public part
    /// stays in the JWKS, and tokens it signed stay valid, until they have expired (at most 24h).
    /// While `mandate serve` runs it rotates there (admin API), and new tokens use the new key
    /// at once.
    Rotate {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Write mandate.schema.json, mission.schema.json and tool-manifest.schema.json, generated
    /// from the configuration types. Point a TOML file at one with a first line like
    /// `#:schema ../../../schemas/mission.schema.json` and VS Code (Even Better TOML) or taplo
    /// validate and complete it while you type.
    Manifests {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Where to write the schemas (default: `schemas/` in the configuration directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The Cedar schema policies are validated against (one per mission).
    Cedar {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Only this mission, e.g. finance/prod/invoice-review.
        #[arg(long)]
        mission: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute every chain (one per tenant, one for broker events) and check the signed
    /// checkpoints; name the chain and the first bad or missing record (exit 1 if any).
    Verify {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Verify an export file (from `mandate audit export`) instead of the store; needs
        /// nothing but the file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// With `--file`: the broker's published audit public key (a JWK file) to check the
        /// signatures with, instead of the key in the export's first line.
        #[arg(long, requires = "file")]
        public_key: Option<PathBuf>,
    },
    /// Write an export as JSON lines to stdout: a first line with the audit public key, each
    /// chain's records and its signed checkpoint, and a signed last line. Records not yet
    /// covered by a checkpoint are signed first (or, after a crash, by this command).
    Export {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Only this tenant's records.
        #[arg(long)]
        tenant: Option<String>,
        /// Only records at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// List approval requests with their state, requester, tool and canonical arguments (pending
    /// ones only, unless --all).
    List {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// Also list approved, denied, used and expired requests.
        #[arg(long)]
        all: bool,
        /// Print JSON (one object per line) instead of a table.
        #[arg(long)]
        json: bool,
        /// Act as this approver (their bearer token) instead of the local admin.
        #[arg(long, env = "MANDATE_APPROVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Approve a pending request: the identical call, retried by the agent, then runs once.
    Approve {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The approval id (`apr-…`), as the agent's pending result and `list` show it.
        id: String,
        /// Why (recorded in the request and the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Decide as this approver (their bearer token, with the approver role; never the
        /// requester's own) instead of the local admin.
        #[arg(long, env = "MANDATE_APPROVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Deny a pending request: the agent's call fails with the denial and the reason.
    Deny {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
        /// The approval id (`apr-…`).
        id: String,
        /// Why (shown to the agent, recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Decide as this approver (their bearer token) instead of the local admin.
        #[arg(long, env = "MANDATE_APPROVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ClientKind {
    Claude,
    Vscode,
    Cursor,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // `serve` reads its configuration before the runtime starts: the runtime's size is one of
    // its settings (`[server] worker_threads`). Other commands keep tokio's default.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let loaded = match &cli.command {
        Command::Serve { config, .. } => match load(config, true) {
            Ok(c) => {
                if let Some(n) = c.settings.worker_threads {
                    builder.worker_threads(n);
                }
                Some(c)
            }
            Err(code) => return code,
        },
        _ => None,
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, loaded)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MANDATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli, loaded: Option<Config>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            stdio,
            mission,
        } => {
            let config = match loaded {
                Some(c) => c,
                None => match load(&config, true) {
                    Ok(c) => c,
                    Err(code) => return Ok(code),
                },
            };
            serve(config, listen, stdio, mission).await
        }
        Command::Check { config } => Ok(check(&config)),
        Command::Pin { config, manifest } => pin(&config, manifest.as_deref()).await,
        Command::Token {
            config,
            sub,
            tenant,
            agent,
            mission,
            roles,
            ttl,
            attrs,
        } => {
            let ttl = humantime::parse_duration(&ttl)
                .map_err(|_| anyhow::anyhow!("invalid `--ttl` `{ttl}` (write e.g. 15m or 1h)"))?;
            let request = AdminTokenRequest {
                subject: sub,
                tenant,
                agent,
                mission,
                roles,
                ttl_secs: ttl.as_secs(),
                attributes: token_attributes(&attrs)?,
            };
            token(&config, request).await
        }
        Command::Schema {
            command: SchemaCommand::Cedar { config, mission },
        } => Ok(schema_cedar(&config, mission.as_deref())),
        Command::Test { config } => Ok(policy_test(&config)),
        Command::Keys {
            command: KeysCommand::Rotate { config },
        } => keys_rotate(&config).await,
        Command::Schema {
            command: SchemaCommand::Manifests { config, out },
        } => schema_manifests(&config, out.as_deref()),
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                config,
                file,
                public_key,
            } => audit_verify(&config, file.as_deref(), public_key.as_deref()).await,
            AuditCommand::Export {
                config,
                tenant,
                since,
            } => {
                if let Some(s) = &since {
                    humantime::parse_rfc3339_weak(s).map_err(|_| {
                        anyhow::anyhow!("invalid `--since` `{s}` (write e.g. 2026-11-25T09:00:00Z)")
                    })?;
                }
                audit_export(&config, ExportFilter { tenant, since }).await
            }
        },
        Command::ClientConfig {
            config,
            mission,
            client,
            stdio,
        } => client_config(&config, &mission, client, stdio),
        Command::Approvals { command } => match command {
            ApprovalsCommand::List {
                config,
                all,
                json,
                token,
            } => approvals_list(&config, all, json, token).await,
            ApprovalsCommand::Approve {
                config,
                id,
                reason,
                token,
            } => approvals_decide(&config, &id, Decision::Approve, reason, token).await,
            ApprovalsCommand::Deny {
                config,
                id,
                reason,
                token,
            } => approvals_decide(&config, &id, Decision::Deny, reason, token).await,
        },
        Command::Agents { command } => agents_command(command).await,
    }
}

/// Loads the configuration or prints every diagnostic.
fn load(dir: &Path, require_locks: bool) -> Result<Config, ExitCode> {
    match config::load(dir, require_locks) {
        Ok(c) => Ok(c),
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("error: {} problem(s) in the configuration", diags.len());
            Err(ExitCode::FAILURE)
        }
    }
}

fn check(dir: &Path) -> ExitCode {
    let config = match load(dir, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Warnings alone leave the exit code 0: the configuration loads and serves as checked.
    for w in &config.warnings {
        eprintln!("{w}");
    }
    let missions = match MissionRuntime::build_all(&config) {
        Ok(m) => m,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    // The decision cases are read too (not run: `mandate test` runs them), so a misspelt field
    // or an unknown tool in a `.cases.toml` is caught with the rest of the configuration.
    let cases = match crate::policy::cases::load_all(&missions) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("error: {} problem(s) in the decision cases", errors.len());
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ok: {} mission(s), {} tool manifest(s), {} decision case(s)",
        config.missions.len(),
        config.manifests.len(),
        cases.iter().map(|(_, c)| c.len()).sum::<usize>()
    );
    ExitCode::SUCCESS
}

/// The token exchange for `mandate pin`, when a downstream it pins is protected: Mandate
/// authenticates to it as itself (its own token from the store's issuer key, or client
/// credentials at the profile's identity provider).
fn pin_exchange(
    config: &Config,
    only: Option<&str>,
) -> anyhow::Result<Option<Arc<crate::exchange::Exchanger>>> {
    let protected = config.manifests.values().any(|m| {
        m.auth.is_some()
            && matches!(m.transport, config::Transport::Http { .. })
            && only.is_none_or(|id| id == m.id)
    });
    if !protected {
        return Ok(None);
    }
    let store = match Store::open(&config.settings.store_path) {
        Ok(s) => s,
        Err(StoreError::Locked(path)) => bail!(
            "store `{}` is in use by `mandate serve`: a protected downstream is pinned with Mandate's own key, so stop the server to pin it",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let issuer = Arc::new(Issuer::load_or_create(&store, &config.settings.public_url)?);
    Ok(Some(Arc::new(crate::exchange::Exchanger::new(
        config, issuer,
    )?)))
}

async fn pin(dir: &Path, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Some(id) = only
        && !config.manifests.contains_key(id)
    {
        bail!(
            "unknown tool manifest `{id}`{}",
            config::diag::suggestion(id, config.manifests.keys().map(String::as_str))
        );
    }
    let http = downstream::http_client();
    let exchange = pin_exchange(&config, only)?;
    let mut failed = false;
    for manifest in config.manifests.values() {
        if only.is_some_and(|id| id != manifest.id) {
            continue;
        }
        let routes = Arc::new(downstream::Routes::default());
        let auth = exchange.as_ref().and_then(|e| e.service_auth(manifest));
        let result = async {
            let service = downstream::connect(
                manifest,
                routes,
                &http,
                &manifest.id,
                None,
                None,
                auth.clone(),
            )
            .await?;
            let tools =
                tokio::time::timeout(Duration::from_secs(30), service.peer().list_all_tools())
                    .await
                    .map_err(|_| anyhow::anyhow!("`tools/list` got no answer within 30s"))??;
            let server = service
                .peer()
                .peer_info()
                .and_then(|i| serde_json::to_value(&i.server_info).ok());
            let _ = service.cancel().await;
            let definitions = tools
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<_>, _>>()?;
            anyhow::Ok(LockFile::from_definitions(
                &manifest.id,
                server,
                definitions,
            ))
        }
        .await;
        match result {
            Ok(lock) => {
                let path = lock_path(&manifest.path);
                let change = match &manifest.lock {
                    Some(old) => {
                        let served: Vec<_> =
                            lock.tools.iter().map(|t| t.definition.clone()).collect();
                        let drift = old.drift(&served);
                        if drift.is_empty() {
                            "unchanged".to_owned()
                        } else {
                            drift.describe()
                        }
                    }
                    None => "new".to_owned(),
                };
                // Rewriting an unchanged lock would only move `pinned_at`: churn in git.
                let unchanged = manifest.lock.as_ref().is_some_and(|old| {
                    old.manifest == lock.manifest
                        && old.server == lock.server
                        && old.tools == lock.tools
                });
                if !unchanged {
                    lock.write(&path)
                        .with_context(|| format!("cannot write `{}`", path.display()))?;
                }
                let missing: Vec<&str> = manifest
                    .tools
                    .keys()
                    .filter(|t| lock.get(t).is_none())
                    .map(String::as_str)
                    .collect();
                println!(
                    "pinned {} ({} tools, {change}) -> {}",
                    manifest.id,
                    lock.tools.len(),
                    path.display()
                );
                if !missing.is_empty() {
                    eprintln!(
                        "warning: {} declares tools the downstream does not serve: {}",
                        manifest.id,
                        missing.join(", ")
                    );
                    failed = true;
                }
            }
            Err(e) => {
                eprintln!("error: cannot pin {}: {e:#}", manifest.id);
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `mandate token` as sent to the admin API (the server computes the audience).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenRequest {
    pub subject: String,
    pub tenant: String,
    pub agent: String,
    pub mission: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub ttl_secs: u64,
    /// Policy attributes of the user (`department`, `region`, `clearance`, `groups`).
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The admin API's answer to a token request: the token, and the missions it opens.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminTokenResponse {
    #[serde(flatten)]
    pub minted: crate::authn::MintedToken,
    /// Ids of the missions that accept the token now.
    #[serde(default)]
    pub missions: Vec<String>,
}

/// A checked token request and the missions the token will open.
pub struct ResolvedToken {
    pub request: TokenRequest,
    /// Ids of the missions that accept the token now (one with `--mission`).
    pub missions: Vec<String>,
}

impl AdminTokenRequest {
    /// Checks the request against the configuration and builds the issuer's request.
    ///
    /// Without a mission the token's audience is the whole broker, so it is refused unless some
    /// live mission has the tenant and lists the agent: a token that opens nothing is a mistake,
    /// and minting it would hide the mistake until the agent is refused.
    pub fn resolve(&self, config: &Config, public_url: &str) -> anyhow::Result<ResolvedToken> {
        let (audience, missions) = match &self.mission {
            None => (public_url.to_owned(), self.broker_wide_missions(config)?),
            Some(id) => {
                let Some(m) = config.missions.get(id) else {
                    bail!(
                        "unknown mission `{id}`{}",
                        config::diag::suggestion(id, config.missions.keys().map(String::as_str))
                    );
                };
                if m.tenant != self.tenant {
                    bail!(
                        "mission `{id}` belongs to tenant `{}`, not `{}`",
                        m.tenant,
                        self.tenant
                    );
                }
                if !m.agents.contains(&self.agent) {
                    bail!(
                        "agent `{}` is not allowed on mission `{id}` (its agents: {})",
                        self.agent,
                        m.agents.join(", ")
                    );
                }
                if crate::authn::unix_now() > m.expires_at {
                    bail!(
                        "mission `{id}` expired on {}: it accepts no token (move `expires` forward in `{}` to use it again)",
                        m.expires,
                        m.path.display()
                    );
                }
                (format!("{public_url}{}", m.http_path()), vec![id.clone()])
            }
        };
        Ok(ResolvedToken {
            request: TokenRequest {
                subject: self.subject.clone(),
                tenant: self.tenant.clone(),
                agent: self.agent.clone(),
                audience,
                roles: self.roles.clone(),
                ttl: Duration::from_secs(self.ttl_secs),
                attributes: self.attributes.clone(),
            },
            missions,
        })
    }

    /// The live missions a broker-wide token of this tenant and agent opens; an error naming
    /// the tenant's missions when there is none.
    fn broker_wide_missions(&self, config: &Config) -> anyhow::Result<Vec<String>> {
        let now = crate::authn::unix_now();
        let tenants: Vec<&config::Mission> = config
            .missions
            .values()
            .filter(|m| m.tenant == self.tenant)
            .collect();
        if tenants.is_empty() {
            let mut names: Vec<&str> = config
                .missions
                .values()
                .map(|m| m.tenant.as_str())
                .collect();
            names.sort_unstable();
            names.dedup();
            bail!(
                "no mission has tenant `{}`{}, so a broker-wide token would open nothing: check `--tenant`",
                self.tenant,
                config::diag::suggestion(&self.tenant, names.into_iter())
            );
        }
        let accepting: Vec<String> = tenants
            .iter()
            .filter(|m| m.agents.contains(&self.agent) && now <= m.expires_at)
            .map(|m| m.id.clone())
            .collect();
        if accepting.is_empty() {
            let listed: Vec<String> = tenants
                .iter()
                .map(|m| {
                    let expired = if now > m.expires_at {
                        format!("; expired {}", m.expires)
                    } else {
                        String::new()
                    };
                    format!("{} (agents: {}{expired})", m.id, m.agents.join(", "))
                })
                .collect();
            bail!(
                "no mission accepts agent `{}` of tenant `{}`, so a broker-wide token would open nothing (missions of `{}`: {}): check `--agent`, or add the agent to a mission",
                self.agent,
                self.tenant,
                self.tenant,
                listed.join(", ")
            );
        }
        Ok(accepting)
    }
}

/// Either the store (no server running) or the running server's admin API.
enum Backend {
    Direct(Store),
    Admin(AdminCredential),
}

/// How long a command waits for a store another process holds: a CLI command finishing, or a
/// server that owns the store but has not published its admin credential yet.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// Opens the store, or finds the running server that owns it. While the store is locked and no
/// live admin credential is there (a server starting, another CLI command), it retries briefly.
fn backend(config: &Config) -> anyhow::Result<Backend> {
    let path = &config.settings.store_path;
    let deadline = std::time::Instant::now() + STORE_WAIT;
    loop {
        match Store::open(path) {
            Ok(store) => {
                // A credential beside a store nobody holds was left by a server that is gone.
                store::remove_admin_credential(path);
                return Ok(Backend::Direct(store));
            }
            Err(StoreError::Locked(_)) => {
                if let Some(cred) = live_admin_credential(path) {
                    return Ok(Backend::Admin(cred));
                }
            }
            Err(e) => return Err(e.into()),
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "store `{}` is held by a process that serves no admin API (a `mandate serve --stdio` started while no server ran, or another program): run `mandate serve` on this configuration, so that stdio clients and CLI commands all go through it",
                path.display()
            )
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The admin credential of a server that answers at its URL; `None` for no file or a stale one
/// (left by a server that is gone, or read while a new one is starting).
fn live_admin_credential(store: &Path) -> Option<AdminCredential> {
    let cred = store::read_admin_credential(store)?;
    // A credential of a process that is gone, whose port something else may have taken since.
    #[cfg(target_os = "linux")]
    if !Path::new(&format!("/proc/{}", cred.pid)).exists() {
        return None;
    }
    let url = reqwest::Url::parse(&cred.url).ok()?;
    let addrs = url.socket_addrs(|| None).ok()?;
    addrs
        .iter()
        .any(|a| std::net::TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok())
        .then_some(cred)
}

/// Sends an admin GET; fails unless the server answers with success.
async fn admin_request(
    cred: &AdminCredential,
    path: &str,
    query: &[(&str, &str)],
) -> anyhow::Result<reqwest::Response> {
    let url = reqwest::Url::parse_with_params(&format!("{}{path}", cred.url), query)
        .with_context(|| format!("invalid admin URL `{}` in the admin credential", cred.url))?;
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(&cred.token)
        .send()
        .await
        .with_context(|| format!("cannot reach the running server at {}", cred.url))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("server answered {status}: {}", body.trim());
    }
    Ok(response)
}

async fn admin_get(
    cred: &AdminCredential,
    path: &str,
    query: &[(&str, &str)],
) -> anyhow::Result<String> {
    Ok(admin_request(cred, path, query).await?.text().await?)
}

/// Sends an admin POST (with a JSON `body`, if any) and reads its JSON answer; fails with the
/// server's own text when it refuses (`what` names the request in other failures).
async fn admin_post<R: serde::de::DeserializeOwned>(
    cred: &AdminCredential,
    path: &str,
    body: Option<&impl Serialize>,
    what: &str,
) -> anyhow::Result<R> {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", cred.url))
        .bearer_auth(&cred.token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the running server at {}", cred.url))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{}", text.trim());
    }
    serde_json::from_str(&text)
        .with_context(|| format!("the running server answered {what} with something else"))
}

/// `mandate schema manifests`: writes the editor schemas of the configuration files.
fn schema_manifests(dir: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let out = out.map_or_else(|| dir.join("schemas"), Path::to_path_buf);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create `{}`", out.display()))?;
    for file in config::schema::manifests()? {
        let path = out.join(file.name);
        std::fs::write(&path, &file.text)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `mandate keys rotate`: in the store, or through the running server's admin API (which
/// then signs with the new key at once).
async fn keys_rotate(dir: &Path) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let rotation = match backend(&config)? {
        Backend::Direct(store) => {
            let rotation = Issuer::rotate(&store)?;
            store.flush()?;
            let rotation = inbound::AdminRotation {
                current: rotation.current,
                retired: rotation.retired,
                published_until: rotation.published_until,
            };
            let (audit, writer) = Auditor::start(&store)?;
            inbound::record_rotation(&audit, &rotation).await?;
            audit.stop().await?;
            let _ = writer.await;
            rotation
        }
        Backend::Admin(cred) => {
            admin_post(&cred, "/admin/keys/rotate", None::<&()>, "the rotation").await?
        }
    };
    let until = std::time::UNIX_EPOCH + Duration::from_secs(rotation.published_until);
    println!(
        "new signing key `{}`; the old key `{}` stays published in the JWKS until {} (when the last token it signed has expired)",
        rotation.current,
        rotation.retired,
        humantime::format_rfc3339_seconds(until)
    );
    Ok(ExitCode::SUCCESS)
}

async fn token(dir: &Path, request: AdminTokenRequest) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let token = match backend(&config)? {
        Backend::Direct(store) => {
            let public_url = config.settings.public_url.clone();
            let resolved = request.resolve(&config, &public_url)?;
            let (audit, writer) = Auditor::start(&store)?;
            let issuer = Issuer::load_or_create(&store, &public_url)?;
            let minted = inbound::mint(&issuer, &audit, &resolved.request).await?;
            drop(audit);
            let _ = writer.await;
            AdminTokenResponse {
                minted,
                missions: resolved.missions,
            }
        }
        Backend::Admin(cred) => {
            admin_post(&cred, "/admin/token", Some(&request), "the token request").await?
        }
    };
    if request.mission.is_none() {
        // stdout stays the bare token (scripts read it); what it opens goes to stderr.
        eprintln!(
            "note: this broker-wide token grants agent `{}` of tenant `{}` the mission(s): {}",
            request.agent,
            request.tenant,
            token.missions.join(", ")
        );
    }
    println!("{}", token.minted.token);
    Ok(ExitCode::SUCCESS)
}

async fn audit_verify(
    dir: &Path,
    file: Option<&Path>,
    public_key: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let result: Result<String, String> = match file {
        Some(file) => {
            let pinned = match public_key {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read `{}`", path.display()))?;
                    let jwk: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("`{}` is not a JWK (JSON)", path.display()))?;
                    Some(
                        PublicKey::from_jwk(&jwk)
                            .map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?,
                    )
                }
            };
            let input = std::fs::File::open(file)
                .with_context(|| format!("cannot read `{}`", file.display()))?;
            tokio::task::spawn_blocking(move || {
                crate::audit::verify_file(std::io::BufReader::new(input), pinned.as_ref())
            })
            .await?
            .map(|r| r.to_string())
            .map_err(|e| e.to_string())
        }
        None => {
            let config = match load(dir, false) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            match backend(&config)? {
                Backend::Direct(store) => {
                    tokio::task::spawn_blocking(move || crate::audit::verify_store(&store))
                        .await?
                        .map(|r| r.to_string())
                        .map_err(|e| e.to_string())
                }
                Backend::Admin(cred) => {
                    let body: serde_json::Value =
                        serde_json::from_str(&admin_get(&cred, "/admin/audit/verify", &[]).await?)?;
                    match body.get("report").and_then(|r| r.as_str()) {
                        Some(report) if body["ok"] == true => Ok(report.to_owned()),
                        _ => Err(body["error"].as_str().unwrap_or("unknown error").to_owned()),
                    }
                }
            }
        }
    };
    match result {
        Ok(report) => {
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn audit_export(dir: &Path, filter: ExportFilter) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match backend(&config)? {
        Backend::Direct(store) => {
            // Sign what a crash left unsigned, so the export ends at signed records.
            let (audit, writer) = Auditor::start(&store)?;
            audit.stop().await?;
            let _ = writer.await;
            tokio::task::spawn_blocking(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                crate::audit::export(&store, &filter, &mut out)
            })
            .await??;
        }
        Backend::Admin(cred) => {
            use std::io::Write;
            let mut query = Vec::new();
            if let Some(t) = &filter.tenant {
                query.push(("tenant", t.as_str()));
            }
            if let Some(s) = &filter.since {
                query.push(("since", s.as_str()));
            }
            let mut response = admin_request(&cred, "/admin/audit/export", &query).await?;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = response
                .chunk()
                .await
                .context("the export from the running server was cut off")?
            {
                out.write_all(&chunk)?;
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn client_config(
    dir: &Path,
    mission: &str,
    client: ClientKind,
    stdio: bool,
) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let Some(m) = config.missions.get(mission) else {
        bail!(
            "unknown mission `{mission}`{}",
            config::diag::suggestion(mission, config.missions.keys().map(String::as_str))
        );
    };
    let name = format!("mandate-{}", m.id.replace('/', "-"));
    let url = format!("{}{}", config.settings.public_url, m.http_path());
    let token_hint = format!(
        "<token from: mandate token --sub <you> --tenant {} --agent {} --mission {}>",
        m.tenant,
        m.agents.first().map(String::as_str).unwrap_or("<agent>"),
        m.id
    );
    let entry = if stdio {
        let exe = std::env::current_exe()?.to_string_lossy().into_owned();
        let dir = std::fs::canonicalize(dir)?.to_string_lossy().into_owned();
        let mut e = serde_json::json!({
            "command": exe,
            "args": ["serve", "--stdio", "--mission", m.id, "--config", dir],
            "env": { "MANDATE_TOKEN": token_hint },
        });
        if matches!(client, ClientKind::Vscode)
            && let Some(obj) = e.as_object_mut()
        {
            obj.insert("type".into(), "stdio".into());
        }
        e
    } else {
        let auth = match client {
            ClientKind::Vscode => "Bearer ${input:mandate-token}".to_owned(),
            _ => format!("Bearer {token_hint}"),
        };
        match client {
            ClientKind::Claude => {
                serde_json::json!({ "type": "http", "url": url, "headers": { "Authorization": auth } })
            }
            ClientKind::Vscode => {
                serde_json::json!({ "type": "http", "url": url, "headers": { "Authorization": auth } })
            }
            ClientKind::Cursor => {
                serde_json::json!({ "url": url, "headers": { "Authorization": auth } })
            }
        }
    };
    let snippet = match client {
        ClientKind::Vscode => {
            let mut s = serde_json::json!({ "servers": { name.clone(): entry } });
            if !stdio {
                s["inputs"] = serde_json::json!([{
                    "type": "promptString",
                    "id": "mandate-token",
                    "description": format!("Mandate token for {} ({token_hint})", m.id),
                    "password": true
                }]);
            }
            s
        }
        ClientKind::Claude | ClientKind::Cursor => {
            serde_json::json!({ "mcpServers": { name: entry } })
        }
    };
    println!("{}", serde_json::to_string_pretty(&snippet)?);
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    mut config: Config,
    listen: Option<String>,
    stdio: bool,
    mission: Option<String>,
) -> anyhow::Result<ExitCode> {
    // Printed (for whoever started the server) and logged (for whoever reads its logs): a
    // control that looks enforced but is not must not go unnoticed.
    for w in &config.warnings {
        eprintln!("{w}");
        tracing::warn!(file = %w.file.display(), "{}", w.message);
    }
    if let Some(id) = &mission {
        if !config.missions.contains_key(id) {
            bail!(
                "unknown mission `{id}`{}",
                config::diag::suggestion(id, config.missions.keys().map(String::as_str))
            );
        }
        config.missions.retain(|k, _| k == id);
    }
    // The store first, before the port opens: a CLI command run as soon as the port answers
    // then finds the store owned (and waits for the admin credential written below).
    let store = if stdio {
        match backend(&config)? {
            Backend::Direct(store) => store,
            // A server owns this configuration's store: relay to it, so the calls go through
            // its keys and into its audit chain.
            Backend::Admin(cred) => {
                return bridge_stdio(&config, &cred, mission.as_deref()).await;
            }
        }
    } else {
        open_own_store(&config.settings.store_path).await?
    };
    let listener = if stdio {
        None
    } else {
        let addr = listen
            .clone()
            .unwrap_or_else(|| config.settings.listen.clone());
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on `{addr}`"))?;
        let local = listener.local_addr()?;
        if !config.settings.public_url_explicit {
            let scheme = if config.settings.tls.is_some() {
                "https"
            } else {
                "http"
            };
            config.settings.public_url = format!("{scheme}://{local}");
        }
        check_exposure(&config.settings, local)?;
        Some(listener)
    };
    // Read the certificate before anything starts, so a bad one stops the start.
    let tls = match &config.settings.tls {
        Some((cert, key)) if !stdio => {
            Some(inbound::tls::acceptor(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let missions = MissionRuntime::build_all(&config).map_err(|e| anyhow::anyhow!(e.join("\n")))?;
    let (audit, writer) = Auditor::start(&store)?;
    let issuer = Arc::new(Issuer::load_or_create(&store, &config.settings.public_url)?);
    let verifier = Arc::new(crate::authn::Verifier::new(
        issuer.clone(),
        &config.settings.issuers,
    )?);
    let agents = crate::agents::Registry::load(Arc::new(store.agents()?), audit.clone()).await?;
    let mut event = Event::new(EventKind::ConfigLoad);
    event.detail = Some(format!(
        "{} mission(s): {}; {} tool manifest(s)",
        config.missions.len(),
        config
            .missions
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        config.manifests.len()
    ));
    if !config.warnings.is_empty()
        && let Some(detail) = &mut event.detail
    {
        // The audit trail shows what loaded with a warning (e.g. a mission without policies).
        let files: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
        detail.push_str(&format!("; {}", files.join("; ")));
    }
    if let Some(detail) = &mut event.detail {
        // Which policy set each mission decides with (decisions name policies of this version).
        let versions: Vec<String> = missions
            .iter()
            .map(|(id, m)| format!("{id}={}", m.policy.version()))
            .collect();
        detail.push_str(&format!("; policy versions: {}", versions.join(", ")));
    }
    audit.record_durable(event).await?;
    // Agents named by missions are registered ("declared by mission"; see `crate::agents`).
    agents.register_declared(&config).await?;
    let core = crate::call::Core {
        audit: audit.clone(),
        // Over stdio, handoff downstreams are refused (their recipients call back over HTTP);
        // the HTTP broker's core mints them (`Broker::core`).
        handoffs: None,
        approvals: open_approvals(&config, &store, &audit, true)?,
        quotas: Arc::new(crate::quota::Quotas::in_process(&audit)),
        agents: Some(agents.clone()),
    };

    let exchange = Arc::new(crate::exchange::Exchanger::new(&config, issuer.clone())?);
    let config = Arc::new(config);
    let pool = Pool::start_with_exchange(&config, &audit, Some(exchange.clone()));
    let mut states = BTreeMap::new();
    let now = crate::authn::unix_now();
    for (id, runtime) in &missions {
        // An expired mission is not served at all (its endpoint answers like any unknown one).
        if now > runtime.mission.expires_at {
            continue;
        }
        let state = MissionState::new(runtime.clone(), &pool)
            .map_err(anyhow::Error::msg)?
            .with_agents(agents.clone());
        states.insert(id.clone(), Arc::new(state));
    }
    let shutdown = CancellationToken::new();
    // The zombie sweep: now, then every `[agents] sweep_interval`.
    let sweeper = agents.spawn_sweeper(config.settings.agents.clone(), shutdown.clone());
    let housekeeping = spawn_housekeeping(
        core.approvals.clone(),
        crate::handoff::Handoffs::new(
            issuer.clone(),
            Arc::new(store.handoffs()?),
            &config,
            agents.clone(),
        ),
        shutdown.clone(),
    );
    // Suspension and offboarding act at once: the agent's cached downstream tokens go too.
    let cache = exchange.clone();
    agents.on_revoke(Arc::new(move |agent: &str| cache.forget_agent(agent)));
    tokio::spawn(signal_shutdown(shutdown.clone()));
    verifier.start(&shutdown);
    let result = match listener {
        None => {
            serve_stdio(
                &config,
                &states,
                &verifier,
                &audit,
                core.clone(),
                mission.as_deref(),
                shutdown.clone(),
            )
            .await
        }
        Some(listener) => {
            let local = listener.local_addr()?;
            // With TLS the CLI reaches the admin API on a plain-HTTP loopback port of its own
            // (it would not trust the certificate for a loopback address); the admin API
            // answers loopback peers only either way.
            let plain = match &tls {
                Some(_) => {
                    let loopback = admin_url(SocketAddr::new(unspecified(local), 0));
                    let bind = loopback.trim_start_matches("http://").to_owned();
                    Some(
                        tokio::net::TcpListener::bind(&bind)
                            .await
                            .with_context(|| format!("cannot listen on `{bind}` for the CLI"))?,
                    )
                }
                None => None,
            };
            let admin_addr = match &plain {
                Some(l) => l.local_addr()?,
                None => local,
            };
            let admin_token = crate::authn::random_id() + &crate::authn::random_id();
            let cred = AdminCredential {
                url: admin_url(admin_addr),
                token: admin_token.clone(),
                pid: std::process::id(),
            };
            store::write_admin_credential(store.path(), &cred)
                .context("cannot write the admin credential")?;
            let broker = Arc::new(Broker {
                config: config.clone(),
                store: store.clone(),
                audit: audit.clone(),
                issuer: issuer.clone(),
                verifier: verifier.clone(),
                pool: pool.clone(),
                missions: states.clone(),
                handoffs: Arc::new(crate::handoff::Handoffs::new(
                    issuer.clone(),
                    Arc::new(store.handoffs()?),
                    &config,
                    agents.clone(),
                )),
                admin_token,
                approvals: core.approvals.clone(),
                quotas: core.quotas.clone(),
                exchange: exchange.clone(),
                agents: agents.clone(),
            });
            // Accept connections (and admin requests) at once; announce readiness once the
            // downstreams (which may be building or starting) have connected or failed to
            // start, waiting at most as long as a handshake may take.
            if let Some(plain) = plain {
                tokio::spawn(inbound::serve_http(
                    broker.clone(),
                    plain,
                    None,
                    shutdown.clone(),
                ));
            }
            let server = tokio::spawn(inbound::serve_http(broker, listener, tls, shutdown.clone()));
            let pending = pool.wait_ready(crate::downstream::HANDSHAKE_TIMEOUT).await;
            for key in &pending {
                tracing::warn!(downstream = %key, "downstream not connected yet; its tools will fail until it is (see /readyz)");
            }
            println!("mandate listening on {}", config.settings.public_url);
            for m in missions.values() {
                if states.contains_key(&m.mission.id) {
                    println!("  mission {} at {}", m.mission.id, m.resource_url);
                } else {
                    println!(
                        "  mission {} expired on {}: not served",
                        m.mission.id, m.mission.expires
                    );
                }
            }
            if pool.readiness().0 {
                println!("ready");
            } else {
                tracing::warn!(
                    "not ready: some downstream is not connected with verified pins (see /readyz)"
                );
            }
            tracing::info!(addr = %local, "serving");
            let r = server.await;
            store::remove_admin_credential(store.path());
            match r {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
            }
        }
    };
    shutdown.cancel();
    let _ = sweeper.await;
    let _ = housekeeping.await;
    // When each agent was last seen is kept in memory; a last sweep writes it down.
    if let Err(e) = agents.sweep(&config.settings.agents).await {
        tracing::warn!(error = %e, "agents' last-seen times could not be saved");
    }
    pool.shutdown().await;
    core.quotas.flush();
    drop(core);
    drop(states);
    if let Err(e) = audit.stop().await {
        tracing::error!(error = %e, "audit log could not be flushed at shutdown");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let _ = store.flush();
    result.map(|_| ExitCode::SUCCESS)
}

/// Opens the store for `mandate serve`. A CLI command may hold it for a moment (then this
/// retries briefly instead of exiting); another server holding it stops the start.
async fn open_own_store(path: &Path) -> anyhow::Result<Store> {
    let deadline = tokio::time::Instant::now() + STORE_WAIT;
    loop {
        match Store::open(path) {
            Ok(store) => {
                // Whatever credential is there was left by a server that is gone.
                store::remove_admin_credential(path);
                return Ok(store);
            }
            Err(StoreError::Locked(path)) => {
                if let Some(cred) = live_admin_credential(&path) {
                    bail!(
                        "store `{}` is in use by another `mandate serve` (pid {}): stop it, or give this one its own store ([store] path in mandate.toml)",
                        path.display(),
                        cred.pid
                    );
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "store `{}` is in use by another process (a `mandate serve --stdio` started while no server ran, or a long CLI command): stop it, or give this server its own store ([store] path in mandate.toml)",
                        path.display()
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `serve --stdio` while a server owns the store: checks what it can locally (mission served,
/// token present), then relays MCP between stdin/stdout and the server's endpoint for the
/// mission on loopback; the server verifies `MANDATE_TOKEN`.
async fn bridge_stdio(
    config: &Config,
    cred: &AdminCredential,
    mission: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let Some(id) = mission else {
        bail!("`--stdio` needs `--mission <id>`");
    };
    let Some(m) = config.missions.get(id) else {
        bail!("unknown mission `{id}`: run `mandate check` to list the missions");
    };
    if crate::authn::unix_now() > m.expires_at {
        bail!(
            "mission `{id}` expired on {}: it is not served (move `expires` forward in `{}` to serve it again)",
            m.expires,
            m.path.display()
        );
    }
    let token = std::env::var("MANDATE_TOKEN").map_err(|_| {
        anyhow::anyhow!(
            "no caller token: set MANDATE_TOKEN (mint one with `mandate token … --mission {id}`)"
        )
    })?;
    let url = format!("{}{}", cred.url, m.http_path());
    tracing::info!(%url, pid = cred.pid, "a server owns this configuration's store: relaying stdio to it");
    inbound::bridge::relay_stdio(&url, token.trim())
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

/// The wildcard address of `local`'s family.
fn unspecified(local: SocketAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match local {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Refuses a start that would expose tokens or advertise a URL clients cannot use: listening
/// beyond loopback needs TLS (here, or at a proxy in front: an https `public_url`) and a
/// `public_url` naming this server as clients reach it, and with TLS the `public_url` is https.
fn check_exposure(settings: &config::Settings, local: SocketAddr) -> anyhow::Result<()> {
    let exposed = !local.ip().is_loopback();
    let url = reqwest::Url::parse(&settings.public_url).with_context(|| {
        format!(
            "`public_url` `{}` is not a URL: set `[server] public_url` to the URL clients will use",
            settings.public_url
        )
    })?;
    // Behind a TLS-terminating proxy clients use https to the proxy, which forwards plain HTTP
    // here: an explicit https `public_url` says so.
    let proxied = settings.public_url_explicit && url.scheme() == "https";
    if exposed && settings.tls.is_none() && !proxied {
        bail!(
            "listening on `{local}` (beyond loopback) without TLS would send tokens in clear text: add `[server] tls = {{ cert = \"cert.pem\", key = \"key.pem\" }}` to mandate.toml, or, behind a TLS-terminating proxy, set `[server] public_url = \"https://…\"` to the URL clients use through the proxy"
        );
    }
    if settings.tls.is_some() && url.scheme() != "https" {
        bail!(
            "`public_url` `{}` is not https, but `[server] tls` serves HTTPS: set `[server] public_url = \"https://…\"` to the URL clients will use",
            settings.public_url
        );
    }
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let local_host = host.is_empty()
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    if exposed && (!settings.public_url_explicit || local_host) {
        bail!(
            "listening on `{local}` (beyond loopback), but clients elsewhere cannot use the public URL `{}`: set `[server] public_url` to the URL clients will use (e.g. `https://mandate.example.com:8443`)",
            settings.public_url
        );
    }
    Ok(())
}

/// The URL the CLI dials to reach the admin API of a server listening on `local`: the address
/// itself, or for a wildcard (`0.0.0.0`, `[::]`) the loopback of the same family. The admin API
/// answers loopback peers only, so that is also where it can be reached.
fn admin_url(local: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, local.port()))
}

/// How often approvals and the handoff ledger are tidied while serving.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// Every [`HOUSEKEEPING`] period until shutdown: approval requests that expired unseen are
/// marked and audited (not only when next looked at), finished ones past `[approvals] retain`
/// and handoff ledger records a day past their expiry are forgotten, so neither grows without
/// bound.
fn spawn_housekeeping(
    approvals: Arc<crate::approval::Approvals>,
    handoffs: crate::handoff::Handoffs,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HOUSEKEEPING);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match approvals.sweep().await {
                Ok((0, 0)) => {}
                Ok((expired, forgotten)) => tracing::info!(
                    expired,
                    forgotten,
                    "approval requests: expired ones marked, finished ones past retention forgotten"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "approval housekeeping failed; retrying in a minute")
                }
            }
            match handoffs.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(forgotten = n, "handoff ledger: expired records forgotten"),
                Err(e) => {
                    tracing::warn!(error = %e, "handoff ledger housekeeping failed; retrying in a minute")
                }
            }
        }
    })
}

async fn serve_stdio(
    config: &Config,
    states: &BTreeMap<String, Arc<MissionState>>,
    verifier: &crate::authn::Verifier,
    audit: &Auditor,
    core: crate::call::Core,
    mission: Option<&str>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let Some(id) = mission else {
        bail!("`--stdio` needs `--mission <id>`");
    };
    let Some(state) = states.get(id) else {
        match config.missions.get(id) {
            Some(m) => bail!(
                "mission `{id}` expired on {}: it is not served (move `expires` forward in `{}` to serve it again)",
                m.expires,
                m.path.display()
            ),
            None => bail!("unknown mission `{id}`: run `mandate check` to list the missions"),
        }
    };
    let token = std::env::var("MANDATE_TOKEN").map_err(|_| {
        anyhow::anyhow!(
            "no caller token: set MANDATE_TOKEN (mint one with `mandate token … --mission {}`)",
            state.runtime.mission.id
        )
    })?;
    let audiences = [
        config.settings.public_url.as_str(),
        state.runtime.resource_url.as_str(),
    ];
    let caller = match verifier.verify(token.trim(), &audiences).await {
        Ok(c) => c,
        Err(e) => {
            let mut event = Event::new(EventKind::AuthFailure);
            event.mission = Some(state.runtime.mission.id.clone());
            event.outcome = Some("unauthenticated".into());
            event.detail = Some(e.to_string());
            audit.record_durable(event).await?;
            bail!("MANDATE_TOKEN refused: {}", e.error);
        }
    };
    if let Err(missing) = verifier.check_scopes(&caller) {
        bail!("MANDATE_TOKEN refused: {missing}");
    }
    if caller.act.is_some() {
        bail!(
            "MANDATE_TOKEN refused: a handoff token opens its mission over HTTP only (`mandate serve`), where the handoff ledger checks it"
        );
    }
    if let Err(denied) = state.runtime.admit(&caller, crate::authn::unix_now()) {
        bail!(
            "MANDATE_TOKEN may not use mission `{}`: {denied}",
            state.runtime.mission.id
        );
    }
    if let Some(agents) = state.agents()
        && let Err(refusal) = agents.admit(&caller.agent, id, crate::authn::unix_now())
    {
        bail!("MANDATE_TOKEN may not use mission `{id}`: {refusal}");
    }
    let handler = MissionHandler::new(
        state.clone(),
        core,
        Some(caller),
        crate::inbound::handler::SessionState::new(),
    );
    let running = handler.serve(rmcp::transport::stdio()).await?;
    let ct = running.cancellation_token();
    tokio::select! {
        r = running.waiting() => { r?; }
        _ = shutdown.cancelled() => { ct.cancel(); }
    }
    Ok(())
}

/// The approval service on `store`; with `webhook`, the notifier of `[approvals] webhook_url`
/// (its secret read from the environment now, so a missing one stops the start).
fn open_approvals(
    config: &Config,
    store: &Store,
    audit: &Auditor,
    webhook: bool,
) -> anyhow::Result<Arc<crate::approval::Approvals>> {
    let settings = &config.settings.approvals;
    let notifier = match &settings.webhook_url {
        Some(url) if webhook => {
            let secret = std::env::var(&settings.webhook_secret_env)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "`[approvals] webhook_url` is set, but the environment variable `{}` holding its secret is not: set it (e.g. `export {}=$(openssl rand -hex 32)`) and share it with the receiver",
                        settings.webhook_secret_env,
                        settings.webhook_secret_env
                    )
                })?;
            Some(crate::approval::webhook::Notifier::start(
                url.clone(),
                secret.into(),
                format!(
                    "{}{}",
                    config.settings.public_url,
                    crate::approval::webhook::DECISION_PATH
                ),
                audit.clone(),
            ))
        }
        _ => None,
    };
    Ok(crate::approval::Approvals::new(
        Arc::new(store.approvals()?),
        settings.clone(),
        audit.clone(),
        notifier,
    ))
}

async fn signal_shutdown(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Who decides from the CLI: the local admin, or an approver by their token (verified by the
/// embedded issuer in the store; with the broker running, the broker verifies it against every
/// trusted issuer).
async fn cli_decider(
    config: &Config,
    store: &Store,
    token: Option<&str>,
) -> anyhow::Result<Decider> {
    let Some(token) = token else {
        return Ok(Decider::Admin);
    };
    let public_url = &config.settings.public_url;
    let issuer = Arc::new(Issuer::load_or_create(store, public_url)?);
    let verifier = crate::authn::Verifier::new(issuer, &[])?;
    let caller = verifier
        .verify(token.trim(), &[public_url.as_str()])
        .await
        .map_err(|e| anyhow::anyhow!("approver token refused: {}", e.error))?;
    Ok(Decider::Approver(caller))
}

/// Runs `f` on the approval service of the store (no server running), then closes the audit log.
async fn with_approvals<T>(
    config: &Config,
    store: Store,
    f: impl AsyncFnOnce(&crate::approval::Approvals) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (audit, writer) = Auditor::start(&store)?;
    let approvals = open_approvals(config, &store, &audit, false)?;
    let result = f(&approvals).await;
    drop(approvals);
    audit.stop().await?;
    drop(audit);
    let _ = writer.await;
    result
}

/// Sends an admin request about approvals, as the admin or with an approver's token.
async fn approvals_admin(
    cred: &AdminCredential,
    token: Option<&str>,
    request: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let response = request(&client, &cred.url)
        .bearer_auth(token.map_or(cred.token.as_str(), str::trim))
        .send()
        .await
        .with_context(|| format!("cannot reach the running server at {}", cred.url))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("{}", body.trim());
    }
    Ok(body)
}

async fn approvals_list(
    dir: &Path,
    all: bool,
    json: bool,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut requests = match backend(&config)? {
        Backend::Direct(store) => {
            let decider = cli_decider(&config, &store, token.as_deref()).await?;
            let role = config.settings.approvals.approver_role.clone();
            with_approvals(&config, store, async |a| {
                let mut list = a.list().await?;
                match &decider {
                    Decider::Admin | Decider::Webhook { .. } => {}
                    Decider::Approver(c) if c.roles.contains(&role) => {
                        list.retain(|r| r.tenant == c.tenant)
                    }
                    Decider::Approver(_) => {
                        bail!("{}", crate::approval::DecideError::NotApprover(role))
                    }
                }
                Ok(list)
            })
            .await?
        }
        Backend::Admin(cred) => {
            let body = approvals_admin(&cred, token.as_deref(), |c, url| {
                c.get(format!("{url}/admin/approvals"))
            })
            .await?;
            serde_json::from_str::<inbound::approvals::Listing>(&body)
                .context("the running server answered the approvals request with something else")?
                .approvals
        }
    };
    if !all {
        requests.retain(|r| r.state == crate::approval::State::Pending);
    }
    for r in &requests {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{}  {:<8}  {}  {}  {} (agent {})  expires {}  arguments {}",
                r.id,
                r.state.as_str(),
                r.mission,
                r.tool,
                r.subject,
                r.agent,
                crate::approval::rfc3339(r.expires_at),
                crate::call::record::bounded(&r.arguments, 512)
            );
        }
    }
    if requests.is_empty() && !json {
        eprintln!("no {}approval requests", if all { "" } else { "pending " });
    }
    Ok(ExitCode::SUCCESS)
}

/// `mandate agents …`: on the store directly, or through the running server's admin API.
async fn agents_command(command: AgentsCommand) -> anyhow::Result<ExitCode> {
    use crate::agents::{Change, ChangeRequest, OnboardRequest};
    /// One operation, whichever way it goes.
    enum Op {
        Onboard(OnboardRequest, bool),
        List(bool),
        Change(String, Change, ChangeRequest),
    }
    let (dir, op) = match command {
        AgentsCommand::Onboard {
            config,
            id,
            tenant,
            owner,
            missions,
            expires,
            review,
            public_key,
            json,
        } => {
            let public_jwk = match public_key {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read `{}`", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .with_context(|| format!("`{}` is not a JWK (JSON)", path.display()))?,
                    )
                }
            };
            let request = OnboardRequest {
                id,
                tenant,
                owner,
                missions,
                expires,
                review,
                public_jwk,
            };
            (config, Op::Onboard(request, json))
        }
        AgentsCommand::List { config, json } => (config, Op::List(json)),
        AgentsCommand::Suspend { config, id, reason } => (
            config,
            Op::Change(
                id,
                Change::Suspend,
                ChangeRequest {
                    reason,
                    ..ChangeRequest::default()
                },
            ),
        ),
        AgentsCommand::Resume {
            config,
            id,
            expires,
            review,
        } => (
            config,
            Op::Change(
                id,
                Change::Resume,
                ChangeRequest {
                    reason: None,
                    expires,
                    review,
                },
            ),
        ),
        AgentsCommand::Offboard { config, id, reason } => (
            config,
            Op::Change(
                id,
                Change::Offboard,
                ChangeRequest {
                    reason,
                    ..ChangeRequest::default()
                },
            ),
        ),
    };
    let config = match load(&dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let public_url = config.settings.public_url.clone();
    match backend(&config)? {
        Backend::Direct(store) => {
            let (audit, writer) = Auditor::start(&store)?;
            let registry =
                crate::agents::Registry::load(Arc::new(store.agents()?), audit.clone()).await?;
            let result: anyhow::Result<()> = async {
                registry.register_declared(&config).await?;
                match op {
                    Op::Onboard(request, json) => {
                        let onboarded = registry.onboard(&config, request, "cli").await?;
                        print_onboarded(&onboarded, json, &public_url)?;
                    }
                    Op::List(json) => print_agents(&registry.list(), json)?,
                    Op::Change(id, change, request) => {
                        let record = registry.change(&id, change, &request, "cli").await?;
                        print_changed(&record);
                    }
                }
                Ok(())
            }
            .await;
            drop(registry);
            audit.stop().await?;
            let _ = writer.await;
            result?;
        }
        Backend::Admin(cred) => {
            let client = reqwest::Client::new();
            let (request, json) = match &op {
                Op::Onboard(request, json) => (
                    client
                        .post(format!("{}/admin/agents", cred.url))
                        .json(request),
                    *json,
                ),
                Op::List(json) => (client.get(format!("{}/admin/agents", cred.url)), *json),
                Op::Change(id, change, request) => {
                    let verb = match change {
                        Change::Suspend => "suspend",
                        Change::Resume => "resume",
                        Change::Offboard => "offboard",
                    };
                    let mut url = reqwest::Url::parse(&format!("{}/admin/agents/", cred.url))
                        .with_context(|| format!("invalid admin URL `{}`", cred.url))?;
                    url.path_segments_mut()
                        .map_err(|()| anyhow::anyhow!("invalid admin URL `{}`", cred.url))?
                        .pop_if_empty()
                        .push(id)
                        .push(verb);
                    (client.post(url).json(request), false)
                }
            };
            let response = request
                .bearer_auth(&cred.token)
                .send()
                .await
                .with_context(|| format!("cannot reach the running server at {}", cred.url))?;
            let status = response.status();
            let body = response.text().await?;
            if !status.is_success() {
                bail!("{}", body.trim());
            }
            let unexpected = "the running server answered with something else";
            match op {
                Op::Onboard(..) => print_onboarded(
                    &serde_json::from_str(&body).context(unexpected)?,
                    json,
                    &public_url,
                )?,
                Op::List(_) => {
                    let agents: Vec<crate::agents::AgentRecord> =
                        serde_json::from_str(&body).context(unexpected)?;
                    print_agents(&agents, json)?
                }
                Op::Change(..) => print_changed(&serde_json::from_str(&body).context(unexpected)?),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn approvals_decide(
    dir: &Path,
    id: &str,
    decision: Decision,
    reason: Option<String>,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let request = match backend(&config)? {
        Backend::Direct(store) => {
            let decider = cli_decider(&config, &store, token.as_deref()).await?;
            with_approvals(&config, store, async |a| {
                Ok(a.decide(id, decision, &decider, reason).await?)
            })
            .await?
        }
        Backend::Admin(cred) => {
            let verb = match decision {
                Decision::Approve => "approve",
                Decision::Deny => "deny",
            };
            let body = inbound::approvals::DecideBody { reason };
            let answer = approvals_admin(&cred, token.as_deref(), |c, url| {
                c.post(format!("{url}/admin/approvals/{id}/{verb}"))
                    .json(&body)
            })
            .await?;
            serde_json::from_str::<crate::approval::Request>(&answer)
                .context("the running server answered the decision with something else")?
        }
    };
    println!(
        "{} {}: the agent's identical call of `{}` {}",
        request.id,
        request.state.as_str(),
        request.tool,
        match decision {
            Decision::Approve => format!(
                "runs once when retried before {}",
                crate::approval::rfc3339(request.expires_at)
            ),
            Decision::Deny => "is refused".to_owned(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn print_onboarded(
    onboarded: &crate::agents::Onboarded,
    json: bool,
    public_url: &str,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(onboarded)?);
        return Ok(());
    }
    let a = &onboarded.agent;
    println!(
        "onboarded agent `{}` (tenant {}, owner {}) for mission(s): {}",
        a.id,
        a.tenant,
        a.owner,
        a.missions.join(", ")
    );
    println!("client_id: {}", a.id);
    match &onboarded.client_secret {
        Some(secret) => {
            println!("client_secret: {secret}");
            eprintln!("note: the client secret is shown only now (Mandate keeps only its hash)");
        }
        None => println!("authentication: private_key_jwt (ES256) with the registered key"),
    }
    println!("token endpoint: {public_url}/oauth/token");
    Ok(())
}

fn print_agents(agents: &[crate::agents::AgentRecord], json: bool) -> anyhow::Result<()> {
    use crate::agents::{Origin, time_text};
    if json {
        println!("{}", serde_json::to_string_pretty(agents)?);
        return Ok(());
    }
    if agents.is_empty() {
        println!("no agents registered");
        return Ok(());
    }
    let when = |t: Option<u64>| t.map(time_text).unwrap_or_else(|| "-".into());
    println!("ID\tSTATUS\tORIGIN\tTENANT\tOWNER\tMISSIONS\tEXPIRES\tREVIEW\tLAST SEEN\tCREDENTIAL");
    for a in agents {
        let mut status = a.status.as_str().to_uppercase();
        if a.zombie {
            status.push_str(" ZOMBIE");
        }
        if let Some(reason) = &a.reason {
            status.push_str(&format!(" ({reason})"));
        }
        let origin = match a.origin {
            Origin::Onboarded => "onboarded",
            Origin::DeclaredByMission => "declared by mission",
        };
        println!(
            "{}\t{status}\t{origin}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            a.id,
            a.tenant,
            a.owner,
            a.missions.join(","),
            when(a.expires_at),
            when(a.review_at),
            when(a.last_seen),
            a.credential.method()
        );
    }
    Ok(())
}

fn print_changed(record: &crate::agents::AgentRecord) {
    let reason = record
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    println!(
        "agent `{}` is {}{reason}",
        record.id,
        record.status.as_str()
    );
}

// --- policy (Cedar): `schema cedar`, `test`, `token --attr` ---

/// `--attr key=value` as token attributes.
fn token_attributes(
    attrs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, serde_json::Value>> {
    let mut out = std::collections::BTreeMap::new();
    for a in attrs {
        let Some((key, value)) = a.split_once('=') else {
            bail!("invalid `--attr` `{a}` (write key=value, e.g. region=eu-west-1)");
        };
        let value = match key {
            "groups" => serde_json::Value::from(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .collect::<Vec<_>>(),
            ),
            "clearance" => serde_json::Value::from(value.parse::<i64>().map_err(|_| {
                anyhow::anyhow!("invalid `--attr clearance={value}` (write an integer, e.g. 2)")
            })?),
            "department" | "region" => serde_json::Value::from(value),
            other => bail!(
                "unknown attribute `{other}` in `--attr` (expected {})",
                crate::authn::ATTRIBUTE_CLAIMS.join(", ")
            ),
        };
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// Loads the configuration and every mission's runtime (policies validated), or prints why not.
fn load_runtimes(dir: &Path) -> Result<(Config, BTreeMap<String, Arc<MissionRuntime>>), ExitCode> {
    let config = load(dir, true)?;
    match MissionRuntime::build_all(&config) {
        Ok(m) => Ok((config, m)),
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            Err(ExitCode::FAILURE)
        }
    }
}

fn schema_cedar(dir: &Path, only: Option<&str>) -> ExitCode {
    let (config, missions) = match load_runtimes(dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Some(id) = only
        && !missions.contains_key(id)
    {
        eprintln!(
            "error: unknown mission `{id}`{}",
            config::diag::suggestion(id, config.missions.keys().map(String::as_str))
        );
        return ExitCode::FAILURE;
    }
    for (id, m) in &missions {
        if only.is_none_or(|o| o == id) {
            println!("// ===== mission {id} =====");
            println!("{}", m.policy.schema_text());
        }
    }
    ExitCode::SUCCESS
}

fn policy_test(dir: &Path) -> ExitCode {
    let (_, missions) = match load_runtimes(dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match crate::policy::cases::run_all(&missions) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("error: {} problem(s) in the decision cases", errors.len());
            ExitCode::FAILURE
        }
    }
}

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

While `mandate serve` runs it owns the store; `token` and `audit` then reach it through its
loopback admin API, so the same commands work either way."
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
    /// Print a generated schema.
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
enum KeysCommand {
    /// Sign new tokens with a new key. The old key's private part is deleted; its public part
    /// stays in the JWKS, and tokens it signed stay valid, until they have expired (at most 24h).
    /// Run it while `mandate serve` is stopped: the server loads the keys at start.
    Rotate {
        /// Configuration directory (holds mandate.toml, missions/, tool-manifests/).
        #[arg(long, default_value = ".")]
        config: PathBuf,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
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

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            stdio,
            mission,
        } => serve(&config, listen, stdio, mission).await,
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
        } => keys_rotate(&config),
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
    if let Err(errors) = MissionRuntime::build_all(&config) {
        for e in &errors {
            eprintln!("error: {e}");
        }
        return ExitCode::FAILURE;
    }
    println!(
        "ok: {} mission(s), {} tool manifest(s)",
        config.missions.len(),
        config.manifests.len()
    );
    ExitCode::SUCCESS
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
    let mut failed = false;
    for manifest in config.manifests.values() {
        if only.is_some_and(|id| id != manifest.id) {
            continue;
        }
        let routes = Arc::new(downstream::Routes::default());
        let result = async {
            let service =
                downstream::connect(manifest, routes, &http, &manifest.id, None, None).await?;
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

fn backend(config: &Config) -> anyhow::Result<Backend> {
    let path = &config.settings.store_path;
    match Store::open(path) {
        Ok(store) => Ok(Backend::Direct(store)),
        Err(StoreError::Locked(_)) => {
            // A server that just started may not have written its credential yet.
            for _ in 0..100 {
                if let Some(cred) = store::read_admin_credential(path) {
                    return Ok(Backend::Admin(cred));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            bail!(
                "store `{}` is locked by another process that published no admin credential: is another program using it?",
                path.display()
            )
        }
        Err(e) => Err(e.into()),
    }
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

/// `mandate keys rotate`: only without a running server, which holds the keys in memory (the
/// admin API has no rotation endpoint yet).
fn keys_rotate(dir: &Path) -> anyhow::Result<ExitCode> {
    let config = match load(dir, false) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let store = match backend(&config)? {
        Backend::Direct(store) => store,
        Backend::Admin(cred) => bail!(
            "`mandate serve` (pid {}) is running and holds the signing keys: stop `mandate serve`, run `mandate keys rotate`, then start it again",
            cred.pid
        ),
    };
    let rotation = Issuer::rotate(&store)?;
    store.flush()?;
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
            let response = reqwest::Client::new()
                .post(format!("{}/admin/token", cred.url))
                .bearer_auth(&cred.token)
                .json(&request)
                .send()
                .await
                .with_context(|| format!("cannot reach the running server at {}", cred.url))?;
            let status = response.status();
            let body = response.text().await?;
            if !status.is_success() {
                bail!("{}", body.trim());
            }
            serde_json::from_str::<AdminTokenResponse>(&body)
                .context("the running server answered the token request with something else")?
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
    dir: &Path,
    listen: Option<String>,
    stdio: bool,
    mission: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut config = match load(dir, true) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
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
    let store = match Store::open(&config.settings.store_path) {
        Ok(s) => s,
        Err(StoreError::Locked(path)) => bail!(
            "store `{}` is in use by another `mandate serve`: stop it, or give this one its own store ([store] path in mandate.toml)",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let (audit, writer) = Auditor::start(&store)?;
    let issuer = Arc::new(Issuer::load_or_create(&store, &config.settings.public_url)?);
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

    let config = Arc::new(config);
    let pool = Pool::start(&config, &audit);
    let mut states = BTreeMap::new();
    let now = crate::authn::unix_now();
    for (id, runtime) in &missions {
        // An expired mission is not served at all (its endpoint answers like any unknown one).
        if now > runtime.mission.expires_at {
            continue;
        }
        let state = MissionState::new(runtime.clone(), &pool).map_err(anyhow::Error::msg)?;
        states.insert(id.clone(), Arc::new(state));
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let result = match listener {
        None => {
            serve_stdio(
                &config,
                &states,
                &issuer,
                &audit,
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
                pool: pool.clone(),
                missions: states.clone(),
                admin_token,
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
    pool.shutdown().await;
    drop(states);
    if let Err(e) = audit.stop().await {
        tracing::error!(error = %e, "audit log could not be flushed at shutdown");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let _ = store.flush();
    result.map(|_| ExitCode::SUCCESS)
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
/// beyond loopback needs TLS and a `public_url` naming this server as clients reach it, and with
/// TLS the `public_url` is https.
fn check_exposure(settings: &config::Settings, local: SocketAddr) -> anyhow::Result<()> {
    let exposed = !local.ip().is_loopback();
    if exposed && settings.tls.is_none() {
        bail!(
            "listening on `{local}` (beyond loopback) without TLS would send tokens in clear text: add `[server] tls = {{ cert = \"cert.pem\", key = \"key.pem\" }}` to mandate.toml, or listen on 127.0.0.1 behind a TLS-terminating proxy"
        );
    }
    let url = reqwest::Url::parse(&settings.public_url).with_context(|| {
        format!(
            "`public_url` `{}` is not a URL: set `[server] public_url` to the URL clients will use",
            settings.public_url
        )
    })?;
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

async fn serve_stdio(
    config: &Config,
    states: &BTreeMap<String, Arc<MissionState>>,
    issuer: &Issuer,
    audit: &Auditor,
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
    let caller = match issuer.verify(token.trim(), &audiences) {
        Ok(c) => c,
        Err(e) => {
            let mut event = Event::new(EventKind::AuthFailure);
            event.mission = Some(state.runtime.mission.id.clone());
            event.outcome = Some("unauthenticated".into());
            event.detail = Some(e.to_string());
            audit.record_durable(event).await?;
            bail!("MANDATE_TOKEN refused: {e}");
        }
    };
    if let Err(denied) = state.runtime.admit(&caller, crate::authn::unix_now()) {
        bail!(
            "MANDATE_TOKEN may not use mission `{}`: {denied}",
            state.runtime.mission.id
        );
    }
    let handler = MissionHandler::new(
        state.clone(),
        audit.clone(),
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

// --- policy (Cedar): `schema cedar`, `test`, `token --attr` ---

#[derive(Debug, Subcommand)]
enum SchemaCommand {
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

//! Configuration: field names checked ([`fields`]) → raw TOML types ([`raw`]) → one pure
//! validation pass that reports every problem as `path:line:col: message` → [`Config`].
//!
//! Layout of a configuration directory (the repository root is one):
//! `mandate.toml` (optional), `missions/<domain>/<env>/<name>.toml`,
//! `tool-manifests/<domain>/<name>.toml` with `<name>.lock.json` beside each.

pub mod diag;
pub mod exchange;
pub mod fields;
pub mod issuers;
pub mod raw;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub use diag::{Diagnostic, Warning};
use diag::{Source, suggestion};
use raw::*;

use crate::tools::{LockFile, lock_path};

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// MCP revisions Mandate can speak to a downstream.
pub const DOWNSTREAM_PROTOCOLS: [&str; 3] = ["2025-06-18", "2025-11-25", "2026-07-28"];

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub settings: Settings,
    pub manifests: BTreeMap<String, ToolManifest>,
    pub missions: BTreeMap<String, Mission>,
    /// What loaded but has no effect (e.g. Cedar policy files): `check` and `serve` print these.
    pub warnings: Vec<Warning>,
}

/// Broker settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub public_url: String,
    /// Whether `public_url` was set in `mandate.toml` (otherwise it follows the bound address).
    pub public_url_explicit: bool,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub store_path: PathBuf,
    /// Serve HTTPS with these PEM files (certificate chain, private key).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `[server] worker_threads`: threads of the serving runtime; `None` = one per CPU.
    pub worker_threads: Option<usize>,
    /// External issuers (`[[identity.issuers]]`), besides the embedded one.
    pub issuers: Vec<issuers::IssuerSettings>,
    /// Token exchange profiles (always including `embedded`).
    pub exchange: Vec<exchange::ExchangeProfile>,
    /// `[agents]`: the agent registry.
    pub agents: AgentSettings,
    /// `[handoff]`: handoffs between agents.
    pub handoff: HandoffSettings,
    /// `[approvals]`.
    pub approvals: ApprovalSettings,
}

/// `[approvals]`, validated (see [`raw::RawApprovals`] for each field's meaning).
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    pub ttl: Duration,
    pub wait: Duration,
    pub approver_role: String,
    pub webhook_url: Option<String>,
    pub webhook_secret_env: String,
    pub replay_window: Duration,
    pub retain: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            wait: Duration::from_secs(30),
            approver_role: "approver".into(),
            webhook_url: None,
            webhook_secret_env: "MANDATE_APPROVALS_WEBHOOK_SECRET".into(),
            retain: Duration::from_secs(30 * 24 * 3600),
            replay_window: Duration::from_secs(300),
        }
    }
}

/// A mission's `[limits]`: calls per minute, each a token bucket (see [`raw::RawLimits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub calls_per_minute: Option<u32>,
    pub per_agent: Option<u32>,
    pub per_user: Option<u32>,
    pub per_tool: Option<u32>,
}

/// `[agents]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// Register the agents missions name at start ("declared by mission").
    pub register_mission_agents: bool,
    /// Period of the zombie sweep.
    pub sweep_interval: Duration,
    /// Suspend agents idle longer than this (`None`: never for idleness).
    pub max_idle: Option<Duration>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            register_mission_agents: true,
            sweep_interval: Duration::from_secs(3600),
            max_idle: None,
        }
    }
}

/// Default longest actor chain of a handoff.
pub const DEFAULT_HANDOFF_DEPTH: usize = 3;
/// Default (and longest) lifetime of a handoff token.
pub const MAX_HANDOFF_TTL: Duration = Duration::from_secs(300);

/// `[handoff]` settings, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffSettings {
    /// Longest actor chain (the agents that handed work on).
    pub max_depth: usize,
    /// Lifetime of a handoff token.
    pub ttl: Duration,
}

/// A downstream that is another mission's agent (`[auth] exchange = "handoff"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffTarget {
    /// The mission whose agent the downstream is.
    pub mission: String,
    /// The agent the handoff token is for.
    pub agent: String,
}

/// A validated tool manifest.
#[derive(Debug, Clone)]
pub struct ToolManifest {
    pub id: String,
    pub path: PathBuf,
    pub description: String,
    pub environments: Vec<String>,
    pub region: String,
    pub transport: Transport,
    pub timeout: Duration,
    pub tools: BTreeMap<String, ToolSpec>,
    /// `None` only when loaded for `mandate pin`.
    pub lock: Option<LockFile>,
    /// Whether callers share one downstream session (`[isolation]`).
    pub isolation: Isolation,
    /// Outbound credentials; `None` when the exchange is `none`.
    pub auth: Option<exchange::Auth>,
    /// Set when the downstream is another mission's agent (`exchange = "handoff"`).
    pub handoff: Option<HandoffTarget>,
}

/// Default most per-principal instances of one downstream.
pub const DEFAULT_MAX_INSTANCES: usize = 32;
/// Default idle period after which a per-principal instance is closed.
pub const DEFAULT_INSTANCE_IDLE: Duration = Duration::from_secs(300);

/// How callers are kept apart on a downstream (`[isolation]` in a tool manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// One downstream session per principal, started on its first call, closed when idle.
    PerPrincipal {
        max_instances: usize,
        idle_timeout: Duration,
    },
    /// One downstream session for every caller; nothing unattributable is relayed.
    Shared,
}

/// How a downstream is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: PathBuf,
        protocol: String,
    },
    Http {
        url: String,
        protocol: String,
    },
}

/// Effect of a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    Read,
    Write,
    Irreversible,
}

impl Effect {
    pub const NAMES: [&'static str; 3] = ["read", "write", "irreversible"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "irreversible" => Some(Self::Irreversible),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Irreversible => "irreversible",
        }
    }
}

/// A tool the manifest allows Mandate to expose.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub effect: Effect,
    pub sensitivity: String,
    pub scopes: Vec<String>,
    pub approval: String,
    pub timeout: Option<Duration>,
}

/// A validated mission.
#[derive(Debug, Clone)]
pub struct Mission {
    /// `<domain>/<env>/<name>`.
    pub id: String,
    pub domain: String,
    pub env: String,
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub tenant: String,
    pub owner: String,
    /// Last day served, `YYYY-MM-DD`.
    pub expires: String,
    /// Unix seconds at the end of the `expires` day (UTC).
    pub expires_at: u64,
    pub agents: Vec<String>,
    pub regions: Vec<String>,
    pub tools: Vec<MissionTool>,
    pub resources: Vec<String>,
    pub prompts: Vec<String>,
    pub handoffs: Vec<String>,
    pub require_reasoning: BTreeSet<Effect>,
    pub limits: Limits,
}

impl Mission {
    /// `/mcp/<domain>/<env>/<name>`.
    pub fn http_path(&self) -> String {
        format!("/mcp/{}", self.id)
    }

    /// Manifest ids this mission uses (tools, resources, prompts).
    pub fn manifest_ids(&self) -> BTreeSet<String> {
        self.tools
            .iter()
            .map(|t| t.manifest.clone())
            .chain(self.resources.iter().cloned())
            .chain(self.prompts.iter().cloned())
            .collect()
    }
}

/// One tool of a mission.
#[derive(Debug, Clone)]
pub struct MissionTool {
    /// The name the mission exposes.
    pub exposed: String,
    pub manifest: String,
    /// The name on the downstream.
    pub tool: String,
}

/// Loads and validates a configuration directory. With `require_locks`, every manifest must have
/// a lock file listing each of its tools (everything but `mandate pin`).
pub fn load(root: &Path, require_locks: bool) -> Result<Config, Vec<Diagnostic>> {
    let sources = read_sources(root)?;
    let mut config = build(root, &sources, require_locks)?;
    config
        .warnings
        .extend(expiry_warnings(&config, crate::authn::unix_now()));
    config.warnings.sort();
    Ok(config)
}

/// A warning for each mission whose last day is before `now` (unix seconds): it still loads,
/// so that `token` and `serve` can say why it is refused, but it serves no caller.
pub fn expiry_warnings(config: &Config, now: u64) -> Vec<Warning> {
    config
        .missions
        .values()
        .filter(|m| now > m.expires_at)
        .map(|m| Warning {
            file: m.path.clone(),
            message: format!(
                "mission `{}` expired on {}: it serves no caller (move `expires` forward to serve it again)",
                m.id, m.expires
            ),
        })
        .collect()
}

/// The files of a configuration directory, read into memory.
pub struct Sources {
    pub settings: Option<(PathBuf, String)>,
    pub manifests: Vec<(PathBuf, String, Result<Option<LockFile>, String>)>,
    pub missions: Vec<(PathBuf, String)>,
    pub warnings: Vec<Warning>,
}

fn io_diag(path: &Path, e: impl std::fmt::Display) -> Diagnostic {
    Diagnostic {
        file: path.to_owned(),
        line: 1,
        col: 1,
        message: format!("cannot read: {e}"),
    }
}

/// Reads every configuration file (the only I/O of loading).
pub fn read_sources(root: &Path) -> Result<Sources, Vec<Diagnostic>> {
    check_root(root)?;
    let mut diags = Vec::new();
    let settings_path = root.join("mandate.toml");
    let settings = match std::fs::read_to_string(&settings_path) {
        Ok(text) => Some((settings_path, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            diags.push(io_diag(&settings_path, e));
            None
        }
    };
    let mut warnings = Vec::new();
    let mut manifests = Vec::new();
    for path in toml_files(&root.join("tool-manifests"), &mut diags, &mut warnings) {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lock = LockFile::read(&lock_path(&path));
                manifests.push((path, text, lock));
            }
            Err(e) => diags.push(io_diag(&path, e)),
        }
    }
    let mut missions = Vec::new();
    for path in toml_files(&root.join("missions"), &mut diags, &mut warnings) {
        match std::fs::read_to_string(&path) {
            Ok(text) => missions.push((path, text)),
            Err(e) => diags.push(io_diag(&path, e)),
        }
    }
    if diags.is_empty() {
        Ok(Sources {
            settings,
            manifests,
            missions,
            warnings,
        })
    } else {
        Err(diags)
    }
}

/// Refuses a path that is not a configuration directory: a mistyped `--config` must not pass
/// `check` as an empty configuration, nor make `serve` create a store in a new directory.
fn check_root(root: &Path) -> Result<(), Vec<Diagnostic>> {
    let whole = |message: String| {
        Err(vec![Diagnostic {
            file: root.to_owned(),
            line: 0,
            col: 0,
            message,
        }])
    };
    match std::fs::metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => whole(
            "the configuration directory does not exist: pass the directory that holds \
             `missions/` and `tool-manifests/` with `--config`"
                .to_owned(),
        ),
        Err(e) => whole(format!("cannot read the configuration directory: {e}")),
        Ok(m) if !m.is_dir() => whole(
            "not a directory: pass the directory that holds `missions/` and `tool-manifests/` \
             with `--config`"
                .to_owned(),
        ),
        Ok(_) if !root.join("missions").exists() && !root.join("tool-manifests").exists() => whole(
            "not a configuration directory: it has neither `missions/` nor \
                 `tool-manifests/` (pass the right directory with `--config`, or create them)"
                .to_owned(),
        ),
        Ok(_) => Ok(()),
    }
}

/// The `.toml` files under `dir`, sorted. Symbolic links to files are read like files; symbolic
/// links to directories are reported and not followed: following them can loop forever (a link
/// to `..`) or load files from outside the configuration directory. `dir` itself may be a link.
/// Cedar policy files (`.cedar`) and decision cases (`.cases.toml`) are read with their mission.
fn toml_files(dir: &Path, diags: &mut Vec<Diagnostic>, warnings: &mut [Warning]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                diags.push(io_diag(&d, e));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                diags.push(io_diag(&path, "cannot tell its file type"));
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if kind.is_symlink() && path.is_dir() {
                diags.push(Diagnostic {
                    file: path,
                    line: 1,
                    col: 1,
                    message: "a symbolic link to a directory, which Mandate does not follow: \
                              replace it with a directory (links to files are fine)"
                        .to_owned(),
                });
                continue;
            }
            match path.extension().and_then(|e| e.to_str()) {
                // `<mission>.cases.toml` holds policy decision cases (`mandate test`).
                Some("toml") if !crate::policy::is_cases_file(&path) => out.push(path),
                // `.cedar` policies are read with their mission (crate::policy).
                _ => {}
            }
        }
    }
    out.sort();
    warnings.sort();
    out
}

/// Relative id of a file under `base` without extension, with `/` separators.
fn relative_id(base: &Path, path: &Path) -> Option<Vec<String>> {
    let rel = path.strip_prefix(base).ok()?.with_extension("");
    Some(
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect(),
    )
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn parse_duration(
    src: &Source,
    value: &Spanned<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Duration> {
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Some(d),
        Ok(_) => {
            diags.push(src.at(
                value.span().start,
                format!("timeout `{}` must be between 1ms and 1h", value.get_ref()),
            ));
            None
        }
        Err(_) => {
            diags.push(src.at(
                value.span().start,
                format!(
                    "invalid duration `{}` (write e.g. `30s` or `2m`)",
                    value.get_ref()
                ),
            ));
            None
        }
    }
}

fn parse_protocol(
    src: &Source,
    offset: usize,
    value: &Option<String>,
    diags: &mut Vec<Diagnostic>,
) -> String {
    match value {
        None => "2025-11-25".to_owned(),
        Some(v) if DOWNSTREAM_PROTOCOLS.contains(&v.as_str()) => v.clone(),
        Some(v) => {
            diags.push(src.at(
                offset,
                format!(
                    "unknown MCP revision `{v}` in `[transport]` (expected one of {})",
                    DOWNSTREAM_PROTOCOLS.join(", ")
                ),
            ));
            String::new()
        }
    }
}

/// Validates the sources (pure: no I/O).
pub fn build(
    root: &Path,
    sources: &Sources,
    require_locks: bool,
) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let settings = build_settings(root, sources.settings.as_ref(), &mut diags);

    let mut manifests = BTreeMap::new();
    // Ids of manifests that exist but have errors: missions using them are not also told the
    // manifest is unknown.
    let mut broken = BTreeSet::new();
    let manifests_dir = root.join("tool-manifests");
    for (path, text, lock) in &sources.manifests {
        let src = Source { path, text };
        let built = build_manifest(
            root,
            &manifests_dir,
            &src,
            lock,
            require_locks,
            &settings.exchange,
            &mut diags,
        );
        match built {
            Some(m) => {
                manifests.insert(m.id.clone(), m);
            }
            None => {
                if let Some(segments) = relative_id(&manifests_dir, path) {
                    broken.insert(segments.join("/"));
                }
            }
        }
    }

    let mut missions = BTreeMap::new();
    let mut warnings = sources.warnings.clone();
    let missions_dir = root.join("missions");
    for (path, text) in &sources.missions {
        let src = Source { path, text };
        if let Some(m) = build_mission(&missions_dir, &src, &manifests, &broken, &mut diags) {
            if let Some(w) = crate::policy::missing_policy_warning(&m) {
                warnings.push(w);
            }
            missions.insert(m.id.clone(), m);
        }
    }
    // Handoffs name missions, which are only all known now.
    for (path, text) in &sources.missions {
        let src = Source { path, text };
        // Problems of the file itself were reported by `build_mission`.
        if let Some(raw) = fields::parse::<RawMission>(&src, fields::MISSION, &mut Vec::new()) {
            for h in &raw.handoffs {
                if !missions.contains_key(h.get_ref()) {
                    diags.push(src.at(
                        h.span().start,
                        format!(
                            "unknown mission `{}` in `handoffs`{}",
                            h.get_ref(),
                            suggestion(h.get_ref(), missions.keys().map(String::as_str))
                        ),
                    ));
                }
            }
        }
    }

    check_handoff_targets(sources, &manifests, &missions, &mut diags);

    if diags.is_empty() {
        Ok(Config {
            root: root.to_owned(),
            settings,
            manifests,
            missions,
            warnings,
        })
    } else {
        diags.sort();
        diags.dedup();
        Err(diags)
    }
}

fn build_settings(
    root: &Path,
    source: Option<&(PathBuf, String)>,
    diags: &mut Vec<Diagnostic>,
) -> Settings {
    let (raw, src_path, text) = match source {
        None => (RawSettings::default(), PathBuf::from("mandate.toml"), ""),
        Some((path, text)) => {
            let src = Source { path, text };
            let raw = fields::parse::<RawSettings>(&src, fields::SETTINGS, diags);
            (raw.unwrap_or_default(), path.clone(), text.as_str())
        }
    };
    let src = Source {
        path: &src_path,
        text,
    };
    let listen = raw
        .server
        .listen
        .as_ref()
        .map_or_else(|| "127.0.0.1:8080".to_owned(), |l| l.get_ref().clone());
    if let Some(l) = &raw.server.listen
        && l.get_ref().parse::<std::net::SocketAddr>().is_err()
    {
        diags.push(src.at(
            l.span().start,
            format!(
                "`listen` must be an address like `127.0.0.1:8080`, not `{}`",
                l.get_ref()
            ),
        ));
    }
    let public_url = match &raw.server.public_url {
        Some(u) => {
            let url = u.get_ref().trim_end_matches('/').to_owned();
            match reqwest::Url::parse(&url) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https")
                        && parsed.query().is_none()
                        && parsed.fragment().is_none() => {}
                _ => diags.push(src.at(
                    u.span().start,
                    format!(
                        "`public_url` must be an http(s) URL without query or fragment, not `{}`",
                        u.get_ref()
                    ),
                )),
            }
            url
        }
        None if raw.server.tls.is_some() => format!("https://{listen}"),
        None => format!("http://{listen}"),
    };
    let worker_threads = worker_threads(&src, raw.server.worker_threads.as_ref(), diags);
    let issuers = issuers::build(&src, &raw.identity.issuers, &public_url, diags);
    let exchange = exchange::build_profiles(root, &src, &raw.exchange, diags);
    let approvals = build_approvals(&src, &raw.approvals, diags);
    Settings {
        approvals,
        listen,
        public_url,
        public_url_explicit: raw.server.public_url.is_some(),
        allowed_hosts: raw.server.allowed_hosts,
        allowed_origins: raw.server.allowed_origins,
        store_path: root.join(raw.store.path.as_deref().unwrap_or(".mandate")),
        tls: raw
            .server
            .tls
            .map(|t| (root.join(t.cert), root.join(t.key))),
        worker_threads,
        issuers,
        exchange,
        agents: build_agent_settings(&src, &raw.agents, diags),
        handoff: handoff_settings(&src, &raw.handoff, diags),
    }
}

/// `[server] worker_threads`: 1 by default, `"auto"` = one per CPU (`None`), else a count
/// from 1 to 1024.
fn worker_threads(
    src: &Source,
    raw: Option<&Spanned<raw::RawWorkerThreads>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<usize> {
    let Some(value) = raw else {
        return Some(1);
    };
    match value.get_ref() {
        raw::RawWorkerThreads::Count(n) if (1..=1024).contains(n) => usize::try_from(*n).ok(),
        raw::RawWorkerThreads::Word(w) if w == "auto" => None,
        raw::RawWorkerThreads::Count(n) => {
            diags.push(src.at(
                value.span().start,
                format!("`worker_threads` must be from 1 to 1024 or \"auto\", not {n}"),
            ));
            Some(1)
        }
        raw::RawWorkerThreads::Word(w) => {
            diags.push(src.at(
                value.span().start,
                format!("`worker_threads` must be a count or \"auto\", not `{w}`"),
            ));
            Some(1)
        }
    }
}

/// `[agents]`: durations of at least one second.
fn build_agent_settings(
    src: &Source,
    raw: &raw::RawAgents,
    diags: &mut Vec<Diagnostic>,
) -> AgentSettings {
    let mut settings = AgentSettings::default();
    if let Some(on) = raw.register_mission_agents {
        settings.register_mission_agents = on;
    }
    let mut period = |value: &Spanned<String>, name: &str| -> Option<Duration> {
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            _ => {
                diags.push(src.at(
                    value.span().start,
                    format!(
                        "`{name}` must be a duration of at least 1s like `1h` or `30d`, not `{}`",
                        value.get_ref()
                    ),
                ));
                None
            }
        }
    };
    if let Some(v) = &raw.sweep_interval
        && let Some(d) = period(v, "sweep_interval")
    {
        settings.sweep_interval = d;
    }
    if let Some(v) = &raw.max_idle {
        settings.max_idle = period(v, "max_idle");
    }
    settings
}

/// `[handoff]`, with its defaults.
fn handoff_settings(
    src: &Source,
    raw: &raw::RawHandoff,
    diags: &mut Vec<Diagnostic>,
) -> HandoffSettings {
    let mut settings = HandoffSettings {
        max_depth: DEFAULT_HANDOFF_DEPTH,
        ttl: MAX_HANDOFF_TTL,
    };
    if let Some(depth) = &raw.max_depth {
        match usize::try_from(*depth.get_ref()) {
            Ok(d) if (1..=16).contains(&d) => settings.max_depth = d,
            _ => diags.push(src.at(
                depth.span().start,
                format!(
                    "`max_depth` must be between 1 and 16, not `{}`",
                    depth.get_ref()
                ),
            )),
        }
    }
    if let Some(ttl) = &raw.ttl {
        match humantime::parse_duration(ttl.get_ref()) {
            Ok(d) if d >= Duration::from_secs(1) && d <= MAX_HANDOFF_TTL => settings.ttl = d,
            _ => diags.push(src.at(
                ttl.span().start,
                format!(
                    "`ttl` must be a duration between `1s` and `5m`, not `{}`",
                    ttl.get_ref()
                ),
            )),
        }
    }
    settings
}

fn build_manifest(
    root: &Path,
    dir: &Path,
    src: &Source,
    lock: &Result<Option<LockFile>, String>,
    require_locks: bool,
    profiles: &[exchange::ExchangeProfile],
    diags: &mut Vec<Diagnostic>,
) -> Option<ToolManifest> {
    let raw: RawManifest = fields::parse(src, fields::MANIFEST, diags)?;
    let segments = relative_id(dir, src.path).unwrap_or_default();
    if segments.len() != 2 || !segments.iter().all(|s| valid_segment(s)) {
        diags.push(src.file(
            "a tool manifest must be at `tool-manifests/<domain>/<name>.toml` (lowercase letters, digits, `-`, `_`)",
        ));
        return None;
    }
    let id = segments.join("/");
    let before = diags.len();

    if raw.environments.is_empty() {
        diags.push(src.file("`environments` must list at least one environment"));
    }
    for env in &raw.environments {
        if !valid_segment(env.get_ref()) {
            diags.push(src.at(
                env.span().start,
                format!("invalid environment `{}`", env.get_ref()),
            ));
        }
    }
    let transport_at = raw.transport.span().start;
    let transport = match raw.transport.get_ref() {
        RawTransport::Stdio {
            command,
            args,
            env,
            protocol,
        } => {
            if command.trim().is_empty() {
                diags.push(src.at(transport_at, "`command` in `[transport]` must not be empty"));
            }
            let command = if command.contains('/') && !command.starts_with('/') {
                root.join(command).to_string_lossy().into_owned()
            } else {
                command.clone()
            };
            Transport::Stdio {
                command,
                args: args.clone(),
                env: env.clone(),
                cwd: root.to_owned(),
                protocol: parse_protocol(src, transport_at, protocol, diags),
            }
        }
        RawTransport::Http { url, protocol } => {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => diags.push(src.at(
                    transport_at,
                    format!("`url` in `[transport]` must be an http(s) URL, not `{url}`"),
                )),
            }
            Transport::Http {
                url: url.clone(),
                protocol: parse_protocol(src, transport_at, protocol, diags),
            }
        }
    };
    let auth = exchange::build_auth(src, &id, raw.auth.as_ref(), &transport, profiles, diags);
    let handoff = raw
        .auth
        .as_ref()
        .and_then(|auth| handoff_target(src, auth, &transport, diags));
    let timeout = raw
        .timeout
        .as_ref()
        .and_then(|t| parse_duration(src, t, diags))
        .unwrap_or(DEFAULT_TIMEOUT);
    let isolation = isolation(src, &raw, diags);

    // Lock problems are reported, but the manifest is still returned so that missions using it
    // are checked too (instead of cascading into "unknown tool manifest").
    let mut lock_diags = Vec::new();
    let lock_result = lock;
    let lock = match lock {
        Ok(lock) => lock.clone(),
        Err(e) => {
            lock_diags.push(Diagnostic {
                file: lock_path(src.path),
                line: 1,
                col: 1,
                message: format!("invalid lock file: {e}"),
            });
            None
        }
    };
    if require_locks && matches!(lock_result, Ok(None)) {
        lock_diags.push(src.file(format!(
            "no lock file `{}`: run `mandate pin {id}` to pin the downstream's tool definitions",
            lock_path(src.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )));
    }
    if let Some(l) = &lock
        && l.manifest != id
    {
        lock_diags.push(Diagnostic {
            file: lock_path(src.path),
            line: 1,
            col: 1,
            message: format!(
                "lock file is for `{}`, not `{id}`: run `mandate pin {id}`",
                l.manifest
            ),
        });
    }

    let mut tools = BTreeMap::new();
    for tool in &raw.tools {
        let t = tool.get_ref();
        let name = t.name.get_ref().clone();
        if tools.contains_key(&name) {
            diags.push(src.at(
                t.name.span().start,
                format!("duplicate tool `{name}` in `[[tools]]`"),
            ));
            continue;
        }
        let effect = match Effect::parse(t.effect.get_ref()) {
            Some(e) => e,
            None => {
                diags.push(src.at(
                    t.effect.span().start,
                    format!(
                        "unknown effect `{}` (expected one of read, write, irreversible){}",
                        t.effect.get_ref(),
                        suggestion(t.effect.get_ref(), Effect::NAMES)
                    ),
                ));
                Effect::Read
            }
        };
        let sensitivity = one_of(
            src,
            t.sensitivity.as_ref(),
            &["public", "internal", "confidential", "restricted"],
            "internal",
            "sensitivity",
            diags,
        );
        let approval = one_of(
            src,
            t.approval.as_ref(),
            &["none", "approver", "user"],
            "none",
            "approval",
            diags,
        );
        if let Some(l) = &lock
            && l.get(&name).is_none()
        {
            lock_diags.push(src.at(
                t.name.span().start,
                format!(
                    "tool `{name}` is not in the lock file{}: run `mandate pin {id}` (after checking the downstream serves it)",
                    suggestion(&name, l.tools.iter().map(|t| t.name.as_str()))
                ),
            ));
        }
        let timeout = t
            .timeout
            .as_ref()
            .and_then(|d| parse_duration(src, d, diags));
        tools.insert(
            name.clone(),
            ToolSpec {
                name,
                effect,
                sensitivity,
                scopes: t.scopes.clone(),
                approval,
                timeout,
            },
        );
    }
    let failed = diags.len() != before;
    diags.append(&mut lock_diags);
    if failed {
        return None;
    }
    Some(ToolManifest {
        id,
        path: src.path.to_owned(),
        description: raw.description,
        environments: raw
            .environments
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        region: raw.region.into_inner(),
        transport,
        timeout,
        tools,
        lock,
        isolation,
        auth,
        handoff,
    })
}

/// `[auth] exchange = "handoff"` with its `mission` and `agent` (both required there, and
/// nowhere else); the downstream must be reached over HTTP (the token is its `Authorization`).
/// Whether the mission exists, lists the agent and is a handoff of every mission using the
/// manifest is checked once all missions are known ([`check_handoff_targets`]).
fn handoff_target(
    src: &Source,
    auth: &Spanned<raw::RawAuth>,
    transport: &Transport,
    diags: &mut Vec<Diagnostic>,
) -> Option<HandoffTarget> {
    let a = auth.get_ref();
    let at = auth.span().start;
    if a.exchange.get_ref() != "handoff" {
        for (name, value) in [("mission", &a.mission), ("agent", &a.agent)] {
            if let Some(v) = value {
                diags.push(src.at(
                    v.span().start,
                    format!("`{name}` in `[auth]` needs `exchange = \"handoff\"`: remove it, or make this downstream a handoff"),
                ));
            }
        }
        return None;
    }
    if !matches!(transport, Transport::Http { .. }) {
        diags.push(src.at(
            a.exchange.span().start,
            "`exchange = \"handoff\"` needs `[transport] kind = \"http\"`: the handoff token is sent as the downstream call's `Authorization`",
        ));
    }
    let (Some(mission), Some(agent)) = (&a.mission, &a.agent) else {
        diags.push(src.at(
            at,
            "`exchange = \"handoff\"` needs `mission` (the mission whose agent this downstream is) and `agent` (that agent's id) in `[auth]`",
        ));
        return None;
    };
    Some(HandoffTarget {
        mission: mission.get_ref().clone(),
        agent: agent.get_ref().clone(),
    })
}

/// Every handoff downstream names an existing mission that lists its agent, and every mission
/// using it lists that mission in `handoffs` (no handoff without the edge).
fn check_handoff_targets(
    sources: &Sources,
    manifests: &BTreeMap<String, ToolManifest>,
    missions: &BTreeMap<String, Mission>,
    diags: &mut Vec<Diagnostic>,
) {
    for (path, text, _) in &sources.manifests {
        let src = Source { path, text };
        let Some(manifest) = manifests.values().find(|m| m.path == *path) else {
            continue;
        };
        let Some(target) = &manifest.handoff else {
            continue;
        };
        let Some(raw) = fields::parse::<RawManifest>(&src, fields::MANIFEST, &mut Vec::new())
        else {
            continue;
        };
        let Some(auth) = raw.auth.as_ref().map(Spanned::get_ref) else {
            continue;
        };
        let span = |v: &Option<Spanned<String>>| v.as_ref().map_or(0, |v| v.span().start);
        let Some(to) = missions.get(&target.mission) else {
            diags.push(src.at(
                span(&auth.mission),
                format!(
                    "unknown mission `{}` in `[auth] mission`{}",
                    target.mission,
                    suggestion(&target.mission, missions.keys().map(String::as_str))
                ),
            ));
            continue;
        };
        if !to.agents.contains(&target.agent) {
            diags.push(src.at(
                span(&auth.agent),
                format!(
                    "agent `{}` is not in the `agents` of mission `{}`: add it there, or name one of {}",
                    target.agent,
                    to.id,
                    to.agents.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for from in missions.values() {
            let uses = from.tools.iter().any(|t| t.manifest == manifest.id);
            if uses && !from.handoffs.contains(&to.id) {
                diags.push(src.at(
                    span(&auth.mission),
                    format!(
                        "mission `{}` uses this handoff to `{}` but does not list it in `handoffs`: add `handoffs = [\"{}\"]` to `{}`",
                        from.id,
                        to.id,
                        to.id,
                        from.path.display()
                    ),
                ));
            }
        }
    }
}

/// `[isolation]`, with its defaults (see [`RawIsolation`]).
fn isolation(src: &Source, raw: &RawManifest, diags: &mut Vec<Diagnostic>) -> Isolation {
    let exchange = raw
        .auth
        .as_ref()
        .map(|a| a.get_ref().exchange.get_ref().as_str())
        .filter(|e| *e != "none");
    let default = match raw.transport.get_ref() {
        RawTransport::Stdio { .. } => "per-principal",
        RawTransport::Http { .. } if exchange.is_some() => "per-principal",
        RawTransport::Http { .. } => "shared",
    };
    let Some(table) = &raw.isolation else {
        return match default {
            "shared" => Isolation::Shared,
            _ => Isolation::PerPrincipal {
                max_instances: DEFAULT_MAX_INSTANCES,
                idle_timeout: DEFAULT_INSTANCE_IDLE,
            },
        };
    };
    let at = table.span().start;
    let table = table.get_ref();
    let mode = one_of(
        src,
        table.mode.as_ref(),
        &["per-principal", "shared"],
        default,
        "mode",
        diags,
    );
    let max_instances = match &table.max_instances {
        None => DEFAULT_MAX_INSTANCES,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                diags.push(src.at(
                    n.span().start,
                    format!(
                        "`max_instances` is {}; it must be between 1 and 10000",
                        n.get_ref()
                    ),
                ));
                DEFAULT_MAX_INSTANCES
            }
        },
    };
    let idle_timeout = table
        .idle_timeout
        .as_ref()
        .and_then(|d| parse_duration(src, d, diags))
        .unwrap_or(DEFAULT_INSTANCE_IDLE);
    if mode == "per-principal" {
        return Isolation::PerPrincipal {
            max_instances,
            idle_timeout,
        };
    }
    if let Some(exchange) = exchange {
        diags.push(src.at(
            table.mode.as_ref().map_or(at, |m| m.span().start),
            format!(
                "`mode = \"shared\"` with `[auth] exchange = \"{exchange}\"` would let a downstream session bound to one user's token carry another user's call: use `mode = \"per-principal\"` (the default)"
            ),
        ));
    }
    Isolation::Shared
}

fn one_of(
    src: &Source,
    value: Option<&Spanned<String>>,
    allowed: &[&str],
    default: &str,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> String {
    match value {
        None => default.to_owned(),
        Some(v) if allowed.contains(&v.get_ref().as_str()) => v.get_ref().clone(),
        Some(v) => {
            diags.push(src.at(
                v.span().start,
                format!(
                    "unknown {field} `{}` (expected one of {}){}",
                    v.get_ref(),
                    allowed.join(", "),
                    suggestion(v.get_ref(), allowed.iter().copied())
                ),
            ));
            default.to_owned()
        }
    }
}

fn build_mission(
    dir: &Path,
    src: &Source,
    manifests: &BTreeMap<String, ToolManifest>,
    broken: &BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Mission> {
    let raw: RawMission = fields::parse(src, fields::MISSION, diags)?;
    let segments = relative_id(dir, src.path).unwrap_or_default();
    if segments.len() != 3 || !segments.iter().all(|s| valid_segment(s)) {
        diags.push(src.file(
            "a mission must be at `missions/<domain>/<env>/<name>.toml` (lowercase letters, digits, `-`, `_`)",
        ));
        return None;
    }
    let id = segments.join("/");
    let env = segments[1].clone();
    let before = diags.len();

    if raw.tenant.get_ref().trim().is_empty() {
        diags.push(src.at(raw.tenant.span().start, "`tenant` must not be empty"));
    }
    let expires = raw.expires.get_ref();
    let expires_at = match (expires.date, expires.time) {
        (Some(d), None) => days_from_civil(i64::from(d.year), u32::from(d.month), u32::from(d.day))
            .map(|days| (days + 1) as u64 * 86_400 - 1),
        _ => None,
    };
    let Some(expires_at) = expires_at else {
        diags.push(src.at(
            raw.expires.span().start,
            "`expires` must be a date like `2027-06-30`",
        ));
        return None;
    };
    if raw.agents.is_empty() {
        diags.push(src.file("`agents` must list at least one agent id"));
    }

    let manifest_names = || manifests.keys().map(String::as_str);
    let mut tools: Vec<MissionTool> = Vec::new();
    let mut exposed_at: BTreeMap<String, (usize, String)> = BTreeMap::new();
    // Manifests this mission may not use: reported at their first reference only.
    let mut refused: BTreeSet<&str> = BTreeSet::new();
    for entry in &raw.tools {
        let offset = entry.span().start;
        let (reference, rename) = match entry.get_ref() {
            RawToolRef::Plain(r) => (r.as_str(), None),
            RawToolRef::Renamed(r) => (r.tool.as_str(), r.as_name.as_deref()),
        };
        let Some((manifest_id, tool)) = reference.rsplit_once('/') else {
            diags.push(src.at(
                offset,
                format!("tool reference `{reference}` must be `<domain>/<manifest>/<tool>`"),
            ));
            continue;
        };
        if broken.contains(manifest_id) {
            continue;
        }
        let Some(manifest) = manifests.get(manifest_id) else {
            let all_refs: Vec<String> = manifests
                .values()
                .flat_map(|m| m.tools.keys().map(move |t| format!("{}/{t}", m.id)))
                .collect();
            let hint = match suggestion(reference, all_refs.iter().map(String::as_str)) {
                s if !s.is_empty() => s,
                _ => suggestion(manifest_id, manifest_names()),
            };
            diags.push(src.at(
                offset,
                format!("unknown tool manifest `{manifest_id}` in `tools`{hint}"),
            ));
            continue;
        };
        if refused.contains(manifest_id) {
            continue;
        }
        if !manifest.environments.contains(&env) {
            refused.insert(manifest_id);
            diags.push(src.at(
                offset,
                format!(
                    "tool manifest `{manifest_id}` is not allowed in environment `{env}` (its `environments` are {})",
                    manifest.environments.join(", ")
                ),
            ));
            continue;
        }
        if !raw.regions.is_empty() && !raw.regions.iter().any(|r| r.get_ref() == &manifest.region) {
            refused.insert(manifest_id);
            diags.push(src.at(
                offset,
                format!(
                    "tool manifest `{manifest_id}` keeps data in region `{}`, which is not in this mission's `regions`",
                    manifest.region
                ),
            ));
            continue;
        }
        let names: Vec<String> = if tool == "*" {
            if rename.is_some() {
                diags.push(src.at(offset, "a `*` reference cannot be renamed with `as`"));
                continue;
            }
            manifest.tools.keys().cloned().collect()
        } else if manifest.tools.contains_key(tool) {
            vec![tool.to_owned()]
        } else {
            diags.push(src.at(
                offset,
                format!(
                    "unknown tool `{reference}` in `tools`{}",
                    suggestion(
                        reference,
                        manifest
                            .tools
                            .keys()
                            .map(|t| format!("{manifest_id}/{t}"))
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str)
                    )
                ),
            ));
            continue;
        };
        for name in names {
            let exposed = rename.unwrap_or(&name).to_owned();
            if !valid_tool_name(&exposed) {
                diags.push(src.at(
                    offset,
                    format!("`{exposed}` is not a valid tool name (1-128 of A-Z a-z 0-9 _ - .)"),
                ));
                continue;
            }
            let full = format!("{manifest_id}/{name}");
            if let Some((_, first)) = exposed_at.get(&exposed) {
                let msg = if *first == full {
                    format!("tool `{full}` is listed twice")
                } else {
                    format!(
                        "tool name `{exposed}` is exposed twice (by `{first}` and `{full}`): rename one with `{{ tool = \"{full}\", as = \"…\" }}`"
                    )
                };
                diags.push(src.at(offset, msg));
                continue;
            }
            exposed_at.insert(exposed.clone(), (offset, full));
            tools.push(MissionTool {
                exposed,
                manifest: manifest_id.to_owned(),
                tool: name,
            });
        }
    }

    let mut check_manifest_list = |list: &[Spanned<String>], field: &str| -> Vec<String> {
        let mut out = Vec::new();
        for m in list {
            if broken.contains(m.get_ref()) {
                continue;
            }
            match manifests.get(m.get_ref()) {
                // The residency wall holds for what a mission passes through as for its tools:
                // a resource or prompt is data from the downstream's region.
                Some(manifest)
                    if manifest.environments.contains(&env)
                        && !raw.regions.is_empty()
                        && !raw.regions.iter().any(|r| r.get_ref() == &manifest.region) =>
                {
                    diags.push(src.at(
                        m.span().start,
                        format!(
                            "tool manifest `{}` in `{field}` keeps data in region `{}`, which is not in this mission's `regions`",
                            m.get_ref(),
                            manifest.region
                        ),
                    ))
                }
                Some(manifest) if manifest.environments.contains(&env) => {
                    out.push(m.get_ref().clone())
                }
                Some(_) => diags.push(src.at(
                    m.span().start,
                    format!(
                        "tool manifest `{}` is not allowed in environment `{env}`",
                        m.get_ref()
                    ),
                )),
                None => diags.push(src.at(
                    m.span().start,
                    format!(
                        "unknown tool manifest `{}` in `{field}`{}",
                        m.get_ref(),
                        suggestion(m.get_ref(), manifests.keys().map(String::as_str))
                    ),
                )),
            }
        }
        out
    };
    let resources = check_manifest_list(&raw.resources, "resources");
    let prompts = check_manifest_list(&raw.prompts, "prompts");

    let mut require_reasoning = BTreeSet::new();
    for e in &raw.require_reasoning {
        match Effect::parse(e.get_ref()) {
            Some(effect) => {
                require_reasoning.insert(effect);
            }
            None => diags.push(src.at(
                e.span().start,
                format!(
                    "unknown effect `{}` in `require_reasoning` (expected read, write or irreversible){}",
                    e.get_ref(),
                    suggestion(e.get_ref(), Effect::NAMES)
                ),
            )),
        }
    }
    for (name, limit) in [
        ("calls_per_minute", &raw.limits.calls_per_minute),
        ("per_agent", &raw.limits.per_agent),
        ("per_user", &raw.limits.per_user),
        ("per_tool", &raw.limits.per_tool),
    ] {
        if let Some(l) = limit
            && *l.get_ref() == 0
        {
            diags.push(src.at(
                l.span().start,
                format!("`{name}` must be at least 1 (calls per minute); remove it for no limit"),
            ));
        }
    }
    if diags.len() != before {
        return None;
    }
    Some(Mission {
        domain: segments[0].clone(),
        env,
        name: segments[2].clone(),
        id,
        path: src.path.to_owned(),
        description: raw.description,
        tenant: raw.tenant.into_inner(),
        owner: raw.owner,
        expires: raw.expires.get_ref().to_string(),
        expires_at,
        agents: raw.agents.into_iter().map(Spanned::into_inner).collect(),
        regions: raw.regions.into_iter().map(Spanned::into_inner).collect(),
        tools,
        resources,
        prompts,
        handoffs: raw.handoffs.into_iter().map(Spanned::into_inner).collect(),
        require_reasoning,
        limits: Limits {
            calls_per_minute: raw.limits.calls_per_minute.map(Spanned::into_inner),
            per_agent: raw.limits.per_agent.map(Spanned::into_inner),
            per_user: raw.limits.per_user.map(Spanned::into_inner),
            per_tool: raw.limits.per_tool.map(Spanned::into_inner),
        },
    })
}

/// `[approvals]`: durations within bounds, an http(s) webhook URL.
fn build_approvals(
    src: &Source,
    raw: &RawApprovals,
    diags: &mut Vec<Diagnostic>,
) -> ApprovalSettings {
    let defaults = ApprovalSettings::default();
    let duration = |value: &Option<Spanned<String>>,
                    field: &str,
                    min: Duration,
                    max: Duration,
                    default: Duration,
                    diags: &mut Vec<Diagnostic>| {
        let Some(v) = value else {
            return default;
        };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                diags.push(src.at(
                    v.span().start,
                    format!(
                        "`{field}` `{}` must be between {} and {}",
                        v.get_ref(),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
                default
            }
            Err(_) => {
                diags.push(src.at(
                    v.span().start,
                    format!(
                        "invalid duration `{}` in `{field}` (write e.g. `30s` or `1h`)",
                        v.get_ref()
                    ),
                ));
                default
            }
        }
    };
    let ttl = duration(
        &raw.ttl,
        "ttl",
        Duration::from_secs(1),
        Duration::from_secs(7 * 24 * 3600),
        defaults.ttl,
        diags,
    );
    let wait = duration(
        &raw.wait,
        "wait",
        Duration::ZERO,
        Duration::from_secs(600),
        defaults.wait,
        diags,
    );
    let replay_window = duration(
        &raw.replay_window,
        "replay_window",
        Duration::from_secs(1),
        Duration::from_secs(3600),
        defaults.replay_window,
        diags,
    );
    let approver_role = match &raw.approver_role {
        Some(r) if r.get_ref().trim().is_empty() => {
            diags.push(src.at(
                r.span().start,
                "`approver_role` must not be empty (e.g. `approver`)",
            ));
            defaults.approver_role
        }
        Some(r) => r.get_ref().clone(),
        None => defaults.approver_role,
    };
    let webhook_url = raw.webhook_url.as_ref().map(|u| {
        let ok = reqwest::Url::parse(u.get_ref())
            .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.host_str().is_some());
        if !ok {
            diags.push(src.at(
                u.span().start,
                format!(
                    "`webhook_url` must be an http(s) URL, not `{}`",
                    u.get_ref()
                ),
            ));
        }
        u.get_ref().clone()
    });
    let webhook_secret_env = match &raw.webhook_secret_env {
        Some(e) if e.get_ref().is_empty() => {
            diags.push(src.at(
                e.span().start,
                "`webhook_secret_env` must name an environment variable",
            ));
            defaults.webhook_secret_env
        }
        Some(e) => e.get_ref().clone(),
        None => defaults.webhook_secret_env,
    };
    let retain = duration(
        &raw.retain,
        "retain",
        Duration::from_secs(60),
        Duration::from_secs(10 * 365 * 24 * 3600),
        defaults.retain,
        diags,
    );
    ApprovalSettings {
        ttl,
        wait,
        approver_role,
        webhook_url,
        webhook_secret_env,
        replay_window,
        retain,
    }
}

/// MCP tool names: 1-128 characters of `A-Z a-z 0-9 _ - .`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), if the date exists.
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    let days_in_month = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let max = if m == 2 && leap {
        29
    } else {
        *days_in_month.get(m.checked_sub(1)? as usize)?
    };
    if d == 0 || d > max {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests;

//! # Mandate overhead benchmark
//!
//! Measures, in one run, what Mandate adds to a tool call compared with calling the
//! same downstream directly: latency (p50/p90/p99), throughput, Mandate's CPU per
//! call and its memory, at several concurrency levels, for a streamable HTTP and a
//! stdio downstream. The README's performance table is the markdown this prints.
//!
//! ```text
//! cargo build --release --bins --examples
//! target/release/examples/bench [--concurrency 1,8,32] [--downstream http,stdio]
//!     [--calls 20000] [--warmup 200] [--block 100] [--client-threads 1]
//!     [--fresh-connections] [--json FILE] [--floor]
//! ```
//!
//! A default run takes about 1.5 minutes on 2 cores. Linux only (`/proc`).
//!
//! ## Setup
//!
//! The bench writes a temporary Mandate workspace with a tool manifest and a mission
//! per downstream (tenant `acme`, agent `bench`), each exposing only `get_invoice`
//! of the sample ledger (`examples/ledger.rs`):
//!
//! * `http`: manifest `finance/ledger` (`kind = "http"`) pointing at a ledger the
//!   bench starts with `ledger --http 127.0.0.1:0`; mission `finance/prod/bench`.
//! * `stdio`: manifest `finance/ledger-stdio` (`kind = "stdio"`, `command` = the
//!   ledger binary, no arguments), which Mandate starts as its own child process;
//!   mission `finance/prod/bench-stdio`.
//!
//! It runs `mandate pin` and checks that the lock files pin `get_invoice` with its
//! `inputSchema` and `outputSchema`, starts `mandate serve --listen 127.0.0.1:0`
//! (`MANDATE_LOG=warn`) and mints one token per mission. So authentication,
//! input and output schema validation and the audit log are all on.
//!
//! ## Load
//!
//! Every call is `tools/call get_invoice {"invoice_id": "INV-1001"}`, and every
//! result is checked (not an error, `structuredContent` with the expected id and
//! amount); a failed, wrong or timed-out (30 s) call aborts the bench with the
//! error and the tail of Mandate's log. For each downstream and each concurrency
//! level `c`, `c` workers each keep one call in flight (closed loop):
//!
//! * direct, HTTP: each worker has its own MCP session (rmcp client) to the ledger;
//! * direct, stdio: the bench starts its own ledger child over stdio
//!   (`TokioChildProcess`) and the `c` workers share that one connection (rmcp
//!   multiplexes requests by id). That is the realistic baseline, since an agent
//!   host runs one process per stdio server, and it is what Mandate does too. The
//!   ledger writes a stderr line per call; the bench reads and discards it, as
//!   Mandate reads it into its log;
//! * via Mandate (both downstreams): each worker has its own MCP session to the
//!   mission over HTTP, with the bearer token. Mandate holds one connection per
//!   downstream. For stdio, "via" therefore includes an HTTP leg (bench → Mandate)
//!   that the direct stdio path does not have.
//!
//! All HTTP sessions (direct and via) share one pooled `reqwest` client with
//! `TCP_NODELAY`, as Mandate does for its downstreams; `--fresh-connections` uses
//! rmcp's default client instead, which opens a new connection per request.
//!
//! The load generator is single-threaded by default (`--client-threads 1`), so it
//! uses at most one core and adds no cross-thread wake-ups to the latencies;
//! its own CPU per call is reported, to show when it, not the system under test,
//! limits throughput.
//!
//! Per level, sessions are opened, then both paths make `W` warmup calls (at least
//! one per worker), then `N` measured calls each, in an even number of rounds
//! (at least two, about `B` calls per worker per round) that alternate the order
//! (direct then via, then via then direct, ...), so machine noise hits both paths
//! alike. Sessions are closed at the end of the level.
//!
//! ## Reported, per (downstream, c)
//!
//! * `direct p50/p90/p99`, `via p50/p90/p99`: call latency seen by the caller, µs,
//!   nearest rank; `added p50` = via p50 − direct p50;
//! * `calls/s`: measured calls / wall time of that path's rounds; `ratio` = via
//!   calls/s / direct calls/s;
//! * `Mandate CPU/call`: utime + stime of the `mandate` process
//!   (`/proc/<pid>/stat`) during the via rounds / via calls. (Stdio downstreams
//!   are separate processes and not included.) The JSON also has Mandate's CPU
//!   during the direct rounds, when it only finishes deferred work such as store
//!   flushes, per second and added to the per-call figure;
//! * with `--floor` (HTTP downstream): a third path in the same rounds, through
//!   `examples/floor_proxy.rs`, a plain reverse proxy built from Mandate's own stack (the
//!   same runtime, server, client connections and allocator) that parses nothing and
//!   checks nothing. Its added p50 is the floor any broker on this stack pays on this
//!   machine; `Mandate over the floor` (via p50 − floor p50) is what Mandate's stages
//!   cost. Printed as a second table, with the floor proxy's CPU per call;
//! * `Mandate RSS`: after the level's warmup → after its measured rounds, MiB;
//!   the summary adds RSS at start and end and the peak (`VmHWM`);
//! * `store B/call`: growth of the workspace on disk (Mandate's store, mostly the
//!   audit log) per via call of the level, warmup included (sled grows in steps,
//!   so the run-wide figure in the summary is steadier);
//! * the machine's load average at start and end: the numbers are only as quiet
//!   as the machine.
//!
//! Output: progress on stderr; on stdout a human-readable table, a summary line,
//! a markdown table for the README and one JSON line (also written, pretty-printed,
//! to `--json FILE`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, RoleClient, ServiceExt};
use serde_json::{Value, json};

const BUILD_HINT: &str = "build them with `cargo build --release --bins --examples` \
    (or `cargo build --bins --examples` for target/debug)";

const USAGE: &str = "usage: bench [options]
  --concurrency LIST    concurrency levels, comma-separated (1,8,32)
  --downstream LIST     http, stdio or both (http,stdio)
  --calls N             measured calls per path per level (20000)
  --warmup W            warmup calls per path per level (200)
  --block B             calls per worker per round (100)
  --client-threads T    threads of the load generator; 1 = single-threaded (1)
  --fresh-connections   new HTTP connection per request (rmcp's default client)
  --json FILE           also write the report as pretty JSON to FILE
  --exchange PROFILE    the HTTP downstream's `[auth] exchange` (none; `embedded` measures
                        per-call On-Behalf-Of tokens, served from the cache after the first)
  --worker-threads W    Mandate's `[server] worker_threads` (its default, 1, when not given;
                        a count or auto)
  --floor               HTTP downstream: also measure the floor, a plain reverse proxy on
                        Mandate's own stack (examples/floor_proxy.rs), in the same rounds";

/// The invoice every call asks for, and what its result must contain.
const INVOICE_ID: &str = "INV-1001";
const INVOICE_AMOUNT_CENTS: i64 = 482_050;
/// A call that takes longer than this fails the bench.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Downstream {
    Http,
    Stdio,
}

impl Downstream {
    fn name(self) -> &'static str {
        match self {
            Downstream::Http => "http",
            Downstream::Stdio => "stdio",
        }
    }

    fn manifest(self) -> &'static str {
        match self {
            Downstream::Http => "finance/ledger",
            Downstream::Stdio => "finance/ledger-stdio",
        }
    }

    fn mission(self) -> &'static str {
        match self {
            Downstream::Http => "finance/prod/bench",
            Downstream::Stdio => "finance/prod/bench-stdio",
        }
    }
}

struct Options {
    calls: usize,
    warmup: usize,
    block: usize,
    fresh_connections: bool,
    concurrency: Vec<usize>,
    downstreams: Vec<Downstream>,
    client_threads: usize,
    json: Option<PathBuf>,
    /// `[auth] exchange` of the HTTP downstream.
    exchange: String,
    /// Mandate's `[server] worker_threads`, when given.
    worker_threads: Option<String>,
    /// Also measure the floor proxy (HTTP downstream).
    floor: bool,
}

fn parse_list<T>(name: &str, v: &str, item: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    let items = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(item)
        .collect::<Result<Vec<T>>>()
        .with_context(|| format!("{name} {v:?}"))?;
    if items.is_empty() {
        bail!("{name} needs at least one value");
    }
    Ok(items)
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        calls: 20_000,
        warmup: 200,
        block: 100,
        fresh_connections: false,
        concurrency: vec![1, 8, 32],
        downstreams: vec![Downstream::Http, Downstream::Stdio],
        client_threads: 1,
        json: None,
        exchange: "none".into(),
        worker_threads: None,
        floor: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().with_context(|| format!("{name} needs a value")),
            }
        };
        let number = |name: &str, v: String| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{name}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--calls" => opts.calls = number("--calls", value("--calls")?)?,
            "--warmup" => opts.warmup = number("--warmup", value("--warmup")?)?,
            "--block" => opts.block = number("--block", value("--block")?)?.max(1),
            "--client-threads" => {
                opts.client_threads = number("--client-threads", value("--client-threads")?)?;
            }
            "--fresh-connections" => opts.fresh_connections = true,
            "--floor" => opts.floor = true,
            "--concurrency" => {
                let v = value("--concurrency")?;
                opts.concurrency = parse_list("--concurrency", &v, |s| match s.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => bail!("{s:?} is not a positive number"),
                })?;
            }
            "--downstream" => {
                let v = value("--downstream")?;
                opts.downstreams = parse_list("--downstream", &v, |s| match s {
                    "http" => Ok(Downstream::Http),
                    "stdio" => Ok(Downstream::Stdio),
                    other => bail!("unknown downstream {other:?} (http or stdio)"),
                })?;
                opts.downstreams.dedup();
            }
            "--json" => opts.json = Some(PathBuf::from(value("--json")?)),
            "--exchange" => opts.exchange = value("--exchange")?,
            "--worker-threads" => opts.worker_threads = Some(value("--worker-threads")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unexpected argument {other:?} (see --help)"),
        }
    }
    if opts.calls == 0 {
        bail!("--calls must be at least 1");
    }
    if opts.client_threads == 0 {
        bail!("--client-threads must be at least 1");
    }
    if opts.floor && !opts.downstreams.contains(&Downstream::Http) {
        bail!("--floor measures a proxy in front of the HTTP downstream: add http to --downstream");
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// Keeps the last this many bytes of a child's stderr.
const LOG_KEEP: usize = 64 * 1024;

#[derive(Default)]
struct Log {
    text: String,
    lines: usize,
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped; the tail
/// of its stderr is kept.
struct Proc {
    name: &'static str,
    child: Child,
    stderr: Arc<Mutex<Log>>,
}

impl Proc {
    /// Spawns `cmd` and returns it with the first stdout line; the rest of stdout
    /// is drained in the background.
    fn spawn(name: &'static str, mut cmd: Command) -> Result<(Self, String)> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stderr = Arc::new(Mutex::new(Log::default()));
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut log) = sink.lock() {
                        log.lines += 1;
                        log.text.push_str(&line);
                        log.text.push('\n');
                        if log.text.len() > 2 * LOG_KEEP {
                            let mut cut = log.text.len() - LOG_KEEP;
                            while !log.text.is_char_boundary(cut) {
                                cut += 1;
                            }
                            log.text.drain(..cut);
                        }
                    }
                }
            });
        }
        let mut proc = Proc {
            name,
            child,
            stderr,
        };
        let stdout = proc
            .child
            .stdout
            .take()
            .with_context(|| format!("{name}: no stdout"))?;
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader
            .read_line(&mut first)
            .with_context(|| format!("{name}: cannot read stdout"))?;
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        if first.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            bail!("{name} exited before printing its address:\n{}", proc.log());
        }
        Ok((proc, first.trim().to_owned()))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The kept tail of its stderr.
    fn log(&self) -> String {
        self.stderr
            .lock()
            .map(|l| l.text.clone())
            .unwrap_or_default()
    }

    /// Number of stderr lines so far.
    fn log_lines(&self) -> usize {
        self.stderr.lock().map(|l| l.lines).unwrap_or_default()
    }

    /// Fails (with its log) if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}):\n{}", self.name, self.log());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so that `mandate serve` stops its stdio children itself.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<dir of this executable>/ledger` and `<dir>/../mandate`.
fn binaries() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot locate the bench executable")?;
    let dir = exe
        .parent()
        .context("the bench executable has no parent directory")?;
    let ledger = dir.join("ledger");
    let mandate = dir.join("..").join("mandate");
    for path in [&ledger, &mandate] {
        if !path.is_file() {
            bail!("{} is missing: {BUILD_HINT}", path.display());
        }
    }
    let ledger = ledger
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", ledger.display()))?;
    Ok((ledger, mandate))
}

fn mandate_cmd(mandate: &Path, workspace: &Path) -> Command {
    let mut cmd = Command::new(mandate);
    cmd.current_dir(workspace).env("MANDATE_LOG", "warn");
    cmd
}

/// Runs a short `mandate` command and returns its stdout.
fn run_mandate(mandate: &Path, workspace: &Path, args: &[&str]) -> Result<String> {
    let out = mandate_cmd(mandate, workspace)
        .args(args)
        .output()
        .with_context(|| format!("cannot run mandate {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "mandate {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn write(root: &Path, rel: &str, content: &str) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn write_mission(root: &Path, downstream: Downstream) -> Result<()> {
    // Cedar decides every call (a mission without policies denies everything).
    write(
        root,
        &format!("missions/{}.cedar", downstream.mission()),
        "@id(\"bench-permit\")\npermit (principal, action, resource);\n",
    )?;
    write(
        root,
        &format!("missions/{}.toml", downstream.mission()),
        &format!(
            r#"description = "benchmark mission ({} downstream)"
tenant = "acme"
owner = "x"
expires = 2099-12-31
agents = ["bench"]
tools = ["{}/get_invoice"]
"#,
            downstream.name(),
            downstream.manifest()
        ),
    )
}

const MANIFEST_HEAD: &str = r#"environments = ["prod"]
region = "eu-west-1"
timeout = "30s"
"#;

const MANIFEST_TOOLS: &str = r#"
[[tools]]
name = "get_invoice"
effect = "read"
"#;

/// Writes the manifests and missions for the selected downstreams.
fn write_workspace(
    root: &Path,
    ledger_url: Option<&str>,
    ledger_bin: Option<&Path>,
    exchange: &str,
    worker_threads: Option<&str>,
) -> Result<()> {
    if let Some(w) = worker_threads {
        let value = match w.parse::<u32>() {
            Ok(n) => n.to_string(),
            Err(_) => toml_str(w),
        };
        write(
            root,
            "mandate.toml",
            &format!("[server]\nworker_threads = {value}\n"),
        )?;
    }
    if let Some(url) = ledger_url {
        write(
            root,
            &format!("tool-manifests/{}.toml", Downstream::Http.manifest()),
            &format!(
                "description = \"Acme ledger over HTTP (benchmark)\"\n{MANIFEST_HEAD}\n\
                 [transport]\nkind = \"http\"\nurl = {}\n[auth]\nexchange = {}\n{MANIFEST_TOOLS}",
                toml_str(url),
                toml_str(exchange)
            ),
        )?;
        write_mission(root, Downstream::Http)?;
    }
    if let Some(bin) = ledger_bin {
        let bin = bin
            .to_str()
            .with_context(|| format!("{} is not valid UTF-8", bin.display()))?;
        write(
            root,
            &format!("tool-manifests/{}.toml", Downstream::Stdio.manifest()),
            &format!(
                "description = \"Acme ledger over stdio (benchmark)\"\n{MANIFEST_HEAD}\n\
                 [transport]\nkind = \"stdio\"\ncommand = {}\n{MANIFEST_TOOLS}",
                toml_str(bin)
            ),
        )?;
        write_mission(root, Downstream::Stdio)?;
    }
    Ok(())
}

/// Fails unless `mandate pin` pinned `get_invoice` of `manifest` with an input and
/// an output schema (so Mandate validates both on every call).
fn check_pinned(root: &Path, manifest: &str) -> Result<()> {
    let path = root.join(format!("tool-manifests/{manifest}.lock.json"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let lock: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let definition = lock
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|tools| {
            tools
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("get_invoice"))
        })
        .and_then(|t| t.get("definition"))
        .with_context(|| format!("{} does not pin get_invoice", path.display()))?;
    for schema in ["inputSchema", "outputSchema"] {
        if !definition.get(schema).is_some_and(Value::is_object) {
            bail!("{}: get_invoice has no {schema}", path.display());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// utime + stime of a process, in clock ticks.
fn cpu_ticks_of(stat_path: &str) -> Result<u64> {
    let stat =
        std::fs::read_to_string(stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected format of {stat_path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("short {stat_path}"))?
            .parse::<u64>()
            .with_context(|| format!("bad number in {stat_path}"))
    };
    Ok(field(14)? + field(15)?)
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    cpu_ticks_of(&format!("/proc/{pid}/stat"))
}

fn own_cpu_ticks() -> Result<u64> {
    cpu_ticks_of("/proc/self/stat")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Total size of the files under `dir`, in bytes (0 if it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The first three fields of `/proc/loadavg` (other load on the machine).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------
// MCP clients
// ---------------------------------------------------------------------------

type Client = RunningService<RoleClient, ()>;

/// The HTTP client all sessions share: pooled, `TCP_NODELAY`.
fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")
}

async fn connect_http(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    fresh_connections: bool,
) -> Result<Client> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = token {
        config = config.auth_header(token.to_owned());
    }
    let client = if fresh_connections {
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
    } else {
        ().serve(StreamableHttpClientTransport::with_client(
            http.clone(),
            config,
        ))
        .await
    };
    client.with_context(|| format!("cannot connect to {url}"))
}

/// Starts the ledger as a child over stdio and connects to it. Its stderr (one line
/// per call) is read line by line and discarded, as Mandate reads it into its log.
async fn connect_stdio(ledger: &Path) -> Result<Client> {
    let mut cmd = tokio::process::Command::new(ledger);
    cmd.kill_on_drop(true);
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", ledger.display()))?;
    if let Some(stderr) = stderr {
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
    }
    ().serve(transport)
        .await
        .context("cannot connect to the ledger over stdio")
}

async fn close_all(clients: Vec<Client>) {
    for client in clients {
        let _ = client.cancel().await;
    }
}

fn call_params() -> CallToolRequestParams {
    let mut args = serde_json::Map::new();
    args.insert("invoice_id".into(), json!(INVOICE_ID));
    CallToolRequestParams::new("get_invoice").with_arguments(args)
}

/// One checked `get_invoice` call; returns its wall time.
async fn call(peer: &Peer<RoleClient>, params: CallToolRequestParams) -> Result<Duration> {
    let start = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT, peer.call_tool(params)).await;
    let elapsed = start.elapsed();
    let result = result
        .map_err(|_| anyhow!("no answer within {CALL_TIMEOUT:?}"))?
        .context("tools/call get_invoice failed")?;
    if result.is_error == Some(true) {
        bail!("get_invoice returned a tool error: {:?}", result.content);
    }
    let ok = result.structured_content.as_ref().is_some_and(|v| {
        v.get("id").and_then(Value::as_str) == Some(INVOICE_ID)
            && v.get("amount_cents").and_then(Value::as_i64) == Some(INVOICE_AMOUNT_CENTS)
    });
    if !ok {
        bail!("get_invoice returned an unexpected result: {result:?}");
    }
    Ok(elapsed)
}

/// Runs `total` calls spread over the workers (one per peer, each with one call in
/// flight); returns every call's latency and the phase's wall time.
async fn phase(peers: &[Peer<RoleClient>], total: usize) -> Result<(Vec<Duration>, Duration)> {
    let workers = peers.len().max(1);
    let params = call_params();
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for (i, peer) in peers.iter().enumerate() {
        let n = total / workers + usize::from(i < total % workers);
        if n == 0 {
            continue;
        }
        let peer = peer.clone();
        let params = params.clone();
        set.spawn(async move {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                samples.push(call(&peer, params.clone()).await?);
            }
            Ok::<_, anyhow::Error>(samples)
        });
    }
    let mut samples = Vec::with_capacity(total);
    while let Some(joined) = set.join_next().await {
        // An error drops `set`, which aborts the other workers.
        samples.extend(joined.context("a bench worker panicked")??);
    }
    Ok((samples, start.elapsed()))
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

/// Nearest-rank percentiles, in microseconds.
fn stats(samples: &[Duration]) -> Stats {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * us.len() as f64).ceil() as usize;
        us[rank.clamp(1, us.len()) - 1]
    };
    let mean = if us.is_empty() {
        0.0
    } else {
        us.iter().sum::<f64>() / us.len() as f64
    };
    Stats {
        p50: pct(50.0),
        p90: pct(90.0),
        p99: pct(99.0),
        mean,
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn mib(kib: u64) -> f64 {
    round1(kib as f64 / 1024.0)
}

/// Measurements of one path (direct or via Mandate) at one level.
#[derive(Default)]
struct PathRun {
    samples: Vec<Duration>,
    wall: Duration,
    /// Ticks of the Mandate process during this path's rounds.
    mandate_ticks: u64,
    /// Ticks of the bench itself during this path's rounds.
    own_ticks: u64,
    /// Ticks of the floor proxy during this path's rounds (with `--floor`).
    floor_ticks: u64,
}

struct PathReport {
    stats: Stats,
    calls_per_s: f64,
    bench_cpu_us_per_call: f64,
}

impl PathRun {
    fn report(&self, tick_us: f64) -> PathReport {
        let calls = self.samples.len().max(1) as f64;
        PathReport {
            stats: stats(&self.samples),
            calls_per_s: if self.wall.is_zero() {
                0.0
            } else {
                self.samples.len() as f64 / self.wall.as_secs_f64()
            },
            bench_cpu_us_per_call: self.own_ticks as f64 * tick_us / calls,
        }
    }
}

fn path_json(p: &PathReport) -> Value {
    json!({
        "p50_us": round1(p.stats.p50),
        "p90_us": round1(p.stats.p90),
        "p99_us": round1(p.stats.p99),
        "mean_us": round1(p.stats.mean),
        "calls_per_s": p.calls_per_s.round(),
        "bench_cpu_us_per_call": round1(p.bench_cpu_us_per_call),
    })
}

/// The result of one (downstream, concurrency) level.
struct Level {
    downstream: Downstream,
    concurrency: usize,
    rounds: usize,
    /// Warmup calls per path.
    warmup: usize,
    direct: PathReport,
    via: PathReport,
    /// With `--floor`: the floor proxy's path and its CPU per call.
    floor: Option<(PathReport, f64)>,
    mandate_cpu_us_per_call: f64,
    /// Mandate's CPU during all measured rounds (direct ones too, which catch deferred
    /// work such as store flushes) per via call.
    mandate_cpu_us_per_call_all_rounds: f64,
    mandate_idle_cpu_us_per_s: f64,
    mandate_ticks: u64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    store_bytes_per_call: f64,
    wall: Duration,
}

impl Level {
    fn added_p50(&self) -> f64 {
        self.via.stats.p50 - self.direct.stats.p50
    }

    fn ratio(&self) -> f64 {
        if self.direct.calls_per_s > 0.0 {
            self.via.calls_per_s / self.direct.calls_per_s
        } else {
            0.0
        }
    }

    fn json(&self) -> Value {
        json!({
            "downstream": self.downstream.name(),
            "concurrency": self.concurrency,
            "rounds": self.rounds,
            "warmup": self.warmup,
            "direct": path_json(&self.direct),
            "via_mandate": path_json(&self.via),
            "added_p50_us": round1(self.added_p50()),
            "floor": self.floor.as_ref().map(|(f, cpu)| json!({
                "path": path_json(f),
                "added_p50_us": round1(f.stats.p50 - self.direct.stats.p50),
                "mandate_over_floor_p50_us": round1(self.via.stats.p50 - f.stats.p50),
                "throughput_ratio": if self.direct.calls_per_s > 0.0 {
                    ((f.calls_per_s / self.direct.calls_per_s) * 1000.0).round() / 1000.0
                } else {
                    0.0
                },
                "cpu_us_per_call": round1(*cpu),
            })),
            "throughput_ratio": (self.ratio() * 1000.0).round() / 1000.0,
            "mandate_cpu_us_per_call": round1(self.mandate_cpu_us_per_call),
            "mandate_cpu_us_per_call_all_rounds": round1(self.mandate_cpu_us_per_call_all_rounds),
            "mandate_idle_cpu_us_per_s": round1(self.mandate_idle_cpu_us_per_s),
            "mandate_cpu_ticks": self.mandate_ticks,
            "mandate_rss_mib": {
                "before": mib(self.rss_before_kib),
                "after": mib(self.rss_after_kib),
            },
            "store_bytes_per_call": self.store_bytes_per_call.round(),
            "wall_s": round1(self.wall.as_secs_f64()),
        })
    }
}

// ---------------------------------------------------------------------------
// One level
// ---------------------------------------------------------------------------

/// What a level needs from the surrounding run.
struct Target<'a> {
    downstream: Downstream,
    http: &'a reqwest::Client,
    /// HTTP downstream: the ledger's URL (one session per worker).
    direct_url: Option<&'a str>,
    /// Stdio downstream: the one connection all workers share.
    direct_shared: Option<&'a Peer<RoleClient>>,
    mission_url: String,
    token: String,
    /// HTTP downstream with `--floor`: the floor proxy's URL (in front of the ledger) and pid.
    floor: Option<(String, u32)>,
}

async fn run_level(
    opts: &Options,
    target: &Target<'_>,
    c: usize,
    mandate: &mut Proc,
    workspace: &Path,
    tick_us: f64,
) -> Result<Level> {
    let level_start = Instant::now();
    let pid = mandate.pid();
    let store_start = dir_bytes(workspace);

    let mut direct_clients = Vec::new();
    let mut direct_peers = Vec::with_capacity(c);
    for _ in 0..c {
        if let Some(shared) = target.direct_shared {
            direct_peers.push(shared.clone());
        } else {
            let url = target
                .direct_url
                .context("no direct URL for the HTTP downstream")?;
            let client = connect_http(target.http, url, None, opts.fresh_connections).await?;
            direct_peers.push(client.peer().clone());
            direct_clients.push(client);
        }
    }
    let mut floor_clients = Vec::new();
    let mut floor_peers = Vec::new();
    if let Some((url, _)) = &target.floor {
        for _ in 0..c {
            let client = connect_http(target.http, url, None, opts.fresh_connections)
                .await
                .context("connecting through the floor proxy")?;
            floor_peers.push(client.peer().clone());
            floor_clients.push(client);
        }
    }
    let mut via_clients = Vec::with_capacity(c);
    let mut via_peers = Vec::with_capacity(c);
    for _ in 0..c {
        let client = connect_http(
            target.http,
            &target.mission_url,
            Some(&target.token),
            opts.fresh_connections,
        )
        .await
        .context("connecting to Mandate")?;
        via_peers.push(client.peer().clone());
        via_clients.push(client);
    }

    // Warmup: every session makes at least one call.
    let warmup = opts.warmup.max(c);
    phase(&direct_peers, warmup)
        .await
        .context("direct warmup")?;
    phase(&via_peers, warmup)
        .await
        .context("via-Mandate warmup")?;
    if !floor_peers.is_empty() {
        phase(&floor_peers, warmup).await.context("floor warmup")?;
    }
    mandate.check_alive()?;

    let rss_before_kib = rss_kib(pid)?;
    let per_round = opts.block.saturating_mul(c).max(1);
    // The paths take turns within each round, in an order that rotates from round to round;
    // the number of rounds is a multiple of the number of paths (when possible), so each path
    // goes first equally often.
    #[derive(Clone, Copy, PartialEq)]
    enum Path {
        Direct,
        Via,
        Floor,
    }
    let mut paths = vec![Path::Direct, Path::Via];
    if !floor_peers.is_empty() {
        paths.push(Path::Floor);
    }
    let floor_pid = target.floor.as_ref().map(|(_, pid)| *pid);
    let rounds = opts.calls.div_ceil(per_round).max(paths.len());
    let rounds = rounds
        .div_ceil(paths.len())
        .saturating_mul(paths.len())
        .min(opts.calls);
    let mut direct = PathRun::default();
    let mut via = PathRun::default();
    let mut floor = PathRun::default();
    for round in 0..rounds {
        let n = opts.calls / rounds + usize::from(round < opts.calls % rounds);
        let mut order = paths.clone();
        order.rotate_left(round % paths.len());
        for turn in order {
            let (peers, run, what) = match turn {
                Path::Via => (&via_peers, &mut via, "via Mandate"),
                Path::Direct => (&direct_peers, &mut direct, "direct"),
                Path::Floor => (&floor_peers, &mut floor, "floor"),
            };
            let t0 = cpu_ticks(pid)?;
            let o0 = own_cpu_ticks()?;
            let f0 = floor_pid.map(cpu_ticks).transpose()?;
            let (samples, wall) = phase(peers, n)
                .await
                .with_context(|| format!("{what}, round {}", round + 1))?;
            run.own_ticks += own_cpu_ticks()?.saturating_sub(o0);
            run.mandate_ticks += cpu_ticks(pid)?.saturating_sub(t0);
            if let (Some(pid), Some(f0)) = (floor_pid, f0) {
                run.floor_ticks += cpu_ticks(pid)?.saturating_sub(f0);
            }
            run.samples.extend(samples);
            run.wall += wall;
        }
    }
    let rss_after_kib = rss_kib(pid)?;

    close_all(floor_clients).await;
    close_all(via_clients).await;
    close_all(direct_clients).await;
    // sled flushes every 200 ms; let the level's records reach the disk.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store_growth = dir_bytes(workspace).saturating_sub(store_start);
    mandate.check_alive()?;

    let via_calls = via.samples.len();
    Ok(Level {
        downstream: target.downstream,
        concurrency: c,
        rounds,
        warmup,
        mandate_cpu_us_per_call: via.mandate_ticks as f64 * tick_us / via_calls.max(1) as f64,
        mandate_cpu_us_per_call_all_rounds: (via.mandate_ticks + direct.mandate_ticks) as f64
            * tick_us
            / via_calls.max(1) as f64,
        mandate_idle_cpu_us_per_s: if direct.wall.is_zero() {
            0.0
        } else {
            direct.mandate_ticks as f64 * tick_us / direct.wall.as_secs_f64()
        },
        mandate_ticks: via.mandate_ticks,
        direct: direct.report(tick_us),
        via: via.report(tick_us),
        floor: (!floor.samples.is_empty()).then(|| {
            let cpu = floor.floor_ticks as f64 * tick_us / floor.samples.len() as f64;
            (floor.report(tick_us), cpu)
        }),
        rss_before_kib,
        rss_after_kib,
        store_bytes_per_call: store_growth as f64 / (via_calls + warmup) as f64,
        wall: level_start.elapsed(),
    })
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn print_human(levels: &[Level]) {
    println!(
        "{:<6} {:>3} | {:^23} | {:^23} | {:>7} | {:^23} | {:>9} | {:>13} | {:>7}",
        "",
        "",
        "direct µs",
        "via Mandate µs",
        "added",
        "calls/s",
        "Mandate",
        "Mandate RSS",
        "store"
    );
    println!(
        "{:<6} {:>3} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>7} | {:>8} {:>8} {:>5} | {:>9} | {:>13} | {:>7}",
        "down",
        "c",
        "p50",
        "p90",
        "p99",
        "p50",
        "p90",
        "p99",
        "p50 µs",
        "direct",
        "via",
        "ratio",
        "CPU µs/c",
        "MiB",
        "B/call"
    );
    for l in levels {
        let (d, v) = (&l.direct.stats, &l.via.stats);
        println!(
            "{:<6} {:>3} | {:>7.0} {:>7.0} {:>7.0} | {:>7.0} {:>7.0} {:>7.0} | {:>7.0} | {:>8.0} {:>8.0} {:>5.2} | {:>9.0} | {:>5.1} → {:>5.1} | {:>7.0}",
            l.downstream.name(),
            l.concurrency,
            d.p50,
            d.p90,
            d.p99,
            v.p50,
            v.p90,
            v.p99,
            l.added_p50(),
            l.direct.calls_per_s,
            l.via.calls_per_s,
            l.ratio(),
            l.mandate_cpu_us_per_call,
            mib(l.rss_before_kib),
            mib(l.rss_after_kib),
            l.store_bytes_per_call,
        );
    }
}

fn print_markdown(levels: &[Level]) {
    println!(
        "| downstream | c | direct p50 | via p50 | added p50 | p90 direct / via | p99 direct / via | direct calls/s | via calls/s | ratio | Mandate CPU/call | Mandate RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in levels {
        let (d, v) = (&l.direct.stats, &l.via.stats);
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | **{:.0} µs** | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.0} | {:.0} | {:.2}× | {:.0} µs | {:.1} → {:.1} MiB |",
            l.downstream.name(),
            l.concurrency,
            d.p50,
            v.p50,
            l.added_p50(),
            d.p90,
            v.p90,
            d.p99,
            v.p99,
            l.direct.calls_per_s,
            l.via.calls_per_s,
            l.ratio(),
            l.mandate_cpu_us_per_call,
            mib(l.rss_before_kib),
            mib(l.rss_after_kib),
        );
    }
}

/// With `--floor`: what the stack alone adds, and what Mandate adds on top of it.
fn print_floor(levels: &[Level]) {
    let floored: Vec<_> = levels
        .iter()
        .filter_map(|l| l.floor.as_ref().map(|f| (l, f)))
        .collect();
    if floored.is_empty() {
        return;
    }
    println!(
        "| downstream | c | direct p50 | floor proxy p50 (added) | Mandate p50 (added) | Mandate over the floor | floor calls/s ratio | floor proxy CPU/call | Mandate CPU/call |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (l, (floor, cpu)) in floored {
        let direct = l.direct.stats.p50;
        let floor_ratio = if l.direct.calls_per_s > 0.0 {
            floor.calls_per_s / l.direct.calls_per_s
        } else {
            0.0
        };
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs (+{:.0}) | {:.0} µs (+{:.0}) | **+{:.0} µs** | {:.2}× | {:.0} µs | {:.0} µs |",
            l.downstream.name(),
            l.concurrency,
            direct,
            floor.stats.p50,
            floor.stats.p50 - direct,
            l.via.stats.p50,
            l.via.stats.p50 - direct,
            l.via.stats.p50 - floor.stats.p50,
            floor_ratio,
            cpu,
            l.mandate_cpu_us_per_call,
        );
    }
    println!();
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() -> std::process::ExitCode {
    let outcome = parse_args().and_then(|opts| {
        let mut rt = if opts.client_threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(opts.client_threads);
            b
        };
        let rt = rt
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?;
        rt.block_on(async {
            tokio::select! {
                r = run(&opts) => r,
                _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            }
        })
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(opts: &Options) -> Result<()> {
    let (ledger_bin, mandate_bin) = binaries()?;
    let ticks_per_sec = clock_ticks_per_sec();
    let tick_us = 1e6 / ticks_per_sec as f64;
    let want_http = opts.downstreams.contains(&Downstream::Http);
    let want_stdio = opts.downstreams.contains(&Downstream::Stdio);

    // Declared first so it is removed after every process is gone.
    let workspace = tempfile::tempdir().context("cannot create a temp workspace")?;
    let ws = workspace.path();

    let mut http_ledger = None;
    let mut ledger_url = None;
    if want_http {
        let mut cmd = Command::new(&ledger_bin);
        cmd.args(["--http", "127.0.0.1:0"]);
        let (proc, first) = Proc::spawn("ledger", cmd)?;
        let url = first
            .strip_prefix("ledger listening on ")
            .with_context(|| format!("unexpected first line from ledger: {first:?}"))?
            .to_owned();
        http_ledger = Some(proc);
        ledger_url = Some(url);
    }

    // The floor proxy, in front of the same ledger.
    let mut floor_proxy = None;
    if let (true, Some(ledger)) = (opts.floor, ledger_url.as_deref()) {
        let bin = ledger_bin.with_file_name("floor_proxy");
        if !bin.is_file() {
            bail!("{} is missing: {BUILD_HINT}", bin.display());
        }
        let origin =
            reqwest::Url::parse(ledger).with_context(|| format!("the ledger's URL {ledger:?}"))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--to", origin.as_str()]);
        let (proc, first) = Proc::spawn("floor proxy", cmd)?;
        let listening = first
            .strip_prefix("floor proxy listening on ")
            .with_context(|| format!("unexpected first line from the floor proxy: {first:?}"))?;
        let mut url = reqwest::Url::parse(listening)
            .with_context(|| format!("the floor proxy's URL {listening:?}"))?;
        url.set_path(origin.path());
        floor_proxy = Some((proc, url.to_string()));
    }

    write_workspace(
        ws,
        ledger_url.as_deref(),
        want_stdio.then_some(ledger_bin.as_path()),
        &opts.exchange,
        opts.worker_threads.as_deref(),
    )?;
    run_mandate(&mandate_bin, ws, &["pin"])?;
    for &downstream in &opts.downstreams {
        check_pinned(ws, downstream.manifest())?;
    }
    let mut cmd = mandate_cmd(&mandate_bin, ws);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let (mut mandate, first) = Proc::spawn("mandate", cmd)?;
    let mandate_url = first
        .strip_prefix("mandate listening on ")
        .with_context(|| {
            format!(
                "unexpected first line from mandate serve: {first:?}\n{}",
                mandate.log()
            )
        })?
        .trim_end_matches('/')
        .to_owned();
    let rss_start_kib = rss_kib(mandate.pid())?;
    let store_start = dir_bytes(ws);

    let http = http_client()?;
    let stdio_direct = if want_stdio {
        Some(connect_stdio(&ledger_bin).await?)
    } else {
        None
    };

    eprintln!(
        "bench: mandate {mandate_url} (pid {}); downstreams {}; concurrency {:?}; \
         {} calls per path per level (+{} warmup), {} calls per worker per round; \
         load generator: {} thread(s)",
        mandate.pid(),
        opts.downstreams
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(", "),
        opts.concurrency,
        opts.calls,
        opts.warmup,
        opts.block,
        opts.client_threads,
    );

    let log_lines_before = mandate.log_lines();
    let load_start = loadavg();
    let run_start = Instant::now();
    let mut levels = Vec::new();
    for &downstream in &opts.downstreams {
        let mission = downstream.mission();
        let token = run_mandate(
            &mandate_bin,
            ws,
            &[
                "token",
                "--sub",
                "bench@acme.example",
                "--tenant",
                "acme",
                "--agent",
                "bench",
                "--mission",
                mission,
                "--ttl",
                "1h",
            ],
        )?;
        let target = Target {
            downstream,
            http: &http,
            direct_url: ledger_url.as_deref(),
            direct_shared: match downstream {
                Downstream::Stdio => stdio_direct.as_ref().map(|c| c.peer()),
                Downstream::Http => None,
            },
            mission_url: format!("{mandate_url}/mcp/{mission}"),
            token,
            floor: match (downstream, &floor_proxy) {
                (Downstream::Http, Some((proc, url))) => Some((url.clone(), proc.pid())),
                _ => None,
            },
        };
        for &c in &opts.concurrency {
            let level = match run_level(opts, &target, c, &mut mandate, ws, tick_us).await {
                Ok(level) => level,
                Err(e) => {
                    let log = mandate.log();
                    let log = if log.trim().is_empty() {
                        String::new()
                    } else {
                        format!("\n--- mandate log (tail) ---\n{log}")
                    };
                    bail!(
                        "{} downstream, concurrency {c}: {e:#}{log}",
                        downstream.name()
                    );
                }
            };
            eprintln!(
                "bench: {} c={c}: direct p50 {:.0} µs, via p50 {:.0} µs, {:.0} vs {:.0} calls/s ({:.1} s)",
                downstream.name(),
                level.direct.stats.p50,
                level.via.stats.p50,
                level.direct.calls_per_s,
                level.via.calls_per_s,
                level.wall.as_secs_f64()
            );
            levels.push(level);
        }
    }
    let wall = run_start.elapsed();
    let rss_end_kib = rss_kib(mandate.pid())?;
    let rss_peak_kib = status_kib(mandate.pid(), "VmHWM:")?;
    let log_lines = mandate.log_lines().saturating_sub(log_lines_before);
    let load_end = loadavg();
    let via_calls: usize = levels.iter().map(|l| opts.calls + l.warmup).sum();
    let store_growth = dir_bytes(ws).saturating_sub(store_start);
    let store_per_call = store_growth as f64 / via_calls.max(1) as f64;

    println!();
    println!(
        "Mandate overhead per tool call: get_invoice, auth + input/output schema + audit on; \
         {} measured calls per path per level (+{} warmup), {:.0} s; load average {load_start} \
         at start, {load_end} at end ({} CPUs)",
        opts.calls,
        opts.warmup,
        wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!();
    print_human(&levels);
    println!();
    println!(
        "Mandate RSS: {:.1} MiB at start, {:.1} MiB at end, peak {:.1} MiB. Store on disk: \
         +{:.1} MiB over {via_calls} via calls ({store_per_call:.0} B per call). \
         Mandate log lines during the run (MANDATE_LOG=warn): {log_lines}",
        mib(rss_start_kib),
        mib(rss_end_kib),
        mib(rss_peak_kib),
        mib(store_growth / 1024),
    );
    println!();
    print_markdown(&levels);
    println!();
    print_floor(&levels);

    let report = json!({
        "calls": opts.calls,
        "warmup": opts.warmup,
        "block": opts.block,
        "client_threads": opts.client_threads,
        "fresh_connections": opts.fresh_connections,
        "clk_tck": ticks_per_sec,
        "levels": levels.iter().map(Level::json).collect::<Vec<_>>(),
        "mandate_rss_mib": {
            "start": mib(rss_start_kib),
            "end": mib(rss_end_kib),
            "peak": mib(rss_peak_kib),
        },
        "mandate_log_lines": log_lines,
        "store_bytes_per_call": store_per_call.round(),
        "loadavg": { "start": load_start, "end": load_end },
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "wall_s": round1(wall.as_secs_f64()),
    });
    println!("{report}");
    if let Some(path) = &opts.json {
        let pretty = serde_json::to_string_pretty(&report).context("cannot format the report")?;
        std::fs::write(path, pretty + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    if let Some(client) = stdio_direct {
        let _ = client.cancel().await;
    }
    drop(mandate);
    drop(http_ledger);
    Ok(())
}

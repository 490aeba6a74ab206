//! # Mandate overhead benchmark
//!
//! Measures what Mandate adds to one tool call compared with calling the same
//! downstream directly.
//!
//! ```text
//! cargo build --release --bins --examples
//! target/release/examples/bench [--calls N] [--warmup W] [--block B] [--fresh-connections]
//! ```
//!
//! It starts the sample ledger over streamable HTTP (`ledger --http 127.0.0.1:0`),
//! writes a temporary Mandate workspace with one HTTP tool manifest and one mission
//! (`finance/prod/bench`, tool `finance/ledger/get_invoice`), runs `mandate pin`,
//! starts `mandate serve --listen 127.0.0.1:0` (`MANDATE_LOG=warn`) and mints a
//! token. Then two MCP clients call `get_invoice {"invoice_id": "INV-1001"}`
//! sequentially: one directly at the ledger, one through Mandate. After `W` warmup
//! calls each, `N` measured calls each run in interleaved blocks of `B` (direct
//! then via Mandate, then the other way round, and so on), so machine noise hits
//! both sides alike.
//!
//! Reported: latency median/p90/p99 for both paths and the added median; the
//! Mandate process's CPU time (utime + stime from `/proc/<pid>/stat`) during the
//! via-Mandate blocks per call, and during the direct blocks (when Mandate is idle)
//! per second; Mandate's RSS after warmup, at the midpoint and at the end; how much
//! Mandate's store (audit log) grew on disk per call. The last line is the same
//! report as one JSON object.
//!
//! Both clients use a pooled `reqwest` client with `TCP_NODELAY` (as Mandate does
//! for its downstreams); `--fresh-connections` uses rmcp's default client instead,
//! which opens a new connection per request. Linux only (`/proc`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;

const BUILD_HINT: &str = "build them with `cargo build --release --bins --examples` \
    (or `cargo build --bins --examples` for target/debug)";

struct Options {
    calls: usize,
    warmup: usize,
    block: usize,
    fresh_connections: bool,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        calls: 5000,
        warmup: 200,
        block: 100,
        fresh_connections: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize> {
            let v = args
                .next()
                .with_context(|| format!("{name} needs a number"))?;
            v.parse()
                .with_context(|| format!("{name}: {v:?} is not a number"))
        };
        match arg.as_str() {
            "--calls" => opts.calls = number("--calls")?,
            "--warmup" => opts.warmup = number("--warmup")?,
            "--block" => opts.block = number("--block")?.max(1),
            "--fresh-connections" => opts.fresh_connections = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench [--calls N (5000)] [--warmup W (200)] [--block B (100)] [--fresh-connections]"
                );
                std::process::exit(0);
            }
            other => bail!("unexpected argument {other:?} (see --help)"),
        }
    }
    if opts.calls == 0 {
        bail!("--calls must be at least 1");
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A child process that is killed when dropped; its stderr is collected.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
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
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let mut proc = Proc { child, stderr };
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

    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
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

fn write_workspace(root: &Path, ledger_url: &str) -> Result<()> {
    write(
        root,
        "tool-manifests/finance/ledger.toml",
        &format!(
            r#"description = "Acme ledger (benchmark)"
environments = ["prod"]
region = "eu-west-1"
timeout = "30s"

[transport]
kind = "http"
url = "{ledger_url}"

[[tools]]
name = "get_invoice"
effect = "read"
"#
        ),
    )?;
    write(
        root,
        "missions/finance/prod/bench.toml",
        r#"description = "benchmark mission"
tenant = "acme"
owner = "x"
expires = 2099-12-31
agents = ["bench"]
tools = ["finance/ledger/get_invoice"]
"#,
    )
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/<pid>/stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short /proc/<pid>/stat")?
            .parse::<u64>()
            .context("bad number in /proc/<pid>/stat")
    };
    Ok(field(14)? + field(15)?)
}

/// VmRSS in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
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

async fn connect(url: &str, token: Option<&str>, fresh_connections: bool) -> Result<Client> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = token {
        config = config.auth_header(token.to_owned());
    }
    let client = if fresh_connections {
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
    } else {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .context("cannot build the HTTP client")?;
        ().serve(StreamableHttpClientTransport::with_client(http, config))
            .await
    };
    client.with_context(|| format!("cannot connect to {url}"))
}

/// One `get_invoice` call; returns its wall time.
async fn call(client: &Client) -> Result<Duration> {
    let mut args = serde_json::Map::new();
    args.insert("invoice_id".into(), json!("INV-1001"));
    let params = CallToolRequestParams::new("get_invoice").with_arguments(args);
    let start = Instant::now();
    let result = client.peer().call_tool(params).await;
    let elapsed = start.elapsed();
    let result = result.context("tools/call get_invoice failed")?;
    if result.is_error == Some(true) || result.structured_content.is_none() {
        bail!("get_invoice returned an unexpected result: {result:?}");
    }
    Ok(elapsed)
}

// ---------------------------------------------------------------------------
// Statistics and report
// ---------------------------------------------------------------------------

struct Stats {
    median: f64,
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
        median: pct(50.0),
        p90: pct(90.0),
        p99: pct(99.0),
        mean,
    }
}

fn stats_json(s: &Stats) -> serde_json::Value {
    json!({
        "median_us": round1(s.median),
        "p90_us": round1(s.p90),
        "p99_us": round1(s.p99),
        "mean_us": round1(s.mean),
    })
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn mib(kib: u64) -> f64 {
    round1(kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let opts = parse_args()?;
    let (ledger_bin, mandate_bin) = binaries()?;
    let ticks_per_sec = clock_ticks_per_sec();

    // Declared first so it is removed after both processes are gone.
    let workspace = tempfile::tempdir().context("cannot create a temp workspace")?;
    let ws = workspace.path();

    let mut cmd = Command::new(&ledger_bin);
    cmd.args(["--http", "127.0.0.1:0"]);
    let (ledger, first) = Proc::spawn("ledger", cmd)?;
    let ledger_url = first
        .strip_prefix("ledger listening on ")
        .with_context(|| format!("unexpected first line from ledger: {first:?}"))?
        .to_owned();

    write_workspace(ws, &ledger_url)?;
    run_mandate(&mandate_bin, ws, &["pin"])?;
    let mut cmd = mandate_cmd(&mandate_bin, ws);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let (mandate, first) = Proc::spawn("mandate", cmd)?;
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
            "finance/prod/bench",
            "--ttl",
            "1h",
        ],
    )?;
    let mission_url = format!("{mandate_url}/mcp/finance/prod/bench");

    let direct = connect(&ledger_url, None, opts.fresh_connections).await?;
    let via = connect(&mission_url, Some(&token), opts.fresh_connections)
        .await
        .with_context(|| format!("mandate log:\n{}", mandate.log()))?;

    eprintln!(
        "bench: ledger {ledger_url} (pid {}), mandate {mission_url} (pid {}); {} warmup + {} calls each, blocks of {}",
        ledger.pid(),
        mandate.pid(),
        opts.warmup,
        opts.calls,
        opts.block
    );

    for _ in 0..opts.warmup {
        call(&direct).await?;
        call(&via)
            .await
            .with_context(|| format!("mandate log:\n{}", mandate.log()))?;
    }
    let log_lines_before = mandate.log().lines().count();
    let rss_warm = rss_kib(mandate.pid())?;
    let store_warm = dir_bytes(ws);
    let mut rss_mid = None;

    let mut direct_samples = Vec::with_capacity(opts.calls);
    let mut via_samples = Vec::with_capacity(opts.calls);
    let mut via_ticks = 0u64;
    let mut idle_ticks = 0u64;
    let mut direct_wall = Duration::ZERO;
    let mut via_wall = Duration::ZERO;
    let measure_start = Instant::now();
    let mut round = 0usize;
    while direct_samples.len() < opts.calls || via_samples.len() < opts.calls {
        // ABBA order: direct first on even rounds, via Mandate first on odd ones.
        let via_first = !round.is_multiple_of(2);
        for via_turn in [via_first, !via_first] {
            let (client, samples, ticks, wall) = if via_turn {
                (&via, &mut via_samples, &mut via_ticks, &mut via_wall)
            } else {
                (
                    &direct,
                    &mut direct_samples,
                    &mut idle_ticks,
                    &mut direct_wall,
                )
            };
            let n = opts.block.min(opts.calls - samples.len());
            let t0 = cpu_ticks(mandate.pid())?;
            let w0 = Instant::now();
            for _ in 0..n {
                samples.push(call(client).await?);
            }
            *wall += w0.elapsed();
            *ticks += cpu_ticks(mandate.pid())?.saturating_sub(t0);
        }
        round += 1;
        if rss_mid.is_none() && via_samples.len() * 2 >= opts.calls {
            rss_mid = Some(rss_kib(mandate.pid())?);
        }
    }
    let measure_wall = measure_start.elapsed();
    let rss_end = rss_kib(mandate.pid())?;
    let rss_mid = rss_mid.unwrap_or(rss_end);
    // sled flushes every 200 ms; let the last records reach the disk.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store_growth = dir_bytes(ws).saturating_sub(store_warm);
    let store_per_call = store_growth as f64 / opts.calls as f64;
    let log_lines = mandate
        .log()
        .lines()
        .count()
        .saturating_sub(log_lines_before);

    let d = stats(&direct_samples);
    let v = stats(&via_samples);
    let tick_us = 1e6 / ticks_per_sec as f64;
    let cpu_per_call = via_ticks as f64 * tick_us / opts.calls as f64;
    let idle_cpu_per_sec = if direct_wall.is_zero() {
        0.0
    } else {
        idle_ticks as f64 * tick_us / direct_wall.as_secs_f64()
    };
    // Idle CPU Mandate would have burnt anyway during the via blocks.
    let idle_share = idle_cpu_per_sec * via_wall.as_secs_f64() / opts.calls as f64;

    println!("Mandate overhead per tool call (get_invoice, sequential, one client per path)");
    println!(
        "  calls:                 {} per path (+{} warmup), blocks of {}, {:.1} s",
        opts.calls,
        opts.warmup,
        opts.block,
        measure_wall.as_secs_f64()
    );
    println!(
        "  direct to ledger:      median {:8.1} µs   p90 {:8.1} µs   p99 {:8.1} µs   mean {:8.1} µs",
        d.median, d.p90, d.p99, d.mean
    );
    println!(
        "  via Mandate:           median {:8.1} µs   p90 {:8.1} µs   p99 {:8.1} µs   mean {:8.1} µs",
        v.median, v.p90, v.p99, v.mean
    );
    println!(
        "  added by Mandate:      median {:8.1} µs   p90 {:8.1} µs   p99 {:8.1} µs",
        v.median - d.median,
        v.p90 - d.p90,
        v.p99 - d.p99
    );
    println!(
        "  Mandate CPU:           {cpu_per_call:.1} µs/call ({via_ticks} ticks of {tick_us:.0} µs over {} calls); idle {idle_cpu_per_sec:.0} µs/s (≈{idle_share:.1} µs/call of the above)",
        opts.calls
    );
    println!(
        "  Mandate RSS:           {:.1} MiB after warmup, {:.1} MiB at midpoint, {:.1} MiB at end",
        mib(rss_warm),
        mib(rss_mid),
        mib(rss_end)
    );
    println!(
        "  Mandate store on disk: +{:.1} MiB during the run ({store_per_call:.0} B per via-Mandate call)",
        mib(store_growth / 1024)
    );
    println!("  Mandate log lines during the run (MANDATE_LOG=warn): {log_lines}");
    let report = json!({
        "calls": opts.calls,
        "warmup": opts.warmup,
        "block": opts.block,
        "fresh_connections": opts.fresh_connections,
        "direct": stats_json(&d),
        "via_mandate": stats_json(&v),
        "added_median_us": round1(v.median - d.median),
        "mandate_cpu_us_per_call": round1(cpu_per_call),
        "mandate_idle_cpu_us_per_s": round1(idle_cpu_per_sec),
        "mandate_cpu_ticks": via_ticks,
        "clk_tck": ticks_per_sec,
        "mandate_rss_mib": {
            "after_warmup": mib(rss_warm),
            "midpoint": mib(rss_mid),
            "end": mib(rss_end),
        },
        "mandate_store_bytes_per_call": store_per_call.round(),
        "mandate_log_lines": log_lines,
        "wall_s": round1(measure_wall.as_secs_f64()),
    });
    println!("{report}");

    if let Err(e) = direct.cancel().await {
        eprintln!("bench: closing the direct client: {e}");
    }
    if let Err(e) = via.cancel().await {
        eprintln!("bench: closing the Mandate client: {e}");
    }
    drop(mandate);
    drop(ledger);
    Ok(())
}

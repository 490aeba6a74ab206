//! The loopback admin API and `mandate token`: the credential is checked before anything about
//! the request is revealed, the CLI reaches the server whichever address family it listens on,
//! and a broker-wide token is only minted when some mission would accept it.

use crate::common::*;

/// Two missions: `finance/prod/review` (acme, agent bot) and `hr/prod/other` (globex, agent bot).
/// No tools, so the broker starts no downstream.
fn two_missions() -> Workspace {
    let ws = Workspace::new();
    ws.mission("finance/prod/review", "", "");
    ws.permit_all("hr/prod/other");
    ws.write(
        "missions/hr/prod/other.toml",
        "description = \"x\"\ntenant = \"globex\"\nowner = \"o\"\nexpires = 2099-01-01\nagents = [\"bot\"]\ntools = []\n",
    );
    ws
}

fn admin_credential(ws: &Workspace) -> serde_json::Value {
    let text = std::fs::read_to_string(ws.path().join(".mandate/admin.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_checks_the_credential_before_reading_the_body() {
    let ws = two_missions();
    let server = ws.serve();
    let http = reqwest::Client::new();
    let url = format!("{}/admin/token", server.url);
    // No credential: the same 401 whatever the body, so nothing about its shape leaks.
    for (content_type, body) in [
        ("application/json", "{}"),
        ("application/json", "not json"),
        ("text/plain", "{}"),
    ] {
        let r = http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{content_type} {body}");
        assert_eq!(r.text().await.unwrap(), "admin credential required\n");
    }
    let r = http
        .post(&url)
        .bearer_auth("wrong")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // With the credential, a malformed body is a 400 that says what is wrong.
    let cred = admin_credential(&ws);
    let token = cred["token"].as_str().unwrap();
    let r = http
        .post(&url)
        .bearer_auth(token)
        .json(&serde_json::json!({"subject": "alice@acme.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("invalid token request: ") && text.contains("`tenant`"),
        "{text}"
    );
    // The export's query is not looked at before the credential either.
    let r = http
        .get(format!("{}/admin/audit/export?tenant=acme", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop();
}

/// Whether this machine has an IPv6 loopback; the IPv6 tests say so and skip when it has none.
fn ipv6_loopback() -> bool {
    match std::net::TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("note: skipping: this machine has no IPv6 loopback ([::1]: {e})");
            false
        }
    }
}

/// Starts the broker on `listen`, then mints a token and verifies the audit log through the
/// admin API (the server owns the store, so the CLI must reach it).
/// Listening beyond loopback needs TLS and the public URL clients use.
fn exposed(ws: &Workspace) {
    certificate(ws);
    ws.write(
        "mandate.toml",
        "[server]\npublic_url = \"https://mandate.example:8443\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
    );
}

fn cli_works_through_admin_api_on(listen: &str, expected_admin_url: &str) {
    let ws = two_missions();
    if !listen.starts_with("127.") && !listen.starts_with("[::1]") {
        exposed(&ws);
    }
    let server = ws.serve_on(listen);
    let cred = admin_credential(&ws);
    let url = cred["url"].as_str().unwrap();
    assert!(
        url.starts_with(expected_admin_url),
        "admin URL `{url}` for --listen {listen}"
    );
    let token = ws.token(Some("finance/prod/review"));
    assert_eq!(token.split('.').count(), 3, "{token}");
    let out = ws.mandate(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let records = export_records(&ws, &[]);
    assert!(records.iter().any(|r| r["kind"] == "token_issued"));
    server.stop();
}

#[test]
fn cli_reaches_the_admin_api_on_ipv6_loopback() {
    if !ipv6_loopback() {
        return;
    }
    cli_works_through_admin_api_on("[::1]:0", "http://[::1]:");
}

#[test]
fn cli_reaches_the_admin_api_on_ipv6_any() {
    if !ipv6_loopback() {
        return;
    }
    cli_works_through_admin_api_on("[::]:0", "http://[::1]:");
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv4_mapped_loopback_peer_is_loopback_on_a_dual_stack_listener() {
    if !ipv6_loopback() {
        return;
    }
    if std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "1") {
        eprintln!("note: skipping: `[::]` listeners here take no IPv4 (net.ipv6.bindv6only = 1)");
        return;
    }
    let ws = two_missions();
    exposed(&ws);
    let cert = std::fs::read(ws.path().join("cert.pem")).unwrap();
    // A free port for the TLS listener (the CLI's plain port is on `[::1]` only).
    let port = std::net::TcpListener::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = ws.serve_on(&format!("[::]:{port}"));
    let cred = admin_credential(&ws);
    // Dialled over IPv4, the peer arrives as `::ffff:127.0.0.1`.
    let r = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{port}/admin/audit/verify"))
        .bearer_auth(cred["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
}

#[test]
fn cli_reaches_the_admin_api_on_ipv4_any() {
    cli_works_through_admin_api_on("0.0.0.0:0", "http://127.0.0.1:");
}

fn token_args<'a>(tenant: &'a str, agent: &'a str) -> Vec<&'a str> {
    vec![
        "token",
        "--sub",
        "alice@acme.example",
        "--tenant",
        tenant,
        "--agent",
        agent,
    ]
}

/// `mandate token` without `--mission`, with or without a running server.
fn broker_wide_tokens_need_an_accepting_mission(ws: &Workspace) {
    // An agent no mission of the tenant lists: refused, naming the tenant's missions.
    let out = ws.mandate(&token_args("acme", "rogue-bot"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no mission accepts agent `rogue-bot` of tenant `acme`")
            && stderr.contains("finance/prod/review (agents: bot)")
            && !stderr.contains("hr/prod/other"),
        "{stderr}"
    );
    // A tenant without missions: refused, saying so.
    let out = ws.mandate(&token_args("initech", "bot"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no mission has tenant `initech`"),
        "{stderr}"
    );
    // Accepted: stdout is the bare token; stderr says what it grants.
    let out = ws.mandate(&token_args("acme", "bot"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(stdout.trim().split('.').count(), 3, "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("grants agent `bot` of tenant `acme` the mission(s): finance/prod/review")
            && !stderr.contains("hr/prod/other"),
        "{stderr}"
    );
}

#[test]
fn broker_wide_token_needs_a_mission_that_accepts_it() {
    let ws = two_missions();
    broker_wide_tokens_need_an_accepting_mission(&ws);
    // Refusals issue nothing.
    let issued = audit_records(&ws)
        .iter()
        .filter(|r| r["kind"] == "token_issued")
        .count();
    assert_eq!(issued, 1);
}

#[test]
fn broker_wide_token_needs_a_mission_that_accepts_it_through_the_server() {
    let ws = two_missions();
    let server = ws.serve();
    broker_wide_tokens_need_an_accepting_mission(&ws);
    server.stop();
}

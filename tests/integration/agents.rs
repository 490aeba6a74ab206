//! The agent registry (onboarding, lifecycle through the CLI with the broker stopped and
//! running, refusals on every request, the zombie sweep) and the embedded OAuth authorization
//! server (`/oauth/token` client_credentials with client secrets and `private_key_jwt`, RFC 8414
//! metadata), including an unmodified Python `mcp` SDK client that finds it from a 401 alone.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use crate::common::*;

const MISSION: &str = "finance/prod/review";
const OTHER: &str = "finance/prod/other";

/// The ledger with scopes on two tools, and missions `finance/prod/review` and
/// `finance/prod/other` (tenant acme) accepting `agents`.
fn agents_ws(agents: &[&str], settings: &str) -> Workspace {
    let ws = Workspace::new();
    ws.ledger(&[]);
    let path = ws.path().join("tool-manifests/finance/ledger.toml");
    let manifest = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "name = \"list_invoices\"\neffect = \"read\"",
            "name = \"list_invoices\"\neffect = \"read\"\nscopes = [\"ledger.read\"]",
        )
        .replace(
            "name = \"approve_invoice\"\neffect = \"write\"",
            "name = \"approve_invoice\"\neffect = \"write\"\nscopes = [\"ledger.write\"]",
        );
    std::fs::write(&path, manifest).unwrap();
    let agents: Vec<String> = agents.iter().map(|a| format!("\"{a}\"")).collect();
    for (id, tools) in [
        (
            MISSION,
            r#""finance/ledger/list_invoices", "finance/ledger/approve_invoice""#,
        ),
        (OTHER, r#""finance/ledger/get_invoice""#),
    ] {
        ws.write(
            &format!("missions/{id}.toml"),
            &format!(
                "description = \"test\"\ntenant = \"acme\"\nowner = \"alice@acme.example\"\nexpires = 2099-12-31\nagents = [{}]\ntools = [{tools}]\n",
                agents.join(", ")
            ),
        );
    }
    if !settings.is_empty() {
        ws.write("mandate.toml", settings);
    }
    ws.pin();
    ws
}

/// `mandate agents <args>`; panics unless it succeeds.
fn agents_ok(ws: &Workspace, args: &[&str]) -> String {
    let mut all = vec!["agents"];
    all.extend(args);
    let out = ws.mandate(&all);
    assert!(
        out.status.success(),
        "mandate agents {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `mandate agents <args>`, expected to fail; its stderr.
fn agents_err(ws: &Workspace, args: &[&str]) -> String {
    let mut all = vec!["agents"];
    all.extend(args);
    let out = ws.mandate(&all);
    assert!(!out.status.success(), "mandate agents {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// `mandate agents list --json`, by id.
fn list(ws: &Workspace) -> std::collections::BTreeMap<String, Value> {
    let v: Vec<Value> = serde_json::from_str(&agents_ok(ws, &["list", "--json"])).unwrap();
    v.into_iter()
        .map(|a| (a["id"].as_str().unwrap().to_owned(), a))
        .collect()
}

/// Onboards `id` with a client secret for `missions`; the secret.
fn onboard_secret(ws: &Workspace, id: &str, missions: &[&str], extra: &[&str]) -> String {
    let mut args = vec![
        "onboard",
        id,
        "--tenant",
        "acme",
        "--owner",
        "dana@acme.example",
        "--json",
    ];
    for m in missions {
        args.extend(["--mission", m]);
    }
    args.extend(extra);
    let v: Value = serde_json::from_str(&agents_ok(ws, &args)).unwrap();
    assert_eq!(v["agent"]["credential"]["kind"], "client_secret");
    v["client_secret"].as_str().unwrap().to_owned()
}

/// A POST `initialize` to a mission: (status, body).
async fn initialize(url: &str, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn call(name: &str) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = Some(serde_json::Map::new());
    p
}

fn lifecycle_records(ws: &Workspace) -> Vec<Value> {
    audit_records(ws)
        .into_iter()
        .filter(|r| r["kind"] == "agent_lifecycle")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_lifecycle_through_the_cli_with_the_broker_stopped_and_running() {
    let ws = agents_ws(&["bot", "sdk-bot"], "");
    // Broker stopped: the CLI opens the store; agents the missions name are declared.
    let secret = onboard_secret(&ws, "sdk-bot", &[MISSION], &["--review", "2099-01-01"]);
    assert!(secret.len() >= 40, "{secret}");
    let agents = list(&ws);
    assert_eq!(agents["bot"]["origin"], "declared_by_mission");
    assert_eq!(agents["bot"]["missions"], json!([OTHER, MISSION]));
    assert_eq!(agents["sdk-bot"]["origin"], "onboarded");
    assert_eq!(agents["sdk-bot"]["status"], "active");
    // Only the hash is stored.
    let stored = serde_json::to_string(&agents["sdk-bot"]).unwrap();
    assert!(!stored.contains(&secret), "{stored}");
    assert!(
        agents_err(
            &ws,
            &[
                "onboard",
                "sdk-bot",
                "--tenant",
                "acme",
                "--owner",
                "o",
                "--mission",
                MISSION
            ]
        )
        .contains("already onboarded")
    );
    assert!(
        agents_err(
            &ws,
            &[
                "onboard",
                "x",
                "--tenant",
                "acme",
                "--owner",
                "o",
                "--mission",
                MISSION
            ]
        )
        .contains("does not accept agent `x`")
    );
    agents_ok(&ws, &["suspend", "sdk-bot", "--reason", "key rotation"]);
    assert_eq!(list(&ws)["sdk-bot"]["status"], "suspended");
    assert!(agents_ok(&ws, &["list"]).contains("SUSPENDED (key rotation)"));
    agents_ok(&ws, &["resume", "sdk-bot"]);
    assert_eq!(list(&ws)["sdk-bot"]["status"], "active");

    // Broker running: the same commands go through the admin API and act at once.
    let server = ws.serve();
    let token = ws.token(Some(MISSION));
    let url = server.mission_url(MISSION);
    assert_eq!(initialize(&url, &token).await.0, 200);
    let out = agents_ok(&ws, &["suspend", "bot", "--reason", "incident 42"]);
    assert!(
        out.contains("agent `bot` is suspended (incident 42)"),
        "{out}"
    );
    let (status, body) = initialize(&url, &token).await;
    assert_eq!(status, 403);
    assert!(
        body.contains("agent `bot` is suspended (incident 42)"),
        "{body}"
    );
    agents_ok(&ws, &["resume", "bot"]);
    assert_eq!(initialize(&url, &token).await.0, 200);
    assert!(list(&ws)["bot"]["last_seen"].is_u64());
    agents_ok(&ws, &["offboard", "bot", "--reason", "retired"]);
    assert!(agents_err(&ws, &["resume", "bot"]).contains("was offboarded"));
    let (status, body) = initialize(&url, &token).await;
    assert_eq!(status, 403);
    assert!(body.contains("agent `bot` was offboarded"), "{body}");
    server.stop();

    // Configuration never resurrects an offboarded agent.
    let server = ws.serve();
    let token = ws.token(Some(MISSION));
    let (status, body) = initialize(&server.mission_url(MISSION), &token).await;
    assert_eq!(status, 403, "{body}");
    server.stop();
    assert_eq!(list(&ws)["bot"]["status"], "offboarded");

    let outcomes: Vec<(String, String)> = lifecycle_records(&ws)
        .iter()
        .map(|r| {
            (
                r["agent"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (agent, outcome) in [
        ("bot", "onboarded"),
        ("sdk-bot", "onboarded"),
        ("sdk-bot", "suspended"),
        ("sdk-bot", "resumed"),
        ("bot", "suspended"),
        ("bot", "resumed"),
        ("bot", "offboarded"),
    ] {
        assert!(
            outcomes.contains(&(agent.to_owned(), outcome.to_owned())),
            "no `{outcome}` record for {agent}: {outcomes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unregistered_expired_and_wrong_mission_agents_are_refused_with_their_reason() {
    let ws = agents_ws(
        &["bot", "ghost", "late"],
        "[agents]\nregister_mission_agents = false\n",
    );
    onboard_secret(&ws, "bot", &[MISSION], &[]);
    let soon =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(3))
            .to_string();
    onboard_secret(&ws, "late", &[MISSION], &["--expires", &soon]);
    assert!(!list(&ws).contains_key("ghost"));
    let server = ws.serve();
    let url = server.mission_url(MISSION);
    let token_of = |agent: &str, mission: &str| {
        ws.token_for("alice@acme.example", "acme", agent, Some(mission))
    };

    assert_eq!(initialize(&url, &token_of("bot", MISSION)).await.0, 200);
    let (status, body) = initialize(&url, &token_of("ghost", MISSION)).await;
    assert_eq!(status, 403);
    assert!(body.contains("agent `ghost` is not registered"), "{body}");
    // The mission lists `bot`, but `bot` was onboarded for the other mission only.
    let (status, body) = initialize(&server.mission_url(OTHER), &token_of("bot", OTHER)).await;
    assert_eq!(status, 403);
    assert!(
        body.contains("agent `bot` is not registered for mission `finance/prod/other`"),
        "{body}"
    );
    let late = token_of("late", MISSION);
    assert_eq!(initialize(&url, &late).await.0, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = initialize(&url, &late).await;
    assert_eq!(status, 403);
    assert!(body.contains("agent `late` expired at"), "{body}");
    server.stop();

    let refusals: Vec<String> = audit_records(&ws)
        .iter()
        .filter(|r| r["kind"] == "auth_failure" && r["outcome"] == "forbidden")
        .filter_map(|r| r["detail"].as_str().map(str::to_owned))
        .collect();
    for reason in [
        "`ghost` is not registered",
        "not registered for mission",
        "`late` expired",
    ] {
        assert!(
            refusals.iter().any(|d| d.contains(reason)),
            "no audited refusal `{reason}`: {refusals:?}"
        );
    }
}

/// A JSON-RPC POST on an open session: (status, body).
async fn on_session(url: &str, token: &str, session: &str, body: Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn suspension_refuses_the_next_call_of_an_open_session() {
    let ws = agents_ws(&["bot"], "");
    let server = ws.serve();
    let token = ws.token(Some(MISSION));
    let url = server.mission_url(MISSION);
    let opened = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(opened);
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    on_session(&url, &token, &session, initialized).await;
    let list_invoices = |id: u32| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "list_invoices", "arguments": {}}})
    };
    let (status, body) = on_session(&url, &token, &session, list_invoices(2)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("INV-"), "{body}");
    agents_ok(&ws, &["suspend", "bot", "--reason", "compromised"]);
    // The verified token is cached; the registry is still consulted on this session's next call.
    let (status, body) = on_session(&url, &token, &session, list_invoices(3)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("agent `bot` is suspended (compromised)"),
        "{body}"
    );
    let tools_list = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"});
    assert_eq!(
        on_session(&url, &token, &session, tools_list.clone())
            .await
            .0,
        403
    );
    let downstream_calls = audit_records(&ws)
        .iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "list_invoices")
        .count();
    assert_eq!(
        downstream_calls, 1,
        "only the call before the suspension ran"
    );
    agents_ok(&ws, &["resume", "bot"]);
    let (status, body) = on_session(&url, &token, &session, tools_list).await;
    assert_eq!(status, 200, "{body}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_zombie_sweep_suspends_idle_and_unreviewed_agents() {
    let ws = agents_ws(
        &["bot", "idle-bot", "reviewed"],
        "[agents]\nsweep_interval = \"1s\"\nmax_idle = \"4s\"\n",
    );
    let review =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(2))
            .to_string();
    // Onboarded while stopped (the review date is checked at the sweep, not at onboarding).
    let out = ws.mandate(&[
        "agents",
        "onboard",
        "reviewed",
        "--tenant",
        "acme",
        "--owner",
        "o@acme.example",
        "--mission",
        MISSION,
        "--review",
        &review,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = ws.serve();
    let token = ws.token(Some(MISSION));
    let url = server.mission_url(MISSION);
    // `bot` keeps calling; `idle-bot` never does.
    for _ in 0..14 {
        assert_eq!(initialize(&url, &token).await.0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let agents = list(&ws);
    assert_eq!(agents["bot"]["status"], "active", "{agents:?}");
    for (id, reason) in [
        ("idle-bot", "idle longer than 4s"),
        ("reviewed", "review date"),
    ] {
        assert_eq!(agents[id]["status"], "suspended", "{agents:?}");
        assert_eq!(agents[id]["zombie"], true);
        assert!(
            agents[id]["reason"].as_str().unwrap().contains(reason),
            "{:?}",
            agents[id]
        );
    }
    let table = agents_ok(&ws, &["list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("idle-bot\tSUSPENDED ZOMBIE")),
        "{table}"
    );
    // Resuming past the review date needs a new one.
    assert!(agents_err(&ws, &["resume", "reviewed"]).contains("review date"));
    agents_ok(&ws, &["resume", "reviewed", "--review", "2099-01-01"]);
    server.stop();
    let sweeps: Vec<Value> = lifecycle_records(&ws)
        .into_iter()
        .filter(|r| r["outcome"] == "suspended")
        .collect();
    assert!(
        sweeps
            .iter()
            .any(|r| r["agent"] == "idle-bot"
                && r["detail"].as_str().unwrap().contains("zombie sweep")),
        "{sweeps:?}"
    );
}

/// A P-256 key: (public JWK, private PKCS#8 PEM).
fn es256_key() -> (Value, String) {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256",
        "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap())});
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    (jwk, pem)
}

fn assertion(pem: &str, client: &str, aud: &str, jti: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"iss": client, "sub": client, "aud": aud, "exp": now + 60, "iat": now, "jti": jti}),
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn token_request(
    server: &Server,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut encoded = reqwest::Url::parse("http://form.invalid/").unwrap();
    encoded.query_pairs_mut().extend_pairs(form);
    let mut r = reqwest::Client::new()
        .post(format!("{}/oauth/token", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encoded.query().unwrap_or_default().to_owned());
    if let Some((id, secret)) = basic {
        r = r.basic_auth(id, Some(secret));
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_endpoint_issues_client_credentials_tokens_and_refuses_each_failure() {
    let ws = agents_ws(&["sdk-bot", "jwt-bot"], "");
    let secret = onboard_secret(&ws, "sdk-bot", &[MISSION], &[]);
    let (jwk, pem) = es256_key();
    ws.write("jwt-bot.jwk.json", &jwk.to_string());
    agents_ok(
        &ws,
        &[
            "onboard",
            "jwt-bot",
            "--tenant",
            "acme",
            "--owner",
            "o@acme.example",
            "--mission",
            MISSION,
            "--public-key",
            "jwt-bot.jwk.json",
        ],
    );
    let server = ws.serve();
    let resource = server.mission_url(MISSION);

    let meta: Value = reqwest::get(format!(
        "{}/.well-known/oauth-authorization-server",
        server.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(meta["issuer"], server.url.as_str());
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/oauth/token", server.url)
    );
    assert_eq!(meta["grant_types_supported"], json!(["client_credentials"]));
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("private_key_jwt"))
    );
    assert_eq!(
        meta["token_endpoint_auth_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let oidc: Value = reqwest::get(format!("{}/.well-known/openid-configuration", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(oidc["token_endpoint"], meta["token_endpoint"]);

    // client_secret_basic, narrowed scope, resource → aud.
    let (status, body) = token_request(
        &server,
        Some(("sdk-bot", &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("resource", &resource),
            ("scope", "ledger.read bogus"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "ledger.read");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let c = claims(&token);
    assert_eq!(
        (c["sub"].as_str(), c["azp"].as_str()),
        (Some("sdk-bot"), Some("sdk-bot"))
    );
    assert_eq!(c["aud"], resource.as_str());
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["scope"], "ledger.read");
    let mcp = client(&resource, &token).await;
    assert!(mcp.call_tool(call("list_invoices")).await.is_ok());
    mcp.cancel().await.unwrap();

    // client_secret_post, no scope asked: every scope the mission's tools use.
    let (status, body) = token_request(
        &server,
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "sdk-bot"),
            ("client_secret", &secret),
            ("resource", &resource),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "ledger.read ledger.write");

    // private_key_jwt; the same assertion again is a replay.
    let aud = format!("{}/oauth/token", server.url);
    let signed = assertion(&pem, "jwt-bot", &aud, "jti-1");
    let jwt_form = [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", signed.as_str()),
        ("resource", resource.as_str()),
    ];
    let (status, body) = token_request(&server, None, &jwt_form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["sub"],
        "jwt-bot"
    );
    let (status, body) = token_request(&server, None, &jwt_form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    // An assertion signed by another key.
    let (_, other_pem) = es256_key();
    let forged = assertion(&other_pem, "jwt-bot", &aud, "jti-2");
    let (status, _) = token_request(
        &server,
        None,
        &[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &forged),
        ],
    )
    .await;
    assert_eq!(status, 401);

    let cc = ("grant_type", "client_credentials");
    for (basic, form, want_status, want_error) in [
        (Some(("sdk-bot", "wrong")), vec![cc], 401, "invalid_client"),
        (Some(("nobody", "x")), vec![cc], 401, "invalid_client"),
        (None, vec![cc], 401, "invalid_client"),
        (
            Some(("sdk-bot", secret.as_str())),
            vec![cc, ("resource", &server.mission_url(OTHER))],
            400,
            "invalid_target",
        ),
        (
            Some(("sdk-bot", secret.as_str())),
            vec![cc, ("scope", "bogus")],
            400,
            "invalid_scope",
        ),
        (
            Some(("sdk-bot", secret.as_str())),
            vec![("grant_type", "password")],
            400,
            "unsupported_grant_type",
        ),
        (
            Some(("sdk-bot", secret.as_str())),
            vec![(
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            )],
            400,
            // The embedded STS serves the grant; without a `subject_token` the request is bad.
            "invalid_request",
        ),
        (
            Some(("sdk-bot", secret.as_str())),
            vec![],
            400,
            "invalid_request",
        ),
    ] {
        let (status, body) = token_request(&server, basic, &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_error)),
            "{form:?}: {body}"
        );
        assert!(body["error_description"].is_string(), "{body}");
    }
    // A suspended agent gets no token.
    agents_ok(&ws, &["suspend", "sdk-bot"]);
    let (status, body) = token_request(&server, Some(("sdk-bot", &secret)), &[cc]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );
    server.stop();

    let failures: Vec<Value> = audit_records(&ws)
        .into_iter()
        .filter(|r| r["outcome"] == "client_authentication_failed")
        .collect();
    for why in [
        "wrong client secret",
        "unknown client",
        "replayed",
        "assertion invalid",
    ] {
        assert!(
            failures
                .iter()
                .any(|r| r["detail"].as_str().unwrap().contains(why)),
            "no audited client authentication failure `{why}`: {failures:?}"
        );
    }
    let issued = audit_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "token_issued" && r["agent"] == "jwt-bot")
        .count();
    assert_eq!(issued, 1);
}

const PY_OAUTH_CLIENT: &str = r#"
import sys, json, anyio, httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider, PrivateKeyJWTOAuthProvider, SignedJWTParameters)
url, issuer, client_id, credential, method = sys.argv[1:6]

class Memory:
    def __init__(self): self.tokens = None; self.info = None
    async def get_tokens(self): return self.tokens
    async def set_tokens(self, tokens): self.tokens = tokens
    async def get_client_info(self): return self.info
    async def set_client_info(self, info): self.info = info

async def main():
    if method == "private_key_jwt":
        params = SignedJWTParameters(issuer=client_id, subject=client_id, signing_key=credential,
                                     signing_algorithm="ES256")
        auth = PrivateKeyJWTOAuthProvider(server_url=url, storage=Memory(), client_id=client_id,
                                          assertion_provider=params.create_assertion_provider(),
                                          issuer=issuer)
    else:
        auth = ClientCredentialsOAuthProvider(server_url=url, storage=Memory(), client_id=client_id,
                                              client_secret=credential, token_endpoint_auth_method=method,
                                              issuer=issuer)
    async with httpx2.AsyncClient(auth=auth) as http:
        async with Client(streamable_http_client(url, http_client=http)) as c:
            tools = await c.list_tools()
            r = await c.call_tool("list_invoices", {})
            print(json.dumps({"tools": sorted(t.name for t in tools.tools), "is_error": r.is_error}))
anyio.run(main)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_credentials_find_the_embedded_authorization_server_from_a_401() {
    let ws = agents_ws(&["sdk-bot", "jwt-bot"], "");
    let secret = onboard_secret(&ws, "sdk-bot", &[MISSION], &[]);
    let (jwk, pem) = es256_key();
    ws.write("jwt-bot.jwk.json", &jwk.to_string());
    agents_ok(
        &ws,
        &[
            "onboard",
            "jwt-bot",
            "--tenant",
            "acme",
            "--owner",
            "o@acme.example",
            "--mission",
            MISSION,
            "--public-key",
            "jwt-bot.jwk.json",
        ],
    );
    let server = ws.serve();
    let url = server.mission_url(MISSION);
    // The metadata of the mission names the embedded authorization server.
    let prm: Value = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource/mcp/{MISSION}",
        server.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(prm["authorization_servers"], json!([server.url]));
    for (client_id, credential, method) in [
        ("sdk-bot", secret.as_str(), "client_secret_basic"),
        ("sdk-bot", secret.as_str(), "client_secret_post"),
        ("jwt-bot", pem.as_str(), "private_key_jwt"),
    ] {
        let out = Command::new(peers().join("venv/bin/python"))
            .args([
                "-W",
                "ignore",
                "-c",
                PY_OAUTH_CLIENT,
                &url,
                &server.url,
                client_id,
                credential,
                method,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python client ({method}) failed: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log()
        );
        let v: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
        assert_eq!(
            v["tools"],
            json!(["approve_invoice", "list_invoices"]),
            "{v}"
        );
        assert_eq!(v["is_error"], false, "{v}");
    }
    server.stop();
    let issued: Vec<(String, String)> = audit_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "token_issued")
        .map(|r| {
            (
                r["agent"].as_str().unwrap_or_default().to_owned(),
                r["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        issued
            .iter()
            .any(|(a, d)| a == "sdk-bot" && d.contains("client_credentials"))
    );
    assert!(
        issued
            .iter()
            .any(|(a, d)| a == "jwt-bot" && d.contains("private_key_jwt"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_stdio_refuses_a_suspended_agent_at_start() {
    let ws = agents_ws(&["bot"], "");
    let token = ws.token(Some(MISSION));
    agents_ok(&ws, &["suspend", "bot", "--reason", "on leave"]);
    let out = Command::new(mandate_bin())
        .args(["serve", "--stdio", "--mission", MISSION])
        .current_dir(ws.path())
        .env("MANDATE_TOKEN", &token)
        .env("MANDATE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent `bot` is suspended (on leave)"),
        "{stderr}"
    );
}

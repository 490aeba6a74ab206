//! Hardening: the store and its key material are private to their owner, refusals reveal no
//! internals and no mission's existence.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;

/// Every entry under `dir` (and `dir` itself) with a mode that others or the group can use.
fn too_open(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            out.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out
}

fn chmod_all(dir: &Path, dirs: u32, files: u32) {
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = if meta.is_dir() { dirs } else { files };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
}

#[test]
fn a_new_store_and_its_key_are_private_to_the_owner() {
    let ws = Workspace::new();
    ws.mission("finance/prod/review", "", "");
    // `mandate token` creates the store and the issuer's signing key.
    ws.token(Some("finance/prod/review"));
    let store = ws.path().join(".mandate");
    assert_eq!(too_open(&store), Vec::<String>::new());
    // And while a server runs (snapshots, the admin credential).
    let server = ws.serve();
    assert_eq!(too_open(&store), Vec::<String>::new());
    server.stop();
    assert_eq!(too_open(&store), Vec::<String>::new());
}

#[test]
fn a_store_left_open_by_an_older_version_is_tightened_at_start_and_logged() {
    let ws = Workspace::new();
    ws.mission("finance/prod/review", "", "");
    ws.token(Some("finance/prod/review"));
    let store = ws.path().join(".mandate");
    chmod_all(&store, 0o755, 0o644);
    let server = ws.serve();
    assert_eq!(too_open(&store), Vec::<String>::new());
    let log = server.log();
    assert!(
        log.contains("tightened permissions"),
        "the log says what was tightened: {log}"
    );
    server.stop();
}

/// The `kid` in a JWT's header.
pub(crate) fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_key_signs_new_tokens_and_the_old_one_stays_published_until_its_tokens_expire() {
    let ws = Workspace::new();
    ws.mission("finance/prod/review", "", "");
    // The same address for both servers, so both have the same issuer URL.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let server = ws.serve_on(&listen);
    let old = ws.token(Some("finance/prod/review"));
    server.stop();
    let out = ws.mandate(&["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&kid(&old)), "names the retired key: {said}");

    let server = ws.serve_on(&listen);
    let new = ws.token(Some("finance/prod/review"));
    assert_ne!(kid(&old), kid(&new));
    assert!(said.contains(&kid(&new)), "names the new key: {said}");
    let kids = jwks_kids(&server.url).await;
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(kids.contains(&kid(&old)) && kids.contains(&kid(&new)));
    // Both the token signed before the rotation and the one after are accepted.
    for token in [&old, &new] {
        let c = client(&server.mission_url("finance/prod/review"), token).await;
        c.list_all_tools().await.unwrap();
        c.cancel().await.unwrap();
    }
    // While the server runs it rotates there (the whole story: ops.rs
    // `keys_rotate_while_serving_signs_new_tokens_at_once`).
    let out = ws.mandate(&["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(kid(&ws.token(Some("finance/prod/review"))), kid(&new));
    // Both rotations, with the server stopped and running, are audited.
    let rotations = audit_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "key_rotated")
        .count();
    assert_eq!(rotations, 2);
    server.stop();
}

/// Two missions without tools (no downstream): `finance/prod/review` (acme) and `hr/prod/other`
/// (globex), both for agent `bot`.
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

/// Status, `WWW-Authenticate` and body of an MCP `initialize` POST to `url`.
async fn initialize(url: &str, token: Option<&str>) -> (u16, String, String) {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), challenge, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_tokens_are_answered_with_fixed_texts_that_say_what_to_do() {
    let ws = two_missions();
    let server = ws.serve();
    let url = server.mission_url("finance/prod/review");
    let good = ws.token(Some("finance/prod/review"));
    let mut forged: Vec<&str> = good.split('.').collect();
    // Another valid signature encoding: one character in the middle changed.
    let mut signature = forged[2].to_owned();
    let flipped = if &signature[10..11] == "A" { "B" } else { "A" };
    signature.replace_range(10..11, flipped);
    forged[2] = &signature;
    let other = ws.token_for("bob@globex.example", "globex", "bot", Some("hr/prod/other"));
    // The example: `Base64 error: Invalid last symbol 101, offset 6` reached the caller.
    let bad_base64 = format!("{}.{}.e", forged[0], forged[1]);
    let cases = [
        ("garbage", "malformed bearer token"),
        (
            "eyJhbGciOiJFUzI1NiJ9.e30.e",
            "token is not an access token this broker accepts",
        ),
        (&bad_base64, "malformed bearer token"),
        ("a.b.c", "malformed bearer token"),
        (&forged.join("."), "token signature is invalid"),
        (&other, "token audience is not this resource"),
    ];
    for (token, expected) in cases {
        let (status, challenge, body) = initialize(&url, Some(token)).await;
        assert_eq!(status, 401, "{token}");
        assert!(body.starts_with(expected), "{token}: {body}");
        assert!(
            challenge.contains(&format!("error_description=\"{}", body.trim_end())),
            "{token}: {challenge}"
        );
        for internal in [
            "Base64",
            "base64",
            "Json",
            "offset",
            "symbol",
            "InvalidToken",
        ] {
            assert!(!body.contains(internal), "{token}: {body}");
        }
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_mission_answers_like_a_known_one() {
    let ws = two_missions();
    let server = ws.serve();
    let globex = ws.token_for("bob@globex.example", "globex", "bot", None);
    let known = "/mcp/finance/prod/review";
    let answer = |path: &str, (status, challenge, body): (u16, String, String)| {
        // The path is the only difference.
        let metadata = format!("{}/.well-known/oauth-protected-resource{path}", server.url);
        (status, challenge.replace(&metadata, "<metadata>"), body)
    };
    let expected_none = answer(
        known,
        initialize(&format!("{}{known}", server.url), None).await,
    );
    let expected_garbage = answer(
        known,
        initialize(&format!("{}{known}", server.url), Some("garbage")).await,
    );
    let expected_other_tenant = answer(
        known,
        initialize(&format!("{}{known}", server.url), Some(&globex)).await,
    );
    assert_eq!(expected_none.0, 401);
    assert_eq!(expected_none.1, "Bearer resource_metadata=\"<metadata>\"");
    assert_eq!(expected_other_tenant.0, 403);
    for path in [
        "/mcp/finance/prod/nope",
        "/mcp/x",
        "/mcp/finance/prod/review/extra",
    ] {
        let url = format!("{}{path}", server.url);
        assert_eq!(
            answer(path, initialize(&url, None).await),
            expected_none,
            "{path}"
        );
        assert_eq!(
            answer(path, initialize(&url, Some("garbage")).await),
            expected_garbage,
            "{path}"
        );
        assert_eq!(
            answer(path, initialize(&url, Some(&globex)).await),
            expected_other_tenant,
            "{path}"
        );
    }
    // The metadata document answers for any mission path alike.
    let metadata = |path: &str| {
        let url = format!("{}/.well-known/oauth-protected-resource{path}", server.url);
        async move {
            let r = reqwest::get(url).await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let known_doc = metadata(known).await;
    let unknown_doc = metadata("/mcp/finance/prod/nope").await;
    assert_eq!(known_doc["resource"], format!("{}{known}", server.url));
    assert_eq!(
        unknown_doc["resource"],
        format!("{}/mcp/finance/prod/nope", server.url)
    );
    assert_eq!(
        known_doc.as_object().unwrap().keys().collect::<Vec<_>>(),
        unknown_doc.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_https_and_the_cli_still_reaches_the_server() {
    let ws = two_missions();
    let cert = certificate(&ws);
    ws.write(
        "mandate.toml",
        "[server]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
    );
    let server = ws.serve();
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    // The CLI reaches the running server (admin API) and the token names the https issuer.
    let token = ws.token(Some("finance/prod/review"));
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap();
    let r = https
        .post(server.mission_url("finance/prod/review"))
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(&token)
        .json(&serde_json::json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets no answer.
    let plain = server.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    server.stop();
}

#[test]
fn exposed_listeners_without_tls_or_a_public_url_are_refused_with_the_setting_to_add() {
    let ws = two_missions();
    // `mandate serve` must exit at once; one that serves is killed and fails the test.
    let serve = |ws: &Workspace| {
        let mut child = std::process::Command::new(mandate_bin())
            .args(["serve", "--listen", "0.0.0.0:0"])
            .current_dir(ws.path())
            .env("MANDATE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&ws);
    assert!(err.contains("add `[server] tls"), "{err}");
    certificate(&ws);
    ws.write(
        "mandate.toml",
        "[server]\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
    );
    let err = serve(&ws);
    assert!(err.contains("set `[server] public_url`"), "{err}");
    ws.write(
        "mandate.toml",
        "[server]\npublic_url = \"http://mandate.example.com\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
    );
    let err = serve(&ws);
    assert!(err.contains("https://"), "{err}");
    ws.write(
        "mandate.toml",
        "[server]\npublic_url = \"https://127.0.0.1:8443\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
    );
    let err = serve(&ws);
    assert!(err.contains("set `[server] public_url`"), "{err}");
}

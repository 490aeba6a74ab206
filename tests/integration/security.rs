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
fn kid(token: &str) -> String {
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
    let jwks: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "{jwks}");
    assert!(kids.contains(&kid(&old).as_str()) && kids.contains(&kid(&new).as_str()));
    // Both the token signed before the rotation and the one after are accepted.
    for token in [&old, &new] {
        let c = client(&server.mission_url("finance/prod/review"), token).await;
        c.list_all_tools().await.unwrap();
        c.cancel().await.unwrap();
    }
    // While the server runs it owns the keys: rotating says what to do.
    let out = ws.mandate(&["keys", "rotate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop `mandate serve`"), "{err}");
    server.stop();
}

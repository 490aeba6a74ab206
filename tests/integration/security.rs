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

//! Configuration files: every shipped file loads through the same path as `mandate check`, and
//! broken ones give exact `path:line:col` diagnostics, all at once.

use crate::common::*;

#[test]
fn shipped_configuration_checks_clean() {
    let out = std::process::Command::new(mandate_bin())
        .args(["check", "--config"])
        .arg(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = mandate::config::load(&repo(), true).unwrap();
    assert_eq!(
        config.missions.keys().collect::<Vec<_>>(),
        [
            "finance/prod/invoice-review",
            "procurement/prod/supplier-due-diligence",
            "support/staging/invoice-helpdesk"
        ]
    );
    mandate::mission::MissionRuntime::build_all(&config).unwrap();
}

/// The handoff walk-through ships as a workspace of its own (`examples/handoff`: missions A and B,
/// the ledger and B's agent as pinned downstreams, policies and decision cases): it checks clean
/// and its decision cases pass, through the same paths as `mandate check` and `mandate test`.
#[test]
fn the_shipped_handoff_example_checks_clean_and_passes_its_cases() {
    let dir = repo().join("examples/handoff");
    for command in ["check", "test"] {
        let out = std::process::Command::new(mandate_bin())
            .args([command, "--config"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mandate {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = mandate::config::load(&dir, true).unwrap();
    assert_eq!(
        config.missions.keys().collect::<Vec<_>>(),
        ["finance/prod/payments", "finance/prod/review"]
    );
    assert_eq!(
        config.missions["finance/prod/review"].handoffs,
        ["finance/prod/payments"]
    );
    mandate::mission::MissionRuntime::build_all(&config).unwrap();
}

/// A valid base: one pinned manifest (lock written by hand) and one mission.
fn base() -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "tool-manifests/finance/ledger.toml",
        r#"description = "ledger"
environments = ["prod"]
region = "eu-west-1"

[transport]
kind = "stdio"
command = "ledger"

[[tools]]
name = "get_invoice"
effect = "read"

[[tools]]
name = "pay_invoice"
effect = "irreversible"
"#,
    );
    let lock = mandate::tools::LockFile::from_definitions(
        "finance/ledger",
        None,
        vec![
            serde_json::json!({"name": "get_invoice", "description": "d", "inputSchema": {"type": "object"}}),
            serde_json::json!({"name": "pay_invoice", "description": "d", "inputSchema": {"type": "object"}}),
        ],
    );
    lock.write(&ws.path().join("tool-manifests/finance/ledger.lock.json"))
        .unwrap();
    ws.write(
        "tool-manifests/hr/people.toml",
        r#"description = "people"
environments = ["staging"]
region = "eu-west-1"

[transport]
kind = "http"
url = "http://127.0.0.1:1/mcp"

[[tools]]
name = "lookup"
effect = "read"
"#,
    );
    mandate::tools::LockFile::from_definitions(
        "hr/people",
        None,
        vec![serde_json::json!({"name": "lookup", "inputSchema": {"type": "object"}})],
    )
    .write(&ws.path().join("tool-manifests/hr/people.lock.json"))
    .unwrap();
    ws.mission("finance/prod/review", r#""finance/ledger/get_invoice""#, "");
    ws
}

fn diagnostics(ws: &Workspace) -> Vec<String> {
    match mandate::config::load(ws.path(), true) {
        Ok(_) => vec![],
        Err(d) => d
            .iter()
            .map(|d| {
                let file = d.file.strip_prefix(ws.path()).unwrap_or(&d.file);
                format!("{}:{}:{}: {}", file.display(), d.line, d.col, d.message)
            })
            .collect(),
    }
}

#[test]
fn base_is_valid() {
    assert_eq!(diagnostics(&base()), Vec::<String>::new());
}

#[test]
fn misspelt_mission_field_names_file_line_and_column() {
    let ws = base();
    ws.write(
        "missions/finance/prod/review.toml",
        "description = \"x\"\ntenant = \"acme\"\nowner = \"a\"\nexpires = 2099-01-01\nagents = [\"bot\"]\ntoolz = []\n",
    );
    let d = diagnostics(&ws);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with(
            "missions/finance/prod/review.toml:6:1: unknown field `toolz` (did you mean `tools`?)"
        ),
        "{d:?}"
    );
}

#[test]
fn misspelt_manifest_field_is_located() {
    let ws = base();
    ws.write(
        "tool-manifests/finance/ledger.toml",
        "description = \"ledger\"\nenvironments = [\"prod\"]\nregion = \"eu-west-1\"\n\n[transport]\nkind = \"stdio\"\ncommand = \"x\"\n\n[[tools]]\nname = \"get_invoice\"\neffct = \"read\"\n",
    );
    let d = diagnostics(&ws);
    assert!(
        d.iter().any(
            |l| l.starts_with("tool-manifests/finance/ledger.toml:11:1: unknown field `effct`")
        ),
        "{d:?}"
    );
}

#[test]
fn misspelt_transport_and_settings_fields_are_located() {
    let ws = base();
    ws.write(
        "mandate.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\npublic_ur = \"http://x\"\n",
    );
    ws.write(
        "tool-manifests/hr/people.toml",
        "description = \"p\"\nenvironments = [\"staging\"]\nregion = \"r\"\n[transport]\nkind = \"http\"\nurl = \"http://127.0.0.1:1/mcp\"\nheaderz = {}\n",
    );
    let d = diagnostics(&ws);
    assert!(
        d.iter()
            .any(|l| l.starts_with("mandate.toml:3:1: unknown field `public_ur`")),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|l| l.starts_with("tool-manifests/hr/people.toml:7:1:") && l.contains("headerz")),
        "{d:?}"
    );
}

/// `[server] worker_threads`: 1 by default, a count, or `"auto"` (one per CPU); anything else
/// is located and says what is allowed.
#[test]
fn worker_threads_default_to_one_and_bad_values_are_located() {
    let ws = base();
    let threads = |ws: &Workspace| {
        mandate::config::load(ws.path(), true)
            .unwrap()
            .settings
            .worker_threads
    };
    assert_eq!(threads(&ws), Some(1));
    ws.write("mandate.toml", "[server]\nworker_threads = 4\n");
    assert_eq!(threads(&ws), Some(4));
    ws.write("mandate.toml", "[server]\nworker_threads = \"auto\"\n");
    assert_eq!(threads(&ws), None);
    ws.write("mandate.toml", "[server]\nworker_threads = 0\n");
    assert_eq!(
        diagnostics(&ws),
        vec!["mandate.toml:2:18: `worker_threads` must be from 1 to 1024 or \"auto\", not 0"]
    );
    ws.write("mandate.toml", "[server]\n\nworker_threads = \"many\"\n");
    assert_eq!(
        diagnostics(&ws),
        vec!["mandate.toml:3:18: `worker_threads` must be a count or \"auto\", not `many`"]
    );
}

#[test]
fn misspelt_lock_file_field_is_reported() {
    let ws = base();
    let path = ws.path().join("tool-manifests/finance/ledger.lock.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"pinned_at\"", "\"pinned_on\"");
    std::fs::write(&path, text).unwrap();
    let d = diagnostics(&ws);
    assert!(
        d.iter().any(|l| l
            .starts_with("tool-manifests/finance/ledger.lock.json:1:1: invalid lock file")
            && l.contains("pinned_on")),
        "{d:?}"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_suggestions() {
    let ws = base();
    ws.write(
        "missions/finance/prod/review.toml",
        r#"description = "x"
tenant = "acme"
owner = "a"
expires = 2099-01-01
agents = ["bot"]
tools = [
  "finance/ledger/get_invoce",
  "hr/people/lookup",
  "finance/ledgr/get_invoice",
  "finance/ledger/get_invoice",
  { tool = "finance/ledger/pay_invoice", as = "get_invoice" },
]
require_reasoning = ["writ"]
"#,
    );
    let d = diagnostics(&ws);
    let expected = [
        "missions/finance/prod/review.toml:7:3: unknown tool `finance/ledger/get_invoce` in `tools` (did you mean `finance/ledger/get_invoice`?)",
        "missions/finance/prod/review.toml:8:3: tool manifest `hr/people` is not allowed in environment `prod` (its `environments` are staging)",
        "missions/finance/prod/review.toml:9:3: unknown tool manifest `finance/ledgr` in `tools` (did you mean `finance/ledger/get_invoice`?)",
        "missions/finance/prod/review.toml:11:3: tool name `get_invoice` is exposed twice (by `finance/ledger/get_invoice` and `finance/ledger/pay_invoice`): rename one with `{ tool = \"finance/ledger/pay_invoice\", as = \"…\" }`",
        "missions/finance/prod/review.toml:13:22: unknown effect `writ` in `require_reasoning` (expected read, write or irreversible) (did you mean `write`?)",
    ];
    assert_eq!(d, expected);
}

#[test]
fn manifest_problems_duplicate_tools_bad_values_and_unpinned_tools() {
    let ws = base();
    ws.write(
        "tool-manifests/finance/ledger.toml",
        r#"description = "ledger"
environments = ["prod"]
region = "eu-west-1"
timeout = "soon"

[transport]
kind = "stdio"
command = "ledger"
protocol = "2024-01-01"

[[tools]]
name = "get_invoice"
effect = "read"

[[tools]]
name = "get_invoice"
effect = "read"

[[tools]]
name = "export_all"
effect = "raed"
sensitivity = "secret"
"#,
    );
    let d = diagnostics(&ws);
    let expected = [
        "tool-manifests/finance/ledger.toml:16:8: duplicate tool `get_invoice` in `[[tools]]`",
        "tool-manifests/finance/ledger.toml:20:8: tool `export_all` is not in the lock file: run `mandate pin finance/ledger` (after checking the downstream serves it)",
        "tool-manifests/finance/ledger.toml:21:10: unknown effect `raed` (expected one of read, write, irreversible) (did you mean `read`?)",
        "tool-manifests/finance/ledger.toml:22:15: unknown sensitivity `secret` (expected one of public, internal, confidential, restricted)",
        "tool-manifests/finance/ledger.toml:4:11: invalid duration `soon` (write e.g. `30s` or `2m`)",
        "tool-manifests/finance/ledger.toml:6:1: unknown MCP revision `2024-01-01` in `[transport]` (expected one of 2025-06-18, 2025-11-25, 2026-07-28)",
    ];
    let mut d_sorted = d.clone();
    d_sorted.sort();
    let mut e_sorted: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    e_sorted.sort();
    assert_eq!(d_sorted, e_sorted);
    // A declared tool the lock does not have is an error too.
    let ws = base();
    ws.write(
        "tool-manifests/finance/ledger.toml",
        "description = \"l\"\nenvironments = [\"prod\"]\nregion = \"r\"\n[transport]\nkind = \"stdio\"\ncommand = \"x\"\n[[tools]]\nname = \"get_invoice\"\neffect = \"read\"\n[[tools]]\nname = \"pay_invoce\"\neffect = \"irreversible\"\n",
    );
    let d = diagnostics(&ws);
    assert_eq!(
        d,
        [
            "tool-manifests/finance/ledger.toml:11:8: tool `pay_invoce` is not in the lock file (did you mean `pay_invoice`?): run `mandate pin finance/ledger` (after checking the downstream serves it)"
        ]
    );
}

#[test]
fn mandate_check_prints_diagnostics_and_exits_1() {
    let ws = base();
    ws.write("missions/finance/prod/review.toml", "description = 1\n");
    let out = ws.mandate(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missions/finance/prod/review.toml:1:15: invalid type"),
        "{stderr}"
    );
}

#[test]
fn wildcard_expands_to_every_declared_tool() {
    let ws = base();
    ws.mission("finance/prod/review", r#""finance/ledger/*""#, "");
    let config = mandate::config::load(ws.path(), true).unwrap();
    let m = &config.missions["finance/prod/review"];
    let names: Vec<&str> = m.tools.iter().map(|t| t.exposed.as_str()).collect();
    assert_eq!(names, ["get_invoice", "pay_invoice"]);
}

#[test]
fn client_config_snippets_are_valid_json_for_each_client() {
    let root = repo();
    let root = root.to_str().unwrap();
    for client in ["claude", "vscode", "cursor"] {
        for stdio in [false, true] {
            let mut args = vec![
                "client-config",
                "--config",
                root,
                "--mission",
                "finance/prod/invoice-review",
                "--client",
                client,
            ];
            if stdio {
                args.push("--stdio");
            }
            let out = std::process::Command::new(mandate_bin())
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let servers = if client == "vscode" {
                &v["servers"]
            } else {
                &v["mcpServers"]
            };
            let entry = &servers["mandate-finance-prod-invoice-review"];
            if stdio {
                assert_eq!(entry["args"][0], "serve");
                assert!(entry["env"]["MANDATE_TOKEN"].is_string());
            } else {
                assert_eq!(
                    entry["url"],
                    "http://127.0.0.1:8080/mcp/finance/prod/invoice-review"
                );
            }
        }
    }
}

/// Runs `mandate check` in `ws`, failing the test if it has not finished within 20 s.
fn check_within_20s(ws: &Workspace) -> std::process::Output {
    let mut child = std::process::Command::new(mandate_bin())
        .arg("check")
        .current_dir(ws.path())
        .env("MANDATE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`mandate check` did not finish within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn symlinked_directories_are_not_followed() {
    let ws = base();
    for name in ["a", "b", "c"] {
        std::os::unix::fs::symlink("..", ws.path().join("missions").join(name)).unwrap();
    }
    // A symlinked manifest directory too; a symlinked file is read like any file.
    std::os::unix::fs::symlink(
        ws.path().join("tool-manifests/finance"),
        ws.path().join("tool-manifests/money"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        ws.path().join("missions/finance/prod/review.toml"),
        ws.path().join("missions/finance/prod/linked.toml"),
    )
    .unwrap();
    let out = check_within_20s(&ws);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for link in [
        "missions/a",
        "missions/b",
        "missions/c",
        "tool-manifests/money",
    ] {
        assert!(
            stderr.contains(&format!(
                "{link}:1:1: a symbolic link to a directory, which Mandate does not follow"
            )),
            "{link}: {stderr}"
        );
    }
    assert!(!stderr.contains("linked.toml"), "{stderr}");
    assert!(stderr.contains("error: 4 problem(s)"), "{stderr}");
}

/// Runs `mandate` with `args` outside any configuration directory, failing the test if it has
/// not finished within 20 s.
fn mandate_within_20s(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut child = std::process::Command::new(mandate_bin())
        .args(args)
        .env("MANDATE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`mandate {args:?}` did not finish within 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_wrong_configuration_path_is_an_error() {
    let ws = Workspace::new();
    let missing = ws.path().join("missing");
    let out = mandate_within_20s(&["check".as_ref(), "--config".as_ref(), missing.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&format!(
            "{}: the configuration directory does not exist",
            missing.display()
        )),
        "{stderr}"
    );
    // A directory with neither `missions/` nor `tool-manifests/` is not a configuration.
    let out = mandate_within_20s(&["check".as_ref(), "--config".as_ref(), ws.path().as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has neither `missions/` nor `tool-manifests/`"),
        "{stderr}"
    );
    // `serve` refuses too, and creates nothing.
    let out = mandate_within_20s(&[
        "serve".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--config".as_ref(),
        missing.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists());
    let out = mandate_within_20s(&[
        "serve".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--config".as_ref(),
        ws.path().as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(ws.path()).unwrap().count(), 0);
}

#[test]
fn a_misspelt_field_does_not_hide_the_problems_below_it() {
    let ws = base();
    ws.write(
        "missions/finance/prod/review.toml",
        "description = \"x\"\ntenant = \"acme\"\nownr = \"a\"\nexpires = 2099-01-01\nagents = [\"bot\"]\ntools = [\"finance/ledger/get_invoce\", { tool = \"finance/ledger/pay_invoice\", az = \"pay\" }]\n[limits]\ncals_per_minute = 3\n",
    );
    assert_eq!(
        diagnostics(&ws),
        [
            "missions/finance/prod/review.toml:3:1: unknown field `ownr` (did you mean `owner`?)",
            "missions/finance/prod/review.toml:6:10: unknown tool `finance/ledger/get_invoce` in `tools` (did you mean `finance/ledger/get_invoice`?)",
            "missions/finance/prod/review.toml:6:78: unknown field `az` in a `tools` entry (did you mean `as`?)",
            "missions/finance/prod/review.toml:8:1: unknown field `cals_per_minute` in `[limits]` (did you mean `calls_per_minute`?)",
        ]
    );
    // Manifests too.
    let ws = base();
    ws.write(
        "tool-manifests/finance/ledger.toml",
        "description = \"ledger\"\nenvironments = [\"prod\"]\nregion = \"eu-west-1\"\n[transport]\nkind = \"stdio\"\ncommand = \"x\"\nurl = \"http://x\"\n[[tools]]\nname = \"get_invoice\"\neffct = \"read\"\n[[tools]]\nname = \"pay_invoice\"\neffect = \"irreversable\"\n",
    );
    assert_eq!(
        diagnostics(&ws),
        [
            "tool-manifests/finance/ledger.toml:7:1: unknown field `url` in `[transport]` (expected one of `kind`, `command`, `args`, `env`, `protocol`)",
            "tool-manifests/finance/ledger.toml:10:1: unknown field `effct` in `[[tools]]` (did you mean `effect`?)",
            "tool-manifests/finance/ledger.toml:13:10: unknown effect `irreversable` (expected one of read, write, irreversible) (did you mean `irreversible`?)",
        ]
    );
    // Settings too.
    let ws = base();
    ws.write(
        "mandate.toml",
        "[servr]\nlisten = \"x\"\n[server]\nlisten = \"nowhere\"\n",
    );
    assert_eq!(
        diagnostics(&ws),
        [
            "mandate.toml:1:2: unknown field `servr` (did you mean `server`?)",
            "mandate.toml:4:10: `listen` must be an address like `127.0.0.1:8080`, not `nowhere`",
        ]
    );
}

#[test]
fn a_region_mismatch_is_reported_once() {
    let ws = base();
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice", "finance/ledger/pay_invoice", "finance/ledger/*""#,
        "regions = [\"us-east-1\"]",
    );
    assert_eq!(
        diagnostics(&ws),
        [
            "missions/finance/prod/review.toml:6:10: tool manifest `finance/ledger` keeps data in region `eu-west-1`, which is not in this mission's `regions`"
        ]
    );
}

/// The residency wall covers what a mission passes through (`resources`, `prompts`) as it
/// covers its tools: a manifest in another region is refused at load, with its position.
#[test]
fn resources_and_prompts_from_another_region_are_refused() {
    let ws = base();
    ws.write(
        "tool-manifests/finance/archive.toml",
        r#"description = "archive"
environments = ["prod"]
region = "us-east-1"

[transport]
kind = "http"
url = "http://127.0.0.1:1/mcp"

[[tools]]
name = "fetch"
effect = "read"
"#,
    );
    mandate::tools::LockFile::from_definitions(
        "finance/archive",
        None,
        vec![serde_json::json!({"name": "fetch", "inputSchema": {"type": "object"}})],
    )
    .write(&ws.path().join("tool-manifests/finance/archive.lock.json"))
    .unwrap();
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice""#,
        "regions = [\"eu-west-1\"]\nresources = [\"finance/ledger\", \"finance/archive\"]\nprompts = [\"finance/archive\"]",
    );
    assert_eq!(
        diagnostics(&ws),
        [
            "missions/finance/prod/review.toml:8:32: tool manifest `finance/archive` in `resources` keeps data in region `us-east-1`, which is not in this mission's `regions`",
            "missions/finance/prod/review.toml:9:12: tool manifest `finance/archive` in `prompts` keeps data in region `us-east-1`, which is not in this mission's `regions`",
        ]
    );
    // The same manifest is fine for a mission that serves its region too.
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice""#,
        "regions = [\"eu-west-1\", \"us-east-1\"]\nresources = [\"finance/archive\"]",
    );
    assert_eq!(diagnostics(&ws), Vec::<String>::new());
}

#[test]
fn expired_missions_are_visible() {
    let ws = base();
    ws.write(
        "missions/finance/prod/review.toml",
        "description = \"x\"\ntenant = \"acme\"\nowner = \"a\"\nexpires = 2020-01-31\nagents = [\"bot\"]\ntools = [\"finance/ledger/get_invoice\"]\n",
    );
    let out = check_within_20s(&ws);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("review.toml: warning: mission `finance/prod/review` expired on 2020-01-31: it serves no caller (move `expires` forward to serve it again)"),
        "{stderr}"
    );
    let out = ws.mandate(&[
        "token",
        "--sub",
        "alice",
        "--tenant",
        "acme",
        "--agent",
        "bot",
        "--mission",
        "finance/prod/review",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("mission `finance/prod/review` expired on 2020-01-31"),
        "{stderr}"
    );
}

#[test]
fn limits_are_enforced_so_check_no_longer_warns_and_zero_is_an_error() {
    let ws = base();
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice""#,
        "[limits]\ncalls_per_minute = 10\nper_agent = 5\nper_user = 5\nper_tool = 5",
    );
    let out = check_within_20s(&ws);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("[limits]"), "{stderr}");
    ws.mission(
        "finance/prod/review",
        r#""finance/ledger/get_invoice""#,
        "[limits]\nper_tool = 0",
    );
    let out = check_within_20s(&ws);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "review.toml:8:12: `per_tool` must be at least 1 (calls per minute); remove it for no limit"
        ),
        "{stderr}"
    );
}

#[test]
fn pin_leaves_an_unchanged_lock_file_untouched() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission("finance/prod/review", r#""finance/ledger/get_invoice""#, "");
    ws.pin();
    let lock = ws.path().join("tool-manifests/finance/ledger.lock.json");
    let first = std::fs::read_to_string(&lock).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = ws.mandate(&["pin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unchanged"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        std::fs::read_to_string(&lock).unwrap() == first,
        "an unchanged pin rewrote the lock file"
    );
}

#[test]
fn client_config_mission_has_help_text() {
    let out = std::process::Command::new(mandate_bin())
        .args(["client-config", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let line = help
        .lines()
        .find(|l| l.trim_start().starts_with("--mission <MISSION>"))
        .unwrap_or_default();
    assert!(line.contains("e.g. finance/prod/invoice-review"), "{help}");
}

#[test]
fn serve_lists_an_expired_mission_and_does_not_serve_it() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission("finance/prod/live", r#""finance/ledger/get_invoice""#, "");
    ws.pin();
    ws.permit_all("finance/prod/old");
    ws.write(
        "missions/finance/prod/old.toml",
        "description = \"x\"\ntenant = \"acme\"\nowner = \"a\"\nexpires = 2020-01-31\nagents = [\"bot\"]\ntools = [\"finance/ledger/get_invoice\"]\n",
    );
    let mut child = std::process::Command::new(mandate_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(ws.path())
        .env("MANDATE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let listing: Vec<String> = (0..3)
        .filter_map(|_| lines.next().and_then(Result::ok))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        listing
            .iter()
            .any(|l| l.contains("mission finance/prod/old expired on 2020-01-31: not served")),
        "{listing:?}"
    );
    assert!(
        listing
            .iter()
            .any(|l| l.contains("mission finance/prod/live at")),
        "{listing:?}"
    );
}

//! The audit log end to end: calls from two tenants through the real broker, per-tenant exports
//! that verify on their own with nothing but the file, and tampering that is named.

use rmcp::model::CallToolRequestParams;
use serde_json::json;

use crate::common::*;

fn get_invoice(id: &str) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new("get_invoice".to_owned());
    p.arguments = json!({ "invoice_id": id }).as_object().cloned();
    p
}

/// Ledger with `finance/prod/review` (tenant acme) and `finance/prod/globex` (tenant globex).
fn two_tenants() -> Workspace {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission("finance/prod/review", r#""finance/ledger/get_invoice""#, "");
    ws.permit_all("finance/prod/globex");
    ws.write(
        "missions/finance/prod/globex.toml",
        r#"description = "globex's review"
tenant = "globex"
owner = "bob@globex.example"
expires = 2099-12-31
agents = ["bot"]
tools = ["finance/ledger/get_invoice"]
"#,
    );
    ws.pin();
    ws
}

fn verify_file(ws: &Workspace, name: &str, text: &str) -> (Option<i32>, String) {
    let file = ws.path().join(name);
    std::fs::write(&file, text).unwrap();
    let out = ws.mandate(&["audit", "verify", "--file", file.to_str().unwrap()]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

fn export(ws: &Workspace, args: &[&str]) -> String {
    let mut command = vec!["audit", "export"];
    command.extend_from_slice(args);
    let out = ws.mandate(&command);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The line numbers (0-based) of the record lines, with their sequence numbers.
fn record_lines(text: &str) -> Vec<(usize, u64)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("h").map(|h| (i, h["seq"].as_u64().unwrap()))
        })
        .collect()
}

fn without_line(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(n);
    lines.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_exports_verify_offline_and_removed_records_are_named() {
    let ws = two_tenants();
    let server = ws.serve();
    let acme_token = ws.token(Some("finance/prod/review"));
    let globex_token = ws.token_for(
        "bob@globex.example",
        "globex",
        "bot",
        Some("finance/prod/globex"),
    );
    let acme = client(&server.mission_url("finance/prod/review"), &acme_token).await;
    let globex = client(&server.mission_url("finance/prod/globex"), &globex_token).await;
    for id in ["INV-1001", "INV-1002", "INV-1003"] {
        acme.call_tool(get_invoice(id)).await.unwrap();
        globex.call_tool(get_invoice(id)).await.unwrap();
    }

    // Through the running server (streamed by the admin API): acme's chain alone, complete.
    let text = export(&ws, &["--tenant", "acme"]);
    let records = export_records(&ws, &["--tenant", "acme"]);
    assert!(records.len() >= 4, "a token and three calls: {records:?}");
    assert!(
        records
            .iter()
            .all(|r| r["tenant"] == "acme" && r["chain"] == "tenant:acme")
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let (code, report) = verify_file(&ws, "acme.jsonl", &text);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("tenant:acme: records 1 to"), "{report}");
    assert!(!report.contains("globex"));
    acme.cancel().await.unwrap();
    globex.cancel().await.unwrap();
    server.stop();

    // With the store (no server): globex's chain verifies on its own too.
    let globex_text = export(&ws, &["--tenant", "globex"]);
    assert!(!globex_text.contains("\"tenant\":\"acme\""));
    let (code, report) = verify_file(&ws, "globex.jsonl", &globex_text);
    assert_eq!(code, Some(0), "{report}");

    // The last record removed: its checkpoint names it.
    let text = export(&ws, &["--tenant", "acme"]);
    let lines = record_lines(&text);
    let &(last_line, last) = lines.last().unwrap();
    let (code, report) = verify_file(&ws, "cut.jsonl", &without_line(&text, last_line));
    assert_eq!(code, Some(1));
    assert_eq!(
        report,
        format!("FAILED: chain `tenant:acme`: record {last} is missing (checkpoint at seq {last})")
    );
    // A record in the middle removed.
    let (middle_line, middle) = lines[1];
    let (code, report) = verify_file(&ws, "gap.jsonl", &without_line(&text, middle_line));
    assert_eq!(code, Some(1));
    assert_eq!(
        report,
        format!(
            "FAILED: chain `tenant:acme`: record {middle} is missing (record {} follows record {})",
            middle + 1,
            middle - 1
        )
    );
    // A record changed.
    let (third_line, third) = lines[2];
    let mut altered: Vec<String> = text.lines().map(str::to_owned).collect();
    altered[third_line] = altered[third_line].replacen("\"time\":\"", "\"time\":\"1", 1);
    let (code, report) = verify_file(&ws, "altered.jsonl", &(altered.join("\n") + "\n"));
    assert_eq!(code, Some(1));
    assert_eq!(
        report,
        format!(
            "FAILED: chain `tenant:acme`: record {third}: content does not match its hash (record altered)"
        )
    );
    // Pinned to the published key (the export's first line) it verifies; to another key it fails.
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let key = ws.path().join("audit-key.jwk");
    std::fs::write(&key, first["audit_export"]["public_key"].to_string()).unwrap();
    let file = ws.path().join("acme.jsonl");
    std::fs::write(&file, &text).unwrap();
    let out = ws.mandate(&[
        "audit",
        "verify",
        "--file",
        file.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The store itself, every chain, and the full export.
    let out = ws.mandate(&["audit", "verify"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("broker: records 1 to") && report.contains("tenant:globex"));
    let (code, report) = verify_file(&ws, "all.jsonl", &export(&ws, &[]));
    assert_eq!(code, Some(0), "{report}");
    // Filters.
    assert!(export_records(&ws, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
}

//! Property-based fuzz tests (proptest, stable Rust) for everything that parses input from
//! outside: the JSON-RPC ingress, the manifest and lock-file parsers, and the audit-record codec.
//! Each property is bounded (a fixed number of cases) so the test command stays fast; they assert
//! no panic, no hang, and — for the audit codec — that a mutated export never verifies as the
//! original unless the mutation left the bytes that matter unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

/// Applies byte mutations (position modulo length, new byte) to a seed.
fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(pos, byte, op) in edits {
        if out.is_empty() {
            out.push(byte);
            continue;
        }
        let at = pos % out.len();
        match op % 3 {
            0 => out[at] = byte,
            1 => out.insert(at, byte),
            _ => {
                out.remove(at);
            }
        }
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..12)
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":{"name":"get_invoice","arguments":{"invoice_id":"INV-1001"},"_meta":{"progressToken":7,"io.mandate/reasoning":{"rationale":"r"}}}}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any body: the ingress answers Ok or a JSON-RPC error with a 4xx status, never panics.
    #[test]
    fn ingress_never_panics_and_refuses_with_4xx(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(refused) = crate::inbound::ingress::parse(&body) {
            prop_assert!(refused.status.is_client_error());
        }
    }

    /// Mutations of a valid call: same property, closer to real input.
    #[test]
    fn ingress_survives_mutated_calls(e in edits()) {
        let body = mutate(CALL.as_bytes(), &e);
        if let Err(refused) = crate::inbound::ingress::parse(&body) {
            prop_assert!(refused.status.is_client_error());
        }
    }
}

const MANIFEST: &str = r#"description = "ledger"
environments = ["prod"]
region = "eu-west-1"
timeout = "5s"

[transport]
kind = "http"
url = "http://127.0.0.1:9/mcp"

[auth]
exchange = "none"

[[tools]]
name = "get_invoice"
effect = "read"
sensitivity = "confidential"
"#;

const MISSION: &str = r#"description = "m"
tenant = "acme"
owner = "alice@acme.example"
expires = 2099-12-31
agents = ["bot"]
regions = ["eu-west-1"]
tools = ["finance/ledger/get_invoice", { tool = "finance/ledger/get_invoice", as = "inv" }]
[limits]
calls_per_minute = 10
"#;

const LOCK: &str = r#"{"version":1,"manifest":"finance/ledger","tools":[{"name":"get_invoice","sha256":"00","definition":{"name":"get_invoice","inputSchema":{"type":"object"}}}]}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated manifests, missions and lock files load or fail with diagnostics; never panic.
    #[test]
    fn config_parsers_never_panic(m in edits(), n in edits(), l in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("tool-manifests/finance")).unwrap();
        std::fs::create_dir_all(root.join("missions/finance/prod")).unwrap();
        std::fs::write(root.join("tool-manifests/finance/ledger.toml"), mutate(MANIFEST.as_bytes(), &m)).unwrap();
        std::fs::write(root.join("tool-manifests/finance/ledger.lock.json"), mutate(LOCK.as_bytes(), &l)).unwrap();
        std::fs::write(root.join("missions/finance/prod/review.toml"), mutate(MISSION.as_bytes(), &n)).unwrap();
        let _ = crate::config::load(root, false);
        let _ = crate::tools::LockFile::read(&root.join("tool-manifests/finance/ledger.lock.json"));
    }
}

/// A small real export (two tenants, checkpoints), made once.
fn export() -> &'static str {
    static EXPORT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXPORT.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::Store::open(dir.path()).unwrap();
            let (audit, writer) = crate::audit::Auditor::start(&store).unwrap();
            for i in 0..6 {
                let mut e = crate::audit::Event::new(crate::audit::EventKind::Call);
                e.tenant = Some(if i % 2 == 0 { "acme" } else { "globex" }.into());
                e.tool = Some(format!("tool-{i}"));
                audit.record_durable(e).await.unwrap();
            }
            audit.stop().await.unwrap();
            writer.await.unwrap();
            let mut out = Vec::new();
            crate::audit::export(&store, &crate::audit::ExportFilter::default(), &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            // The seed itself must verify, or the property below proves nothing.
            assert!(text.lines().count() >= 9, "{text}");
            assert!(crate::audit::verify_file(std::io::Cursor::new(&text), None).is_ok());
            text
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated exports never panic the verifier, and any change to a line's bytes outside
    /// insignificant whitespace is refused.
    #[test]
    fn audit_codec_never_panics_and_detects_mutations(e in edits()) {
        let original = export();
        let mutated = mutate(original.as_bytes(), &e);
        let result = crate::audit::verify_file(std::io::Cursor::new(&mutated), None);
        let same_json = String::from_utf8(mutated.clone()).ok().is_some_and(|text| {
            text.lines().count() == original.lines().count()
                && text.lines().zip(original.lines()).all(|(a, b)| {
                    a == b
                        || serde_json::from_str::<serde_json::Value>(a).ok()
                            == serde_json::from_str::<serde_json::Value>(b).ok()
                            && a.split_whitespace().collect::<String>()
                                == b.split_whitespace().collect::<String>()
                })
        });
        if !same_json {
            prop_assert!(result.is_err(), "a mutated export verified");
        }
    }
}

//! Table-driven tests of the Cedar decisions, against the shipped ledger tools (real pinned
//! definitions from the repository's lock file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::mission::MissionRuntime;

pub(super) fn runtime() -> Arc<MissionRuntime> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = crate::config::load(&root, true).unwrap();
    MissionRuntime::build_all(&config)
        .unwrap()
        .remove("finance/prod/invoice-review")
        .unwrap()
}

pub(super) fn engine(rt: &MissionRuntime, text: &str) -> Result<MissionPolicy, Vec<String>> {
    MissionPolicy::from_text(
        &rt.mission,
        &rt.tools,
        &BTreeMap::new(),
        Some((PathBuf::from("p.cedar"), text.to_owned())),
    )
}

pub(super) fn caller(attrs: Value) -> Caller {
    Caller {
        issuer: "test".into(),
        subject: "alice@acme.example".into(),
        tenant: "acme".into(),
        agent: "invoice-bot".into(),
        roles: vec!["clerk".into()],
        token_id: format!("token-{attrs}"),
        audience: String::new(),
        expires_at: u64::MAX,
        scopes: vec![],
        attributes: serde_json::from_value(attrs).unwrap(),
        act: None,
        actors: vec![],
        token: Default::default(),
    }
}

/// Monday 2026-01-05 10:00 UTC.
pub(super) const MONDAY: u64 = 1_767_607_200;

fn decide(p: &MissionPolicy, c: &Caller, tool: &str, args: Value, now: u64) -> Decision {
    let args = args.as_object().cloned().unwrap();
    p.decide(&Query {
        caller: c,
        tool,
        arguments: &args,
        now,
        agent: None,
        risk: None,
    })
}

/// (policy text, tool, arguments, caller attributes, time, allowed, determining ids)
type Row = (
    &'static str,
    &'static str,
    Value,
    Value,
    u64,
    bool,
    Vec<String>,
);

#[test]
fn decisions() {
    let rt = runtime();
    let m = "finance/prod/invoice-review.cedar";
    // (policy text, tool, arguments, caller attributes, time, allowed, determining ids)
    let table: Vec<Row> = vec![
        // Deny by default.
        (
            "",
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
            MONDAY,
            false,
            vec![],
        ),
        (
            "permit (principal, action, resource);",
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
            MONDAY,
            true,
            vec![format!("{m}:policy0")],
        ),
        // forbid overrides permit; @id names the policy.
        (
            "permit (principal, action, resource);\n@id(\"no-pay\") forbid (principal, action == Action::\"call:pay_invoice\", resource);",
            "pay_invoice",
            json!({"invoice_id": "INV-1001", "amount_cents": 5}),
            json!({}),
            MONDAY,
            false,
            vec![format!("{m}:no-pay")],
        ),
        // An argument typed from the pinned schema (integer → Long).
        (
            "permit (principal, action == Action::\"call:pay_invoice\", resource) when { context.args.amount_cents < 100 };",
            "pay_invoice",
            json!({"invoice_id": "INV-1001", "amount_cents": 99}),
            json!({}),
            MONDAY,
            true,
            vec![format!("{m}:policy0")],
        ),
        (
            "permit (principal, action == Action::\"call:pay_invoice\", resource) when { context.args.amount_cents < 100 };",
            "pay_invoice",
            json!({"invoice_id": "INV-1001", "amount_cents": 100}),
            json!({}),
            MONDAY,
            false,
            vec![],
        ),
        // Principal attributes from the token.
        (
            "permit (principal, action, resource) when { principal has department && principal.department == \"finance\" && principal.groups.contains(\"ap\") };",
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({"department": "finance", "groups": ["ap"]}),
            MONDAY,
            true,
            vec![format!("{m}:policy0")],
        ),
        (
            "permit (principal, action, resource) when { principal has department && principal.department == \"finance\" };",
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
            MONDAY,
            false,
            vec![],
        ),
        // Tool attributes from the manifest; time of day.
        (
            "permit (principal, action in Action::\"call\", resource) when { resource.effect == \"read\" && resource.sensitivity_level <= 2 && context.time.weekday == \"mon\" && context.time.hour == 10 };",
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
            MONDAY,
            true,
            vec![format!("{m}:policy0")],
        ),
        (
            "permit (principal, action in Action::\"call\", resource) when { resource.effect == \"read\" };",
            "pay_invoice",
            json!({"invoice_id": "INV-1001", "amount_cents": 1}),
            json!({}),
            MONDAY,
            false,
            vec![],
        ),
        // Tenant hierarchy and agent entity.
        (
            "permit (principal in Tenant::\"acme\", action, resource in Mission::\"finance/prod/invoice-review\") when { context.agent == Agent::\"invoice-bot\" && context.agent.missions.contains(context.mission) };",
            "get_invoice",
            json!({"invoice_id": "INV-1001"}),
            json!({}),
            MONDAY,
            true,
            vec![format!("{m}:policy0")],
        ),
    ];
    for (i, (text, tool, args, attrs, now, allow, ids)) in table.into_iter().enumerate() {
        let p = engine(&rt, text).unwrap_or_else(|e| panic!("case {i}: {e:?}"));
        let d = decide(&p, &caller(attrs), tool, args, now);
        assert_eq!(d.allow, allow, "case {i}: {d:?}");
        assert_eq!(d.policies, ids, "case {i}: {d:?}");
        assert!(d.errors.is_empty(), "case {i}: {d:?}");
    }
}

#[test]
fn an_evaluation_error_denies_even_with_a_permit() {
    let rt = runtime();
    // Overflow in a forbid makes it error; Cedar would skip it and let the permit through.
    let p = engine(
        &rt,
        "permit (principal, action, resource);\nforbid (principal, action == Action::\"call:pay_invoice\", resource) when { context.args.amount_cents * 9223372036854775807 > 0 };",
    )
    .unwrap();
    let d = decide(
        &p,
        &caller(json!({})),
        "pay_invoice",
        json!({"invoice_id": "INV-1001", "amount_cents": 7}),
        MONDAY,
    );
    assert!(!d.allow, "{d:?}");
    assert!(!d.errors.is_empty(), "{d:?}");
}

#[test]
fn approval_annotation_and_version() {
    let rt = runtime();
    let text = "@approval(\"approver\") permit (principal, action == Action::\"call:pay_invoice\", resource) when { context.args.amount_cents > 10 };\npermit (principal, action == Action::\"call:pay_invoice\", resource) when { context.args.amount_cents <= 10 };";
    let p = engine(&rt, text).unwrap();
    let c = caller(json!({}));
    let big = decide(
        &p,
        &c,
        "pay_invoice",
        json!({"invoice_id": "INV-1001", "amount_cents": 11}),
        MONDAY,
    );
    assert_eq!(big.approval.as_deref(), Some("approver"));
    let small = decide(
        &p,
        &c,
        "pay_invoice",
        json!({"invoice_id": "INV-1001", "amount_cents": 10}),
        MONDAY,
    );
    assert!(small.allow && small.approval.is_none(), "{small:?}");
    assert_eq!(p.version(), digest(text));
    let bad = engine(
        &rt,
        "@approval(\"boss\") permit (principal, action, resource);",
    )
    .unwrap_err();
    assert!(
        bad[0].starts_with("p.cedar:1:1: `@approval(\"boss\")`"),
        "{bad:?}"
    );
}

#[test]
fn validation_reports_every_problem_with_its_location() {
    let rt = runtime();
    let errors = engine(
        &rt,
        "permit (principal, action == Action::\"call:pay_invoice\", resource)\n  when { context.args.amount > 1 };\npermit (principal, action, resource) when { principal.department == \"x\" };\n",
    )
    .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("p.cedar:2:10: "), "{errors:?}");
    assert!(errors[0].contains("amount_cents"), "{errors:?}");
    assert!(
        errors[0].ends_with("|   when { context.args.amount > 1 };"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("p.cedar:3:45: "), "{errors:?}");
}

#[test]
fn tools_list_visibility_is_decided_without_the_context() {
    let rt = runtime();
    let p = engine(
        &rt,
        "permit (principal, action == Action::\"call:get_invoice\", resource);\npermit (principal, action == Action::\"call:pay_invoice\", resource) when { context.args.amount_cents < 5 };\nforbid (principal, action == Action::\"call:list_invoices\", resource) unless { principal.roles.contains(\"auditor\") };",
    )
    .unwrap();
    let c = caller(json!({}));
    assert!(p.could_permit(&c, "get_invoice"));
    // Depends on the arguments: shown, decided at call time.
    assert!(p.could_permit(&c, "pay_invoice"));
    // No permit can match.
    assert!(!p.could_permit(&c, "approve_invoice"));
    assert!(!p.could_permit(&c, "list_invoices"));
}

#[test]
fn decimals_are_typed_or_left_out() {
    assert_eq!(schema::decimal("12"), Some("12.0".into()));
    assert_eq!(schema::decimal("-1.25"), Some("-1.25".into()));
    assert_eq!(schema::decimal("0.12345"), None);
    assert_eq!(schema::decimal("1e5"), None);
    assert_eq!(schema::decimal("99999999999999999"), None);
    let t = schema::ArgType::of(&json!({"type": "object", "properties": {
        "n": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}},
        "any": {}, "x": {"type": ["string", "null"]}}, "required": ["n", "tags"]}));
    assert_eq!(
        t.map(|t| t.cedar()),
        Some("{\"n\"?: decimal, \"tags\": Set<String>}".into())
    );
}

/// Median decision time with 100 policies loaded. Prints the figure; never asserts on time.
/// Method: 100 policies (argument, principal and time conditions; a few forbids), the shipped
/// mission's tools, 2,000 warm-up decisions then 20,000 timed ones, one `Instant` per decision
/// (User and Agent entities plus context built per call, as in a real call), median of the
/// samples. Run optimized: `cargo test --release --lib policy::tests::decision_time -- --nocapture`.
#[test]
fn decision_time_with_100_policies() {
    // Worst case: every policy on the decided tool's action. Spread: 25 per tool.
    timed_decisions("all 100 on the decided tool", |_| "pay_invoice");
    let tools = [
        "pay_invoice",
        "get_invoice",
        "list_invoices",
        "approve_invoice",
    ];
    timed_decisions("spread over the mission's 4 tools", |i| tools[i % 4]);
}

/// The benchmark's 100 policies: 97 permits on `tool_of(i)` (argument and principal
/// conditions), a permit for reads, a business-hours forbid and an amount-limit forbid.
pub(super) fn hundred_policies(tool_of: &dyn Fn(usize) -> &'static str) -> String {
    let mut text = String::new();
    for i in 0..97 {
        let tool = tool_of(i);
        let cond = if tool == "pay_invoice" {
            format!("context.args.amount_cents < {} && ", 1000 + i)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "@id(\"p{i}\") permit (principal, action == Action::\"call:{tool}\", resource) when {{ {cond}principal has department && principal.department == \"d{i}\" }};\n"
        ));
    }
    text.push_str("@id(\"read\") permit (principal, action in Action::\"call\", resource) when { resource.effect == \"read\" };\n");
    text.push_str("@id(\"hours\") forbid (principal, action in Action::\"call\", resource) unless { context.time.hour >= 7 && context.time.hour < 19 };\n");
    text.push_str("@id(\"limit\") forbid (principal, action == Action::\"call:pay_invoice\", resource) when { context.args.amount_cents > 100000 };\n");
    text
}

fn timed_decisions(shape: &str, tool_of: impl Fn(usize) -> &'static str) {
    let rt = runtime();
    let text = hundred_policies(&tool_of);
    let p = engine(&rt, &text).unwrap();
    assert_eq!(p.len(), 100);
    let c = caller(json!({"department": "d40", "groups": ["ap"], "region": "eu-west-1"}));
    let args = json!({"invoice_id": "INV-1001", "amount_cents": 1010});
    let args = args.as_object().cloned().unwrap();
    let q = Query {
        caller: &c,
        tool: "pay_invoice",
        arguments: &args,
        now: MONDAY,
        agent: None,
        risk: None,
    };
    // Unoptimized builds are ~100x slower: fewer rounds, so the suite stays quick.
    let (warm, timed) = if cfg!(debug_assertions) {
        (50, 500)
    } else {
        (2_000, 20_000)
    };
    for _ in 0..warm {
        assert!(p.decide(&q).allow);
    }
    let mut samples: Vec<u128> = (0..timed)
        .map(|_| {
            let t = std::time::Instant::now();
            let d = p.decide(&q);
            let e = t.elapsed().as_nanos();
            assert!(d.allow);
            e
        })
        .collect();
    samples.sort_unstable();
    let mut steps: Vec<[u128; 4]> = (0..timed / 10).map(|_| p.profile(&q)).collect();
    let median = |i: usize, steps: &mut Vec<[u128; 4]>| {
        steps.sort_unstable_by_key(|s| s[i]);
        steps[steps.len() / 2][i] as f64 / 1000.0
    };
    println!(
        "steps (median µs): entities {:.1}, context {:.1}, request {:.1}, evaluation {:.1}",
        median(0, &mut steps),
        median(1, &mut steps),
        median(2, &mut steps),
        median(3, &mut steps)
    );
    println!(
        "cedar decision with {} policies ({shape}): median {:.1} µs, p99 {:.1} µs ({} build)",
        p.len(),
        samples[samples.len() / 2] as f64 / 1000.0,
        samples[samples.len() * 99 / 100] as f64 / 1000.0,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}

#[test]
fn an_entity_store_is_reused_only_for_its_own_token_and_caller() {
    let rt = runtime();
    let p = engine(
        &rt,
        "permit (principal, action, resource) when { principal has department && principal.department == \"finance\" };",
    )
    .unwrap();
    let args = json!({"invoice_id": "INV-1001"});
    let mut finance = caller(json!({"department": "finance"}));
    finance.token_id = "same-id".into();
    assert!(decide(&p, &finance, "get_invoice", args.clone(), MONDAY).allow);
    // Another subject, or another issuer, with the same token id gets its own store.
    let mut sales = caller(json!({"department": "sales"}));
    sales.token_id = "same-id".into();
    sales.subject = "bob@acme.example".into();
    assert!(!decide(&p, &sales, "get_invoice", args.clone(), MONDAY).allow);
    sales.subject = finance.subject.clone();
    sales.issuer = "other-issuer".into();
    assert!(!decide(&p, &sales, "get_invoice", args.clone(), MONDAY).allow);
    // The same token again: its own store, still.
    assert!(decide(&p, &finance, "get_invoice", args, MONDAY).allow);
}

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

fn actor(agent: &str) -> crate::handoff::Actor {
    crate::handoff::Actor {
        agent: agent.into(),
        mission: format!("acme/prod/{agent}"),
        handoff: None,
    }
}

#[test]
fn the_actor_chain_is_in_the_context() {
    let rt = runtime();
    let p = engine(
        &rt,
        "permit (principal, action, resource);\n@id(\"not-via-a\") forbid (principal, action in Action::\"call\", resource) when { context.chain.contains(\"a-bot\") };",
    )
    .unwrap();
    let args = json!({"invoice_id": "INV-1001"});
    let direct = caller(json!({}));
    assert!(decide(&p, &direct, "get_invoice", args.clone(), MONDAY).allow);
    let mut handed = caller(json!({}));
    handed.actors = vec![actor("z-bot"), actor("a-bot")];
    let d = decide(&p, &handed, "get_invoice", args.clone(), MONDAY);
    assert!(!d.allow, "{d:?}");
    assert_eq!(d.policies, ["finance/prod/invoice-review.cedar:not-via-a"]);
    handed.actors = vec![actor("z-bot")];
    assert!(decide(&p, &handed, "get_invoice", args, MONDAY).allow);
}

#[test]
fn the_handoff_action_is_decided_on_the_target_mission() {
    let rt = runtime();
    let m = "finance/prod/invoice-review.cedar";
    let q = |c: &'static Caller| Query {
        caller: c,
        tool: "",
        arguments: &EMPTY,
        now: MONDAY,
        agent: None,
        risk: None,
    };
    static EMPTY: std::sync::LazyLock<serde_json::Map<String, Value>> =
        std::sync::LazyLock::new(serde_json::Map::new);
    static ALICE: std::sync::LazyLock<Caller> = std::sync::LazyLock::new(|| caller(json!({})));
    let alice = &*ALICE;
    // A permit-all policy permits handing on.
    let all = engine(&rt, "permit (principal, action, resource);").unwrap();
    let d = all.decide_handoff(&q(alice), "acme/prod/b");
    assert!(d.allow, "{d:?}");
    // Calls only: a handoff is not a call (deny by default, no policy named).
    let calls = engine(
        &rt,
        "permit (principal, action in Action::\"call\", resource);",
    )
    .unwrap();
    let d = calls.decide_handoff(&q(alice), "acme/prod/b");
    assert!(
        !d.allow && d.policies.is_empty() && d.errors.is_empty(),
        "{d:?}"
    );
    // A forbid on one target mission names itself; other targets pass.
    let text = "permit (principal, action, resource);\n@id(\"not-to-b\") forbid (principal, action == Action::\"handoff\", resource == Mission::\"acme/prod/b\");";
    let p = engine(&rt, text).unwrap();
    let d = p.decide_handoff(&q(alice), "acme/prod/b");
    assert!(!d.allow, "{d:?}");
    assert_eq!(d.policies, [format!("{m}:not-to-b")]);
    assert!(p.decide_handoff(&q(alice), "acme/prod/c").allow);
    // The handoff's context has no `args`: a policy reading them does not validate for it.
    let bad = engine(
        &rt,
        "permit (principal, action == Action::\"handoff\", resource) when { context.args.amount_cents > 1 };",
    );
    assert!(bad.is_err(), "{:?}", bad.map(|p| p.len()));
}

#[test]
fn a_policy_never_lowers_the_manifest_s_approval() {
    let cases = [
        (None, "none", None),
        (None, "user", Some("user")),
        (None, "approver", Some("approver")),
        (Some("user"), "none", Some("user")),
        (Some("user"), "user", Some("user")),
        // The case the review found: a permit's `@approval("user")` weakened the manifest.
        (Some("user"), "approver", Some("approver")),
        (Some("approver"), "none", Some("approver")),
        (Some("approver"), "user", Some("approver")),
        (Some("approver"), "approver", Some("approver")),
    ];
    for (policy, manifest, expected) in cases {
        assert_eq!(
            strictest_approval(policy, manifest).as_deref(),
            expected,
            "policy {policy:?}, manifest {manifest:?}"
        );
    }
}

#[test]
fn policies_see_the_agent_s_owner_and_status_and_the_caller_s_region() {
    let rt = runtime();
    let text = "permit (principal, action, resource) when { context.agent has status && context.agent.status == \"active\" && context.agent has owner && context.agent.owner == \"bob@acme.example\" && context has region && context.region == \"eu-west-1\" };";
    let p = engine(&rt, text).unwrap();
    let args = json!({"invoice_id": "INV-1001"})
        .as_object()
        .cloned()
        .unwrap();
    let facts = |owner: &str, status: &str| {
        Some(AgentFacts {
            owner: Some(owner.into()),
            status: Some(status.into()),
        })
    };
    let decide = |c: &Caller, agent: Option<AgentFacts>| {
        p.decide(&Query {
            caller: c,
            tool: "get_invoice",
            arguments: &args,
            now: MONDAY,
            agent,
            risk: None,
        })
        .allow
    };
    let eu = caller(json!({"region": "eu-west-1"}));
    let us = caller(json!({"region": "us-east-1"}));
    let nowhere = caller(json!({}));
    assert!(decide(&eu, facts("bob@acme.example", "active")));
    assert!(!decide(&eu, facts("bob@acme.example", "suspended")));
    assert!(!decide(&eu, facts("eve@acme.example", "active")));
    assert!(!decide(&eu, None), "no registry: no owner, no status");
    assert!(!decide(&us, facts("bob@acme.example", "active")));
    assert!(!decide(&nowhere, facts("bob@acme.example", "active")));
}

#[test]
fn live_risk_counters_count_calls_per_agent_and_forget_after_a_minute() {
    let rates = risk::Rates::default();
    let t0 = MONDAY;
    assert_eq!(rates.read("bot", t0).calls_last_minute, 0, "not seen yet");
    for i in 0..5 {
        let s = rates.record("bot", t0 + i);
        assert_eq!(s.calls_last_minute, i as i64 + 1);
    }
    // Reading counts nothing; another agent has its own counters.
    assert_eq!(rates.read("bot", t0 + 5).calls_last_minute, 5);
    assert_eq!(rates.read("bot", t0 + 5).calls_last_minute, 5);
    assert_eq!(rates.record("other", t0 + 5).calls_last_minute, 1);
    // Within the first minute the average is the minute itself: 100 %.
    assert_eq!(rates.record("bot", t0 + 10).baseline_percent, 100);
    // 60 s after the first call it has left the window.
    assert_eq!(rates.read("bot", t0 + 60).calls_last_minute, 5);
    assert_eq!(rates.read("bot", t0 + 70).calls_last_minute, 0);
    let later = rates.record("bot", t0 + 200);
    assert_eq!(later.calls_last_minute, 1);
    // 7 calls over 3 minutes: 2 a minute on average; 1 in the last minute is 50 %.
    assert_eq!(later.baseline_percent, 50);
    // A burst shows against the baseline.
    let mut burst = later;
    for _ in 0..9 {
        burst = rates.record("bot", t0 + 201);
    }
    assert_eq!(burst.calls_last_minute, 10);
    // 16 calls over 3 minutes: 5 a minute; 10 in the last minute is 200 %.
    assert_eq!(burst.baseline_percent, 200, "{burst:?}");
    // What a policy sees: the engine counts each call of `decide`.
    let rt = runtime();
    let p = engine(
        &rt,
        "permit (principal, action in Action::\"call\", resource) when { context.risk.calls_last_minute <= 2 };",
    )
    .unwrap();
    let c = caller(json!({}));
    let args = json!({"invoice_id": "INV-1001"});
    assert!(decide(&p, &c, "get_invoice", args.clone(), t0).allow);
    assert!(decide(&p, &c, "get_invoice", args.clone(), t0 + 1).allow);
    assert!(
        !decide(&p, &c, "get_invoice", args.clone(), t0 + 2).allow,
        "third call in a minute"
    );
    assert!(
        decide(&p, &c, "get_invoice", args, t0 + 120).allow,
        "a minute later"
    );
}

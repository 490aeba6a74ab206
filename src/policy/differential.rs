//! Differential test of the per-call evaluation ([`super::fast`]) against Cedar's public
//! `Authorizer::is_authorized`, on the very same requests and entity stores: every shipped
//! mission's decision cases, the 100-policy sets of the decision-time benchmark, a few hundred
//! generated requests, and arguments of every type the schema generator produces. Both must
//! give the same decision, the same determining policies, the same errors and the same approval.
//! (Debug builds also validate every request against the mission's schema, so these requests
//! are checked to conform as well.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use cedar_policy::{Authorizer, Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use cedar_policy_core::ast;
use cedar_policy_core::extensions::Extensions;
use serde_json::{Value, json};

use super::engine::Decision;
use super::schema::{self, ArgType};
use super::tests::{MONDAY, caller, engine, hundred_policies, runtime};
use super::{Query, RiskSignals, cases, fast};
use crate::mission::MissionRuntime;

/// What the compared decisions were, so a run that never allows, denies or errs fails.
#[derive(Debug, Default)]
struct Tally {
    allow: usize,
    deny: usize,
    errors: usize,
    approvals: usize,
}

impl Tally {
    /// Asserts the two decisions agree, and counts them.
    fn same(&mut self, fast: &Decision, cedar: &Decision, what: &str) {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        assert_eq!(
            fast.allow, cedar.allow,
            "{what}: decision differs: fast {fast:?}, cedar {cedar:?}"
        );
        assert_eq!(
            sorted(&fast.policies),
            sorted(&cedar.policies),
            "{what}: determining policies differ: fast {fast:?}, cedar {cedar:?}"
        );
        assert_eq!(
            sorted(&fast.errors),
            sorted(&cedar.errors),
            "{what}: errors differ: fast {fast:?}, cedar {cedar:?}"
        );
        assert_eq!(
            fast.approval, cedar.approval,
            "{what}: approval differs: fast {fast:?}, cedar {cedar:?}"
        );
        if fast.allow {
            self.allow += 1;
        } else {
            self.deny += 1;
        }
        if !fast.errors.is_empty() {
            self.errors += 1;
        }
        if fast.approval.is_some() {
            self.approvals += 1;
        }
    }
}

/// A small deterministic generator (xorshift64*), so a failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self) -> bool {
        self.next() & 1 == 1
    }
    /// One time in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    /// A random subset, in order.
    fn subset(&mut self, items: &[&str]) -> Vec<Value> {
        items
            .iter()
            .filter(|_| self.chance())
            .map(|s| json!(s))
            .collect()
    }
}

fn query<'a>(
    caller: &'a crate::authn::Caller,
    tool: &'a str,
    args: &'a serde_json::Map<String, Value>,
    now: u64,
    risk: RiskSignals,
) -> Query<'a> {
    Query {
        caller,
        tool,
        arguments: args,
        now,
        agent: None,
        risk: Some(risk),
    }
}

const NORMAL: RiskSignals = RiskSignals {
    calls_last_minute: 1,
    baseline_percent: 100,
};

#[test]
fn every_shipped_decision_case_decides_as_cedar_does() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = crate::config::load(&root, true).unwrap();
    let runtimes = MissionRuntime::build_all(&config).unwrap();
    let all = cases::load_all(&runtimes).unwrap();
    let mut tally = Tally::default();
    for (rt, cases) in &all {
        for (case, now) in cases {
            let caller = cases::caller(&rt.mission, case);
            let q = cases::query(case, &caller, *now);
            let what = format!("{} :: {}", rt.mission.id, case.name);
            tally.same(&rt.policy.decide(&q), &rt.policy.reference(&q), &what);
        }
    }
    assert!(
        tally.allow >= 3 && tally.deny >= 3 && tally.approvals >= 1,
        "{tally:?}"
    );
}

#[test]
fn the_benchmark_policy_sets_decide_as_cedar_does() {
    let rt = runtime();
    let tools = [
        "pay_invoice",
        "get_invoice",
        "list_invoices",
        "approve_invoice",
    ];
    let shapes: [&dyn Fn(usize) -> &'static str; 2] = [&|_| "pay_invoice", &|i| tools[i % 4]];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tally = Tally::default();
    for (s, shape) in shapes.iter().enumerate() {
        let p = engine(&rt, &hundred_policies(shape)).unwrap();
        assert_eq!(p.len(), 100);
        for i in 0..150 {
            let dept = rng.below(110);
            let c = if dept < 100 {
                caller(json!({"department": format!("d{dept}"), "groups": ["ap"]}))
            } else {
                caller(json!({}))
            };
            let tool = *rng.pick(&tools);
            let amount = *rng.pick(&[1, 999, 1010, 1096, 1097, 100_000, 100_001]);
            let args = match tool {
                "pay_invoice" => json!({"invoice_id": "INV-1001", "amount_cents": amount}),
                "list_invoices" => json!({}),
                _ => json!({"invoice_id": "INV-1001"}),
            };
            let args = args.as_object().cloned().unwrap();
            let now = MONDAY - 10 * 3600 + rng.below(24) as u64 * 3600;
            let q = query(&c, tool, &args, now, NORMAL);
            let what = format!("shape {s}, request {i}: {tool} {args:?} dept {dept} at {now}");
            tally.same(&p.decide(&q), &p.reference(&q), &what);
        }
    }
    assert!(tally.allow >= 20 && tally.deny >= 20, "{tally:?}");
}

/// Policies over everything a policy can see: `has` on optional arguments and attributes,
/// sets, hierarchy, `principal ==`, time, risk, region, approvals of both kinds, forbids, and
/// two that fail at evaluation (an entity that does not exist; an overflow).
const GENERATED_POLICIES: &str = r#"
@id("read") permit (principal, action in [Action::"call:list_invoices", Action::"call:get_invoice"], resource)
  when { context.agent.missions.contains(context.mission) && context.risk.calls_last_minute < 50 };
@id("by-status") permit (principal, action == Action::"call:list_invoices", resource)
  when { context.args has status && context.args.status == "open" };
@id("no-paid-for-contractors") forbid (principal, action == Action::"call:list_invoices", resource)
  when { context.args has status && context.args.status == "paid" && principal.groups.contains("contractors") };
@id("supplier") forbid (principal, action == Action::"call:list_invoices", resource)
  when { context.args has supplier && context.args.supplier like "SUP-9*" };
@id("pay-small") permit (principal, action == Action::"call:pay_invoice", resource)
  when { context.args.amount_cents <= 5000 && principal.roles.containsAny(["clerk", "lead"]) };
@id("pay-big") @approval("approver") permit (principal, action == Action::"call:pay_invoice", resource)
  when { context.args.amount_cents > 5000 };
@id("pay-mid") @approval("user") permit (principal, action == Action::"call:pay_invoice", resource)
  when { context.args.amount_cents > 3000 && context.args.amount_cents < 8000 };
@id("limit") forbid (principal, action == Action::"call:pay_invoice", resource)
  when { context.args.amount_cents > 900000 };
@id("hours") forbid (principal, action in Action::"call", resource)
  unless { context.time.hour >= 7 && context.time.hour < 19 };
@id("bob") permit (principal == User::"bob@acme.example", action == Action::"call:approve_invoice", resource);
@id("finance") permit (principal in Tenant::"acme", action == Action::"call:approve_invoice", resource)
  when { principal has department && principal.department == "finance" };
@id("clearance") forbid (principal, action in Action::"call", resource)
  when { principal has clearance && principal.clearance < resource.sensitivity_level };
@id("region") forbid (principal, action in Action::"call", resource)
  when { context has region && context.region == "us-east-1" };
@id("ghost") permit (principal, action == Action::"call:approve_invoice", resource)
  when { principal.groups.contains("ghosts") && Agent::"ghost".id == "ghost" };
@id("overflow") forbid (principal, action == Action::"call:pay_invoice", resource)
  when { principal.groups.contains("risky") && context.args.amount_cents * 4611686018427387904 > 0 };
@id("runaway") forbid (principal, action in Action::"call", resource)
  when { resource.effect != "read" && context.risk.baseline_percent > 500 };
@id("new-year") forbid (principal, action == Action::"call:approve_invoice", resource)
  when { context.time.date == "2026-01-01" || context.time.weekday == "sun" };
@id("agent") forbid (principal, action in Action::"call", resource)
  when { context.agent == Agent::"rogue-bot" && !principal.roles.contains("lead") };
@id("fallback") permit (principal, action == Action::"call:get_invoice", resource)
  when { principal.scopes.isEmpty() && principal.tenant == "acme" };
@id("handed-on-payments") forbid (principal, action == Action::"call:pay_invoice", resource)
  when { context.chain.contains("z-bot") && context.args.amount_cents <= 3000 };
@id("handoff-b") permit (principal, action == Action::"handoff", resource == Mission::"acme/prod/b")
  when { !context.chain.contains("z-bot") && context.time.hour >= 7 };
@id("handoff-any") @approval("user") permit (principal, action == Action::"handoff", resource)
  when { principal has department && principal.department == "finance" };
@id("no-rogue-handoff") forbid (principal, action == Action::"handoff", resource)
  when { context.agent == Agent::"rogue-bot" || (context has region && context.region == "us-east-1") };
"#;

#[test]
fn generated_requests_decide_as_cedar_does() {
    let rt = runtime();
    let p = engine(&rt, GENERATED_POLICIES).unwrap();
    let tools = [
        "pay_invoice",
        "get_invoice",
        "list_invoices",
        "approve_invoice",
    ];
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut tally = Tally::default();
    let mut handoffs = Tally::default();
    for i in 0..400 {
        let mut c = caller(json!({}));
        c.subject = (*rng.pick(&[
            "alice@acme.example",
            "bob@acme.example",
            "a.very.long.subject.name.beyond.inline@acme.example",
        ]))
        .into();
        c.agent = (*rng.pick(&["invoice-bot", "rogue-bot"])).into();
        c.roles = rng
            .subset(&["clerk", "lead", "auditor"])
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        c.token_id = String::new();
        // A direct call, or one handed on once or twice (`context.chain`).
        let actor = |agent: &str| crate::handoff::Actor {
            agent: agent.into(),
            mission: format!("acme/prod/{agent}"),
            handoff: None,
        };
        c.actors = match rng.below(3) {
            0 => vec![],
            1 => vec![actor("a-bot")],
            _ => vec![actor("z-bot"), actor("a-bot")],
        };
        let mut attrs = serde_json::Map::new();
        let mut groups = rng.subset(&["ap", "auditors"]);
        for rare in ["contractors", "ghosts", "risky"] {
            if rng.one_in(5) {
                groups.push(json!(rare));
            }
        }
        attrs.insert("groups".into(), Value::Array(groups));
        if rng.chance() {
            attrs.insert("department".into(), json!(rng.pick(&["finance", "sales"])));
        }
        if rng.chance() {
            let region = if rng.one_in(5) {
                "us-east-1"
            } else {
                "eu-west-1"
            };
            attrs.insert("region".into(), json!(region));
        }
        if rng.one_in(4) {
            attrs.insert("clearance".into(), json!(rng.below(4)));
        }
        c.attributes = attrs.into_iter().collect();
        let tool = *rng.pick(&tools);
        let mut args = serde_json::Map::new();
        match tool {
            "pay_invoice" => {
                args.insert("invoice_id".into(), json!("INV-1001"));
                let amount = *rng.pick(&[1_i64, 2999, 3001, 5000, 5001, 7999, 8000, 900_001]);
                args.insert("amount_cents".into(), json!(amount));
            }
            "list_invoices" => {
                if rng.chance() {
                    args.insert(
                        "status".into(),
                        json!(rng.pick(&["open", "approved", "paid"])),
                    );
                }
                if rng.chance() {
                    args.insert("supplier".into(), json!(rng.pick(&["SUP-001", "SUP-901"])));
                }
            }
            _ => {
                args.insert("invoice_id".into(), json!("INV-1001"));
            }
        }
        // Mostly business hours in the week from Monday 2026-01-05; else any hour of that
        // week, or new year's day.
        let now = match rng.below(8) {
            0 => 1_767_268_800 + rng.below(24) as u64 * 3600,
            1 | 2 => MONDAY - 10 * 3600 + rng.below(24 * 7) as u64 * 3600,
            _ => MONDAY - 3 * 3600 + rng.below(5) as u64 * 86_400 + rng.below(12 * 60) as u64 * 60,
        };
        let risk = RiskSignals {
            calls_last_minute: *rng.pick(&[1, 10, 49, 50, 60]),
            baseline_percent: if rng.one_in(5) {
                501
            } else {
                *rng.pick(&[50, 100, 500])
            },
        };
        let q = query(&c, tool, &args, now, risk);
        let what = format!(
            "request {i}: {tool} {args:?} by {} ({:?}, {:?}) via {} after {:?} at {now}, {risk:?}",
            c.subject, c.roles, c.attributes, c.agent, c.actors
        );
        tally.same(&p.decide(&q), &p.reference(&q), &what);
        let to = *rng.pick(&["acme/prod/b", "acme/prod/c"]);
        handoffs.same(
            &p.decide_handoff(&q, to),
            &p.reference_handoff(&q, to),
            &format!("handoff to {to} of {what}"),
        );
    }
    assert!(
        tally.allow >= 40 && tally.deny >= 40 && tally.errors >= 5 && tally.approvals >= 5,
        "{tally:?}"
    );
    assert!(
        handoffs.allow >= 40 && handoffs.deny >= 40 && handoffs.approvals >= 5,
        "{handoffs:?}"
    );
}

/// A tool input schema with every shape the generator types: sets (of strings, of records),
/// nested records (with optional fields), decimals, booleans, and an optional string.
fn rich_args() -> ArgType {
    ArgType::of(&json!({"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}},
        "lines": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "qty": {"type": "integer"}}, "required": ["sku", "qty"]}},
        "price": {"type": "number"},
        "ship": {"type": "object", "properties": {
            "country": {"type": "string"}, "express": {"type": "boolean"}}, "required": ["country"]},
        "note": {"type": "string"}
    }, "required": ["tags", "ship"]}))
    .unwrap()
}

/// Validated strictly against the rich schema.
const RICH_POLICIES: &str = r#"
@id("tagged") permit (principal, action, resource) when { context.args.tags.contains("urgent") };
@id("express") @approval("user") permit (principal, action, resource)
  when { context.args.ship has express && context.args.ship.express };
@id("cheap") permit (principal, action, resource)
  when { context.args has price && context.args.price.lessThan(decimal("10.50")) };
@id("country") forbid (principal, action, resource) when { context.args.ship.country == "XX" };
@id("lines") forbid (principal, action, resource)
  when { context.args has lines && context.args.lines.contains({sku: "BAD", qty: 1}) };
@id("bulk") @approval("approver") permit (principal, action, resource)
  when { context.args has lines && context.args.lines.containsAny([{sku: "A", qty: 100}]) };
"#;

/// Not validated (strict validation would reject them): one reads `note` without `has`, so it
/// fails at evaluation whenever `note` is absent; one is for an action the schema lacks.
const MISSING_ATTRIBUTE: &str = r#"
@id("note") permit (principal, action == Action::"a", resource) when { context.args.note == "x" };
@id("other-action") forbid (principal, action in [Action::"b"], resource);
"#;

#[test]
fn arguments_of_every_type_decide_as_cedar_does() {
    let ArgType::Record(fields) = rich_args() else {
        panic!("an object schema types as a record");
    };
    let schema_text = format!(
        "entity U; entity R;\naction a appliesTo {{ principal: [U], resource: [R], context: {{ args: {} }} }};",
        rich_args().cedar()
    );
    let (schema, _) = Schema::from_cedarschema_str(&schema_text).unwrap();
    // Named by their `@id`, as the engine names them.
    let named = |text: &str| {
        let mut set = PolicySet::new();
        for p in PolicySet::from_str(text).unwrap().policies() {
            let id = PolicyId::new(p.annotation("id").unwrap());
            set.add(p.new_id(id)).unwrap();
        }
        set
    };
    let mut set = named(RICH_POLICIES);
    let validated = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    assert!(validated.validation_passed(), "{validated:?}");
    for p in named(MISSING_ATTRIBUTE).policies() {
        set.add(p.clone()).unwrap();
    }
    let entities = Entities::empty();
    let uid = |text: &str| -> ast::EntityUID {
        cedar_policy::EntityUid::from_str(text)
            .unwrap()
            .as_ref()
            .clone()
    };
    let slice = fast::Slice::new(&set, &uid(r#"Action::"a""#), entities.as_ref());
    let core_schema: &cedar_policy_core::validator::ValidatorSchema = schema.as_ref();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut tally = Tally::default();
    for i in 0..300 {
        let mut args = serde_json::Map::new();
        args.insert(
            "tags".into(),
            Value::Array(rng.subset(&["urgent", "low", "x"])),
        );
        let mut ship = serde_json::Map::new();
        ship.insert("country".into(), json!(rng.pick(&["DE", "XX"])));
        if rng.chance() {
            ship.insert("express".into(), json!(rng.chance()));
        }
        args.insert("ship".into(), Value::Object(ship));
        if rng.chance() {
            let lines: Vec<Value> = (0..rng.below(4))
                .map(|_| match rng.below(4) {
                    0 => json!({"sku": "BAD", "qty": 1}),
                    1 => json!({"sku": "A", "qty": 100}),
                    2 => json!({"sku": "A", "qty": 1}),
                    _ => json!({"sku": "B", "qty": 3}),
                })
                .collect();
            args.insert("lines".into(), Value::Array(lines));
        }
        if rng.chance() {
            // 10.5 and 10.4999 sit on the boundary; the last three cannot be a decimal and
            // are left out.
            let prices = [
                "1",
                "10.5",
                "10.4999",
                "-2.25",
                "3.14159",
                "1e3",
                "99999999999999999.5",
            ];
            let price: &&str = rng.pick(&prices);
            let price: Value = serde_json::from_str(price).unwrap();
            args.insert("price".into(), price);
        }
        if rng.chance() {
            args.insert("note".into(), json!(rng.pick(&["x", "y"])));
        }
        let typed = schema::record(&fields, &args).unwrap();
        let context = ast::Context::Value(std::sync::Arc::new(BTreeMap::from([(
            "args".into(),
            typed,
        )])));
        // The typed arguments conform to the generated Cedar type (or this fails).
        let request = ast::Request::new(
            (uid(r#"U::"u""#), None),
            (uid(r#"Action::"a""#), None),
            (uid(r#"R::"r""#), None),
            context,
            Some(core_schema),
            Extensions::all_available(),
        )
        .unwrap_or_else(|e| panic!("request {i} {args:?}: {e}"));
        let fast = slice.decide(request.clone(), entities.as_ref());
        let response =
            Authorizer::new().is_authorized(&cedar_policy::Request::from(request), &set, &entities);
        let cedar = super::engine::cedar_decision(&response, &set);
        tally.same(&fast, &cedar, &format!("request {i}: {args:?}"));
    }
    assert!(
        tally.allow >= 20 && tally.deny >= 20 && tally.errors >= 20 && tally.approvals >= 5,
        "{tally:?}"
    );
}

#[test]
fn an_argument_cedar_cannot_hold_names_its_path() {
    let ArgType::Record(fields) = rich_args() else {
        panic!("an object schema types as a record");
    };
    let typed =
        |v: Value| schema::record(&fields, v.as_object().unwrap()).map_err(|e| e.to_string());
    assert_eq!(
        typed(
            json!({"tags": [], "ship": {"country": "DE"}, "lines": [{"sku": "A", "qty": 1}, {"qty": 1}]})
        ),
        Err("argument `lines[1].sku` is missing".into())
    );
    assert_eq!(
        typed(json!({"tags": ["a", 1], "ship": {"country": "DE"}})),
        Err("argument `tags[1]` does not have its schema's type".into())
    );
    assert_eq!(
        typed(
            json!({"tags": [], "ship": {"country": "DE"}, "lines": [{"qty": 18446744073709551615_u64, "sku": "A"}]})
        ),
        Err("argument `lines[0].qty` is outside Cedar's 64-bit integer range".into())
    );
    assert_eq!(
        typed(json!({"tags": []})),
        Err("argument `ship` is missing".into())
    );
}

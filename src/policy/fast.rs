//! The per-call Cedar evaluation, on Cedar's core (`cedar-policy-core`, the crate
//! `cedar-policy` is built on): each tool's policies with their conditions built once at load,
//! evaluated per call by Cedar's own evaluator with Cedar's authorization semantics.
//!
//! Why not `cedar_policy::Authorizer::is_authorized` per call: it rebuilds every policy's whole
//! condition (scope `&&` when `&&` !unless) on each evaluation and drops it after, and sorts each
//! policy into six lists with cloned ids and annotations; with the per-call request validation
//! and context interpretation of the public API, a decision over 100 policies took ~3x what it
//! takes here (`policy::tests::decision_time`). The semantics here are `is_authorized`'s exactly
//! (the differential test in `policy::differential` holds the two together):
//! - a policy whose condition is `true` is satisfied, `false` is not; an evaluation error skips
//!   the policy (not satisfied) and is reported (the engine then denies on any error);
//! - deny if a forbid is satisfied; allow if a permit is satisfied and no forbid is; else deny;
//! - the determining policies are the satisfied forbids on deny, the satisfied permits on allow.
//!
//! A request is fully known (no unknowns), so a residual cannot arise; if one did, it is an
//! evaluation error (deny).

use std::sync::Arc;

use cedar_policy::{PolicyId, PolicySet};
use cedar_policy_core::ast::{
    self, Effect, Expr, ExprKind, Literal, PrincipalOrResourceConstraint, ValueKind,
};
use cedar_policy_core::entities::Entities;
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::expr_builder::ExprBuilder as _;
use cedar_policy_core::extensions::Extensions;

use super::engine::Decision;

/// One policy, ready to evaluate.
struct Compiled {
    /// The policy id as reported (`<mission-id>.cedar:<id>`).
    id: String,
    effect: Effect,
    /// `@approval("approver" | "user")` (validated at load; only on permits).
    approval: Option<String>,
    /// The policy (its slot environment, empty for the static policies we accept).
    policy: ast::Policy,
    /// Its condition, built once (`ast::Policy::condition()` builds a new one per call), see
    /// [`prepared`].
    condition: Expr,
    /// `principal == X` in the scope: a call by anyone else cannot satisfy it. Cedar's
    /// condition starts with the principal constraint and `&&` short-circuits, so skipping it
    /// gives the same result Cedar does (not satisfied, no error).
    principal: Option<ast::EntityUID>,
}

/// The policies of one tool's action, in the policy file's order.
#[derive(Default)]
pub(super) struct Slice {
    policies: Vec<Compiled>,
}

impl Slice {
    /// Compiles the policies of the slice of the tool whose call action is `action` (built
    /// once, at load). `entities` is the mission's static store: it holds the action entities
    /// (from the schema), the only entities an action scope depends on.
    pub(super) fn new(slice: &PolicySet, action: &ast::EntityUID, entities: &Entities) -> Self {
        let core: &ast::PolicySet = slice.as_ref();
        // The action scope depends only on the action and the action hierarchy, both fixed for
        // this tool: decide it once. Where it holds, the condition leaves it out (it cannot
        // fail, so the result and the errors are the same); where it does not, no call to this
        // tool can satisfy the policy, which then is not evaluated at all (Cedar: not
        // satisfied, no error); otherwise the condition stays whole.
        let known = || ast::EntityUIDEntry::known(action.clone(), None);
        let scope = Evaluator::new(
            ast::Request::new_unchecked(known(), known(), known(), None),
            entities,
            Extensions::all_available(),
        );
        let policies = core
            .policies()
            .filter_map(|p| {
                let condition = match scope.interpret(&p.action_constraint().as_expr(), p.env()) {
                    Ok(v) if is_true_value(&v) => Expr::and(
                        p.principal_constraint().as_expr(),
                        Expr::and(
                            p.resource_constraint().as_expr(),
                            p.non_scope_constraints()
                                .cloned()
                                .unwrap_or_else(|| Expr::val(true)),
                        ),
                    ),
                    Ok(v) if is_false_value(&v) => return None,
                    Ok(_) | Err(_) => p.condition(),
                };
                let public = PolicyId::new(p.id().as_ref());
                let principal = match p.principal_constraint().as_inner() {
                    PrincipalOrResourceConstraint::Eq(ast::EntityReference::EUID(uid)) => {
                        Some(uid.as_ref().clone())
                    }
                    PrincipalOrResourceConstraint::Any
                    | PrincipalOrResourceConstraint::Eq(ast::EntityReference::Slot(_))
                    | PrincipalOrResourceConstraint::In(_)
                    | PrincipalOrResourceConstraint::Is(_)
                    | PrincipalOrResourceConstraint::IsIn(_, _) => None,
                };
                Some(Compiled {
                    id: p.id().to_string(),
                    effect: p.effect(),
                    approval: slice.annotation(&public, "approval").map(str::to_owned),
                    condition: prepared(&condition),
                    policy: p.clone(),
                    principal,
                })
            })
            .collect();
        Slice { policies }
    }

    /// Decides `request` against these policies with `entities`.
    pub(super) fn decide(&self, request: ast::Request, entities: &Entities) -> Decision {
        let principal = request.principal().uid().cloned();
        let eval = Evaluator::new(request, entities, Extensions::all_available());
        let mut permits: Vec<&Compiled> = Vec::new();
        let mut forbids: Vec<&Compiled> = Vec::new();
        let mut errors = Vec::new();
        for c in &self.policies {
            if let Some(only) = &c.principal
                && principal.as_ref() != Some(only)
            {
                continue;
            }
            let satisfied = match eval.interpret(&c.condition, c.policy.env()) {
                Ok(v) => match v.value_kind() {
                    ValueKind::Lit(Literal::Bool(b)) => *b,
                    ValueKind::Lit(_)
                    | ValueKind::Set(_)
                    | ValueKind::Record(_)
                    | ValueKind::ExtensionValue(_) => {
                        errors.push(format!(
                            "error while evaluating policy `{}`: type error: the condition is `{v}`, not a boolean",
                            c.id
                        ));
                        false
                    }
                },
                Err(e) => {
                    errors.push(format!("error while evaluating policy `{}`: {e}", c.id));
                    false
                }
            };
            if satisfied {
                match c.effect {
                    Effect::Permit => permits.push(c),
                    Effect::Forbid => forbids.push(c),
                }
            }
        }
        // Cedar's decision, then ours: any evaluation error denies (fail closed).
        let allow = !permits.is_empty() && forbids.is_empty() && errors.is_empty();
        let determining = if forbids.is_empty() { permits } else { forbids };
        let approval = if allow {
            strictest_approval(determining.iter().map(|c| c.approval.as_deref()))
        } else {
            None
        };
        Decision {
            allow,
            policies: determining.iter().map(|c| c.id.clone()).collect(),
            errors,
            approval,
        }
    }
}

/// The strictest `@approval` among the determining permits (`approver` over `user`).
pub(super) fn strictest_approval<'a>(
    approvals: impl Iterator<Item = Option<&'a str>>,
) -> Option<String> {
    let mut out: Option<String> = None;
    for a in approvals {
        match a {
            Some("approver") => return Some("approver".into()),
            Some(a) => out = Some(a.to_owned()),
            None => {}
        }
    }
    out
}

/// A policy's condition made cheap to evaluate, with the same value on every request:
/// - without source locations: the evaluator copies a node's location onto every value it
///   produces (an atomic reference count on the policy text per node), and they only serve
///   error labels we do not show (error texts do not include them);
/// - without the `true &&` an unconstrained scope (`principal`, `action`, `resource`) adds in
///   front: `true && x` is `x` for a boolean `x`, and strict validation makes every condition
///   boolean (a non-boolean result would still be an error, see [`Slice::decide`]).
fn prepared(condition: &Expr) -> Expr {
    match condition.expr_kind() {
        ExprKind::And { left, right } if is_true(left) => prepared(right),
        ExprKind::And { left, right } => build(ExprKind::And {
            left: Arc::new(unlocated(left)),
            right: Arc::new(prepared(right)),
        }),
        _ => unlocated(condition),
    }
}

fn is_true_value(v: &ast::Value) -> bool {
    matches!(v.value_kind(), ValueKind::Lit(Literal::Bool(true)))
}

fn is_false_value(v: &ast::Value) -> bool {
    matches!(v.value_kind(), ValueKind::Lit(Literal::Bool(false)))
}

fn is_true(e: &Expr) -> bool {
    matches!(e.expr_kind(), ExprKind::Lit(Literal::Bool(true)))
}

fn build(kind: ExprKind) -> Expr {
    ast::ExprBuilder::new().with_expr_kind(kind)
}

/// The same expression without source locations.
fn unlocated(e: &Expr) -> Expr {
    let arc = |e: &Arc<Expr>| Arc::new(unlocated(e));
    let all = |es: &[Expr]| Arc::new(es.iter().map(unlocated).collect::<Vec<_>>());
    build(match e.expr_kind() {
        k @ (ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Slot(_) | ExprKind::Unknown(_)) => {
            k.clone()
        }
        ExprKind::If {
            test_expr,
            then_expr,
            else_expr,
        } => ExprKind::If {
            test_expr: arc(test_expr),
            then_expr: arc(then_expr),
            else_expr: arc(else_expr),
        },
        ExprKind::And { left, right } => ExprKind::And {
            left: arc(left),
            right: arc(right),
        },
        ExprKind::Or { left, right } => ExprKind::Or {
            left: arc(left),
            right: arc(right),
        },
        ExprKind::UnaryApp { op, arg } => ExprKind::UnaryApp {
            op: *op,
            arg: arc(arg),
        },
        ExprKind::BinaryApp { op, arg1, arg2 } => ExprKind::BinaryApp {
            op: *op,
            arg1: arc(arg1),
            arg2: arc(arg2),
        },
        ExprKind::ExtensionFunctionApp { fn_name, args } => ExprKind::ExtensionFunctionApp {
            fn_name: fn_name.clone(),
            args: all(args),
        },
        ExprKind::GetAttr { expr, attr } => ExprKind::GetAttr {
            expr: arc(expr),
            attr: attr.clone(),
        },
        ExprKind::HasAttr { expr, attr } => ExprKind::HasAttr {
            expr: arc(expr),
            attr: attr.clone(),
        },
        ExprKind::ExtHasAttr { expr, attrs } => ExprKind::ExtHasAttr {
            expr: arc(expr),
            attrs: attrs.clone(),
        },
        ExprKind::Like { expr, pattern } => ExprKind::Like {
            expr: arc(expr),
            pattern: pattern.clone(),
        },
        ExprKind::Is { expr, entity_type } => ExprKind::Is {
            expr: arc(expr),
            entity_type: entity_type.clone(),
        },
        ExprKind::Set(items) => ExprKind::Set(all(items)),
        ExprKind::Record(fields) => ExprKind::Record(Arc::new(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), unlocated(v)))
                .collect(),
        )),
    })
}

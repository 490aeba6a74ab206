//! The generated Cedar schema of a mission, and the typing of call arguments.
//!
//! Each exposed tool gets its own action `Action::"call:<tool>"`, a member of the group
//! `Action::"call"`, whose context carries the tool's arguments typed from its pinned input
//! schema (`context.args`). Policies about any tool use `action in Action::"call"`; policies about
//! one tool's arguments use `action == Action::"call:<tool>"`, where strict validation knows the
//! argument types.
//!
//! JSON Schema → Cedar: `string` → `String`, `integer` → `Long`, `number` → `decimal` (always
//! optional: a number with more than 4 decimal places, an exponent or out of range is left out),
//! `boolean` → `Bool`, `array` with typed `items` → `Set`, `object` with `properties` → a record
//! (properties not in `required` are optional). Anything else (unions, `null`, untyped values)
//! is left out of the schema and of the context.

use std::fmt::Write as _;
use std::sync::LazyLock;

use cedar_policy_core::ast::{self, ExtensionFunction};
use cedar_policy_core::extensions::Extensions;
use serde_json::Value;

use crate::mission::ExposedTool;

/// The Cedar type of one argument, derived once from the pinned input schema.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgType {
    String,
    Long,
    Decimal,
    Bool,
    Set(Box<ArgType>),
    Record(Vec<Field>),
}

/// One attribute of a record type.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: ArgType,
    pub required: bool,
}

impl ArgType {
    /// The Cedar type of a JSON Schema, or `None` when it has none (left out).
    pub fn of(schema: &Value) -> Option<ArgType> {
        match schema.get("type")?.as_str()? {
            "string" => Some(ArgType::String),
            "integer" => Some(ArgType::Long),
            "number" => Some(ArgType::Decimal),
            "boolean" => Some(ArgType::Bool),
            "array" => ArgType::of(schema.get("items")?).map(|t| ArgType::Set(Box::new(t))),
            "object" => Some(ArgType::record(schema)),
            _ => None,
        }
    }

    /// The record type of an object schema (an object without `properties` is an empty record).
    pub fn record(schema: &Value) -> ArgType {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields = Vec::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                if let Some(ty) = ArgType::of(prop) {
                    // A decimal may be left out of the context, so it is never required.
                    let required = required.contains(&name.as_str()) && ty != ArgType::Decimal;
                    fields.push(Field {
                        name: name.clone(),
                        ty,
                        required,
                    });
                }
            }
        }
        ArgType::Record(fields)
    }

    /// The type in Cedar's schema syntax.
    pub fn cedar(&self) -> String {
        match self {
            ArgType::String => "String".into(),
            ArgType::Long => "Long".into(),
            ArgType::Decimal => "decimal".into(),
            ArgType::Bool => "Bool".into(),
            ArgType::Set(t) => format!("Set<{}>", t.cedar()),
            ArgType::Record(fields) => {
                let attrs: Vec<String> = fields
                    .iter()
                    .map(|f| {
                        format!(
                            "{}{}: {}",
                            quoted(&f.name),
                            if f.required { "" } else { "?" },
                            f.ty.cedar()
                        )
                    })
                    .collect();
                format!("{{{}}}", attrs.join(", "))
            }
        }
    }

    /// The Cedar value of an argument that already passed the pinned input schema. `Ok(None)`:
    /// left out (a decimal Cedar cannot hold); `Err`: a required value Cedar cannot hold (an
    /// integer outside the 64-bit range), which denies the call. Built straight as Cedar's core
    /// values (no expression to interpret per call).
    pub fn value(&self, v: &Value) -> Result<Option<ast::Value>, ArgError> {
        Ok(Some(match (self, v) {
            (ArgType::String, Value::String(s)) => ast::Value::from(s.as_str()),
            (ArgType::Bool, Value::Bool(b)) => ast::Value::from(*b),
            (ArgType::Long, Value::Number(n)) => match n.as_i64() {
                Some(i) => ast::Value::from(i),
                None => return Err(ArgError::Range(ArgPath::default())),
            },
            (ArgType::Decimal, Value::Number(n)) => match decimal(&n.to_string()) {
                Some(d) => match decimal_value(&d) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                None => return Ok(None),
            },
            (ArgType::Set(t), Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if let Some(x) = t.value(item).map_err(|e| e.at(Segment::Index(i)))? {
                        out.push(x);
                    }
                }
                ast::Value::set(out, None)
            }
            (ArgType::Record(fields), Value::Object(map)) => {
                return self::record(fields, map).map(Some);
            }
            _ => return Err(ArgError::Mismatch(ArgPath::default())),
        }))
    }
}

/// The Cedar record of an object's typed fields (untyped and absent ones are left out).
pub fn record(
    fields: &[Field],
    map: &serde_json::Map<String, Value>,
) -> Result<ast::Value, ArgError> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let at = |e: ArgError| e.at(Segment::Field(f.name.clone()));
        let Some(v) = map.get(&f.name) else {
            if f.required {
                return Err(at(ArgError::Missing(ArgPath::default())));
            }
            continue;
        };
        if let Some(x) = f.ty.value(v).map_err(at)? {
            out.push((f.name.as_str(), x));
        }
    }
    Ok(ast::Value::record(out, None))
}

/// One step of the path to an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Field(String),
    Index(usize),
}

/// The path to an argument (`invoice.lines[2].amount`), built only when typing fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgPath(Vec<Segment>);

impl std::fmt::Display for ArgPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Innermost first: the segments are pushed while the error travels outwards.
        for (i, s) in self.0.iter().rev().enumerate() {
            match s {
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// An argument Cedar cannot hold (the call is denied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("argument `{0}` is missing")]
    Missing(ArgPath),
    #[error("argument `{0}` does not have its schema's type")]
    Mismatch(ArgPath),
    #[error("argument `{0}` is outside Cedar's 64-bit integer range")]
    Range(ArgPath),
}

impl ArgError {
    /// The same error one level further out.
    fn at(mut self, segment: Segment) -> Self {
        match &mut self {
            ArgError::Missing(p) | ArgError::Mismatch(p) | ArgError::Range(p) => p.0.push(segment),
        }
        self
    }
}

/// Cedar's `decimal(...)` constructor, looked up once.
static DECIMAL: LazyLock<Option<&'static ExtensionFunction>> = LazyLock::new(|| {
    let name = ast::Name::parse_unqualified_name("decimal").ok()?;
    Extensions::all_available().func(&name).ok()
});

/// The Cedar `decimal` value of a literal [`decimal`] accepted.
fn decimal_value(literal: &str) -> Option<ast::Value> {
    match DECIMAL.as_ref()?.call(&[ast::Value::from(literal)]) {
        Ok(ast::PartialValue::Value(v)) => Some(v),
        Ok(ast::PartialValue::Residual(_)) | Err(_) => None,
    }
}

/// A JSON number as a Cedar `decimal` literal (at most 4 decimal places, in range), or `None`.
pub fn decimal(text: &str) -> Option<String> {
    if text.contains(['e', 'E']) {
        return None;
    }
    let (int, frac) = text.split_once('.').unwrap_or((text, "0"));
    let digits = int.trim_start_matches('-');
    if frac.is_empty()
        || frac.len() > 4
        || digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Cedar decimals are i64 scaled by 10^4.
    let whole: i64 = int.parse().ok()?;
    if whole.unsigned_abs() > 922_337_203_685_476 {
        return None;
    }
    Some(format!("{int}.{frac}"))
}

/// A Cedar string literal.
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The action id of calls to an exposed tool.
pub fn call_action(tool: &str) -> String {
    format!("call:{tool}")
}

/// The fixed part of every mission's schema: entity types, common types, the non-call actions.
const BASE: &str = r#"// Generated by Mandate from the mission and its pinned tools (`mandate schema cedar`).

/// A tenant (organisation); users and missions belong to theirs.
entity Tenant;

/// The mission (`<domain>/<env>/<name>`).
entity Mission in [Tenant] {
  id: String,
  domain: String,
  env: String,
  owner: String,
  regions: Set<String>,
};

/// The agent acting for the user (the token's `azp`). `owner` and `status` come from the agent
/// registry when there is one.
entity Agent {
  id: String,
  missions: Set<Mission>,
  owner?: String,
  status?: String,
};

/// The user the agent acts for, from the verified token. `groups`, `department`, `region` and
/// `clearance` come from the token's mapped claims when present.
entity User in [Tenant] {
  subject: String,
  issuer: String,
  tenant: String,
  roles: Set<String>,
  groups: Set<String>,
  scopes: Set<String>,
  department?: String,
  region?: String,
  clearance?: Long,
};

/// A tool of the mission, from its tool manifest. `sensitivity_level`: public 0, internal 1,
/// confidential 2, restricted 3.
entity Tool in [Mission] {
  name: String,
  qualified: String,
  effect: String,
  sensitivity: String,
  sensitivity_level: Long,
  region: String,
  domain: String,
  downstream: String,
  approval: String,
};

/// An item of a tool's result (security trimming, later).
entity Item in [Tool];

/// UTC wall-clock time of the request. `weekday`: mon, tue, wed, thu, fri, sat, sun.
type Time = { hour: Long, minute: Long, weekday: String, date: String };

/// The agent's recent activity on this mission: calls in the last minute, and that as a
/// percentage of its own average calls per minute.
type Risk = { calls_last_minute: Long, baseline_percent: Long };

/// Every tool call: use `action in Action::"call"`. In every context, `chain` holds the agents
/// of the earlier hops of a handed-off call (most recent first; empty for a direct call): they
/// can refuse (`forbid ... when { context.chain.contains("a-bot") }`) but the current agent,
/// `context.agent`, is the one that acts.
action call;

/// Handing the user's work to another mission's agent (a tool whose downstream is that agent),
/// decided in the handing mission before Mandate mints the handoff token: `resource` is the
/// receiving mission (`resource == Mission::"<domain>/<env>/<name>"`); no permit, no handoff.
action handoff appliesTo {
  principal: [User],
  resource: [Mission],
  context: { agent: Agent, mission: Mission, time: Time, region?: String, chain: Set<String>, risk: Risk },
};

action read appliesTo {
  principal: [User],
  resource: [Item],
  context: { agent: Agent, mission: Mission, time: Time, region?: String, chain: Set<String> },
};
"#;

/// The mission's Cedar schema (human format).
pub fn text(tools: &[(&ExposedTool, &ArgType)]) -> String {
    let mut out = String::from(BASE);
    for (tool, args) in tools {
        let _ = write!(
            out,
            "\n/// `{}` ({}).\naction {} in [call] appliesTo {{\n  principal: [User],\n  resource: [Tool],\n  context: {{ agent: Agent, mission: Mission, time: Time, region?: String, chain: Set<String>, risk: Risk, args: {} }},\n}};\n",
            tool.exposed,
            tool.qualified(),
            quoted(&call_action(&tool.exposed)),
            args.cedar()
        );
    }
    out
}

//! Missions at run time: the exposed toolset with pinned definitions and compiled schemas, and
//! the first pipeline stages — scope ([`Scoped`]) and validation ([`Valid`]).
//!
//! Schemas are compiled once, when the mission is loaded. A pinned schema that does not compile
//! (including any `$ref` to the network, which is never fetched) makes the mission fail to load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::authn::Caller;
use crate::call::{Completed, Reject};
use crate::config::{Config, Effect, Mission, ToolSpec};
use crate::downstream::Downstream;

/// One tool as a mission exposes it.
pub struct ExposedTool {
    /// The name the caller sees.
    pub exposed: String,
    pub manifest: String,
    /// The name on the downstream.
    pub tool: String,
    pub spec: ToolSpec,
    /// The region its downstream keeps data in (the tool manifest's `region`).
    pub region: String,
    /// The mission a call hands work to, when the downstream is another mission's agent
    /// (`[auth] exchange = "handoff"`): Cedar decides `Action::"handoff"` to it too.
    pub handoff_to: Option<String>,
    /// The pinned definition with `name` replaced by the exposed name.
    pub definition: Value,
    input: jsonschema::Validator,
    output: Option<jsonschema::Validator>,
    pub timeout: Duration,
    /// `<manifest id>/<downstream tool name>`, formatted once (every call's record names it).
    qualified: String,
}

impl ExposedTool {
    /// `<manifest id>/<downstream tool name>`.
    pub fn qualified(&self) -> String {
        self.qualified.clone()
    }

    pub fn effect(&self) -> Effect {
        self.spec.effect
    }
}

/// A mission ready to serve.
pub struct MissionRuntime {
    pub mission: Mission,
    /// Canonical resource URL: `<public_url>/mcp/<domain>/<env>/<name>`.
    pub resource_url: String,
    pub tools: BTreeMap<String, Arc<ExposedTool>>,
    /// The mission's Cedar engine (schema, validated policies, static entities).
    pub policy: crate::policy::MissionPolicy,
}

impl MissionRuntime {
    /// Builds every mission's runtime; errors name the mission and tool.
    pub fn build_all(
        config: &Config,
    ) -> Result<BTreeMap<String, Arc<MissionRuntime>>, Vec<String>> {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for mission in config.missions.values() {
            match Self::build(config, mission) {
                Ok(m) => {
                    out.insert(mission.id.clone(), Arc::new(m));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    fn build(config: &Config, mission: &Mission) -> Result<Self, Vec<String>> {
        let mut tools = BTreeMap::new();
        let mut errors = Vec::new();
        for t in &mission.tools {
            let Some(manifest) = config.manifests.get(&t.manifest) else {
                errors.push(format!(
                    "mission `{}`: unknown manifest `{}`",
                    mission.id, t.manifest
                ));
                continue;
            };
            let (Some(spec), Some(pinned)) = (
                manifest.tools.get(&t.tool),
                manifest.lock.as_ref().and_then(|l| l.get(&t.tool)),
            ) else {
                errors.push(format!(
                    "mission `{}`: tool `{}/{}` is not pinned: run `mandate pin {}`",
                    mission.id, t.manifest, t.tool, t.manifest
                ));
                continue;
            };
            let mut definition = pinned.definition.clone();
            if let Some(obj) = definition.as_object_mut() {
                obj.insert("name".into(), Value::String(t.exposed.clone()));
            }
            let compile = |key: &str| -> Result<Option<jsonschema::Validator>, String> {
                match pinned.definition.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(schema) => jsonschema::validator_for(schema).map(Some).map_err(|e| {
                        format!(
                            "mission `{}`: pinned `{key}` of `{}/{}` does not compile: {e}",
                            mission.id, t.manifest, t.tool
                        )
                    }),
                }
            };
            let input = match compile("inputSchema") {
                Ok(Some(v)) => v,
                Ok(None) => {
                    errors.push(format!(
                        "mission `{}`: pinned tool `{}/{}` has no `inputSchema`",
                        mission.id, t.manifest, t.tool
                    ));
                    continue;
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let output = match compile("outputSchema") {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            tools.insert(
                t.exposed.clone(),
                Arc::new(ExposedTool {
                    exposed: t.exposed.clone(),
                    manifest: t.manifest.clone(),
                    tool: t.tool.clone(),
                    timeout: spec.timeout.unwrap_or(manifest.timeout),
                    region: manifest.region.clone(),
                    handoff_to: manifest.handoff.as_ref().map(|h| h.mission.clone()),
                    spec: spec.clone(),
                    definition,
                    input,
                    output,
                    qualified: format!("{}/{}", t.manifest, t.tool),
                }),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let policy = crate::policy::MissionPolicy::load(
            mission,
            &tools,
            &crate::policy::agent_missions(config),
        )?;
        Ok(Self {
            resource_url: format!("{}{}", config.settings.public_url, mission.http_path()),
            mission: mission.clone(),
            tools,
            policy,
        })
    }

    /// Whether `caller` may use this mission at all: tenant, agent and expiry.
    pub fn admit(&self, caller: &Caller, now_unix: u64) -> Result<(), Denied> {
        crate::policy::walls::admit(&self.mission, caller)?;
        if !self.mission.agents.contains(&caller.agent) {
            return Err(Denied::Agent);
        }
        if now_unix > self.mission.expires_at {
            return Err(Denied::MissionExpired);
        }
        Ok(())
    }
}

/// Why a caller or call was refused by scope. The caller sees an unknown tool (or 403 for the
/// mission as a whole); the reason goes to the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("token tenant is not the mission's tenant")]
    Tenant,
    #[error("agent is not allowed on this mission")]
    Agent,
    #[error("mission has expired")]
    MissionExpired,
    #[error("tool is not in the mission's toolset")]
    NotInMission,
    #[error("tool is quarantined: its downstream definition differs from the lock file")]
    Quarantined,
    #[error("token region is not one of the mission's regions")]
    Region,
    #[error("the tool's downstream is outside the mission's regions")]
    Residency,
}

/// A call whose tool is in the mission's toolset and not quarantined, bound to the mission it
/// was checked against and to the downstream that serves the tool (resolved once, here).
pub struct Scoped {
    caller: Arc<Caller>,
    tool: Arc<ExposedTool>,
    downstream: Arc<Downstream>,
    mission: Arc<MissionRuntime>,
}

impl Scoped {
    pub fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }
    pub fn tool(&self) -> &Arc<ExposedTool> {
        &self.tool
    }
    pub fn downstream(&self) -> &Arc<Downstream> {
        &self.downstream
    }
    pub fn mission(&self) -> &Arc<MissionRuntime> {
        &self.mission
    }
}

/// Stage 2: scope. The caller must be admitted to the mission, the tool must be in its toolset,
/// served by a connected downstream, and not quarantined.
pub fn scope(
    mission: &crate::call::Mission,
    caller: Arc<Caller>,
    name: &str,
) -> Result<Scoped, Denied> {
    mission.runtime.admit(&caller, crate::authn::unix_now())?;
    let tool = mission
        .runtime
        .tools
        .get(name)
        .ok_or(Denied::NotInMission)?;
    let downstream = mission.downstream_of(tool).ok_or(Denied::NotInMission)?;
    if downstream.is_quarantined(&tool.tool) {
        return Err(Denied::Quarantined);
    }
    crate::policy::walls::residency(&mission.runtime.mission, tool)?;
    Ok(Scoped {
        caller,
        tool: tool.clone(),
        downstream: downstream.clone(),
        mission: mission.runtime.clone(),
    })
}

/// A scoped call whose arguments are a JSON object matching the pinned input schema.
pub struct Valid {
    scoped: Scoped,
    /// The arguments exactly as the caller sent them (`{}` when absent).
    raw: Box<RawValue>,
    arguments: serde_json::Map<String, Value>,
}

impl Valid {
    pub fn caller(&self) -> &Arc<Caller> {
        &self.scoped.caller
    }
    pub fn tool(&self) -> &Arc<ExposedTool> {
        &self.scoped.tool
    }
    pub fn downstream(&self) -> &Arc<Downstream> {
        &self.scoped.downstream
    }
    pub fn mission(&self) -> &Arc<MissionRuntime> {
        &self.scoped.mission
    }
    pub fn arguments(&self) -> &serde_json::Map<String, Value> {
        &self.arguments
    }
    pub fn raw_arguments(&self) -> &str {
        self.raw.get()
    }
}

/// A schema violation: which field, and what is wrong (without echoing the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{path}`: {message}")]
pub struct Invalid {
    /// `argument` or `output field`.
    pub what: &'static str,
    /// JSON pointer of the offending field (`/` for the whole object).
    pub path: String,
    pub message: String,
}

/// The first schema violation of `instance`, if any. The boolean `is_valid` runs first: it
/// builds no error values or iterators, so a valid call (the common case) pays only for the
/// check itself; the errors are collected only for an invalid one.
fn first_error(
    validator: &jsonschema::Validator,
    instance: &Value,
    what: &'static str,
) -> Result<(), Invalid> {
    if validator.is_valid(instance) {
        return Ok(());
    }
    match validator.iter_errors(instance).next() {
        // `is_valid` said no: fail closed even if no error is reported.
        None => Err(Invalid {
            what,
            path: "/".into(),
            message: "does not match the pinned schema".into(),
        }),
        Some(e) => {
            let path = e.instance_path.to_string();
            // A missing property is named as the field itself, not as its parent object.
            if let jsonschema::error::ValidationErrorKind::Required { property } = &e.kind
                && let Some(name) = property.as_str()
            {
                return Err(Invalid {
                    what,
                    path: format!("{path}/{name}"),
                    message: "is required".into(),
                });
            }
            Err(Invalid {
                what,
                path: if path.is_empty() { "/".into() } else { path },
                message: e.masked_with("value").to_string(),
            })
        }
    }
}

/// Stage 3: validate arguments against the pinned input schema. The raw arguments are parsed
/// once here; the raw bytes are kept for the downstream request.
pub fn validate(scoped: Scoped, raw: Option<Box<RawValue>>) -> Result<Valid, Reject> {
    let raw = match raw {
        Some(raw) => raw,
        None => RawValue::from_string("{}".into()).map_err(|_| Reject::ArgumentsNotObject)?,
    };
    let instance: Value =
        serde_json::from_str(raw.get()).map_err(|_| Reject::ArgumentsNotObject)?;
    let Some(object) = instance.as_object() else {
        return Err(Reject::ArgumentsNotObject);
    };
    use crate::call::limits;
    if object.len() > limits::ARGUMENTS {
        return Err(Reject::TooLarge(format!(
            "`arguments` has {} names; the limit is {}",
            object.len(),
            limits::ARGUMENTS
        )));
    }
    if let Some(long) = object.keys().find(|k| k.len() > limits::ARGUMENT_NAME) {
        return Err(Reject::TooLarge(format!(
            "an argument name is {} bytes; the limit is {}",
            long.len(),
            limits::ARGUMENT_NAME
        )));
    }
    first_error(&scoped.tool.input, &instance, "argument").map_err(Reject::InvalidArguments)?;
    let Value::Object(arguments) = instance else {
        return Err(Reject::ArgumentsNotObject);
    };
    Ok(Valid {
        scoped,
        raw,
        arguments,
    })
}

/// The parts of a `CallToolResult` the output stage looks at. `S` is what `structuredContent`
/// becomes: a [`Value`] when there is an output schema to check it against, else
/// [`serde::de::IgnoredAny`], so a tool without one builds no value it would drop unread.
#[derive(serde::Deserialize)]
struct ResultView<'a, S> {
    #[serde(rename = "structuredContent")]
    structured: Option<S>,
    #[serde(rename = "isError")]
    is_error: Option<bool>,
    #[serde(borrow, rename = "resultType")]
    result_type: Option<std::borrow::Cow<'a, str>>,
}

impl<S> ResultView<'_, S> {
    fn input_required(&self) -> bool {
        self.result_type.as_deref() == Some("input_required")
    }
}

/// Reads the parts of a result the output stage looks at, in one pass over its bytes.
fn result_view<'a, S: serde::Deserialize<'a>>(
    raw: &'a RawValue,
) -> Result<ResultView<'a, S>, Reject> {
    serde_json::from_str(raw.get()).map_err(|e| {
        Reject::InvalidOutput(Invalid {
            what: "output",
            path: "/".into(),
            message: format!("the result is not a JSON object: {e}"),
        })
    })
}

/// Stage 8: check the downstream's raw result. `structuredContent` must match the pinned output
/// schema; a tool with an output schema must return structured content unless the result is an
/// error. A 2026-07-28 `input_required` result passes through for the caller to answer.
///
/// The downstream lane hands over the result as raw bytes (it only finds where the result is
/// in the response), so this is the one place its content is parsed.
pub fn check_output(tool: &ExposedTool, raw: Box<RawValue>) -> Result<Completed, Reject> {
    let (input_required, is_error) = match &tool.output {
        None => {
            let view = result_view::<serde::de::IgnoredAny>(&raw)?;
            (view.input_required(), view.is_error.unwrap_or(false))
        }
        Some(schema) => {
            let view = result_view::<Value>(&raw)?;
            let is_error = view.is_error.unwrap_or(false);
            if !view.input_required() {
                check_structured(schema, view.structured.as_ref(), is_error)?;
            }
            (view.input_required(), is_error)
        }
    };
    if input_required {
        return Ok(Completed::InputRequired(raw));
    }
    Ok(Completed::Result { raw, is_error })
}

/// A tool with an output schema: its `structuredContent` matches it, and only an error result
/// may leave it out.
fn check_structured(
    schema: &jsonschema::Validator,
    structured: Option<&Value>,
    is_error: bool,
) -> Result<(), Reject> {
    match structured {
        Some(v) if !is_error => {
            first_error(schema, v, "output field").map_err(Reject::InvalidOutput)
        }
        Some(_) => Ok(()),
        None if is_error => Ok(()),
        None => Err(Reject::InvalidOutput(Invalid {
            what: "output field",
            path: "/".into(),
            message: "the tool declares an output schema but returned no structuredContent".into(),
        })),
    }
}

/// A caller admitted to a mission for pass-through requests (resources, prompts, completion),
/// bound to the downstreams the mission passes through.
pub struct Admitted {
    caller: Arc<Caller>,
    resources: Vec<Arc<Downstream>>,
    prompts: Vec<Arc<Downstream>>,
    all: Vec<Arc<Downstream>>,
}

impl Admitted {
    pub fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }
    /// Downstreams whose resources the mission passes through.
    pub fn resources(&self) -> &[Arc<Downstream>] {
        &self.resources
    }
    /// Downstreams whose prompts the mission passes through.
    pub fn prompts(&self) -> &[Arc<Downstream>] {
        &self.prompts
    }
    /// Every downstream of the mission (for list-changed listeners).
    pub fn all(&self) -> &[Arc<Downstream>] {
        &self.all
    }
}

/// Admission for pass-through requests: tenant, agent and expiry.
pub fn admit(mission: &crate::call::Mission, caller: Arc<Caller>) -> Result<Admitted, Denied> {
    mission.runtime.admit(&caller, crate::authn::unix_now())?;
    Ok(Admitted {
        caller,
        resources: mission.resource_downstreams(),
        prompts: mission.prompt_downstreams(),
        all: mission.downstreams().cloned().collect(),
    })
}

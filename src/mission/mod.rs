//! Missions at run time: the exposed toolset with pinned definitions and compiled schemas, and
//! the first pipeline stages — scope ([`Scoped`]) and validation ([`Valid`]).
//!
//! Schemas are compiled once, when the mission is loaded. A pinned schema that does not compile
//! (including any `$ref` to the network, which is never fetched) makes the mission fail to load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::authn::Caller;
use crate::config::{Config, Effect, Mission, ToolSpec};

/// One tool as a mission exposes it.
pub struct ExposedTool {
    /// The name the caller sees.
    pub exposed: String,
    pub manifest: String,
    /// The name on the downstream.
    pub tool: String,
    pub spec: ToolSpec,
    /// The pinned definition with `name` replaced by the exposed name.
    pub definition: Value,
    input: jsonschema::Validator,
    output: Option<jsonschema::Validator>,
    pub timeout: Duration,
}

impl ExposedTool {
    /// `<manifest id>/<downstream tool name>`.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.manifest, self.tool)
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
                    spec: spec.clone(),
                    definition,
                    input,
                    output,
                }),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            resource_url: format!("{}{}", config.settings.public_url, mission.http_path()),
            mission: mission.clone(),
            tools,
        })
    }

    /// Whether `caller` may use this mission at all: tenant, agent and expiry.
    pub fn admit(&self, caller: &Caller, now_unix: u64) -> Result<(), Denied> {
        if caller.tenant != self.mission.tenant {
            return Err(Denied::Tenant);
        }
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
}

/// A call whose tool is in the mission's toolset and not quarantined.
pub struct Scoped {
    caller: Arc<Caller>,
    tool: Arc<ExposedTool>,
}

impl Scoped {
    pub fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }
    pub fn tool(&self) -> &Arc<ExposedTool> {
        &self.tool
    }
}

/// Stage 2: scope.
pub fn scope(
    mission: &MissionRuntime,
    caller: Arc<Caller>,
    name: &str,
    is_quarantined: impl Fn(&ExposedTool) -> bool,
) -> Result<Scoped, Denied> {
    mission.admit(&caller, crate::authn::unix_now())?;
    let tool = mission.tools.get(name).ok_or(Denied::NotInMission)?;
    if is_quarantined(tool) {
        return Err(Denied::Quarantined);
    }
    Ok(Scoped {
        caller,
        tool: tool.clone(),
    })
}

/// A scoped call whose arguments match the pinned input schema.
pub struct Valid {
    scoped: Scoped,
    arguments: serde_json::Map<String, Value>,
}

impl Valid {
    pub fn caller(&self) -> &Arc<Caller> {
        &self.scoped.caller
    }
    pub fn tool(&self) -> &Arc<ExposedTool> {
        &self.scoped.tool
    }
    pub fn arguments(&self) -> &serde_json::Map<String, Value> {
        &self.arguments
    }
    pub fn into_arguments(self) -> serde_json::Map<String, Value> {
        self.arguments
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

fn first_error(
    validator: &jsonschema::Validator,
    instance: &Value,
    what: &'static str,
) -> Result<(), Invalid> {
    match validator.iter_errors(instance).next() {
        None => Ok(()),
        Some(e) => {
            let path = e.instance_path.to_string();
            Err(Invalid {
                what,
                path: if path.is_empty() { "/".into() } else { path },
                message: e.masked_with("value").to_string(),
            })
        }
    }
}

/// Stage 3: validate arguments against the pinned input schema.
pub fn validate(
    scoped: Scoped,
    arguments: Option<serde_json::Map<String, Value>>,
) -> Result<Valid, (Scoped, Invalid)> {
    let instance = Value::Object(arguments.unwrap_or_default());
    if let Err(e) = first_error(&scoped.tool.input, &instance, "argument") {
        return Err((scoped, e));
    }
    let arguments = match instance {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    Ok(Valid { scoped, arguments })
}

/// Stage 6: check `structuredContent` against the pinned output schema. A tool with an output
/// schema must return structured content unless the result is an error.
pub fn check_output(
    tool: &ExposedTool,
    structured: Option<&Value>,
    is_error: bool,
) -> Result<(), Invalid> {
    let Some(schema) = &tool.output else {
        return Ok(());
    };
    match structured {
        Some(v) if !is_error => first_error(schema, v, "output field"),
        Some(_) => Ok(()),
        None if is_error => Ok(()),
        None => Err(Invalid {
            what: "output field",
            path: "/".into(),
            message: "the tool declares an output schema but returned no structuredContent".into(),
        }),
    }
}

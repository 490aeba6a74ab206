//! The Cedar engine of one mission: its generated schema, its policies (parsed and strictly
//! validated once, at load), the static entities (tenant, mission, tools, actions), and the
//! per-call decision (only the `User`, the `Agent` and the context are built per call).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Decision as CedarDecision, Effect as CedarEffect, Entities,
    Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, RequestBuilder,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use cedar_policy_core::ast;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::ValidatorSchema;

use super::fast;
use super::risk::{Rates, RiskSignals};
use super::schema::{self, ArgType, Field};
use crate::authn::Caller;
use crate::config::Mission;
use crate::config::diag::Source;
use crate::mission::ExposedTool;

/// What the agent registry knows about an agent (the registry fills these; absent until then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFacts {
    pub owner: Option<String>,
    pub status: Option<String>,
}

/// A token's entity store, the caller it is for and the registry facts about its agent it was
/// built with (kept by token id; the issuer and subject are checked on every use).
struct StoreEntry {
    issuer: String,
    subject: String,
    facts: Option<AgentFacts>,
    entities: Arc<Entities>,
}

/// One decision question: who calls which tool with what, when.
pub struct Query<'a> {
    pub caller: &'a Caller,
    /// The exposed tool name.
    pub tool: &'a str,
    pub arguments: &'a serde_json::Map<String, serde_json::Value>,
    /// Unix seconds (the request's time).
    pub now: u64,
    /// Registry facts about the calling agent, when a registry is configured.
    pub agent: Option<AgentFacts>,
    /// Fixed risk signals (decision cases); `None` counts this call and reads the live signals.
    pub risk: Option<RiskSignals>,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The determining policies, as `<mission-id>.cedar:<policy id>`.
    pub policies: Vec<String>,
    /// Evaluation errors (any of them denies).
    pub errors: Vec<String>,
    /// `@approval("approver" | "user")` on a determining permit.
    pub approval: Option<String>,
}

impl Decision {
    /// A decision that could not be made: fail closed, with why.
    fn failed(error: String) -> Self {
        Self {
            allow: false,
            policies: Vec::new(),
            errors: vec![error],
            approval: None,
        }
    }
}

struct ToolEntry {
    uid: EntityUid,
    action: EntityUid,
    args: Vec<Field>,
    /// The policies whose action scope can match this tool's action (sliced once at load:
    /// a policy whose scope cannot match never affects the decision). `tools/list` decides
    /// on it with Cedar's partial evaluation.
    slice: PolicySet,
    /// The same policies with their conditions built, for every call ([`fast`]).
    fast: fast::Slice,
}

/// The parts of every request that are the same for every call, as Cedar's core values.
struct Constants {
    user: ast::EntityType,
    agent: ast::EntityType,
    /// `context.mission`.
    mission: ast::Value,
    /// `context.chain` of a direct call (no earlier actors): built once, so a call without a
    /// handoff allocates nothing for it.
    chain: ast::Value,
}

/// The `handoff` action: decided when a call of this mission hands work to another mission
/// (the resource is the receiving `Mission`, known only per call).
struct HandoffEntry {
    action: EntityUid,
    /// The policies whose action scope can match `Action::"handoff"`.
    slice: PolicySet,
    fast: fast::Slice,
}

struct Types {
    user: EntityTypeName,
    agent: EntityTypeName,
    mission: EntityTypeName,
    tenant: EntityTypeName,
}

/// A mission's loaded policy engine.
pub struct MissionPolicy {
    mission_id: String,
    tenant_uid: EntityUid,
    mission_uid: EntityUid,
    schema: Schema,
    schema_text: String,
    policies: PolicySet,
    version: String,
    /// The policy file, when the mission has one.
    file: Option<PathBuf>,
    entities: Entities,
    tools: BTreeMap<String, ToolEntry>,
    handoff: HandoffEntry,
    /// The missions naming each agent (for `Agent.missions`).
    agent_missions: HashMap<String, Vec<EntityUid>>,
    types: Types,
    constants: Constants,
    authorizer: Authorizer,
    rates: Rates,
    /// The entity store of each recent token (its `User` and `Agent` never change for it),
    /// by token id.
    stores: std::sync::Mutex<HashMap<String, StoreEntry>>,
}

/// Most tokens whose entity store is kept; the cache is emptied when it grows past this.
const STORES: usize = 4096;

/// The `.cedar` file beside a mission.
pub fn policy_path(mission: &Mission) -> PathBuf {
    mission.path.with_extension("cedar")
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(name).map_err(|e| format!("internal: entity type `{name}`: {e}"))
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.into_iter().map(string))
}

/// The numeric level of a tool sensitivity.
pub fn sensitivity_level(s: &str) -> i64 {
    match s {
        "public" => 0,
        "internal" => 1,
        "confidential" => 2,
        _ => 3,
    }
}

/// A problem in a policy file: `path:line:col: message`, then the offending line.
fn diag(path: &Path, text: &str, offset: usize, message: &str) -> String {
    let d = Source { path, text }.at(offset, message.replace('\n', " "));
    let line = text.lines().nth(d.line.saturating_sub(1)).unwrap_or("");
    format!("{d}\n    | {line}")
}

/// Where a policy's source text (Cedar keeps it) starts in its file.
fn offset_in(text: &str, policy: &str) -> usize {
    text.find(policy.trim()).unwrap_or(0)
}

fn first_offset(e: &dyn miette::Diagnostic) -> usize {
    e.labels()
        .and_then(|mut l| l.next())
        .map_or(0, |l| l.offset())
}

fn message(e: &(dyn miette::Diagnostic + '_), text: String) -> String {
    match e.help() {
        Some(help) => format!("{text} ({help})"),
        None => text,
    }
}

impl MissionPolicy {
    /// Builds the engine of `mission`: generates its schema, reads `<name>.cedar` (if any),
    /// parses and strictly validates it. Errors are `path:line:col: message` with the line.
    pub fn load(
        mission: &Mission,
        tools: &BTreeMap<String, Arc<ExposedTool>>,
        agent_missions: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, Vec<String>> {
        let path = policy_path(mission);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(vec![format!("{}: cannot read: {e}", path.display())]),
        };
        Self::from_text(mission, tools, agent_missions, text.map(|t| (path, t)))
    }

    /// [`MissionPolicy::load`] with the policy text given (`None`: no policy file).
    pub fn from_text(
        mission: &Mission,
        tools: &BTreeMap<String, Arc<ExposedTool>>,
        agent_missions: &BTreeMap<String, Vec<String>>,
        file: Option<(PathBuf, String)>,
    ) -> Result<Self, Vec<String>> {
        let internal = |e: String| vec![format!("mission `{}`: {e}", mission.id)];
        let types = Types {
            user: type_name("User").map_err(internal)?,
            agent: type_name("Agent").map_err(internal)?,
            mission: type_name("Mission").map_err(internal)?,
            tenant: type_name("Tenant").map_err(internal)?,
        };
        let tool_type = type_name("Tool").map_err(internal)?;
        let action_type = type_name("Action").map_err(internal)?;

        // The schema: one call action per exposed tool, arguments typed from the pinned schema.
        let typed: Vec<(Arc<ExposedTool>, ArgType)> = tools
            .values()
            .map(|t| {
                let input = t
                    .definition
                    .get("inputSchema")
                    .unwrap_or(&serde_json::Value::Null);
                (t.clone(), ArgType::record(input))
            })
            .collect();
        let refs: Vec<(&ExposedTool, &ArgType)> =
            typed.iter().map(|(t, a)| (t.as_ref(), a)).collect();
        let schema_text = schema::text(&refs);
        let (schema, _) = Schema::from_cedarschema_str(&schema_text)
            .map_err(|e| internal(format!("the generated Cedar schema does not parse: {e}")))?;

        // Static entities.
        let tenant_uid = uid(&types.tenant, &mission.tenant);
        let mission_uid = uid(&types.mission, &mission.id);
        let mut entities = vec![
            Entity::new_no_attrs(tenant_uid.clone(), HashSet::new()),
            Entity::new(
                mission_uid.clone(),
                HashMap::from([
                    ("id".into(), string(&mission.id)),
                    ("domain".into(), string(&mission.domain)),
                    ("env".into(), string(&mission.env)),
                    ("owner".into(), string(&mission.owner)),
                    (
                        "regions".into(),
                        strings(mission.regions.iter().map(String::as_str)),
                    ),
                ]),
                HashSet::from([tenant_uid.clone()]),
            )
            .map_err(|e| internal(e.to_string()))?,
        ];
        let mut entries = BTreeMap::new();
        for (tool, args) in &typed {
            let tool_uid = uid(&tool_type, &tool.exposed);
            let domain = tool.manifest.split('/').next().unwrap_or_default();
            entities.push(
                Entity::new(
                    tool_uid.clone(),
                    HashMap::from([
                        ("name".into(), string(&tool.exposed)),
                        ("qualified".into(), string(&tool.qualified())),
                        ("effect".into(), string(tool.effect().as_str())),
                        ("sensitivity".into(), string(&tool.spec.sensitivity)),
                        (
                            "sensitivity_level".into(),
                            RestrictedExpression::new_long(sensitivity_level(
                                &tool.spec.sensitivity,
                            )),
                        ),
                        ("region".into(), string(&tool.region)),
                        ("domain".into(), string(domain)),
                        ("downstream".into(), string(&tool.manifest)),
                        ("approval".into(), string(&tool.spec.approval)),
                    ]),
                    HashSet::from([mission_uid.clone()]),
                )
                .map_err(|e| internal(e.to_string()))?,
            );
            let ArgType::Record(fields) = args else {
                continue;
            };
            entries.insert(
                tool.exposed.clone(),
                ToolEntry {
                    uid: tool_uid,
                    action: uid(&action_type, &schema::call_action(&tool.exposed)),
                    args: fields.clone(),
                    slice: PolicySet::new(),
                    fast: fast::Slice::default(),
                },
            );
        }
        let entities = Entities::from_entities(entities, Some(&schema)).map_err(|e| {
            internal(format!(
                "the mission's entities do not match the schema: {e}"
            ))
        })?;

        let (policies, version, path) = match file {
            None => (PolicySet::new(), super::digest(""), None),
            Some((path, text)) => {
                let policies = parse(&mission.id, &path, &text, &schema)?;
                (policies, super::digest(&text), Some(path))
            }
        };
        let call_group = uid(&action_type, "call");
        for entry in entries.values_mut() {
            for p in policies.policies() {
                let applies = match p.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => a == entry.action,
                    ActionConstraint::In(list) => {
                        list.contains(&entry.action) || list.contains(&call_group)
                    }
                };
                if applies {
                    entry
                        .slice
                        .add(p.clone())
                        .map_err(|e| internal(e.to_string()))?;
                }
            }
            entry.fast = fast::Slice::new(
                &entry.slice,
                AsRef::<ast::EntityUID>::as_ref(&entry.action),
                core(&entities),
            );
        }
        let handoff_action = uid(&action_type, "handoff");
        let mut handoff = HandoffEntry {
            action: handoff_action.clone(),
            slice: PolicySet::new(),
            fast: fast::Slice::default(),
        };
        for p in policies.policies() {
            let applies = match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => a == handoff_action,
                ActionConstraint::In(list) => list.contains(&handoff_action),
            };
            if applies {
                handoff
                    .slice
                    .add(p.clone())
                    .map_err(|e| internal(e.to_string()))?;
            }
        }
        handoff.fast = fast::Slice::new(
            &handoff.slice,
            AsRef::<ast::EntityUID>::as_ref(&handoff.action),
            core(&entities),
        );
        let constants = Constants {
            user: AsRef::<ast::EntityType>::as_ref(&types.user).clone(),
            agent: AsRef::<ast::EntityType>::as_ref(&types.agent).clone(),
            mission: ast::Value::from(AsRef::<ast::EntityUID>::as_ref(&mission_uid).clone()),
            chain: ast::Value::empty_set(None),
        };
        let agent_missions = agent_missions
            .iter()
            .map(|(agent, ids)| {
                (
                    agent.clone(),
                    ids.iter().map(|id| uid(&types.mission, id)).collect(),
                )
            })
            .collect();
        Ok(Self {
            mission_id: mission.id.clone(),
            tenant_uid,
            mission_uid,
            schema,
            schema_text,
            policies,
            version,
            file: path,
            entities,
            tools: entries,
            handoff,
            agent_missions,
            types,
            constants,
            authorizer: Authorizer::new(),
            rates: Rates::default(),
            stores: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The generated Cedar schema (human format).
    pub fn schema_text(&self) -> &str {
        &self.schema_text
    }

    /// A digest of the loaded policy text (SHA-256, hex).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the mission has a policy file (without one every call is denied).
    pub fn has_policies(&self) -> bool {
        self.file.is_some()
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.policies.policies().count()
    }

    /// Whether no policy is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn user(&self, caller: &Caller) -> Result<Entity, String> {
        let mut attrs = HashMap::from([
            ("subject".to_owned(), string(&caller.subject)),
            ("issuer".to_owned(), string(&caller.issuer)),
            ("tenant".to_owned(), string(&caller.tenant)),
            (
                "roles".to_owned(),
                strings(caller.roles.iter().map(String::as_str)),
            ),
            (
                "scopes".to_owned(),
                strings(caller.scopes.iter().map(String::as_str)),
            ),
        ]);
        let groups: Vec<&str> = caller
            .attributes
            .get("groups")
            .and_then(serde_json::Value::as_array)
            .map(|g| g.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        attrs.insert("groups".into(), strings(groups));
        for key in ["department", "region"] {
            if let Some(v) = caller
                .attributes
                .get(key)
                .and_then(serde_json::Value::as_str)
            {
                attrs.insert(key.into(), string(v));
            }
        }
        if let Some(c) = caller
            .attributes
            .get("clearance")
            .and_then(serde_json::Value::as_i64)
        {
            attrs.insert("clearance".into(), RestrictedExpression::new_long(c));
        }
        Entity::new(
            uid(&self.types.user, &caller.subject),
            attrs,
            HashSet::from([self.tenant_uid.clone()]),
        )
        .map_err(|e| e.to_string())
    }

    fn agent(&self, id: &str, facts: Option<&AgentFacts>) -> Result<Entity, String> {
        let missions = self
            .agent_missions
            .get(id)
            .cloned()
            .unwrap_or_else(|| vec![self.mission_uid.clone()]);
        let mut attrs = HashMap::from([
            ("id".to_owned(), string(id)),
            (
                "missions".to_owned(),
                RestrictedExpression::new_set(
                    missions
                        .into_iter()
                        .map(RestrictedExpression::new_entity_uid),
                ),
            ),
        ]);
        if let Some(f) = facts {
            if let Some(o) = &f.owner {
                attrs.insert("owner".into(), string(o));
            }
            if let Some(s) = &f.status {
                attrs.insert("status".into(), string(s));
            }
        }
        Entity::new(uid(&self.types.agent, id), attrs, HashSet::new()).map_err(|e| e.to_string())
    }

    /// The entity store of a call: cached per token, reused while the registry's facts about
    /// the agent are the ones it was built with (a suspension rebuilds it at once).
    fn entities_for(&self, q: &Query<'_>) -> Result<Arc<Entities>, String> {
        let c = q.caller;
        if c.token_id.is_empty() {
            return self.per_call_entities(q).map(Arc::new);
        }
        // Looked up by the token id as it is (no key built per call); a token id reused by
        // another issuer or subject does not match and is rebuilt.
        if let Ok(stores) = self.stores.lock()
            && let Some(e) = stores.get(c.token_id.as_str())
            && e.issuer == c.issuer
            && e.subject == c.subject
            && e.facts.as_ref() == q.agent.as_ref()
        {
            return Ok(e.entities.clone());
        }
        let built = Arc::new(self.per_call_entities(q)?);
        if let Ok(mut stores) = self.stores.lock() {
            if stores.len() >= STORES {
                stores.clear();
            }
            stores.insert(
                c.token_id.clone(),
                StoreEntry {
                    issuer: c.issuer.clone(),
                    subject: c.subject.clone(),
                    facts: q.agent.clone(),
                    entities: built.clone(),
                },
            );
        }
        Ok(built)
    }

    fn per_call_entities(&self, q: &Query<'_>) -> Result<Entities, String> {
        let user = self.user(q.caller)?;
        let agent = self.agent(&q.caller.agent, q.agent.as_ref())?;
        // Built by construction in the schema's shapes, so not validated again per call (debug
        // builds validate every request: see `request`).
        self.entities
            .clone()
            .add_entities([user, agent], None)
            .map_err(|e| e.to_string())
    }

    /// The call's context, built directly as Cedar values: the constant parts were built at
    /// load; the arguments are typed from the tool's pinned input schema ([`schema::record`]).
    ///
    /// `args`: the tool's argument fields (`None` for the `handoff` action, whose context has no
    /// `args`). `context.chain` is the agents of the verified earlier hops (`Caller::actors`),
    /// most recent first as a set; empty (the constant) for a direct call.
    fn context(
        &self,
        q: &Query<'_>,
        args: Option<&[Field]>,
        risk: RiskSignals,
    ) -> Result<ast::Context, schema::ArgError> {
        let time = super::clock::time(q.now);
        let k = &self.constants;
        let mut pairs = BTreeMap::new();
        pairs.insert(
            "agent".into(),
            ast::Value::from(ast::EntityUID::from_components(
                k.agent.clone(),
                ast::Eid::new(q.caller.agent.as_str()),
                None,
            )),
        );
        pairs.insert("mission".into(), k.mission.clone());
        pairs.insert(
            "time".into(),
            ast::Value::record(
                [
                    ("hour", ast::Value::from(time.hour)),
                    ("minute", ast::Value::from(time.minute)),
                    ("weekday", ast::Value::from(time.weekday)),
                    ("date", ast::Value::from(time.date)),
                ],
                None,
            ),
        );
        let chain = if q.caller.actors.is_empty() {
            k.chain.clone()
        } else {
            ast::Value::set(
                q.caller
                    .actors
                    .iter()
                    .map(|a| ast::Value::from(a.agent.as_str())),
                None,
            )
        };
        pairs.insert("chain".into(), chain);
        pairs.insert(
            "risk".into(),
            ast::Value::record(
                [
                    (
                        "calls_last_minute",
                        ast::Value::from(risk.calls_last_minute),
                    ),
                    ("baseline_percent", ast::Value::from(risk.baseline_percent)),
                ],
                None,
            ),
        );
        if let Some(args) = args {
            pairs.insert("args".into(), schema::record(args, q.arguments)?);
        }
        if let Some(region) = q
            .caller
            .attributes
            .get("region")
            .and_then(serde_json::Value::as_str)
        {
            pairs.insert("region".into(), ast::Value::from(region));
        }
        Ok(ast::Context::Value(Arc::new(pairs)))
    }

    /// The request of a call.
    ///
    /// Release builds do not validate it against the schema per call (that validation parsed
    /// ids with Cedar's parser on every call, a quarter of a decision). It cannot add safety:
    /// the policies were strictly validated against this same generated schema at load, the
    /// context is built from that schema's own types from arguments that already passed the
    /// tool's JSON Schema, the principal, action and resource are of the schema's types by
    /// construction, and a value of an unexpected shape at evaluation is an evaluation error,
    /// which denies (fail closed). Debug builds validate every request, so every test of the
    /// suite checks that the contexts we build conform to the schema.
    fn request(
        &self,
        q: &Query<'_>,
        action: &EntityUid,
        resource: &EntityUid,
        context: ast::Context,
    ) -> Result<ast::Request, String> {
        let principal = ast::EntityUID::from_components(
            self.constants.user.clone(),
            ast::Eid::new(q.caller.subject.as_str()),
            None,
        );
        let action = AsRef::<ast::EntityUID>::as_ref(action).clone();
        let resource = AsRef::<ast::EntityUID>::as_ref(resource).clone();
        if cfg!(debug_assertions) {
            let schema: &ValidatorSchema = self.schema.as_ref();
            ast::Request::new(
                (principal, None),
                (action, None),
                (resource, None),
                context,
                Some(schema),
                Extensions::all_available(),
            )
            .map_err(|e| e.to_string())
        } else {
            Ok(ast::Request::new_unchecked(
                ast::EntityUIDEntry::known(principal, None),
                ast::EntityUIDEntry::known(action, None),
                ast::EntityUIDEntry::known(resource, None),
                Some(context),
            ))
        }
    }

    /// Everything a decision needs: the tool's slice, the request and the entity store.
    fn prepare(&self, q: &Query<'_>) -> Result<(&ToolEntry, ast::Request, Arc<Entities>), String> {
        let Some(entry) = self.tools.get(q.tool) else {
            return Err(format!("tool `{}` has no Cedar action", q.tool));
        };
        let risk = q
            .risk
            .unwrap_or_else(|| self.rates.record(&q.caller.agent, q.now));
        let context = self
            .context(q, Some(&entry.args), risk)
            .map_err(|e| e.to_string())?;
        let request = self.request(q, &entry.action, &entry.uid, context)?;
        Ok((entry, request, self.entities_for(q)?))
    }

    /// The request and entity store of a handoff to mission `to` (the live risk signals are
    /// read, not counted: the call handing on was counted by its own decision).
    fn prepare_handoff(
        &self,
        q: &Query<'_>,
        to: &str,
    ) -> Result<(ast::Request, Arc<Entities>), String> {
        let risk = q
            .risk
            .unwrap_or_else(|| self.rates.read(&q.caller.agent, q.now));
        let context = self.context(q, None, risk).map_err(|e| e.to_string())?;
        let resource = uid(&self.types.mission, to);
        let request = self.request(q, &self.handoff.action, &resource, context)?;
        Ok((request, self.entities_for(q)?))
    }

    /// Decides whether the caller's call may hand work to mission `to` (Cedar action
    /// `handoff`, resource `Mission::"<to>"`, the call's context without `args`). Fails
    /// closed: no permit → deny; any error → deny. `q.tool` is not used.
    pub fn decide_handoff(&self, q: &Query<'_>, to: &str) -> Decision {
        match self.prepare_handoff(q, to) {
            Ok((request, entities)) => self.handoff.fast.decide(request, core(&entities)),
            Err(error) => Decision::failed(error),
        }
    }

    /// Decides one call. Fails closed: no permit → deny; any error → deny.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        match self.prepare(q) {
            Ok((entry, request, entities)) => entry.fast.decide(request, core(&entities)),
            Err(error) => Decision::failed(error),
        }
    }

    /// Whether some context and arguments could let `caller` call `tool`: partial evaluation
    /// with the context unknown. `false` only when Cedar decides deny without the context
    /// (e.g. no permit can match this user and tool, or an unconditional forbid). Every actual
    /// call is still decided by [`MissionPolicy::decide`].
    pub fn could_permit(&self, caller: &Caller, tool: &str) -> bool {
        self.tools.get(tool).is_some_and(|entry| {
            self.could_permit_request(caller, &entry.action, &entry.uid, &entry.slice)
        })
    }

    /// Whether some context could let `caller` hand work to mission `to` (for `tools/list`: a
    /// tool whose downstream is another mission's agent is useless without the handoff). The
    /// same partial evaluation as [`Self::could_permit`], for `Action::"handoff"`.
    pub fn could_permit_handoff(&self, caller: &Caller, to: &str) -> bool {
        let resource = uid(&self.types.mission, to);
        self.could_permit_request(caller, &self.handoff.action, &resource, &self.handoff.slice)
    }

    /// Cedar's partial evaluation of `caller` doing `action` on `resource` with the context
    /// unknown: false only when no context could permit it.
    fn could_permit_request(
        &self,
        caller: &Caller,
        action: &EntityUid,
        resource: &EntityUid,
        slice: &PolicySet,
    ) -> bool {
        let q = Query {
            caller,
            tool: "",
            arguments: &serde_json::Map::new(),
            now: 0,
            agent: None,
            risk: None,
        };
        let Ok(entities) = self.entities_for(&q) else {
            return false;
        };
        let request = RequestBuilder::default()
            .principal(uid(&self.types.user, &caller.subject))
            .action(action.clone())
            .resource(resource.clone())
            .build();
        let partial = self
            .authorizer
            .is_authorized_partial(&request, slice, &entities);
        partial.decision() != Some(CedarDecision::Deny)
    }

    /// The mission id this engine decides for.
    pub fn mission_id(&self) -> &str {
        &self.mission_id
    }
}

/// Cedar's core view of an entity store.
fn core(entities: &Entities) -> &cedar_policy_core::entities::Entities {
    entities.as_ref()
}

/// Parses, re-identifies (`<mission>.cedar:<@id or policyN>`) and strictly validates a policy
/// file; every problem is reported.
fn parse(
    mission_id: &str,
    path: &Path,
    text: &str,
    schema: &Schema,
) -> Result<PolicySet, Vec<String>> {
    let parsed = match PolicySet::from_str(text) {
        Ok(p) => p,
        Err(errors) => {
            return Err(errors
                .iter()
                .map(|e| diag(path, text, first_offset(e), &message(e, e.to_string())))
                .collect());
        }
    };
    let mut problems = Vec::new();
    if let Some(t) = parsed.templates().next() {
        problems.push(diag(
            path,
            text,
            offset_in(text, &t.to_string()),
            "policy templates (`?principal`, `?resource`) are not supported: write the entity",
        ));
    }
    let mut set = PolicySet::new();
    let mut ids: Vec<&Policy> = parsed.policies().collect();
    // Source order, so `policyN` names and reports follow the file.
    ids.sort_by_key(|p| offset_in(text, &p.to_string()));
    for p in ids {
        let offset = offset_in(text, &p.to_string());
        let local = p
            .annotation("id")
            .map_or_else(|| p.id().to_string(), str::to_owned);
        match p.annotation("approval") {
            None => {}
            Some("approver" | "user") if p.effect() == CedarEffect::Permit => {}
            Some("approver" | "user") => problems.push(diag(
                path,
                text,
                offset,
                "`@approval` marks a permit as needing approval; on a forbid it has no meaning: remove it",
            )),
            Some(other) => problems.push(diag(
                path,
                text,
                offset,
                &format!("`@approval(\"{other}\")` is not a kind of approval: write `@approval(\"approver\")` or `@approval(\"user\")`"),
            )),
        }
        let id = PolicyId::new(format!("{mission_id}.cedar:{local}"));
        if let Err(e) = set.add(p.new_id(id)) {
            problems.push(diag(
                path,
                text,
                offset,
                &format!("{e}: give each policy its own `@id`"),
            ));
        }
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    for e in result.validation_errors() {
        problems.push(diag(
            path,
            text,
            first_offset(e),
            &message(e, e.to_string()),
        ));
    }
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(problems)
    }
}

impl std::fmt::Debug for MissionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MissionPolicy")
            .field("mission", &self.mission_id)
            .field("policies", &self.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl MissionPolicy {
    /// Nanoseconds of each per-call step of [`MissionPolicy::decide`]: entities, context,
    /// request, evaluation.
    pub(crate) fn profile(&self, q: &Query<'_>) -> [u128; 4] {
        let entry = &self.tools[q.tool];
        let t = std::time::Instant::now();
        let entities = self.entities_for(q).unwrap();
        let a = t.elapsed().as_nanos();
        let t = std::time::Instant::now();
        let risk = RiskSignals {
            calls_last_minute: 1,
            baseline_percent: 100,
        };
        let context = self.context(q, Some(&entry.args), risk).unwrap();
        let b = t.elapsed().as_nanos();
        let t = std::time::Instant::now();
        let request = self.request(q, &entry.action, &entry.uid, context).unwrap();
        let c = t.elapsed().as_nanos();
        let t = std::time::Instant::now();
        let d = entry.fast.decide(request, core(&entities));
        let e = t.elapsed().as_nanos();
        assert!(d.allow, "{d:?}");
        [a, b, c, e]
    }

    /// The decision Cedar's public `Authorizer::is_authorized` gives on the very request and
    /// entities [`MissionPolicy::decide`] evaluates (the reference for the differential test),
    /// with the engine's rules on top (any error denies; the strictest `@approval`).
    pub(crate) fn reference(&self, q: &Query<'_>) -> Decision {
        let (entry, request, entities) = match self.prepare(q) {
            Ok(x) => x,
            Err(error) => {
                return Decision::failed(error);
            }
        };
        let request = cedar_policy::Request::from(request);
        let response = self
            .authorizer
            .is_authorized(&request, &entry.slice, &entities);
        cedar_decision(&response, &entry.slice)
    }
}

#[cfg(test)]
impl MissionPolicy {
    /// [`MissionPolicy::reference`] for [`MissionPolicy::decide_handoff`].
    pub(crate) fn reference_handoff(&self, q: &Query<'_>, to: &str) -> Decision {
        let (request, entities) = match self.prepare_handoff(q, to) {
            Ok(x) => x,
            Err(error) => {
                return Decision::failed(error);
            }
        };
        let request = cedar_policy::Request::from(request);
        let response = self
            .authorizer
            .is_authorized(&request, &self.handoff.slice, &entities);
        cedar_decision(&response, &self.handoff.slice)
    }
}

/// Cedar's response as the engine's decision (any error denies; the strictest `@approval`
/// among the determining permits).
#[cfg(test)]
pub(crate) fn cedar_decision(response: &cedar_policy::Response, slice: &PolicySet) -> Decision {
    let reason = || response.diagnostics().reason();
    let errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(|e| e.to_string())
        .collect();
    let allow = response.decision() == CedarDecision::Allow && errors.is_empty();
    Decision {
        allow,
        policies: reason().map(|id| id.to_string()).collect(),
        errors,
        approval: if allow {
            fast::strictest_approval(reason().map(|id| slice.annotation(id, "approval")))
        } else {
            None
        },
    }
}

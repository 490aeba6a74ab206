//! The MCP handler of one mission: `tools/list` and the tool-call pipeline, plus pass-through of
//! resources, prompts and completion for the downstreams the mission names.
//!
//! The pipeline ([`MissionHandler::call`]) reads top to bottom: authn → scope → validate →
//! policy → durable intent (write/irreversible) → downstream → output check → audit. A tool the
//! caller may not use answers exactly like an unknown tool; the reason goes to the audit record.

// Logging and resource subscriptions are deprecated by SEP-2577 but legacy clients use them.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientRequest, CompleteRequest,
    CompleteRequestParams, CompleteResult, ContentBlock, GetPromptRequest, GetPromptRequestParams,
    GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, LoggingLevel, PaginatedRequestParams,
    ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse, ResultType,
    ServerCapabilities, ServerConfig, ServerResult, SetLevelRequestParams, SubscribeRequestParams,
    Tool, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::audit::{Auditor, Event, EventKind, Reasoning, digest_bytes, digest_json};
use crate::authn::Caller;
use crate::downstream::{CallRoute, Downstream, DownstreamError, GroupKey, Pool};
use crate::mission::{self, MissionRuntime};
use crate::policy;

/// `_meta` key under which agents pass their reasoning.
pub const REASONING_META: &str = "io.mandate/reasoning";
/// Timeout for pass-through requests (resources, prompts, completion).
const PASSTHROUGH_TIMEOUT: Duration = Duration::from_secs(30);

/// A mission with its downstream connections and precomputed tool definitions.
pub struct MissionState {
    pub runtime: Arc<MissionRuntime>,
    downstreams: BTreeMap<String, Arc<Downstream>>,
    tools: Vec<(Arc<mission::ExposedTool>, Tool)>,
}

impl MissionState {
    pub fn new(runtime: Arc<MissionRuntime>, pool: &Pool) -> Result<Self, String> {
        let m = &runtime.mission;
        let mut downstreams = BTreeMap::new();
        for manifest in m.manifest_ids() {
            let key = GroupKey {
                tenant: m.tenant.clone(),
                env: m.env.clone(),
                manifest: manifest.clone(),
            };
            let d = pool
                .get(&key)
                .ok_or_else(|| format!("no downstream connection for `{key}`"))?;
            downstreams.insert(manifest, d);
        }
        let mut tools = Vec::new();
        for t in runtime.tools.values() {
            let tool: Tool = serde_json::from_value(t.definition.clone()).map_err(|e| {
                format!(
                    "pinned definition of `{}` is not a valid MCP tool: {e}",
                    t.qualified()
                )
            })?;
            tools.push((t.clone(), tool));
        }
        Ok(Self {
            runtime,
            downstreams,
            tools,
        })
    }

    fn quarantined(&self, tool: &mission::ExposedTool) -> bool {
        self.downstreams
            .get(&tool.manifest)
            .is_none_or(|d| d.is_quarantined(&tool.tool))
    }
}

/// Per upstream session: identity binding and log level.
struct Session {
    id: u64,
    /// The first caller of the session; later requests must come from the same identity.
    owner: OnceLock<(String, String, String)>,
    log_level: Mutex<Option<LoggingLevel>>,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// The rmcp handler for one mission (one per upstream session, or per request when stateless).
#[derive(Clone)]
pub struct MissionHandler {
    state: Arc<MissionState>,
    audit: Auditor,
    /// Set for `serve --stdio`: the caller verified from `MANDATE_TOKEN` at start.
    stdio_caller: Option<Arc<Caller>>,
    session: Arc<Session>,
}

fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(format!("tool not found: {name}"), None)
}

/// The audit record of one call: finished explicitly, or as `cancelled` when dropped.
struct CallRecord {
    audit: Auditor,
    event: Option<Event>,
    started: Instant,
}

impl CallRecord {
    fn finish(&mut self, kind: EventKind, outcome: &str, detail: Option<String>) {
        if let Some(mut event) = self.event.take() {
            event.kind = kind;
            event.outcome = Some(outcome.to_owned());
            event.detail = detail;
            event.latency_us = Some(self.started.elapsed().as_micros() as u64);
            self.audit.record_now(event);
        }
    }

    fn event(&mut self) -> Option<&mut Event> {
        self.event.as_mut()
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(
            EventKind::Call,
            "cancelled",
            Some("the request ended before a result".into()),
        );
    }
}

impl MissionHandler {
    pub fn new(
        state: Arc<MissionState>,
        audit: Auditor,
        stdio_caller: Option<Arc<Caller>>,
    ) -> Self {
        Self {
            state,
            audit,
            stdio_caller,
            session: Arc::new(Session {
                id: SESSIONS.fetch_add(1, Ordering::Relaxed),
                owner: OnceLock::new(),
                log_level: Mutex::new(None),
            }),
        }
    }

    fn mission_id(&self) -> &str {
        &self.state.runtime.mission.id
    }

    /// Stage 1: the verified caller of this request (verified by the HTTP layer, or at stdio start).
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<Arc<Caller>, ErrorData> {
        let caller = match &self.stdio_caller {
            Some(c) => c.clone(),
            None => ctx
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.extensions.get::<Arc<Caller>>())
                .cloned()
                .ok_or_else(|| ErrorData::invalid_request("unauthenticated request", None))?,
        };
        if caller.expired() {
            return Err(ErrorData::invalid_request(
                "token expired: mint a new one with `mandate token`",
                None,
            ));
        }
        let identity = (
            caller.subject.clone(),
            caller.tenant.clone(),
            caller.agent.clone(),
        );
        let owner = self.session.owner.get_or_init(|| identity.clone());
        if *owner != identity {
            return Err(ErrorData::invalid_request(
                "this session belongs to another identity: start a new session",
                None,
            ));
        }
        Ok(caller)
    }

    fn route(&self, ctx: &RequestContext<RoleServer>) -> CallRoute {
        CallRoute {
            session: self.session.id,
            upstream: ctx.peer.clone(),
            upstream_id: ctx.id.clone(),
            log_level: self.session.log_level.lock().ok().and_then(|l| *l),
        }
    }

    fn base_event(
        &self,
        kind: EventKind,
        caller: &Caller,
        ctx: &RequestContext<RoleServer>,
    ) -> Event {
        let mut e = Event::new(kind);
        e.tenant = Some(caller.tenant.clone());
        e.subject = Some(caller.subject.clone());
        e.agent = Some(caller.agent.clone());
        e.token_id = Some(caller.token_id.clone());
        e.mission = Some(self.mission_id().to_owned());
        e.request_id = Some(ctx.id.to_string());
        e.trace_id = ctx
            .meta
            .get_traceparent()
            .and_then(|tp| tp.split('-').nth(1))
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        e
    }

    /// The tool-call pipeline.
    async fn call(
        &self,
        params: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // 1. authn
        let caller = self.caller(&ctx)?;
        let name = params.name.to_string();
        let mut record = CallRecord {
            audit: self.audit.clone(),
            event: Some(self.base_event(EventKind::Call, &caller, &ctx)),
            started: Instant::now(),
        };
        let reasoning = ctx
            .meta
            .get(REASONING_META)
            .map(|v| serde_json::from_value::<Reasoning>(v.clone()));
        if let Some(e) = record.event() {
            e.tool = Some(name.clone());
            if let Some(args) = &params.arguments {
                e.arguments_digest = Some(digest_json(args));
                e.argument_keys = args.keys().cloned().collect();
            }
            if let Some(Ok(r)) = &reasoning {
                e.reasoning = Some(r.clone());
            }
        }
        let reasoning = match reasoning {
            Some(Err(err)) => {
                let msg = format!(
                    "invalid `_meta[\"{REASONING_META}\"]`: {err} (expected goal, step, rationale, alternatives, confidence)"
                );
                record.finish(
                    EventKind::ValidationFailure,
                    "invalid_reasoning",
                    Some(msg.clone()),
                );
                return Err(ErrorData::invalid_params(msg, None));
            }
            Some(Ok(r)) => Some(r),
            None => None,
        };

        // 2. scope
        let scoped = match mission::scope(&self.state.runtime, caller, &name, |t| {
            self.state.quarantined(t)
        }) {
            Ok(s) => s,
            Err(denied) => {
                if let Some(e) = record.event() {
                    e.decision = Some("deny".into());
                    e.policy = Some(policy::SCOPE_POLICY.into());
                }
                record.finish(EventKind::Denial, "denied", Some(denied.to_string()));
                return Err(unknown_tool(&name));
            }
        };
        if let Some(e) = record.event() {
            e.downstream_tool = Some(scoped.tool().qualified());
            e.effect = Some(scoped.tool().effect().as_str().into());
        }

        // 3. validate
        let valid = match mission::validate(scoped, params.arguments) {
            Ok(v) => v,
            Err((_, invalid)) => {
                let msg = format!("invalid arguments for tool `{name}`: {invalid}");
                record.finish(
                    EventKind::ValidationFailure,
                    "invalid_arguments",
                    Some(msg.clone()),
                );
                return Err(ErrorData::invalid_params(msg, None));
            }
        };

        // 4. policy
        let authorized = match policy::authorize(&self.state.runtime, valid, reasoning.as_ref()) {
            Ok(a) => a,
            Err((_, denied)) => {
                if let Some(e) = record.event() {
                    e.decision = Some("deny".into());
                    e.policy = Some(denied.policy().into());
                }
                let msg = denied.to_string();
                record.finish(EventKind::Denial, "denied", Some(msg.clone()));
                return Err(ErrorData::invalid_params(msg, None));
            }
        };
        if let Some(e) = record.event() {
            e.decision = Some("allow".into());
            e.policy = Some(authorized.policy().into());
        }

        // 5. durable intent for write and irreversible tools; refused if the audit store fails.
        let tool = authorized.tool().clone();
        if tool.effect() != crate::config::Effect::Read {
            let mut intent = record
                .event
                .clone()
                .unwrap_or_else(|| Event::new(EventKind::CallIntent));
            intent.kind = EventKind::CallIntent;
            intent.outcome = Some("pending".into());
            if let Err(e) = self.audit.record_durable(intent).await {
                tracing::error!(error = %e, "audit unavailable; refusing write call");
                record.finish(
                    EventKind::Call,
                    "refused",
                    Some(format!("audit unavailable: {e}")),
                );
                return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                    ContentBlock::text(
                        "mandate refused the call: the audit store is unavailable, so write and irreversible tools are disabled",
                    ),
                ])));
            }
        }

        // 6. downstream
        let Some(downstream) = self.state.downstreams.get(&tool.manifest).cloned() else {
            record.finish(
                EventKind::Call,
                "downstream_error",
                Some("no downstream".into()),
            );
            return Err(ErrorData::internal_error(
                "no downstream for this tool",
                None,
            ));
        };
        let route = self.route(&ctx);
        let progress = ctx.meta.get_progress_token();
        let result = downstream
            .call_tool(
                authorized,
                route,
                progress,
                ctx.meta.get_traceparent(),
                ctx.ct.clone(),
            )
            .await;

        // 7. output
        let mut result = match result {
            Ok(ServerResult::CallToolResult(r)) => r,
            Ok(ServerResult::InputRequiredResult(r)) => {
                record.finish(EventKind::Call, "input_required", None);
                return Ok(CallToolResponse::InputRequired(r));
            }
            Ok(_) => {
                record.finish(
                    EventKind::Call,
                    "downstream_error",
                    Some("unexpected result type".into()),
                );
                return Err(ErrorData::internal_error(
                    "the downstream returned an unexpected result",
                    None,
                ));
            }
            Err(DownstreamError::Mcp(e)) => {
                record.finish(
                    EventKind::Call,
                    "downstream_error",
                    Some(e.message.to_string()),
                );
                return Err(e);
            }
            Err(DownstreamError::Cancelled) => {
                record.finish(EventKind::Call, "cancelled", None);
                return Err(ErrorData::invalid_request("cancelled", None));
            }
            // The tool could not run: the caller sees why (as a tool error, readable by the agent).
            Err(
                e @ (DownstreamError::Timeout(..)
                | DownstreamError::Unavailable(..)
                | DownstreamError::Transport(..)),
            ) => {
                let outcome = match e {
                    DownstreamError::Timeout(..) => "timeout",
                    _ => "downstream_error",
                };
                let msg = e.to_string();
                record.finish(EventKind::Call, outcome, Some(msg.clone()));
                return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                    ContentBlock::text(msg),
                ])));
            }
        };
        let is_error = result.is_error.unwrap_or(false);
        if let Err(invalid) =
            mission::check_output(&tool, result.structured_content.as_ref(), is_error)
        {
            let msg =
                format!("tool `{name}` returned output that violates its pinned schema: {invalid}");
            record.finish(
                EventKind::ValidationFailure,
                "invalid_output",
                Some(msg.clone()),
            );
            return Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                ContentBlock::text(msg),
            ])));
        }
        result.result_type.get_or_insert(ResultType::COMPLETE);

        // 8. audit
        if let Some(e) = record.event() {
            // Digest of the exact bytes Mandate serializes for the caller (cheaper than a
            // canonical form, and the result is never re-serialized differently by us).
            e.output_digest = serde_json::to_vec(&result).ok().map(|b| digest_bytes(&b));
        }
        record.finish(
            EventKind::Call,
            if is_error { "tool_error" } else { "ok" },
            None,
        );
        Ok(CallToolResponse::Complete(result))
    }

    /// Pass-through access (resources, prompts, completion): the caller must be admitted.
    fn admit(
        &self,
        ctx: &RequestContext<RoleServer>,
        what: &str,
    ) -> Result<Arc<Caller>, ErrorData> {
        let caller = self.caller(ctx)?;
        if let Err(denied) = self.state.runtime.admit(&caller, crate::authn::unix_now()) {
            let mut e = self.base_event(EventKind::Denial, &caller, ctx);
            e.outcome = Some("denied".into());
            e.detail = Some(format!("{what}: {denied}"));
            self.audit.record_now(e);
            return Err(ErrorData::invalid_request(
                "not allowed on this mission",
                None,
            ));
        }
        Ok(caller)
    }

    fn resource_downstreams(&self) -> Vec<Arc<Downstream>> {
        self.state
            .runtime
            .mission
            .resources
            .iter()
            .filter_map(|m| self.state.downstreams.get(m).cloned())
            .collect()
    }

    fn prompt_downstreams(&self) -> Vec<Arc<Downstream>> {
        self.state
            .runtime
            .mission
            .prompts
            .iter()
            .filter_map(|m| self.state.downstreams.get(m).cloned())
            .collect()
    }

    /// Forwards a resource or prompt request with routing back to this caller.
    async fn pass_through(
        &self,
        downstream: &Downstream,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, DownstreamError> {
        downstream
            .forward(
                request,
                Some(self.route(ctx)),
                ctx.meta.get_progress_token(),
                PASSTHROUGH_TIMEOUT,
                ctx.ct.clone(),
            )
            .await
    }

    fn listen(&self, ctx: &RequestContext<RoleServer>) {
        for d in self.state.downstreams.values() {
            d.routes.listen(self.session.id, ctx.peer.clone());
        }
    }

    fn access_event(
        &self,
        caller: &Caller,
        ctx: &RequestContext<RoleServer>,
        detail: String,
        outcome: &str,
    ) {
        let mut e = self.base_event(EventKind::Access, caller, ctx);
        e.detail = Some(detail);
        e.outcome = Some(outcome.into());
        self.audit.record_now(e);
    }
}

fn downstream_error(e: DownstreamError) -> ErrorData {
    match e {
        DownstreamError::Mcp(e) => e,
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

impl ServerHandler for MissionHandler {
    fn get_info(&self) -> ServerConfig {
        let m = &self.state.runtime.mission;
        let has_resources = !m.resources.is_empty();
        let has_prompts = !m.prompts.is_empty();
        let mut caps = ServerCapabilities::default();
        caps.tools = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .build()
            .tools;
        caps.logging = ServerCapabilities::builder()
            .enable_logging()
            .build()
            .logging;
        if has_resources {
            caps.resources = ServerCapabilities::builder()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .build()
                .resources;
        }
        if has_prompts {
            caps.prompts = ServerCapabilities::builder()
                .enable_prompts()
                .enable_prompts_list_changed()
                .build()
                .prompts;
        }
        if has_resources || has_prompts {
            caps.completions = ServerCapabilities::builder()
                .enable_completions()
                .build()
                .completions;
        }
        ServerConfig::new(caps)
            .with_server_info(Implementation::new("mandate", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!("Mandate mission `{}`: {}", m.id, m.description))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.admit(&ctx, "tools/list")?;
        self.listen(&ctx);
        let tools = self
            .state
            .tools
            .iter()
            .filter(|(t, _)| !self.state.quarantined(t))
            .map(|(_, tool)| tool.clone())
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.state
            .tools
            .iter()
            .find(|(t, _)| t.exposed == name && !self.state.quarantined(t))
            .map(|(_, tool)| tool.clone())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, ctx).await
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.caller(&ctx)?;
        if let Ok(mut level) = self.session.log_level.lock() {
            *level = Some(request.level);
        }
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.admit(&ctx, "resources/list")?;
        self.listen(&ctx);
        let mut all = Vec::new();
        for d in self.resource_downstreams() {
            let peer = d.peer().await.map_err(downstream_error)?;
            all.extend(
                peer.list_all_resources()
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?,
            );
        }
        Ok(ListResourcesResult::with_all_items(all))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.admit(&ctx, "resources/templates/list")?;
        let mut all = Vec::new();
        for d in self.resource_downstreams() {
            let peer = d.peer().await.map_err(downstream_error)?;
            all.extend(
                peer.list_all_resource_templates()
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?,
            );
        }
        Ok(ListResourceTemplatesResult::with_all_items(all))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = self.admit(&ctx, "resources/read")?;
        let downstreams = self.resource_downstreams();
        let mut last =
            ErrorData::resource_not_found(format!("resource not found: {}", request.uri), None);
        for d in downstreams {
            let req = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(request.clone()));
            match self.pass_through(&d, req, &ctx).await {
                Ok(ServerResult::ReadResourceResult(mut r)) => {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    self.access_event(
                        &caller,
                        &ctx,
                        format!("resources/read {}", request.uri),
                        "ok",
                    );
                    return Ok(ReadResourceResponse::Complete(r));
                }
                Ok(ServerResult::InputRequiredResult(r)) => {
                    return Ok(ReadResourceResponse::InputRequired(r));
                }
                Ok(_) => {
                    last = ErrorData::internal_error("unexpected result from downstream", None)
                }
                Err(e) => last = downstream_error(e),
            }
        }
        self.access_event(
            &caller,
            &ctx,
            format!("resources/read {}", request.uri),
            "error",
        );
        Err(last)
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.admit(&ctx, "resources/subscribe")?;
        for d in self.resource_downstreams() {
            if d.routes
                .subscribe(&request.uri, self.session.id, ctx.peer.clone())
            {
                let peer = d.peer().await.map_err(downstream_error)?;
                peer.subscribe(request.clone())
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.admit(&ctx, "resources/unsubscribe")?;
        for d in self.resource_downstreams() {
            if d.routes.unsubscribe(&request.uri, self.session.id) {
                let peer = d.peer().await.map_err(downstream_error)?;
                peer.unsubscribe(request.clone())
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            }
        }
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.admit(&ctx, "prompts/list")?;
        self.listen(&ctx);
        let mut all = Vec::new();
        for d in self.prompt_downstreams() {
            let peer = d.peer().await.map_err(downstream_error)?;
            all.extend(
                peer.list_all_prompts()
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?,
            );
        }
        Ok(ListPromptsResult::with_all_items(all))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let caller = self.admit(&ctx, "prompts/get")?;
        let mut last =
            ErrorData::invalid_params(format!("prompt not found: {}", request.name), None);
        for d in self.prompt_downstreams() {
            let req = ClientRequest::GetPromptRequest(GetPromptRequest::new(request.clone()));
            match self.pass_through(&d, req, &ctx).await {
                Ok(ServerResult::GetPromptResult(mut r)) => {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    self.access_event(&caller, &ctx, format!("prompts/get {}", request.name), "ok");
                    return Ok(GetPromptResponse::Complete(r));
                }
                Ok(ServerResult::InputRequiredResult(r)) => {
                    return Ok(GetPromptResponse::InputRequired(r));
                }
                Ok(_) => {
                    last = ErrorData::internal_error("unexpected result from downstream", None)
                }
                Err(e) => last = downstream_error(e),
            }
        }
        Err(last)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        self.admit(&ctx, "completion/complete")?;
        let mut targets = self.prompt_downstreams();
        targets.extend(self.resource_downstreams());
        let mut last = ErrorData::invalid_params("nothing to complete on this mission", None);
        for d in targets {
            let req = ClientRequest::CompleteRequest(CompleteRequest::new(request.clone()));
            match d
                .forward(req, None, None, PASSTHROUGH_TIMEOUT, ctx.ct.clone())
                .await
            {
                Ok(ServerResult::CompleteResult(mut r)) => {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    return Ok(r);
                }
                Ok(_) => {
                    last = ErrorData::internal_error("unexpected result from downstream", None)
                }
                Err(e) => last = downstream_error(e),
            }
        }
        Err(last)
    }
}

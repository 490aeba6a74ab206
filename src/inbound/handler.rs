//! The rmcp adapter of one mission: `tools/list`, `tools/call` through the call core
//! ([`crate::call::run`]), and pass-through of resources, prompts and completion for the
//! downstreams the mission names. A tool the caller may not use answers exactly like an unknown
//! tool; the reason goes to the audit record.

// Logging and resource subscriptions are deprecated by SEP-2577 but legacy clients use them.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::model::GetExtensions;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientResult, CompleteRequestParams,
    CompleteResult, ContentBlock, CreateMessageRequest, ElicitRequest, GetPromptRequestParams,
    GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListRootsRequest, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
    ProgressToken, ReadResourceRequestParams, ReadResourceResponse, RequestId, ResultType,
    ServerCapabilities, ServerConfig, ServerRequest, ServerResult, SetLevelRequestParams,
    SubscribeRequestParams, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{OriginatingRequestId, RequestContext};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use serde_json::Value;

use crate::audit::{Event, EventKind};
use crate::authn::Caller;
use crate::call::{
    self, Answer, Asked, CallRequest, CallSink, Completed, Reject, Relaying, RpcError,
};
use crate::downstream::{DownstreamError, passthrough};
use crate::mission::{self, MissionRuntime};

pub use crate::call::REASONING_META;

/// A mission with its resolved downstreams and precomputed MCP tool definitions.
pub struct MissionState {
    pub runtime: Arc<MissionRuntime>,
    pub mission: call::Mission,
    tools: Vec<(Arc<mission::ExposedTool>, Tool)>,
    /// The agent registry, consulted on every request (set by [`MissionState::with_agents`]).
    agents: Option<Arc<crate::agents::Registry>>,
}

impl MissionState {
    pub fn new(
        runtime: Arc<MissionRuntime>,
        pool: &crate::downstream::Pool,
    ) -> Result<Self, String> {
        let mission = call::Mission::new(runtime.clone(), pool)?;
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
            mission,
            tools,
            agents: None,
        })
    }

    /// The agent registry this mission consults, if any.
    pub fn agents(&self) -> Option<&Arc<crate::agents::Registry>> {
        self.agents.as_ref()
    }

    /// Consults `agents` on every request of this mission (stdio included).
    pub fn with_agents(mut self, agents: Arc<crate::agents::Registry>) -> Self {
        self.agents = Some(agents);
        self
    }

    /// The tools a caller sees: pinned definitions minus quarantined ones.
    pub fn visible_tools(&self) -> impl Iterator<Item = &Tool> {
        self.tools
            .iter()
            .filter(|(t, _)| !self.mission.quarantined(t))
            .map(|(_, tool)| tool)
    }

    /// The tools `caller` sees: the visible ones its policies could permit (decided without
    /// the call's arguments and context; every call is decided again in full).
    pub fn tools_for<'a>(&'a self, caller: &'a Caller) -> impl Iterator<Item = &'a Tool> + 'a {
        self.tools
            .iter()
            .filter(|(t, _)| {
                !self.mission.quarantined(t)
                    && crate::policy::visible(&self.runtime, caller, &t.exposed)
            })
            .map(|(_, tool)| tool)
    }
}

/// Per upstream session: its number (for routing) and the caller's log level.
pub struct SessionState {
    pub id: u64,
    pub log_level: Mutex<Option<LoggingLevel>>,
    /// Whether the client declared MCP elicitation at `initialize`.
    elicitation: std::sync::OnceLock<bool>,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

impl SessionState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            id: SESSIONS.fetch_add(1, Ordering::Relaxed),
            log_level: Mutex::new(None),
            elicitation: std::sync::OnceLock::new(),
        })
    }

    /// Whether the client declared MCP elicitation (`None` before `initialize`).
    pub fn can_elicit(&self) -> Option<bool> {
        self.elicitation.get().copied()
    }

    pub fn log_level(&self) -> Option<LoggingLevel> {
        self.log_level.lock().ok().and_then(|l| *l)
    }
}

/// The rmcp handler for one mission (one per upstream session, or per request when stateless).
#[derive(Clone)]
pub struct MissionHandler {
    state: Arc<MissionState>,
    core: call::Core,
    /// Set for `serve --stdio`: the caller verified from `MANDATE_TOKEN` at start.
    stdio_caller: Option<Arc<Caller>>,
    session: Arc<SessionState>,
}

/// Where the downstream's messages about one call go on the rmcp path: the session's peer,
/// tagged with the upstream request id so they travel on that request's stream.
struct PeerSink {
    session: u64,
    principal: String,
    peer: Peer<RoleServer>,
    upstream_id: RequestId,
    progress: Option<ProgressToken>,
    log_level: Option<LoggingLevel>,
}

impl CallSink for PeerSink {
    fn session(&self) -> u64 {
        self.session
    }

    fn principal(&self) -> &str {
        &self.principal
    }

    fn wants_progress(&self) -> bool {
        self.progress.is_some()
    }

    fn progress(&self, mut params: serde_json::Map<String, Value>) -> Relaying<'_> {
        Box::pin(async move {
            let Some(token) = &self.progress else {
                return;
            };
            params.insert(
                "progressToken".into(),
                serde_json::to_value(token).unwrap_or(Value::Null),
            );
            if let Ok(p) =
                serde_json::from_value::<ProgressNotificationParam>(Value::Object(params))
            {
                let _ = self.peer.notify_progress(p).await;
            }
        })
    }

    fn log(&self, params: serde_json::Map<String, Value>) -> Relaying<'_> {
        Box::pin(async move {
            let Ok(p) =
                serde_json::from_value::<LoggingMessageNotificationParam>(Value::Object(params))
            else {
                return;
            };
            if self
                .log_level
                .is_some_and(|min| level_rank(p.level) < level_rank(min))
            {
                return;
            }
            let _ = self.peer.notify_logging_message(p).await;
        })
    }

    fn can_elicit(&self) -> Option<bool> {
        self.peer
            .peer_info()
            .map(|info| info.capabilities.elicitation.is_some())
    }

    fn ask(&self, method: &str, params: Option<Value>) -> Asked {
        let request = server_request(method, params);
        let (peer, upstream_id) = (self.peer.clone(), self.upstream_id.clone());
        Box::pin(async move {
            let mut request = request?;
            // The SDK would tag the request with the *downstream* request id (a task-local);
            // sending from a fresh task with our own tag puts it on the caller's stream.
            request
                .extensions_mut()
                .insert(OriginatingRequestId(upstream_id));
            let task = tokio::spawn(async move { peer.send_request(request).await });
            match task.await {
                Ok(Ok(result)) => client_result(result),
                Ok(Err(rmcp::ServiceError::McpError(e))) => Err(crate::downstream::rpc_error(e)),
                Ok(Err(e)) => Err(call::reject::internal(format!(
                    "the caller could not answer: {e}"
                ))),
                Err(e) => Err(call::reject::internal(e.to_string())),
            }
        })
    }
}

/// Builds the typed server→client request for a relayed method.
fn server_request(method: &str, params: Option<Value>) -> Result<ServerRequest, RpcError> {
    let bad = |e: serde_json::Error| {
        call::reject::internal(format!(
            "malformed `{method}` request from the downstream: {e}"
        ))
    };
    let params = params.unwrap_or(Value::Null);
    Ok(match method {
        "sampling/createMessage" => ServerRequest::CreateMessageRequest(CreateMessageRequest::new(
            serde_json::from_value(params).map_err(bad)?,
        )),
        "elicitation/create" => ServerRequest::ElicitRequest(ElicitRequest::new(
            serde_json::from_value(params).map_err(bad)?,
        )),
        "roots/list" => ServerRequest::ListRootsRequest(ListRootsRequest::default()),
        other => {
            return Err(RpcError {
                code: -32601,
                message: format!("mandate does not relay `{other}` requests"),
                data: None,
            });
        }
    })
}

fn client_result(result: ClientResult) -> Result<Value, RpcError> {
    let value = match result {
        ClientResult::CreateMessageResult(r) => serde_json::to_value(r),
        ClientResult::ElicitResult(r) => serde_json::to_value(r),
        ClientResult::ListRootsResult(r) => serde_json::to_value(r),
        _ => {
            return Err(call::reject::internal(
                "the caller answered with an unexpected result",
            ));
        }
    };
    value.map_err(|e| call::reject::internal(e.to_string()))
}

/// Rank of a log level (debug lowest).
pub fn level_rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn to_error_data(e: RpcError) -> ErrorData {
    ErrorData::new(rmcp::model::ErrorCode(e.code as i32), e.message, e.data)
}

fn downstream_error(e: DownstreamError) -> ErrorData {
    match e {
        DownstreamError::Mcp(e) => to_error_data(e),
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

/// Converts the core's answer into what rmcp sends.
fn respond(result: Result<Completed, Reject>, tool: &str) -> Result<CallToolResponse, ErrorData> {
    let parse_err = |e: serde_json::Error| {
        ErrorData::internal_error(
            format!("the downstream result is not a valid tool result: {e}"),
            None,
        )
    };
    match result {
        Ok(Completed::Result { raw, .. }) => {
            let mut r: CallToolResult = serde_json::from_str(raw.get()).map_err(parse_err)?;
            r.result_type.get_or_insert(ResultType::COMPLETE);
            Ok(CallToolResponse::Complete(r))
        }
        Ok(Completed::InputRequired(raw)) => Ok(CallToolResponse::InputRequired(
            serde_json::from_str(raw.get()).map_err(parse_err)?,
        )),
        Err(reject) => match reject.answer(tool) {
            Answer::ToolError(text) => Ok(CallToolResponse::Complete(CallToolResult::error(vec![
                ContentBlock::text(text),
            ]))),
            Answer::Error { error, .. } => Err(to_error_data(error)),
        },
    }
}

impl MissionHandler {
    pub fn new(
        state: Arc<MissionState>,
        core: call::Core,
        stdio_caller: Option<Arc<Caller>>,
        session: Arc<SessionState>,
    ) -> Self {
        Self {
            state,
            core,
            stdio_caller,
            session,
        }
    }

    fn mission_id(&self) -> &str {
        &self.state.runtime.mission.id
    }

    /// Stage 1: the verified caller of this request (verified by the HTTP layer, which also
    /// checked that the session belongs to it, or at stdio start).
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
        // The agent registry (the HTTP layer checked it too; over stdio this is the check).
        if let Some(agents) = &self.state.agents
            && let Err(refusal) =
                agents.admit(&caller.agent, self.mission_id(), crate::authn::unix_now())
        {
            let mut e = self.base_event(EventKind::AuthFailure, &caller, ctx);
            e.outcome = Some("forbidden".into());
            e.detail = Some(refusal.to_string());
            self.core.audit.record_now(e);
            return Err(ErrorData::invalid_request(refusal.to_string(), None));
        }
        Ok(caller)
    }

    fn sink(&self, ctx: &RequestContext<RoleServer>, caller: &Caller) -> Arc<PeerSink> {
        Arc::new(PeerSink {
            session: self.session.id,
            principal: call::principal_key(caller),
            peer: ctx.peer.clone(),
            upstream_id: ctx.id.clone(),
            progress: ctx.meta.get_progress_token(),
            log_level: self.session.log_level(),
        })
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
        e.issuer = Some(caller.issuer.clone());
        e.actors = caller.actors.clone();
        e.mission = Some(self.mission_id().to_owned());
        e.request_id = Some(ctx.id.to_string());
        e.trace_id = call::record::trace_id(ctx.meta.get_traceparent());
        e
    }

    /// `tools/call`: adapts rmcp's request to the call core and back.
    async fn call(
        &self,
        params: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = self.caller(&ctx)?;
        let arguments = params
            .arguments
            .as_ref()
            .map(serde_json::value::to_raw_value)
            .transpose()
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        let reasoning = ctx
            .meta
            .get(REASONING_META)
            .map(serde_json::value::to_raw_value)
            .transpose()
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        let tool = params.name.to_string();
        let sink = self.sink(&ctx, &caller);
        let request = CallRequest {
            caller,
            tool: tool.clone(),
            arguments,
            reasoning,
            request_id: ctx.id.to_string(),
            traceparent: ctx.meta.get_traceparent().map(str::to_owned),
            cancel: ctx.ct.clone(),
            sink,
        };
        respond(
            call::run(&self.core, &self.state.mission, request).await,
            &tool,
        )
    }

    /// Pass-through access (resources, prompts, completion): the caller must be admitted.
    fn admit(
        &self,
        ctx: &RequestContext<RoleServer>,
        what: &str,
    ) -> Result<mission::Admitted, ErrorData> {
        let caller = self.caller(ctx)?;
        mission::admit(&self.state.mission, caller.clone()).map_err(|denied| {
            let mut e = self.base_event(EventKind::Denial, &caller, ctx);
            e.outcome = Some("denied".into());
            e.detail = Some(format!("{what}: {denied}"));
            self.core.audit.record_now(e);
            ErrorData::invalid_request("not allowed on this mission", None)
        })
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
        self.core.audit.record_now(e);
    }
}

impl ServerHandler for MissionHandler {
    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, ErrorData> {
        // Kept for the native path, which has no rmcp peer to ask (`approval = "user"`).
        let _ = self
            .session
            .elicitation
            .set(request.capabilities.elicitation.is_some());
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

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
        let admitted = self.admit(&ctx, "tools/list")?;
        passthrough::listen(&admitted, self.session.id, &ctx.peer);
        Ok(ListToolsResult::with_all_items(
            self.state.tools_for(admitted.caller()).cloned().collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.state.visible_tools().find(|t| t.name == name).cloned()
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
        let admitted = self.admit(&ctx, "resources/list")?;
        passthrough::listen(&admitted, self.session.id, &ctx.peer);
        let all = passthrough::list_resources(&admitted)
            .await
            .map_err(downstream_error)?;
        Ok(ListResourcesResult::with_all_items(all))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let admitted = self.admit(&ctx, "resources/templates/list")?;
        let all = passthrough::list_resource_templates(&admitted)
            .await
            .map_err(downstream_error)?;
        Ok(ListResourceTemplatesResult::with_all_items(all))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let admitted = self.admit(&ctx, "resources/read")?;
        let detail = format!("resources/read {}", request.uri);
        let result = passthrough::read_resource(
            &admitted,
            request,
            self.sink(&ctx, admitted.caller()),
            ctx.ct.clone(),
        )
        .await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.access_event(admitted.caller(), &ctx, detail, outcome);
        match result.map_err(downstream_error)? {
            ServerResult::ReadResourceResult(mut r) => {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(ReadResourceResponse::Complete(r))
            }
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            _ => Err(ErrorData::internal_error(
                "unexpected result from downstream",
                None,
            )),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let admitted = self.admit(&ctx, "resources/subscribe")?;
        passthrough::subscribe(&admitted, request, self.session.id, &ctx.peer)
            .await
            .map_err(downstream_error)
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let admitted = self.admit(&ctx, "resources/unsubscribe")?;
        passthrough::unsubscribe(&admitted, request, self.session.id)
            .await
            .map_err(downstream_error)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let admitted = self.admit(&ctx, "prompts/list")?;
        passthrough::listen(&admitted, self.session.id, &ctx.peer);
        let all = passthrough::list_prompts(&admitted)
            .await
            .map_err(downstream_error)?;
        Ok(ListPromptsResult::with_all_items(all))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let admitted = self.admit(&ctx, "prompts/get")?;
        let detail = format!("prompts/get {}", request.name);
        let result = passthrough::get_prompt(
            &admitted,
            request,
            self.sink(&ctx, admitted.caller()),
            ctx.ct.clone(),
        )
        .await;
        if result.is_ok() {
            self.access_event(admitted.caller(), &ctx, detail, "ok");
        }
        match result.map_err(downstream_error)? {
            ServerResult::GetPromptResult(mut r) => {
                r.result_type.get_or_insert(ResultType::COMPLETE);
                Ok(GetPromptResponse::Complete(r))
            }
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            _ => Err(ErrorData::internal_error(
                "unexpected result from downstream",
                None,
            )),
        }
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let admitted = self.admit(&ctx, "completion/complete")?;
        let mut r = passthrough::complete(&admitted, request, ctx.ct.clone())
            .await
            .map_err(downstream_error)?;
        r.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(r)
    }
}

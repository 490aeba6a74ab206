//! Pass-through of resources, prompts and completion for the downstreams a mission names. Every
//! function takes an [`Admitted`] caller: nothing reaches a downstream without admission, and
//! each request goes through the caller's own instance of a per-principal downstream (see
//! [`super::Isolation`]), resource subscriptions included.

// Resource subscriptions are deprecated by SEP-2577 but legacy clients use them.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    ClientRequest, CompleteRequest, CompleteRequestParams, CompleteResult, GetPromptRequest,
    GetPromptRequestParams, Prompt, ReadResourceRequest, ReadResourceRequestParams, Resource,
    ResourceTemplate, ServerResult, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::{Peer, RoleServer};
use tokio_util::sync::CancellationToken;

use super::{CallRoute, DownstreamError, rpc_error};
use crate::call::{CallSink, principal_key};
use crate::mission::Admitted;

/// Timeout for pass-through requests.
pub const TIMEOUT: Duration = Duration::from_secs(30);

fn transport(d: &super::Instance, e: impl std::fmt::Display) -> DownstreamError {
    DownstreamError::Transport(d.manifest.id.clone(), e.to_string())
}

fn service_error(d: &super::Instance, e: rmcp::ServiceError) -> DownstreamError {
    match e {
        rmcp::ServiceError::McpError(e) => DownstreamError::Mcp(rpc_error(e)),
        e => transport(d, e),
    }
}

/// Registers the session for list-changed notifications of every downstream of the mission.
pub fn listen(admitted: &Admitted, session: u64, peer: &Peer<RoleServer>) {
    let principal = principal_key(admitted.caller());
    for d in admitted.all() {
        d.routes().listen(session, &principal, peer.clone());
    }
}

pub async fn list_resources(admitted: &Admitted) -> Result<Vec<Resource>, DownstreamError> {
    let principal = principal_key(admitted.caller());
    let mut all = Vec::new();
    for d in admitted.resources() {
        let d = d.lease(&principal)?;
        let peer = d.peer().await?;
        all.extend(
            peer.list_all_resources()
                .await
                .map_err(|e| service_error(&d, e))?,
        );
    }
    Ok(all)
}

pub async fn list_resource_templates(
    admitted: &Admitted,
) -> Result<Vec<ResourceTemplate>, DownstreamError> {
    let principal = principal_key(admitted.caller());
    let mut all = Vec::new();
    for d in admitted.resources() {
        let d = d.lease(&principal)?;
        let peer = d.peer().await?;
        all.extend(
            peer.list_all_resource_templates()
                .await
                .map_err(|e| service_error(&d, e))?,
        );
    }
    Ok(all)
}

pub async fn list_prompts(admitted: &Admitted) -> Result<Vec<Prompt>, DownstreamError> {
    let principal = principal_key(admitted.caller());
    let mut all = Vec::new();
    for d in admitted.prompts() {
        let d = d.lease(&principal)?;
        let peer = d.peer().await?;
        all.extend(
            peer.list_all_prompts()
                .await
                .map_err(|e| service_error(&d, e))?,
        );
    }
    Ok(all)
}

/// Sends `request()` to each downstream in turn; the first answer wins, else the last error
/// (or `none` when there is no downstream to ask).
async fn first_answer(
    downstreams: &[Arc<super::Downstream>],
    request: impl Fn() -> ClientRequest,
    sink: Arc<dyn CallSink>,
    ct: CancellationToken,
    none: crate::call::RpcError,
) -> Result<ServerResult, DownstreamError> {
    let mut last = None;
    for d in downstreams {
        let d = d.lease(sink.principal())?;
        let route = Some(CallRoute::new(sink.clone()));
        match d.forward(request(), route, TIMEOUT, ct.clone()).await {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(DownstreamError::Mcp(none)))
}

/// Reads a resource from the first resource downstream that has it.
pub async fn read_resource(
    admitted: &Admitted,
    params: ReadResourceRequestParams,
    sink: Arc<dyn CallSink>,
    ct: CancellationToken,
) -> Result<ServerResult, DownstreamError> {
    let none = crate::call::RpcError {
        code: -32002,
        message: format!("resource not found: {}", params.uri),
        data: None,
    };
    let request = || ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params.clone()));
    first_answer(admitted.resources(), request, sink, ct, none).await
}

/// Gets a prompt from the first prompt downstream that has it.
pub async fn get_prompt(
    admitted: &Admitted,
    params: GetPromptRequestParams,
    sink: Arc<dyn CallSink>,
    ct: CancellationToken,
) -> Result<ServerResult, DownstreamError> {
    let none = crate::call::RpcError {
        code: -32602,
        message: format!("prompt not found: {}", params.name),
        data: None,
    };
    let request = || ClientRequest::GetPromptRequest(GetPromptRequest::new(params.clone()));
    first_answer(admitted.prompts(), request, sink, ct, none).await
}

/// Completion from the first prompt or resource downstream that answers.
pub async fn complete(
    admitted: &Admitted,
    params: CompleteRequestParams,
    ct: CancellationToken,
) -> Result<CompleteResult, DownstreamError> {
    let principal = principal_key(admitted.caller());
    let mut last = None;
    for d in admitted.prompts().iter().chain(admitted.resources()) {
        let d = d.lease(&principal)?;
        let req = ClientRequest::CompleteRequest(CompleteRequest::new(params.clone()));
        match d.forward(req, None, TIMEOUT, ct.clone()).await {
            Ok(ServerResult::CompleteResult(r)) => return Ok(r),
            Ok(_) => last = Some(transport(&d, "unexpected result to completion/complete")),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(DownstreamError::Mcp(crate::call::RpcError {
        code: -32602,
        message: "nothing to complete on this mission".into(),
        data: None,
    })))
}

/// Subscribes the session to a resource; the downstream is subscribed once for all sessions.
pub async fn subscribe(
    admitted: &Admitted,
    params: SubscribeRequestParams,
    session: u64,
    peer: &Peer<RoleServer>,
) -> Result<(), DownstreamError> {
    let principal = principal_key(admitted.caller());
    for d in admitted.resources() {
        let d = d.lease(&principal)?;
        if d.routes.subscribe(&params.uri, session, peer.clone()) {
            let down = d.peer().await?;
            down.subscribe(params.clone())
                .await
                .map_err(|e| service_error(&d, e))?;
        }
    }
    Ok(())
}

/// Unsubscribes the session; the downstream is unsubscribed when nobody is left.
pub async fn unsubscribe(
    admitted: &Admitted,
    params: UnsubscribeRequestParams,
    session: u64,
) -> Result<(), DownstreamError> {
    let principal = principal_key(admitted.caller());
    for d in admitted.resources() {
        // An instance that is no longer running holds no subscription.
        let Some(d) = d.running(&principal) else {
            continue;
        };
        if d.routes.unsubscribe(&params.uri, session) {
            let down = d.peer().await?;
            down.unsubscribe(params.clone())
                .await
                .map_err(|e| service_error(&d, e))?;
        }
    }
    Ok(())
}

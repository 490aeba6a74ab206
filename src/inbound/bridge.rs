//! The stdio bridge: `mandate serve --stdio` while a server owns the configuration's store. MCP
//! messages are relayed unchanged between stdin/stdout and the server's streamable HTTP endpoint
//! of the mission on loopback, with the caller's token as `Authorization`.
//!
//! The relay sits below MCP: rmcp's stdio transport (server side) and its streamable HTTP
//! transport (client side) carry JSON-RPC messages as they are, in both directions, so requests,
//! responses, notifications (progress, logs, list changes, cancellation) and server→client
//! requests (sampling, elicitation, roots) all pass. The server verifies the token, runs the
//! calls and audits them in its own chain; the bridge decides nothing.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rmcp::model::{ClientJsonRpcMessage, ErrorData, RequestId, ServerJsonRpcMessage};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, Transport};

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot build the HTTP client for the bridge: {0}")]
    Client(String),
    #[error("the running server at `{url}` refused or ended the connection{}: check MANDATE_TOKEN (mint one with `mandate token … --mission <id>`), then restart the client", .reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Upstream { url: String, reason: Option<String> },
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

/// Relays MCP between this process's stdin/stdout and `url` until stdin closes (the client
/// quit) or the server ends the connection.
pub async fn relay_stdio(url: &str, token: &str) -> Result<(), BridgeError> {
    // Loopback only: no proxy from the environment, no redirects.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| BridgeError::Client(e.to_string()))?;
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token.to_owned());
    let server = StreamableHttpClientTransport::with_client(client, config);
    let client = AsyncRwTransport::new_server(tokio::io::stdin(), tokio::io::stdout());
    relay(client, server, url).await
}

/// The relay loop over any pair of transports (stdio and HTTP in production).
async fn relay<Up, Down>(mut up: Up, mut down: Down, url: &str) -> Result<(), BridgeError>
where
    Up: Transport<rmcp::RoleServer>,
    Down: Transport<rmcp::RoleClient>,
    Down::Error: std::error::Error,
{
    // Posts in flight: a request whose post fails is answered here, as rmcp's own service
    // does, so the client is never left waiting.
    let mut posts = FuturesUnordered::new();
    let mut last_failure: Option<String> = None;
    // Whether the server ever answered: a client that was never let in ends with an error.
    let mut connected = false;
    loop {
        tokio::select! {
            message = up.receive() => {
                let Some(message) = message else {
                    // The client closed stdin: end the session on the server too.
                    break;
                };
                let id = request_id(&message);
                let post = down.send(message);
                posts.push(async move { (id, post.await) });
            }
            message = down.receive() => {
                let Some(message) = message else {
                    // The server side ended; answer what is still waiting, then stop.
                    while let Some((id, result)) = posts.next().await {
                        if let Err(e) = result {
                            let why = reason(&e);
                            answer_failure(&mut up, id, &why).await?;
                            last_failure = Some(why);
                        }
                    }
                    let _ = up.close().await;
                    return Err(BridgeError::Upstream { url: url.to_owned(), reason: last_failure });
                };
                connected = true;
                up.send(message).await.map_err(|e| BridgeError::Stdout(std::io::Error::other(e.to_string())))?;
            }
            Some((id, result)) = posts.next(), if !posts.is_empty() => {
                if let Err(e) = result {
                    let why = reason(&e);
                    tracing::warn!(error = %why, "the running server refused a relayed message");
                    answer_failure(&mut up, id, &why).await?;
                    last_failure = Some(why);
                }
            }
        }
    }
    let _ = down.close().await;
    match (connected, last_failure) {
        (false, Some(reason)) => Err(BridgeError::Upstream {
            url: url.to_owned(),
            reason: Some(reason),
        }),
        _ => Ok(()),
    }
}

/// What the server said, for the client and the operator: the `error_description` of a
/// refusal's `WWW-Authenticate` when there is one (`malformed bearer token: …`), otherwise the
/// error and its causes.
fn reason(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    const KEY: &str = "error_description=\"";
    text.find(KEY)
        .map(|start| &text[start + KEY.len()..])
        .and_then(|rest| rest.split_once('"'))
        .map_or(text.clone(), |(description, _)| description.to_owned())
}

/// The id of a request (what a failed post must be answered with).
fn request_id(message: &ClientJsonRpcMessage) -> Option<RequestId> {
    match message {
        ClientJsonRpcMessage::Request(r) => Some(r.id.clone()),
        ClientJsonRpcMessage::Response(_)
        | ClientJsonRpcMessage::Notification(_)
        | ClientJsonRpcMessage::Error(_) => None,
    }
}

/// Answers a request the server never received (or refused) with a JSON-RPC error.
async fn answer_failure<Up: Transport<rmcp::RoleServer>>(
    up: &mut Up,
    id: Option<RequestId>,
    reason: &str,
) -> Result<(), BridgeError> {
    let Some(id) = id else {
        return Ok(());
    };
    let error = ErrorData::internal_error(
        format!("the running Mandate server did not take the request: {reason}"),
        None,
    );
    up.send(ServerJsonRpcMessage::error(error, Some(id)))
        .await
        .map_err(|e| BridgeError::Stdout(std::io::Error::other(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::reason;

    #[test]
    fn a_refusal_is_reported_by_its_description() {
        let refusal = std::io::Error::other(
            "authorization required: Bearer error=\"invalid_token\", error_description=\"token expired: mint a new one\", resource_metadata=\"http://x\"",
        );
        assert_eq!(reason(&refusal), "token expired: mint a new one");
        let other = std::io::Error::other("connection refused");
        assert_eq!(reason(&other), "connection refused");
    }
}

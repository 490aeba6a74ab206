//! The `Authorization` of every HTTP request rmcp sends to a protected downstream.
//!
//! [`Authed`] wraps the client rmcp connects with. A `tools/call` the call core sent through rmcp
//! (the fallback path) carries its exchanged token as a [`CallAuth`] extension and goes out with
//! it; everything else rmcp sends on the connection — the handshake, `tools/list` and drift
//! checks, the GET stream, session DELETE, cancellations — is Mandate's own traffic and carries
//! Mandate's own token ([`ServiceAuth`]), never a user's.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, GetExtensions};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};

use crate::exchange::{Issued, ServiceAuth};

/// The exchanged token of one `tools/call`, carried in the request's extensions.
#[derive(Clone)]
pub struct CallAuth(pub Arc<Issued>);

type HttpResult<T> = Result<T, StreamableHttpError<reqwest::Error>>;

/// A client that authenticates every request (see the module docs).
#[derive(Clone)]
pub struct Authed<C> {
    inner: C,
    service: Option<ServiceAuth>,
    label: Arc<str>,
}

impl<C> Authed<C> {
    pub fn new(inner: C, service: Option<ServiceAuth>, label: &str) -> Self {
        Self {
            inner,
            service,
            label: Arc::from(label),
        }
    }

    /// The bearer token for a request: the call's own, else Mandate's, else what rmcp had.
    async fn bearer(
        &self,
        message: Option<&ClientJsonRpcMessage>,
        fallback: Option<String>,
    ) -> Option<String> {
        if let Some(ClientJsonRpcMessage::Request(r)) = message
            && let Some(CallAuth(issued)) = r.request.extensions().get::<CallAuth>()
        {
            return Some(issued.token().to_owned());
        }
        let Some(service) = &self.service else {
            return fallback;
        };
        match service.bearer().await {
            Ok(token) => Some(token),
            Err(e) => {
                // Sent without a token, the protected downstream refuses it: fail closed.
                tracing::warn!(downstream = %self.label, error = %e, "no token for Mandate's own traffic to the downstream");
                None
            }
        }
    }
}

impl<C: StreamableHttpClient<Error = reqwest::Error> + Sync> StreamableHttpClient for Authed<C> {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<StreamableHttpPostResponse> {
        let auth = self.bearer(Some(&message), auth_header).await;
        self.inner
            .post_message(uri, message, session_id, auth, custom_headers)
            .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> HttpResult<StreamableHttpPostResponse> {
        let auth = self.bearer(Some(&message), auth_header).await;
        self.inner
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth,
                custom_headers,
                limits,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<()> {
        let auth = self.bearer(None, auth_header).await;
        self.inner
            .delete_session(uri, session_id, auth, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> HttpResult<futures::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>> {
        let auth = self.bearer(None, auth_header).await;
        self.inner
            .get_stream(uri, session_id, last_event_id, auth, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> HttpResult<futures::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>> {
        let auth = self.bearer(None, auth_header).await;
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

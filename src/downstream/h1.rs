//! Pooled HTTP/1.1 connections to one plain-HTTP downstream, for the native lane's calls.
//!
//! The lane's POSTs used to go through `reqwest`, which per request re-parses the URL, runs its
//! redirect policy and a stack of boxed services, and hands the request to a pooled connection
//! through its own queue. Here a call takes an idle connection (a hyper `SendRequest`), sends on
//! it and gives it back once the response body has been read to the end; a connection whose
//! response was not read to the end (an error, a timeout, a cancelled call) is dropped, so no
//! later call can read another call's bytes. Connections are opened with `TCP_NODELAY` and each
//! is driven by one task for its lifetime (never one per call).
//!
//! `https://` downstreams keep `reqwest` and its certificate verification.

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Idle connections kept per downstream: beyond this, a returned connection is closed.
const MAX_IDLE: usize = 64;
/// How long a connection given back with the end of its event stream still unread may take
/// to finish it (and then to be ready for a request) when it is next taken; past this it is
/// closed instead.
const DRAIN: Duration = Duration::from_millis(50);

/// The unread end of a response's event stream (its result was read; what follows is the
/// stream's end, or events nobody waits for any more).
pub type Rest = Pin<Box<dyn Stream<Item = ()> + Send>>;

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    rest: Option<Rest>,
}

/// The pool of one downstream URL.
pub struct H1 {
    /// `host:port` to connect to.
    addr: String,
    /// The request target (origin form: path and query).
    target: http::Uri,
    /// The `Host` header.
    host: http::HeaderValue,
    idle: Mutex<Vec<Idle>>,
}

/// A connection taken from the pool for one request.
pub struct Lease {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Lease {
    fn of(sender: SendRequest<Full<Bytes>>) -> Self {
        Self {
            sender: Some(sender),
        }
    }
}

impl H1 {
    /// A pool for `url` when it is plain `http://`; `None` otherwise.
    pub fn for_url(url: &reqwest::Url) -> Option<Self> {
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        // `host_str` keeps an IPv6 literal's brackets, as both the address and `Host` need.
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut target = url.path().to_owned();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        Some(Self {
            addr: format!("{host}:{port}"),
            target: target.parse().ok()?,
            host: http::HeaderValue::from_str(&authority).ok()?,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A POST of `body` to the downstream's URL with the pool's `Host`; the caller adds headers.
    pub fn request(&self, body: String) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.target.clone();
        request
            .headers_mut()
            .insert(http::header::HOST, self.host.clone());
        request
    }

    /// Sends `request` on an idle connection, or a new one. A request that an idle connection
    /// could not take (the downstream closed it meanwhile) and that was never written is sent
    /// again on a new connection; one that may have reached the downstream is never resent.
    pub async fn send(
        &self,
        mut request: http::Request<Full<Bytes>>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Lease), String> {
        if let Some(mut sender) = self.take_idle().await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease::of(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(format!("request failed: {}", e.error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        Ok((response, Lease::of(sender)))
    }

    /// Gives a connection back once its response has been read to the end, or with the rest
    /// of its event stream still to read (`rest`, finished by the next call that takes it).
    pub fn give_back(&self, mut lease: Lease, rest: Option<Rest>) {
        let Some(sender) = lease.sender.take() else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(Idle { sender, rest });
        }
    }

    /// An idle connection that can take a request: the rest of its previous response read
    /// first (bounded by [`DRAIN`]), then ready.
    async fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let Idle { mut sender, rest } = self.idle.lock().ok()?.pop()?;
            if sender.is_closed() {
                continue;
            }
            if let Some(mut rest) = rest {
                let drained =
                    tokio::time::timeout(DRAIN, async { while rest.next().await.is_some() {} })
                        .await;
                if drained.is_err() {
                    continue;
                }
            }
            // Bounded too: a connection that does not become ready at once is not waited for.
            if let Ok(Ok(())) = tokio::time::timeout(DRAIN, sender.ready()).await {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        // One task per connection, for its lifetime: it ends when the connection closes or
        // its last `SendRequest` is dropped.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "downstream connection closed");
            }
        });
        Ok(sender)
    }
}

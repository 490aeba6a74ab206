//! # The floor: a plain reverse proxy on Mandate's own stack
//!
//! What any broker built from Mandate's parts costs before it does anything of its own: the same
//! tokio runtime (one worker, Mandate's default), the same HTTP/1.1 server (axum on hyper, with
//! `TCP_NODELAY`), the same pooled hyper HTTP/1.1 client connections to the downstream (with
//! `TCP_NODELAY`) and the same allocator. It forwards every request unchanged but for `Host`, and
//! streams every response back; no authentication, no parsing, no policy, no audit.
//!
//! `examples/bench.rs --floor` starts it in front of the HTTP ledger and measures it in the same
//! rounds as the direct and the via-Mandate paths, so "what Mandate adds" can be split into what
//! the stack costs and what Mandate's own stages cost.
//!
//! ```text
//! floor_proxy --listen 127.0.0.1:0 --to http://127.0.0.1:8080
//! ```
//!
//! It prints `floor proxy listening on http://ADDR` when ready.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Idle connections to the downstream, reused as Mandate's native lane reuses its own.
struct Upstream {
    addr: String,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<Body>>>,
}

impl Upstream {
    fn take(&self) -> Option<SendRequest<Body>> {
        self.idle.lock().ok()?.pop()
    }

    fn give_back(&self, sender: SendRequest<Body>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>> {
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        // One task per connection for its lifetime, as in Mandate.
        tokio::spawn(connection);
        Ok(sender)
    }
}

async fn forward(upstream: Arc<Upstream>, request: Request) -> Result<Response> {
    let (mut parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the request")?
        .to_bytes();
    parts.headers.insert(header::HOST, upstream.host.clone());
    let request = Request::from_parts(parts, Body::from(body));
    let mut sender = match upstream.take() {
        Some(s) if !s.is_closed() => s,
        _ => upstream.connect().await?,
    };
    sender.ready().await.context("downstream connection")?;
    let response = sender.send_request(request).await.context("forwarding")?;
    let (parts, body) = response.into_parts();
    // The connection goes back to the pool once the response body has been read to its end
    // (an event stream may stay open for a while; a connection is never shared mid-response).
    let mut returned = Some(sender);
    let body = body
        .into_data_stream()
        .chain(futures::stream::poll_fn(move |_| {
            if let Some(sender) = returned.take() {
                upstream.give_back(sender);
            }
            std::task::Poll::Ready(None)
        }));
    Ok(Response::from_parts(parts, Body::from_stream(body)))
}

fn parse_args() -> Result<(String, reqwest::Url)> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut to = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--to" => {
                let url = args.next().context("--to needs a URL")?;
                to = Some(reqwest::Url::parse(&url).with_context(|| format!("--to {url:?}"))?);
            }
            other => {
                bail!("unexpected argument {other:?} (usage: floor_proxy [--listen ADDR] --to URL)")
            }
        }
    }
    let to = to.context("--to URL is required")?;
    if to.scheme() != "http" {
        bail!("--to must be an http:// URL");
    }
    Ok((listen, to))
}

fn main() -> Result<()> {
    let (listen, to) = parse_args()?;
    let host = to.host_str().context("--to has no host")?.to_owned();
    let port = to.port_or_known_default().context("--to has no port")?;
    let authority = format!("{host}:{port}");
    let upstream = Arc::new(Upstream {
        addr: authority.clone(),
        host: HeaderValue::from_str(&authority)?,
        idle: Mutex::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("floor proxy listening on http://{}", listener.local_addr()?);
        let app = axum::Router::new().fallback(move |request: Request| {
            let upstream = upstream.clone();
            async move {
                forward(upstream, request).await.unwrap_or_else(|e| {
                    (StatusCode::BAD_GATEWAY, format!("floor proxy: {e:#}\n")).into_response()
                })
            }
        });
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await?;
        Ok(())
    })
}

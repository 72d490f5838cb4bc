//! Background work on an upstream's servers outside the request path — active health checks and load
//! scraping — and the one-shot `GET` they both send. Each runs in a task that ends by itself once a
//! reload has replaced (and dropped) its upstream.

use super::{Upstream, UpstreamServer};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `round` over every server of `upstream` each `interval`, until the upstream is dropped.
pub(super) fn every<F, Fut>(upstream: &Arc<Upstream>, interval: Duration, round: F)
where
    F: Fn(Arc<Upstream>, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(upstream) = weak.upgrade() else { return };
            for index in 0..upstream.servers.len() {
                round(upstream.clone(), index).await;
            }
        }
    });
}

/// `GET path` on a fresh connection to `server` (never a pooled one), within `timeout`: the status
/// and up to `max_body` bytes of body, or `None` when anything fails.
pub(super) async fn get(
    server: &UpstreamServer,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Option<(StatusCode, Bytes)> {
    let authority = server.authority.as_str();
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(connection);
        let request = Request::get(path).header("host", authority).body(Empty::<Bytes>::new()).ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_body).collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

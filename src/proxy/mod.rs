//! The `proxy` handler: forwards one request to a server of its upstream over a pooled keep-alive
//! connection and streams the answer back. Dropping the returned future or the response body (the
//! client left) drops the backend connection, which closes it at once and never returns it to the pool.

mod body;
mod headers;
mod websocket;

pub use body::{BodyTimeouts, BodyTooLarge, RequestBody, StreamTimedOut, UpstreamBody};
pub use headers::Forwarding;

use crate::accounting::UpstreamInfo;
use crate::body::{BoxError, ClientBody, ClientRequest, ResponseBody};
use crate::error::GatewayError;
use crate::server::http1::PendingUpgrade;
use crate::upstream::{
    ConnectError, ExchangeError, HeadWait, Lease, SendTimedOut, Tried, Unavailable, Upstream, UpstreamConnection,
    UpstreamRequest, UpstreamServer,
};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::Duration;

/// Who sent the request, as the forwarding headers need it; made once per connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's socket address.
    pub peer: SocketAddr,
    /// The client's IP as a header value, for `X-Real-IP` and `X-Forwarded-For`.
    pub ip: HeaderValue,
    /// Whether the client connection is TLS.
    pub https: bool,
}

impl ClientInfo {
    /// Facts about a client connection.
    pub fn new(peer: SocketAddr, https: bool) -> ClientInfo {
        let ip = HeaderValue::try_from(peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientInfo { peer, ip, https }
    }
}

/// Forwards `request` to `upstream` and returns the backend's response, its body still streaming.
///
/// A server that cannot be reached, or answers 502/503 to a request without a streamed body, is counted as
/// failed (passive health) and the request goes to another one, up to the upstream's tries and retry
/// timeout, never twice to the same server and never once a response byte went to the client.
///
/// A body that grows past `max_body` (`client_max_body_size`; a declared length was checked before)
/// is cut off there and answered 413.
pub async fn forward(
    mut request: ClientRequest,
    client: &ClientInfo,
    upstream: &Upstream,
    max_body: u64,
) -> Result<Response<ResponseBody>, GatewayError> {
    // Only an HTTP/1.1 head that asked for an upgrade carries one (no header lookups for the others);
    // it is taken if the headers still ask for it after the location's header edits.
    let upgrade =
        request.extensions_mut().remove::<PendingUpgrade>().filter(|_| websocket::is_upgrade_request(&request));
    // The head stays in its box (a future holding it would be copied with it at every layer).
    let body = std::mem::replace(request.body_mut(), ClientBody::Empty);
    // A body small enough to keep is read first, so the request can go to another server if needed.
    let declared = body.declared_length();
    let may_resend = upstream.tries > 1 && (request.method().is_idempotent() || upstream.retry_non_idempotent);
    if upgrade.is_none() && may_resend && declared.is_some_and(|length| length > 0 && length <= upstream.retry_body_max)
    {
        // A client that stops sending gets the send timeout, as the backend would.
        let read = tokio::time::timeout(upstream.timeouts.send.0, body.collect()).await;
        let bytes = match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => return Err(GatewayError::BadRequest(format!("cannot read the request body: {e}"))),
            Err(_) => return Err(GatewayError::BadRequest("the request body did not arrive in time".into())),
        };
        return forward_body(request, RequestBody::buffered(bytes), None, client, upstream).await;
    }
    forward_body(request, RequestBody::new(body, max_body), upgrade, client, upstream).await
}

/// As `forward`, for a request whose body was read in full (by a model router; the request's own
/// body is not looked at); such a request can be sent again to another server whatever its method.
pub async fn forward_buffered(
    head: ClientRequest,
    body: Bytes,
    client: &ClientInfo,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, GatewayError> {
    forward_body(head, RequestBody::buffered(body), None, client, upstream).await
}

/// Forwards the request `head` (its body is `body`) with the retries `forward` describes.
async fn forward_body(
    mut head: ClientRequest,
    mut body: RequestBody,
    upgrade: Option<PendingUpgrade>,
    client: &ClientInfo,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, GatewayError> {
    // `Host` as the client sent it; an HTTP/2 client sends the authority instead.
    let host = match head.headers().contains_key(header::HOST) {
        true => None,
        false => head.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let forwarding = headers::to_upstream(head.headers_mut(), host, &client.ip, client.https, upgrade.is_some());
    let request = UpstreamRequest { head: &head, forwarding: &forwarding, hidden: &headers::HIDDEN_RESPONSE };
    let started = tokio::time::Instant::now();
    let total = upstream.timeouts.total.map(|t| (started + t.0, t.0));
    let waits = HeadWaits { first_byte: upstream.timeouts.first_byte(), total, from: started };
    let retry_deadline = upstream.retry_timeout.map(|t| started + t);
    let facts = upstream.facts(head.headers(), &client.ip);

    let mut tried = Tried::default();
    loop {
        if !tried.is_empty() {
            upstream.metrics.retries.inc();
        }
        // Only an upstream with slots can make a request wait: others read no clock here.
        let admit_started = upstream.admission.is_some().then(tokio::time::Instant::now);
        let admitted = upstream.admit(&tried, facts).await;
        if let Some(admit_started) = admit_started {
            upstream.metrics.queue_wait.observe(admit_started.elapsed().as_secs_f64());
        }
        let (index, permit) = admitted.map_err(|unavailable| match unavailable {
            Unavailable::Overloaded(rejection) => GatewayError::Overloaded(rejection),
            Unavailable::NoHealthyServer => GatewayError::NoHealthyServer,
        })?;
        tried.add(index);
        let server = &upstream.servers[index];
        let balancing = upstream.tracks_load();
        let mut lease = Lease { permit, in_flight: Some(server.load.start()), drain_watch: None };
        // A first try that could not wait for admission starts with the exchange: one clock read fewer.
        let try_started = match admit_started {
            None if tried.len() == 1 => started,
            _ => tokio::time::Instant::now(),
        };
        let may_retry = tried.len() < upstream.tries && retry_deadline.is_none_or(|d| tokio::time::Instant::now() < d);
        let fail = || {
            if server.health.record_failure(upstream.fail_policy) {
                tracing::warn!(upstream = %upstream.name, server = %server.authority, "server marked down");
            }
        };

        if let Some(client_upgrade) = upgrade {
            // Boxed: the tunnel's setup is the largest state here, and every request's future
            // would otherwise be sized (and copied) for it.
            return crate::boxed::pinned(|| {
                forward_upgrade(request, body, client_upgrade, server, lease, waits, upstream.timeouts.read.0)
            })
            .await;
        }

        let mut connection = match server.pool.checkout(try_started).await {
            Ok(connection) if connection.reused => {
                upstream.metrics.reused.inc();
                connection
            }
            Ok(connection) => {
                upstream.metrics.opened.inc();
                upstream.metrics.connect_time.observe(try_started.elapsed().as_secs_f64());
                connection
            }
            Err(error) => {
                fail();
                if may_retry {
                    tracing::debug!(%error, "trying another server");
                    continue;
                }
                return Err(connect_error(error));
            }
        };
        // Taking a kept-alive connection took no time: its request goes out as of `try_started`.
        let waits = if connection.reused { HeadWaits { from: try_started, ..waits } } else { waits.starting_now() };
        // A request without a streamed body can be sent again: after a kept-alive connection turns out
        // closed, or to another server after a 502/503 (as nginx: only idempotent methods, unless the
        // upstream allows others).
        let resend_elsewhere = may_retry && (head.method().is_idempotent() || upstream.retry_non_idempotent);
        let mut replay = (connection.reused || resend_elsewhere).then(|| body.replay()).flatten();
        let response = match exchange(&mut connection, request, body, waits).await {
            // A kept-alive connection the backend had closed: the request never left (or got no answer
            // at all), so a fresh connection gets it.
            Err(Failure::NotSent(unsent, error)) if connection.reused => {
                tracing::debug!(%error, "pooled upstream connection was closed; retrying on a new one");
                connection = server.pool.connect().await.map_err(connect_error)?;
                upstream.metrics.opened.inc();
                exchange(&mut connection, request, *unsent, waits.starting_now()).await
            }
            Err(Failure::Closed(error)) if connection.reused && replay.is_some() => {
                tracing::debug!(%error, "pooled upstream connection closed under the request; resending it on a new one");
                connection = server.pool.connect().await.map_err(connect_error)?;
                upstream.metrics.opened.inc();
                let resend = replay
                    .as_ref()
                    .and_then(RequestBody::replay)
                    .unwrap_or_else(|| RequestBody::buffered(Bytes::new()));
                exchange(&mut connection, request, resend, waits.starting_now()).await
            }
            other => other,
        };
        let response = match response {
            Ok(response) => response,
            Err(failure) => {
                fail();
                // Another server gets a request that never left, or a bodiless one that got no answer.
                match failure {
                    Failure::NotSent(unsent, _) if may_retry => body = *unsent,
                    Failure::Closed(_) if resend_elsewhere && replay.is_some() => {
                        body = replay.take().unwrap_or_else(|| RequestBody::buffered(Bytes::new()))
                    }
                    Failure::NotSent(_, error) | Failure::Closed(error) => {
                        return Err(GatewayError::BadGateway(error_chain(&error)))
                    }
                    Failure::Failed(error) => return Err(error),
                }
                tracing::debug!("trying another server");
                continue;
            }
        };
        let head_at = tokio::time::Instant::now();
        let header_time = head_at.duration_since(try_started);
        upstream.metrics.header_time.observe(header_time.as_secs_f64());
        if balancing {
            server.load.observe_head(header_time);
        }
        let status = response.status;
        if status.is_server_error() {
            fail();
            let retryable = matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE);
            if let (true, Some(copy), true) = (resend_elsewhere, replay, retryable) {
                tracing::debug!(%status, "trying another server");
                body = copy;
                continue;
            }
        }

        // The upstream connection consumed the connection-level and hidden headers already.
        let parts = response;
        let timeouts = body_timeouts(&parts, upstream, total);
        let info = UpstreamInfo {
            upstream: upstream.id,
            server: index,
            status: status.as_u16(),
            started_after: try_started.duration_since(started),
            header_time,
            head_at,
            event_stream: timeouts.sse,
        };
        let connection = if connection.body_done() {
            server.pool.key().checkin(connection, head_at);
            None
        } else {
            if timeouts.sse {
                // Streams are long: they watch for their server being drained.
                lease.drain_watch = Some(server.load.clone());
            }
            Some(connection)
        };
        let body = UpstreamBody::new(connection, Some(server.pool.key()), lease, timeouts).with_info(info);
        return Ok(Response::from_parts(parts, ResponseBody::Upstream { inner: Box::new(body) }));
    }
}

/// Why one exchange on a connection produced no response.
enum Failure {
    /// The connection failed before the request was written; its body comes back for a retry.
    NotSent(Box<RequestBody>, std::io::Error),
    /// The connection closed after the request was written and before any byte of an answer.
    Closed(std::io::Error),
    /// Anything else.
    Failed(GatewayError),
}

/// Sends the request on `connection` and waits for the response head, under the head timeouts: the
/// first byte's (the connection's own, armed once the request is sent) and the total deadline.
async fn exchange(
    connection: &mut UpstreamConnection,
    request: UpstreamRequest<'_>,
    body: RequestBody,
    waits: HeadWaits,
) -> Result<http::response::Parts, Failure> {
    let wait = HeadWait { from: waits.from, timeout: waits.first_byte };
    let head = connection.exchange(request, body, wait);
    let head = match waits.total {
        None => head.await,
        Some((deadline, duration)) => match tokio::time::timeout_at(deadline, head).await {
            Ok(head) => head,
            Err(_) => return Err(Failure::Failed(GatewayError::TotalTimeout(duration))),
        },
    };
    match head {
        Ok(head) => Ok(head),
        Err(ExchangeError::NotSent(body, error)) => Err(Failure::NotSent(Box::new(body), error)),
        Err(ExchangeError::Closed(error)) => Err(Failure::Closed(error)),
        Err(ExchangeError::Body(error)) => Err(Failure::Failed(body_error(error))),
        Err(ExchangeError::Backend(error)) => Err(Failure::Failed(backend_error(&error))),
        Err(ExchangeError::TimedOut) => Err(Failure::Failed(GatewayError::ReadTimeout)),
    }
}

/// An HTTP/1.1 Upgrade (WebSocket): a connection of its own, outside the pool, since after `101` it
/// belongs to the tunnel.
#[allow(clippy::too_many_arguments)]
async fn forward_upgrade(
    request: UpstreamRequest<'_>,
    body: RequestBody,
    client_upgrade: PendingUpgrade,
    server: &UpstreamServer,
    lease: Lease,
    waits: HeadWaits,
    read_timeout: Duration,
) -> Result<Response<ResponseBody>, GatewayError> {
    let mut connection = server.pool.connect().await.map_err(connect_error)?;
    let mut head = match exchange(&mut connection, request, body, waits.starting_now()).await {
        Ok(head) => head,
        Err(Failure::Failed(error)) => return Err(error),
        Err(Failure::NotSent(_, error) | Failure::Closed(error)) => {
            return Err(GatewayError::BadGateway(error_chain(&error)))
        }
    };
    let switched = head.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut head.headers, switched);
    let body = if switched {
        // The tunnel holds the server's slot for as long as it lives.
        let upstream_io = connection.into_upgraded();
        tokio::spawn(async move {
            websocket::tunnel(client_upgrade, upstream_io, read_timeout).await;
            drop(lease);
        });
        ResponseBody::Empty
    } else {
        let timeouts = BodyTimeouts { idle: read_timeout, total: waits.total, sse: false };
        let connection = (!connection.body_done()).then_some(connection);
        ResponseBody::Upstream { inner: Box::new(UpstreamBody::new(connection, None, lease, timeouts)) }
    };
    Ok(Response::from_parts(head, body))
}

/// How long the response head may take.
#[derive(Debug, Clone, Copy)]
struct HeadWaits {
    /// From the request sent (nginx arms `proxy_read_timeout` then) to the head.
    first_byte: Duration,
    /// The whole exchange's deadline, if any, with the configured duration for the message.
    total: Option<(tokio::time::Instant, Duration)>,
    /// When the request starts going out: the first byte's timer runs from here for a request
    /// without a body to wait for. A time read already, as clock reads cost.
    from: tokio::time::Instant,
}

impl HeadWaits {
    /// The same waits for a request going out now.
    fn starting_now(self) -> HeadWaits {
        HeadWaits { from: tokio::time::Instant::now(), ..self }
    }
}

/// The body limits of a response: idle and total timeouts, and whether it is an event stream.
fn body_timeouts(
    parts: &http::response::Parts,
    upstream: &Upstream,
    total: Option<(tokio::time::Instant, Duration)>,
) -> BodyTimeouts {
    let sse = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    BodyTimeouts { idle: upstream.timeouts.idle(), total, sse }
}

fn connect_error(error: ConnectError) -> GatewayError {
    match error {
        ConnectError::TimedOut(addr) => GatewayError::ConnectTimeout(addr),
        other => GatewayError::UpstreamUnreachable(other.to_string()),
    }
}

/// A client body that failed on its way: larger than `client_max_body_size` is 413, anything else
/// (the client went away, or sent less or more than it declared) 400.
fn body_error(error: BoxError) -> GatewayError {
    match error.downcast_ref::<BodyTooLarge>() {
        Some(BodyTooLarge(limit)) => GatewayError::BodyTooLarge(*limit),
        None => GatewayError::BadRequest(format!("cannot read the request body: {}", error_chain(&*error))),
    }
}

/// A failed exchange with the backend: the send timeout is 504 (nginx), anything else 502.
fn backend_error(error: &std::io::Error) -> GatewayError {
    if error.get_ref().is_some_and(|inner| inner.is::<SendTimedOut>()) {
        return GatewayError::SendTimeout;
    }
    GatewayError::BadGateway(error_chain(error))
}

/// "outer: inner: innermost", for messages that say what actually happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

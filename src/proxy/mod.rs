//! The `proxy` handler: forwards one request to a server of its upstream over a pooled keep-alive
//! connection and streams the answer back. Dropping the returned future or the response body (the
//! client left) drops the backend connection, which closes it at once and never returns it to the pool.

mod body;
mod headers;
pub(crate) mod retry;
mod websocket;

pub(crate) use body::{BodyLimits, BodyTimedOut, BodyTimeouts, BodyTooLarge, RequestBody, Source, UpstreamBody};

use crate::accounting::UpstreamInfo;
use crate::client::{ClientBody, ClientInfo, ClientRequest};
use crate::error::BoxError;
use crate::error::GatewayError;
use crate::upstream::{
    BalanceFacts, Checked, Claim, ConnectError, ExchangeError, FailureReport, HeadWait, Http2Body, Http2Sender, Lease,
    SendTimedOut, Tried, Unavailable, Upstream, UpstreamConnection, UpstreamRequest, UpstreamServer,
};
use crate::wire::upgrade::PendingUpgrade;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use retry::{Decision, FailedTry, Origin, Phase, RequestKind, Stop};
use std::time::Duration;

/// A proxied response's body: the backend's, still streaming; `None` after `101 Switching Protocols`,
/// when the connection became a tunnel. Boxed: inline, every response would be hundreds of bytes,
/// copied at each step of the pipeline.
pub(crate) type Proxied = Option<Box<UpstreamBody>>;

/// Forwards `request` to `upstream` and returns the backend's response, its body still streaming.
///
/// A try that fails by the server's fault (unreachable, closed or reset before answering, timed out,
/// a broken head, 5xx) counts against that server (passive health) and, as `retry::decide` rules,
/// goes to another one; a client's fault (a broken, cut or oversized body) answers the client and
/// counts against nobody. `inference` marks a request that is safe to send again before its first
/// response byte (see `retry`).
///
/// `claim` is what admission knows of the request before it arrives (its API key's queue place).
///
/// A body that grows past `limits.max` (`client_max_body_size`; a declared length was checked
/// before) is cut off there and answered 413; one whose client sends nothing for `limits.idle`
/// (`client_body_timeout`) is answered 408.
pub(crate) async fn forward(
    mut request: ClientRequest,
    client: &ClientInfo,
    upstream: &Upstream,
    limits: BodyLimits,
    inference: bool,
    claim: Claim,
) -> Result<Response<Proxied>, GatewayError> {
    // Only an HTTP/1.1 head that asked for an upgrade carries one (no header lookups for the others);
    // it is taken if the headers still ask for it after the location's header edits.
    let upgrade =
        request.extensions_mut().remove::<PendingUpgrade>().filter(|_| websocket::is_upgrade_request(&request));
    // The head stays in its box (a future holding it would be copied with it at every layer).
    let body = std::mem::replace(request.body_mut(), ClientBody::Empty);
    let kind = RequestKind {
        idempotent: request.method().is_idempotent(),
        inference,
        any_method: upstream.retry_non_idempotent,
    };
    // A body small enough to keep is read first, so the request can go to another server if needed.
    let declared = body.declared_length();
    let may_resend = upstream.tries > 1 && (kind.idempotent || kind.inference || kind.any_method);
    if upgrade.is_none() && may_resend && declared.is_some_and(|length| length > 0 && length <= upstream.retry_body_max)
    {
        let bytes = RequestBody::new(body, limits).collect().await.map_err(body_error)?.to_bytes();
        return forward_body(request, RequestBody::buffered(bytes), None, client, upstream, kind, claim).await;
    }
    forward_body(request, RequestBody::new(body, limits), upgrade, client, upstream, kind, claim).await
}

/// As `forward`, for a request whose body was read in full (by a model router; the request's own
/// body is not looked at): an inference request unless `inference` says otherwise.
pub(crate) async fn forward_buffered(
    head: ClientRequest,
    body: Bytes,
    client: &ClientInfo,
    upstream: &Upstream,
    inference: bool,
    claim: Claim,
) -> Result<Response<Proxied>, GatewayError> {
    let kind =
        RequestKind { idempotent: head.method().is_idempotent(), inference, any_method: upstream.retry_non_idempotent };
    forward_body(head, RequestBody::buffered(body), None, client, upstream, kind, claim).await
}

/// Forwards the request `head` (its body is `body`) with the retries `forward` describes. Each try
/// runs the same steps, in order:
///
/// 1. [`admit`]: a server (admission control or the balancer, skipping servers tried already) and
///    the lease the response will hold on it.
/// 2. The exchange on a pooled connection: written out in this function (see there).
/// 3. [`Try::after_failure`], when the exchange got no response head: the failure is counted
///    against the server only when it was the server's, and `retry::decide` says whether another
///    server gets the request.
/// 4. [`Try::after_head`]: a 502 or 503 head may go to another server the same way.
/// 5. [`Try::respond`]: the response, its body still streaming from the connection.
#[allow(clippy::too_many_arguments)]
async fn forward_body(
    mut head: ClientRequest,
    mut body: RequestBody,
    upgrade: Option<PendingUpgrade>,
    client: &ClientInfo,
    upstream: &Upstream,
    kind: RequestKind,
    claim: Claim,
) -> Result<Response<Proxied>, GatewayError> {
    // `Host` as the client sent it; an HTTP/2 client sends the authority instead.
    let host = match head.headers().contains_key(header::HOST) {
        true => None,
        false => head.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    upstream.request_headers.apply(head.headers_mut());
    let forwarding = headers::to_upstream(head.headers_mut(), host, &client.ip, client.https, upgrade.is_some());
    let request = UpstreamRequest { head: &head, forwarding: &forwarding, hidden: &headers::HIDDEN_RESPONSE };
    let started = tokio::time::Instant::now();
    let total = upstream.timeouts.total.map(|t| (started + t.0, t.0));
    let waits = HeadWaits { first_byte: upstream.timeouts.first_byte(), total, from: started };
    let retry_deadline = upstream.retry_timeout.map(|t| started + t);
    let facts = upstream.facts(head.headers(), claim, &client.ip, body.whole());

    let mut tried = Tried::default();
    loop {
        let admitted = admit(upstream, &mut tried, facts, started).await;
        // Every server down, or the queue full, before any try: the fallback takes the request whole.
        let unavailable = matches!(admitted, Err(GatewayError::Overloaded(_) | GatewayError::NoHealthyServer));
        if let Some(fallback) = upstream.fallback.get().filter(|_| unavailable && tried.is_empty()) {
            upstream.metrics.fallbacks.inc();
            return Box::pin(forward_body(head, body, upgrade, client, fallback, kind, claim)).await;
        }
        let (index, lease, try_started) = admitted?;
        let server = &upstream.servers[index];
        let hosted;
        let request = match &server.host {
            Some(host) => {
                hosted = headers::with_host(&forwarding, host);
                UpstreamRequest { forwarding: &hosted, ..request }
            }
            None => request,
        };
        let step = Try {
            upstream,
            server,
            index,
            kind,
            tries_left: tried.len() < upstream.tries,
            retry_deadline,
            request_started: started,
            started: try_started,
        };

        if let Some(client_upgrade) = upgrade {
            // Boxed: the tunnel's setup is the largest state here, and every request's future
            // would otherwise be sized (and copied) for it.
            let upgraded = crate::boxed::pinned(|| {
                forward_upgrade(request, body, client_upgrade, server, lease, waits, upstream.timeouts.read.0)
            })
            .await;
            return upgraded.map_err(|failure| {
                step.charge(failure.origin);
                failure.error
            });
        }

        // Step 2, one exchange on this server; written out here rather than in a function of its
        // own, whose future (the exchange's inside it) every request would copy into this one.
        let attempt: Result<_, TryFailure> = 'attempt: {
            let mut connection = match server.pool.checkout(try_started).await {
                Ok(Checked::Http1(connection)) if connection.reused => {
                    upstream.metrics.reused.inc();
                    connection
                }
                Ok(Checked::Http1(connection)) => {
                    upstream.metrics.opened.inc();
                    upstream.metrics.connect_time.observe(try_started.elapsed().as_secs_f64());
                    connection
                }
                Ok(Checked::Http2 { sender, reused }) => {
                    match reused {
                        true => upstream.metrics.reused.inc(),
                        false => upstream.metrics.opened.inc(),
                    }
                    let copy = step.tries_left.then(|| body.replay()).flatten();
                    let waits = if reused { HeadWaits { from: try_started, ..waits } } else { waits.starting_now() };
                    break 'attempt http2_exchange(sender, server, request, body, waits, copy).await;
                }
                Err(error) => break 'attempt Err(TryFailure::before_sending(error, body)),
            };
            // Taking a kept-alive connection took no time: its request goes out as of `try_started`.
            let waits = if connection.reused { HeadWaits { from: try_started, ..waits } } else { waits.starting_now() };
            // A body at hand is kept for another server (or a fresh connection) while one may follow.
            let copy = (connection.reused || step.tries_left).then(|| body.replay()).flatten();
            let mut outcome = exchange(&mut connection, request, body, waits).await;
            if connection.reused {
                // A kept-alive connection that turns out closed (the request never left, or got no
                // byte of an answer) is the pool's stale connection, not the server's failure: the
                // request goes again on a fresh one.
                if let Some(resend) = stale_connection_resend(&mut outcome, copy.as_ref()) {
                    let fresh =
                        crate::boxed::pinned(|| resend_on_new_connection(server, upstream, request, resend, waits));
                    match fresh.await {
                        Ok((fresh, again)) => (connection, outcome) = (fresh, again),
                        Err(failure) => break 'attempt Err(failure),
                    }
                }
            }
            match outcome {
                Ok(parts) => Ok((Source::Http1(connection), parts, copy)),
                Err(failure) => Err(TryFailure::of(failure, copy)),
            }
        };
        let (connection, parts, copy) = match attempt {
            Ok(answered) => answered,
            Err(failure) => {
                body = step.after_failure(failure)?;
                continue;
            }
        };
        let header_time = match step.after_head(&parts, copy) {
            Ok(header_time) => header_time,
            Err(again) => {
                body = again;
                continue;
            }
        };
        return Ok(step.respond(connection, parts, lease, header_time, total));
    }
}

/// Step 1 of a try: a server for it, recorded in `tried`, the lease the response will hold on it,
/// and when the try starts. Waits for a slot when the upstream has `max_inflight`; answers 503 when
/// none comes or every server is down.
async fn admit(
    upstream: &Upstream,
    tried: &mut Tried,
    facts: BalanceFacts,
    started: tokio::time::Instant,
) -> Result<(usize, Lease, tokio::time::Instant), GatewayError> {
    if !tried.is_empty() {
        upstream.metrics.retries.inc();
    }
    // Only an upstream with slots can make a request wait: others read no clock here.
    let admit_started = upstream.admission.is_some().then(tokio::time::Instant::now);
    let admitted = upstream.admit(tried, facts).await;
    if let Some(admit_started) = admit_started {
        upstream.metrics.queue_wait.observe(admit_started.elapsed().as_secs_f64());
    }
    let (index, permit) = admitted.map_err(|unavailable| match unavailable {
        Unavailable::Overloaded(rejection) => GatewayError::Overloaded(rejection),
        Unavailable::NoHealthyServer => GatewayError::NoHealthyServer,
    })?;
    tried.add(index);
    let lease = Lease { permit, in_flight: Some(upstream.servers[index].load.start()), drain_watch: None };
    // A first try that could not wait for admission starts with the exchange: one clock read fewer.
    let try_started = match admit_started {
        None if tried.len() == 1 => started,
        _ => tokio::time::Instant::now(),
    };
    Ok((index, lease, try_started))
}

/// One try of a request on one server: what its steps after the exchange need to know.
struct Try<'a> {
    upstream: &'a Upstream,
    server: &'a UpstreamServer,
    /// The server's index in its upstream.
    index: usize,
    kind: RequestKind,
    /// Whether the upstream's `tries` allow another after this one.
    tries_left: bool,
    /// `next_upstream_timeout`'s deadline, if set.
    retry_deadline: Option<tokio::time::Instant>,
    /// When the request's first try started, and this one.
    request_started: tokio::time::Instant,
    started: tokio::time::Instant,
}

impl Try<'_> {
    /// Counts a failure against the server when it was the server's (see `retry`).
    fn charge(&self, origin: Origin) {
        if origin.counts_against_server() {
            self.server.health.count_failure(self.upstream.fail_policy);
        }
    }

    /// Step 3, after an exchange that got no response head: the body to send to another server with,
    /// or the error to answer.
    fn after_failure(&self, failure: TryFailure) -> Result<RequestBody, GatewayError> {
        let TryFailure { error, origin, body: again } = failure;
        self.charge(origin);
        self.another(origin, again, &error).ok_or(error)
    }

    /// Step 4, on a response head: records its time (for the metrics and the balancer) and returns
    /// it, or the body to send to another server with when the head is a 502 or 503 that `retry`
    /// sends on (`copy` is the body kept for that). Any 5xx counts against the server.
    fn after_head(&self, parts: &http::response::Parts, copy: Option<RequestBody>) -> Result<Duration, RequestBody> {
        let header_time = self.started.elapsed();
        self.upstream.metrics.header_time.observe(header_time.as_secs_f64());
        if self.upstream.tracks_load() {
            self.server.load.observe_head(header_time);
        }
        let status = parts.status;
        if status.is_server_error() {
            self.charge(Origin::Upstream(Phase::Unavailable));
            if matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE) {
                let error = GatewayError::BadGateway(format!("the server answered {status}"));
                if let Some(again) = self.another(Origin::Upstream(Phase::Unavailable), copy, &error) {
                    return Err(again);
                }
            }
        }
        Ok(header_time)
    }

    /// Whether another server gets the request after this failed try (`retry::decide`), with the
    /// body for it.
    fn another(&self, origin: Origin, again: Option<RequestBody>, error: &GatewayError) -> Option<RequestBody> {
        let failed = FailedTry {
            origin,
            request: self.kind,
            response_started: false,
            body_at_hand: again.is_some(),
            tries_left: self.tries_left,
            deadline_passed: self.retry_deadline.is_some_and(|d| tokio::time::Instant::now() >= d),
        };
        match retry::decide(failed) {
            Decision::TryAnother => {
                tracing::debug!(%error, server = %self.server.authority, "trying another server");
                again
            }
            // The one reason an operator can act on (`next_upstream_body_max`) is logged as info.
            Decision::Answer(stop @ Stop::BodyNotKept) => {
                let reason = stop.reason();
                tracing::info!(%error, server = %self.server.authority, "not sent to another server: {reason}");
                None
            }
            Decision::Answer(stop) => {
                tracing::debug!(%error, "not sent to another server: {}", stop.reason());
                None
            }
        }
    }

    /// Step 5: the response, its body streaming from `connection` (or the connection back in the
    /// pool when the body is complete already), holding `lease` until it ends.
    fn respond(
        &self,
        connection: Source,
        parts: http::response::Parts,
        mut lease: Lease,
        header_time: Duration,
        total: Option<(tokio::time::Instant, Duration)>,
    ) -> Response<Proxied> {
        let (upstream, server) = (self.upstream, self.server);
        let head_at = self.started + header_time;
        // The upstream connection consumed the connection-level and hidden headers already.
        let timeouts = body_timeouts(&parts, upstream, total);
        let info = UpstreamInfo {
            upstream: upstream.id,
            server: self.index,
            status: parts.status.as_u16(),
            started_after: self.started.duration_since(self.request_started),
            header_time,
            head_at,
            event_stream: timeouts.sse,
        };
        let (connection, failures) = if connection.body_done() {
            if let Source::Http1(connection) = connection {
                server.pool.key().checkin(connection, head_at);
            }
            (None, None)
        } else {
            if timeouts.sse {
                // Streams are long: they watch for their server being drained.
                lease.drain_watch = Some(server.load.clone());
            }
            // A body the server cuts (it dies, breaks the framing, or stalls) is its failure.
            let failures = FailureReport { health: server.health.clone(), policy: upstream.fail_policy };
            (Some(connection), Some(failures))
        };
        let body = UpstreamBody::new(connection, Some(server.pool.key()), lease, timeouts).with_info(info, failures);
        Response::from_parts(parts, Some(Box::new(body)))
    }
}

/// A try that got no response head.
struct TryFailure {
    /// What the client is answered if no other server gets the request.
    error: GatewayError,
    /// Who failed, and how far the exchange had got.
    origin: Origin,
    /// The body again for another server: not sent, or kept in full.
    body: Option<RequestBody>,
}

impl TryFailure {
    /// A failed exchange; `copy` is the body kept for another server, if any.
    fn of(failure: Failure, copy: Option<RequestBody>) -> TryFailure {
        match failure {
            Failure::NotSent(unsent, error) => TryFailure {
                error: GatewayError::BadGateway(error_chain(&error)),
                origin: Origin::Upstream(Phase::NotSent),
                body: Some(*unsent),
            },
            Failure::Failed(error, origin) => TryFailure { error, origin, body: copy },
        }
    }

    fn before_sending(error: ConnectError, body: RequestBody) -> TryFailure {
        TryFailure { error: connect_error(error), origin: Origin::Upstream(Phase::NotSent), body: Some(body) }
    }
}

/// After an exchange on a kept-alive connection: the body to send again on a fresh connection when
/// the connection turned out closed (`outcome` gives back an unsent body, or `copy` has one for a
/// request that got no byte of an answer), else `None`.
fn stale_connection_resend(
    outcome: &mut Result<http::response::Parts, Failure>,
    copy: Option<&RequestBody>,
) -> Option<RequestBody> {
    match outcome {
        Err(Failure::NotSent(unsent, error)) => {
            tracing::debug!(%error, "pooled upstream connection was closed; sending again on a new one");
            // The outcome is replaced by the new exchange's.
            Some(std::mem::replace(&mut **unsent, empty_body()))
        }
        Err(Failure::Failed(error, Origin::Upstream(Phase::NoAnswer))) => {
            let resend = copy.map(|copy| copy.replay().unwrap_or_else(empty_body))?;
            tracing::debug!(%error, "pooled upstream connection closed under the request; sending again on a new one");
            Some(resend)
        }
        _ => None,
    }
}

/// The request again on a fresh connection to the same server, after a stale kept-alive one. Boxed
/// by its caller: only the rare request that needs it pays for its future.
async fn resend_on_new_connection(
    server: &UpstreamServer,
    upstream: &Upstream,
    request: UpstreamRequest<'_>,
    body: RequestBody,
    waits: HeadWaits,
) -> Result<(Box<UpstreamConnection>, Result<http::response::Parts, Failure>), TryFailure> {
    let mut connection = match server.pool.connect().await {
        Ok(connection) => connection,
        Err(error) => return Err(TryFailure::before_sending(error, body)),
    };
    upstream.metrics.opened.inc();
    let outcome = exchange(&mut connection, request, body, waits.starting_now()).await;
    Ok((connection, outcome))
}

/// Step 2 on the worker's HTTP/2 connection to `server`: the request as a stream of it (its
/// `Host` as `:authority`), and its response head under the head timeouts. `copy` is the body kept
/// for another server.
async fn http2_exchange(
    mut sender: Http2Sender,
    server: &UpstreamServer,
    request: UpstreamRequest<'_>,
    body: RequestBody,
    waits: HeadWaits,
    copy: Option<RequestBody>,
) -> Result<(Source, http::response::Parts, Option<RequestBody>), TryFailure> {
    let head = request.head;
    let path = head.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = http::Request::new(Http2Body::new(body));
    *outgoing.method_mut() = head.method().clone();
    *outgoing.version_mut() = http::Version::HTTP_2;
    // The server's own name (a server found by DNS is connected to by address).
    let authority = server.host.as_ref().and_then(|host| host.to_str().ok()).unwrap_or(server.authority.as_str());
    *outgoing.uri_mut() = format!("https://{authority}{path}").parse().map_err(|e| TryFailure {
        error: GatewayError::BadGateway(format!("no URI for HTTP/2: {e}")),
        origin: Origin::Upstream(Phase::NotSent),
        body: None,
    })?;
    let headers = outgoing.headers_mut();
    let added = |name: &HeaderName| request.forwarding.iter().any(|(forwarded, _)| *forwarded == name);
    for (name, value) in head.headers() {
        if name != header::HOST && !added(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in request.forwarding {
        if **name != header::HOST {
            headers.append((*name).clone(), value.clone());
        }
    }
    let deadline = waits.from + waits.first_byte;
    let deadline = waits.total.map_or(deadline, |(total, _)| total.min(deadline));
    match tokio::time::timeout_at(deadline, sender.send_request(outgoing)).await {
        Ok(Ok(response)) => {
            let (mut parts, stream) = response.into_parts();
            for name in request.hidden {
                parts.headers.remove(*name);
            }
            Ok((Source::Http2(stream), parts, copy))
        }
        Ok(Err(error)) => {
            let origin = if error.is_canceled() { Phase::NotSent } else { Phase::NoAnswer };
            Err(TryFailure {
                error: GatewayError::BadGateway(error_chain(&error)),
                origin: Origin::Upstream(origin),
                body: copy,
            })
        }
        Err(_) => {
            Err(TryFailure { error: GatewayError::ReadTimeout, origin: Origin::Upstream(Phase::TimedOut), body: copy })
        }
    }
}

fn empty_body() -> RequestBody {
    RequestBody::buffered(Bytes::new())
}

/// Why one exchange on a connection produced no response.
enum Failure {
    /// The connection failed before the request was written; its body comes back for a retry.
    NotSent(Box<RequestBody>, std::io::Error),
    /// Anything else, with who failed.
    Failed(GatewayError, Origin),
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
            Err(_) => return Err(Failure::Failed(GatewayError::TotalTimeout(duration), Origin::Gateway)),
        },
    };
    let upstream = |error, phase| Err(Failure::Failed(error, Origin::Upstream(phase)));
    match head {
        Ok(head) => Ok(head),
        Err(ExchangeError::NotSent(body, error)) => Err(Failure::NotSent(Box::new(body), error)),
        Err(ExchangeError::Closed(error)) => upstream(GatewayError::BadGateway(error_chain(&error)), Phase::NoAnswer),
        Err(ExchangeError::Body(error)) => Err(Failure::Failed(body_error(error), Origin::Client)),
        Err(ExchangeError::Backend(error)) if is_send_timeout(&error) => {
            upstream(GatewayError::SendTimeout, Phase::TimedOut)
        }
        Err(ExchangeError::Backend(error)) => {
            upstream(GatewayError::BadGateway(error_chain(&error)), Phase::BrokenAnswer)
        }
        Err(ExchangeError::TimedOut) => upstream(GatewayError::ReadTimeout, Phase::TimedOut),
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
) -> Result<Response<Proxied>, TryFailure> {
    let mut connection =
        server.pool.connect().await.map_err(|error| TryFailure::before_sending(error, empty_body()))?;
    let mut head = match exchange(&mut connection, request, body, waits.starting_now()).await {
        Ok(head) => head,
        Err(Failure::Failed(error, origin)) => return Err(TryFailure { error, origin, body: None }),
        Err(Failure::NotSent(_, error)) => {
            let error = GatewayError::BadGateway(error_chain(&error));
            return Err(TryFailure { error, origin: Origin::Upstream(Phase::NotSent), body: None });
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
        None
    } else {
        let timeouts = BodyTimeouts { idle: read_timeout, total: waits.total, sse: false };
        let connection = (!connection.body_done()).then_some(Source::Http1(connection));
        Some(Box::new(UpstreamBody::new(connection, None, lease, timeouts)))
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

/// A client body that failed on its way: larger than `client_max_body_size` is 413, stalled for
/// `client_body_timeout` 408, anything else (the client went away, or sent less or more than it
/// declared, or broke the framing) 400.
pub(crate) fn body_error(error: BoxError) -> GatewayError {
    if let Some(BodyTooLarge(limit)) = error.downcast_ref::<BodyTooLarge>() {
        return GatewayError::BodyTooLarge(*limit);
    }
    if let Some(BodyTimedOut(idle)) = error.downcast_ref::<BodyTimedOut>() {
        return GatewayError::BodyTimeout(*idle);
    }
    GatewayError::BadRequest(format!("cannot read the request body: {}", error_chain(&*error)))
}

/// Whether a failed exchange is the send timeout (504, as nginx), not a broken connection (502).
fn is_send_timeout(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<SendTimedOut>())
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

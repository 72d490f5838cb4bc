//! Serving one accepted client connection: the TLS handshake, HTTP/1.1 (`http1`) or HTTP/2 by hyper
//! (ALPN, or prior knowledge in cleartext), and the connection's limits: header read timeout,
//! keep-alive idle timeout, requests per connection, and the drain on shutdown.

use super::{http1, Gateway};
use crate::client::ClientInfo;
use crate::client::{ClientBody, ClientRequest};
use crate::error::BoxError;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::pipeline::ResponseBody;
use crate::runtime::{ListenerSpec, RuntimeRef};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use http::{header, HeaderValue, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use slab::Slab;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// What serves a freshly accepted TCP connection that arrived on the listener configured as
/// `listen_key`; `None` when a reload removed that listener meanwhile. The connection's state is made
/// here, so that the task holds only what it needs from then on (a task is sized for its future, and
/// an idle connection's memory is mostly its task).
pub(crate) fn accepted(
    gateway: &Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    listen_key: SocketAddr,
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let runtime = gateway.runtime();
    let spec = runtime.listeners.get(&listen_key).cloned()?;
    let metrics = runtime.metrics.clone();
    drop(runtime);
    let shutdown = gateway.shutdown_signal();
    let client = ClientInfo::new(peer, spec.tls.is_some());
    let state = ConnState::new(gateway.clone(), client, listen_key, spec.limits.idle_timeout());
    Some(serve(state, stream, spec, metrics, shutdown))
}

/// Serves the connection of `state`: the TLS handshake, or which protocol a cleartext client speaks,
/// then its requests. A function returning an `async` block, not an `async fn` (see `serve_http`).
#[expect(clippy::manual_async_fn, reason = "an `async fn` keeps room for its arguments twice (rust-lang/rust#62958)")]
fn serve(
    state: Arc<ConnState>,
    stream: TcpStream,
    spec: Arc<ListenerSpec>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        if spec.tls.is_some() {
            // Boxed, so a cleartext connection's task is not sized for the handshake and TLS state it
            // never has (a kilobyte and a half per idle connection).
            crate::boxed::pinned(|| serve_tls(state, stream, &spec, &metrics, shutdown)).await;
            return;
        }
        // Cleartext connections may be either protocol (h2 by prior knowledge): counted as one.
        let _open = metrics.client_connection("cleartext");
        drop(metrics);
        let protocol = if spec.http2 {
            // The first bytes tell. A client that sends none within `client_header_timeout` is
            // closed, as nginx closes a connection without a request; so is it on shutdown.
            // Boxed: the wait is over before the first request, and the task need not be sized for it.
            let sniffed = crate::boxed::pinned(|| async {
                tokio::select! {
                    sniffed = tokio::time::timeout(spec.limits.header_timeout, is_http2_preface(&stream)) => sniffed.ok(),
                    _ = shutdown.changed() => None,
                }
            });
            match sniffed.await {
                Some(true) => Protocol::Http2,
                Some(false) => Protocol::Http1,
                None => return,
            }
        } else {
            Protocol::Http1
        };
        serve_http(state, stream, protocol, &spec, &shutdown).await;
    }
}

/// The TLS handshake (bounded by `client_header_timeout`, abandoned on shutdown), then the protocol
/// ALPN chose.
async fn serve_tls(
    state: Arc<ConnState>,
    stream: TcpStream,
    spec: &ListenerSpec,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(acceptor) = &spec.tls else { return };
    let handshake = tokio::select! {
        result = tokio::time::timeout(spec.limits.header_timeout, acceptor.accept(stream)) => result,
        _ = shutdown.changed() => return,
    };
    metrics.tls_handshake(matches!(handshake, Ok(Ok(_))));
    let peer = state.client.peer;
    match handshake {
        Ok(Ok(tls)) => {
            let protocol = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            let _open = metrics.client_connection(protocol.name());
            serve_http(state, tls, protocol, spec, &shutdown).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Whether a cleartext client's first bytes are HTTP/2's connection preface (prior knowledge), by
/// peeking: nothing is consumed.
async fn is_http2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    loop {
        match stream.peek(&mut first).await {
            Ok(read) if read > 0 && PREFACE.starts_with(&first[..read]) => {
                if read == PREFACE.len() {
                    return true;
                }
            }
            _ => return false,
        }
        // Part of a preface: the rest is due in a moment (peeking again at once would spin).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Which protocol a connection speaks, decided before its first request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
        }
    }
}

/// Per-connection state shared by the connection's task and its requests. Only this connection's
/// worker touches it (but for `stop`, raised from elsewhere on shutdown), so its reference count and
/// fields never bounce between cores.
struct ConnState {
    gateway: Arc<Gateway>,
    client: ClientInfo,
    /// This connection's reference to the current runtime: requests clone this outer `Arc`, whose
    /// count is the connection's own, instead of the runtime's shared one.
    runtime: Mutex<Arc<RuntimeRef>>,
    /// The configured address the connection came in on, which names its listener in a runtime.
    listen_key: SocketAddr,
    /// When the connection was accepted (before a TLS handshake): its first idle time counts from here.
    opened: Instant,
    /// How long the connection may go without a request in flight (see `ConnLimits::idle_timeout`).
    idle_timeout: Duration,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` when the last response finished.
    idle_since_ms: AtomicU64,
    /// Raised when the connection should end: on shutdown (by the gateway's `OpenConnections`), or
    /// when its requests-per-connection are used up (HTTP/2).
    stop: StopSignal,
    /// Set when the connection should end after the response in flight (HTTP/1.1).
    draining: AtomicBool,
}

impl ConnState {
    fn new(
        gateway: Arc<Gateway>,
        client: ClientInfo,
        listen_key: SocketAddr,
        idle_timeout: Duration,
    ) -> Arc<ConnState> {
        let runtime = Mutex::new(Arc::new(RuntimeRef::new(gateway.runtime(), &listen_key)));
        Arc::new(ConnState {
            gateway,
            client,
            runtime,
            listen_key,
            opened: Instant::now(),
            idle_timeout,
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            stop: StopSignal::default(),
            draining: AtomicBool::new(false),
        })
    }

    /// The runtime a new request runs on: the cached one, refreshed when a reload published another.
    fn runtime(&self) -> Arc<RuntimeRef> {
        let mut cached = self.runtime.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.runtime.version != self.gateway.version() {
            *cached = Arc::new(RuntimeRef::new(self.gateway.runtime(), &self.listen_key));
        }
        cached.clone()
    }

    fn now_ms(&self) -> u64 {
        // Seconds and milliseconds apart: `as_millis` divides a u128, per request.
        let open_for = self.opened.elapsed();
        open_for.as_secs().saturating_mul(1000).saturating_add(u64::from(open_for.subsec_millis()))
    }

    /// When the connection will have been idle for its `idle_timeout`, or `None` while a request is in
    /// flight.
    fn idle_deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)) + self.idle_timeout)
    }
}

/// Counts a request in flight until its response body is finished or dropped.
struct ConnInFlight(Arc<ConnState>);

impl Drop for ConnInFlight {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight.
    struct Tracked {
        #[pin]
        body: ResponseBody,
        guard: ConnInFlight,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves the connection of `state` in `protocol` until it ends, is idle for too long, or is told to
/// stop. The caller holds `shutdown` until the connection is done, which is what the gateway's drain
/// waits for.
///
/// Written as a function returning an `async` block, as `serve` is: an `async fn` moves its arguments
/// from their slots into locals of its own, and its future keeps room for both (rust-lang/rust#62958):
/// with `serve`, 104 bytes of every connection's task (`-Zprint-type-sizes`).
#[expect(clippy::manual_async_fn, reason = "an `async fn` keeps room for its arguments twice (rust-lang/rust#62958)")]
fn serve_http<'a, I>(
    state: Arc<ConnState>,
    io: I,
    protocol: Protocol,
    spec: &'a ListenerSpec,
    shutdown: &'a watch::Receiver<bool>,
) -> impl Future<Output = ()> + 'a
where
    I: crate::wire::upgrade::Io + 'a,
{
    async move {
        let _open = state.gateway.connections.add(&state, shutdown);
        let service_state = state.clone();
        let service = move |request| respond(service_state.clone(), request);
        let outcome = match protocol {
            Protocol::Http1 => {
                let connection = http1::Connection::new(io);
                let mut connection = pin!(http1::serve(connection, spec.http1, &state.draining, service));
                let outcome = Supervised { connection: connection.as_mut(), state: &state }.await;
                // Nothing in flight (an idle connection, or one whose next head is late or partial): closed
                // at once. Otherwise the response in flight finishes, and the connection ends.
                if outcome.is_some_and(|reason| reason != Ending::Idle && state.in_flight.load(Ordering::Acquire) > 0) {
                    state.draining.store(true, Ordering::Relaxed);
                    drain(connection, spec.limits.drain_timeout).await;
                }
                outcome
            }
            Protocol::Http2 => {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    service(Box::new(request.map(ClientBody::Http2))).map(Ok::<_, Infallible>)
                });
                // Boxed: hyper's HTTP/2 connection is kilobytes, and every connection's task would be
                // sized for it, HTTP/1.1 ones included (which most cleartext connections are).
                let mut connection =
                    crate::boxed::pinned(|| spec.http2_builder.serve_connection(TokioIo::new(io), service));
                let outcome = Supervised { connection: connection.as_mut(), state: &state }.await;
                if outcome.is_some() {
                    // GOAWAY: streams in flight finish; so does a client that never acknowledges it, at
                    // the drain deadline.
                    connection.as_mut().graceful_shutdown();
                    drain(connection.as_mut(), spec.limits.drain_timeout).await;
                }
                outcome
            }
        };
        if let Some(reason) = outcome {
            tracing::debug!(peer = %state.client.peer, reason = reason.as_str(), "client connection closed");
        }
    }
}

/// The connections a gateway has open, each told to end on shutdown through its `StopSignal`: no
/// connection polls the shutdown signal on its wake-ups, and none needs a task of its own to watch it.
#[derive(Default)]
pub(crate) struct OpenConnections(Mutex<Slab<Weak<ConnState>>>);

/// A connection's place in `OpenConnections`, given up when it ends.
struct OpenConnection<'a> {
    open: &'a OpenConnections,
    key: usize,
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Weak<ConnState>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts `state` open until the returned place is dropped; a connection that opens while the
    /// gateway is shutting down is told at once.
    fn add<'a>(&'a self, state: &Arc<ConnState>, shutdown: &watch::Receiver<bool>) -> OpenConnection<'a> {
        let key = self.lock().insert(Arc::downgrade(state));
        // After the insert: a shutdown that began before it is seen here, one that begins after it
        // finds this connection in the set.
        if *shutdown.borrow() {
            state.stop.raise(Ending::Shutdown);
        }
        OpenConnection { open: self, key }
    }

    /// Tells every connection that has had nothing in flight for its idle timeout at `now` to end.
    pub(crate) fn close_idle(&self, now: Instant) {
        for (_, connection) in self.lock().iter() {
            if let Some(state) = connection.upgrade() {
                if state.idle_deadline().is_some_and(|deadline| deadline <= now) {
                    state.stop.raise(Ending::Idle);
                }
            }
        }
    }

    /// Tells every open connection to end (gracefully: requests in flight finish): on shutdown.
    pub(crate) fn shut_down(&self) {
        for (_, connection) in self.lock().iter() {
            if let Some(state) = connection.upgrade() {
                state.stop.raise(Ending::Shutdown);
            }
        }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.open.lock().try_remove(self.key);
    }
}

/// The word to a connection that it should end: why, and the connection task's waker to wake with
/// it. Per wake-up the connection stores its waker and reads the reason (two atomic steps); no
/// channel is made or polled per connection.
#[derive(Default)]
struct StopSignal {
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl StopSignal {
    /// Tells the connection to end, for `reason` (the first reason given stands).
    fn raise(&self, reason: Ending) {
        let _ = self.reason.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Takes `reason` back, if it is the one raised.
    fn withdraw(&self, reason: Ending) {
        let _ = self.reason.compare_exchange(reason as u8, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Why the connection should end, once that was raised.
    fn reason(&self) -> Option<Ending> {
        [Ending::Idle, Ending::Shutdown, Ending::KeepaliveRequests]
            .into_iter()
            .find(|ending| *ending as u8 == self.reason.load(Ordering::Acquire))
    }
}

/// Runs `connection` until it ends (`None`), or until it should end (the reason): its `stop` was
/// raised, on shutdown, at `keepalive_requests`, or by the gateway's sweep of idle connections
/// (`OpenConnections::close_idle`). A connection holds no timer of its own: a timer in every task
/// made every idle connection's task a size class larger.
struct Supervised<'a, C> {
    connection: Pin<&'a mut C>,
    state: &'a ConnState,
}

impl<C: Future> Future for Supervised<'_, C> {
    type Output = Option<Ending>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Ending>> {
        if self.connection.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        let state = self.state;
        state.stop.waker.register(cx.waker());
        match state.stop.reason() {
            None => Poll::Pending,
            // The sweep saw it idle; a request that began since keeps it open.
            Some(Ending::Idle) if state.idle_deadline().is_none_or(|deadline| deadline > Instant::now()) => {
                state.stop.withdraw(Ending::Idle);
                Poll::Pending
            }
            Some(reason) => Poll::Ready(Some(reason)),
        }
    }
}

/// How often the gateway sweeps its connections for idle ones (`OpenConnections::close_idle`), given
/// the shortest idle timeout of its listeners: a fiftieth of it, within `SWEEP_EVERY`. A connection
/// is closed that much after its idle timeout at most.
pub(crate) fn sweep_every(shortest_idle_timeout: Option<Duration>) -> Duration {
    let (least, most) = SWEEP_EVERY;
    shortest_idle_timeout.map_or(most, |timeout| (timeout / 50).clamp(least, most))
}

/// The bounds of the sweep's period.
const SWEEP_EVERY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// Lets a closing connection finish what is in flight, up to the drain deadline. The timer is
/// boxed: held inline, it sized every connection's task for the drain (a timer, 112 bytes).
async fn drain<C: Future>(connection: Pin<&mut C>, deadline: Duration) {
    if crate::boxed::pinned(|| tokio::time::timeout(deadline, connection)).await.is_err() {
        tracing::debug!("connection did not close within drain_timeout; dropped");
    }
}

/// The service of one connection: runs a request through the pipeline and counts it, in flight
/// until its response body is done with, and against its listener's `keepalive_requests` (as the
/// config the request ran on has it).
async fn respond(state: Arc<ConnState>, request: ClientRequest) -> Response<Tracked> {
    state.in_flight.fetch_add(1, Ordering::AcqRel);
    let guard = ConnInFlight(state.clone());
    let version = request.version();
    let handle = state.runtime();
    let mut response = match &handle.listener {
        Some(spec) => pipeline::serve(&handle, spec, &state.client, request).await,
        // The listener was removed by a reload while this connection was open.
        None => crate::error::error_response(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "listener_removed",
            None,
            "this address no longer serves",
            crate::error::ErrorFormat::Text,
        )
        .map(ResponseBody::from),
    };
    // The listener's limit as the running config has it (a removed listener's connection ends).
    let max_requests = handle.listener.as_ref().map_or(0, |spec| spec.limits.keepalive_requests);
    if state.requests.fetch_add(1, Ordering::AcqRel) + 1 >= max_requests {
        if version == Version::HTTP_2 {
            state.stop.raise(Ending::KeepaliveRequests);
        } else {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response.map(|body| Tracked { body, guard })
}

/// Why a connection was ended before its client closed it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// No request in flight for too long (none, or one whose head is late).
    Idle = 1,
    /// The gateway is shutting down.
    Shutdown,
    /// `keepalive_requests` were served (HTTP/2).
    KeepaliveRequests,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Idle => "idle, or the request head late",
            Ending::Shutdown => "shutdown",
            Ending::KeepaliveRequests => "keepalive_requests reached",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_comes_a_fiftieth_of_the_shortest_idle_timeout_apart_within_its_bounds() {
        let secs = Duration::from_secs;
        for (shortest, every) in [
            (None, secs(1)),
            (Some(secs(75)), secs(1)),
            (Some(secs(10)), Duration::from_millis(200)),
            (Some(secs(1)), Duration::from_millis(100)),
            (Some(Duration::ZERO), Duration::from_millis(100)),
        ] {
            assert_eq!(sweep_every(shortest), every, "{shortest:?}");
        }
    }

    #[test]
    fn an_idle_ending_taken_back_leaves_any_other() {
        let stop = StopSignal::default();
        stop.raise(Ending::Idle);
        stop.withdraw(Ending::Idle);
        assert_eq!(stop.reason(), None, "a request came: the connection stays");
        stop.raise(Ending::Shutdown);
        stop.withdraw(Ending::Idle);
        stop.raise(Ending::Idle);
        assert_eq!(stop.reason(), Some(Ending::Shutdown), "the first reason stands");
    }
}

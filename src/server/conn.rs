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
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Serves a freshly accepted TCP connection that arrived on the listener configured as `listen_key`.
pub(crate) async fn serve(gateway: Arc<Gateway>, stream: TcpStream, peer: SocketAddr, listen_key: SocketAddr) {
    let mut shutdown = gateway.shutdown_signal();
    let runtime = gateway.runtime();
    let Some(spec) = runtime.listeners.get(&listen_key).cloned() else {
        return;
    };
    let metrics = runtime.metrics.clone();
    drop(runtime);
    if spec.tls.is_some() {
        // Boxed, so a cleartext connection's task is not sized for the handshake and TLS state it
        // never has (a kilobyte and a half per idle connection).
        crate::boxed::pinned(|| serve_tls(gateway, stream, peer, listen_key, &spec, &metrics, shutdown)).await;
    } else {
        // Cleartext connections may be either protocol (h2 by prior knowledge): counted as one.
        let _open = metrics.client_connection("cleartext");
        let client = ClientInfo::new(peer, false);
        let protocol = if spec.http2 {
            // The first bytes tell. A client that sends none within `client_header_timeout` is
            // closed, as nginx closes a connection without a request; so is it on shutdown.
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout(spec.limits.header_timeout, is_http2_preface(&stream)) => sniffed,
                _ = shutdown.changed() => return,
            };
            match sniffed {
                Ok(true) => Protocol::Http2,
                Ok(false) => Protocol::Http1,
                Err(_) => return,
            }
        } else {
            Protocol::Http1
        };
        serve_http(gateway, stream, protocol, &spec, client, listen_key, shutdown).await;
    }
}

/// The TLS handshake (bounded by `client_header_timeout`, abandoned on shutdown), then the protocol
/// ALPN chose.
async fn serve_tls(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    listen_key: SocketAddr,
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
    match handshake {
        Ok(Ok(tls)) => {
            let protocol = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            let _open = metrics.client_connection(protocol.name());
            let client = ClientInfo::new(peer, true);
            serve_http(gateway, tls, protocol, spec, client, listen_key, shutdown).await;
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

/// Per-connection state shared by the request service and the connection's watchdog. Only this
/// connection's worker touches it, so its reference count and fields never bounce between cores.
struct ConnState {
    gateway: Arc<Gateway>,
    client: ClientInfo,
    /// This connection's reference to the current runtime: requests clone this outer `Arc`, whose
    /// count is the connection's own, instead of the runtime's shared one.
    runtime: Mutex<Arc<RuntimeRef>>,
    /// The configured address the connection came in on, which names its listener in a runtime.
    listen_key: SocketAddr,
    opened: Instant,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` when the last response finished.
    idle_since_ms: AtomicU64,
    /// Woken when the connection should stop taking requests (requests-per-connection reached).
    close: Notify,
    /// Raised by the watchdog when the connection should end.
    stop: StopSignal,
    /// Set when the connection should end after the response in flight (HTTP/1.1).
    draining: AtomicBool,
}

impl ConnState {
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

    /// When the connection will have been idle for `timeout`, or `None` while a request is in flight.
    fn idle_deadline(&self, timeout: std::time::Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.opened + std::time::Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)) + timeout)
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

async fn serve_http<I>(
    gateway: Arc<Gateway>,
    io: I,
    protocol: Protocol,
    spec: &ListenerSpec,
    client: ClientInfo,
    listen_key: SocketAddr,
    shutdown: watch::Receiver<bool>,
) where
    I: crate::wire::upgrade::Io,
{
    let runtime = Mutex::new(Arc::new(RuntimeRef::new(gateway.runtime(), &listen_key)));
    let peer = client.peer;
    let state = Arc::new(ConnState {
        gateway,
        client,
        runtime,
        listen_key,
        opened: Instant::now(),
        requests: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        idle_since_ms: AtomicU64::new(0),
        close: Notify::new(),
        stop: StopSignal::default(),
        draining: AtomicBool::new(false),
    });
    let max_requests = spec.limits.keepalive_requests;
    // The watchdog runs beside the connection so that its timer and signals are not polled on every
    // wake-up of the connection; `shutdown` stays held here until the connection is done, which is
    // what the gateway's drain waits for.
    let watchdog = tokio::spawn(watchdog(state.clone(), spec.limits.idle_timeout(), shutdown.clone()));
    let service_state = state.clone();
    let service = move |request| respond(service_state.clone(), max_requests, request);
    let outcome = match protocol {
        Protocol::Http1 => {
            let mut connection = pin!(http1::serve(io, spec.http1, &state.draining, service));
            let outcome = supervise(connection.as_mut(), &state.stop).await;
            // Nothing in flight (an idle connection, or one whose next head is late or partial): closed
            // at once. Otherwise the response in flight finishes, and the connection ends.
            if outcome.is_some_and(|reason| reason != IDLE && state.in_flight.load(Ordering::Acquire) > 0) {
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
            let outcome = supervise(connection.as_mut(), &state.stop).await;
            if outcome.is_some() {
                // GOAWAY: streams in flight finish; so does a client that never acknowledges it, at
                // the drain deadline.
                connection.as_mut().graceful_shutdown();
                drain(connection.as_mut(), spec.limits.drain_timeout).await;
            }
            outcome
        }
    };
    watchdog.abort();
    if let Some(reason) = outcome {
        tracing::debug!(%peer, reason, "client connection closed");
    }
    drop(shutdown);
}

/// The watchdog's word to its connection: why it should end, and the connection task's waker to wake
/// with it. Per wake-up the connection stores its waker and reads the reason (two atomic steps),
/// where it used to poll a channel; no channel is made per connection.
#[derive(Default)]
struct StopSignal {
    reason: OnceLock<&'static str>,
    waker: AtomicWaker,
}

impl StopSignal {
    /// Tells the connection to end, for `reason` (the first reason given stands).
    fn raise(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.waker.wake();
    }
}

/// Runs `connection` until it ends (`None`), or until the watchdog raises `stop` (its reason).
async fn supervise<C: Future>(mut connection: Pin<&mut C>, stop: &StopSignal) -> Option<&'static str> {
    poll_fn(|cx| {
        if connection.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        stop.waker.register(cx.waker());
        match stop.reason.get() {
            Some(reason) => Poll::Ready(Some(*reason)),
            None => Poll::Pending,
        }
    })
    .await
}

/// Lets a closing connection finish what is in flight, up to the drain deadline.
async fn drain<C: Future>(connection: Pin<&mut C>, deadline: Duration) {
    if tokio::time::timeout(deadline, connection).await.is_err() {
        tracing::debug!("connection did not close within drain_timeout; dropped");
    }
}

/// The service of one connection: runs a request through the pipeline and counts it, in flight
/// until its response body is done with, and against `keepalive_requests`.
async fn respond(state: Arc<ConnState>, max_requests: u64, request: ClientRequest) -> Response<Tracked> {
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
    if state.requests.fetch_add(1, Ordering::AcqRel) + 1 >= max_requests {
        if version == Version::HTTP_2 {
            state.close.notify_one();
        } else {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response.map(|body| Tracked { body, guard })
}

/// The watchdog's reason for a connection without a request in flight for too long.
const IDLE: &str = "idle, or the request head late";

/// Tells the connection to close gracefully, with the reason: on shutdown, when keep-alive requests
/// are used up (HTTP/2), or after `idle` without a request in flight (no request, or one whose head
/// has not fully arrived).
async fn watchdog(state: Arc<ConnState>, idle: Duration, mut shutdown: watch::Receiver<bool>) {
    let reason = loop {
        let idle_check = state.idle_deadline(idle).unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            _ = shutdown.changed() => break "shutdown",
            () = state.close.notified() => break "keepalive_requests reached",
            () = tokio::time::sleep_until(idle_check) => {
                if state.idle_deadline(idle).is_some_and(|deadline| deadline <= Instant::now()) {
                    break IDLE;
                }
            }
        }
    };
    state.stop.raise(reason);
}

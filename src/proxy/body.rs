//! Bodies on their way through the proxy, never collected: the client's request body (streamed, or read
//! in full to be sent again elsewhere), and the backend's response body, forwarded frame by frame with
//! nginx's read timeout between two frames.

use crate::accounting::UpstreamInfo;
use crate::client::ClientBody;
use crate::error::{BoxError, StreamTimedOut};
use crate::upstream::{FailureReport, Lease, OutgoingBody, PoolKey, UpstreamConnection};
use crate::wire::framing::BodyReader;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Where a response body comes from: the request's HTTP/1.1 connection, or its stream on the
/// worker's HTTP/2 connection to the server.
pub(crate) enum Source {
    Http1(Box<UpstreamConnection>),
    Http2(hyper::body::Incoming),
}

impl Source {
    /// The next piece of the body (an HTTP/2 stream's trailers are dropped, as HTTP/1.1's are).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        match self {
            Source::Http1(connection) => connection.poll_body(cx).map(|piece| piece.map(|r| r.map_err(BoxError::from))),
            Source::Http2(stream) => loop {
                match std::task::ready!(Pin::new(&mut *stream).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => return Poll::Ready(Some(Ok(data))),
                        Err(_trailers) => continue,
                    },
                    Some(Err(error)) => return Poll::Ready(Some(Err(Box::new(error)))),
                    None => return Poll::Ready(None),
                }
            },
        }
    }

    /// Whether the body was read to its end.
    pub(crate) fn body_done(&self) -> bool {
        match self {
            Source::Http1(connection) => connection.body_done(),
            Source::Http2(stream) => stream.is_end_stream(),
        }
    }

    /// Bytes left, when known.
    fn body_left(&self) -> Option<u64> {
        match self {
            Source::Http1(connection) => connection.body_left(),
            Source::Http2(stream) => stream.size_hint().exact(),
        }
    }
}

/// The client's request body on its way to the backend: streamed as it arrives, or already read in
/// full (a model router read it to find the `model` field).
pub(crate) struct RequestBody {
    source: Supply,
}

/// Where a request body's bytes come from.
enum Supply {
    /// Arriving from the client; it may still send `remaining` of its limits' `max`. `timer` runs
    /// while the body waits for the client (`waiting`), never while the backend side is not asking.
    Streaming { inner: ClientBody, remaining: u64, limits: BodyLimits, waiting: bool, timer: Option<Pin<Box<Sleep>>> },
    /// Read in full; `None` once sent.
    Buffered(Option<Bytes>),
}

/// What a location allows a request body, taken at config load: its size (`client_max_body_size`)
/// and the longest wait for its next bytes (`[http] client_body_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyLimits {
    /// Most bytes (`u64::MAX`: no limit); more is answered 413.
    pub(crate) max: u64,
    /// Longest wait between two reads; longer is answered 408.
    pub(crate) idle: Duration,
}

impl RequestBody {
    /// Wraps a client body, held to `limits`.
    pub(crate) fn new(inner: ClientBody, limits: BodyLimits) -> RequestBody {
        RequestBody { source: Supply::Streaming { inner, remaining: limits.max, limits, waiting: false, timer: None } }
    }

    /// A body read in full.
    pub(crate) fn buffered(bytes: Bytes) -> RequestBody {
        RequestBody { source: Supply::Buffered((!bytes.is_empty()).then_some(bytes)) }
    }

    /// The whole body, when it was read before forwarding.
    pub(crate) fn whole(&self) -> Option<&[u8]> {
        match &self.source {
            Supply::Buffered(bytes) => bytes.as_deref(),
            Supply::Streaming { .. } => None,
        }
    }

    /// The same body again, for sending the request to another server: possible unless it streams.
    pub(crate) fn replay(&self) -> Option<RequestBody> {
        match &self.source {
            Supply::Buffered(bytes) => Some(RequestBody { source: Supply::Buffered(bytes.clone()) }),
            Supply::Streaming { inner, .. } if inner.is_end_stream() => Some(RequestBody::buffered(Bytes::new())),
            Supply::Streaming { .. } => None,
        }
    }
}

/// The client sent more body than `client_max_body_size`; the proxy answers 413.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub(crate) struct BodyTooLarge(pub u64);

/// The client sent nothing of its body for `client_body_timeout`; the proxy answers 408.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body for {0:?}")]
pub(crate) struct BodyTimedOut(pub Duration);

impl OutgoingBody for RequestBody {
    fn streams(&self) -> bool {
        matches!(&self.source, Supply::Streaming { inner, .. } if !inner.is_end_stream())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.source {
            Supply::Streaming { inner, remaining, limits, waiting, timer } => {
                let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) else {
                    // The wait for the client starts now (one clock read per wait, none per frame).
                    if !*waiting {
                        *waiting = true;
                        let deadline = tokio::time::Instant::now() + limits.idle;
                        match timer {
                            Some(timer) => timer.as_mut().reset(deadline),
                            None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        }
                    }
                    let expired = timer.as_mut().is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                    return match expired {
                        true => Poll::Ready(Some(Err(Box::new(BodyTimedOut(limits.idle))))),
                        false => Poll::Pending,
                    };
                };
                *waiting = false;
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    let length = data.map_or(0, |d| d.len() as u64);
                    match remaining.checked_sub(length) {
                        Some(left) => *remaining = left,
                        None => return Poll::Ready(Some(Err(Box::new(BodyTooLarge(limits.max))))),
                    }
                }
                Poll::Ready(frame)
            }
            Supply::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Supply::Streaming { inner, .. } => inner.is_end_stream(),
            Supply::Buffered(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Supply::Streaming { inner, .. } => inner.size_hint(),
            Supply::Buffered(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Limits on a response body once its head has arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyTimeouts {
    /// Longest gap between two frames.
    pub(crate) idle: Duration,
    /// When the whole exchange must be over, with the configured total for messages.
    pub(crate) total: Option<(tokio::time::Instant, Duration)>,
    /// The response is `text/event-stream`: a timeout ends it with an SSE `event: error` first.
    pub(crate) sse: bool,
}

/// A backend's response body with the idle and total timeouts between frames, read straight from the
/// backend connection it arrives on; the connection goes back to its pool once the body is complete
/// and, dropped early (the client left), is closed instead. The timer is created only when a frame is
/// not immediately ready, so a response that arrives in one piece never touches the timer wheel. A
/// timeout never looks like a clean end: the body ends with an error (the client sees an incomplete
/// response), after a final SSE `event: error` on event streams.
pub(crate) struct UpstreamBody {
    /// `None` once the body is complete or cut.
    connection: Option<Source>,
    /// Where the connection goes back to; `None` for connections that never return (upgrades).
    pool: Option<PoolKey>,
    /// The server slot and in-flight count this response holds until it ends or is dropped.
    lease: Lease,
    timeouts: BodyTimeouts,
    /// Set when a frame is first not ready, for the deadline then; not moved on with every frame after
    /// (`last_frame` is): when it goes off, a frame since puts it off to that frame's deadline, so a
    /// stream re-arms its timer once per idle timeout, not once per token.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the last frame came, once the timer is set.
    last_frame: Option<tokio::time::Instant>,
    /// Set once the SSE error event went out: the body yields once (so the event is flushed) and
    /// then ends with this error.
    failed: Option<(StreamTimedOut, bool)>,
    /// The exchange, for accounting.
    info: Option<UpstreamInfo>,
    /// Where a cut by the server (a broken or closed body, the idle timeout) counts against it.
    failures: Option<FailureReport>,
}

impl UpstreamBody {
    /// The body still to come on `connection` (`None`: nothing is left); `pool` takes the connection
    /// back once it is read in full.
    pub(crate) fn new(connection: Option<Source>, pool: Option<PoolKey>, lease: Lease, timeouts: BodyTimeouts) -> Self {
        UpstreamBody {
            connection,
            pool,
            lease,
            timeouts,
            timer: None,
            last_frame: None,
            failed: None,
            info: None,
            failures: None,
        }
    }

    /// The server cut the body: a failure of its own.
    fn server_failed(&self) {
        if let Some(failures) = &self.failures {
            failures.record();
        }
    }

    /// Records the exchange this body comes from (accounting) and where a cut by its server counts
    /// against the server (`None`: nowhere; a body read in full already cannot be cut).
    pub(crate) fn with_info(mut self, info: UpstreamInfo, failures: Option<FailureReport>) -> UpstreamBody {
        self.info = Some(info);
        self.failures = failures;
        self
    }

    /// The exchange this body comes from, if recorded.
    pub(crate) fn info(&self) -> Option<UpstreamInfo> {
        self.info
    }

    fn release_connection(&mut self) {
        if let (Some(Source::Http1(connection)), Some(pool)) = (self.connection.take(), self.pool) {
            // A body that never waited for the backend is checked in as of its head, one clock read
            // fewer: an earlier time only makes the pool retire the connection sooner, never later.
            let last_used = match (&self.timer, &self.info) {
                (None, Some(info)) => info.head_at,
                _ => tokio::time::Instant::now(),
            };
            pool.checkin(connection, last_used);
        }
    }

    /// When the next frame must have arrived after one at `last`: the idle limit, or the total or
    /// drain one if nearer.
    fn deadline_after(&self, last: tokio::time::Instant) -> tokio::time::Instant {
        let idle_deadline = last + self.timeouts.idle;
        let deadline =
            self.timeouts.total.map_or(idle_deadline, |(total_deadline, _)| total_deadline.min(idle_deadline));
        self.drain_deadline().map_or(deadline, |drain| drain.min(deadline))
    }

    fn drain_deadline(&self) -> Option<tokio::time::Instant> {
        self.lease.drain_watch.as_ref().and_then(|load| load.drain_deadline())
    }

    /// The cut that applies now, if any.
    fn expired(&self) -> Option<StreamTimedOut> {
        let now = tokio::time::Instant::now();
        if self.drain_deadline().is_some_and(|deadline| now >= deadline) {
            return Some(StreamTimedOut::Drained);
        }
        match self.timeouts.total {
            Some((deadline, total)) if now >= deadline => Some(StreamTimedOut::Total(total)),
            _ => None,
        }
    }

    /// Ends the body for `failure`: an SSE error event first on event streams, then an error. A
    /// server that went silent (the idle timeout) failed; a drain or the total deadline is the
    /// gateway's doing.
    fn cut(&mut self, failure: StreamTimedOut) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.connection = None;
        if let StreamTimedOut::Idle(_) = failure {
            self.server_failed();
        }
        if self.timeouts.sse {
            let event = failure.sse_event();
            self.failed = Some((failure, false));
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        Poll::Ready(Some(Err(Box::new(failure))))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.failed.take() {
            Some((failure, false)) => {
                // Pending once, woken at once: the connection flushes the error event meanwhile.
                this.failed = Some((failure, true));
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Some((failure, true)) => return Poll::Ready(Some(Err(Box::new(failure)))),
            None => {}
        }
        if this.lease.drain_watch.is_some() {
            if let Some(StreamTimedOut::Drained) = this.expired() {
                return this.cut(StreamTimedOut::Drained);
            }
        }
        let Some(connection) = &mut this.connection else {
            return Poll::Ready(None);
        };
        let polled = connection.poll_body(cx);
        let done = connection.body_done();
        match polled {
            Poll::Ready(Some(Ok(data))) => {
                if this.timer.is_some() {
                    this.last_frame = Some(tokio::time::Instant::now());
                    // A drain begun since the timer was set may end the stream sooner.
                    let drain = this.drain_deadline();
                    if let (Some(drain), Some(timer)) = (drain, &mut this.timer) {
                        if drain < timer.deadline() {
                            timer.as_mut().reset(drain);
                        }
                    }
                }
                if done {
                    this.release_connection();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                this.release_connection();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.connection = None;
                this.server_failed();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                let mut timer = match this.timer.take() {
                    Some(timer) => timer,
                    None => {
                        let now = tokio::time::Instant::now();
                        this.last_frame = Some(now);
                        Box::pin(tokio::time::sleep_until(this.deadline_after(now)))
                    }
                };
                loop {
                    if timer.as_mut().poll(cx).is_pending() {
                        this.timer = Some(timer);
                        return Poll::Pending;
                    }
                    // Gone off: put off to the last frame's deadline, unless that has passed too.
                    let due = this.last_frame.map_or(timer.deadline(), |last| this.deadline_after(last));
                    if due <= timer.deadline() {
                        break;
                    }
                    timer.as_mut().reset(due);
                }
                this.timer = Some(timer);
                let failure = this.expired().unwrap_or(StreamTimedOut::Idle(this.timeouts.idle));
                this.cut(failure)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.connection.as_ref().is_none_or(Source::body_done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.connection {
            None => SizeHint::with_exact(0),
            Some(connection) => connection.body_left().map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

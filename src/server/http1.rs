//! HTTP/1.1 to a client over one connection (cleartext or TLS): request heads are parsed, each request
//! is handed to the gateway's service, and its response is written frame by frame as it is produced.
//! One request at a time; pipelined requests wait in the read buffer.
//!
//! Written by hand rather than with hyper's server connection, as the upstream side is: hyper's layers
//! (dispatcher, buffered IO, a body channel, the per-request read-ahead that reallocated its read
//! buffer) were about a third of the gateway's cycles per proxied small request (callgrind with its
//! cache model). Here read buffers are reused (and held only while a request arrives), the request
//! body is read straight from the socket when the backend side asks for it, and the head and a ready
//! first body frame go out in one vectored write. The heads are `wire`'s: parsed by
//! `wire::request_head` (httparse, the parser hyper uses), written by `wire::response_head`. HTTP/2
//! stays with hyper.
//!
//! The connection's socket is shared, behind a lock that is never held across an await, between this
//! loop (heads, responses, noticing a client that left) and the request body (read by the proxy).

use crate::client::{BodySource, Http1Body};
use crate::client::{ClientBody, ClientRequest};
use crate::error::BoxError;
use crate::server::gather;
use crate::wire::framing::{BodyReader, Framing};
use crate::wire::request_head::{self, HeadRejection, ParsedRequest};
use crate::wire::response_head::{self, hex, Answering, ResponseFraming};
use crate::wire::upgrade::{Io, UpgradedClient};
use crate::wire::{HeadLimits, Rewound, WriteQueue};
use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::Body;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::ReadBuf;
use tokio::sync::oneshot;

/// Read buffer growth: a fresh buffer holds many small requests before it is reclaimed.
const READ_SIZE: usize = 8 * 1024;
/// Read buffers a worker thread keeps for its connections' next requests (see `spare_buffers`).
const SPARE_BUFFERS: usize = 64;
/// The first read of a connection without a read buffer: most request heads fit.
const FIRST_READ: usize = 4 * 1024;
/// What a closing connection reads and drops of a request body nobody read, so that the client gets
/// its response rather than a reset (nginx's lingering close).
const LINGER_BYTES: usize = 64 * 1024;
/// How long a closing connection waits for those bytes (nginx's `lingering_timeout` is 5 s).
const LINGER_TIME: Duration = Duration::from_secs(2);
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Pieces a response write gathers: the head, up to five chunks that are ready together (each with
/// its size line and CRLF), and the last-chunk marker. Frames are written once the body has nothing
/// more ready: one write for what a compressor emits at its end, not one per frame.
const QUEUED_PIECES: usize = 17;

/// Serves requests on `connection` with `service` until the client closes, a response asks to close
/// (`Connection: close`), `draining` is set after a response, or a request or write fails. A function
/// returning an `async` block, not an `async fn`: the future is part of every connection's task, and
/// an `async fn` keeps room for its arguments twice (see `conn::serve_http`).
#[expect(clippy::manual_async_fn, reason = "an `async fn` keeps room for its arguments twice (rust-lang/rust#62958)")]
pub(crate) fn serve<'a, I, S, F, B>(
    connection: Connection<I>,
    limits: HeadLimits,
    draining: &'a AtomicBool,
    mut service: S,
) -> impl Future<Output = ()> + 'a
where
    I: Io + 'a,
    S: FnMut(ClientRequest) -> F + 'a,
    F: Future<Output = Response<B>> + 'a,
    B: Body<Data = Bytes, Error = BoxError> + Unpin + 'a,
{
    async move {
        loop {
            let after = match poll_fn(|cx| connection.lock().poll_head(cx, limits)).await {
                // Boxed, per request: the service's future, the response and its write queue are all of a
                // request's state, and a connection waiting for its next request holds none of it (one
                // box: two, the service's future apart, counted more instructions a request).
                Ok(Some(head)) => crate::boxed::pinned(|| exchange(&connection, head, draining, &mut service)).await,
                Ok(None) => return,
                Err(rejection) => {
                    let response = rejection.response().map(crate::pipeline::ResponseBody::from);
                    let _ = crate::boxed::pinned(|| write_response(&connection, response, Answering::closing())).await;
                    After::Close
                }
            };
            match after {
                After::NextRequest => {}
                After::Close => {
                    crate::boxed::pinned(|| connection.close()).await;
                    return;
                }
                After::Upgrade(upgrade) => {
                    connection.upgrade(upgrade);
                    return;
                }
                After::End => return,
            }
        }
    }
}

/// What a connection does once a request is done.
enum After {
    /// Reads the next request.
    NextRequest,
    /// Closes gracefully (see `Connection::close`).
    Close,
    /// Hands the socket to the tunnel of a `101 Switching Protocols` answer.
    Upgrade(oneshot::Sender<UpgradedClient>),
    /// Ends at once: the client left, or a write failed.
    End,
}

/// One request on the connection: handed to `service`, its response written as it is produced.
async fn exchange<I, S, F, B>(
    connection: &Connection<I>,
    head: ParsedRequest,
    draining: &AtomicBool,
    service: &mut S,
) -> After
where
    I: Io,
    S: FnMut(ClientRequest) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let ParsedRequest { mut request, inbound, keep_alive, expects_continue, upgrade } = head;
    let has_body = !inbound.is_done();
    // The declared length, as the head's framing already read it (none for a chunked body).
    let declared = match inbound {
        Framing::Length(length) => Some(length),
        _ => None,
    };
    let head_request = request.method() == Method::HEAD;
    let version = request.version();
    {
        let mut shared = connection.lock();
        shared.body = inbound;
        shared.continue_left = (expects_continue && has_body).then_some(0);
    }
    if has_body {
        *request.body_mut() = ClientBody::Http1(Http1Body::new(connection.0.clone(), declared));
    }
    let counted = gather::WorkerInFlight::start();
    let response = {
        let mut in_flight = pin!(service(request));
        poll_fn(|cx| {
            if let Poll::Ready(response) = in_flight.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            match connection.lock().poll_client_gone(cx) {
                true => Poll::Ready(None),
                false => Poll::Pending,
            }
        })
        .await
    };
    let Some(response) = response else {
        tracing::debug!("client closed the connection before the response");
        return After::End;
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // Written with the other responses this worker finds ready in the same turn (see `gather`).
    counted.ready().await;
    let answering = Answering { head_request, version, keep_alive: keep_alive && !draining.load(Ordering::Relaxed) };
    let Ok(kept) = write_response(connection, response, answering).await else {
        return After::End;
    };
    if switching {
        return upgrade.map_or(After::End, After::Upgrade);
    }
    // A request body nobody read in full leaves the connection's framing unknown.
    let body_read = {
        let mut shared = connection.lock();
        shared.release_idle_buffer();
        shared.body.is_done()
    };
    if !kept || !body_read || draining.load(Ordering::Relaxed) {
        After::Close
    } else {
        After::NextRequest
    }
}

/// The buffers of connections between requests. A kept-alive connection waiting for its next request
/// holds no read buffer, response head buffer or header scratch (nginx frees its buffers too): with
/// thousands of idle connections those were most of the memory each one held. Its next request takes
/// buffers from this worker thread's spares, so a busy connection pays a pop and a push per request and
/// per response, not an allocation.
mod spare_buffers {
    use super::{READ_SIZE, SPARE_BUFFERS};
    use crate::wire::request_head::Spans;
    use bytes::BytesMut;
    use std::cell::RefCell;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        static SPANS: RefCell<Vec<Spans>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs `parse` with this worker thread's scratch space for a request head's header positions.
    pub(super) fn with_spans<R>(parse: impl FnOnce(&mut Vec<Spans>) -> R) -> R {
        SPANS.with_borrow_mut(parse)
    }

    /// An empty buffer with room for `READ_SIZE` bytes.
    pub(super) fn take() -> BytesMut {
        SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| BytesMut::with_capacity(READ_SIZE))
    }

    /// Keeps `buffer` for another connection when its memory is not shared any more (the last
    /// request's head may still be referenced) and the thread keeps fewer than `SPARE_BUFFERS`.
    pub(super) fn give_back(mut buffer: BytesMut) {
        buffer.clear();
        if buffer.try_reclaim(READ_SIZE) {
            SPARE.with_borrow_mut(|spare| {
                if spare.len() < SPARE_BUFFERS {
                    spare.push(buffer);
                }
            });
        }
    }
}

/// The socket and what has been read from it, shared by the connection loop and the request body.
struct Shared<I> {
    io: I,
    /// Bytes read and not yet consumed: the next head, or body bytes.
    buf: BytesMut,
    /// What is left of the current request's body.
    body: Framing,
    /// `100 Continue` bytes written so far, while the answer is due (the body is first read).
    continue_left: Option<usize>,
}

/// A client's HTTP/1.1 connection: its socket and what has been read from it.
pub(crate) struct Connection<I>(Arc<Mutex<Shared<I>>>);

impl<I: Io> Connection<I> {
    /// A connection over `io`, before its first request.
    pub(crate) fn new(io: I) -> Connection<I> {
        Connection(Arc::new(Mutex::new(Shared { io, buf: BytesMut::new(), body: Framing::Done, continue_left: None })))
    }

    fn lock(&self) -> MutexGuard<'_, Shared<I>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the connection: the write side is shut (FIN, or TLS close_notify), then what the client
    /// still sends is read and dropped for a while, so that unread bytes do not turn the close into a
    /// reset that could destroy the response before the client read it.
    async fn close(&self) {
        let linger = poll_fn(|cx| {
            let mut shared = self.lock();
            ready!(Pin::new(&mut shared.io).poll_shutdown(cx)).ok();
            let mut dropped = 0;
            loop {
                shared.buf.clear();
                match ready!(shared.poll_fill(cx)) {
                    Ok(read) if read > 0 && dropped < LINGER_BYTES => dropped += read,
                    _ => return Poll::Ready(()),
                }
            }
        });
        let _ = tokio::time::timeout(LINGER_TIME, linger).await;
    }

    /// Hands the connection to the tunnel waiting for it; the bytes after the head go first.
    fn upgrade(self, upgrade: oneshot::Sender<UpgradedClient>) {
        let Ok(shared) = Arc::try_unwrap(self.0) else {
            tracing::debug!("upgraded connection still shared with a request body; closed");
            return;
        };
        let shared = shared.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        let io: Box<dyn Io> = Box::new(shared.io);
        let _ = upgrade.send(Rewound::new(shared.buf.freeze(), io));
    }
}

impl<I: Io> Shared<I> {
    /// Between requests: gives an empty read buffer back to the thread's spares (`spare_buffers`).
    fn release_idle_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            spare_buffers::give_back(std::mem::take(&mut self.buf));
        }
    }

    /// Reads until a request head is parsed; `None` when the client closed between requests.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        limits: HeadLimits,
    ) -> Poll<Result<Option<ParsedRequest>, HeadRejection>> {
        loop {
            if !self.buf.is_empty() {
                let buf = &mut self.buf;
                if let Some(head) = spare_buffers::with_spans(|spans| request_head::parse(buf, spans, limits))? {
                    return Poll::Ready(Ok(Some(head)));
                }
                if self.buf.len() >= limits.max_head {
                    let line_complete = self.buf.windows(2).any(|w| w == b"\r\n");
                    return Poll::Ready(Err(if line_complete {
                        HeadRejection::HeadTooLarge
                    } else {
                        HeadRejection::UriTooLong
                    }));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
            }
        }
    }

    /// Whether the client went away while its request is served: reads ahead into the buffer's room
    /// (body bytes and a pipelined request wait there for their reader) to notice the connection
    /// closing. A full buffer stops the watch rather than grow.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        while self.buf.capacity() > self.buf.len() {
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Ready(Ok(0) | Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }

    /// The next piece of the request body; `None` at its end. A client that asked for
    /// `100 Continue` gets it first.
    fn poll_request_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(written) = self.continue_left {
            // The client waits for this before it sends the body.
            let mut written = written;
            while written < CONTINUE.len() {
                match ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[written..])) {
                    Ok(0) => return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => written += n,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
                self.continue_left = Some(written);
            }
            self.continue_left = None;
        }
        self.poll_body(cx)
    }
}

impl<I: Io> BodyReader for Shared<I> {
    const PEER: &'static str = "client";

    fn framing_and_buffer(&mut self) -> (&mut Framing, &mut BytesMut) {
        (&mut self.body, &mut self.buf)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            // A connection waiting for its next request holds no buffer: the first bytes land on
            // the stack, and only bytes that arrived take a buffer.
            let mut first = [MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut first = ReadBuf::uninit(&mut first);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut first))?;
            if !first.filled().is_empty() {
                self.buf = spare_buffers::take();
                self.buf.extend_from_slice(first.filled());
            }
            return Poll::Ready(Ok(first.filled().len()));
        }
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 8 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

impl<I: Io> BodySource for Mutex<Shared<I>> {
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).poll_request_body(cx)
    }
}

/// Writes `response`: its head, then its body frame by frame as it comes, each written at once.
/// `Ok(true)` when the connection may serve another request; `Err` when the response could not be
/// completed (the client then sees it cut off, never a clean end).
async fn write_response<I: Io, B>(
    connection: &Connection<I>,
    response: Response<B>,
    answering: Answering,
) -> Result<bool, ()>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    // The head and the chunks' size lines are written into a spare buffer, given back at the end.
    let mut head_buf = spare_buffers::take();
    let (parts, mut body) = response.into_parts();
    let (out, keep_alive) = response_head::write(&mut head_buf, &parts, &body, answering);
    let mut queue = WriteQueue::<QUEUED_PIECES>::default();
    queue.push(head_buf.split().freeze());
    let mut out = out;
    let mut ended = out == ResponseFraming::None;
    let result = poll_fn(|cx| {
        let mut shared = connection.lock();
        // Set when the body has answered `Pending` in this poll: it has the task's waker, and asking it
        // again after a write only repeats its whole chain down to the backend's socket (a third of the
        // body's polls a streamed token, callgrind).
        let mut body_waits = false;
        loop {
            // A frame at hand goes out with what waits (the head and the first frame in one write).
            if !ended && !body_waits && queue.room() >= 3 {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            if queue_data(&mut queue, &mut head_buf, &mut out, data).is_err() {
                                return Poll::Ready(Err(()));
                            }
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        tracing::debug!(%error, "response body failed; connection closed");
                        return Poll::Ready(Err(()));
                    }
                    Poll::Ready(None) => {
                        ended = true;
                        match out {
                            ResponseFraming::Chunked => queue.push(Bytes::from_static(b"0\r\n\r\n")),
                            ResponseFraming::Length(left) if left > 0 => return Poll::Ready(Err(())),
                            _ => {}
                        }
                        continue;
                    }
                    Poll::Pending => body_waits = true,
                }
            }
            if queue.is_empty() {
                if ended {
                    return Poll::Ready(Ok(()));
                }
                // Waiting for the body: a client that leaves meanwhile ends the response (and the
                // backend's request with it).
                return match shared.poll_client_gone(cx) {
                    true => Poll::Ready(Err(())),
                    false => Poll::Pending,
                };
            }
            match ready!(queue.poll_write(&mut shared.io, cx)) {
                Ok(()) => {}
                Err(_) => return Poll::Ready(Err(())),
            }
        }
    })
    .await;
    // The body (and what it holds: the request's place, its accounting) ends only after its bytes went.
    drop(body);
    drop(queue);
    spare_buffers::give_back(head_buf);
    result.map(|()| keep_alive && out != ResponseFraming::UntilClose)
}

/// Queues one data frame with its framing.
fn queue_data(
    queue: &mut WriteQueue<QUEUED_PIECES>,
    scratch: &mut BytesMut,
    out: &mut ResponseFraming,
    data: Bytes,
) -> Result<(), ()> {
    if data.is_empty() {
        return Ok(());
    }
    match out {
        ResponseFraming::None => {}
        ResponseFraming::Chunked => {
            // The size line shares the connection's scratch buffer: no allocation per chunk.
            scratch.extend_from_slice(hex(data.len(), &mut [0; 16]));
            scratch.extend_from_slice(b"\r\n");
            queue.push(scratch.split().freeze());
            queue.push(data);
            queue.push(Bytes::from_static(b"\r\n"));
        }
        ResponseFraming::Length(left) => match left.checked_sub(data.len() as u64) {
            Some(rest) => {
                *left = rest;
                queue.push(data);
            }
            None => {
                tracing::debug!("response body longer than its Content-Length; connection closed");
                return Err(());
            }
        },
        ResponseFraming::UntilClose => queue.push(data),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;
    use http_body::Frame;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::AsyncReadExt;
    use tokio::sync::mpsc;

    /// A streamed body whose frames come from a channel, counting how often it is asked for one.
    struct Counted {
        frames: mpsc::UnboundedReceiver<Bytes>,
        polls: Arc<AtomicUsize>,
    }

    impl Body for Counted {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.frames.poll_recv(cx).map(|frame| frame.map(|data| Ok(Frame::data(data))))
        }
    }

    #[tokio::test]
    async fn a_streamed_frame_is_written_at_once_and_the_body_asked_once_more_until_it_wakes_the_task() {
        let (gateway_side, mut client) = tokio::io::duplex(64 * 1024);
        let connection = Connection::new(gateway_side);
        let (send, frames) = mpsc::unbounded_channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let body = Counted { frames, polls: polls.clone() };
        let response = Response::builder().header("content-type", "text/event-stream").body(body).unwrap();
        let answering = Answering { head_request: false, version: Version::HTTP_11, keep_alive: true };
        let writing = tokio::spawn(async move { write_response(&connection, response, answering).await });

        let mut received = Vec::new();
        let mut read_until = async |client: &mut tokio::io::DuplexStream, end: &[u8]| {
            while !received.ends_with(end) {
                let mut buf = [0; 1024];
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection closed early");
                received.extend_from_slice(&buf[..n]);
            }
        };
        // The head waits for nothing: the body, asked once, has no frame yet.
        read_until(&mut client, b"\r\n\r\n").await;
        for token in 1..=3usize {
            send.send(Bytes::from(format!("data: {token}\n\n"))).unwrap();
            read_until(&mut client, format!("data: {token}\n\n\r\n").as_bytes()).await;
            tokio::task::yield_now().await;
            // Each frame: one poll that yields it and one that finds none (before the write; none after).
            assert_eq!(polls.load(Ordering::Relaxed), 1 + 2 * token, "polls after token {token}");
        }
        drop(send);
        read_until(&mut client, b"0\r\n\r\n").await;
        assert_eq!(writing.await.unwrap(), Ok(true));
        let text = String::from_utf8(received).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.ends_with("9\r\ndata: 3\n\n\r\n0\r\n\r\n"), "{text}");
    }

    #[test]
    fn spare_read_buffers_are_reused_unless_their_memory_is_still_shared() {
        let mut used = spare_buffers::take();
        used.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let memory = used.as_ptr();
        spare_buffers::give_back(used);
        let again = spare_buffers::take();
        assert_eq!((again.as_ptr(), again.len()), (memory, 0));
        assert!(again.capacity() >= READ_SIZE);

        // A request head split off the buffer still lives: the buffer's memory is not handed out again.
        let mut shared = again;
        shared.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = shared.split_to(8).freeze();
        spare_buffers::give_back(shared);
        assert_ne!(spare_buffers::take().as_ptr(), head.as_ptr());
    }
}

//! HTTP/1.1 to a client over one connection (cleartext or TLS): request heads are parsed, each request
//! is handed to the gateway's service, and its response is written frame by frame as it is produced.
//! One request at a time; pipelined requests wait in the read buffer.
//!
//! Written by hand rather than with hyper's server connection, as the upstream side is: hyper's layers
//! (dispatcher, buffered IO, a body channel, the per-request read-ahead that reallocated its read
//! buffer) were about a third of the gateway's cycles per proxied small request (callgrind with its
//! cache model). Here read buffers are reused (and held only while a request arrives), the request
//! body is read straight from the socket when the backend side asks for it, and the head and a ready
//! first body frame go out in one vectored write. Parsing is httparse's, the parser hyper uses. HTTP/2 stays with hyper.
//!
//! The connection's socket is shared, behind a lock that is never held across an await, between this
//! loop (heads, responses, noticing a client that left) and the request body (read by the proxy).

use crate::client::{ClientBody, ClientRequest};
use crate::error::error_response;
use crate::error::BoxError;
use crate::server::gather;
use crate::wire::chunked::ChunkedDecoder;
use crate::wire::framing::{BodyReader, Framing};
use crate::wire::message::{self, Declared, FramingError, HeadFacts};
use crate::wire::request_body::{BodySource, Http1Body};
use crate::wire::upgrade::{Io, PendingUpgrade, Upgraded};
use crate::wire::{parse_content_length, HeadLimits, Rewound, WriteQueue, HEADER_SLOTS};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};
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

/// Serves requests on `io` with `service` until the client closes, a response asks to close
/// (`Connection: close`), `draining` is set after a response, or a request or write fails.
pub(crate) async fn serve<I, S, F, B>(io: I, limits: HeadLimits, draining: &AtomicBool, mut service: S)
where
    I: Io,
    S: FnMut(ClientRequest) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let shared = Arc::new(Mutex::new(Shared {
        io,
        buf: BytesMut::new(),
        body: Framing::Done,
        continue_left: None,
        spans: Vec::new(),
    }));
    let connection = Connection(shared);
    let mut head_buf = BytesMut::new();
    loop {
        let head = match poll_fn(|cx| connection.lock().poll_head(cx, limits)).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(rejection) => {
                let response = rejection.response();
                let _ =
                    crate::boxed::pinned(|| write_response(&connection, &mut head_buf, response, Answering::closing()))
                        .await;
                connection.close().await;
                return;
            }
        };
        let Head { mut request, inbound, keep_alive, expects_continue, upgrade } = head;
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
        // Boxed, per request: the service future is kilobytes, and a connection waiting for its next
        // request holds none of it (an allocation this size comes from the allocator's thread cache).
        let mut in_flight = crate::boxed::pinned(|| service(request));
        let response = poll_fn(|cx| {
            if let Poll::Ready(response) = in_flight.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            match connection.lock().poll_client_gone(cx) {
                true => Poll::Ready(None),
                false => Poll::Pending,
            }
        })
        .await;
        drop(in_flight);
        let Some(response) = response else {
            tracing::debug!("client closed the connection before the response");
            return;
        };
        // Written with the other responses this worker finds ready in the same turn (see `gather`).
        counted.ready().await;
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let answering =
            Answering { head_request, version, keep_alive: keep_alive && !draining.load(Ordering::Relaxed) };
        // Boxed, per response: its write queue is most of this loop's state, which every connection
        // would otherwise hold while it waits for its next request.
        let Ok(kept) = crate::boxed::pinned(|| write_response(&connection, &mut head_buf, response, answering)).await
        else {
            return;
        };
        if switching {
            if let Some(upgrade) = upgrade {
                connection.upgrade(upgrade);
            }
            return;
        }
        // A request body nobody read in full leaves the connection's framing unknown.
        let body_read = {
            let mut shared = connection.lock();
            shared.release_idle_buffer();
            shared.body.is_done()
        };
        if !kept || !body_read || draining.load(Ordering::Relaxed) {
            connection.close().await;
            return;
        }
    }
}

/// The read buffers of connections between requests. A kept-alive connection waiting for its next
/// request holds no read buffer (nginx frees its own too): with thousands of idle connections that is
/// half of the memory each one holds. Its next request takes a buffer from this worker thread's spares,
/// so a busy connection pays a pop and a push per request, not an allocation.
mod spare_buffers {
    use super::{READ_SIZE, SPARE_BUFFERS};
    use bytes::BytesMut;
    use std::cell::RefCell;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
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
    /// Scratch space for parsing heads.
    spans: Vec<Spans>,
}

struct Connection<I>(Arc<Mutex<Shared<I>>>);

impl<I: Io> Connection<I> {
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
    fn upgrade(self, upgrade: oneshot::Sender<Upgraded>) {
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
    fn poll_head(&mut self, cx: &mut Context<'_>, limits: HeadLimits) -> Poll<Result<Option<Head>, HeadRejection>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf, &mut self.spans, limits)? {
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

/// A parsed request head and what it says about its body and the connection.
struct Head {
    request: ClientRequest,
    inbound: Framing,
    keep_alive: bool,
    expects_continue: bool,
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

/// A request head the connection cannot serve; answered, then the connection closes.
#[derive(Debug, PartialEq)]
enum HeadRejection {
    /// Malformed: 400.
    Bad(&'static str),
    /// Valid, but asks for what the gateway does not do (a transfer coding other than chunked): 501.
    NotImplemented(&'static str),
    /// The request line does not fit `max_head`: 414.
    UriTooLong,
    /// The head does not fit `max_head`, or has too many fields: 431.
    HeadTooLarge,
}

impl HeadRejection {
    fn response(&self) -> Response<crate::pipeline::ResponseBody> {
        let (status, code, message) = match self {
            HeadRejection::Bad(what) => (StatusCode::BAD_REQUEST, "bad_request", *what),
            HeadRejection::NotImplemented(what) => (StatusCode::NOT_IMPLEMENTED, "not_implemented", *what),
            HeadRejection::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", "request line too long"),
            HeadRejection::HeadTooLarge => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "header_too_large", "request header too large")
            }
        };
        error_response(status, "invalid_request_error", code, message, crate::error::ErrorFormat::Text)
            .map(crate::pipeline::ResponseBody::from)
    }
}

/// Where a header's name and value sit in the head.
type Spans = ((usize, usize), (usize, usize));

/// Parses a request head at the start of `buf` and removes it; `None` when it is not complete yet.
/// Header values and the target share the head's memory instead of being copied; `spans` is scratch
/// space the connection keeps (an array for the most headers allowed would be kilobytes to zero).
fn parse_head(buf: &mut BytesMut, spans: &mut Vec<Spans>, limits: HeadLimits) -> Result<Option<Head>, HeadRejection> {
    // Uninitialized: zeroing the slots would cost more than parsing a small head.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; HEADER_SLOTS];
    let slots = &mut slots[..limits.max_headers.clamp(1, HEADER_SLOTS)];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, slots) {
        Ok(httparse::Status::Complete(length)) if length <= limits.max_head => length,
        Ok(httparse::Status::Complete(_)) => return Err(HeadRejection::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadRejection::HeadTooLarge),
        Err(_) => return Err(HeadRejection::Bad("malformed request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadRejection::Bad("malformed method"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where the target and each header sit in the head, so they can be slices of it once split off.
    let base = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        (start, start + part.len())
    };
    let target = span(parsed.path.unwrap_or_default().as_bytes());
    let count = parsed.headers.len();
    spans.clear();
    spans.extend(parsed.headers.iter().map(|field| (span(field.name.as_bytes()), span(field.value))));
    if !message::lines_end_with_crlf(&buf[..length], spans.iter().map(|((name_start, _), _)| *name_start)) {
        return Err(HeadRejection::Bad("bare LF in the request head (lines end with CRLF)"));
    }
    let head = buf.split_to(length).freeze();

    let uri =
        Uri::from_maybe_shared(head.slice(target.0..target.1)).map_err(|_| HeadRejection::Bad("malformed target"))?;
    // Room for the `X-Request-Id` the gateway adds: growing the map later reallocates it.
    let mut headers = HeaderMap::with_capacity(count + 1);
    let mut facts = HeadFacts::default();
    let mut expects_continue = false;
    let mut hosts = 0;
    for &((name_start, name_end), (value_start, value_end)) in spans.iter() {
        let name =
            HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| HeadRejection::Bad("malformed header"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| HeadRejection::Bad("malformed header value"))?;
        if name == header::CONTENT_LENGTH {
            facts.content_length(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            facts.transfer_encoding(value.as_bytes());
        } else if name == header::CONNECTION {
            facts.connection(value.as_bytes(), |_| {});
        } else if name == header::EXPECT {
            expects_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::HOST {
            hosts += 1;
        }
        headers.append(name, value);
    }
    // RFC 9112 §3.2, as nginx: an HTTP/1.1 request names its host, once.
    match hosts {
        0 if version == Version::HTTP_11 => return Err(HeadRejection::Bad("HTTP/1.1 request without Host header")),
        0 | 1 => {}
        _ => return Err(HeadRejection::Bad("duplicate Host header")),
    }
    // RFC 9112 §3.2.2: an absolute-form target names the host; the Host header is replaced by it.
    if let Some(authority) = uri.authority() {
        let host = match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        };
        let host = HeaderValue::try_from(host).map_err(|_| HeadRejection::Bad("malformed target"))?;
        headers.insert(header::HOST, host);
    }
    // RFC 9112 §6.3: a request body is chunked or has a length; chunked wins over a length, which is
    // then not passed on; other codings are not implemented (501, as nginx).
    let inbound = match facts.declared() {
        Ok(Declared::Chunked) => {
            headers.remove(header::CONTENT_LENGTH);
            Framing::Chunked(ChunkedDecoder::default())
        }
        Ok(Declared::Length(length)) => Framing::declared(length),
        Ok(Declared::Nothing) => Framing::Done,
        Err(FramingError::UnsupportedCoding) => {
            return Err(HeadRejection::NotImplemented(FramingError::UnsupportedCoding.message()))
        }
        Err(error) => return Err(HeadRejection::Bad(error.message())),
    };
    let keep_alive = facts.persistent(version == Version::HTTP_11) && !facts.both_framings();
    let upgrade_asked = facts.upgrade;
    let upgrade = (version == Version::HTTP_11 && upgrade_asked && headers.contains_key(header::UPGRADE)).then(|| {
        let (sender, receiver) = oneshot::channel();
        (sender, PendingUpgrade::new(receiver))
    });
    let mut request = Box::new(Request::new(ClientBody::Empty));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let upgrade = upgrade.map(|(sender, pending)| {
        request.extensions_mut().insert(pending);
        sender
    });
    Ok(Some(Head {
        request,
        inbound,
        keep_alive,
        expects_continue: expects_continue && version == Version::HTTP_11,
        upgrade,
    }))
}

/// What the request says about writing its response.
#[derive(Clone, Copy)]
struct Answering {
    head_request: bool,
    version: Version,
    keep_alive: bool,
}

impl Answering {
    /// For an answer to a request that could not be read.
    fn closing() -> Answering {
        Answering { head_request: false, version: Version::HTTP_11, keep_alive: false }
    }
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyOut {
    /// Not sent (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and no known length).
    UntilClose,
}

/// Writes `response`: its head, then its body frame by frame as it comes, each written at once.
/// `Ok(true)` when the connection may serve another request; `Err` when the response could not be
/// completed (the client then sees it cut off, never a clean end).
async fn write_response<I: Io, B>(
    connection: &Connection<I>,
    head_buf: &mut BytesMut,
    response: Response<B>,
    answering: Answering,
) -> Result<bool, ()>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let (out, keep_alive) = encode_head(head_buf, &parts, &body, answering);
    let mut queue = WriteQueue::<QUEUED_PIECES>::default();
    queue.push(head_buf.split().freeze());
    let mut out = out;
    let mut ended = out == BodyOut::None;
    let result = poll_fn(|cx| {
        let mut shared = connection.lock();
        loop {
            // A frame at hand goes out with what waits (the head and the first frame in one write).
            if !ended && queue.room() >= 3 {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            if queue_data(&mut queue, head_buf, &mut out, data).is_err() {
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
                            BodyOut::Chunked => queue.push(Bytes::from_static(b"0\r\n\r\n")),
                            BodyOut::Length(left) if left > 0 => return Poll::Ready(Err(())),
                            _ => {}
                        }
                        continue;
                    }
                    Poll::Pending => {}
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
    result.map(|()| keep_alive && out != BodyOut::UntilClose)
}

/// Queues one data frame with its framing.
fn queue_data(
    queue: &mut WriteQueue<QUEUED_PIECES>,
    scratch: &mut BytesMut,
    out: &mut BodyOut,
    data: Bytes,
) -> Result<(), ()> {
    if data.is_empty() {
        return Ok(());
    }
    match out {
        BodyOut::None => {}
        BodyOut::Chunked => {
            // The size line shares the connection's scratch buffer: no allocation per chunk.
            scratch.extend_from_slice(hex(data.len(), &mut [0; 16]));
            scratch.extend_from_slice(b"\r\n");
            queue.push(scratch.split().freeze());
            queue.push(data);
            queue.push(Bytes::from_static(b"\r\n"));
        }
        BodyOut::Length(left) => match left.checked_sub(data.len() as u64) {
            Some(rest) => {
                *left = rest;
                queue.push(data);
            }
            None => {
                tracing::debug!("response body longer than its Content-Length; connection closed");
                return Err(());
            }
        },
        BodyOut::UntilClose => queue.push(data),
    }
    Ok(())
}

/// Writes the status line and headers into `buf`; framing and connection headers are the
/// connection's own. Returns the body framing and whether the connection is kept alive.
fn encode_head<B: Body>(
    buf: &mut BytesMut,
    parts: &http::response::Parts,
    body: &B,
    answering: Answering,
) -> (BodyOut, bool) {
    let status = parts.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    buf.reserve(256);
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.extend_from_slice(b"\r\n");
    // One pass over the headers writes them and notes the framing ones, which are the
    // connection's own (looking those up first hashed their names again, per response).
    let (mut length_value, mut close_asked, mut has_date) = (None, false, false);
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            length_value = length_value.or(Some(value));
            continue;
        }
        if *name == header::CONNECTION {
            close_asked |= message::has_token(value.as_bytes(), b"close");
            if !switching {
                continue;
            }
        }
        if *name == header::TRANSFER_ENCODING {
            continue;
        }
        has_date |= *name == header::DATE;
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    let declared = length_value.and_then(|v| parse_content_length(v.as_bytes()).ok());
    let no_body = answering.head_request || status.is_informational() || matches!(status.as_u16(), 204 | 304);
    let mut keep_alive = answering.keep_alive && !close_asked;
    let (out, length_header) = if no_body {
        let length = declared.or_else(|| (answering.head_request).then(|| body.size_hint().exact()).flatten());
        (BodyOut::None, length.filter(|_| !status.is_informational() && status != StatusCode::NO_CONTENT))
    } else if let Some(length) = declared.or_else(|| body.size_hint().exact()) {
        (BodyOut::Length(length), Some(length))
    } else if answering.version == Version::HTTP_11 {
        (BodyOut::Chunked, None)
    } else {
        keep_alive = false;
        (BodyOut::UntilClose, None)
    };
    if let Some(length) = length_header {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(itoa(length, &mut [0; 20]));
        buf.extend_from_slice(b"\r\n");
    }
    if out == BodyOut::Chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !switching {
        match (keep_alive, answering.version) {
            (false, _) => buf.extend_from_slice(b"connection: close\r\n"),
            (true, Version::HTTP_10) => buf.extend_from_slice(b"connection: keep-alive\r\n"),
            (true, _) => {}
        }
    }
    if !has_date {
        buf.extend_from_slice(b"date: ");
        DATE.with(|date| buf.extend_from_slice(date.borrow_mut().now()));
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    (out, keep_alive)
}

/// `value` in lowercase hexadecimal, without allocating.
fn hex(mut value: usize, digits: &mut [u8; 16]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[value % 16];
        value /= 16;
        if value == 0 {
            return &digits[start..];
        }
    }
}

/// `value` in decimal, without allocating.
fn itoa(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

thread_local! {
    /// The `Date` value, formatted once a second per worker thread.
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, text: [0; 29] }) };
}

/// An HTTP date (29 bytes, RFC 9110 §5.6.7) and the Unix second it was made for.
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.text.copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_head: 1024, max_headers: 8 };

    fn parse(text: &str) -> Result<Option<Head>, HeadRejection> {
        parse_head(&mut BytesMut::from(text), &mut Vec::new(), LIMITS)
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

    #[test]
    fn reads_method_target_headers_and_framing() {
        let mut buf = BytesMut::from(
            "POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhelloGET",
        );
        let head = parse_head(&mut buf, &mut Vec::new(), LIMITS).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri().path(), "/v1/chat");
        assert_eq!(head.request.uri().query(), Some("x=1"));
        assert_eq!(head.request.headers().get_all("x-a").iter().count(), 2);
        assert!(matches!(head.inbound, Framing::Length(5)));
        assert!(head.keep_alive && !head.expects_continue && head.upgrade.is_none());
        assert_eq!(&buf[..], b"helloGET", "the body and what follows stay in the buffer");
    }

    #[test]
    fn incomplete_heads_wait_and_broken_ones_are_refused() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").err(),
            Some(HeadRejection::Bad("conflicting Content-Length headers"))
        );
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), Err(HeadRejection::Bad(_))));
        assert!(matches!(parse("GET / HTTP/1.1\nHost: a\r\n\r\n"), Err(HeadRejection::Bad(_))), "bare LF");
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(HeadRejection::NotImplemented(_))
        ));
        assert!(matches!(parse("GET /\x01 HTTP/1.1\r\n\r\n"), Err(HeadRejection::Bad(_))));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "x: 1\r\n".repeat(9));
        assert_eq!(parse(&many).err(), Some(HeadRejection::HeadTooLarge));
        let large = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(1100));
        assert_eq!(parse(&large).err(), Some(HeadRejection::HeadTooLarge));
        assert_eq!(
            parse("GET / HTTP/1.1\r\n\r\n").err(),
            Some(HeadRejection::Bad("HTTP/1.1 request without Host header"))
        );
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").err(),
            Some(HeadRejection::Bad("duplicate Host header"))
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().is_some(), "HTTP/1.0 may leave the host out");
    }

    #[test]
    fn chunked_wins_over_a_length_and_closes_the_connection() {
        let head = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(head.inbound, Framing::Chunked(_)));
        assert!(!head.request.headers().contains_key("content-length"));
        assert!(!head.keep_alive);
    }

    #[test]
    fn keep_alive_expect_and_upgrade_follow_the_head() {
        let head = |text: &str| parse(text).unwrap().unwrap();
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        let chunked_1_0 = "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!head(chunked_1_0).keep_alive, "RFC 9112 §6.1: HTTP/1.0 with a coding closes");
        let absolute = head("GET http://models.example:8000/v1/models?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
        assert_eq!(absolute.request.headers()["host"], "models.example:8000", "RFC 9112 §3.2.2");
        assert_eq!(absolute.request.uri().path_and_query().unwrap().as_str(), "/v1/models?x=1");
        assert!(
            head("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").expects_continue
        );
        let upgrade = head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(upgrade.upgrade.is_some() && upgrade.request.extensions().get::<PendingUpgrade>().is_some());
    }

    #[test]
    fn response_heads_declare_their_framing() {
        let encode = |response: Response<crate::pipeline::ResponseBody>, answering: Answering| {
            let mut buf = BytesMut::new();
            let (parts, body) = response.into_parts();
            let (out, keep) = encode_head(&mut buf, &parts, &body, answering);
            (String::from_utf8(buf.to_vec()).unwrap(), out, keep)
        };
        let get = Answering { head_request: false, version: Version::HTTP_11, keep_alive: true };
        let (text, out, keep) = encode(Response::new(crate::pipeline::ResponseBody::full("hello")), get);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n")
                && text.contains("content-length: 5\r\n")
                && text.contains("date: ")
        );
        assert!(out == BodyOut::Length(5) && keep);
        let mut closing = Response::new(crate::pipeline::ResponseBody::Empty);
        closing.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        let (text, _, keep) = encode(closing, get);
        assert!(text.contains("connection: close\r\n") && !keep);
        let old = Answering { version: Version::HTTP_10, ..get };
        let (text, _, _) = encode(Response::new(crate::pipeline::ResponseBody::Empty), old);
        assert!(text.contains("connection: keep-alive\r\n") && text.contains("content-length: 0\r\n"));
        let head = Answering { head_request: true, ..get };
        let (text, out, _) = encode(Response::new(crate::pipeline::ResponseBody::full("hello")), head);
        assert!(text.contains("content-length: 5\r\n") && out == BodyOut::None);
        // A declared length is the connection's to write, once; the first of several counts.
        let mut declared = Response::new(crate::pipeline::ResponseBody::Empty);
        declared.headers_mut().append(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        declared.headers_mut().append(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let (text, out, _) = encode(declared, get);
        assert_eq!((text.matches("content-length").count(), out), (1, BodyOut::Length(7)), "{text}");
        // A switch of protocols keeps its `Connection: upgrade`.
        let mut switching = Response::new(crate::pipeline::ResponseBody::Empty);
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        switching.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        switching.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let (text, _, keep) = encode(switching, get);
        assert!(text.contains("connection: upgrade\r\n") && text.contains("upgrade: websocket\r\n") && keep, "{text}");
    }

    #[test]
    fn fuzz_request_heads_parse_or_are_refused_without_panic() {
        let seeds = crate::fuzzing::seeds(
            "request_head",
            &[
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
                b"GET http://m.test:8000/p?q HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                b"PUT / HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
            ],
        );
        arbtest::arbtest(|u| {
            let input = crate::fuzzing::mutated(u, &seeds)?;
            let limits = HeadLimits { max_head: u.int_in_range(16..=4096)?, max_headers: u.int_in_range(1..=64)? };
            let mut buf = BytesMut::from(&input[..]);
            match parse_head(&mut buf, &mut Vec::new(), limits) {
                Ok(Some(head)) => {
                    assert!(buf.len() < input.len(), "a parsed head is consumed");
                    let consumed = &input[..input.len() - buf.len()];
                    assert!(!crate::fuzzing::has_bare_lf(consumed), "{:?}", String::from_utf8_lossy(consumed));
                    let headers = head.request.headers();
                    if matches!(head.inbound, Framing::Chunked(_)) {
                        assert!(!headers.contains_key(header::CONTENT_LENGTH), "chunked drops the length");
                    }
                    if head.request.version() == Version::HTTP_11 {
                        assert_eq!(headers.get_all(header::HOST).iter().count(), 1, "one Host");
                    }
                }
                Ok(None) => assert_eq!(buf.len(), input.len(), "nothing is consumed before a whole head"),
                Err(rejection) => {
                    let status = rejection.response().status();
                    assert!(status.is_client_error() || status == StatusCode::NOT_IMPLEMENTED, "{status}");
                }
            }
            Ok(())
        });
    }

    #[test]
    fn itoa_and_hex_write_numbers() {
        for value in [0u64, 7, 10, 255, 12345, u64::MAX] {
            assert_eq!(itoa(value, &mut [0; 20]), value.to_string().as_bytes());
            let small = value as usize;
            assert_eq!(hex(small, &mut [0; 16]), format!("{small:x}").as_bytes());
        }
    }
}

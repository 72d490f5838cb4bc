//! HTTP/1.1 to a backend over one connection, driven by the request's own task: the request head and
//! body go out, the response head is parsed, and the response body is read straight from the socket
//! whenever the client side asks for more.
//!
//! Written by hand rather than with hyper's client connection: hyper puts a dispatcher between the
//! request and the socket (a request channel, a response oneshot, a body channel and their wakers),
//! which measured at a third of the gateway's user-space CPU per proxied request. Here nothing sits in
//! between, and the head is written from the borrowed request, so sending it again after a stale
//! keep-alive connection needs no copy. Parsing is httparse's, the parser hyper uses.

use super::connector::TimedStream;
use crate::client::ClientBody;
use crate::error::BoxError;
use crate::wire::chunked::ChunkedDecoder;
use crate::wire::framing::{BodyReader, Framing};
use crate::wire::message::{self, Declared, HeadFacts};
use crate::wire::{Rewound, WriteQueue};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{response, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Largest response head accepted, 64 KiB (nginx's `proxy_buffer_size` is 4-8 KB; model servers send
/// small heads, so a larger one is a broken backend): answered 502. Offsets into it fit a `u16`.
const MAX_RESPONSE_HEAD: usize = u16::MAX as usize;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// How much the read buffer grows by when it is full.
const READ_SIZE: usize = 16 * 1024;

/// A request as it goes to the backend: its head, and the headers the proxy adds to it.
#[derive(Clone, Copy)]
pub(crate) struct UpstreamRequest<'a> {
    /// Method, target and the request's own headers (its body goes separately).
    pub(crate) head: &'a Request<ClientBody>,
    /// Written after the request's own headers, which lose any of these names.
    pub(crate) forwarding: &'a [(&'static HeaderName, HeaderValue)],
    /// Response headers dropped as the head is parsed (lowercase names), besides the
    /// connection-level ones: never made into header map entries only to be removed.
    pub(crate) hidden: &'a [&'static str],
}

/// How long the backend may take to begin its answer: nginx's `proxy_read_timeout` up to the response
/// head, armed once the request has been sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadWait {
    /// When the request started going out: the timer runs from here for a request whose body was at
    /// hand (none, or read in full), which takes no time to send. A time read already, as clock
    /// reads cost.
    pub(crate) from: Instant,
    /// The timeout itself.
    pub(crate) timeout: Duration,
}

/// What a request says about reading its response.
#[derive(Clone, Copy)]
struct ResponseRules<'a> {
    /// A response to `HEAD` has no body, whatever its head declares.
    head_request: bool,
    /// Headers dropped from the response head (see `UpstreamRequest::hidden`).
    hidden: &'a [&'static str],
}

/// One keep-alive HTTP/1.1 connection to a backend server.
pub(crate) struct UpstreamConnection {
    io: TimedStream,
    /// Bytes read from the backend and not yet handed on.
    read_buf: BytesMut,
    /// Where request heads are written; its memory is reused once the previous head is sent.
    head_buf: BytesMut,
    /// What is left of the current response body.
    body: Framing,
    /// Whether another request may follow once the current response is read in full.
    keep_alive: bool,
    /// Whether it served a request before (a failure on it may be a stale keep-alive connection).
    pub(crate) reused: bool,
    /// The response head's deadline (`HeadWait`), kept from one request to the next and moved
    /// forward: tokio then only notes the later deadline, without touching its timer wheel, where a
    /// timer per request is inserted and removed under a lock.
    head_timer: Option<Pin<Box<Sleep>>>,
}

impl BodyReader for UpstreamConnection {
    const PEER: &'static str = "backend";

    fn framing_and_buffer(&mut self) -> (&mut Framing, &mut BytesMut) {
        (&mut self.body, &mut self.read_buf)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_SIZE / 4 {
            self.read_buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }
}

/// What an exchange needs of a request body besides its frames: whether they still come from the
/// client. The proxy's request body (with its limits and its copy kept for another try) is one;
/// this module names no type of the layer that calls it.
pub(crate) trait OutgoingBody: Body<Data = Bytes, Error = BoxError> + Unpin {
    /// Whether bytes of it are still to come from the client: sending it then takes the client's
    /// time, and the wait for the response starts only once it is sent.
    fn streams(&self) -> bool;
}

/// Why an exchange produced no response head.
pub(crate) enum ExchangeError<B> {
    /// The connection took no byte of the request: it may be sent elsewhere, with its body unread.
    NotSent(B, io::Error),
    /// The request went out and the connection closed before any byte of an answer.
    Closed(io::Error),
    /// The client's request body failed (larger than allowed, or the client went away).
    Body(BoxError),
    /// The backend failed, or answered something that is not HTTP/1.1.
    Backend(io::Error),
    /// No response head within `HeadWait::timeout` of the request being sent.
    TimedOut,
}

impl UpstreamConnection {
    /// A connection that has served nothing yet.
    pub(crate) fn new(io: TimedStream) -> UpstreamConnection {
        UpstreamConnection {
            io,
            read_buf: BytesMut::new(),
            head_buf: BytesMut::new(),
            body: Framing::Done,
            keep_alive: true,
            reused: false,
            head_timer: None,
        }
    }

    /// Sends `request` with `body` and waits for the response head (1xx answers other than 101 are
    /// skipped), up to `wait` once the request is sent. The body is sent as it arrives from the
    /// client while the answer is awaited. A backend that answers before taking the whole body gets
    /// no more of it, and the connection is not reused.
    pub(crate) async fn exchange<B: OutgoingBody>(
        &mut self,
        request: UpstreamRequest<'_>,
        body: B,
        wait: HeadWait,
    ) -> Result<response::Parts, ExchangeError<B>> {
        let framing = BodyOut::for_request(request.head.method(), &body);
        self.write_head(request, framing);
        let head = self.head_buf.split().freeze();
        let streams = body.streams();
        let mut outgoing = Outgoing {
            pending: WriteQueue::default(),
            body: Some(body),
            framing,
            pulled: false,
            wait: Some(wait),
            streams,
        };
        outgoing.pending.push(head);
        let rules = ResponseRules { head_request: request.head.method() == Method::HEAD, hidden: request.hidden };
        poll_fn(|cx| self.poll_exchange(cx, &mut outgoing, rules)).await
    }

    /// Whether the response body has been read in full.
    pub(crate) fn body_done(&self) -> bool {
        self.body.is_done()
    }

    /// The body bytes still to come, when the response declared them.
    pub(crate) fn body_left(&self) -> Option<u64> {
        match self.body {
            Framing::Done => Some(0),
            Framing::Length(left) => Some(left),
            Framing::Chunked(_) | Framing::UntilClose | Framing::Broken => None,
        }
    }

    /// Whether the exchange left the connection fit for another: the response was read in full and
    /// the backend allows keep-alive. Flags only; `is_reusable` also looks at the socket.
    pub(crate) fn may_serve_again(&self) -> bool {
        self.keep_alive && self.body_done() && self.read_buf.is_empty()
    }

    /// Whether the connection can take another request now: `may_serve_again`, and the backend has
    /// neither closed the connection nor sent anything unasked while it was idle.
    pub(crate) fn is_reusable(&mut self) -> bool {
        // Readiness is cached by the runtime: an idle socket answers Pending without a system call.
        self.may_serve_again() && matches!(self.poll_fill(&mut Context::from_waker(Waker::noop())), Poll::Pending)
    }

    /// The connection after a `101 Switching Protocols`: the backend's side of a tunnel.
    pub(crate) fn into_upgraded(self) -> Upgraded {
        Rewound::new(self.read_buf.freeze(), self.io)
    }

    /// Writes the request line and headers; framing headers are the connection's own.
    fn write_head(&mut self, request: UpstreamRequest<'_>, framing: BodyOut) {
        let UpstreamRequest { head, forwarding, .. } = request;
        let buf = &mut self.head_buf;
        buf.reserve(512);
        buf.extend_from_slice(head.method().as_str().as_bytes());
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(head.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        let own = head.headers().iter().filter(|(name, _)| {
            *name != header::CONTENT_LENGTH
                && *name != header::TRANSFER_ENCODING
                && !forwarding.iter().any(|(added, _)| *added == *name)
        });
        for (name, value) in own.chain(forwarding.iter().map(|(name, value)| (*name, value))) {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        match framing {
            BodyOut::Empty => {}
            BodyOut::Length(length) => {
                buf.extend_from_slice(b"content-length: ");
                buf.extend_from_slice(length.to_string().as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
            BodyOut::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        buf.extend_from_slice(b"\r\n");
    }

    fn poll_exchange<B: OutgoingBody>(
        &mut self,
        cx: &mut Context<'_>,
        outgoing: &mut Outgoing<B>,
        rules: ResponseRules<'_>,
    ) -> Poll<Result<response::Parts, ExchangeError<B>>> {
        if !outgoing.is_sent() {
            match outgoing.poll_send(&mut self.io, cx) {
                Ok(()) => {}
                Err(SendError::Body(e)) => {
                    self.keep_alive = false;
                    return Poll::Ready(Err(ExchangeError::Body(e)));
                }
                Err(SendError::Io(e)) => {
                    self.keep_alive = false;
                    if !outgoing.wrote_any() && !outgoing.pulled {
                        if let Some(body) = outgoing.body.take() {
                            return Poll::Ready(Err(ExchangeError::NotSent(body, e)));
                        }
                    }
                    if e.kind() == io::ErrorKind::TimedOut {
                        return Poll::Ready(Err(ExchangeError::Backend(e)));
                    }
                    // The backend may have answered before closing (refusing an upload): its answer,
                    // or the reason it has none, is what the read side finds.
                    outgoing.abandon();
                }
            }
        }
        let head = match self.poll_head(cx, rules) {
            Poll::Ready(head) => head,
            Poll::Pending if outgoing.is_sent() && self.poll_head_deadline(cx, outgoing).is_ready() => {
                // A late answer would arrive on it: not reused.
                self.keep_alive = false;
                return Poll::Ready(Err(ExchangeError::TimedOut));
            }
            Poll::Pending => return Poll::Pending,
        };
        if head.is_ok() && !outgoing.is_sent() {
            // An answer before the whole request: the rest is not sent, so the framing is broken.
            self.keep_alive = false;
            outgoing.abandon();
        }
        Poll::Ready(head)
    }

    /// The response head's deadline, armed on the first call of an exchange (its request is sent):
    /// `HeadWait::from` plus the timeout for a body that was at hand, now plus the timeout for one
    /// that streamed.
    fn poll_head_deadline<B: OutgoingBody>(&mut self, cx: &mut Context<'_>, outgoing: &mut Outgoing<B>) -> Poll<()> {
        if let Some(wait) = outgoing.wait.take() {
            let deadline = if outgoing.streams { Instant::now() } else { wait.from } + wait.timeout;
            match &mut self.head_timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.head_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match &mut self.head_timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Reads until a final response head is parsed, and sets up reading its body.
    fn poll_head<B>(
        &mut self,
        cx: &mut Context<'_>,
        rules: ResponseRules<'_>,
    ) -> Poll<Result<response::Parts, ExchangeError<B>>> {
        loop {
            if !self.read_buf.is_empty() {
                match parse_head(&mut self.read_buf, rules) {
                    Ok(Some(Head { parts, framing, keep_alive })) => {
                        if parts.status.is_informational() && parts.status != StatusCode::SWITCHING_PROTOCOLS {
                            continue;
                        }
                        self.keep_alive &= keep_alive;
                        self.body = framing;
                        return Poll::Ready(Ok(parts));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.keep_alive = false;
                        return Poll::Ready(Err(ExchangeError::Backend(e)));
                    }
                }
            }
            let nothing_yet = self.read_buf.is_empty();
            match ready!(self.poll_fill(cx)) {
                Ok(0) if nothing_yet => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the backend closed the connection");
                    return Poll::Ready(Err(ExchangeError::Closed(e)));
                }
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the backend closed the connection mid-head");
                    return Poll::Ready(Err(ExchangeError::Backend(e)));
                }
                Ok(_) => {}
                Err(e) if nothing_yet && is_reset(&e) => return Poll::Ready(Err(ExchangeError::Closed(e))),
                Err(e) => return Poll::Ready(Err(ExchangeError::Backend(e))),
            }
        }
    }
}

fn is_reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyOut {
    /// No body.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, for a body of unknown length.
    Chunked,
}

impl BodyOut {
    /// A known length is declared (an empty body only for methods that carry one, as hyper does);
    /// anything else is chunked.
    fn for_request(method: &Method, body: &impl Body) -> BodyOut {
        match body.size_hint().exact() {
            Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => BodyOut::Empty,
            Some(length) => BodyOut::Length(length),
            None => BodyOut::Chunked,
        }
    }
}

enum SendError {
    Body(BoxError),
    Io(io::Error),
}

/// The request on its way out: bytes waiting for the socket and the body still to read.
struct Outgoing<B> {
    /// The head, one chunk with its framing, and the last-chunk marker.
    pending: WriteQueue<5>,
    /// `None` once read to its end (dropping it tells the proxy the request is sent).
    body: Option<B>,
    framing: BodyOut,
    /// Whether a body frame was taken from `body` (it can then no longer be sent elsewhere).
    pulled: bool,
    /// The response head's wait, until its deadline is armed.
    wait: Option<HeadWait>,
    /// Whether the body streams from the client (the wait then starts when it is sent).
    streams: bool,
}

impl<B: OutgoingBody> Outgoing<B> {
    fn is_sent(&self) -> bool {
        self.body.is_none() && self.pending.is_empty()
    }

    fn wrote_any(&self) -> bool {
        self.pending.wrote_any()
    }

    /// Stops sending: the body is dropped and nothing more is written.
    fn abandon(&mut self) {
        self.body = None;
        self.pending = WriteQueue::default();
    }

    /// Writes what it can; `Ok` when the request is sent or the socket or body makes it wait.
    fn poll_send(&mut self, io: &mut TimedStream, cx: &mut Context<'_>) -> Result<(), SendError> {
        loop {
            // The head and the first body frame go out in one write when the frame is at hand.
            if self.pending.room() >= 4 {
                if let Some(body) = &mut self.body {
                    match Pin::new(body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            self.pulled = true;
                            if let Ok(data) = frame.into_data() {
                                self.queue_data(data)?;
                            }
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => return Err(SendError::Body(e)),
                        Poll::Ready(None) => {
                            self.finish_body()?;
                            continue;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if self.pending.is_empty() {
                return Ok(());
            }
            match self.pending.poll_write(io, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(SendError::Io(e)),
                Poll::Pending => return Ok(()),
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), SendError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            BodyOut::Chunked => {
                self.pending.push(Bytes::from(format!("{:X}\r\n", data.len())));
                self.pending.push(data);
                self.pending.push(Bytes::from_static(b"\r\n"));
            }
            BodyOut::Length(left) => match left.checked_sub(data.len() as u64) {
                Some(rest) => {
                    *left = rest;
                    self.pending.push(data);
                }
                None => return Err(SendError::Body("the request body is longer than its Content-Length".into())),
            },
            BodyOut::Empty => return Err(SendError::Body("a request body without a declared length".into())),
        }
        Ok(())
    }

    fn finish_body(&mut self) -> Result<(), SendError> {
        self.body = None;
        match self.framing {
            BodyOut::Chunked => self.pending.push(Bytes::from_static(b"0\r\n\r\n")),
            BodyOut::Length(left) if left > 0 => {
                return Err(SendError::Body("the request body is shorter than its Content-Length".into()))
            }
            BodyOut::Length(_) | BodyOut::Empty => {}
        }
        Ok(())
    }
}

/// A parsed response head and what it says about the body and the connection.
struct Head {
    parts: response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head at the start of `buf` and removes it; `None` when it is not complete yet.
/// Header values share the head's memory instead of being copied.
fn parse_head(buf: &mut BytesMut, rules: ResponseRules<'_>) -> io::Result<Option<Head>> {
    // Uninitialized: zeroing 128 headers cost more than parsing a small head.
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let length =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(length)) if length <= MAX_RESPONSE_HEAD => length,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
            Ok(_) => return Err(invalid_response(format!("head larger than {MAX_RESPONSE_HEAD} bytes"))),
            Err(e) => return Err(invalid_response(e.to_string())),
        };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|e| invalid_response(e.to_string()))?;
    let http11 = parsed.version == Some(1);
    // Where each header sits in the head (under 64 KiB, so u16 offsets), so the values can be slices
    // of the head once it is split off the buffer.
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u16;
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    for (span, header) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (offset(header.name.as_bytes()), offset(header.value));
        *span = (name, name + header.name.len() as u16, value, value + header.value.len() as u16);
    }
    let count = parsed.headers.len();
    if !message::lines_end_with_crlf(&buf[..length], spans[..count].iter().map(|span| usize::from(span.0))) {
        return Err(invalid_response("bare LF in the head (lines end with CRLF)".into()));
    }
    let head = buf.split_to(length).freeze();

    let mut map = HeaderMap::with_capacity(count);
    let mut facts = HeadFacts::default();
    // Other headers the `Connection` header names, to drop too (rare: allocated only then).
    let mut named = Vec::new();
    for &(name_start, name_end, value_start, value_end) in &spans[..count] {
        let raw_name = &head[usize::from(name_start)..usize::from(name_end)];
        if rules.hidden.iter().any(|hidden| raw_name.eq_ignore_ascii_case(hidden.as_bytes())) {
            continue;
        }
        let name = HeaderName::from_bytes(raw_name).map_err(|e| invalid_response(e.to_string()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(usize::from(value_start)..usize::from(value_end)))
            .map_err(|e| invalid_response(e.to_string()))?;
        // Connection-level fields (RFC 9110 §7.6.1) are this connection's business: used here and
        // not handed on. `Upgrade` stays on a `101`, for the proxy to pass on with the switch.
        if name == header::CONTENT_LENGTH {
            facts.content_length(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            facts.transfer_encoding(value.as_bytes());
            continue;
        } else if name == header::CONNECTION {
            facts.connection(value.as_bytes(), |token| named.extend(HeaderName::from_bytes(token).ok()));
            continue;
        } else if name == header::TE
            || name == header::TRAILER
            || name == "keep-alive"
            || name == "proxy-connection"
            || (name == header::UPGRADE && status != StatusCode::SWITCHING_PROTOCOLS)
        {
            continue;
        }
        map.append(name, value);
    }
    for name in named {
        map.remove(name);
    }
    let no_body = rules.head_request || status.is_informational() || matches!(status.as_u16(), 204 | 304);
    // RFC 9112 §6.3: a coding overrides a length, which is not passed on; only `chunked` is read
    // (another coding could not be named to the client once the header is dropped).
    let declared = match facts.declared() {
        Ok(declared) => declared,
        // A body that is not there needs no framing (a HEAD answer may declare anything).
        Err(_) if no_body => Declared::Nothing,
        Err(error) => return Err(invalid_response(error.message().into())),
    };
    if facts.has_transfer_encoding() {
        map.remove(header::CONTENT_LENGTH);
    }
    let framing = match declared {
        _ if no_body => Framing::Done,
        Declared::Chunked => Framing::Chunked(ChunkedDecoder::default()),
        Declared::Length(length) => Framing::declared(length),
        Declared::Nothing => Framing::UntilClose,
    };
    let keep_alive = facts.persistent(http11)
        && !matches!(framing, Framing::UntilClose)
        && status != StatusCode::SWITCHING_PROTOCOLS;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
    *response.headers_mut() = map;
    Ok(Some(Head { parts: response.into_parts().0, framing, keep_alive }))
}

fn invalid_response(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("invalid response from the backend: {what}"))
}

/// The backend side of a tunnel after `101`: bytes the backend sent along with its head come first.
pub(crate) type Upgraded = Rewound<TimedStream>;

#[cfg(test)]
mod tests {
    use super::*;

    const GET: ResponseRules = ResponseRules { head_request: false, hidden: &[] };

    fn parse(text: &str) -> io::Result<Option<Head>> {
        parse_head(&mut BytesMut::from(text), GET)
    }

    #[test]
    fn reads_status_headers_and_framing() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello");
        let head = parse_head(&mut buf, GET).unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
        assert!(matches!(head.framing, Framing::Length(5)));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");
    }

    #[test]
    fn an_incomplete_head_waits_and_an_endless_one_fails() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse(&endless).is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse(&huge).is_err(), "a complete head over the limit is refused too");
    }

    #[test]
    fn chooses_body_framing_as_rfc_9112_says() {
        let framing = |text: &str| parse(text).unwrap().unwrap();
        let chunked = framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n");
        assert!(matches!(chunked.framing, Framing::Chunked(_)));
        assert!(!chunked.parts.headers.contains_key("content-length"), "TE overrides CL");
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").is_err(), "only chunked");
        assert!(!framing("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n").keep_alive);
        assert!(parse("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n").is_err(), "bare LF");
        let until_close = framing("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(until_close.framing, Framing::UntilClose) && !until_close.keep_alive);
        assert!(matches!(framing("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Done));
        assert!(matches!(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").framing, Framing::Done));
        let head_request = ResponseRules { head_request: true, ..GET };
        let head = parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), head_request);
        assert!(matches!(head.unwrap().unwrap().framing, Framing::Done), "a HEAD answer has no body");
    }

    #[test]
    fn connection_level_headers_are_consumed() {
        let head = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nx-hop: 1\r\n\
             Transfer-Encoding: chunked\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nx-end: 2\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = head.parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-end"]);
        assert!(head.keep_alive);
        let switch = parse("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        let names: Vec<String> = switch.unwrap().unwrap().parts.headers.keys().map(|n| n.to_string()).collect();
        assert_eq!(names, ["upgrade"], "a switch keeps Upgrade for the proxy to pass on");
    }

    #[test]
    fn hidden_headers_are_dropped_whatever_their_case() {
        let rules = ResponseRules { head_request: false, hidden: &["server", "x-powered-by"] };
        let text = "HTTP/1.1 200 OK\r\nServer: uvicorn\r\nX-Powered-By: php\r\nX-Served: 1\r\nSERVER: b\r\n\r\n";
        let head = parse_head(&mut BytesMut::from(text), rules).unwrap().unwrap();
        let names: Vec<&str> = head.parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-served"]);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keep = |text: &str| parse(text).unwrap().unwrap().keep_alive;
        assert!(!keep("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keep("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"));
    }

    #[test]
    fn fuzz_response_heads_parse_or_are_refused_without_panic() {
        let seeds = crate::fuzzing::seeds(
            "response_head",
            &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\n",
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\nServer: uvicorn\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            ],
        );
        arbtest::arbtest(|u| {
            let input = crate::fuzzing::mutated(u, &seeds)?;
            let rules = ResponseRules { head_request: u.arbitrary()?, hidden: &["server"] };
            let mut buf = BytesMut::from(&input[..]);
            match parse_head(&mut buf, rules) {
                Ok(Some(head)) => {
                    assert!(buf.len() < input.len(), "a parsed head is consumed");
                    let consumed = &input[..input.len() - buf.len()];
                    assert!(!crate::fuzzing::has_bare_lf(consumed), "{:?}", String::from_utf8_lossy(consumed));
                    let headers = &head.parts.headers;
                    for hop in ["connection", "transfer-encoding", "keep-alive", "server"] {
                        assert!(!headers.contains_key(hop), "{hop} is the connection's own");
                    }
                    if matches!(head.framing, Framing::UntilClose) {
                        assert!(!head.keep_alive, "a body delimited by close ends the connection");
                    }
                }
                Ok(None) => assert_eq!(buf.len(), input.len(), "nothing is consumed before a whole head"),
                Err(error) => assert!(error.to_string().starts_with("invalid response from the backend")),
            }
            Ok(())
        });
    }

    #[test]
    fn rejects_broken_heads() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").unwrap().unwrap().framing,
            Framing::Length(7)
        ));
    }
}

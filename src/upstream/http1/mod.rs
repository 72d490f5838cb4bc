//! HTTP/1.1 to a backend over one connection, driven by the request's own task: the request head and
//! body go out, the response head is parsed, and the response body is read straight from the socket
//! whenever the client side asks for more.
//!
//! Written by hand rather than with hyper's client connection: hyper puts a dispatcher between the
//! request and the socket (a request channel, a response oneshot, a body channel and their wakers),
//! which measured at a third of the gateway's user-space CPU per proxied request. Here nothing sits in
//! between, and the head is written from the borrowed request, so sending it again after a stale
//! keep-alive connection needs no copy. The heads are `wire`'s: the request's written by
//! `wire::request_head`, the response's parsed by `wire::response_head` (with httparse, the parser
//! hyper uses).

use super::connector::BackendIo;
use crate::client::ClientBody;
use crate::error::BoxError;
use crate::wire::framing::{BodyReader, Framing};
use crate::wire::request_head::{self, RequestFraming};
use crate::wire::response_head::{self, ParsedResponse, ResponseRules};
use crate::wire::{Rewound, WriteQueue};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{response, Method, Request, StatusCode};
use http_body::Body;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

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

/// One keep-alive HTTP/1.1 connection to a backend server.
pub(crate) struct UpstreamConnection {
    io: BackendIo,
    /// Bytes read from the backend and not yet handed on.
    read_buf: BytesMut,
    /// Where request heads are written; its memory is reused once the previous head is sent.
    head_buf: BytesMut,
    /// Where response heads are copied to, for their headers to share; its memory is reused once the
    /// previous response's headers are gone.
    response_heads: BytesMut,
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
        make_room(&mut self.read_buf);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }
}

/// Makes room in `buf` for the next read. An emptied buffer is read into from its start again once
/// every frame split off it has gone: a stream then keeps to the buffer's first page, where its
/// tokens otherwise walked through all 16 kB of it (each page resident for the rest of the stream,
/// and kept by the pooled connection).
fn make_room(buf: &mut BytesMut) {
    if buf.is_empty() {
        let _ = buf.try_reclaim(READ_SIZE);
    }
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
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
    pub(crate) fn new(io: BackendIo) -> UpstreamConnection {
        UpstreamConnection {
            io,
            read_buf: BytesMut::new(),
            response_heads: BytesMut::new(),
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
        let framing = RequestFraming::for_request(request.head.method(), &body);
        request_head::write(&mut self.head_buf, request.head, request.forwarding, framing);
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
    pub(crate) fn into_upgraded(self) -> UpgradedBackend {
        Rewound::new(self.read_buf.freeze(), self.io)
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
                match response_head::parse(&mut self.read_buf, &mut self.response_heads, rules) {
                    Ok(Some(ParsedResponse { parts, framing, keep_alive })) => {
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
    framing: RequestFraming,
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
    fn poll_send(&mut self, io: &mut BackendIo, cx: &mut Context<'_>) -> Result<(), SendError> {
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
            RequestFraming::Chunked => {
                self.pending.push(Bytes::from(format!("{:X}\r\n", data.len())));
                self.pending.push(data);
                self.pending.push(Bytes::from_static(b"\r\n"));
            }
            RequestFraming::Length(left) => match left.checked_sub(data.len() as u64) {
                Some(rest) => {
                    *left = rest;
                    self.pending.push(data);
                }
                None => return Err(SendError::Body("the request body is longer than its Content-Length".into())),
            },
            RequestFraming::Empty => return Err(SendError::Body("a request body without a declared length".into())),
        }
        Ok(())
    }

    fn finish_body(&mut self) -> Result<(), SendError> {
        self.body = None;
        match self.framing {
            RequestFraming::Chunked => self.pending.push(Bytes::from_static(b"0\r\n\r\n")),
            RequestFraming::Length(left) if left > 0 => {
                return Err(SendError::Body("the request body is shorter than its Content-Length".into()))
            }
            RequestFraming::Length(_) | RequestFraming::Empty => {}
        }
        Ok(())
    }
}

/// The backend side of a tunnel after `101`: bytes the backend sent along with its head come first.
pub(crate) type UpgradedBackend = Rewound<BackendIo>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_read_buffer_is_read_into_from_its_start_once_its_frames_are_gone() {
        let mut buf = BytesMut::new();
        make_room(&mut buf);
        let start = buf.as_ptr();
        buf.extend_from_slice(b"data: 1\n\n");
        let frame = buf.split().freeze();
        // A frame still on its way holds the buffer: the next read goes after it.
        make_room(&mut buf);
        assert_ne!(buf.as_ptr(), start);
        drop(frame);
        make_room(&mut buf);
        assert_eq!((buf.as_ptr(), buf.capacity() >= READ_SIZE), (start, true));
    }
}

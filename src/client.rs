//! What a client brought: the facts of its connection, made once per connection, and its request
//! with the body, whichever protocol carried it (an HTTP/1.1 body is read from its connection as the
//! proxy polls it, through a small trait that names no connection type). A leaf the whole request
//! path shares: policy, accounting and the proxy read it, the server makes it.

use crate::error::BoxError;
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Who sent the request, as the forwarding headers need it; made once per connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    /// The client's socket address.
    pub(crate) peer: SocketAddr,
    /// The client's IP as a header value, for `X-Real-IP` and `X-Forwarded-For`.
    pub(crate) ip: HeaderValue,
    /// Whether the client connection is TLS.
    pub(crate) https: bool,
}

impl ClientInfo {
    /// Facts about a client connection.
    pub(crate) fn new(peer: SocketAddr, https: bool) -> ClientInfo {
        let ip = HeaderValue::try_from(peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientInfo { peer, ip, https }
    }
}

/// A client's request as the pipeline takes it: boxed once as it arrives, since it passes through
/// several async layers by value and each held two or three copies of the 272-byte `Request`
/// (memcpy was an eighth of the instructions per proxied request, by callgrind).
pub(crate) type ClientRequest = Box<http::Request<ClientBody>>;

/// A client's request body, whichever protocol brought it: read from the HTTP/1.1 connection as it is
/// polled, or hyper's stream of an HTTP/2 request.
pub(crate) enum ClientBody {
    /// No body.
    Empty,
    /// From an HTTP/1.1 connection (`server::http1`).
    Http1(Http1Body),
    /// From an HTTP/2 stream.
    Http2(hyper::body::Incoming),
}

impl ClientBody {
    /// The body's length as its request declared it (`Content-Length`, or none at all), known
    /// before any of it is read; `None` for a chunked body. Taken from the body, which parsed the
    /// header once, rather than from the header map again.
    pub(crate) fn declared_length(&self) -> Option<u64> {
        self.size_hint().exact()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Http1(body) => Pin::new(body).poll_frame(cx),
            ClientBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Http1(body) => body.is_end_stream(),
            ClientBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Http1(body) => body.size_hint(),
            ClientBody::Http2(body) => body.size_hint(),
        }
    }
}

/// The request body's view of the connection, whatever its stream type.
pub(crate) trait BodySource: Send + Sync {
    /// The next piece of the body, `None` at its end.
    fn poll_body(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>>;
}

/// A request body read from the client connection as it is polled.
pub(crate) struct Http1Body {
    source: Arc<dyn BodySource>,
    /// Bytes still to come when the length was declared.
    left: Option<u64>,
    done: bool,
}

impl Http1Body {
    /// The body of the request being read from `source`, `declared` bytes long if its head said so.
    pub(crate) fn new(source: Arc<dyn BodySource>, declared: Option<u64>) -> Http1Body {
        Http1Body { source, left: declared, done: false }
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(self.source.poll_body(cx)) {
            Some(Ok(data)) => {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

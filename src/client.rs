//! What a client brought: the facts of its connection, made once per connection, and its request
//! with the body, whichever protocol carried it. A leaf the whole request path shares: policy,
//! accounting and the proxy read it, the server makes it.

use crate::error::BoxError;
use crate::wire::request_body::Http1Body;
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Who sent the request, as the forwarding headers need it; made once per connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    /// The client's socket address.
    pub peer: SocketAddr,
    /// The client's IP as a header value, for `X-Real-IP` and `X-Forwarded-For`.
    pub ip: HeaderValue,
    /// Whether the client connection is TLS.
    pub https: bool,
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

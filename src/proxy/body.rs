//! Bodies on their way through the proxy, never collected: the client's request body tells the proxy
//! when it has been sent (so the read timeout starts then), and the backend's response body is
//! forwarded frame by frame with nginx's read timeout between two frames.

use crate::body::BoxError;
use crate::upstream::{Permit, PoolKey, UpstreamConnection};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// The client's request body on its way to the backend. Dropping it (hyper does so once the body is
/// written, or when it gives up) drops `sent`, which wakes the proxy to arm the read timeout.
pub struct RequestBody {
    inner: Incoming,
    _sent: Option<oneshot::Sender<()>>,
}

impl RequestBody {
    /// Wraps a client body; the returned receiver completes once the body is done with. `None` when the
    /// body is empty, so the read timeout can start at once.
    pub fn new(inner: Incoming) -> (RequestBody, Option<oneshot::Receiver<()>>) {
        if inner.is_end_stream() {
            return (RequestBody { inner, _sent: None }, None);
        }
        let (tx, rx) = oneshot::channel();
        (RequestBody { inner, _sent: Some(tx) }, Some(rx))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The read timeout fired between two frames of a response that had begun.
#[derive(Debug, thiserror::Error)]
#[error("upstream read timed out after {0:?} without data")]
pub struct ReadTimedOut(pub Duration);

/// A backend's response body with the read timeout between frames. It also drives the backend
/// connection it arrives on, and hands that connection back to its pool once the body is complete;
/// dropped early (the client left), it closes the connection instead. The timer is created only when
/// a frame is not immediately ready, so a response that arrives in one piece never touches the timer wheel.
pub struct UpstreamBody {
    inner: Incoming,
    connection: Option<(UpstreamConnection, PoolKey)>,
    /// The server slot this response holds until it ends or is dropped (admission control).
    _permit: Option<Permit>,
    read_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
}

impl UpstreamBody {
    /// Wraps a backend body; `connection` is the pooled connection it arrives on, if any.
    pub fn new(
        inner: Incoming,
        connection: Option<(UpstreamConnection, PoolKey)>,
        permit: Option<Permit>,
        read_timeout: Duration,
    ) -> Self {
        UpstreamBody { inner, connection, _permit: permit, read_timeout, idle: None }
    }

    fn release_connection(&mut self) {
        if let Some((connection, pool)) = self.connection.take() {
            pool.checkin(connection);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some((connection, _)) = &mut this.connection {
            connection.poll_driver(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = &mut this.idle {
                    idle.as_mut().reset(tokio::time::Instant::now() + this.read_timeout);
                }
                if this.inner.is_end_stream() {
                    this.release_connection();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.release_connection();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.connection = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let timeout = this.read_timeout;
                let idle = this.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.connection = None;
                        Poll::Ready(Some(Err(Box::new(ReadTimedOut(timeout)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

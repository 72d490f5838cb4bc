//! A request body read from an HTTP/1.1 client connection as the proxy polls it: the body half of the
//! server side's codec, seen through a small trait so that it names no connection type.

use crate::error::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

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

//! A response body compressed as it streams. Every frame goes through the encoder at once; what the
//! encoder has produced is sent as soon as there is some, and when the source has nothing more ready
//! the encoder is flushed, so a slow stream is never held back waiting for a full compression block
//! while a body that arrives in one piece compresses in one go.

use super::codec::Encoder;
use crate::body::{BoxError, ResponseBody};
use bytes::Bytes;
use http_body::{Body, Frame};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body compressed with one coding; see the module doc for when bytes go out.
pub struct CompressedBody {
    inner: ResponseBody,
    /// `None` once finished.
    encoder: Option<Encoder>,
    /// Input went in since the last flush.
    unflushed: bool,
}

impl CompressedBody {
    /// Compresses `inner` with `encoder`.
    pub(super) fn new(inner: ResponseBody, encoder: Encoder) -> CompressedBody {
        CompressedBody { inner, encoder: Some(encoder), unflushed: false }
    }

    /// The body being compressed.
    pub fn source(&self) -> &ResponseBody {
        &self.inner
    }
}

impl Body for CompressedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers cannot follow a body whose length and coding changed; they are dropped.
                    let Ok(data) = frame.into_data() else { continue };
                    encoder.write(&data)?;
                    this.unflushed = true;
                    let output = encoder.take_output();
                    if !output.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(output.into()))));
                    }
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => {
                    let last = this.encoder.take().map(Encoder::finish).transpose()?.unwrap_or_default();
                    return Poll::Ready((!last.is_empty()).then(|| Ok(Frame::data(last.into()))));
                }
                Poll::Pending if this.unflushed => {
                    this.unflushed = false;
                    encoder.flush()?;
                    let output = encoder.take_output();
                    if !output.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(output.into()))));
                    }
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none()
    }
}

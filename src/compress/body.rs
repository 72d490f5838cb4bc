//! A response body compressed as it streams. Every frame goes through the encoder at once; what the
//! encoder has produced is sent as soon as there is some, and when the source has nothing more ready
//! the encoder is flushed, so a slow stream is never held back waiting for a full compression block
//! while a body that arrives in one piece compresses in one go.

use super::codec::{Encoder, Levels};
use crate::config::Encoding;
use crate::error::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body compressed with one coding; see the module doc for when bytes go out.
pub(crate) struct CompressedBody<B> {
    inner: B,
    stage: Stage,
    /// Input went in since the last flush.
    unflushed: bool,
}

/// Where the encoder is. It starts with the first poll, when the response is being written: a
/// worker's compressor states (pooled, a deflate one is 270 KB) are held only by bodies being
/// compressed, not by responses that wait for their turn to be written.
enum Stage {
    Waiting(Encoding, Levels),
    Running(Encoder),
    Finished,
}

impl<B> CompressedBody<B> {
    /// Compresses `inner` with `encoding` at `levels`.
    pub(super) fn new(inner: B, encoding: Encoding, levels: Levels) -> CompressedBody<B> {
        CompressedBody { inner, stage: Stage::Waiting(encoding, levels), unflushed: false }
    }

    /// The body being compressed.
    pub(crate) fn source(&self) -> &B {
        &self.inner
    }

    /// The body being compressed, to take its meter reading.
    pub(crate) fn source_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B> Body for CompressedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Stage::Waiting(encoding, levels) = this.stage {
            match Encoder::new(encoding, levels) {
                Ok(encoder) => this.stage = Stage::Running(encoder),
                // Only when the library cannot set up (memory): the body ends with the error.
                Err(error) => {
                    this.stage = Stage::Finished;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
        loop {
            let Stage::Running(encoder) = &mut this.stage else {
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
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => {
                    let last = match std::mem::replace(&mut this.stage, Stage::Finished) {
                        Stage::Running(encoder) => encoder.finish()?,
                        _ => Vec::new(),
                    };
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
        matches!(self.stage, Stage::Finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::codec::pooled_deflate_states;
    use http_body_util::{BodyExt, Full};
    use std::io::Read;

    fn gzip_body(text: &'static str) -> CompressedBody<Full<Bytes>> {
        CompressedBody::new(Full::new(Bytes::from(text)), Encoding::Gzip, Levels { gzip: 1, br: 4, zstd: 3 })
    }

    #[tokio::test]
    async fn a_compressor_state_is_held_only_while_the_body_is_written() {
        // One finished body leaves this thread one pooled deflate state.
        gzip_body("warm").collect().await.unwrap();
        assert_eq!(pooled_deflate_states(), 1);

        let waiting: Vec<CompressedBody<Full<Bytes>>> = (0..3).map(|_| gzip_body("{\"ok\":true}")).collect();
        assert_eq!(pooled_deflate_states(), 1, "responses waiting to be written take no state");

        for body in waiting {
            let compressed = body.collect().await.unwrap().to_bytes();
            let mut plain = String::new();
            flate2::read::GzDecoder::new(&compressed[..]).read_to_string(&mut plain).unwrap();
            assert_eq!(plain, "{\"ok\":true}");
            assert_eq!(pooled_deflate_states(), 1, "the state went back to the pool");
        }
    }
}

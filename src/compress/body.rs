//! A response body compressed as it streams. Every frame goes through the encoder at once; what the
//! encoder has produced is sent as soon as there is some, and when the source has nothing more ready
//! the encoder is flushed, so a slow stream is never held back waiting for a full compression block
//! while a body that arrives in one piece compresses in one go.

use super::Encoding;
use crate::body::{BoxError, ResponseBody};
use bytes::Bytes;
use http_body::{Body, Frame};
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Compression levels per coding.
#[derive(Debug, Clone, Copy)]
pub struct Levels {
    /// gzip, 1-9.
    pub gzip: u32,
    /// brotli, 0-11.
    pub br: u32,
    /// zstd, 1-22.
    pub zstd: i32,
}

/// One coding's streaming encoder writing into a buffer the body drains.
pub(super) enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// A fresh encoder; fails only when the compression library cannot set up (memory).
    pub(super) fn new(encoding: Encoding, levels: Levels) -> std::io::Result<Encoder> {
        Ok(match encoding {
            Encoding::Gzip => {
                Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(levels.gzip)))
            }
            // 4 KiB of buffer and a 4 MiB window (lgwin 22), brotli's usual.
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, levels.br, 22))),
            Encoding::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), levels.zstd)?),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Gzip(e) => e,
            Encoder::Br(e) => e.as_mut(),
            Encoder::Zstd(e) => e,
        }
    }

    /// Takes what the encoder has produced so far.
    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        })
    }

    /// Ends the stream and returns the last bytes.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

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
                    encoder.writer().write_all(&data)?;
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
                    encoder.writer().flush()?;
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

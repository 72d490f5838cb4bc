//! The HTTP/1.1 codec both sides of the proxy share: the server side (`server::http1`, clients) and
//! the client side (`upstream::http1`, backends). Request and response heads, parsed and written;
//! message framing (RFC 9112 §6-7); the queue of bytes waiting for a socket; the limits on a request
//! head; and a connection handed over after `101 Switching Protocols`. The connections themselves
//! (buffers, reads, writes, timers) stay with each side.

pub(crate) mod chunked;
pub(crate) mod framing;
pub(crate) mod message;
pub(crate) mod request_head;
pub(crate) mod response_head;
pub(crate) mod upgrade;

use bytes::{Buf, Bytes};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most header fields a request may have whatever `[http] max_headers` says: the parser's slots
/// live on the stack.
pub(crate) const HEADER_SLOTS: usize = 256;

/// The client-side HTTP/1.1 limits of a listener, taken from `[http]` at config load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// Largest request line plus headers (`max_header_size`): larger answers 431, or 414 when the
    /// request line alone does not fit.
    pub(crate) max_head: usize,
    /// Most header fields (`max_headers`, at most `HEADER_SLOTS`): more answers 431.
    pub(crate) max_headers: usize,
}

/// A `Content-Length` value: digits, or a list of equal ones (`5, 5`).
pub(crate) fn parse_content_length(value: &[u8]) -> Result<u64, &'static str> {
    // The common case, one plain number, without the list's splitting and UTF-8 checks.
    if !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit) {
        return Ok(value.iter().fold(0, |length, digit| length * 10 + u64::from(digit - b'0')));
    }
    let mut length = None;
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        let parsed = std::str::from_utf8(item)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("bad Content-Length")?;
        if length.is_some_and(|previous| previous != parsed) {
            return Err("conflicting Content-Length values");
        }
        length = Some(parsed);
    }
    length.ok_or("empty Content-Length")
}

/// Bytes waiting to be written, oldest first, at most `N` pieces (a head, chunks with their framing,
/// the last-chunk marker), written with one vectored write. A fixed array, as a queue would allocate
/// per message.
pub(crate) struct WriteQueue<const N: usize> {
    pieces: [Bytes; N],
    first: usize,
    len: usize,
    /// Whether any byte went to the socket.
    wrote_any: bool,
}

impl<const N: usize> Default for WriteQueue<N> {
    fn default() -> Self {
        WriteQueue { pieces: std::array::from_fn(|_| Bytes::new()), first: 0, len: 0, wrote_any: false }
    }
}

impl<const N: usize> WriteQueue<N> {
    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.first == self.len
    }

    /// Free slots.
    pub(crate) fn room(&self) -> usize {
        self.pieces.len() - self.len
    }

    /// Whether any byte was written since the queue was made.
    pub(crate) fn wrote_any(&self) -> bool {
        self.wrote_any
    }

    /// Queues `bytes` behind what waits; the caller keeps within `room`.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        self.pieces[self.len] = bytes;
        self.len += 1;
    }

    /// One vectored write of what is waiting; `Ready(Ok)` once some bytes went.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut slices = [IoSlice::new(&[]); N];
        for (slice, piece) in slices.iter_mut().zip(&self.pieces[self.first..self.len]) {
            *slice = IoSlice::new(piece);
        }
        let mut written = ready!(Pin::new(io).poll_write_vectored(cx, &slices[..self.len - self.first]))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.wrote_any = true;
        while written > 0 {
            let piece = &mut self.pieces[self.first];
            if written < piece.len() {
                piece.advance(written);
                break;
            }
            written -= piece.len();
            // Let go of the piece's memory now, not when its slot is used again: a frame split off a
            // read buffer holds all of that buffer, which is read into from its start again only
            // once nothing holds it.
            *piece = Bytes::new();
            self.first += 1;
        }
        if self.is_empty() {
            self.first = 0;
            self.len = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// A connection after `101 Switching Protocols`, one side of a tunnel: the bytes that arrived along
/// with the last head come first.
pub(crate) struct Rewound<T> {
    early: Bytes,
    io: T,
}

impl<T> Rewound<T> {
    /// `io`, whose reads start with `early`.
    pub(crate) fn new(early: Bytes, io: T) -> Rewound<T> {
        Rewound { early, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let take = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..take]);
            self.early.advance(take);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::task::Waker;

    #[test]
    fn a_written_piece_lets_go_of_its_memory_at_once() {
        let mut read = BytesMut::with_capacity(64);
        read.extend_from_slice(b"data: 1\n\n");
        let start = read.as_ptr();
        let mut queue = WriteQueue::<4>::default();
        queue.push(read.split().freeze());
        queue.push(Bytes::from_static(b"\r\n"));
        // Shared with the queued frame: the buffer cannot be read into from its start.
        assert!(!read.try_reclaim(64));
        let mut socket = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(queue.poll_write(&mut socket, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!((socket.as_slice(), queue.is_empty(), queue.wrote_any()), (&b"data: 1\n\n\r\n"[..], true, true));
        assert!(read.try_reclaim(64), "the written frame still holds the buffer");
        assert_eq!(read.as_ptr(), start);
    }
}

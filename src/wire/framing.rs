//! Reading an HTTP/1.1 message body as its framing delimits it (RFC 9112 §6.3), from a connection's
//! read buffer: one state machine for a client's request body (`server::http1`) and a backend's
//! response body (`upstream::http1`).

use super::chunked::{ChunkedDecoder, Decoded};
use bytes::{Bytes, BytesMut};
use std::io;
use std::task::{ready, Context, Poll};

/// How the rest of a message body is delimited, and how far it has been read.
#[derive(Debug)]
pub(crate) enum Framing {
    /// Nothing is left to read.
    Done,
    /// `Content-Length`: this many bytes are left (never 0: that is `Done`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkedDecoder),
    /// Neither, in a response: the body ends when the backend closes the connection.
    UntilClose,
    /// The body broke (bad framing, a read error, or the peer left mid-body): the connection cannot
    /// carry another message.
    Broken,
}

impl Framing {
    /// A body of `length` declared bytes.
    pub(crate) fn declared(length: u64) -> Framing {
        match length {
            0 => Framing::Done,
            length => Framing::Length(length),
        }
    }

    /// Whether the body has been read to its end.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Framing::Done)
    }

    /// The next piece of the body that `buf` holds, consuming its framing: `NeedMore` when `buf`
    /// holds no complete piece, `End` once the body is read (the state is then `Done`).
    fn next(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        let decoded = match self {
            Framing::Done => Decoded::End,
            Framing::Broken => return Err(io::Error::new(io::ErrorKind::InvalidData, "message body broken")),
            Framing::Length(_) | Framing::UntilClose if buf.is_empty() => Decoded::NeedMore,
            Framing::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                if *left == 0 {
                    *self = Framing::Done;
                }
                Decoded::Data(buf.split_to(take).freeze())
            }
            Framing::UntilClose => Decoded::Data(buf.split().freeze()),
            Framing::Chunked(decoder) => match decoder.decode(buf) {
                Ok(Decoded::End) => {
                    *self = Framing::Done;
                    Decoded::End
                }
                Ok(decoded) => decoded,
                Err(e) => {
                    *self = Framing::Broken;
                    return Err(e);
                }
            },
        };
        Ok(decoded)
    }
}

/// A connection a message body is read from: the body's framing, the bytes read so far, and a way
/// to read more.
pub(crate) trait BodyReader {
    /// Who sends the body, for errors: "client" or "backend".
    const PEER: &'static str;

    /// The body's framing and the connection's read buffer.
    fn framing_and_buffer(&mut self) -> (&mut Framing, &mut BytesMut);

    /// Reads more into the buffer; `Ok(0)` when the peer closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;

    /// The next piece of the body, as soon as the buffer holds one; `None` at its end.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let (framing, buf) = self.framing_and_buffer();
            match framing.next(buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            let read = ready!(self.poll_fill(cx));
            let framing = self.framing_and_buffer().0;
            match read {
                Ok(0) if matches!(framing, Framing::UntilClose) => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    *framing = Framing::Broken;
                    let what = format!("the {} closed the connection mid-body", Self::PEER);
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, what))));
                }
                Ok(_) => {}
                Err(e) => {
                    *framing = Framing::Broken;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::Waker;

    /// A connection whose reads hand out the given pieces, then end.
    struct Scripted {
        framing: Framing,
        buf: BytesMut,
        reads: VecDeque<&'static [u8]>,
    }

    impl BodyReader for Scripted {
        const PEER: &'static str = "test peer";

        fn framing_and_buffer(&mut self) -> (&mut Framing, &mut BytesMut) {
            (&mut self.framing, &mut self.buf)
        }

        fn poll_fill(&mut self, _: &mut Context<'_>) -> Poll<io::Result<usize>> {
            let read = self.reads.pop_front().unwrap_or_default();
            self.buf.extend_from_slice(read);
            Poll::Ready(Ok(read.len()))
        }
    }

    /// Reads the whole body: its bytes, or the error that ended it.
    fn read_all(framing: Framing, buffered: &[u8], reads: &[&'static [u8]]) -> (Vec<u8>, Option<io::Error>, Scripted) {
        let mut source = Scripted { framing, buf: BytesMut::from(buffered), reads: reads.iter().copied().collect() };
        let mut body = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match source.poll_body(&mut cx) {
                Poll::Ready(Some(Ok(data))) => body.extend_from_slice(&data),
                Poll::Ready(Some(Err(e))) => return (body, Some(e), source),
                Poll::Ready(None) => return (body, None, source),
                Poll::Pending => unreachable!("scripted reads are always ready"),
            }
        }
    }

    #[test]
    fn a_declared_length_stops_at_its_end_and_leaves_what_follows() {
        let (body, error, source) = read_all(Framing::declared(5), b"he", &[b"llo", b"GET / HTTP/1.1"]);
        assert_eq!((body.as_slice(), error.is_none()), (&b"hello"[..], true));
        assert!(source.framing.is_done());
        assert_eq!(source.reads.len(), 1, "read past the body");
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk() {
        let (body, error, source) =
            read_all(Framing::Chunked(ChunkedDecoder::default()), b"3\r\nab", &[b"c\r\n0\r\n\r\nX"]);
        assert_eq!((body.as_slice(), error.is_none()), (&b"abc"[..], true));
        assert!(source.framing.is_done());
        assert_eq!(&source.buf[..], b"X");
    }

    #[test]
    fn a_body_read_until_close_ends_cleanly_at_the_close() {
        let (body, error, source) = read_all(Framing::UntilClose, b"", &[b"one ", b"two"]);
        assert_eq!((body.as_slice(), error.is_none()), (&b"one two"[..], true));
        assert!(source.framing.is_done());
    }

    #[test]
    fn a_close_before_the_declared_end_breaks_the_body_for_good() {
        let (body, error, mut source) = read_all(Framing::declared(10), b"12345", &[]);
        assert_eq!(body, b"12345");
        let error = error.expect("a short body is an error");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(error.to_string(), "the test peer closed the connection mid-body");
        assert!(matches!(source.framing, Framing::Broken));
        let again = source.poll_body(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(again, Poll::Ready(Some(Err(_)))), "a broken body stays broken");
    }

    #[test]
    fn bad_chunked_framing_breaks_the_body() {
        let (body, error, source) = read_all(Framing::Chunked(ChunkedDecoder::default()), b"zz\r\n", &[]);
        assert!(body.is_empty());
        assert_eq!(error.expect("bad framing is an error").kind(), io::ErrorKind::InvalidData);
        assert!(matches!(source.framing, Framing::Broken));
    }
}

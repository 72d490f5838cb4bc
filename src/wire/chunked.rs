//! Decoding a `Transfer-Encoding: chunked` body (RFC 9112 §7.1), a client's request body or a
//! backend's response body, as its bytes arrive, in any split: chunk data is handed on as it comes
//! (never waiting for a whole chunk), extensions and trailers are read and dropped, each bounded.
//!
//! Strict where a lenient reading could differ from another peer's (request smuggling): a size line
//! is hex digits, optional spaces or tabs, then either CRLF or `;` and an extension; every line ends
//! with CRLF (a bare LF is refused); control characters are refused in extensions and trailers.

use bytes::{Buf, Bytes, BytesMut};
use std::io;

/// Most trailer bytes accepted after the last chunk; trailers are dropped, so this only bounds work.
const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// Most chunk-extension bytes accepted in one body, all chunks together (hyper's limit): extensions
/// are dropped, and a body of one-byte chunks with long extensions would otherwise cost a gateway
/// far more than it forwards.
const MAX_EXTENSION_BYTES: usize = 16 * 1024;

/// What the decoder made of the buffered bytes.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// A piece of body data.
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The body ended (last chunk and trailers consumed).
    End,
}

/// Where the decoder is inside the chunked framing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Reading the hex size; `digits` read so far.
    Size { size: u64, digits: u8 },
    /// Spaces or tabs after the size: an extension's `;` or the line's CR must follow.
    SizeSpace { size: u64 },
    /// Skipping a chunk extension up to the line's CR.
    Extension { size: u64 },
    /// Expecting the LF of the size line.
    SizeLf { size: u64 },
    /// Handing on chunk data.
    Data { left: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (an empty one ends the body); `seen` bytes of trailers so far.
    TrailerStart { seen: usize },
    /// Inside a trailer line.
    TrailerLine { seen: usize },
    /// Expecting the LF that ends a trailer line (`last`: the empty line that ends the body).
    TrailerLf { seen: usize, last: bool },
    /// Done.
    End,
}

/// A chunked body decoder; feed it the connection's read buffer until it says `End`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// Extension bytes of this body so far (bounded by `MAX_EXTENSION_BYTES`).
    extension_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size { size: 0, digits: 0 }, extension_bytes: 0 }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("invalid chunked body: {what}"))
}

impl ChunkedDecoder {
    /// Consumes framing from `buf` and returns the next piece of data, or what else it found.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            if let State::Data { left } = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - take as u64;
                self.state = if left == 0 { State::DataCr } else { State::Data { left } };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == State::End {
                return Ok(Decoded::End);
            }
            // Framing bytes are stepped through in place and consumed together: advancing the
            // buffer byte by byte cost more than the stepping (callgrind).
            let mut used = 0;
            let stepped = loop {
                let Some(&byte) = buf.get(used) else { break Ok(false) };
                used += 1;
                match self.step(byte) {
                    Ok(state) => self.state = state,
                    Err(error) => break Err(error),
                }
                if matches!(self.state, State::Data { .. } | State::End) {
                    break Ok(true);
                }
            };
            buf.advance(used);
            if !stepped? {
                return Ok(Decoded::NeedMore);
            }
        }
    }

    /// The state after one framing byte.
    fn step(&mut self, byte: u8) -> io::Result<State> {
        Ok(match self.state {
            State::Size { size, digits } => match (byte as char).to_digit(16) {
                Some(digit) if digits < 16 => State::Size { size: size << 4 | u64::from(digit), digits: digits + 1 },
                Some(_) => return Err(invalid("chunk size too large")),
                None if digits == 0 => return Err(invalid("missing chunk size")),
                None => match byte {
                    b'\r' => State::SizeLf { size },
                    b';' => self.extension(size)?,
                    b' ' | b'\t' => State::SizeSpace { size },
                    b'\n' => return Err(invalid("bare LF in chunk size line")),
                    _ => return Err(invalid("bad chunk size")),
                },
            },
            State::SizeSpace { size } => match byte {
                b' ' | b'\t' => State::SizeSpace { size },
                b'\r' => State::SizeLf { size },
                b';' => self.extension(size)?,
                _ => return Err(invalid("bad chunk size line (after the size: an extension or CRLF)")),
            },
            State::Extension { size } => match byte {
                b'\r' => State::SizeLf { size },
                b'\n' => return Err(invalid("bare LF in chunk size line")),
                b'\t' | b' '..=b'~' | 0x80.. => self.extension(size)?,
                _ => return Err(invalid("control character in a chunk extension")),
            },
            State::SizeLf { size } => match byte {
                b'\n' if size == 0 => State::TrailerStart { seen: 0 },
                b'\n' => State::Data { left: size },
                _ => return Err(invalid("expected LF after chunk size")),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err(invalid("expected CRLF after chunk data")),
            },
            State::DataLf => match byte {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(invalid("expected CRLF after chunk data")),
            },
            State::TrailerStart { seen } => match byte {
                b'\r' => State::TrailerLf { seen, last: true },
                b'\n' => return Err(invalid("bare LF in trailers")),
                b'\t' | b' '..=b'~' | 0x80.. => State::TrailerLine { seen: trailer_bytes(seen)? },
                _ => return Err(invalid("control character in trailers")),
            },
            State::TrailerLine { seen } => match byte {
                b'\r' => State::TrailerLf { seen, last: false },
                b'\n' => return Err(invalid("bare LF in trailers")),
                b'\t' | b' '..=b'~' | 0x80.. => State::TrailerLine { seen: trailer_bytes(seen)? },
                _ => return Err(invalid("control character in trailers")),
            },
            State::TrailerLf { seen, last } => match byte {
                b'\n' if last => State::End,
                b'\n' => State::TrailerStart { seen },
                _ => return Err(invalid("expected LF in trailers")),
            },
            State::Data { .. } | State::End => unreachable!("data and end are handled by decode"),
        })
    }
}

impl ChunkedDecoder {
    /// One more byte of a chunk extension, within the body's `MAX_EXTENSION_BYTES`.
    fn extension(&mut self, size: u64) -> io::Result<State> {
        self.extension_bytes += 1;
        if self.extension_bytes > MAX_EXTENSION_BYTES {
            return Err(invalid("chunk extensions too large"));
        }
        Ok(State::Extension { size })
    }
}

fn trailer_bytes(seen: usize) -> io::Result<usize> {
    if seen >= MAX_TRAILER_BYTES {
        return Err(invalid("trailers too large"));
    }
    Ok(seen + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder in pieces of the given lengths (cycled); returns the body and whether
    /// it ended, or the error.
    fn decode_in_pieces(wire: &[u8], pieces: &[usize]) -> io::Result<(Vec<u8>, bool, usize)> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut offset = 0;
        let mut piece = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok((body, true, buf.len() + wire.len() - offset)),
                Decoded::NeedMore if offset == wire.len() => return Ok((body, false, 0)),
                Decoded::NeedMore => {
                    let length = pieces[piece % pieces.len()].max(1).min(wire.len() - offset);
                    piece += 1;
                    buf.extend_from_slice(&wire[offset..offset + length]);
                    offset += length;
                }
            }
        }
    }

    /// The chunked encoding of `body` cut into chunks of the given sizes, with an extension and a
    /// trailer when asked.
    fn encode(body: &[u8], chunks: &[usize], extension: bool, trailer: bool) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut rest = body;
        let mut index = 0;
        while !rest.is_empty() {
            let size = chunks[index % chunks.len()].clamp(1, rest.len());
            index += 1;
            wire.extend_from_slice(format!("{size:X}").as_bytes());
            if extension {
                wire.extend_from_slice(b";name=\"value\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest[..size]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        wire.extend_from_slice(b"0\r\n");
        if trailer {
            wire.extend_from_slice(b"x-checksum: abc\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    #[test]
    fn any_chunking_read_in_any_split_gives_back_the_body() {
        // A property over seeded random inputs: body, chunk sizes, read sizes, extensions, trailers.
        for seed in 0..2000 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let body: Vec<u8> = (0..rng.usize(0..3000)).map(|_| rng.u8(..)).collect();
            let chunks: Vec<usize> = (0..rng.usize(1..5)).map(|_| rng.usize(1..700)).collect();
            let reads: Vec<usize> = (0..rng.usize(1..5)).map(|_| rng.usize(1..900)).collect();
            let (extension, trailer) = (rng.bool(), rng.bool());
            let mut wire = encode(&body, &chunks, extension, trailer);
            // Bytes after the body belong to the next response and must be left in the buffer.
            wire.extend_from_slice(b"HTTP/1.1");
            let (decoded, ended, left) = decode_in_pieces(&wire, &reads).unwrap();
            assert!(ended, "seed {seed}: body did not end");
            assert_eq!(decoded, body, "seed {seed}");
            assert_eq!(left, 8, "seed {seed}: bytes after the body");
        }
    }

    #[test]
    fn a_cut_body_never_ends() {
        for seed in 0..300 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let body: Vec<u8> = (0..rng.usize(1..500)).map(|_| rng.u8(..)).collect();
            let wire = encode(&body, &[rng.usize(1..100)], false, false);
            let cut = rng.usize(0..wire.len());
            let (_, ended, _) = decode_in_pieces(&wire[..cut], &[7]).unwrap();
            assert!(!ended, "seed {seed}: ended after {cut} of {} bytes", wire.len());
        }
    }

    #[test]
    fn spaces_before_an_extension_or_the_line_end_are_accepted() {
        for wire in [&b"5 \r\nhello\r\n0\r\n\r\n"[..], b"5 ;a=b\r\nhello\r\n0 \t;x\r\n\r\n"] {
            let (body, ended, _) = decode_in_pieces(wire, &[1]).unwrap();
            assert_eq!((body.as_slice(), ended), (&b"hello"[..], true), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn chunk_extensions_are_bounded_per_body() {
        let extension = format!(";{}", "e".repeat(1000));
        let mut within = Vec::new();
        for _ in 0..16 {
            within.extend_from_slice(format!("1{extension}\r\nx\r\n").as_bytes());
        }
        let mut over = within.clone();
        within.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode_in_pieces(&within, &[300]).unwrap().0.len(), 16, "16 KB of extensions pass");
        over.extend_from_slice(format!("1{extension}\r\nx\r\n0\r\n\r\n").as_bytes());
        let error = decode_in_pieces(&over, &[300]).unwrap_err();
        assert!(error.to_string().contains("chunk extensions too large"), "{error}");
    }

    #[test]
    fn fuzz_chunked_bodies_decode_the_same_in_any_split() {
        let encoded = encode(b"hello world, split anywhere", &[3, 11], true, true);
        let seeds = crate::fuzzing::seeds(
            "chunked",
            &[&encoded, b"5\r\nhello\r\n0\r\n\r\n", b"1;a=\"b\"\r\nx\r\n0\r\nx-t: 1\r\n\r\nNEXT"],
        );
        arbtest::arbtest(|u| {
            let wire = crate::fuzzing::mutated(u, &seeds)?;
            let pieces = (0..u.int_in_range(1..=4)?)
                .map(|_| u.int_in_range(1..=64))
                .collect::<arbtest::arbitrary::Result<Vec<usize>>>()?;
            let whole = decode_in_pieces(&wire, &[wire.len().max(1)]);
            let split = decode_in_pieces(&wire, &pieces);
            match (whole, split) {
                (Ok(whole), Ok(split)) => {
                    assert_eq!(whole, split, "{:?} in {pieces:?}", String::from_utf8_lossy(&wire))
                }
                (Err(_), Err(_)) => {}
                (whole, split) => {
                    panic!("{:?}: whole {whole:?}, in {pieces:?} {split:?}", String::from_utf8_lossy(&wire))
                }
            }
            Ok(())
        });
    }

    #[test]
    fn rejects_bad_framing() {
        for wire in [
            &b"zz\r\nabc"[..],
            b"\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx: y\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"5\tx\r\nhello\r\n0\r\n\r\n",
            b"5\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            b"0\r\nx: \x01\r\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(decode_in_pieces(wire, &[wire.len()]).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }
}

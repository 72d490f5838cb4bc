//! The streaming encoders, with each worker thread keeping finished gzip and zstd states for reuse:
//! setting up a deflate state costs about 80 µs (allocating and clearing its window and hash
//! tables) where compressing a 20 KB JSON answer at level 1 costs about 11, so a fresh state per
//! response would make setup most of the work. gzip's framing is written here around flate2's raw
//! deflate because flate2's `GzEncoder` cannot take a reused state.

use crate::config::Encoding;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::cell::RefCell;
use std::io::{self, Write};
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// Compression levels per coding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Levels {
    /// gzip, 1-9.
    pub(crate) gzip: u32,
    /// brotli, 0-11.
    pub(crate) br: u32,
    /// zstd, 1-19.
    pub(crate) zstd: i32,
}

/// States kept per worker thread and coding: enough for the responses one worker compresses at once
/// in the common case, few enough that idle memory stays small (a deflate state is about 270 KB).
const POOLED_PER_THREAD: usize = 8;

thread_local! {
    static DEFLATE: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    static ZSTD: RefCell<Vec<(i32, zstd::stream::raw::Encoder<'static>)>> = const { RefCell::new(Vec::new()) };
}

/// A reused state of `level` from this thread's pool, or a new one.
fn take_pooled<L: PartialEq + Copy, S>(
    pool: &'static std::thread::LocalKey<RefCell<Vec<(L, S)>>>,
    level: L,
) -> Option<S> {
    pool.with(|pool| {
        let mut pool = pool.borrow_mut();
        let index = pool.iter().position(|(l, _)| *l == level)?;
        Some(pool.swap_remove(index).1)
    })
}

fn give_back<L, S>(pool: &'static std::thread::LocalKey<RefCell<Vec<(L, S)>>>, level: L, state: S) {
    pool.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOLED_PER_THREAD {
            pool.push((level, state));
        }
    });
}

/// How many deflate states this thread keeps for reuse.
#[cfg(test)]
pub(super) fn pooled_deflate_states() -> usize {
    DEFLATE.with_borrow(Vec::len)
}

/// One response's encoder; its output accumulates until taken.
pub(super) enum Encoder {
    Gzip(Box<GzipStream>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(Box<ZstdStream>),
}

impl Encoder {
    /// An encoder for `encoding`; fails only when the library cannot set up (memory).
    pub(super) fn new(encoding: Encoding, levels: Levels) -> io::Result<Encoder> {
        Ok(match encoding {
            Encoding::Gzip => Encoder::Gzip(Box::new(GzipStream::new(levels.gzip))),
            // 4 KiB of buffer and a 4 MiB window (lgwin 22), brotli's usual.
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, levels.br, 22))),
            Encoding::Zstd => Encoder::Zstd(Box::new(ZstdStream::new(levels.zstd)?)),
        })
    }

    /// Compresses `data` (output may stay inside the encoder until a flush).
    pub(super) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.run(data, FlushCompress::None),
            Encoder::Br(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write(data),
        }
    }

    /// Makes everything written so far decodable from the output.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.run(&[], FlushCompress::Sync),
            Encoder::Br(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }

    /// Takes the output so far.
    pub(super) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Encoder::Gzip(e) => &mut e.out,
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => &mut e.out,
        })
    }

    /// Ends the stream and returns the last bytes.
    pub(super) fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(mut e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
            Encoder::Zstd(mut e) => e.finish(),
        }
    }
}

/// gzip (RFC 1952) around a raw deflate state from the pool; the state goes back when dropped.
pub(super) struct GzipStream {
    level: u32,
    deflate: Option<Compress>,
    crc: Crc,
    out: Vec<u8>,
}

/// Fixed gzip header: magic, deflate, no flags, no mtime, no extra flags, OS unix.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

impl GzipStream {
    fn new(level: u32) -> GzipStream {
        let deflate = take_pooled(&DEFLATE, level).unwrap_or_else(|| Compress::new(Compression::new(level), false));
        GzipStream { level, deflate: Some(deflate), crc: Crc::new(), out: GZIP_HEADER.to_vec() }
    }

    fn run(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<()> {
        let deflate = self.deflate.as_mut().ok_or_else(|| io::Error::other("gzip stream already finished"))?;
        self.crc.update(input);
        loop {
            self.out.reserve(input.len() / 2 + 1024);
            let before = deflate.total_in();
            let status = deflate.compress_vec(input, &mut self.out, flush).map_err(io::Error::other)?;
            input = &input[(deflate.total_in() - before) as usize..];
            let out_full = self.out.len() == self.out.capacity();
            match status {
                Status::StreamEnd => return Ok(()),
                _ if input.is_empty() && !out_full => return Ok(()),
                _ => {}
            }
        }
    }

    fn finish(&mut self) -> io::Result<Vec<u8>> {
        loop {
            self.out.reserve(1024);
            let deflate = self.deflate.as_mut().ok_or_else(|| io::Error::other("gzip stream already finished"))?;
            if deflate.compress_vec(&[], &mut self.out, FlushCompress::Finish).map_err(io::Error::other)?
                == Status::StreamEnd
            {
                break;
            }
        }
        self.out.extend_from_slice(&self.crc.sum().to_le_bytes());
        self.out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Ok(std::mem::take(&mut self.out))
    }
}

impl Drop for GzipStream {
    fn drop(&mut self) {
        if let Some(mut deflate) = self.deflate.take() {
            deflate.reset();
            give_back(&DEFLATE, self.level, deflate);
        }
    }
}

/// A zstd frame from a pooled compression context; the context goes back when dropped.
pub(super) struct ZstdStream {
    level: i32,
    context: Option<zstd::stream::raw::Encoder<'static>>,
    out: Vec<u8>,
}

impl ZstdStream {
    fn new(level: i32) -> io::Result<ZstdStream> {
        let context = match take_pooled(&ZSTD, level) {
            Some(context) => context,
            None => zstd::stream::raw::Encoder::new(level)?,
        };
        Ok(ZstdStream { level, context: Some(context), out: Vec::new() })
    }

    fn context(&mut self) -> io::Result<&mut zstd::stream::raw::Encoder<'static>> {
        self.context.as_mut().ok_or_else(|| io::Error::other("zstd stream already finished"))
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            self.out.reserve(data.len() / 2 + 1024);
            let position = self.out.len();
            let mut out = std::mem::take(&mut self.out);
            let mut output = OutBuffer::around_pos(&mut out, position);
            let result = self.context()?.run(&mut input, &mut output);
            self.out = out;
            result?;
        }
        Ok(())
    }

    /// Runs `step` (flush or end) until it reports nothing left.
    fn drain(&mut self, end: bool) -> io::Result<()> {
        loop {
            self.out.reserve(1024);
            let position = self.out.len();
            let mut out = std::mem::take(&mut self.out);
            let mut output = OutBuffer::around_pos(&mut out, position);
            let context = self.context()?;
            let left = if end { context.finish(&mut output, true) } else { context.flush(&mut output) };
            self.out = out;
            if left? == 0 {
                return Ok(());
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain(false)
    }

    fn finish(&mut self) -> io::Result<Vec<u8>> {
        self.drain(true)?;
        Ok(std::mem::take(&mut self.out))
    }
}

impl Drop for ZstdStream {
    fn drop(&mut self) {
        if let Some(mut context) = self.context.take() {
            if context.reinit().is_ok() {
                give_back(&ZSTD, self.level, context);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(encoding: Encoding, chunks: &[&[u8]]) -> Vec<u8> {
        let levels = Levels { gzip: 1, br: 4, zstd: 3 };
        let mut encoder = Encoder::new(encoding, levels).unwrap();
        let mut compressed = Vec::new();
        for chunk in chunks {
            encoder.write(chunk).unwrap();
            encoder.flush().unwrap();
            compressed.extend(encoder.take_output());
        }
        compressed.extend(encoder.finish().unwrap());
        let mut plain = Vec::new();
        match encoding {
            Encoding::Gzip => flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut plain),
            Encoding::Zstd => zstd::stream::read::Decoder::new(&compressed[..]).unwrap().read_to_end(&mut plain),
            Encoding::Br => brotli::Decompressor::new(&compressed[..], 4096).read_to_end(&mut plain),
        }
        .unwrap();
        plain
    }

    #[test]
    fn reused_states_produce_valid_streams() {
        let big: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for encoding in Encoding::ALL {
            // Twice: the second stream runs on the state the first gave back.
            for _ in 0..2 {
                assert_eq!(round_trip(encoding, &[b"hello ", b"", b"world"]), b"hello world");
                assert_eq!(round_trip(encoding, &[&big]), big, "{encoding:?}");
            }
        }
    }
}

//! Inputs of the fuzz-style property tests (tests only): each target's seeds, from its kept corpus
//! (`fuzz/corpus/TARGET/`, one input a file) and the test's own, changed by arbitrary edits that
//! favour the bytes parsers decide on. arbtest runs each property for `ARBTEST_BUDGET_MS` (100 ms
//! by default, so the suite stays fast); `docs/testing.md` has the longer run for maintainers.

use arbtest::arbitrary::{self, Unstructured};
use std::path::Path;

/// Pieces an edit inserts: line ends, separators, framing words and odd bytes.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b";",
    b",",
    b"=",
    b"0",
    b"7fffffffffffffff",
    b"Transfer-Encoding: ",
    b"chunked",
    b"Content-Length: ",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"Host: ",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"\0",
    b"\x7f",
    b"\xff",
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
];

/// Whether `bytes` hold a line feed without a carriage return before it: the byte-by-byte oracle
/// for the parsers' cheaper check.
pub(crate) fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(at, &byte)| byte == b'\n' && (at == 0 || bytes[at - 1] != b'\r'))
}

/// The seeds of `target`: its kept corpus, then `own`.
pub(crate) fn seeds(target: &str, own: &[&[u8]]) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files.iter().filter_map(|path| std::fs::read(path).ok()).collect();
    seeds.extend(own.iter().map(|seed| seed.to_vec()));
    seeds
}

/// One of `seeds` with up to eight arbitrary edits: a token inserted, bytes removed, a byte
/// replaced, or arbitrary bytes inserted.
pub(crate) fn mutated(u: &mut Unstructured, seeds: &[Vec<u8>]) -> arbitrary::Result<Vec<u8>> {
    let mut input = u.choose(seeds)?.clone();
    for _ in 0..u.int_in_range(0..=8)? {
        let at = u.int_in_range(0..=input.len())?;
        match u.int_in_range(0..=3)? {
            0 => {
                let token = u.choose(TOKENS)?;
                input.splice(at..at, token.iter().copied());
            }
            1 => {
                let end = u.int_in_range(at..=input.len())?.min(at + 16);
                input.drain(at..end);
            }
            2 if at < input.len() => input[at] = u.arbitrary()?,
            _ => {
                let count = u.int_in_range(0..=8)?;
                let bytes = (0..count).map(|_| u.arbitrary::<u8>()).collect::<arbitrary::Result<Vec<u8>>>()?;
                input.splice(at..at, bytes);
            }
        }
    }
    Ok(input)
}

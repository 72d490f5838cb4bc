//! Response heads on the wire, both sides of the proxy: parsed as a backend sends them (for
//! `upstream::http1`), written as the gateway answers a client (for `server::http1`). What a head
//! says about its body and connection is `message`'s, the same rules for both.

use super::chunked::ChunkedDecoder;
use super::framing::Framing;
use super::message::{self, Declared, HeadFacts};
use super::parse_content_length;
use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{response, Response, StatusCode, Version};
use http_body::Body;
use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::time::SystemTime;

/// Largest response head accepted, 64 KiB (nginx's `proxy_buffer_size` is 4-8 KB; model servers send
/// small heads, so a larger one is a broken backend): answered 502. Offsets into it fit a `u16`.
const MAX_RESPONSE_HEAD: usize = u16::MAX as usize;
/// Most response headers accepted.
const MAX_HEADERS: usize = 128;
/// What a request says about reading its response.
#[derive(Clone, Copy)]
pub(crate) struct ResponseRules<'a> {
    /// A response to `HEAD` has no body, whatever its head declares.
    pub(crate) head_request: bool,
    /// Headers dropped from the response head (lowercase names), besides the connection-level ones.
    pub(crate) hidden: &'a [&'static str],
}

/// A parsed response head and what it says about the body and the connection.
pub(crate) struct ParsedResponse {
    pub(crate) parts: response::Parts,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
}

/// Parses a response head at the start of `buf` and removes it; `None` when it is not complete yet.
/// The head is copied into `heads` (a buffer of the connection's own, reused once the last head's
/// headers are gone) and the header values share its memory there: so the headers, which live as
/// long as the response, do not hold `buf`, which is then read into from its start again once the
/// body's frames have gone (a stream's tokens keep to its first page).
pub(crate) fn parse(
    buf: &mut BytesMut,
    heads: &mut BytesMut,
    rules: ResponseRules<'_>,
) -> io::Result<Option<ParsedResponse>> {
    // Uninitialized: zeroing 128 headers cost more than parsing a small head.
    let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let length =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(length)) if length <= MAX_RESPONSE_HEAD => length,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
            Ok(_) => return Err(invalid_response(format!("head larger than {MAX_RESPONSE_HEAD} bytes"))),
            Err(e) => return Err(invalid_response(e.to_string())),
        };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|e| invalid_response(e.to_string()))?;
    let http11 = parsed.version == Some(1);
    // Where each header sits in the head (under 64 KiB, so u16 offsets), so the values can be slices
    // of the head once it is split off the buffer.
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u16;
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    for (span, header) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (offset(header.name.as_bytes()), offset(header.value));
        *span = (name, name + header.name.len() as u16, value, value + header.value.len() as u16);
    }
    let count = parsed.headers.len();
    if !message::lines_end_with_crlf(&buf[..length], spans[..count].iter().map(|span| usize::from(span.0))) {
        return Err(invalid_response("bare LF in the head (lines end with CRLF)".into()));
    }
    heads.extend_from_slice(&buf[..length]);
    let head = heads.split().freeze();
    buf.advance(length);

    let mut map = HeaderMap::with_capacity(count);
    let mut facts = HeadFacts::default();
    // Other headers the `Connection` header names, to drop too (rare: allocated only then).
    let mut named = Vec::new();
    for &(name_start, name_end, value_start, value_end) in &spans[..count] {
        let raw_name = &head[usize::from(name_start)..usize::from(name_end)];
        if rules.hidden.iter().any(|hidden| raw_name.eq_ignore_ascii_case(hidden.as_bytes())) {
            continue;
        }
        let name = HeaderName::from_bytes(raw_name).map_err(|e| invalid_response(e.to_string()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(usize::from(value_start)..usize::from(value_end)))
            .map_err(|e| invalid_response(e.to_string()))?;
        // Connection-level fields (RFC 9110 §7.6.1) are this connection's business: used here and
        // not handed on. `Upgrade` stays on a `101`, for the proxy to pass on with the switch.
        if name == header::CONTENT_LENGTH {
            facts.content_length(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING {
            facts.transfer_encoding(value.as_bytes());
            continue;
        } else if name == header::CONNECTION {
            facts.connection(value.as_bytes(), |token| named.extend(HeaderName::from_bytes(token).ok()));
            continue;
        } else if name == header::TE
            || name == header::TRAILER
            || name == "keep-alive"
            || name == "proxy-connection"
            || (name == header::UPGRADE && status != StatusCode::SWITCHING_PROTOCOLS)
        {
            continue;
        }
        map.append(name, value);
    }
    for name in named {
        map.remove(name);
    }
    let no_body = rules.head_request || status.is_informational() || matches!(status.as_u16(), 204 | 304);
    // RFC 9112 §6.3: a coding overrides a length, which is not passed on; only `chunked` is read
    // (another coding could not be named to the client once the header is dropped).
    let declared = match facts.declared() {
        Ok(declared) => declared,
        // A body that is not there needs no framing (a HEAD answer may declare anything).
        Err(_) if no_body => Declared::Nothing,
        Err(error) => return Err(invalid_response(error.message().into())),
    };
    if facts.has_transfer_encoding() {
        map.remove(header::CONTENT_LENGTH);
    }
    let framing = match declared {
        _ if no_body => Framing::Done,
        Declared::Chunked => Framing::Chunked(ChunkedDecoder::default()),
        Declared::Length(length) => Framing::declared(length),
        Declared::Nothing => Framing::UntilClose,
    };
    let keep_alive = facts.persistent(http11)
        && !matches!(framing, Framing::UntilClose)
        && status != StatusCode::SWITCHING_PROTOCOLS;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if http11 { Version::HTTP_11 } else { Version::HTTP_10 };
    *response.headers_mut() = map;
    Ok(Some(ParsedResponse { parts: response.into_parts().0, framing, keep_alive }))
}

fn invalid_response(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("invalid response from the backend: {what}"))
}

/// What the request says about writing its response.
#[derive(Clone, Copy)]
pub(crate) struct Answering {
    /// The request was a `HEAD`: no body goes out.
    pub(crate) head_request: bool,
    /// The request's version, which the framing follows.
    pub(crate) version: Version,
    /// Whether the connection may serve another request after this one.
    pub(crate) keep_alive: bool,
}

impl Answering {
    /// For an answer to a request that could not be read.
    pub(crate) fn closing() -> Answering {
        Answering { head_request: false, version: Version::HTTP_11, keep_alive: false }
    }
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ResponseFraming {
    /// Not sent (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and no known length).
    UntilClose,
}

/// Writes the status line and headers into `buf`; framing and connection headers are the
/// connection's own. Returns the body framing and whether the connection is kept alive.
pub(crate) fn write<B: Body>(
    buf: &mut BytesMut,
    parts: &http::response::Parts,
    body: &B,
    answering: Answering,
) -> (ResponseFraming, bool) {
    let status = parts.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    buf.reserve(256);
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.extend_from_slice(b" ");
    buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.extend_from_slice(b"\r\n");
    // One pass over the headers writes them and notes the framing ones, which are the
    // connection's own (looking those up first hashed their names again, per response).
    let (mut length_value, mut close_asked, mut has_date) = (None, false, false);
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            length_value = length_value.or(Some(value));
            continue;
        }
        if *name == header::CONNECTION {
            close_asked |= message::has_token(value.as_bytes(), b"close");
            if !switching {
                continue;
            }
        }
        if *name == header::TRANSFER_ENCODING {
            continue;
        }
        has_date |= *name == header::DATE;
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    let declared = length_value.and_then(|v| parse_content_length(v.as_bytes()).ok());
    let no_body = answering.head_request || status.is_informational() || matches!(status.as_u16(), 204 | 304);
    let mut keep_alive = answering.keep_alive && !close_asked;
    let (out, length_header) = if no_body {
        let length = declared.or_else(|| (answering.head_request).then(|| body.size_hint().exact()).flatten());
        (ResponseFraming::None, length.filter(|_| !status.is_informational() && status != StatusCode::NO_CONTENT))
    } else if let Some(length) = declared.or_else(|| body.size_hint().exact()) {
        (ResponseFraming::Length(length), Some(length))
    } else if answering.version == Version::HTTP_11 {
        (ResponseFraming::Chunked, None)
    } else {
        keep_alive = false;
        (ResponseFraming::UntilClose, None)
    };
    if let Some(length) = length_header {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(itoa(length, &mut [0; 20]));
        buf.extend_from_slice(b"\r\n");
    }
    if out == ResponseFraming::Chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !switching {
        match (keep_alive, answering.version) {
            (false, _) => buf.extend_from_slice(b"connection: close\r\n"),
            (true, Version::HTTP_10) => buf.extend_from_slice(b"connection: keep-alive\r\n"),
            (true, _) => {}
        }
    }
    if !has_date {
        buf.extend_from_slice(b"date: ");
        DATE.with(|date| buf.extend_from_slice(date.borrow_mut().now()));
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    (out, keep_alive)
}

/// `value` in lowercase hexadecimal, without allocating.
pub(crate) fn hex(mut value: usize, digits: &mut [u8; 16]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[value % 16];
        value /= 16;
        if value == 0 {
            return &digits[start..];
        }
    }
}

/// `value` in decimal, without allocating.
fn itoa(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

thread_local! {
    /// The `Date` value, formatted once a second per worker thread.
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, text: [0; 29] }) };
}

/// An HTTP date (29 bytes, RFC 9110 §5.6.7) and the Unix second it was made for.
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.text.copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Either, Empty, Full};

    /// A full or an empty body, as the written heads' tests need.
    type TestBody = Either<Full<Bytes>, Empty<Bytes>>;

    const GET: ResponseRules = ResponseRules { head_request: false, hidden: &[] };

    fn parse_text(text: &str) -> io::Result<Option<ParsedResponse>> {
        parse(&mut BytesMut::from(text), &mut BytesMut::new(), GET)
    }

    #[test]
    fn a_parsed_head_holds_neither_the_read_buffer_nor_its_own_once_gone() {
        const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let (mut buf, mut heads) = (BytesMut::with_capacity(1024), BytesMut::with_capacity(512));
        let (read_at, heads_at) = (buf.as_ptr(), heads.as_ptr());
        for _ in 0..3 {
            buf.extend_from_slice(HEAD);
            let parsed = parse(&mut buf, &mut heads, GET).unwrap().unwrap();
            assert_eq!(parsed.parts.headers["content-type"], "text/event-stream");
            // The headers live on, yet the read buffer is read into from its start again.
            assert!(buf.is_empty() && buf.try_reclaim(1024));
            assert_eq!(buf.as_ptr(), read_at);
            drop(parsed);
            // And the next head is copied where this one was.
            assert!(heads.try_reclaim(512));
            assert_eq!(heads.as_ptr(), heads_at);
        }
    }

    #[test]
    fn reads_status_headers_and_framing() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello");
        let head = parse(&mut buf, &mut BytesMut::new(), GET).unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.headers.get_all("x-a").iter().count(), 2);
        assert!(matches!(head.framing, Framing::Length(5)));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");
    }

    #[test]
    fn an_incomplete_head_waits_and_an_endless_one_fails() {
        assert!(parse_text("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse_text(&endless).is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(parse_text(&huge).is_err(), "a complete head over the limit is refused too");
    }

    #[test]
    fn chooses_body_framing_as_rfc_9112_says() {
        let framing = |text: &str| parse_text(text).unwrap().unwrap();
        let chunked = framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n");
        assert!(matches!(chunked.framing, Framing::Chunked(_)));
        assert!(!chunked.parts.headers.contains_key("content-length"), "TE overrides CL");
        assert!(parse_text("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").is_err(), "only chunked");
        assert!(!framing("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n").keep_alive);
        assert!(parse_text("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n").is_err(), "bare LF");
        let until_close = framing("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(until_close.framing, Framing::UntilClose) && !until_close.keep_alive);
        assert!(matches!(framing("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Done));
        assert!(matches!(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").framing, Framing::Done));
        let head_request = ResponseRules { head_request: true, ..GET };
        let head = parse(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
            &mut BytesMut::new(),
            head_request,
        );
        assert!(matches!(head.unwrap().unwrap().framing, Framing::Done), "a HEAD answer has no body");
    }

    #[test]
    fn connection_level_headers_are_consumed() {
        let head = parse_text(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nx-hop: 1\r\n\
             Transfer-Encoding: chunked\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nx-end: 2\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = head.parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-end"]);
        assert!(head.keep_alive);
        let switch =
            parse_text("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        let names: Vec<String> = switch.unwrap().unwrap().parts.headers.keys().map(|n| n.to_string()).collect();
        assert_eq!(names, ["upgrade"], "a switch keeps Upgrade for the proxy to pass on");
    }

    #[test]
    fn hidden_headers_are_dropped_whatever_their_case() {
        let rules = ResponseRules { head_request: false, hidden: &["server", "x-powered-by"] };
        let text = "HTTP/1.1 200 OK\r\nServer: uvicorn\r\nX-Powered-By: php\r\nX-Served: 1\r\nSERVER: b\r\n\r\n";
        let head = parse(&mut BytesMut::from(text), &mut BytesMut::new(), rules).unwrap().unwrap();
        let names: Vec<&str> = head.parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-served"]);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keep = |text: &str| parse_text(text).unwrap().unwrap().keep_alive;
        assert!(!keep("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"));
        assert!(!keep("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(keep("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"));
    }

    #[test]
    fn fuzz_response_heads_parse_or_are_refused_without_panic() {
        let seeds = crate::fuzzing::seeds(
            "response_head",
            &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\n",
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\nServer: uvicorn\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            ],
        );
        arbtest::arbtest(|u| {
            let input = crate::fuzzing::mutated(u, &seeds)?;
            let rules = ResponseRules { head_request: u.arbitrary()?, hidden: &["server"] };
            let mut buf = BytesMut::from(&input[..]);
            match parse(&mut buf, &mut BytesMut::new(), rules) {
                Ok(Some(head)) => {
                    assert!(buf.len() < input.len(), "a parsed head is consumed");
                    let consumed = &input[..input.len() - buf.len()];
                    assert!(!crate::fuzzing::has_bare_lf(consumed), "{:?}", String::from_utf8_lossy(consumed));
                    let headers = &head.parts.headers;
                    for hop in ["connection", "transfer-encoding", "keep-alive", "server"] {
                        assert!(!headers.contains_key(hop), "{hop} is the connection's own");
                    }
                    if matches!(head.framing, Framing::UntilClose) {
                        assert!(!head.keep_alive, "a body delimited by close ends the connection");
                    }
                }
                Ok(None) => assert_eq!(buf.len(), input.len(), "nothing is consumed before a whole head"),
                Err(error) => assert!(error.to_string().starts_with("invalid response from the backend")),
            }
            Ok(())
        });
    }

    #[test]
    fn rejects_broken_heads() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse_text(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            parse_text("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n").unwrap().unwrap().framing,
            Framing::Length(7)
        ));
    }

    #[test]
    fn response_heads_declare_their_framing() {
        let encode = |response: Response<TestBody>, answering: Answering| {
            let mut buf = BytesMut::new();
            let (parts, body) = response.into_parts();
            let (out, keep) = write(&mut buf, &parts, &body, answering);
            (String::from_utf8(buf.to_vec()).unwrap(), out, keep)
        };
        let get = Answering { head_request: false, version: Version::HTTP_11, keep_alive: true };
        let (text, out, keep) = encode(Response::new(TestBody::Left(Full::new(Bytes::from("hello")))), get);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n")
                && text.contains("content-length: 5\r\n")
                && text.contains("date: ")
        );
        assert!(out == ResponseFraming::Length(5) && keep);
        let mut closing = Response::new(TestBody::Right(Empty::new()));
        closing.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        let (text, _, keep) = encode(closing, get);
        assert!(text.contains("connection: close\r\n") && !keep);
        let old = Answering { version: Version::HTTP_10, ..get };
        let (text, _, _) = encode(Response::new(TestBody::Right(Empty::new())), old);
        assert!(text.contains("connection: keep-alive\r\n") && text.contains("content-length: 0\r\n"));
        let head = Answering { head_request: true, ..get };
        let (text, out, _) = encode(Response::new(TestBody::Left(Full::new(Bytes::from("hello")))), head);
        assert!(text.contains("content-length: 5\r\n") && out == ResponseFraming::None);
        // A declared length is the connection's to write, once; the first of several counts.
        let mut declared = Response::new(TestBody::Right(Empty::new()));
        declared.headers_mut().append(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        declared.headers_mut().append(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        let (text, out, _) = encode(declared, get);
        assert_eq!((text.matches("content-length").count(), out), (1, ResponseFraming::Length(7)), "{text}");
        // A switch of protocols keeps its `Connection: upgrade`.
        let mut switching = Response::new(TestBody::Right(Empty::new()));
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        switching.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        switching.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let (text, _, keep) = encode(switching, get);
        assert!(text.contains("connection: upgrade\r\n") && text.contains("upgrade: websocket\r\n") && keep, "{text}");
    }

    #[test]
    fn itoa_and_hex_write_numbers() {
        for value in [0u64, 7, 10, 255, 12345, u64::MAX] {
            assert_eq!(itoa(value, &mut [0; 20]), value.to_string().as_bytes());
            let small = value as usize;
            assert_eq!(hex(small, &mut [0; 16]), format!("{small:x}").as_bytes());
        }
    }
}

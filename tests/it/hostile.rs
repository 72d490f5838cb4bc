//! Hostile clients: raw-socket HTTP/1.1 probes (smuggling shapes, broken chunked bodies, uploads cut
//! short, oversized bodies, header floods) and frame-level HTTP/2 probes (rapid reset, CONTINUATION
//! flood, streams past the limit, a 70 KB header block, malformed pseudo-headers, `connection:`,
//! a zero window, resets during upload), over cleartext and TLS. After each one, a normal request
//! through the same one-server upstream must get 200 and the server must still be up: nothing a
//! client sends counts against a backend.

use crate::support::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client connection, cleartext or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type Conn = Box<dyn Stream>;

/// A gateway in front of one backend that reads every request body, over cleartext or TLS.
struct Target {
    gw: TestGateway,
    _backend: Backend,
    ca: Option<rustls::pki_types::CertificateDer<'static>>,
}

fn config(backend: &str, tls: bool) -> String {
    let tls = if tls { r#"tls = { cert = "gw.crt", key = "gw.key" }"# } else { "" };
    format!(
        r#"
[[upstream]]
name = "model"
servers = [{{ addr = "{backend}" }}]
max_fails = 1
fail_timeout = "60s"

[[server]]
listen = ["127.0.0.1:0"]
server_name = ["localhost"]
client_max_body_size = "1MB"
{tls}

  [[server.location]]
  prefix = "/"
  proxy = "model"
"#
    )
}

impl Target {
    async fn start(tls: bool) -> Target {
        // The backend reads the whole body before answering, so a body that breaks breaks its request.
        let backend = Backend::start(|request| async move {
            let body = request.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            http::Response::new(full(format!("read {body} bytes")))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = tls.then(|| write_cert(dir.path(), "gw", &["localhost"]));
        let gw = TestGateway::start_in(dir, &config(&backend.authority(), tls)).await;
        Target { gw, _backend: backend, ca }
    }

    /// A new connection, offering `alpn` over TLS.
    async fn connect(&self, alpn: &[u8]) -> Conn {
        let addr = self.gw.addr("127.0.0.1:0");
        match &self.ca {
            None => Box::new(TcpStream::connect(addr).await.unwrap()),
            Some(ca) => Box::new(tls_connect(addr, "localhost", ca, &[alpn], rustls::ALL_VERSIONS).await),
        }
    }

    /// A normal chat completion on a new connection, over HTTP/2 or HTTP/1.1: its status.
    async fn normal_request(&self, h2: bool) -> StatusCode {
        let request = Request::post("/v1/chat/completions")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(full(r#"{"model":"m","messages":[]}"#))
            .unwrap();
        let response = if h2 {
            let io = TokioIo::new(self.connect(b"h2").await);
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let io = TokioIo::new(self.connect(b"http/1.1").await);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        };
        collect(response).await.0
    }

    /// After a probe: a normal request gets 200, and the backend is still in rotation.
    async fn still_serves(&self, probe: &str, h2: bool) {
        // Whatever the probe left running on the gateway ends in a moment (resets, closes).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let server = &self.gw.gateway.runtime().upstreams["model"].servers[0];
        assert!(server.health.is_up(), "{probe}: the client's abuse marked the backend down");
        assert_eq!(self.normal_request(h2).await, StatusCode::OK, "{probe}: a normal request after it");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1

/// Writes `bytes` (ignoring a gateway that stops reading) and reads everything until the gateway
/// closes the connection; `None` if it keeps it open for 5 s.
async fn raw_exchange(mut conn: Conn, bytes: &[u8], half_close: bool) -> Option<String> {
    let write = async {
        let _ = conn.write_all(bytes).await;
        if half_close {
            let _ = conn.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 8192];
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// One raw HTTP/1.1 probe: what it sends, and the status line the gateway must answer with before
/// closing (`None`: it may also close without answering, as for a client that left).
struct Probe {
    name: &'static str,
    bytes: Vec<u8>,
    status: Option<&'static str>,
    /// Shut the write side after sending (an upload cut short).
    half_close: bool,
}

fn probe(name: &'static str, bytes: impl Into<Vec<u8>>, status: Option<&'static str>) -> Probe {
    Probe { name, bytes: bytes.into(), status, half_close: false }
}

const CHAT: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n";

fn http1_probes() -> Vec<Probe> {
    let big_chunked = {
        let mut bytes = format!("{CHAT}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
        for _ in 0..40 {
            bytes.extend_from_slice(format!("8000\r\n{}\r\n", "a".repeat(0x8000)).as_bytes());
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes
    };
    let extension_flood = {
        let mut bytes = format!("{CHAT}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
        for _ in 0..40 {
            bytes.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(1000)).as_bytes());
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes
    };
    vec![
        probe(
            "broken chunked body",
            format!("{CHAT}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"),
            Some("400"),
        ),
        probe(
            "chunk size with junk",
            format!("{CHAT}Transfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n"),
            Some("400"),
        ),
        probe(
            "bare LF in a chunk line",
            format!("{CHAT}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            Some("400"),
        ),
        probe("chunk extension flood", extension_flood, Some("400")),
        Probe {
            name: "upload cut short",
            bytes: format!("{CHAT}Content-Length: 100000\r\n\r\n{}", "a".repeat(1000)).into_bytes(),
            status: None,
            half_close: true,
        },
        Probe {
            name: "chunked upload cut short",
            bytes: format!("{CHAT}Transfer-Encoding: chunked\r\n\r\n100\r\nabc").into_bytes(),
            status: None,
            half_close: true,
        },
        probe("declared body over the limit", format!("{CHAT}Content-Length: 10000000\r\n\r\n"), Some("413")),
        probe("chunked body growing over the limit", big_chunked, Some("413")),
        probe("too many headers", format!("{CHAT}{}\r\n", "x-flood: 1\r\n".repeat(300)), Some("431")),
        probe("70 KB of headers", format!("{CHAT}x-big: {}\r\n\r\n", "b".repeat(70_000)), Some("431")),
        probe(
            "request line too long",
            format!("GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n", "p".repeat(70_000)),
            Some("414"),
        ),
        probe("gzip, chunked", format!("{CHAT}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), Some("501")),
        probe(
            "chunked twice",
            format!("{CHAT}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Some("501"),
        ),
        probe("xchunked", format!("{CHAT}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), Some("501")),
        probe("conflicting lengths", format!("{CHAT}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), Some("400")),
        probe("a signed length", format!("{CHAT}Content-Length: +3\r\n\r\nabc"), Some("400")),
        probe("bare LF in the head", "GET / HTTP/1.1\nHost: localhost\n\n", Some("400")),
        probe("obsolete line folding", "GET / HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n folded\r\n\r\n", Some("400")),
        probe("a NUL in a header value", "GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\0b\r\n\r\n", Some("400")),
        probe("a space before the colon", "GET / HTTP/1.1\r\nHost : localhost\r\n\r\n", Some("400")),
        probe("no Host", "GET / HTTP/1.1\r\n\r\n", Some("400")),
        probe("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Some("400")),
        probe("not HTTP", &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"[..], Some("400")),
    ]
}

async fn run_http1_probes(tls: bool) {
    let target = Target::start(tls).await;
    for probe in http1_probes() {
        let answer = raw_exchange(target.connect(b"http/1.1").await, &probe.bytes, probe.half_close).await;
        let answer = answer.unwrap_or_else(|| panic!("{}: the connection was left open", probe.name));
        if let Some(status) = probe.status {
            let expected = format!("HTTP/1.1 {status} ");
            assert!(answer.starts_with(&expected), "{}: expected {status}, got {answer:?}", probe.name);
            let status_lines = answer.split("\r\n").filter(|line| line.starts_with("HTTP/1.1 ")).count();
            assert_eq!(status_lines, 1, "{}: one answer, then close: {answer:?}", probe.name);
        }
        target.still_serves(probe.name, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_probes_over_cleartext_leave_the_backend_serving() {
    run_http1_probes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_probes_over_tls_leave_the_backend_serving() {
    run_http1_probes(true).await;
}

#[tokio::test]
async fn a_smuggled_request_behind_a_length_and_chunked_is_never_served() {
    let target = Target::start(false).await;
    // A front end reading Content-Length would see one request; chunked ends the first at `0`, and
    // what follows must not be served as a second request: the connection closes after the first.
    let bytes =
        format!("{CHAT}Content-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let answer = raw_exchange(target.connect(b"http/1.1").await, bytes.as_bytes(), false).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    let paths: Vec<String> =
        target._backend.seen.requests.lock().unwrap().iter().map(|r| r.uri.path().to_owned()).collect();
    assert_eq!(paths, ["/v1/chat/completions"]);
}

#[tokio::test]
async fn http1_0_with_a_transfer_coding_is_answered_and_closed() {
    let target = Target::start(false).await;
    let bytes = "POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let answer = raw_exchange(target.connect(b"http/1.1").await, bytes.as_bytes(), false).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("connection: close\r\n") && answer.ends_with("read 3 bytes"), "{answer}");
}

#[tokio::test]
async fn request_trailers_are_read_and_not_forwarded() {
    let target = Target::start(false).await;
    let bytes =
        format!("{CHAT}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 9\r\n\r\n");
    let answer = raw_exchange(target.connect(b"http/1.1").await, bytes.as_bytes(), false).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("read 3 bytes"), "{answer}");
    let seen = target._backend.seen.requests.lock().unwrap();
    assert!(!seen[0].headers.contains_key("x-checksum"), "trailers are dropped: {:?}", seen[0].headers);
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_own_authority() {
    let config = r#"
[[server]]
listen = ["127.0.0.1:0"]
server_name = ["a.test"]

  [[server.location]]
  prefix = "/"
  return = { status = 200, body = "site a" }

[[server]]
listen = ["127.0.0.1:0"]
server_name = ["b.test"]

  [[server.location]]
  prefix = "/"
  return = { status = 200, body = "site b" }
"#;
    let gw = TestGateway::start(config).await;
    let stream = TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
    let bytes = "GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(Box::new(stream), bytes.as_bytes(), false).await.unwrap();
    assert!(answer.ends_with("site b"), "RFC 9112 §3.2.2: the target's authority wins: {answer}");
}

// ---------------------------------------------------------------------------------------------
// HTTP/2, frame by frame

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One frame: a 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut bytes = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing, new names, no Huffman (RFC 7541 §6.2.2).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn request_fields<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path)]
}

/// The client preface with its settings (`settings`: pairs of id and value).
fn preface(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &payload));
    bytes
}

/// Sends `bytes` after the preface, then reads frames until the gateway closes or is quiet for
/// 300 ms; returns them.
async fn h2_exchange(mut conn: Conn, bytes: &[u8]) -> Vec<Frame> {
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.write_all(bytes)).await;
    let mut received = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let length = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let end = (9 + length).min(rest.len());
        frames.push(Frame { kind: rest[3], stream, payload: rest[9..end].to_vec() });
        rest = &rest[end..];
    }
    frames
}

/// A frame the gateway sent.
#[derive(Debug)]
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// One frame-level HTTP/2 probe: its bytes after the preface's SETTINGS, and what it checks of the
/// frames the gateway answered with.
struct H2Probe {
    name: &'static str,
    settings: Vec<(u16, u32)>,
    bytes: Vec<u8>,
    check: fn(&[Frame]) -> Result<(), String>,
}

fn anything(_: &[Frame]) -> Result<(), String> {
    Ok(())
}

/// Streams past the concurrency limit were refused (RST_STREAM with REFUSED_STREAM).
fn streams_refused(frames: &[Frame]) -> Result<(), String> {
    match frames.iter().any(|f| f.kind == RST_STREAM && f.payload == 7u32.to_be_bytes()) {
        true => Ok(()),
        false => Err(format!("no stream was refused: {} frames", frames.len())),
    }
}

/// The connection was ended with GOAWAY ENHANCE_YOUR_CALM (0xb), as h2 answers rapid reset.
fn calmed(frames: &[Frame]) -> Result<(), String> {
    match frames.iter().any(|f| f.kind == GOAWAY && f.payload.get(4..8) == Some(&0xbu32.to_be_bytes()[..])) {
        true => Ok(()),
        false => Err(format!("no GOAWAY ENHANCE_YOUR_CALM: {} frames", frames.len())),
    }
}

/// The request on stream 1 was refused (RST_STREAM or GOAWAY), never answered.
fn stream_1_refused(frames: &[Frame]) -> Result<(), String> {
    let answered = frames.iter().any(|f| f.kind == HEADERS && f.stream == 1);
    let refused = frames.iter().any(|f| (f.kind == RST_STREAM && f.stream == 1) || f.kind == GOAWAY);
    match (answered, refused) {
        (false, true) => Ok(()),
        _ => Err(format!("stream 1 was not refused: {frames:?}")),
    }
}

/// The request on stream 1 was refused, or answered 431 (its `:status` value "431", plain or in
/// HPACK's Huffman code: `0x83 0x69 0x90 0xff`).
fn stream_1_refused_or_431(frames: &[Frame]) -> Result<(), String> {
    let is_431 = |payload: &[u8]| payload.ends_with(b"\x03431") || payload.ends_with(&[0x83, 0x69, 0x90, 0xff]);
    let answered_431 = frames.iter().any(|f| f.kind == HEADERS && f.stream == 1 && is_431(&f.payload));
    match answered_431 {
        true => Ok(()),
        false => stream_1_refused(frames),
    }
}

fn h2_probes() -> Vec<H2Probe> {
    let get = |path: &str| hpack(&request_fields("GET", path));
    let post =
        hpack(&[request_fields("POST", "/v1/chat/completions"), vec![("content-type", "application/json")]].concat());

    let mut rapid_reset = Vec::new();
    for i in 0..500u32 {
        let stream = 1 + 2 * i;
        rapid_reset.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &get("/v1/models")));
        rapid_reset.extend(rst(stream, 0x8));
    }

    let mut continuation_flood = frame(HEADERS, 0, 1, &get("/"));
    let junk = hpack(&[("x-junk", &"j".repeat(1000))]);
    for _ in 0..2000 {
        continuation_flood.extend(frame(CONTINUATION, 0, 1, &junk));
    }

    let mut too_many_streams = Vec::new();
    for i in 0..306u32 {
        too_many_streams.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &post));
        too_many_streams.extend(frame(DATA, 0, 1 + 2 * i, b"{\"model\":"));
    }

    let big_block = hpack(&[request_fields("GET", "/"), vec![("x-big", &"b".repeat(70_000))]].concat());
    let mut big_header_block = Vec::new();
    let mut pieces = big_block.chunks(16_000).peekable();
    let mut kind = HEADERS;
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_none() { END_HEADERS | END_STREAM } else { 0 };
        big_header_block.extend(frame(kind, flags, 1, piece));
        kind = CONTINUATION;
    }

    let malformed = |fields: Vec<(&str, &str)>| frame(HEADERS, END_HEADERS | END_STREAM, 1, &hpack(&fields));
    let mut resets_during_upload = Vec::new();
    for i in 0..50u32 {
        let stream = 1 + 2 * i;
        resets_during_upload.extend(frame(HEADERS, END_HEADERS, stream, &post));
        resets_during_upload.extend(frame(DATA, 0, stream, &[b'a'; 1000]));
        resets_during_upload.extend(rst(stream, 0x8));
    }
    let mut zero_window = frame(HEADERS, END_HEADERS | END_STREAM, 1, &get("/v1/models"));
    zero_window.extend(frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()));

    vec![
        H2Probe { name: "rapid reset", settings: vec![], bytes: rapid_reset, check: calmed },
        H2Probe {
            name: "CONTINUATION flood",
            settings: vec![],
            bytes: continuation_flood,
            check: stream_1_refused_or_431,
        },
        H2Probe {
            name: "max streams + 50, bodies held",
            settings: vec![],
            bytes: too_many_streams,
            check: streams_refused,
        },
        H2Probe {
            name: "a 70 KB header block",
            settings: vec![],
            bytes: big_header_block,
            check: stream_1_refused_or_431,
        },
        H2Probe {
            name: "no :path",
            settings: vec![],
            bytes: malformed(vec![(":method", "GET"), (":scheme", "https"), (":authority", "localhost")]),
            check: stream_1_refused,
        },
        H2Probe {
            name: "an unknown pseudo-header",
            settings: vec![],
            bytes: malformed([request_fields("GET", "/"), vec![(":foo", "x")]].concat()),
            check: stream_1_refused,
        },
        H2Probe {
            name: "a pseudo-header after a regular one",
            settings: vec![],
            bytes: malformed(vec![(":method", "GET"), ("x-a", "1"), (":scheme", "https"), (":path", "/")]),
            check: stream_1_refused,
        },
        H2Probe {
            name: "an uppercase header name",
            settings: vec![],
            bytes: malformed([request_fields("GET", "/"), vec![("X-Upper", "1")]].concat()),
            check: stream_1_refused,
        },
        H2Probe {
            name: "connection: header (RFC 9113 §8.2.2)",
            settings: vec![],
            bytes: malformed([request_fields("GET", "/"), vec![("connection", "keep-alive")]].concat()),
            check: stream_1_refused,
        },
        H2Probe {
            name: "transfer-encoding header",
            settings: vec![],
            bytes: malformed([request_fields("POST", "/"), vec![("transfer-encoding", "chunked")]].concat()),
            check: stream_1_refused,
        },
        H2Probe {
            name: "te other than trailers",
            settings: vec![],
            bytes: malformed([request_fields("GET", "/"), vec![("te", "gzip")]].concat()),
            check: stream_1_refused,
        },
        // SETTINGS_INITIAL_WINDOW_SIZE = 0: the gateway can send no response body.
        H2Probe { name: "zero window", settings: vec![(0x4, 0)], bytes: zero_window, check: anything },
        H2Probe { name: "resets during upload", settings: vec![], bytes: resets_during_upload, check: anything },
    ]
}

async fn run_h2_probes(tls: bool) {
    let target = Target::start(tls).await;
    for probe in h2_probes() {
        let mut bytes = preface(&probe.settings);
        bytes.extend_from_slice(&probe.bytes);
        let frames = h2_exchange(target.connect(b"h2").await, &bytes).await;
        if let Err(problem) = (probe.check)(&frames) {
            panic!("{}: {problem}", probe.name);
        }
        target.still_serves(probe.name, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_probes_over_cleartext_leave_the_backend_serving() {
    run_h2_probes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_probes_over_tls_leave_the_backend_serving() {
    run_h2_probes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_reset_as_they_open_never_reach_the_backend() {
    let target = Target::start(false).await;
    let get = hpack(&request_fields("GET", "/v1/models"));
    let post = hpack(&request_fields("POST", "/v1/chat/completions"));
    let mut bytes = preface(&[]);
    for i in 0..100u32 {
        let stream = 1 + 2 * i;
        if i % 2 == 0 {
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &get));
        } else {
            bytes.extend(frame(HEADERS, END_HEADERS, stream, &post));
            bytes.extend(frame(DATA, 0, stream, b"{\"model\":"));
        }
        bytes.extend(rst(stream, 0x8));
    }
    h2_exchange(target.connect(b"h2").await, &bytes).await;
    assert_eq!(target._backend.request_count(), 0, "a stream reset with its head reaches no backend");
    target.still_serves("streams reset as they open", true).await;
}

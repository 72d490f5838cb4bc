//! The gateway's own HTTP/1.1 server, byte by byte from a raw client socket: pipelined requests,
//! HTTP/1.0 keep-alive rules, `Expect: 100-continue`, chunked request bodies, HEAD, and malformed
//! heads.

use crate::support::*;
use http::Response;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend that answers `METHOD PATH BODY`.
async fn echo_backend() -> Backend {
    Backend::start(|request| async move {
        let line = format!("{} {} ", request.method(), request.uri().path());
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(format!("{line}{}", String::from_utf8_lossy(&body))))
    })
    .await
}

async fn gateway() -> (TestGateway, Backend, TcpStream) {
    let backend = echo_backend().await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let stream = TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
    (gw, backend, stream)
}

/// Reads until `count` complete responses with a `content-length` arrived (or the peer closed).
async fn read_responses(stream: &mut TcpStream, count: usize) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let complete = |text: &str| {
        let mut rest = text;
        for _ in 0..count {
            let Some(end) = rest.find("\r\n\r\n") else { return false };
            let head = &rest[..end];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            let body_start = end + 4;
            if rest.len() < body_start + length {
                return false;
            }
            rest = &rest[body_start + length..];
        }
        true
    };
    while !complete(&String::from_utf8_lossy(&received)) {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.expect("no answer");
        match read.unwrap() {
            0 => break,
            n => received.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8(received).unwrap()
}

/// Sends `request` and reads until the gateway closes the connection.
async fn answer_then_close(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (_gw, backend, mut stream) = gateway().await;
    let two = "GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody";
    stream.write_all(two.as_bytes()).await.unwrap();
    let answers = read_responses(&mut stream, 2).await;
    let first = answers.find("GET /first ").expect(&answers);
    let second = answers.find("POST /second body").expect(&answers);
    assert!(first < second, "{answers}");
    assert_eq!(answers.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answers}");
    // The connection is still open for a third.
    stream.write_all(b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_responses(&mut stream, 1).await.contains("GET /third "));
    assert_eq!(backend.request_count(), 3);
}

#[tokio::test]
async fn a_large_request_on_an_idle_kept_alive_connection_arrives_whole() {
    // Between requests the connection holds no read buffer; the next request's first bytes are read
    // onto the stack. A head and body far larger than that first read must still arrive intact.
    let (_gw, _backend, mut stream) = gateway().await;
    stream.write_all(b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_responses(&mut stream, 1).await.contains("GET /small "));
    let body: String = (0..10_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let large = format!(
        "POST /large HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "p".repeat(6_000),
        body.len()
    );
    stream.write_all(large.as_bytes()).await.unwrap();
    let answer = read_responses(&mut stream, 1).await;
    assert!(answer.ends_with(&format!("POST /large {body}")), "{}", &answer[..answer.len().min(300)]);
    stream.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    assert!(read_responses(&mut stream, 1).await.contains("GET /after "));
}

#[tokio::test]
async fn http_1_0_clients_keep_alive_only_when_they_ask() {
    let (gw, _backend, mut stream) = gateway().await;
    let answer = answer_then_close(&mut stream, b"GET /once HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(answer.contains("connection: close\r\n") && answer.ends_with("GET /once "), "{answer}");

    let mut stream = TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
    stream.write_all(b"GET /kept HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let answer = read_responses(&mut stream, 1).await;
    assert!(answer.contains("connection: keep-alive\r\n"), "{answer}");
    stream.write_all(b"GET /again HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    assert!(read_responses(&mut stream, 1).await.contains("GET /again "));
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (_gw, _backend, mut stream) = gateway().await;
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim)).await.unwrap().unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    assert!(read_responses(&mut stream, 1).await.ends_with("POST /upload hello"));
}

#[tokio::test]
async fn a_chunked_request_body_is_decoded_and_passed_on() {
    let (_gw, _backend, mut stream) = gateway().await;
    let request = "POST /chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_responses(&mut stream, 1).await;
    assert!(answer.ends_with("POST /chunks hello world"), "{answer}");
}

#[tokio::test]
async fn head_is_answered_with_the_length_and_no_body() {
    let (_gw, _backend, mut stream) = gateway().await;
    stream.write_all(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("GET /after ") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(received).unwrap();
    let (head_answer, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head_answer.contains("content-length: "), "{head_answer}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "the HEAD answer carried a body: {rest}");
}

#[tokio::test]
async fn malformed_heads_are_answered_400_and_the_connection_closes() {
    let (gw, backend, mut stream) = gateway().await;
    let answer = answer_then_close(&mut stream, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n") && answer.contains("connection: close"), "{answer}");

    let mut stream = TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
    let smuggled = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let answer = answer_then_close(&mut stream, smuggled.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    // RFC 9112 §3.2, as nginx: an HTTP/1.1 request names its host, once.
    for (head, why) in [
        ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 request without Host header"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "duplicate Host header"),
    ] {
        let mut stream = TcpStream::connect(gw.addr("127.0.0.1:0")).await.unwrap();
        let answer = answer_then_close(&mut stream, head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains(why), "{answer}");
    }
    assert_eq!(backend.request_count(), 0, "nothing malformed reached the backend");
}

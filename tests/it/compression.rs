//! Response compression: gzip, br and zstd by the client's q-values, streamed, and never applied to
//! event streams, encoded bodies, `no-transform`, ranges, HEAD, small bodies or unlisted types.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// About 20 KB of chat-completion-like JSON.
fn json_body() -> String {
    let choices: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"index":{i},"message":{{"role":"assistant","content":"token {i}"}}}}"#))
        .collect();
    format!(r#"{{"object":"chat.completion","choices":[{}]}}"#, choices.join(","))
}

/// A backend answering by path: `/json`, `/sse`, `/small`, `/encoded`, `/no-transform`, `/range`,
/// `/png`; each with the header its name says.
async fn backend() -> Backend {
    Backend::start(|request| async move {
        let (content_type, extra, body) = match request.uri().path() {
            "/sse" => ("text/event-stream", None, "data: x\n\n".repeat(500)),
            "/small" => ("application/json", None, r#"{"ok":true}"#.to_string()),
            "/encoded" => ("application/json", Some(("content-encoding", "gzip")), json_body()),
            "/no-transform" => ("application/json", Some(("cache-control", "public, no-transform")), json_body()),
            "/range" => ("application/json", Some(("content-range", "bytes 0-99/20000")), json_body()),
            "/png" => ("image/png", None, json_body()),
            _ => ("application/json; charset=utf-8", Some(("etag", "\"v1\"")), json_body()),
        };
        let mut response = Response::builder().header("content-type", content_type);
        if let Some((name, value)) = extra {
            response = response.header(name, value);
        }
        response.body(full(body)).unwrap()
    })
    .await
}

fn config(backend: &Backend) -> String {
    proxy_config(&backend.authority(), "").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\ncompress = { types = [\"application/json\", \"text/plain\", \"text/event-stream\"] }",
    )
}

fn request(method: &str, path: &str, accept: &str) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "h")
        .header("accept-encoding", accept)
        .body(full(""))
        .unwrap()
}

async fn fetch_raw(
    client: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    request: Request<TestBody>,
) -> (http::response::Parts, Bytes) {
    let (parts, body) = client.send_request(request).await.unwrap().into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

fn decode(coding: &str, bytes: &[u8]) -> String {
    let mut text = String::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(bytes).read_to_string(&mut text).unwrap(),
        "br" => brotli::Decompressor::new(bytes, 4096).read_to_string(&mut text).unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(bytes).unwrap().read_to_string(&mut text).unwrap(),
        other => panic!("unexpected coding {other}"),
    };
    text
}

#[tokio::test]
async fn each_coding_is_chosen_by_q_values_and_round_trips() {
    let backend = backend().await;
    let gw = TestGateway::start(&config(&backend)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let cases = [
        ("gzip, deflate", "gzip"),
        ("gzip, deflate, br", "br"),
        ("gzip, br, zstd", "zstd"),
        ("zstd;q=0.5, gzip;q=0.8", "gzip"),
    ];
    for (accept, expected) in cases {
        let (parts, body) = fetch_raw(&mut client, request("GET", "/json", accept)).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-encoding"], expected, "for {accept}");
        assert_eq!(parts.headers["vary"], "Accept-Encoding");
        assert_eq!(parts.headers["etag"], "W/\"v1\"", "a strong validator becomes weak");
        assert!(!parts.headers.contains_key("content-length"));
        assert!(body.len() < 20_000 / 4, "{expected}: {} bytes", body.len());
        assert_eq!(decode(expected, &body), json_body());
    }
    // A client accepting nothing offered gets the body as it is, still with Vary.
    let (parts, body) = fetch_raw(&mut client, request("GET", "/json", "identity")).await;
    assert!(!parts.headers.contains_key("content-encoding"));
    assert_eq!(parts.headers["vary"], "Accept-Encoding");
    assert_eq!(body, json_body());
}

#[tokio::test]
async fn what_must_not_be_compressed_is_sent_as_it_is() {
    let backend = backend().await;
    let gw = TestGateway::start(&config(&backend)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for path in ["/sse", "/small", "/encoded", "/no-transform", "/range", "/png"] {
        let (parts, body) = fetch_raw(&mut client, request("GET", path, "gzip")).await;
        let encoding = parts.headers.get("content-encoding").map(|v| v.to_str().unwrap());
        let expected = if path == "/encoded" { Some("gzip") } else { None };
        assert_eq!(encoding, expected, "{path}");
        assert!(path == "/encoded" || !body.starts_with(&[0x1f, 0x8b]), "{path} was compressed");
    }
    let (parts, body) = fetch_raw(&mut client, request("HEAD", "/json", "gzip")).await;
    assert!(!parts.headers.contains_key("content-encoding"));
    assert!(body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_stream_is_flushed_as_it_goes() {
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let chunks_rx = Arc::new(Mutex::new(Some(chunks_rx)));
    let backend = Backend::start(move |_| {
        let mut rx = chunks_rx.lock().unwrap().take().unwrap();
        async move {
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Response::builder()
                .header("content-type", "application/json")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
    })
    .await;
    let gw = TestGateway::start(&config(&backend)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let first_line = format!("{}\n", json_body());
    chunks_tx.send(Ok(Frame::data(Bytes::from(first_line.clone())))).await.unwrap();
    let response = client.send_request(request("GET", "/lines", "gzip")).await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let mut body = response.into_body();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    // The first line decodes completely before the backend sends anything more.
    while decoder.get_ref().len() < first_line.len() {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
        decoder.write_all(frame.data_ref().unwrap()).unwrap();
        decoder.flush().unwrap();
    }
    assert_eq!(decoder.get_ref().as_slice(), first_line.as_bytes());
    chunks_tx.send(Ok(Frame::data(Bytes::from_static(b"{\"last\":true}\n")))).await.unwrap();
    drop(chunks_tx);
    while let Some(frame) = body.frame().await {
        decoder.write_all(frame.unwrap().data_ref().unwrap()).unwrap();
    }
    let all = decoder.finish().unwrap();
    assert_eq!(String::from_utf8(all).unwrap(), format!("{first_line}{{\"last\":true}}\n"));
}

#[tokio::test]
async fn bad_compress_settings_are_located_config_errors() {
    let source = infergate::config::Source {
        name: "t.toml".into(),
        dir: ".".into(),
        text: "[[server]]\nlisten = [\"127.0.0.1:0\"]\ncompress = { encodings = [\"lz4\"], gzip_level = 12 }\n".into(),
    };
    let errors = infergate::config::load(&source).unwrap_err().to_string();
    assert!(errors.contains("t.toml:3:27: unknown coding \"lz4\""), "{errors}");
    assert!(errors.contains("t.toml:3:48: gzip_level 12 out of range (1-9)"), "{errors}");
}

//! HTTP/1.1 towards the backend as it is on the wire: how request bodies are framed, and every way a
//! backend may frame (or break) its answer, from raw-socket backends.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::convert::Infallible;
use std::sync::atomic::Ordering;

/// How a raw backend answers a request.
type RawAnswer = fn(&[u8]) -> Vec<u8>;

const OK_TWO_BYTES: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

async fn gateway_for(backend: &RawBackend) -> TestGateway {
    TestGateway::start(&proxy_config(&backend.addr.to_string(), "")).await
}

#[tokio::test]
async fn informational_answers_are_skipped() {
    let backend = RawBackend::start(RawMode::default(), |_| {
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
            .to_vec()
    })
    .await;
    let gw = gateway_for(&backend).await;
    let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "final"));
}

#[tokio::test]
async fn a_chunked_answer_with_trailers_is_decoded_and_the_connection_kept() {
    let backend = RawBackend::start(RawMode::default(), |_| {
        // Content-Length next to chunked is overridden (RFC 9112 §6.3) and must not reach the client.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n"
            .to_vec()
    })
    .await;
    let gw = gateway_for(&backend).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for _ in 0..3 {
        let (status, headers, body) = send(&mut client, get("/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello world"));
        assert!(headers.get("content-length").is_none_or(|v| v == "11"), "{headers:?}");
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "the connection is reused");
}

#[tokio::test]
async fn a_body_delimited_by_close_is_forwarded_whole() {
    let backend = RawBackend::start(RawMode::CLOSING, |_| {
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the very end".to_vec()
    })
    .await;
    let gw = gateway_for(&backend).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for _ in 0..2 {
        let (status, _, body) = send(&mut client, get("/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "until the very end"));
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2, "never reused");
}

#[tokio::test]
async fn broken_answers_are_502_with_what_went_wrong() {
    let backend = RawBackend::start(RawMode::CLOSING, |request| {
        if request.starts_with(b"GET /not-http") {
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx".to_vec()
        }
    })
    .await;
    // Passive health off, so the first failure does not take the only server out.
    let gw = TestGateway::start(&proxy_config(&backend.addr.to_string(), "max_fails = 0")).await;
    for (path, expected) in
        [("/not-http", "invalid response from the backend"), ("/two-lengths", "conflicting Content-Length")]
    {
        let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), path).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains(expected), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_body_cut_short_never_ends_cleanly_for_the_client() {
    let backend =
        RawBackend::start(RawMode::CLOSING, |_| b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n1234".to_vec()).await;
    let gw = gateway_for(&backend).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    client.ready().await.unwrap();
    // The client may get the head and then an error, or (the cut coming first) no head at all.
    if let Ok(response) = client.send_request(get("/")).await {
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err(), "4 of 10 bytes must not look complete");
    }
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    let backend = RawBackend::start(RawMode::default(), |_| OK_TWO_BYTES.to_vec()).await;
    let gw = gateway_for(&backend).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let post = |body: TestBody| Request::post("/v1/x").header("host", "localhost").body(body).unwrap();
    send(&mut client, get("/")).await;
    send(&mut client, post(full(""))).await;
    send(&mut client, post(full("{\"a\":1}"))).await;
    // A body of unknown length, as a chunked upload or an HTTP/2 client without Content-Length.
    let frames = ["first ", "second"].map(|piece| Ok::<_, Infallible>(Frame::data(Bytes::from(piece))));
    send(&mut client, post(StreamBody::new(futures_util::stream::iter(frames)).boxed())).await;

    let requests = backend.requests();
    assert_eq!(requests.len(), 4);
    let head = |i: usize| requests[i].split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(!head(0).contains("content-length") && !head(0).contains("transfer-encoding"), "{}", requests[0]);
    assert!(head(1).contains("content-length: 0"), "{}", requests[1]);
    assert!(head(2).contains("content-length: 7") && requests[2].ends_with("\r\n\r\n{\"a\":1}"), "{}", requests[2]);
    assert!(head(3).contains("transfer-encoding: chunked") && !head(3).contains("content-length"), "{}", requests[3]);
    let body = &requests[3][requests[3].find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, "6\r\nfirst \r\n6\r\nsecond\r\n0\r\n\r\n");
}

#[tokio::test]
async fn an_answer_before_the_whole_upload_reaches_the_client() {
    // A backend refusing an upload after its head, as a model server does for an oversized image.
    let backend = RawBackend::start(RawMode { answer_before_body: true, ..RawMode::default() }, |_| {
        b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!".to_vec()
    })
    .await;
    let gw = gateway_for(&backend).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let upload = Request::post("/v1/x").header("host", "localhost").body(full(vec![b'x'; 4 << 20])).unwrap();
    client.ready().await.unwrap();
    let response = client.send_request(upload).await.unwrap();
    let (status, _, body) = collect(response).await;
    assert_eq!((status, body.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too big!"));
}

#[tokio::test]
async fn large_bodies_cross_whole_both_ways() {
    // Bodies far larger than socket buffers, so every write and read is partial somewhere: the
    // backend answers with the checksum of what it got, then a body of its own.
    let backend = Backend::start(|request: Request<hyper::body::Incoming>| async move {
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
        let mut answer = format!("{} {sum}\n", bytes.len()).into_bytes();
        answer.extend((0..3 << 20).map(|i: u32| (i % 251) as u8));
        http::Response::new(full(answer))
    })
    .await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let upload: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8).collect();
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    let expected_head = format!("{} {sum}\n", upload.len());
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> =
        upload.chunks(100_000).map(|piece| Ok(Frame::data(Bytes::copy_from_slice(piece)))).collect();
    for body in [full(upload.clone()), StreamBody::new(futures_util::stream::iter(chunks)).boxed()] {
        let request = Request::post("/v1/upload").header("host", "localhost").body(body).unwrap();
        client.ready().await.unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert!(answer.starts_with(expected_head.as_bytes()), "{:?}", String::from_utf8_lossy(&answer[..40]));
        let tail = &answer[expected_head.len()..];
        assert_eq!(tail.len(), 3 << 20);
        assert!(tail.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "the download arrived intact");
    }
}

#[tokio::test]
async fn a_backend_breaking_the_framing_rules_is_answered_502_or_cut() {
    // Heads no proxy may pass on: each is a 502 with the backend named as the culprit.
    let heads: [RawAnswer; 3] = [
        |_| b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
        |_| b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok".to_vec(),
        |_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
    ];
    for answer in heads {
        let backend = RawBackend::start(RawMode::CLOSING, answer).await;
        let gw = gateway_for(&backend).await;
        let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("invalid response from the backend"), "{body}");
    }
    // A chunk-size line with junk after the size, or extensions past 16 KiB: the body is cut.
    let bodies: [RawAnswer; 2] = [
        |_| b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n".to_vec(),
        |_| {
            let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..20 {
                answer.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(1000)).as_bytes());
            }
            answer.extend_from_slice(b"0\r\n\r\n");
            answer
        },
    ];
    for answer in bodies {
        let backend = RawBackend::start(RawMode::CLOSING, answer).await;
        let gw = gateway_for(&backend).await;
        let mut client = http1(gw.addr("127.0.0.1:0")).await;
        client.ready().await.unwrap();
        if let Ok(response) = client.send_request(get("/")).await {
            assert!(response.into_body().collect().await.is_err(), "a broken chunked body never ends cleanly");
        }
    }
}

//! Streaming: every response frame reaches the client as it arrives, even with the seed's
//! `proxy_buffering on`, and a client that leaves makes the backend see the disconnect.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Generous guard against a hang; never reached when the gateway streams.
const GUARD: Duration = Duration::from_secs(10);

/// A backend whose SSE response sends what the test pushes into the returned channel; the sender
/// side is handed over when the request arrives.
async fn sse_backend() -> (Backend, mpsc::Receiver<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>) {
    let (handoff_tx, handoff_rx) = mpsc::channel(4);
    let handoff = Arc::new(Mutex::new(handoff_tx));
    let backend = Backend::start(move |_| {
        let handoff = handoff.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
            let sender = handoff.lock().unwrap().clone();
            sender.send(tx).await.unwrap();
            let body = StreamBody::new(tokio_stream_from(rx)).boxed();
            Response::builder().header("content-type", "text/event-stream").body(body).unwrap()
        }
    })
    .await;
    (backend, handoff_rx)
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

const BUFFERED_LOCATION: &str = r#"
[[upstream]]
name = "backend"
servers = [{ addr = "BACKEND" }]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "backend"
  proxy_buffering = true
  proxy_buffer_size = "16k"
  proxy_buffers = "8 32k"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_event_one_arrives_before_the_backend_sends_event_two() {
    let (backend, mut streams) = sse_backend().await;
    let gw = TestGateway::start(&BUFFERED_LOCATION.replace("BACKEND", &backend.authority())).await;
    for client_kind in ["http1", "h2"] {
        let request = Request::post("http://localhost/v1/chat/completions")
            .header("host", "localhost")
            .body(full(r#"{"stream":true}"#))
            .unwrap();
        let response = match client_kind {
            "http1" => http1(gw.addr("127.0.0.1:0")).await.send_request(request).await.unwrap(),
            _ => h2c(gw.addr("127.0.0.1:0")).await.send_request(request).await.unwrap(),
        };
        let events = tokio::time::timeout(GUARD, streams.recv()).await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        events.send(Ok(Frame::data(Bytes::from_static(b"data: {\"token\":\"Hel\"}\n\n")))).await.unwrap();
        let first = tokio::time::timeout(GUARD, body.frame()).await.expect("event 1 was held back").unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: {\"token\":\"Hel\"}\n\n", "{client_kind}");
        // Only now does the backend produce event 2.
        events.send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))).await.unwrap();
        drop(events);
        let rest = tokio::time::timeout(GUARD, body.collect()).await.unwrap().unwrap().to_bytes();
        assert_eq!(rest, "data: [DONE]\n\n", "{client_kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sees_the_disconnect_when_the_client_leaves_mid_stream() {
    let (backend, mut streams) = sse_backend().await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    for client_kind in ["http1", "h2"] {
        let request = Request::get("http://localhost/stream").header("host", "localhost").body(full("")).unwrap();
        let mut body = match client_kind {
            "http1" => http1(gw.addr("127.0.0.1:0")).await.send_request(request).await.unwrap().into_body(),
            _ => h2c(gw.addr("127.0.0.1:0")).await.send_request(request).await.unwrap().into_body(),
        };
        let events = tokio::time::timeout(GUARD, streams.recv()).await.unwrap().unwrap();
        events.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n")))).await.unwrap();
        tokio::time::timeout(GUARD, body.frame()).await.unwrap().unwrap().unwrap();
        // The client goes away: the HTTP/1.1 connection closes, or the HTTP/2 stream is reset.
        drop(body);
        tokio::time::timeout(GUARD, events.closed())
            .await
            .unwrap_or_else(|_| panic!("{client_kind}: backend never saw the disconnect"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_sees_the_disconnect_when_the_client_leaves_before_the_answer() {
    // The backend is "in prefill": it holds the request without answering.
    let (entered_tx, mut entered_rx) = mpsc::channel::<mpsc::Sender<()>>(1);
    let backend = Backend::start(move |_| {
        let entered_tx = entered_tx.clone();
        async move {
            let (alive_tx, _alive_rx) = mpsc::channel::<()>(1);
            entered_tx.send(alive_tx.clone()).await.unwrap();
            // Dropped (and so observed closed) only when hyper drops this future: the client left.
            std::future::pending::<()>().await;
            drop(alive_tx);
            Response::new(full("never"))
        }
    })
    .await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let pending = tokio::spawn(async move { client.send_request(get("/v1/chat")).await });
    let alive = tokio::time::timeout(GUARD, entered_rx.recv()).await.unwrap().unwrap();
    pending.abort();
    let _ = pending.await;
    tokio::time::timeout(GUARD, alive.closed()).await.expect("backend never saw the client leave");
}

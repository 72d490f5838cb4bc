//! Request body limits (`client_max_body_size`) and header edits (`proxy_set_header`,
//! `proxy_hide_header`, `add_header` inheritance) end to end.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

/// A backend answering with the number of body bytes it read.
async fn counting_backend() -> Backend {
    Backend::start(|request| async move {
        match request.into_body().collect().await {
            Ok(body) => Response::new(full(body.to_bytes().len().to_string())),
            Err(_) => Response::new(full("body cut off")),
        }
    })
    .await
}

fn limited_config(backend: &Backend) -> String {
    proxy_config(&backend.authority(), "")
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:0\"]\nclient_max_body_size = \"1k\"")
        + r#"
  [[server.location]]
  prefix = "/big"
  proxy = "backend"
  client_max_body_size = "4k"
"#
}

fn post(path: &str, body: TestBody) -> Request<TestBody> {
    Request::post(path).header("host", "h").body(body).unwrap()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_answered_413_before_the_backend_sees_anything() {
    let backend = counting_backend().await;
    let gw = TestGateway::start(&limited_config(&backend)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let (status, headers, body) = send(&mut client, post("/v1/chat", full(vec![b'x'; 1025]))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers["content-type"], "application/json");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "body_too_large");
    assert_eq!(backend.request_count(), 0);

    // At the limit it passes, and a location may allow more than its server.
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    assert_eq!(send(&mut client, post("/v1/chat", full(vec![b'x'; 1024]))).await.2, "1024");
    assert_eq!(send(&mut client, post("/big", full(vec![b'x'; 3000]))).await.2, "3000");
    assert_eq!(send(&mut client, post("/big", full(vec![b'x'; 5000]))).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_chunked_body_is_cut_off_with_413_once_it_passes_the_limit() {
    let backend = counting_backend().await;
    let gw = TestGateway::start(&limited_config(&backend)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let (chunks, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((Ok(Frame::data(chunk)), receiver))
    });
    let request = post("/v1/chat", StreamBody::new(stream).boxed());
    let response = tokio::spawn(client.send_request(request));
    chunks.send(Bytes::from(vec![b'x'; 600])).await.unwrap();
    chunks.send(Bytes::from(vec![b'x'; 600])).await.unwrap();
    // The client never finishes its body: the answer comes as soon as the limit is passed.
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["message"], "request body larger than 1024 bytes");
    drop(chunks);
}

#[tokio::test]
async fn header_edits_apply_to_requests_and_responses_with_inheritance() {
    let backend = Backend::start(|_| async {
        Response::builder().header("x-internal", "secret").header("x-kept", "1").body(full("ok")).unwrap()
    })
    .await;
    let config = proxy_config(&backend.authority(), "").replace(
        "listen = [\"127.0.0.1:0\"]",
        r#"listen = ["127.0.0.1:0"]
add_header = { "Strict-Transport-Security" = "max-age=31536000" }
proxy_set_header = { "X-Team" = "vision", "User-Agent" = "" }
proxy_hide_header = ["X-Internal"]"#,
    ) + r#"
  [[server.location]]
  prefix = "/own"
  proxy = "backend"
  add_header = { "Cache-Control" = "no-store" }
  add_header_inherit = false
  proxy_set_header = { "X-Team" = "own" }
"#;
    let gw = TestGateway::start(&config).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let request = Request::get("/v1/x").header("host", "h").header("user-agent", "curl").body(full("")).unwrap();
    let (status, headers, _) = send(&mut client, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("x-internal"), "{headers:?}");
    assert_eq!(headers["x-kept"], "1");
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    let (_, headers, _) = send(&mut client, get("/own")).await;
    assert_eq!(headers["cache-control"], "no-store");
    assert!(!headers.contains_key("strict-transport-security"), "opted out of the server's headers");
    assert_eq!(headers["x-internal"], "secret", "the server's proxy_hide_header is not inherited either");

    let seen = backend.seen.requests.lock().unwrap();
    assert_eq!(seen[0].headers["x-team"], "vision");
    assert!(!seen[0].headers.contains_key("user-agent"));
    assert_eq!(seen[1].headers["x-team"], "own", "request edits always add to the server's");
}

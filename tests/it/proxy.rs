//! Proxying: forwarding headers, hop-by-hop stripping, HTTP/2 clients, pooled upstream connections,
//! and the answers when the backend fails.

use crate::support::*;
use http::{Request, Response, StatusCode};

#[tokio::test]
async fn forwards_and_rewrites_headers_both_ways() {
    let backend = Backend::start(|_| async {
        Response::builder()
            .header("server", "uvicorn")
            .header("x-powered-by", "FastAPI")
            .header("date", "Thu, 01 Jan 1970 00:00:00 GMT")
            .header("connection", "x-internal")
            .header("x-internal", "secret")
            .header("x-model", "glm")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let addr = gw.addr("127.0.0.1:0");
    let mut client = http1(addr).await;
    let request = Request::get("/v1/chat?x=1")
        .header("host", "api.example.com:8443")
        .header("x-forwarded-for", "203.0.113.7")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "drop me")
        .header("keep-alive", "timeout=5")
        .header("x-app", "kept")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(&mut client, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok");
    assert_eq!(headers["x-model"], "glm");
    for hidden in ["server", "x-powered-by", "x-internal"] {
        assert!(!headers.contains_key(hidden), "{hidden} reached the client");
    }
    let date = headers.get_all("date").iter().collect::<Vec<_>>();
    assert!(date.len() == 1 && date[0] != "Thu, 01 Jan 1970 00:00:00 GMT", "the gateway's own Date: {date:?}");
    let seen = backend.seen.requests.lock().unwrap();
    let head = &seen[0];
    assert_eq!(head.uri, "/v1/chat?x=1");
    assert_eq!(head.headers["host"], "api.example.com:8443");
    assert_eq!(head.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(head.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(head.headers["x-forwarded-proto"], "http");
    assert_eq!(head.headers["x-app"], "kept");
    for hop in ["x-hop", "keep-alive"] {
        assert!(!head.headers.contains_key(hop), "{hop} reached the backend");
    }
}

#[tokio::test]
async fn serves_http2_clients_in_cleartext() {
    let backend = Backend::hello().await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let mut client = h2c(gw.addr("127.0.0.1:0")).await;
    let request =
        Request::get(format!("http://localhost:{}/h2", gw.addr("127.0.0.1:0").port())).body(full("")).unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (status, _, body) = collect(response).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from backend"));
    let seen = backend.seen.requests.lock().unwrap();
    assert_eq!(seen[0].version, http::Version::HTTP_11, "the backend speaks HTTP/1.1");
    assert_eq!(seen[0].headers["host"], format!("localhost:{}", gw.addr("127.0.0.1:0").port()));
}

#[tokio::test]
async fn reuses_pooled_upstream_connections() {
    let backend = Backend::hello().await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for _ in 0..20 {
        let (status, _, _) = send(&mut client, get("/")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(backend.seen.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_backend_that_closes_pooled_connections_costs_no_request() {
    // Like a backend whose keep-alive ran out: it answers, then closes the connection without
    // saying so. The pool must notice or retry on a fresh connection, never answer 502.
    let closing =
        RawBackend::start(RawMode::CLOSING, |_| b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nokay".to_vec()).await;
    let gw = TestGateway::start(&proxy_config(&closing.addr.to_string(), "")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for i in 0..50 {
        let (status, _, body) = send(&mut client, get("/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "okay"), "request {i}");
    }
}

#[tokio::test]
async fn refused_upstream_answers_502_json() {
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let gw = TestGateway::start(&proxy_config(&addr.to_string(), "")).await;
    let (status, headers, body) = fetch(gw.addr("127.0.0.1:0"), "/v1/chat").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "upstream_unreachable");
    assert!(json["error"]["message"].as_str().unwrap().contains(&addr.to_string()));
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_travel_both_ways() {
    let backend = Backend::hello().await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let request = Request::get("/").header("host", "h").header("x-request-id", "trace-42").body(full("")).unwrap();
    let (_, headers, _) = send(&mut client, request).await;
    assert_eq!(headers["x-request-id"], "trace-42");
    let (_, headers, _) = send(&mut client, get("/")).await;
    let made = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32);
    let seen = backend.seen.requests.lock().unwrap();
    assert_eq!(seen[0].headers["x-request-id"], "trace-42");
    assert_eq!(seen[1].headers["x-request-id"], made.as_str(), "the backend got the same id");
}

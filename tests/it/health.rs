//! Passive health and retries across servers: a dead server costs no request that had not started,
//! is skipped for `fail_timeout`, and with every server down the answer is an immediate 503.

use crate::support::*;
use http::{Response, StatusCode};
use infergate::sim::engine::LatencyModel;
use infergate::sim::{Sim, SimOptions};
use serde_json::json;

fn two_servers(a: &str, b: &str, extra: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "model"
servers = [{{ addr = "{a}" }}, {{ addr = "{b}" }}]
max_fails = 1
fail_timeout = "10s"
{extra}

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "model"
"#
    )
}

async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[tokio::test]
async fn a_dead_server_is_skipped_and_no_request_fails() {
    let alive = Backend::hello().await;
    let gw = TestGateway::start(&two_servers(&closed_port().await, &alive.authority(), "")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for i in 0..10 {
        let (status, _, body) = send(&mut client, get("/v1/models")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from backend"), "request {i}");
    }
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    assert!(!upstream.servers[0].health.is_up(), "the dead server is marked down");
    assert!(upstream.servers[1].health.is_up());
}

#[tokio::test]
async fn a_bodiless_request_answered_502_goes_to_the_other_server() {
    let failing = Backend::start(|_| async {
        let mut response = Response::new(full("bad gateway"));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
    })
    .await;
    let good = Backend::hello().await;
    let gw = TestGateway::start(&two_servers(&failing.authority(), &good.authority(), "")).await;
    let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/v1/models").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from backend"));
    assert_eq!(failing.request_count() + good.request_count(), 1 + usize::from(failing.request_count() == 1));
}

#[tokio::test(start_paused = true)]
async fn with_every_server_down_the_answer_is_an_immediate_503() {
    let gw = TestGateway::start(&two_servers(&closed_port().await, &closed_port().await, "")).await;
    let addr = gw.addr("127.0.0.1:0");
    let (status, _, _) = fetch(addr, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "both refused: the last error is answered");
    let started = tokio::time::Instant::now();
    let (status, headers, body) = fetch(addr, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no_healthy_server"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(started.elapsed(), std::time::Duration::ZERO, "no connect attempt, no wait");
    // After fail_timeout the servers are tried again.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert_eq!(fetch(addr, "/").await.0, StatusCode::BAD_GATEWAY);
}

fn chat_request() -> http::Request<TestBody> {
    let body = json!({"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    http::Request::post("/v1/chat/completions").header("host", "localhost").body(full(body)).unwrap()
}

/// Kills one of two models while it holds two chat completions (long prefill), with `location` added
/// to the location's settings; returns how many of the requests in flight failed (each with a clear
/// 502) and how many were answered. Every request sent after the crash must succeed.
async fn kill_a_model_mid_load(location: &str) -> (usize, usize) {
    let model = LatencyModel { prefill_base_ms: 60_000.0, ..LatencyModel::default() };
    let doomed =
        Sim::start(SimOptions { latency: model, crash_above: Some(2), ..SimOptions::default() }).await.unwrap();
    let fast = LatencyModel { prefill_base_ms: 1.0, decode_ms: 1.0, ..LatencyModel::default() };
    let survivor = Sim::start(SimOptions { latency: fast, ..SimOptions::default() }).await.unwrap();
    let config = two_servers(&doomed.addr.to_string(), &survivor.addr.to_string(), "")
        .replace("proxy = \"model\"", &format!("proxy = \"model\"\n  {location}"));
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("127.0.0.1:0");
    // Requests through the gateway until two are held by the doomed model (long prefill).
    let mut in_flight = Vec::new();
    let received = || doomed.stats()["received"].as_u64().unwrap() + survivor.stats()["received"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while doomed.stats()["running"] != 2 {
        let request = tokio::spawn(async move { send(&mut http1(addr).await, chat_request()).await });
        in_flight.push(request);
        while received() < in_flight.len() as u64 || (doomed.stats()["waiting"] != 0) {
            assert!(std::time::Instant::now() < deadline, "requests did not arrive");
            tokio::task::yield_now().await;
        }
        assert!(in_flight.len() < 10, "the doomed model never filled up");
    }
    // One more request straight to it kills it, as a GPU running out of memory.
    let _ = send(&mut http1(doomed.addr).await, chat_request()).await;
    assert!(doomed.crashed());
    let (mut failed, mut answered) = (0, 0);
    for request in in_flight {
        let (status, _, body) = request.await.unwrap();
        if status == StatusCode::OK {
            answered += 1;
        } else {
            // What fails gets a clear error, never a hang.
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
            assert!(body.contains("\"error\""), "{body}");
            failed += 1;
        }
    }
    // Nothing sent after the crash fails: the dead server is retried away from, then skipped.
    for i in 0..10 {
        let (status, _, body) = send(&mut http1(addr).await, chat_request()).await;
        assert_eq!(status, StatusCode::OK, "request {i} after the crash: {body}");
    }
    assert!(!gw.gateway.runtime().upstreams["model"].servers[0].health.is_up());
    (failed, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_held_by_a_killed_model_go_to_the_other_one() {
    let (failed, answered) = kill_a_model_mid_load("").await;
    assert_eq!(failed, 0, "no byte had reached the clients: every request is sent again ({answered} answered)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_that_is_not_inference_keeps_nginx_rule_for_posts() {
    let (failed, answered) = kill_a_model_mid_load("inference = false").await;
    assert_eq!(failed, 2, "exactly the two POSTs the dead model held fail ({answered} answered)");
}

async fn spread(balance: &str) -> (u64, u64) {
    let stuck = LatencyModel { prefill_base_ms: 600_000.0, ..LatencyModel::default() };
    let slow = Sim::start(SimOptions { latency: stuck, ..SimOptions::default() }).await.unwrap();
    let fast = LatencyModel { prefill_base_ms: 1.0, decode_ms: 1.0, ..LatencyModel::default() };
    let quick = Sim::start(SimOptions { latency: fast, ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start(&two_servers(
        &slow.addr.to_string(),
        &quick.addr.to_string(),
        &format!("balance = \"{balance}\""),
    ))
    .await;
    let addr = gw.addr("127.0.0.1:0");
    let received = || (slow.stats()["received"].as_u64().unwrap(), quick.stats()["received"].as_u64().unwrap());
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    let mut pending = Vec::new();
    for sent in 1..=10u64 {
        pending.push(tokio::spawn(async move { send(&mut http1(addr).await, chat_request()).await }));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The next request leaves once this one is held by the stuck model or fully answered by the
        // quick one (the gateway no longer counts it in flight there).
        let settled = || {
            let held = slow.stats()["received"].as_u64().unwrap();
            let done = quick.stats()["completed"].as_u64().unwrap();
            held + done == sent && (balance != "least_inflight" || upstream.servers[1].load.inflight() == 0)
        };
        while !settled() {
            assert!(std::time::Instant::now() < deadline, "request {sent} did not settle");
            tokio::task::yield_now().await;
        }
    }
    for request in pending {
        request.abort();
    }
    received()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_inflight_keeps_requests_off_a_server_that_holds_them() {
    let (slow, quick) = spread("round_robin").await;
    assert_eq!((slow, quick), (5, 5), "round robin splits evenly whatever each server holds");
    let (slow, quick) = spread("least_inflight").await;
    assert!(slow <= 1 && quick >= 9, "least_inflight sent {slow} to the stuck server, {quick} to the quick one");
}

#[tokio::test(start_paused = true)]
async fn active_checks_take_a_loading_model_out_and_bring_it_back() {
    let fast = LatencyModel { prefill_base_ms: 1.0, decode_ms: 1.0, ..LatencyModel::default() };
    // Loading for 30 s: its /health answers 503 until then.
    let loading = Sim::start(SimOptions {
        latency: fast.clone(),
        slow_start: Some(std::time::Duration::from_secs(30)),
        ..SimOptions::default()
    })
    .await
    .unwrap();
    let ready = Sim::start(SimOptions { latency: fast, ..SimOptions::default() }).await.unwrap();
    let extra = r#"health = { path = "/health", interval = "1s", timeout = "1s", rise = 2, fall = 1 }"#;
    let gw = TestGateway::start(&two_servers(&loading.addr.to_string(), &ready.addr.to_string(), extra)).await;
    let addr = gw.addr("127.0.0.1:0");
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    while upstream.servers[0].health.is_up() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for _ in 0..6 {
        assert_eq!(send(&mut http1(addr).await, chat_request()).await.0, StatusCode::OK);
    }
    assert_eq!(loading.stats()["received"], 0, "no request reached the loading model");
    // Loaded at 30 s; two passed checks later it is back in rotation.
    tokio::time::sleep(std::time::Duration::from_secs(33)).await;
    assert!(upstream.servers[0].health.is_up());
    for _ in 0..6 {
        assert_eq!(send(&mut http1(addr).await, chat_request()).await.0, StatusCode::OK);
    }
    assert_eq!(loading.stats()["completed"], 3, "round robin again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_load_steers_least_inflight_and_stale_metrics_count_as_saturated() {
    let stuck = LatencyModel { prefill_base_ms: 600_000.0, ..LatencyModel::default() };
    let busy = Sim::start(SimOptions { latency: stuck, ..SimOptions::default() }).await.unwrap();
    let fast = LatencyModel { prefill_base_ms: 1.0, decode_ms: 1.0, ..LatencyModel::default() };
    let idle = Sim::start(SimOptions { latency: fast, ..SimOptions::default() }).await.unwrap();
    // Load the gateway does not see: clients talking to the busy model directly.
    let mut direct = Vec::new();
    for _ in 0..3 {
        let addr = busy.addr;
        direct.push(tokio::spawn(async move { send(&mut http1(addr).await, chat_request()).await }));
    }
    let extra = "balance = \"least_inflight\"\nload_metrics = { interval = \"50ms\", stale_after = \"5s\" }";
    let gw = TestGateway::start(&two_servers(&busy.addr.to_string(), &idle.addr.to_string(), extra)).await;
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    let stale = std::time::Duration::from_secs(5);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (a, b) = (upstream.servers[0].load.reported.score(stale), upstream.servers[1].load.reported.score(stale));
        if matches!((a, b), (Some(a), Some(b)) if a > b) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the busy model's load was never scraped");
        tokio::task::yield_now().await;
    }
    let addr = gw.addr("127.0.0.1:0");
    for _ in 0..6 {
        assert_eq!(send(&mut http1(addr).await, chat_request()).await.0, StatusCode::OK);
    }
    assert_eq!(busy.stats()["received"], 3, "only the direct clients' requests reached the busy model");
    for request in direct {
        request.abort();
    }

    // A server with no model metrics is never fresh: it counts as saturated.
    let plain = Backend::hello().await;
    let gw = TestGateway::start(&two_servers(&plain.authority(), &idle.addr.to_string(), extra)).await;
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    while upstream.servers[1].load.reported.score(stale).is_none() {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(10), "never scraped");
        tokio::task::yield_now().await;
    }
    let addr = gw.addr("127.0.0.1:0");
    for _ in 0..6 {
        assert_eq!(send(&mut http1(addr).await, chat_request()).await.0, StatusCode::OK);
    }
    assert_eq!(
        plain.request_count()
            - plain.seen.requests.lock().unwrap().iter().filter(|h| h.uri.path() == "/metrics").count(),
        0
    );
}

#[tokio::test]
async fn a_request_with_a_small_body_is_replayed_on_another_server_after_a_502() {
    let failing = Backend::start(|_| async {
        let mut response = Response::new(full("bad gateway"));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
    })
    .await;
    let echo = Backend::start(|request: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(body))
    })
    .await;
    // The failing server is first in turn: the first request meets it, is replayed on the echo
    // server, and the failing one is then skipped (max_fails = 1). A POST is replayed only when allowed.
    let gw = TestGateway::start(&two_servers(
        &failing.authority(),
        &echo.authority(),
        "next_upstream_non_idempotent = true",
    ))
    .await;
    let addr = gw.addr("127.0.0.1:0");
    for i in 0..4 {
        let payload = format!("{{\"request\": {i}, \"image\": \"{}\"}}", "A".repeat(2000));
        let request =
            http::Request::post("/v1/chat/completions").header("host", "h").body(full(payload.clone())).unwrap();
        let (status, _, body) = send(&mut http1(addr).await, request).await;
        assert_eq!((status, body), (StatusCode::OK, payload), "request {i}");
    }
    assert_eq!(failing.request_count(), 1, "the failing server saw the first request only");
}

#[tokio::test]
async fn a_response_the_server_cuts_counts_against_it_and_a_client_leaving_does_not() {
    use http_body_util::BodyExt;
    // A server that dies mid-answer: head and part of the body, then the connection closes.
    let cutting =
        RawBackend::start(RawMode::CLOSING, |_| b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n1234".to_vec()).await;
    let gw = TestGateway::start(&proxy_config(&cutting.addr.to_string(), "max_fails = 2")).await;
    let addr = gw.addr("127.0.0.1:0");
    let health = || gw.gateway.runtime().upstreams["backend"].servers[0].health.is_up();
    for _ in 0..2 {
        // The client sees the answer cut: no head (the cut came before anything was written), or a
        // body that ends in an error.
        if let Ok(response) = http1(addr).await.send_request(get("/")).await {
            assert!(response.into_body().collect().await.is_err(), "the client sees the answer cut");
        }
    }
    assert!(!health(), "two cut answers are two failures of the server (max_fails = 2)");

    // A client that leaves in the middle of a slow answer is no failure of the server's.
    let slow = Backend::start(|_| async {
        let first = futures_util::stream::iter([Ok(http_body::Frame::data(bytes::Bytes::from("first")))]);
        let rest = futures_util::stream::pending::<Result<_, std::convert::Infallible>>();
        Response::new(http_body_util::StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed())
    })
    .await;
    let gw = TestGateway::start(&proxy_config(&slow.authority(), "max_fails = 1")).await;
    for _ in 0..3 {
        let response = http1(gw.addr("127.0.0.1:0")).await.send_request(get("/")).await.unwrap();
        let mut body = response.into_body();
        assert!(body.frame().await.is_some(), "the first part arrives");
        drop(body);
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(gw.gateway.runtime().upstreams["backend"].servers[0].health.is_up());
}

#[tokio::test]
async fn a_chat_completion_goes_to_another_server_only_with_its_body_kept() {
    // The first server reads each request and closes without a byte of an answer.
    let closing = RawBackend::start(RawMode::CLOSING, |_| Vec::new()).await;
    let good = Backend::hello().await;
    let chat = |size: usize| {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(size));
        http::Request::post("/v1/chat/completions").header("host", "localhost").body(full(body)).unwrap()
    };
    let config = two_servers(&closing.addr.to_string(), &good.authority(), r#"next_upstream_body_max = "1k""#);
    // Round robin starts with the first server, which closes: a kept body goes on to the second.
    let gw = TestGateway::start(&config).await;
    let (status, _, body) = send(&mut http1(gw.addr("127.0.0.1:0")).await, chat(100)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from backend"));
    // A body over next_upstream_body_max streamed to the first server and is not sent again.
    let gw = TestGateway::start(&config).await;
    let (status, _, body) = send(&mut http1(gw.addr("127.0.0.1:0")).await, chat(2000)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(closing.requests().len(), 2, "each reached the closing server once");
    assert_eq!(good.request_count(), 1);
}

//! nginx's `limit_req` end to end: the seed's `10r/s burst=20 nodelay` answers the 22nd immediate
//! request 429 with `Retry-After` and a JSON error, per client address.

use crate::support::*;
use http::StatusCode;
use serde_json::Value;

const SEED_LIMIT: &str = r#"
[limit_zone.glm_limit]
key = "client_ip"
rate = "10r/s"

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/v1/inference"
  return = { status = 200, body = "ok" }
  errors = "json"
  limit_req = { zone = "glm_limit", burst = 20, nodelay = true }

  [[server.location]]
  prefix = "/"
  return = { status = 200, body = "unlimited" }
"#;

#[tokio::test(start_paused = true)]
async fn the_22nd_immediate_request_is_answered_429_with_retry_after() {
    let gw = TestGateway::start(SEED_LIMIT).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for i in 1..=21 {
        let (status, _, _) = send(&mut client, get("/v1/inference")).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
    }
    let (status, headers, body) = send(&mut client, get("/v1/inference")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    // Other locations are not limited; the limited one fits again one rate interval later.
    assert_eq!(send(&mut client, get("/other")).await.0, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(send(&mut client, get("/v1/inference")).await.0, StatusCode::OK);
    assert_eq!(send(&mut client, get("/v1/inference")).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn without_nodelay_requests_are_held_to_the_rate() {
    let gw = TestGateway::start(&SEED_LIMIT.replace("burst = 20, nodelay = true", "burst = 5")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let started = tokio::time::Instant::now();
    for _ in 0..4 {
        assert_eq!(send(&mut client, get("/v1/inference")).await.0, StatusCode::OK);
    }
    // Sequential requests: each waits until the previous one's excess drained: 0, 100, 100, 100 ms.
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(300));
}

#[tokio::test]
async fn unknown_zones_and_bad_rates_are_config_errors() {
    let source = infergate::config::Source {
        name: "t.toml".into(),
        dir: ".".into(),
        text: SEED_LIMIT.replace("\"10r/s\"", "\"10 per second\"").replace("zone = \"glm_limit\"", "zone = \"nope\""),
    };
    let errors = infergate::config::load(&source).unwrap_err().to_string();
    assert!(errors.contains("t.toml:4:8: invalid rate \"10 per second\""), "{errors}");
    assert!(errors.contains("unknown limit zone `nope`"), "{errors}");
}

#[tokio::test(start_paused = true)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let limited = SEED_LIMIT.replace("burst = 20, nodelay = true", "burst = 0, nodelay = true");
    let request = |client: &str| {
        http::Request::get("/v1/inference")
            .header("host", "h")
            .header("x-forwarded-for", client.to_string())
            .body(full(""))
            .unwrap()
    };
    // Trusted: the loopback peer is a proxy, so every forwarded address is its own client.
    let gw = TestGateway::start(&format!("[http]\ntrusted_proxies = [\"127.0.0.1\"]\n{limited}")).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    for i in 0..5 {
        let (status, _, _) = send(&mut client, request(&format!("198.51.100.{i}"))).await;
        assert_eq!(status, StatusCode::OK, "client {i}");
    }
    assert_eq!(send(&mut client, request("198.51.100.0")).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Untrusted (no trusted_proxies): the header is ignored and all share the peer's bucket.
    let gw = TestGateway::start(&limited).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    assert_eq!(send(&mut client, request("198.51.100.1")).await.0, StatusCode::OK);
    assert_eq!(send(&mut client, request("198.51.100.2")).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_caps_requests_in_flight_per_client_until_their_responses_end() {
    use infergate::sim::engine::LatencyModel;
    use infergate::sim::{Sim, SimOptions};
    let model = LatencyModel { prefill_base_ms: 60_000.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let config = format!(
        r#"
[limit_zone.per_client]
key = "client_ip"

[[upstream]]
name = "model"
servers = [{{ addr = "{}" }}]

[[server]]
listen = ["127.0.0.1:0"]
  [[server.location]]
  prefix = "/"
  proxy = "model"
  limit_conn = {{ zone = "per_client", max = 1 }}
"#,
        sim.addr
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("127.0.0.1:0");
    let chat = || {
        let body = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
        http::Request::post("/v1/chat/completions").header("host", "h").body(full(body)).unwrap()
    };
    let held = tokio::spawn(async move { send(&mut http1(addr).await, chat()).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sim.stats()["running"] != 1 {
        assert!(std::time::Instant::now() < deadline, "the first request never reached the model");
        tokio::task::yield_now().await;
    }
    let (status, headers, body) = send(&mut http1(addr).await, chat()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    held.abort();
    let zone = gw.gateway.runtime().conn_zones["per_client"].clone();
    while zone.keys() != 0 {
        assert!(std::time::Instant::now() < deadline, "the place was never freed");
        tokio::task::yield_now().await;
    }
    // The place is free again: the next request is admitted (and held by the slow model).
    let next = tokio::spawn(async move { send(&mut http1(addr).await, chat()).await });
    while sim.stats()["received"] != 2 {
        assert!(std::time::Instant::now() < deadline, "the next request was not admitted");
        tokio::task::yield_now().await;
    }
    next.abort();
}

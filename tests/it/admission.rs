//! Admission control in front of simulated models: no model ever sees more than its `max_inflight`,
//! the overflow waits in FIFO order, and what cannot wait is told at once to come back later.

use crate::support::*;
use http::{Request, StatusCode};
use infergate::sim::engine::LatencyModel;
use infergate::sim::{Sim, SimOptions};
use serde_json::{json, Value};
use std::time::Duration;

fn admission_config(sim: &Sim, max_inflight: usize, queue: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "model"
servers = [{{ addr = "{}", max_inflight = {max_inflight} }}]
queue = {queue}

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "model"
"#,
        sim.addr
    )
}

fn chat(stream: bool) -> Request<TestBody> {
    let body = json!({"stream": stream, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
    Request::post("/v1/chat/completions").header("host", "localhost").body(full(body.to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_never_sees_more_than_max_inflight_and_every_request_is_served() {
    let model = LatencyModel { slots: 100, prefill_base_ms: 20.0, decode_ms: 5.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start(&admission_config(&sim, 3, r#"{ max = 64, timeout = "30s" }"#)).await;
    let addr = gw.addr("127.0.0.1:0");
    let mut requests = Vec::new();
    for i in 0..12 {
        requests.push(tokio::spawn(async move { send(&mut http1(addr).await, chat(i % 2 == 0)).await }));
    }
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(sim.stats()["completed"], 12);
    assert_eq!(sim.stats()["max_running"], 3, "the model saw exactly its max_inflight at most");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_at_once_with_retry_after_and_a_json_error() {
    let model = LatencyModel { prefill_base_ms: 60_000.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start(&admission_config(&sim, 1, r#"{ max = 1, timeout = "60s" }"#)).await;
    let addr = gw.addr("127.0.0.1:0");
    let held = tokio::spawn(async move { send(&mut http1(addr).await, chat(false)).await });
    let queued = tokio::spawn(async move { send(&mut http1(addr).await, chat(false)).await });
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    let admission = upstream.admission.as_ref().unwrap();
    // The admitted request has reached the model and the other one waits in the queue.
    while admission.queued() != 1 || sim.stats()["received"] != 1 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    let (status, headers, body) = send(&mut http1(addr).await, chat(false)).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_millis(500), "rejection took {took:?}");
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "queue_full");
    assert_eq!(sim.stats()["received"], 1, "only the admitted request reached the model");
    held.abort();
    queued.abort();
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_past_the_queue_timeout_gets_503() {
    let model = LatencyModel { prefill_base_ms: 600_000.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start(&admission_config(&sim, 1, r#"{ max = 8, timeout = "10s" }"#)).await;
    let addr = gw.addr("127.0.0.1:0");
    let held = tokio::spawn(async move { send(&mut http1(addr).await, chat(true)).await });
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    while upstream.admission.as_ref().unwrap().inflight() != vec![1] {
        tokio::task::yield_now().await;
    }
    let started = tokio::time::Instant::now();
    let (status, headers, body) = send(&mut http1(addr).await, chat(true)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("queue_timeout"), "{body}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_that_leaves_is_removed_at_once_and_the_slot_passes_on() {
    let model = LatencyModel { prefill_base_ms: 60_000.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start(&admission_config(&sim, 1, r#"{ max = 8, timeout = "60s" }"#)).await;
    let addr = gw.addr("127.0.0.1:0");
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    let admission = upstream.admission.as_ref().unwrap();
    let held = tokio::spawn(async move { send(&mut http1(addr).await, chat(false)).await });
    while admission.inflight() != vec![1] || sim.stats()["received"] != 1 {
        tokio::task::yield_now().await;
    }
    let leaving = tokio::spawn(async move { send(&mut http1(addr).await, chat(false)).await });
    while admission.queued() != 1 {
        tokio::task::yield_now().await;
    }
    leaving.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admission.queued() != 0 {
        assert!(std::time::Instant::now() < deadline, "the queued request was not removed");
        tokio::task::yield_now().await;
    }
    // The holder leaves too: its slot is freed, and the model never saw the queued request.
    held.abort();
    while admission.inflight() != vec![0] {
        assert!(std::time::Instant::now() < deadline, "the slot was not freed");
        tokio::task::yield_now().await;
    }
    assert_eq!(sim.stats()["received"], 1);
}

#[tokio::test(start_paused = true)]
async fn the_priority_header_orders_the_queue() {
    let model = LatencyModel { prefill_base_ms: 100.0, decode_ms: 1.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let queue = r#"{ max = 8, timeout = "60s", priority_header = "X-Priority" }"#;
    let gw = TestGateway::start(&admission_config(&sim, 1, queue)).await;
    let addr = gw.addr("127.0.0.1:0");
    let upstream = gw.gateway.runtime().upstreams["model"].clone();
    let admission = upstream.admission.as_ref().unwrap().clone();
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut requests = Vec::new();
    for (name, priority) in [("first", "normal"), ("low", "low"), ("high", "high")] {
        let finished = finished.clone();
        requests.push(tokio::spawn(async move {
            let body = json!({"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}).to_string();
            let request = Request::post("/v1/chat/completions")
                .header("host", "h")
                .header("x-priority", priority)
                .body(full(body))
                .unwrap();
            let (status, _, _) = send(&mut http1(addr).await, request).await;
            finished.lock().unwrap().push((name, status));
        }));
        // Each arrives (admitted or queued) before the next is sent.
        let expected = requests.len();
        while admission.queued() + admission.inflight()[0] < expected {
            tokio::task::yield_now().await;
        }
    }
    for request in requests {
        request.await.unwrap();
    }
    let order: Vec<&str> = finished.lock().unwrap().iter().map(|(name, _)| *name).collect();
    assert_eq!(order, vec!["first", "high", "low"]);
}

#[tokio::test(start_paused = true)]
async fn an_api_keys_priority_orders_the_queue_whatever_its_header_says() {
    let model = LatencyModel { prefill_base_ms: 100.0, decode_ms: 1.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let queue = r#"{ max = 8, timeout = "60s", priority_header = "X-Priority" }"#;
    let keys: String = [("first", "normal"), ("low", "low"), ("high", "high")]
        .iter()
        .map(|(name, priority)| {
            format!("[[api_key]]\nname = \"{name}\"\nsha256 = \"{}\"\npriority = \"{priority}\"\n", sha256_hex(name))
        })
        .collect();
    let config = admission_config(&sim, 1, queue)
        .replace("proxy = \"model\"", "proxy = \"model\"\n  auth = \"api_key\"")
        + &keys;
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("127.0.0.1:0");
    let admission = gw.gateway.runtime().upstreams["model"].admission.as_ref().unwrap().clone();
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut requests = Vec::new();
    // Each sends the header that would put it the other way round: the key's priority stands.
    for (name, header) in [("first", "normal"), ("low", "high"), ("high", "low")] {
        let finished = finished.clone();
        requests.push(tokio::spawn(async move {
            let body = json!({"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}).to_string();
            let request = Request::post("/v1/chat/completions")
                .header("host", "h")
                .header("authorization", format!("Bearer {name}"))
                .header("x-priority", header)
                .body(full(body))
                .unwrap();
            let (status, _, _) = send(&mut http1(addr).await, request).await;
            finished.lock().unwrap().push((name, status));
        }));
        let expected = requests.len();
        while admission.queued() + admission.inflight()[0] < expected {
            tokio::task::yield_now().await;
        }
    }
    for request in requests {
        request.await.unwrap();
    }
    let finished = finished.lock().unwrap();
    assert!(finished.iter().all(|(_, status)| *status == StatusCode::OK), "{finished:?}");
    let order: Vec<&str> = finished.iter().map(|(name, _)| *name).collect();
    assert_eq!(order, vec!["first", "high", "low"]);
}

#[tokio::test(start_paused = true)]
async fn under_6x_overload_the_model_survives_and_the_rest_is_told_at_once() {
    // 2 slots, and the model dies above 4 requests present (as a GPU out of memory).
    let model = LatencyModel { slots: 2, prefill_base_ms: 100.0, decode_ms: 25.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, crash_above: Some(4), ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start(&admission_config(&sim, 2, r#"{ max = 2, timeout = "5s" }"#)).await;
    let addr = gw.addr("127.0.0.1:0");
    let started = tokio::time::Instant::now();
    let mut requests = Vec::new();
    for _ in 0..12 {
        requests.push(tokio::spawn(async move {
            let (status, headers, _) = send(&mut http1(addr).await, chat(false)).await;
            (status, headers.contains_key("retry-after"), started.elapsed())
        }));
    }
    let (mut served, mut rejected) = (0, 0);
    for request in requests {
        let (status, retry_after, elapsed) = request.await.unwrap();
        match status {
            StatusCode::OK => {
                served += 1;
                assert!(elapsed < Duration::from_secs(5), "an admitted request missed the SLO: {elapsed:?}");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                rejected += 1;
                assert!(retry_after);
                assert_eq!(elapsed, Duration::ZERO, "rejections are immediate");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((served, rejected), (4, 8), "2 slots and 2 queue places serve 4; 8 are told at once");
    assert!(!sim.crashed(), "the model survived");
    assert_eq!(sim.stats()["max_running"], 2);
}

/// A request about a 1024x1024 image (1,296 image tokens) or a short text, of 4 output tokens.
fn question(image: Option<&str>) -> Request<TestBody> {
    let mut parts = vec![json!({"type": "text", "text": "What is in this image?"})];
    parts.extend(image.map(|url| json!({"type": "image_url", "image_url": {"url": url}})));
    let body = json!({"model": "glm", "max_tokens": 4, "messages": [{"role": "user", "content": parts}]});
    Request::post("/v1/chat/completions").header("host", "localhost").body(full(body.to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_tokens_holds_the_images_a_model_prefills_at_once() {
    let model = LatencyModel {
        slots: 32,
        prefill_base_ms: 30.0,
        prefill_per_image_token_ms: 0.05,
        decode_ms: 5.0,
        ..LatencyModel::default()
    };
    let image = crate::images::png(1024, 1024);
    for limit in [Some(3000), None] {
        let sim = Sim::start(SimOptions { latency: model.clone(), ..SimOptions::default() }).await.unwrap();
        let server = match limit {
            Some(tokens) => format!("{{ addr = \"{}\", max_inflight_tokens = {tokens} }}", sim.addr),
            None => format!("{{ addr = \"{}\" }}", sim.addr),
        };
        let config = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[upstream]]\nname = \"model\"\nservers = [{server}]\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n  [[server.location]]\n  prefix = \"/\"\n  proxy = \"model\"\n"
        );
        let gw = TestGateway::start(&config).await;
        let addr = gw.addr("127.0.0.1:0");
        let requests: Vec<_> = (0..12)
            .map(|i| {
                let request = question((i % 2 == 0).then_some(image.as_str()));
                tokio::spawn(async move { send(&mut http1(addr).await, request).await })
            })
            .collect();
        for request in requests {
            let (status, _, body) = request.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let stats = sim.stats();
        assert_eq!(stats["completed"], 12);
        let peak = stats["max_running_prompt_tokens"].as_u64().unwrap();
        match limit {
            // Two images and the texts beside them fit in 3,000 tokens; a third image never did.
            Some(_) => assert!((2 * 1296..=3000).contains(&peak), "{peak} prompt tokens at once"),
            None => assert!(peak > 3 * 1296, "without the limit, {peak} prompt tokens at once"),
        }
        if limit.is_some() {
            // Every slot is freed as its response body ends in the gateway, just after the client
            // has read the body's last byte.
            let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
            let started = std::time::Instant::now();
            loop {
                let (_, _, status) = send(&mut http1(admin).await, get("/status")).await;
                let status: Value = serde_json::from_str(&status).unwrap();
                let server = &status["upstreams"][0]["servers"][0];
                let held = (server["max_inflight_tokens"].as_u64(), server["in_flight_tokens"].as_u64());
                if held == (Some(3000), Some(0)) {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(5), "still held: {held:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

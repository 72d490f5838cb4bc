//! `infergate sim` behind the gateway: OpenAI's shapes, the latency model on the paused clock, abort
//! detection, the crash switch, and `infergate demo` as a user starts it.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use infergate::sim::engine::LatencyModel;
use infergate::sim::{Sim, SimOptions};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

fn chat(body: Value) -> Request<TestBody> {
    Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
}

async fn sim_behind_gateway(options: SimOptions) -> (Sim, TestGateway) {
    let sim = Sim::start(options).await.unwrap();
    let gw = TestGateway::start(&proxy_config(&sim.addr.to_string(), "")).await;
    (sim, gw)
}

#[tokio::test]
async fn streams_and_answers_in_openai_shapes_through_the_gateway() {
    let (sim, gw) = sim_behind_gateway(SimOptions::default()).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let body = json!({"model": "glm-4v-flash", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = send(&mut client, chat(body)).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"], 3);

    let body = json!({"stream": true, "max_tokens": 2, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, text) = send(&mut client, chat(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "The image");
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[chunks.len() - 1]["choices"], json!([]));
    assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 2);

    let (status, _, text) = send(&mut client, chat(json!({"prompt": "not a chat"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("messages"), "{text}");
    assert_eq!(sim.stats()["completed"], 2);
    assert_eq!(sim.stats()["errors"], 1);
}

#[tokio::test(start_paused = true)]
async fn first_token_and_token_gaps_follow_the_latency_model() {
    let model =
        LatencyModel { prefill_base_ms: 100.0, prefill_per_token_ms: 1.0, decode_ms: 20.0, ..LatencyModel::default() };
    let (_sim, gw) = sim_behind_gateway(SimOptions { latency: model, ..SimOptions::default() }).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    // 40 characters: 10 prompt tokens, so prefill = 100 + 10 ms.
    let body = json!({"stream": true, "max_tokens": 3, "messages": [{"role": "user", "content": "x".repeat(40)}]});
    let started = Instant::now();
    let response = client.send_request(chat(body)).await.unwrap();
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if frame.unwrap().data_ref().is_some_and(|d: &Bytes| d.windows(8).any(|w| w == b"\"content")) {
            arrivals.push(started.elapsed());
        }
    }
    // Role chunk and first token at the end of prefill, then one token per 20 ms.
    assert_eq!(arrivals[1], Duration::from_millis(110));
    assert_eq!(arrivals[2] - arrivals[1], Duration::from_millis(20));
    assert_eq!(arrivals[3] - arrivals[2], Duration::from_millis(20));
}

#[tokio::test(start_paused = true)]
async fn a_replica_with_an_image_cache_prefills_an_image_it_saw_for_a_tenth() {
    let model = LatencyModel {
        prefill_base_ms: 10.0,
        prefill_per_token_ms: 0.0,
        prefill_per_image_token_ms: 1.0,
        ..LatencyModel::default()
    };
    let (sim, gw) = sim_behind_gateway(SimOptions { latency: model, image_cache: 4, ..SimOptions::default() }).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    // 448x448 PNG headers: 256 image tokens; the second image differs in a byte after its header.
    let (first, second) =
        ("iVBORw0KGgoAAAANSUhEUgAAAcAAAAHACAYAAAAAAAAA", "iVBORw0KGgoAAAANSUhEUgAAAcAAAAHACAYAAAAAAAAB");
    let mut first_tokens = Vec::new();
    for image in [first, first, second, first] {
        let body = json!({"stream": true, "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}}]}]});
        let started = Instant::now();
        let response = client.send_request(chat(body)).await.unwrap();
        let mut body = response.into_body();
        let mut at = None;
        while let Some(frame) = body.frame().await {
            if at.is_none() && frame.unwrap().data_ref().is_some() {
                at = Some(started.elapsed());
            }
        }
        first_tokens.push(at.unwrap());
    }
    let ms = |n| Duration::from_millis(n);
    assert_eq!(first_tokens, [ms(10 + 256), ms(10 + 25), ms(10 + 256), ms(10 + 25)]);
    assert_eq!(sim.stats()["image_cache_hits"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_records_a_client_leaving_mid_stream_or_while_waiting() {
    let model = LatencyModel { slots: 1, prefill_base_ms: 1.0, decode_ms: 5.0, ..LatencyModel::default() };
    let (sim, gw) = sim_behind_gateway(SimOptions { latency: model, ..SimOptions::default() }).await;
    let addr = gw.addr("127.0.0.1:0");
    let long = json!({"stream": true, "max_tokens": 100_000, "messages": [{"role": "user", "content": "hi"}]});
    let response = http1(addr).await.send_request(chat(long.clone())).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    // A second request waits for the only slot; its client gives up.
    let mut waiting_client = http1(addr).await;
    let waiting = tokio::spawn(async move { waiting_client.send_request(chat(long)).await });
    while sim.stats()["waiting"] != 1 {
        tokio::task::yield_now().await;
    }
    waiting.abort();
    drop(body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sim.stats()["aborted"] != 2 {
        assert!(std::time::Instant::now() < deadline, "aborts not seen: {}", sim.stats());
        tokio::task::yield_now().await;
    }
    assert_eq!(sim.stats()["max_running"], 1);
    assert!(sim.stats()["last_abort_ms"].is_u64());
}

#[tokio::test]
async fn crash_above_kills_every_connection_like_an_out_of_memory_gpu() {
    let model = LatencyModel { slots: 1, prefill_base_ms: 60_000.0, ..LatencyModel::default() };
    let (sim, gw) =
        sim_behind_gateway(SimOptions { latency: model, crash_above: Some(2), ..SimOptions::default() }).await;
    let addr = gw.addr("127.0.0.1:0");
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let mut pending = Vec::new();
    for _ in 0..2 {
        let mut client = http1(addr).await;
        let request = chat(body.clone());
        pending.push(tokio::spawn(async move { send(&mut client, request).await }));
        while sim.stats()["received"] != pending.len() as u64 {
            tokio::task::yield_now().await;
        }
    }
    let (status, _, _) = send(&mut http1(addr).await, chat(body)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "the request that tipped it over");
    assert!(sim.crashed());
    for request in pending {
        let (status, _, _) = request.await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "requests in flight die with the backend");
    }
    assert!(tokio::net::TcpStream::connect(sim.addr).await.is_err(), "a crashed sim accepts nothing");
}

#[tokio::test]
async fn health_models_metrics_and_slow_start() {
    let sim =
        Sim::start(SimOptions { slow_start: Some(Duration::from_secs(3600)), ..SimOptions::default() }).await.unwrap();
    let (status, _, _) = fetch(sim.addr, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "still loading");
    let sim = Sim::start(SimOptions::default()).await.unwrap();
    assert_eq!(fetch(sim.addr, "/health").await.0, StatusCode::OK);
    let (_, _, models) = fetch(sim.addr, "/v1/models").await;
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "glm-4v-flash");
    let (_, _, metrics) = fetch(sim.addr, "/metrics").await;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openai Python SDK: scripts/test.sh sets it up and runs this"]
async fn the_official_openai_sdk_reads_the_sims_answers_through_the_gateway() {
    let model = LatencyModel { prefill_base_ms: 1.0, decode_ms: 1.0, ..LatencyModel::default() };
    let (sim, gw) = sim_behind_gateway(SimOptions { latency: model, ..SimOptions::default() }).await;
    let base = format!("http://{}/v1", gw.addr("127.0.0.1:0"));
    let stdout = run_sdk_script("openai_sdk.py", &[&base]).await;
    assert!(stdout.contains("openai SDK: ok"));
    assert_eq!(sim.stats()["completed"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_records_clients_leaving_during_prefill_and_non_streamed_answers() {
    // Long prefill for the first case, long decode for the second.
    let model = LatencyModel { prefill_base_ms: 60_000.0, ..LatencyModel::default() };
    let (sim, gw) = sim_behind_gateway(SimOptions { latency: model, ..SimOptions::default() }).await;
    let addr = gw.addr("127.0.0.1:0");
    for (stream, expected) in [(true, 1), (false, 2)] {
        let mut client = http1(addr).await;
        let request = chat(json!({"stream": stream, "messages": [{"role": "user", "content": "hi"}]}));
        let pending = tokio::spawn(async move { client.send_request(request).await });
        while sim.stats()["running"] != 1 {
            tokio::task::yield_now().await;
        }
        pending.abort();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sim.stats()["aborted"] != expected {
            assert!(std::time::Instant::now() < deadline, "abort not seen: {}", sim.stats());
            tokio::task::yield_now().await;
        }
        assert_eq!(sim.stats()["running"], 0, "the slot is freed");
    }
}

#[tokio::test(start_paused = true)]
async fn fail_rate_answers_500_and_stall_after_stops_mid_stream() {
    let sim = Sim::start(SimOptions { fail_rate: 1.0, ..SimOptions::default() }).await.unwrap();
    let (status, _, body) =
        send(&mut http1(sim.addr).await, chat(json!({"messages": [{"role": "user", "content": "hi"}]}))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("--fail-rate"), "{body}");
    assert_eq!(sim.stats()["errors"], 1);

    let model = LatencyModel { prefill_base_ms: 1.0, decode_ms: 1.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, stall_after: Some(2), ..SimOptions::default() }).await.unwrap();
    let response = http1(sim.addr)
        .await
        .send_request(chat(json!({"stream": true, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut tokens = 0;
    // Role chunk, then two tokens; then nothing more arrives, and the stream is not closed either.
    for _ in 0..3 {
        let frame = body.frame().await.unwrap().unwrap();
        tokens += usize::from(frame.data_ref().is_some_and(|d| {
            d.windows(10).any(|w| w == b"\"content\":") && !d.windows(12).any(|w| w == b"\"content\":\"\"")
        }));
    }
    assert_eq!(tokens, 2);
    // On the paused clock a minute passes at once; an unstalled sim would send 60,000 tokens in it.
    let more = tokio::time::timeout(Duration::from_secs(60), body.frame()).await;
    assert!(more.is_err(), "the stream should stall open, got {more:?}");
}

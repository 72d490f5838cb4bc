//! Routing by model: the JSON body's `model` picks the upstream (the body reaches it intact),
//! `GET /v1/models` is answered from the config, an unknown model is a 404 naming the known ones.

use crate::support::*;
use http::{Request, StatusCode};
use infergate::sim::engine::LatencyModel;
use infergate::sim::{Sim, SimOptions};
use serde_json::{json, Value};

fn config(glm: &Sim, qwen: &Sim) -> String {
    format!(
        r#"
[[upstream]]
name = "glm"
servers = [{{ addr = "{}" }}]

[[upstream]]
name = "qwen"
servers = [{{ addr = "{}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/v1/"
  models = {{ "glm-4v-flash" = "glm", "qwen2-vl" = "qwen" }}
  client_max_body_size = "1k"
"#,
        glm.addr, qwen.addr
    )
}

fn chat(model: &str, filler: usize) -> Request<TestBody> {
    let body = json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "x".repeat(filler)}]});
    Request::post("/v1/chat/completions").header("host", "localhost").body(full(body.to_string())).unwrap()
}

#[tokio::test]
async fn the_model_field_picks_the_upstream_and_unknown_models_are_404() {
    let fast = LatencyModel { prefill_base_ms: 1.0, decode_ms: 1.0, ..LatencyModel::default() };
    let glm = Sim::start(SimOptions { latency: fast.clone(), ..SimOptions::default() }).await.unwrap();
    let qwen =
        Sim::start(SimOptions { latency: fast, model_name: "qwen2-vl".into(), ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start(&config(&glm, &qwen)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;

    let (status, _, body) = send(&mut client, chat("qwen2-vl", 10)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["model"], "qwen2-vl", "the body reached the model intact");
    assert_eq!((glm.stats()["completed"].as_u64(), qwen.stats()["completed"].as_u64()), (Some(0), Some(1)));
    assert_eq!(send(&mut client, chat("glm-4v-flash", 10)).await.0, StatusCode::OK);
    assert_eq!(glm.stats()["completed"], 1);

    let (status, _, body) = send(&mut client, chat("gpt-4", 10)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
    assert!(error["error"]["message"].as_str().unwrap().contains("glm-4v-flash, qwen2-vl"), "{body}");

    let (status, _, body) = send(&mut client, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    let listing: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = listing["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["glm-4v-flash", "qwen2-vl"]);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_reaches_no_model() {
    let glm = Sim::start(SimOptions::default()).await.unwrap();
    let qwen = Sim::start(SimOptions::default()).await.unwrap();
    let gw = TestGateway::start(&config(&glm, &qwen)).await;
    let (status, _, body) = send(&mut http1(gw.addr("127.0.0.1:0")).await, chat("glm-4v-flash", 5000)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body.contains("body_too_large"), "{body}");
    assert_eq!(glm.stats()["received"], 0);
    let (status, _, _) = send(
        &mut http1(gw.addr("127.0.0.1:0")).await,
        Request::post("/v1/chat/completions").header("host", "h").body(full("{not json")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

//! API keys end to end: `auth = "api_key"` locations answer 401 without a configured key and 403 for
//! a key that may not do this, in OpenAI's error shape; a key's own rate and concurrency limits; a
//! reload that adds and revokes keys under traffic; the admin API's `/keys`; and `infergate key new`.

use crate::support::*;
use http::{Request, StatusCode};
use serde_json::Value;
use std::process::Command;

/// Secrets of test keys.
const ALICE: &str = "ig-alice";
const BOB: &str = "ig-bob";
const CAROL: &str = "ig-carol";

fn config(backend: &str, keys: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "model"
servers = [{{ addr = "{backend}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/v1/"
  proxy = "model"
  auth = "api_key"

  [[server.location]]
  prefix = "/"
  return = {{ status = 200, body = "open" }}

{keys}
"#
    )
}

fn key(name: &str, secret: &str, extra: &str) -> String {
    format!("[[api_key]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n", sha256_hex(secret))
}

fn chat(secret: Option<&str>, header: &str, model: &str) -> Request<TestBody> {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let mut request =
        Request::post("/v1/chat/completions").header("host", "localhost").header("content-type", "application/json");
    if let Some(secret) = secret {
        request = match header {
            "bearer" => request.header("authorization", format!("Bearer {secret}")),
            _ => request.header("x-api-key", secret),
        };
    }
    request.body(full(body)).unwrap()
}

fn error_code(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    value["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn digests_are_sha256_in_hex() {
    // A known vector: SHA-256 of "abc".
    assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[tokio::test]
async fn a_location_with_auth_answers_only_configured_keys() {
    let backend = Backend::start(|request| async move {
        let body = http_body_util::BodyExt::collect(request.into_body()).await.unwrap().to_bytes();
        http::Response::new(full(body))
    })
    .await;
    let keys = [
        key("alice", ALICE, "team = \"search\""),
        key("bob", BOB, "disabled = true"),
        key("carol", CAROL, "expires = \"2020-01-01T00:00:00Z\""),
        key("glm-only", "ig-glm", "models = [\"glm-*\"]"),
    ]
    .join("\n");
    let gw = TestGateway::start(&config(&backend.authority(), &keys)).await;
    let addr = gw.addr("127.0.0.1:0");
    // A refused request's body is not read, so its connection closes: each goes on its own.
    let (status, headers, body) = send(&mut http1(addr).await, chat(None, "bearer", "glm-4")).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::UNAUTHORIZED, "invalid_api_key"), "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, body) = send(&mut http1(addr).await, chat(Some("ig-nobody"), "bearer", "glm-4")).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::UNAUTHORIZED, "invalid_api_key"), "{body}");
    let (status, _, body) = send(&mut http1(addr).await, chat(Some(BOB), "bearer", "glm-4")).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::FORBIDDEN, "api_key_disabled"), "{body}");
    let (status, _, body) = send(&mut http1(addr).await, chat(Some(CAROL), "x-api-key", "glm-4")).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::FORBIDDEN, "api_key_expired"), "{body}");
    let (status, _, body) = send(&mut http1(addr).await, chat(Some("ig-glm"), "bearer", "qwen2-vl")).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::FORBIDDEN, "model_not_allowed"), "{body}");
    assert_eq!(backend.request_count(), 0, "no refused request reached the model");
    let mut client = http1(addr).await;

    // Allowed: by either header, and a key limited to some models with one of them; the body arrives whole.
    for (secret, header, model) in
        [(ALICE, "bearer", "qwen2-vl"), (ALICE, "x-api-key", "x"), ("ig-glm", "bearer", "glm-4.6v")]
    {
        let (status, _, body) = send(&mut client, chat(Some(secret), header, model)).await;
        assert_eq!(status, StatusCode::OK, "{secret} {model}: {body}");
        assert!(body.contains(&format!("\"model\":\"{model}\"")), "{body}");
    }
    assert_eq!(backend.request_count(), 3);
    // A location without `auth` asks for nothing.
    assert_eq!(fetch(addr, "/open").await.0, StatusCode::OK);
}

#[tokio::test]
async fn each_key_has_its_own_rate_and_concurrency() {
    let (release, held) = tokio::sync::watch::channel(false);
    let backend = Backend::start(move |_| {
        let mut held = held.clone();
        async move {
            let _ = held.wait_for(|go| *go).await;
            http::Response::new(full("done"))
        }
    })
    .await;
    let keys =
        [key("slow", ALICE, "rate = \"1r/m\""), key("single", BOB, "max_concurrent = 1"), key("free", CAROL, "")]
            .join("\n");
    let gw = TestGateway::start(&config(&backend.authority(), &keys)).await;
    let addr = gw.addr("127.0.0.1:0");
    release.send(true).unwrap();
    let mut client = http1(addr).await;
    assert_eq!(send(&mut client, chat(Some(ALICE), "bearer", "m")).await.0, StatusCode::OK);
    let (status, headers, body) = send(&mut http1(addr).await, chat(Some(ALICE), "bearer", "m")).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"));
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(send(&mut client, chat(Some(CAROL), "bearer", "m")).await.0, StatusCode::OK, "other keys are apart");

    // One request of `single` in flight: a second one is refused until the first ends.
    release.send(false).unwrap();
    let first = tokio::spawn(async move { send(&mut http1(addr).await, chat(Some(BOB), "bearer", "m")).await.0 });
    while backend.request_count() < 3 {
        tokio::task::yield_now().await;
    }
    let (status, _, _) = send(&mut http1(addr).await, chat(Some(BOB), "bearer", "m")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    release.send(true).unwrap();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(send(&mut http1(addr).await, chat(Some(BOB), "bearer", "m")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_adds_and_revokes_keys_under_traffic() {
    let backend = Backend::hello().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys.toml"), [key("alice", ALICE, ""), key("bob", BOB, "")].join("\n")).unwrap();
    let with_file =
        config(&backend.authority(), "").replace("[[server]]", "[http]\napi_keys_file = \"keys.toml\"\n\n[[server]]");
    let gw = TestGateway::start_in(dir, &with_file).await;
    let addr = gw.addr("127.0.0.1:0");
    assert_eq!(send(&mut http1(addr).await, chat(Some(BOB), "bearer", "m")).await.0, StatusCode::OK);
    assert_eq!(send(&mut http1(addr).await, chat(Some(CAROL), "bearer", "m")).await.0, StatusCode::UNAUTHORIZED);

    // Alice keeps calling, on kept-alive connections, while the file drops Bob and adds Carol.
    let traffic = tokio::spawn(async move {
        let mut client = http1(addr).await;
        let mut statuses = Vec::new();
        for _ in 0..200 {
            statuses.push(send(&mut client, chat(Some(ALICE), "bearer", "m")).await.0);
        }
        statuses
    });
    std::fs::write(gw.path("keys.toml"), [key("alice", ALICE, ""), key("carol", CAROL, "")].join("\n")).unwrap();
    gw.gateway.reload().await.unwrap();
    let statuses = traffic.await.unwrap();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(send(&mut http1(addr).await, chat(Some(BOB), "bearer", "m")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&mut http1(addr).await, chat(Some(CAROL), "bearer", "m")).await.0, StatusCode::OK);

    // A broken keys file is a config error at its own line; the running keys stay.
    std::fs::write(gw.path("keys.toml"), "[[api_key]]\nname = \"dave\"\nsha256 = \"nothex\"\n").unwrap();
    let errors = gw.gateway.reload().await.unwrap_err().to_string();
    assert!(errors.contains("keys.toml:3:10") && errors.contains("64 hexadecimal digits"), "{errors}");
    assert_eq!(send(&mut http1(addr).await, chat(Some(CAROL), "bearer", "m")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_admin_api_lists_keys_without_their_secrets_and_reloads_them() {
    let backend = Backend::hello().await;
    let keys = key("alice", ALICE, "team = \"search\"\nmodels = [\"glm-*\"]");
    let gw = TestGateway::start(
        &config(&backend.authority(), &keys)
            .replace("[[server]]", "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\n[[server]]"),
    )
    .await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let mut client = http1(admin).await;
    let list = Request::get("/keys").header("host", "localhost");
    let (status, _, _) = send(&mut client, list.body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the admin token is required");
    let list = Request::get("/keys").header("host", "localhost").header("authorization", "Bearer s3cret");
    let (status, _, body) = send(&mut client, list.body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["keys"][0]["name"], "alice");
    assert_eq!(listed["keys"][0]["team"], "search");
    assert_eq!(listed["keys"][0]["models"][0], "glm-*");
    assert!(!body.contains(&sha256_hex(ALICE)) && !body.contains(ALICE), "no secret or digest: {body}");
    let reload = Request::post("/keys/reload").header("host", "localhost").header("authorization", "Bearer s3cret");
    let (status, _, body) = send(&mut client, reload.body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn key_new_prints_a_key_that_its_table_admits() {
    let output = Command::new(env!("CARGO_BIN_EXE_infergate")).args(["key", "new", "ci-bot"]).output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let secret = printed.lines().find(|line| line.starts_with("ig-")).expect("the secret is printed").to_string();
    let table = &printed[printed.find("[[api_key]]").expect("the table is printed")..];
    assert!(table.contains("name = \"ci-bot\"") && !table.contains(&secret), "{table}");

    let backend = Backend::hello().await;
    let gw = TestGateway::start(&config(&backend.authority(), table)).await;
    let (status, _, body) = send(&mut http1(gw.addr("127.0.0.1:0")).await, chat(Some(&secret), "bearer", "m")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_keys_example_runs_as_shipped() {
    let backend = Backend::hello().await;
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys.toml")).unwrap();
    let example = example.replace("127.0.0.1:8080", &backend.authority()).replace("127.0.0.1:8000", "127.0.0.1:0");
    let gw = TestGateway::start(&example).await;
    let addr = gw.addr("127.0.0.1:0");
    let search = "ig-example-search-app-key";
    assert_eq!(send(&mut http1(addr).await, chat(Some(search), "bearer", "glm-4v-flash")).await.0, StatusCode::OK);
    assert_eq!(
        send(&mut http1(addr).await, chat(Some("ig-example-batch-key"), "x-api-key", "any")).await.0,
        StatusCode::OK
    );
    let (status, _, body) = send(&mut http1(addr).await, chat(Some(search), "bearer", "qwen2-vl")).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::FORBIDDEN, "model_not_allowed"));
    assert_eq!(send(&mut http1(addr).await, chat(None, "bearer", "glm-4v-flash")).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openai Python SDK: scripts/test.sh sets it up and runs this"]
async fn the_official_openai_sdk_sees_openais_errors_for_keys() {
    use infergate::sim::engine::LatencyModel;
    use infergate::sim::{Sim, SimOptions};
    let model = LatencyModel { prefill_base_ms: 1.0, decode_ms: 5.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let keys = [
        key("app", ALICE, ""),
        key("limited", BOB, "rate = \"1r/m\""),
        key("budgeted", CAROL, "tokens_per_day = 20"),
        key("streaming", "ig-streaming", ""),
        key("leaving", "ig-leaving", ""),
    ]
    .join("\n");
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let gw = TestGateway::start(&format!("{admin}{}", config(&sim.addr.to_string(), &keys))).await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let base = format!("http://{}/v1", gw.addr("127.0.0.1:0"));
    let args = [&base, &format!("http://{admin}"), ALICE, BOB, CAROL, "ig-streaming", "ig-leaving"];
    let stdout = run_sdk_script("openai_sdk_keys.py", &args).await;
    assert!(stdout.contains("openai SDK with keys: ok"));
}

/// A chat request for the sim, its own `max_tokens`, streamed or not.
fn sim_chat(secret: &str, max_tokens: u32, stream: bool) -> Request<TestBody> {
    let body = serde_json::json!({"model": "glm-4v-flash", "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]});
    Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {secret}"))
        .body(full(body.to_string()))
        .unwrap()
}

fn remaining_tokens(headers: &http::HeaderMap) -> u64 {
    headers["x-ratelimit-remaining-tokens"].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_budgets_reserve_settle_on_usage_and_refuse_when_spent() {
    use infergate::sim::engine::LatencyModel;
    use infergate::sim::{Sim, SimOptions};
    let model = LatencyModel { prefill_base_ms: 1.0, decode_ms: 20.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    // 100 tokens a day: what refills during the test is far below one token.
    let keys = key("metered", ALICE, "tokens_per_day = 100");
    let gw = TestGateway::start(&config(&sim.addr.to_string(), &keys)).await;
    let addr = gw.addr("127.0.0.1:0");

    // "hi" is one prompt token: 1 + 5 reserved, then settled on the sim's usage (1 + 5).
    let (status, headers, body) = send(&mut http1(addr).await, sim_chat(ALICE, 5, false)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((&headers["x-ratelimit-limit-tokens"], remaining_tokens(&headers)), (&http::HeaderValue::from(100), 94));
    let usage: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    // A stream reserves 1 + 30 and ends after its 30 tokens: 31 used. The gateway asked the model for
    // the usage the client did not ask for, and took that chunk out of what the client received.
    let (status, headers, text) = send(&mut http1(addr).await, sim_chat(ALICE, 30, true)).await;
    assert_eq!((status, remaining_tokens(&headers)), (StatusCode::OK, 94 - 31));
    // (Its chunks say `"usage":null`, as they do for a client that asks.)
    assert!(text.ends_with("data: [DONE]\n\n") && !text.contains("\"usage\":{"), "{text}");
    let asked = serde_json::json!({"model": "m", "max_tokens": 2, "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]});
    let mut request = sim_chat(ALICE, 2, true);
    *request.body_mut() = full(asked.to_string());
    let (_, headers, text) = send(&mut http1(addr).await, request).await;
    assert!(text.contains("\"usage\":{"), "a client that asked gets its usage chunk: {text}");
    assert_eq!(remaining_tokens(&headers), 63 - 3, "31 settled exactly on the model's usage");
    let (_, headers, _) = send(&mut http1(addr).await, sim_chat(ALICE, 0, false)).await;
    assert_eq!(remaining_tokens(&headers), 60 - 1, "and this stream's 3 too");

    // A client that leaves after two tokens of a 40-token stream pays for the prompt and those two.
    let mut client = http1(addr).await;
    let response = client.send_request(sim_chat(ALICE, 40, true)).await.unwrap();
    assert_eq!(remaining_tokens(response.headers()), 58 - 41, "the whole estimate is reserved first");
    let mut body = response.into_body();
    let mut deltas = 0;
    while deltas < 2 {
        let frame = http_body_util::BodyExt::frame(&mut body).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
        deltas += text.matches("\"content\":\"").filter(|_| !text.contains("\"content\":\"\"")).count();
    }
    drop(body);
    drop(client);
    // The gateway closed the stream's request to the model; its reservation is settled by then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sim.stats()["aborted"] != 1 {
        assert!(std::time::Instant::now() < deadline, "the model never saw the client leave");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // A request reserving one token shows what is left: 58 - (1 prompt + the 2-4 tokens that passed
    // the gateway before it saw the close) - 1.
    let (_, headers, _) = send(&mut http1(addr).await, sim_chat(ALICE, 0, false)).await;
    let left = remaining_tokens(&headers);
    assert!((58 - 1 - 4 - 1..=58 - 1 - 2 - 1).contains(&left), "charged the prompt and the tokens received: {left}");

    // More than is left is refused with 429, OpenAI's `tokens` error and when to retry; more than the
    // whole budget too.
    let (status, headers, body) = send(&mut http1(addr).await, sim_chat(ALICE, 90, false)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (error["error"]["type"].as_str(), error["error"]["code"].as_str()),
        (Some("tokens"), Some("rate_limit_exceeded"))
    );
    assert!(headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 60, "a day's budget refills slowly");
    let (status, _, body) = send(&mut http1(addr).await, sim_chat(ALICE, 500, false)).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"));
}

#[tokio::test]
async fn a_keys_rate_is_told_in_openais_request_headers() {
    let backend = Backend::hello().await;
    let keys = [key("paced", ALICE, "rate = \"6r/m\"\nburst = 2"), key("free", BOB, "")].join("\n");
    let gw = TestGateway::start(&config(&backend.authority(), &keys)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let (status, headers, _) = send(&mut client, chat(Some(ALICE), "bearer", "m")).await;
        assert_eq!((status, &headers["x-ratelimit-limit-requests"]), (StatusCode::OK, &http::HeaderValue::from(6)));
        remaining.push(headers["x-ratelimit-remaining-requests"].to_str().unwrap().to_string());
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
    }
    assert_eq!(remaining, ["2", "1", "0"], "they count down to the refusal");
    let (status, _, _) = send(&mut http1(gw.addr("127.0.0.1:0")).await, chat(Some(ALICE), "bearer", "m")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (_, headers, _) = send(&mut client, chat(Some(BOB), "bearer", "m")).await;
    assert!(!headers.contains_key("x-ratelimit-limit-requests"), "a key without a rate has none");
}

/// Waits until the file at `path` has `lines` lines (its writer thread batches them), and returns them.
async fn wait_lines(path: &std::path::Path, lines: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text.lines().map(str::to_string).collect();
        }
        assert!(std::time::Instant::now() < deadline, "{} has {text:?}", path.display());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_counted_by_key_and_model_in_the_admin_api_metrics_and_logs() {
    use infergate::sim::{Sim, SimOptions};
    let sim = Sim::start(SimOptions::default()).await.unwrap();
    let logs = r#"
[http]
usage_log = "usage.jsonl"
access_log = { path = "access.log", format = "keyed" }
log_format = { keyed = "$api_key_name $model $prompt_tokens $completion_tokens $status" }

[admin]
listen = "127.0.0.1:0"
"#;
    let keys = [key("alice", ALICE, "team = \"search\"\nmodels = [\"glm-4v-flash\"]"), key("bob", BOB, "")].join("\n");
    let gw = TestGateway::start(&format!("{logs}{}", config(&sim.addr.to_string(), &keys))).await;
    let addr = gw.addr("127.0.0.1:0");

    // alice: one answer of 5 tokens and one stream of 7 that did not ask for its usage; bob: a stream
    // that asked, of a model the config does not name, and a GET (no model: not counted).
    // The first body arrives in three chunks (chunked encoding): read whole all the same.
    let mut request = sim_chat(ALICE, 5, false);
    let whole =
        http_body_util::BodyExt::collect(std::mem::replace(request.body_mut(), full(""))).await.unwrap().to_bytes();
    let pieces: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> =
        whole.chunks(whole.len() / 3 + 1).map(|piece| Ok(hyper::body::Frame::data(whole.slice_ref(piece)))).collect();
    *request.body_mut() =
        http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(pieces)));
    let (status, _, body) = send(&mut http1(addr).await, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, text) = send(&mut http1(addr).await, sim_chat(ALICE, 7, true)).await;
    assert!(!text.contains("\"usage\":{"), "the usage the gateway asked for is not the client's: {text}");
    let asked = serde_json::json!({"model": "llama-x", "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "a longer question"}]});
    let mut request = sim_chat(BOB, 4, true);
    *request.body_mut() = full(asked.to_string());
    let (_, _, text) = send(&mut http1(addr).await, request).await;
    // What the model itself reported, for comparison with what the gateway recorded.
    let chunk = text.lines().find(|line| line.contains("\"usage\":{")).expect(&text);
    let reported: Value = serde_json::from_str(chunk.trim_start_matches("data: ")).unwrap();
    let reported = (reported["usage"]["prompt_tokens"].clone(), reported["usage"]["completion_tokens"].clone());
    let get = Request::get("/v1/models").header("host", "localhost").header("authorization", format!("Bearer {BOB}"));
    send(&mut http1(addr).await, get.body(full("")).unwrap()).await;

    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let (status, _, body) = fetch(admin, "/usage").await;
    assert_eq!(status, StatusCode::OK);
    let usage: Value = serde_json::from_str(&body).unwrap();
    let rows = usage["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    let (alice, bob) = (&rows[0], &rows[1]);
    assert_eq!((&alice["key"], &alice["model"]), (&Value::from("alice"), &Value::from("glm-4v-flash")));
    let alice_total = &alice["since_start"];
    assert_eq!((&alice_total["requests"], &alice_total["completion_tokens"]), (&Value::from(2), &Value::from(12)));
    assert_eq!(alice_total["prompt_tokens"], 2, "\"hi\" is one prompt token, twice");
    assert_eq!(&alice["last_hour"], alice_total, "all of it within the hour");
    assert_eq!((&bob["key"], &bob["model"]), (&Value::from("bob"), &Value::from("other")), "bounded labels");
    assert_eq!(
        (bob["since_start"]["prompt_tokens"].clone(), bob["since_start"]["completion_tokens"].clone()),
        reported,
        "a stream's recorded usage is the model's own"
    );

    let (_, _, metrics) = fetch(admin, "/metrics").await;
    for line in [
        r#"infergate_api_key_requests_total{key="alice",model="glm-4v-flash"} 2"#,
        r#"infergate_api_key_tokens_total{key="alice",model="glm-4v-flash",kind="completion"} 12"#,
        r#"infergate_api_key_requests_total{key="bob",model="other"} 1"#,
        // The location's token figure counts both streams, the one whose usage the gateway asked for too.
        r#"infergate_output_tokens_total{server="127.0.0.1:0",location="/v1/"} 11"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    let lines = wait_lines(&gw.path("usage.jsonl"), 3).await;
    assert_eq!(lines.len(), 3, "one line per request that reached a model: {lines:?}");
    // Lines of different workers may be out of order (docs/config.md): found by what they hold.
    let records: Vec<Value> = lines.iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    let stream = records.iter().find(|record| record["completion_tokens"] == 7).expect("the stream's line");
    assert_eq!(
        (&stream["key"], &stream["team"], &stream["model"]),
        (&"alice".into(), &"search".into(), &"glm-4v-flash".into())
    );
    assert_eq!(
        (&stream["status"], &stream["completion_tokens"], &stream["end"]),
        (&200.into(), &7.into(), &"complete".into())
    );
    assert!(stream["ttft"].as_f64().is_some() && stream["duration"].as_f64() >= stream["ttft"].as_f64());
    assert!(stream["request_id"].as_str().is_some_and(|id| !id.is_empty()) && stream["time"].is_string());
    let mut access = wait_lines(&gw.path("access.log"), 4).await;
    access.sort();
    assert_eq!(access[..2], ["alice glm-4v-flash 1 5 200", "alice glm-4v-flash 1 7 200"]);
    assert!(access[2].starts_with("bob - - - "), "a GET names no model: {access:?}");
    assert!(access[3].starts_with("bob llama-x "), "{access:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_cap_counts_completion_tokens_alone() {
    use infergate::sim::{Sim, SimOptions};
    let sim = Sim::start(SimOptions::default()).await.unwrap();
    let keys = key("capped", ALICE, "completion_tokens_per_day = 10\nprompt_tokens_per_day = 1000");
    let gw = TestGateway::start(&config(&sim.addr.to_string(), &keys)).await;
    let addr = gw.addr("127.0.0.1:0");
    // Each answer is 5 completion tokens: the cap holds two; its headers are the first budget's.
    for left in [5, 0] {
        let (status, headers, body) = send(&mut http1(addr).await, sim_chat(ALICE, 5, false)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (&headers["x-ratelimit-limit-tokens"], remaining_tokens(&headers)),
            (&http::HeaderValue::from(10), left)
        );
    }
    let (status, _, body) = send(&mut http1(addr).await, sim_chat(ALICE, 1, false)).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"));
}

#[tokio::test]
async fn images_cost_what_their_models_image_cost_says() {
    let backend = Backend::hello().await;
    // A 448x448 PNG's header.
    let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAcAAAAHACAYAAAAAAAAA";
    let costs = r#"
[[image_cost]]
models = ["tiny-*"]
token_side = 56
extra_tokens = 2

[[image_cost]]
models = ["capped-vl"]
max_tokens = 100

[admin]
listen = "127.0.0.1:0"
"#;
    let models = "models = [\"tiny-vl\", \"capped-vl\", \"glm-4v\"]";
    let text = format!("{costs}{}", config(&backend.authority(), &key("alice", ALICE, models)));
    let gw = TestGateway::start(&text).await;
    let addr = gw.addr("127.0.0.1:0");
    for model in ["tiny-vl", "capped-vl", "glm-4v"] {
        let body = serde_json::json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png}}]}]});
        let request = Request::post("/v1/chat/completions")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {ALICE}"))
            .body(full(body.to_string()))
            .unwrap();
        assert_eq!(send(&mut http1(addr).await, request).await.0, StatusCode::OK);
    }
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let (_, _, body) = fetch(admin, "/usage").await;
    let usage: Value = serde_json::from_str(&body).unwrap();
    let images: Vec<&Value> =
        usage["usage"].as_array().unwrap().iter().map(|row| &row["since_start"]["image_tokens"]).collect();
    // 8x8 tokens + 2; 16x16 capped at 100; 16x16 (GLM-4V's 28-pixel grid, the default).
    assert_eq!(images, [64 + 2, 100, 256], "{body}");

    let broken = text.replace("token_side = 56", "token_side = 0");
    let source = infergate::config::Source { name: "t.toml".into(), dir: gw.dir.path().into(), text: broken };
    let errors = infergate::runtime::Runtime::load(&source, None).err().unwrap().to_string();
    assert!(errors.contains("t.toml:4:14: image_cost: token_side must be above zero"), "{errors}");
}

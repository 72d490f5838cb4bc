//! Access logs: nginx's `main` format, custom formats with variables, JSON lines, `off` per
//! location, 499 for a client that left, reopening after rotation; one line per request, written off
//! the request path.

use crate::support::*;
use http::{Request, Response, StatusCode};
use serde_json::Value;

fn config(backend: &Backend) -> String {
    format!(
        r#"
[http]
access_log = {{ path = "access.log", format = "main" }}
log_format = {{ timing = "$status $request_method $uri $upstream_addr $upstream_status $request_time $upstream_response_time $request_id $http_x_api_key" }}

[[upstream]]
name = "backend"
servers = [{{ addr = "{}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "backend"

  [[server.location]]
  prefix = "/timed"
  proxy = "backend"
  access_log = {{ path = "timing.log", format = "timing" }}

  [[server.location]]
  prefix = "/json"
  proxy = "backend"
  access_log = {{ path = "json.log", format = "json" }}

  [[server.location]]
  exact = "/health"
  return = {{ status = 200, body = "ok" }}
  access_log = "off"
"#,
        backend.authority()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_custom_and_json_formats_each_get_one_line_per_request() {
    let backend = Backend::hello().await;
    let gw = TestGateway::start(&config(&backend)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let request = Request::get("/v1/models?page=2")
        .header("host", "h")
        .header("referer", "http://app.example/")
        .header("user-agent", "curl/8.5")
        .header("x-forwarded-for", "203.0.113.9")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&mut client, request).await.0, StatusCode::OK);
    assert_eq!(send(&mut client, get("/health")).await.0, StatusCode::OK);
    let request = Request::get("/timed").header("host", "h").header("x-api-key", "team-a").body(full("")).unwrap();
    let (_, headers, _) = send(&mut client, request).await;
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    send(&mut client, get("/json/x")).await;

    let main = lines(&gw.path("access.log"), 1).await;
    let pattern = regex::Regex::new(
        r#"^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /v1/models\?page=2 HTTP/1\.1" 200 18 "http://app\.example/" "curl/8\.5" "203\.0\.113\.9"$"#,
    )
    .unwrap();
    assert!(pattern.is_match(&main[0]), "{main:?}");

    let timing = lines(&gw.path("timing.log"), 1).await;
    let fields: Vec<&str> = timing[0].split(' ').collect();
    assert_eq!(fields[..5], ["200", "GET", "/timed", backend.authority().as_str(), "200"], "{timing:?}");
    assert!(fields[5].parse::<f64>().unwrap() >= fields[6].parse::<f64>().unwrap(), "request time covers upstream");
    assert_eq!(fields[7..], [request_id.as_str(), "team-a"]);

    let json = lines(&gw.path("json.log"), 1).await;
    let record: Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(record["status"], 200);
    assert_eq!(record["request_uri"], "/json/x");
    assert_eq!(record["body_bytes_sent"], 18);
    assert_eq!(record["upstream_addr"], backend.authority());
    assert_eq!(record["response_end"], "complete");
    assert_eq!(record["http_referer"], Value::Null);

    // `/health` is not logged, and every other request went to exactly one file.
    assert_eq!(lines(&gw.path("access.log"), 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_logged_499() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<()>(1);
    let backend = Backend::start(move |_| {
        let arrived = arrived_tx.clone();
        async move {
            arrived.send(()).await.unwrap();
            std::future::pending::<Response<TestBody>>().await
        }
    })
    .await;
    let gw = TestGateway::start(&config(&backend)).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let pending = tokio::spawn(async move { client.send_request(get("/json/slow")).await });
    arrived.recv().await.unwrap();
    pending.abort();
    let json = lines(&gw.path("json.log"), 1).await;
    let record: Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!((record["status"].as_u64(), record["response_end"].as_str()), (Some(499), Some("client_closed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_log_is_reopened_and_bad_formats_are_config_errors() {
    let backend = Backend::hello().await;
    let gw = TestGateway::start(&config(&backend)).await;
    let addr = gw.addr("127.0.0.1:0");
    fetch(addr, "/one").await;
    lines(&gw.path("access.log"), 1).await;
    std::fs::rename(gw.path("access.log"), gw.path("access.log.1")).unwrap();
    fetch(addr, "/two").await;
    // Until reopened, lines go to the moved file (as with nginx before USR1).
    assert!(lines(&gw.path("access.log.1"), 2).await[1].contains("/two"));
    gw.gateway.runtime().ledger.access_logs.reopen();
    fetch(addr, "/three").await;
    assert!(lines(&gw.path("access.log"), 1).await[0].contains("/three"));

    let source = infergate::config::Source {
        name: "t.toml".into(),
        dir: gw.dir.path().into(),
        text: config(&backend).replace("format = \"timing\"", "format = \"nope\"").replace("$uri", "$url"),
    };
    let errors = infergate::runtime::Runtime::load(&source, None).err().unwrap().to_string();
    assert!(errors.contains("unknown log variable `$url`"), "{errors}");
    assert!(errors.contains("unknown log format `nope` (known: main, combined, json, timing)"), "{errors}");
}

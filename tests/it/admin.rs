//! The admin API: the exposition parses and holds exact counts after known traffic, `/status` shows
//! drained and down servers, `/reload` reports errors with their line and column while the old config
//! keeps serving, and the admin listener is refused on a public address without a token.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;

/// An OpenAI-style stream in three frames, with `usage` reporting 7 completion tokens.
fn token_stream() -> TestBody {
    let frames = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"A red\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" bicycle\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\n\ndata: [DONE]\n\n",
    ];
    let stream = futures_util::stream::iter(frames.map(|f| Ok::<_, Infallible>(Frame::data(Bytes::from(f)))));
    StreamBody::new(stream).boxed()
}

fn config(first: &Backend, second: &Backend, dead: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{extra}

[limit_zone.strict]
key = "client_ip"
rate = "1r/m"

[[upstream]]
name = "model"
servers = [{{ addr = "{first}" }}, {{ addr = "{second}" }}]

[[upstream]]
name = "dead"
servers = [{{ addr = "{dead}", max_inflight = 4 }}]
max_fails = 1

[[server]]
listen = ["127.0.0.1:0"]
server_name = ["api.test"]

  [[server.location]]
  prefix = "/"
  proxy = "model"

  [[server.location]]
  prefix = "/limited"
  proxy = "model"
  limit_req = {{ zone = "strict", burst = 0, nodelay = true }}

  [[server.location]]
  prefix = "/dead"
  proxy = "dead"
"#,
        first = first.authority(),
        second = second.authority(),
    )
}

/// A model backend: event streams on `/v1/chat...`, `ok` elsewhere.
async fn model_backend() -> Backend {
    Backend::start(|request| async move {
        if request.uri().path().starts_with("/v1/chat") {
            Response::builder().header("content-type", "text/event-stream").body(token_stream()).unwrap()
        } else {
            Response::new(full("ok"))
        }
    })
    .await
}

/// The gateway with its admin API; returns the admin and traffic addresses and the two model servers.
async fn start(extra: &str) -> (TestGateway, SocketAddr, SocketAddr, [Backend; 2]) {
    let backends = [model_backend().await, model_backend().await];
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = TestGateway::start(&config(&backends[0], &backends[1], dead, extra)).await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let addr = gw.addr("127.0.0.1:0");
    (gw, admin, addr, backends)
}

/// The samples of an exposition, parsed by a Prometheus parser.
async fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let (status, headers, text) = fetch(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `metric` whose labels include `labels`, if there is one.
fn try_value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(*v),
        prometheus_parse::Value::Histogram(buckets) => Some(buckets.iter().map(|b| b.count).fold(0.0, f64::max)),
        prometheus_parse::Value::Summary(_) => None,
    }
}

fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    try_value(scrape, metric, labels).unwrap_or_else(|| panic!("no sample {metric} {labels:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_known_traffic_the_exposition_holds_exact_counts() {
    let (_gw, admin, addr, _backends) = start("").await;
    let mut client = http1(addr).await;
    for _ in 0..3 {
        assert_eq!(send(&mut client, get("/v1/models")).await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        let (status, _, body) = send(&mut client, get("/v1/chat/completions")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(send(&mut client, get("/limited")).await.0, StatusCode::OK);
    assert_eq!(send(&mut client, get("/limited")).await.0, StatusCode::TOO_MANY_REQUESTS);

    // Records are finished when each response body ends: wait (bounded) until the last one is in.
    let started = std::time::Instant::now();
    let scrape = loop {
        let scrape = scrape(admin).await;
        let limited = [("location", "/limited"), ("upstream", ""), ("status", "4xx")];
        if try_value(&scrape, "infergate_requests_total", &limited) == Some(1.0) {
            break scrape;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the 429 never got counted");
        tokio::task::yield_now().await;
    };
    let ok = [("server", "api.test"), ("location", "/"), ("upstream", "model"), ("status", "2xx")];
    assert_eq!(value(&scrape, "infergate_requests_total", &ok), 5.0, "3 plain + 2 streams");
    assert_eq!(value(&scrape, "infergate_time_to_first_token_seconds_count", &[("location", "/")]), 2.0);
    assert_eq!(value(&scrape, "infergate_output_tokens_total", &[("location", "/")]), 14.0);
    assert_eq!(value(&scrape, "infergate_streams_ended_total", &[("location", "/"), ("reason", "complete")]), 2.0);
    assert_eq!(value(&scrape, "infergate_rejections_total", &[("reason", "rate_limit_exceeded")]), 1.0);
    assert_eq!(value(&scrape, "infergate_request_duration_seconds_count", &[("location", "/")]), 5.0);
    assert!(value(&scrape, "infergate_upstream_header_time_seconds_count", &[("upstream", "model")]) >= 6.0);
    assert_eq!(value(&scrape, "infergate_client_connections", &[("protocol", "cleartext")]), 1.0);
    assert_eq!(value(&scrape, "infergate_upstream_healthy", &[("upstream", "model")]), 1.0);
    assert_eq!(value(&scrape, "infergate_config_version", &[]), 1.0);
    assert_eq!(value(&scrape, "infergate_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_drained_and_a_down_server() {
    let (_gw, admin, addr, [first, second]) = start("").await;
    assert_eq!(fetch(addr, "/dead").await.0, StatusCode::BAD_GATEWAY);
    let drained = format!("/upstreams/model/servers/{}/drain", first.authority());
    let mut client = http1(admin).await;
    let request = |path: &str| Request::post(path).header("host", "admin").body(full("")).unwrap();
    let (status, _, body) = send(&mut client, request(&drained)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (_, _, body) = send(&mut client, get("/status")).await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["config_version"], 1);
    let upstreams = status["upstreams"].as_array().unwrap();
    let dead = upstreams.iter().find(|u| u["name"] == "dead").unwrap();
    assert_eq!(dead["servers"][0]["healthy"], false);
    let model = upstreams.iter().find(|u| u["name"] == "model").unwrap();
    assert_eq!(model["servers"][0]["draining"], true);
    assert_eq!(model["servers"][1]["draining"], false);
    // Traffic goes to the other server only.
    for _ in 0..4 {
        assert_eq!(fetch(addr, "/v1/models").await.0, StatusCode::OK);
    }
    assert_eq!((first.request_count(), second.request_count()), (0, 4));
    let undrain = drained.replace("/drain", "/undrain");
    assert_eq!(send(&mut client, request(&undrain)).await.0, StatusCode::OK);
    let (_, _, body) = send(&mut client, get("/status")).await;
    assert!(!body.contains("\"draining\":true"), "{body}");
    assert_eq!(send(&mut client, request("/upstreams/model/servers/10.0.0.1:1/drain")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_reports_line_and_column_and_the_old_config_keeps_serving() {
    let (gw, admin, addr, _backends) = start("").await;
    gw.rewrite("[[server]]\nlisten = [\"127.0.0.1:0\"]\nbogus = 1\n");
    let mut client = http1(admin).await;
    let (status, _, body) =
        send(&mut client, Request::post("/reload").header("host", "a").body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let errors: Value = serde_json::from_str(&body).unwrap();
    let first = errors["errors"][0].as_str().unwrap();
    assert!(first.contains("infergate.toml:3:1: unknown field `bogus`"), "{first}");
    assert_eq!(fetch(addr, "/v1/models").await.2, "ok");
    let scrape = scrape(admin).await;
    assert_eq!(value(&scrape, "infergate_config_reloads_total", &[("result", "failure")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_api_and_is_required_off_loopback() {
    let (_gw, admin, _addr, _backends) = start("token = \"s3cret\"").await;
    let (status, headers, _) = fetch(admin, "/status").await;
    assert_eq!((status, headers["www-authenticate"].to_str().unwrap()), (StatusCode::UNAUTHORIZED, "Bearer"));
    let mut client = http1(admin).await;
    let request =
        Request::get("/status").header("host", "a").header("authorization", "Bearer s3cret").body(full("")).unwrap();
    assert_eq!(send(&mut client, request).await.0, StatusCode::OK);

    let source = infergate::config::Source {
        name: "t.toml".into(),
        dir: ".".into(),
        text: "[admin]\nlisten = \"0.0.0.0:9901\"\n".into(),
    };
    let errors = infergate::config::load(&source).unwrap_err().to_string();
    assert!(
        errors.contains("t.toml:2:10: refusing to serve the admin API on 0.0.0.0:9901 without a token"),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_queries_is_exposed() {
    let (_gw, admin, addr, _backends) = start("").await;
    fetch(addr, "/v1/models").await;
    let exposition = fetch(admin, "/metrics").await.2;
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/infergate.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let names = regex::Regex::new(r"infergate_[a-z_]+").unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for name in names.find_iter(target["expr"].as_str().unwrap()) {
                queried += 1;
                assert!(exposition.contains(&format!("\n{}", name.as_str())), "{} is not exposed", name.as_str());
            }
        }
    }
    assert!(queried > 20, "{queried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_leaves_is_counted_as_ended_by_the_client() {
    let backend = Backend::start(|_| async {
        let first =
            futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from("data: {\"choices\":[]}\n\n")))]);
        let body = StreamBody::new(futures_util::StreamExt::chain(first, futures_util::stream::pending())).boxed();
        Response::builder().header("content-type", "text/event-stream").body(body).unwrap()
    })
    .await;
    let other = model_backend().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = TestGateway::start(&config(&backend, &other, dead, "")).await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    let response = client.send_request(get("/v1/chat/completions")).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    drop(client);
    let started = std::time::Instant::now();
    let ended = [("location", "/"), ("reason", "client")];
    while try_value(&scrape(admin).await, "infergate_streams_ended_total", &ended) != Some(1.0) {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the stream's end was not counted");
        tokio::task::yield_now().await;
    }
    let scrape = scrape(admin).await;
    assert_eq!(value(&scrape, "infergate_time_to_first_token_seconds_count", &[("location", "/")]), 1.0);
    assert_eq!(value(&scrape, "infergate_streams_ended_total", &[("location", "/"), ("reason", "complete")]), 0.0);
}

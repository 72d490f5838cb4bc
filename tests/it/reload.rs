//! Reload and shutdown: a new config replaces the running one atomically under traffic, an invalid
//! one changes nothing, listeners come and go, and a drain lets requests in flight finish.

use crate::support::*;
use http::{Response, StatusCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn two_backends_config(active: &str, a: &Backend, b: &Backend, extra_listen: bool) -> String {
    let listen = if extra_listen { r#"["127.0.0.1:0", "127.0.0.2:0"]"# } else { r#"["127.0.0.1:0"]"# };
    format!(
        r#"
[[upstream]]
name = "a"
servers = [{{ addr = "{a}" }}]

[[upstream]]
name = "b"
servers = [{{ addr = "{b}" }}]

[[server]]
listen = {listen}

  [[server.location]]
  prefix = "/"
  proxy = "{active}"
"#,
        a = a.authority(),
        b = b.authority()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_continuous_traffic_fail_no_request() {
    let a = Backend::start(|_| async { Response::new(full("a")) }).await;
    let b = Backend::start(|_| async { Response::new(full("b")) }).await;
    let gw = TestGateway::start(&two_backends_config("a", &a, &b, false)).await;
    let addr = gw.addr("127.0.0.1:0");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for client_index in 0..4 {
        let (stop, ok, progress) = (stop.clone(), ok.clone(), progress.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: stops when told, or after 5,000 requests.
            for i in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Half the clients reconnect every 10 requests, so new connections meet reloads too.
                let mut client = http1(addr).await;
                let batch = if client_index % 2 == 0 { 10 } else { 1_000 };
                for _ in 0..batch {
                    let response = client.send_request(get(&format!("/r{i}"))).await;
                    match response {
                        Ok(response) => {
                            let (status, _, body) = collect(response).await;
                            if status == StatusCode::OK && (body == "a" || body == "b") {
                                ok.fetch_add(1, Ordering::Relaxed);
                                progress.notify_waiters();
                            } else {
                                failures.push(format!("{status} {body}"));
                            }
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            failures
        }));
    }
    for reload in 0..20 {
        let active = if reload % 2 == 0 { "b" } else { "a" };
        gw.rewrite(&two_backends_config(active, &a, &b, false));
        let before = ok.load(Ordering::Relaxed);
        let version = gw.gateway.reload().await.unwrap();
        assert_eq!(version, reload + 2);
        // Let traffic flow on each config before the next reload.
        while ok.load(Ordering::Relaxed) < before + 20 {
            let notified = progress.notified();
            if ok.load(Ordering::Relaxed) >= before + 20 {
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), notified).await.expect("traffic stalled");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failed requests, first: {:?}", failures.len(), failures.first());
    assert!(ok.load(Ordering::Relaxed) > 400, "too little traffic to mean anything");
    assert!(a.request_count() > 0 && b.request_count() > 0, "both configs served traffic");
}

#[tokio::test]
async fn an_invalid_config_is_reported_with_its_location_and_the_old_one_keeps_serving() {
    let a = Backend::start(|_| async { Response::new(full("a")) }).await;
    let b = Backend::start(|_| async { Response::new(full("b")) }).await;
    let gw = TestGateway::start(&two_backends_config("a", &a, &b, false)).await;
    gw.rewrite(&two_backends_config("missing", &a, &b, false));
    let errors = gw.gateway.reload().await.unwrap_err().to_string();
    assert!(errors.contains("infergate.toml:15:11: unknown upstream `missing` (defined: a, b)"), "{errors}");
    let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    assert_eq!(gw.gateway.runtime().version, 1);
}

#[tokio::test]
async fn reload_adds_and_removes_listeners_and_keeps_pooled_connections() {
    let a = Backend::start(|_| async { Response::new(full("a")) }).await;
    let b = Backend::start(|_| async { Response::new(full("b")) }).await;
    let gw = TestGateway::start(&two_backends_config("a", &a, &b, false)).await;
    let main = gw.addr("127.0.0.1:0");
    let (status, _, _) = fetch(main, "/").await;
    assert_eq!(status, StatusCode::OK);

    gw.rewrite(&two_backends_config("a", &a, &b, true));
    gw.gateway.reload().await.unwrap();
    let extra = gw.addr("127.0.0.2:0");
    assert_eq!(gw.addr("127.0.0.1:0"), main, "an unchanged listener stays bound");
    // Connections that stay open across the next reload.
    let mut on_main = http1(main).await;
    let mut on_extra = http1(extra).await;
    let (status, _, body) = send(&mut on_extra, get("/")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
    assert_eq!(a.seen.connections.load(Ordering::SeqCst), 1, "the upstream pool survived the reload");
    assert_eq!(send(&mut on_main, get("/")).await.2, "a");

    gw.rewrite(&two_backends_config("b", &a, &b, false));
    gw.gateway.reload().await.unwrap();
    assert!(gw.gateway.bound_addr("127.0.0.2:0").is_none());
    assert!(tokio::net::TcpStream::connect(extra).await.is_err(), "removed listener still accepts");
    // An open connection's next request runs on the new config; one on the removed listener is refused.
    assert_eq!(send(&mut on_main, get("/")).await.2, "b");
    let (status, _, body) = send(&mut on_extra, get("/")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable: this address no longer serves\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish_and_refuses_new_ones() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let backend = Backend::start(move |_| {
        let mut release = release_rx.clone();
        async move {
            let _ = release.wait_for(|released| *released).await;
            Response::new(full("finished"))
        }
    })
    .await;
    let gw = TestGateway::start(&proxy_config(&backend.authority(), "")).await;
    let addr = gw.addr("127.0.0.1:0");
    let mut client = http1(addr).await;
    let in_flight = tokio::spawn(async move { send(&mut client, get("/slow")).await });
    while backend.request_count() == 0 {
        tokio::task::yield_now().await;
    }
    gw.gateway.stop_accepting().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "new connections still accepted during the drain");
    let gateway = gw.gateway.clone();
    let shutdown = tokio::spawn(async move { gateway.shutdown().await });
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished(), "shutdown did not wait for the request in flight");
    release_tx.send(true).unwrap();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "finished"));
    assert!(shutdown.await.unwrap(), "drain did not complete");
}

/// The seed's upgrade story: start the new model service, switch traffic to it, stop the old one —
/// under continuous streaming traffic, without one failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_under_streaming_load_fails_no_request() {
    use infergate::sim::engine::LatencyModel;
    use infergate::sim::{Sim, SimOptions};
    let model = LatencyModel { prefill_base_ms: 5.0, decode_ms: 2.0, ..LatencyModel::default() };
    let blue = Sim::start(SimOptions { latency: model.clone(), ..SimOptions::default() }).await.unwrap();
    let green = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let config = |servers: &str| {
        format!("[[upstream]]\nname = \"model\"\nservers = [{servers}]\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n  [[server.location]]\n  prefix = \"/\"\n  proxy = \"model\"\n")
    };
    let gw = TestGateway::start(&config(&format!("{{ addr = \"{}\" }}", blue.addr))).await;
    let addr = gw.addr("127.0.0.1:0");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            for _ in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = r#"{"stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}"#;
                let request =
                    http::Request::post("/v1/chat/completions").header("host", "localhost").body(full(body)).unwrap();
                let (status, _, text) = send(&mut http1(addr).await, request).await;
                if status == StatusCode::OK && text.ends_with("data: [DONE]\n\n") {
                    ok += 1;
                } else {
                    failures.push(format!("{status}: {text}"));
                }
            }
            (ok, failures)
        }));
    }
    fn sim_completed(sim: &Sim) -> u64 {
        sim.stats()["completed"].as_u64().unwrap()
    }
    /// Until `sim` has completed `n` more streams (bounded in time).
    async fn wait_for(sim: &Sim, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let target = sim_completed(sim) + n;
        while sim_completed(sim) < target {
            assert!(std::time::Instant::now() < deadline, "traffic stalled");
            tokio::task::yield_now().await;
        }
    }
    wait_for(&blue, 20).await;
    // 1. The new service starts beside the old one: both serve, the old one draining.
    gw.rewrite(&config(&format!("{{ addr = \"{}\", drain = true }}, {{ addr = \"{}\" }}", blue.addr, green.addr)));
    gw.gateway.reload().await.unwrap();
    wait_for(&green, 20).await;
    // 2. The old one leaves the config; it is stopped once its last stream ended.
    gw.rewrite(&config(&format!("{{ addr = \"{}\" }}", green.addr)));
    gw.gateway.reload().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while blue.stats()["running"] != 0 {
        assert!(std::time::Instant::now() < deadline, "the old service never went idle");
        tokio::task::yield_now().await;
    }
    let blue_done = sim_completed(&blue);
    wait_for(&green, 20).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for client in clients {
        let (n, f) = client.await.unwrap();
        ok += n;
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert_eq!(sim_completed(&blue), blue_done, "no request went to the old service after the switch");
    assert!(ok >= 60, "only {ok} streams");
    assert_eq!(blue.stats()["aborted"], 0, "no stream on the old service was cut");
}

#[tokio::test(start_paused = true)]
async fn streams_on_a_drained_server_finish_within_the_grace_or_end_with_an_error_event() {
    use http_body_util::BodyExt;
    use infergate::sim::engine::LatencyModel;
    use infergate::sim::{Sim, SimOptions};
    let model = LatencyModel { prefill_base_ms: 10.0, decode_ms: 10.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let config = |drain: bool| {
        format!("[http]\ndrain_timeout = \"2s\"\n\n[[upstream]]\nname = \"model\"\nservers = [{{ addr = \"{}\", drain = {drain} }}]\n\n[[server]]\nlisten = [\"127.0.0.1:0\"]\n  [[server.location]]\n  prefix = \"/\"\n  proxy = \"model\"\n", sim.addr)
    };
    let gw = TestGateway::start(&config(false)).await;
    let body = r#"{"stream": true, "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}"#;
    let request = http::Request::post("/v1/chat/completions").header("host", "h").body(full(body)).unwrap();
    let mut stream = http1(gw.addr("127.0.0.1:0")).await.send_request(request).await.unwrap().into_body();
    stream.frame().await.unwrap().unwrap();
    gw.rewrite(&config(true));
    gw.gateway.reload().await.unwrap();
    let drained_at = tokio::time::Instant::now();
    let event = loop {
        let frame = stream.frame().await.expect("ended without an event").expect("cut without an event");
        let data = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
        if data.starts_with("event: error") {
            break data;
        }
    };
    assert!(event.contains("upstream_drained"), "{event}");
    let grace = drained_at.elapsed();
    assert!((Duration::from_secs(2)..Duration::from_millis(2_020)).contains(&grace), "{grace:?}");
    assert!(matches!(stream.frame().await, Some(Err(_))), "then cut, never a clean end");
    // A drained server gets no new request: with no other server, the answer is 503 at once.
    let (status, _, _) = fetch(gw.addr("127.0.0.1:0"), "/v1/models").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

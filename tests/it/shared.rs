//! Limits shared by several gateways through a real `redis-server` (`[redis]`, `shared = true`):
//! nginx's `limit_req` kept in Redis, one zone counted once across three gateway processes, and a
//! Redis killed and started again: zones fall back as configured and are shared again after.
//! scripts/test.sh provisions Debian's redis-server; plain `cargo test` skips these.

use crate::support::*;
use http::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Zones of every kind on `return` locations, with `redis`'s URL. Every config here gives Redis's
/// commands a second (`[redis] timeout`, 50 ms by default): on a loaded 2-core machine the first
/// command of a thread after Redis restarted (a new connection, the scripts loaded again) took longer,
/// and a zone that fell back answered 503 where a test asked for 429.
fn config(redis: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[redis]
url = "{redis}"
timeout = "1s"
retry = "200ms"

[limit_zone.seed]
key = "client_ip"
rate = "10r/s"
shared = true

[limit_zone.strict]
key = "header:x-user"
rate = "1r/m"
shared = true
fallback = "refuse"

[limit_zone.mine]
key = "client_ip"
rate = "1r/m"

[limit_zone.preview]
key = "client_ip"
rate = "1r/m"
shared = true
dry_run = true

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/seed/"
  return = {{ status = 200, body = "ok" }}
  errors = "json"
  limit_req = {{ zone = "seed", burst = 20, nodelay = true }}

  [[server.location]]
  prefix = "/strict/"
  return = {{ status = 200, body = "ok" }}
  errors = "json"
  limit_req = {{ zone = "strict" }}

  [[server.location]]
  prefix = "/both/"
  return = {{ status = 200, body = "ok" }}
  limit_req = [{{ zone = "mine" }}, {{ zone = "strict" }}]

  [[server.location]]
  prefix = "/preview/"
  return = {{ status = 200, body = "ok" }}
  limit_req = {{ zone = "preview" }}
"#
    )
}

/// Waits (at most 10 s) until the gateway with the admin API `admin` says its Redis is up again.
async fn until_redis_is_up(admin: std::net::SocketAddr) {
    let started = Instant::now();
    while fetch(admin, "/status").await.2.parse::<Value>().unwrap()["redis"]["up"] != true {
        assert!(started.elapsed() < Duration::from_secs(10), "Redis was not found again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn user(path: &str, name: &str) -> http::Request<TestBody> {
    http::Request::get(path).header("host", "localhost").header("x-user", name).body(full("")).unwrap()
}

#[tokio::test]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn a_shared_zone_keeps_nginx_s_limit_req_in_redis() {
    let redis = RedisServer::start();
    let gw = TestGateway::start(&config(&redis.url())).await;
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    // The seed's 10r/s burst=20 nodelay: 21 at once pass, the 22nd is told when to come back.
    for i in 1..=21 {
        assert_eq!(send(&mut client, get("/seed/")).await.0, StatusCode::OK, "request {i}");
    }
    let (status, headers, body) = send(&mut client, get("/seed/")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "rate_limit_exceeded");
    // The zone's state is in Redis, under the prefix, by client address; it expires once drained.
    let excess: u64 = redis.command(&["HGET", "infergate:limit_req:seed:127.0.0.1", "excess"]).await;
    assert!((19_000..=20_000).contains(&excess), "excess {excess}");
    let ttl: i64 = redis.command(&["PTTL", "infergate:limit_req:seed:127.0.0.1"]).await;
    assert!((2_000..=3_100).contains(&ttl), "expires in {ttl} ms");

    // A header's value is a key of its own, and stored as its SHA-256 (it may be a secret).
    assert_eq!(send(&mut client, user("/strict/", "ann")).await.0, StatusCode::OK);
    assert_eq!(send(&mut client, user("/strict/", "ann")).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(&mut client, user("/strict/", "bob")).await.0, StatusCode::OK);
    let stored: Vec<String> = redis.command(&["KEYS", "infergate:limit_req:strict:*"]).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.contains(&format!("infergate:limit_req:strict:{}", sha256_hex("ann"))), "{stored:?}");

    // A local zone that rejects keeps the shared one from counting the request: `cid` may ask again.
    assert_eq!(send(&mut client, user("/both/", "cid")).await.0, StatusCode::OK);
    assert_eq!(send(&mut client, user("/both/", "dee")).await.0, StatusCode::TOO_MANY_REQUESTS);
    let dee = format!("infergate:limit_req:strict:{}", sha256_hex("dee"));
    assert_eq!(redis.command::<i64>(&["EXISTS", &dee]).await, 0, "the rejected request was not counted");

    // A dry run's zone never refuses.
    for _ in 0..3 {
        assert_eq!(send(&mut client, get("/preview/")).await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn three_gateways_admit_a_shared_zones_rate_in_all() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infergate.toml");
    let zone = config(&redis.url()).replace("burst = 20, nodelay = true", "nodelay = true");
    std::fs::write(&path, format!("[http]\nkeepalive_requests = 10000\n{zone}")).unwrap();
    let gateways: Vec<Running> = (0..3).map(|_| Running::start(&path)).collect();
    let addrs: Vec<std::net::SocketAddr> = gateways
        .iter()
        .map(|gateway| gateway.wait_for("infergate: listening on ").rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    // Each gateway asked as fast as one client can for 2 s (at most 5,000 requests each): 10 r/s with
    // no burst admits one request a tenth of a second in all, not in each.
    let window = Duration::from_secs(2);
    let clients = addrs.iter().map(|&addr| {
        tokio::spawn(async move {
            let mut client = http1(addr).await;
            let (started, mut admitted, mut asked) = (Instant::now(), 0, 0);
            while started.elapsed() < window && asked < 5_000 {
                asked += 1;
                match send(&mut client, get("/seed/")).await.0 {
                    StatusCode::OK => admitted += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    other => panic!("answered {other}"),
                }
            }
            (admitted, asked)
        })
    });
    let mut admitted = 0;
    for client in clients.collect::<Vec<_>>() {
        let (ok, asked) = client.await.unwrap();
        assert!(asked > 20, "a client asked only {asked} times");
        admitted += ok;
    }
    // 2 s at 10 r/s: 20, and the first; three unshared zones would admit three times as many.
    assert!((17..=23).contains(&admitted), "admitted {admitted} in 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn without_redis_zones_fall_back_as_configured_and_share_again_when_it_returns() {
    let mut redis = RedisServer::start();
    let gw = TestGateway::start(&config(&redis.url())).await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    assert_eq!(send(&mut client, user("/strict/", "ann")).await.0, StatusCode::OK);
    assert_eq!(fetch(admin, "/status").await.2.parse::<Value>().unwrap()["redis"]["up"], true);

    redis.stop();
    // The first request after Redis went finds it gone and falls back; so do the ones after, at once.
    let (status, headers, body) = send(&mut client, user("/strict/", "bob")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "fallback = \"refuse\"");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "shared_limits_unavailable");
    // fallback = "local": the zone counts in this gateway, at its rate (burst 20: 21 pass at once).
    for i in 1..=21 {
        assert_eq!(send(&mut client, get("/seed/")).await.0, StatusCode::OK, "request {i} on local counts");
    }
    assert_eq!(send(&mut client, get("/seed/")).await.0, StatusCode::TOO_MANY_REQUESTS);
    let status: Value = fetch(admin, "/status").await.2.parse().unwrap();
    assert_eq!(status["redis"]["up"], false, "{status}");
    assert!(status["redis"]["fallbacks"].as_u64().unwrap() >= 23, "{status}");
    assert!(status["redis"]["last_error"].is_string(), "{status}");
    let metrics = fetch(admin, "/metrics").await.2;
    assert!(metrics.contains("infergate_redis_up 0"), "{metrics}");
    assert!(metrics.contains("infergate_redis_errors_total 1"), "{metrics}");

    // Redis returns, empty: within `retry` the gateway finds it, and the zones count there again.
    redis.restart();
    until_redis_is_up(admin).await;
    assert_eq!(send(&mut client, user("/strict/", "bob")).await.0, StatusCode::OK);
    assert_eq!(send(&mut client, user("/strict/", "bob")).await.0, StatusCode::TOO_MANY_REQUESTS);
    let bob = format!("infergate:limit_req:strict:{}", sha256_hex("bob"));
    assert_eq!(redis.command::<i64>(&["EXISTS", &bob]).await, 1, "counted in Redis again");
    assert!(fetch(admin, "/metrics").await.2.contains("infergate_redis_up 1"));
}

#[test]
fn a_shared_zone_needs_redis() {
    let source = |text: String| infergate::config::Source { name: "t.toml".into(), dir: ".".into(), text };
    let without_redis = config("redis://127.0.0.1:1").replace("[redis]", "[unused]");
    let errors = infergate::config::load(&source(without_redis)).unwrap_err().to_string();
    assert!(errors.contains("a shared zone needs `[redis]`"), "{errors}");
    let bad_url = config("http://nowhere");
    let errors = infergate::config::load(&source(bad_url)).unwrap_err().to_string();
    assert!(errors.contains("t.toml:6:7: invalid Redis URL"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn a_shared_limit_conn_counts_places_across_gateways() {
    let redis = RedisServer::start();
    let slow = Backend::start(|_| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        http::Response::new(full("done"))
    })
    .await;
    let config = format!(
        r#"
[redis]
url = "{}"
timeout = "1s"

[limit_zone.one]
key = "client_ip"
shared = true

[[upstream]]
name = "slow"
servers = [{{ addr = "{}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "slow"
  errors = "json"
  limit_conn = {{ zone = "one", max = 1 }}
"#,
        redis.url(),
        slow.authority()
    );
    let (a, b) = (TestGateway::start(&config).await, TestGateway::start(&config).await);
    let (a, b) = (a.addr("127.0.0.1:0"), b.addr("127.0.0.1:0"));
    let held = tokio::spawn(async move { fetch(a, "/").await });
    let started = Instant::now();
    while slow.request_count() == 0 {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The one place of 127.0.0.1 is held through the first gateway: the second refuses.
    let (status, headers, body) = fetch(b, "/").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(held.await.unwrap().2, "done");
    // Given back when the first answer ended: the second gateway may take it.
    let started = Instant::now();
    while fetch(b, "/").await.0 != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(5), "the lease was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway config whose one key may spend 1,000 tokens a day (so that nothing refills while a test
/// runs), shared through `redis`, in front of `backend`.
fn budget_config(redis: &str, backend: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[redis]
url = "{redis}"
timeout = "1s"
retry = "200ms"
share_api_keys = true

[[api_key]]
name = "app"
sha256 = "{}"
tokens_per_day = 1000

[[upstream]]
name = "model"
servers = [{{ addr = "{backend}" }}]

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/v1/"
  proxy = "model"
  auth = "api_key"
"#,
        sha256_hex("ig-app")
    )
}

/// A model whose every answer used 100 prompt and 100 completion tokens.
async fn model() -> Backend {
    Backend::start(|_| async {
        http::Response::new(full(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":100,"completion_tokens":100,"total_tokens":200}}"#,
        ))
    })
    .await
}

/// A chat completion of the key `app` that reserves 101 tokens (a one-token prompt, `max_tokens`).
fn ask() -> http::Request<TestBody> {
    http::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("authorization", "Bearer ig-app")
        .header("content-type", "application/json")
        .body(full(r#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#))
        .unwrap()
}

/// The key's budget in Redis, in whole tokens (its level is kept in tokens times milliseconds).
async fn budget_left(redis: &RedisServer) -> i64 {
    let level: String = redis.command(&["HGET", "infergate:budget:app:tokens:1000/86400000", "level"]).await;
    level.parse::<i64>().unwrap() / 86_400_000
}

/// Waits (at most 5 s) until the key's budget in Redis is down to `left` tokens: the requests sent
/// have settled.
async fn until_settled(redis: &RedisServer, left: i64) {
    let started = Instant::now();
    while budget_left(redis).await > left {
        assert!(started.elapsed() < Duration::from_secs(5), "{} tokens left, not {left}", budget_left(redis).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn one_keys_budget_is_spent_once_across_gateways() {
    let redis = RedisServer::start();
    let backend = model().await;
    let (_dir, _running, addrs) = gateways(3, &budget_config(&redis.url(), &backend.authority()));
    let mut clients = Vec::new();
    for addr in addrs {
        clients.push(http1(addr).await);
    }
    // Each answer costs 200 tokens: five fit in 1,000, taken in turn from the three gateway
    // processes; each one's headers count what all spent.
    let mut remaining = Vec::new();
    for i in 0..5 {
        let (status, headers, body) = send(&mut clients[i % 3], ask()).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        remaining.push(headers["x-ratelimit-remaining-tokens"].to_str().unwrap().parse::<i64>().unwrap());
    }
    // Each reservation takes 101 (a settlement may land after the next reservation: it is sent on
    // its own, perhaps by another worker).
    assert!(remaining.windows(2).all(|pair| pair[1] <= pair[0] - 100), "{remaining:?}");
    until_settled(&redis, 10).await;
    for client in &mut clients {
        let (status, headers, body) = send(client, ask()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(headers.contains_key("retry-after"));
    }
    // The reservations settled on the backend's usage: 5 x 200 spent, nothing held.
    assert!(budget_left(&redis).await <= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn what_a_key_spends_while_redis_is_down_is_written_when_it_returns() {
    let mut redis = RedisServer::start();
    let backend = model().await;
    let gw = TestGateway::start(&budget_config(&redis.url(), &backend.authority())).await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    assert_eq!(send(&mut client, ask()).await.0, StatusCode::OK);
    until_settled(&redis, 800).await;

    // Down: the gateway's copy of the budget (800 left, as Redis last said) counts alone.
    redis.stop();
    for _ in 0..2 {
        let (status, headers, _) = send(&mut client, ask()).await;
        assert_eq!(status, StatusCode::OK);
        let left: i64 = headers["x-ratelimit-remaining-tokens"].to_str().unwrap().parse().unwrap();
        assert!(left < 800, "counted from Redis's last level: {left}");
    }
    let status: Value = fetch(admin, "/status").await.2.parse().unwrap();
    assert!(status["redis"]["fallbacks"].as_u64().unwrap() >= 2, "{status}");

    // Back, empty (a restart without persistence lost the first request's 200): the 400 spent
    // meanwhile is written with the next request, which spends 200 more.
    redis.restart();
    until_redis_is_up(admin).await;
    assert_eq!(send(&mut client, ask()).await.0, StatusCode::OK);
    let started = Instant::now();
    loop {
        let left = budget_left(&redis).await;
        if (395..=410).contains(&left) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "Redis holds {left} tokens, not 1000 - 600");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gateways in front of `sim` with 3 slots leased through `redis`, their leases living 1 s.
fn admission_config(redis: &str, sim: &infergate::sim::Sim) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[redis]
url = "{redis}"
timeout = "1s"
lease_ttl = "1s"

[[upstream]]
name = "model"
servers = [{{ addr = "{}", max_inflight = 3 }}]
queue = {{ max = 64, timeout = "5s" }}
shared_admission = true

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "model"
"#,
        sim.addr
    )
}

fn generate(max_tokens: u32) -> http::Request<TestBody> {
    let body =
        serde_json::json!({"stream": true, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
    http::Request::post("/v1/chat/completions").header("host", "localhost").body(full(body.to_string())).unwrap()
}

/// Gateway processes started on `config`, with their traffic addresses.
fn gateways(count: usize, config: &str) -> (tempfile::TempDir, Vec<Running>, Vec<std::net::SocketAddr>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infergate.toml");
    std::fs::write(&path, config).unwrap();
    let running: Vec<Running> = (0..count).map(|_| Running::start(&path)).collect();
    let addrs = running
        .iter()
        .map(|gateway| gateway.wait_for("infergate: listening on ").rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    (dir, running, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn three_gateways_never_admit_more_than_the_models_slots_together() {
    use infergate::sim::{engine::LatencyModel, Sim, SimOptions};
    let redis = RedisServer::start();
    let model = LatencyModel { slots: 100, prefill_base_ms: 30.0, decode_ms: 10.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let (_dir, _running, addrs) = gateways(3, &admission_config(&redis.url(), &sim));
    // 18 requests at once, 6 through each gateway: each gateway alone would send 3 at a time.
    let requests: Vec<_> = (0..18)
        .map(|i| {
            let addr = addrs[i % 3];
            tokio::spawn(async move { send(&mut http1(addr).await, generate(8)).await })
        })
        .collect();
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(sim.stats()["completed"], 18);
    assert_eq!(sim.stats()["max_running"], 3, "the model saw its max_inflight at most, from three gateways");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn a_gateway_that_dies_gives_its_slots_back_within_the_leases_life() {
    use infergate::sim::{engine::LatencyModel, Sim, SimOptions};
    let redis = RedisServer::start();
    let model = LatencyModel { slots: 100, prefill_base_ms: 10.0, decode_ms: 10.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let (_dir, mut running, addrs) = gateways(2, &admission_config(&redis.url(), &sim));
    // The first gateway holds every slot with three long streams (1,000 tokens: 10 s).
    let long: Vec<_> = (0..3)
        .map(|_| {
            let addr = addrs[0];
            tokio::spawn(async move {
                // Read to its end (or the gateway's death): dropped, the stream would end at once.
                let _ = send(&mut http1(addr).await, generate(1000)).await;
            })
        })
        .collect();
    let started = Instant::now();
    while sim.stats()["running"] != 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", sim.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (second, asked) = (addrs[1], Instant::now());
    let waiting = tokio::spawn(async move { send(&mut http1(second).await, generate(4)).await });
    // Longer than a lease's life: the first gateway renews its leases while its streams run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "the second gateway waits: the first holds the model's three slots");
    // Killed, the first renews nothing: its leases lapse within 1 s and the waiting request is served.
    drop(running.remove(0));
    let (status, _, body) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(asked.elapsed() < Duration::from_secs(5), "served within its queue's timeout");
    assert!(sim.stats()["max_running"].as_u64().unwrap() <= 3, "{}", sim.stats());
    for stream in long {
        stream.abort();
    }
}

// One thread: the gateway's one Redis connection, made by the first request, carries the second's
// reservation (a connection made while Redis is stopped would not get as far as sending it).
#[tokio::test]
#[ignore = "needs redis-server: scripts/test.sh provisions it"]
async fn a_reservation_whose_answer_came_late_is_not_counted_twice() {
    let redis = RedisServer::start();
    let backend = model().await;
    let gw = TestGateway::start(&budget_config(&redis.url(), &backend.authority())).await;
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let mut client = http1(gw.addr("127.0.0.1:0")).await;
    assert_eq!(send(&mut client, ask()).await.0, StatusCode::OK);
    until_settled(&redis, 800).await;
    // Redis stops answering (not gone): the reservation times out and is counted here, and Redis
    // takes it when it goes on.
    redis.signal("STOP");
    assert_eq!(send(&mut client, ask()).await.0, StatusCode::OK);
    redis.signal("CONT");
    // It waits in Redis's socket until then, and is taken then.
    let started = Instant::now();
    while redis.command::<Vec<String>>(&["KEYS", "infergate:budget-reservation:*"]).await.len() != 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the late reservation never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until_redis_is_up(admin).await;
    // The next request writes what the second used (200) and cancels the late reservation (101
    // back): three requests, 600 tokens, counted once each.
    assert_eq!(send(&mut client, ask()).await.0, StatusCode::OK);
    let started = Instant::now();
    loop {
        let left = budget_left(&redis).await;
        let markers: Vec<String> = redis.command(&["KEYS", "infergate:budget-reservation:*"]).await;
        if (395..=410).contains(&left) && markers.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "Redis holds {left} tokens and {markers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The `infergate` binary as a user runs it: `check` like `nginx -t`, `run` with SIGHUP reload and
//! SIGTERM drain, as a real child process.

use crate::support::*;
use http::{Response, StatusCode};
use std::process::Command;

fn check(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(GATEWAY_BINARY).arg("check").args(args).current_dir(dir).output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn check_accepts_the_seed_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    write_cert(&dir.path().join("certs"), "example", &["api.example.com"]);
    let seed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seed.toml")).unwrap();
    std::fs::write(dir.path().join("seed.toml"), seed).unwrap();
    let (code, out) = check(dir.path(), &["--config", "seed.toml"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("seed.toml: configuration is valid"), "{out}");
}

#[test]
fn check_prints_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"[http]
client_header_timeout = "sometime"

[[upstream]]
name = "glm"
servers = [{ addr = "127.0.0.1", max_inflight_tokens = 0 }]

[[server]]
listen = ["127.0.0.1:8000", "127.0.0.1:8000"]

  [[server.location]]
  prefix = "/"
  proxy = "gml"

  [[server.location]]
  regex = "(unclosed"
  return = { status = 200 }
"#;
    std::fs::write(dir.path().join("bad.toml"), config).unwrap();
    let (code, out) = check(dir.path(), &["--config", "bad.toml"]);
    assert_eq!(code, 1);
    for expected in [
        "bad.toml:2:25: invalid duration \"sometime\"",
        "bad.toml:6:21: invalid upstream server address \"127.0.0.1\" (expected host:port or https://host[:port])",
        "bad.toml:6:56: max_inflight_tokens must be at least 1 (leave it out for no limit)",
        "bad.toml:9:29: duplicate listener 127.0.0.1:8000 in this server",
        "bad.toml:13:11: unknown upstream `gml` (defined: glm)",
        "bad.toml:16:11: invalid regex",
    ] {
        assert!(out.lines().any(|l| l.starts_with(expected)), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn without_a_config_the_embedded_default_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check(dir.path(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("<embedded default>: configuration is valid"), "{out}");
}

/// The address in the first `http://ADDR` of a log line.
fn url_addr(line: &str) -> std::net::SocketAddr {
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split([' ', '/']).next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// `config` with the admin API on a free port (its default, 127.0.0.1:9901, is not for tests).
fn with_admin(config: &str) -> String {
    format!("{config}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_on_sighup_and_exits_cleanly_on_sigterm() {
    let a = Backend::start(|_| async { Response::new(full("a")) }).await;
    let b = Backend::start(|_| async { Response::new(full("b")) }).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infergate.toml");
    std::fs::write(&path, with_admin(&proxy_config(&a.authority(), ""))).unwrap();
    let mut running = Running::start(&path);
    let admin = url_addr(&running.wait_for("infergate: admin API on http://"));
    let line = running.wait_for("infergate: listening on ");
    let addr: std::net::SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    running.wait_for(&format!("infergate: upstream backend -> {}", a.authority()));
    assert_eq!(fetch(addr, "/").await.2, "a");
    let metrics = fetch(admin, "/metrics").await.2;
    assert!(
        metrics.contains(
            r#"infergate_requests_total{server="127.0.0.1:0",location="/",upstream="backend",status="2xx"} 1"#
        ),
        "{metrics}"
    );

    std::fs::write(&path, proxy_config(&b.authority(), "")).unwrap();
    running.signal("HUP");
    running.wait_for("config reloaded");
    assert_eq!(fetch(addr, "/").await.2, "b");

    std::fs::write(&path, "this is not toml").unwrap();
    running.signal("HUP");
    running.wait_for("config reload failed");
    let (status, _, body) = fetch(addr, "/").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b"));

    running.signal("TERM");
    let status = running.exit_status().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_the_sim_and_the_gateway_points_to_its_pages_and_streams_an_answer() {
    let mut running = Running::spawn(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--sim-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    // Its first lines point to the question page and the dashboard.
    let page = url_addr(&running.wait_for("infergate demo: open http://"));
    let dashboard = url_addr(&running.wait_for("infergate demo: the live dashboard is on http://"));
    let addr = url_addr(&running.wait_for("infergate demo: gateway on http://"));
    assert_eq!(page, addr);
    running.wait_for("curl -N");
    for (at, title) in [(page, "<title>Ask about an image</title>"), (dashboard, "<title>infergate dashboard</title>")]
    {
        let (status, headers, html) = fetch(at, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains(title), "{html}");
        assert!(headers["content-security-policy"].to_str().unwrap().starts_with("default-src 'none'"));
    }
    let body = r#"{"model": "glm-4v-flash", "stream": true, "max_tokens": 3, "messages": [{"role": "user", "content": "What is in this image?"}]}"#;
    let request = http::Request::post("/v1/chat/completions").header("host", "localhost").body(full(body)).unwrap();
    let (status, headers, text) = send(&mut http1(addr).await, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(text.contains("chat.completion.chunk") && text.ends_with("data: [DONE]\n\n"), "{text}");
    running.signal("INT");
    let status = running.exit_status().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_crash_above_exits_with_137_like_an_out_of_memory_kill() {
    let mut running = Running::spawn(&["sim", "--listen", "127.0.0.1:0", "--crash-above", "1"]);
    let addr = url_addr(&running.wait_for("infergate sim: model glm-4v-flash on http://"));
    assert_eq!(fetch(addr, "/health").await.0, StatusCode::OK);
    // Two requests present at once (the first one is in its prefill) exceed 1.
    let body = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
    let first = tokio::spawn(async move {
        let request = http::Request::post("/v1/chat/completions").header("host", "sim").body(full(body)).unwrap();
        http1(addr).await.send_request(request).await
    });
    // Wait until the first one holds a slot, then send the one too many.
    while !fetch(addr, "/stats").await.2.contains("\"running\":1") {
        tokio::task::yield_now().await;
    }
    let request = http::Request::post("/v1/chat/completions").header("host", "sim").body(full(body)).unwrap();
    let _ = http1(addr).await.send_request(request).await;
    let _ = first.await;
    assert_eq!(running.exit_status().await.code(), Some(137));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_and_error_logs_after_rotation() {
    let backend = Backend::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infergate.toml");
    let config = proxy_config(&backend.authority(), "").replace(
        "[[upstream]]",
        "[http]\naccess_log = { path = \"access.log\" }\nerror_log = { path = \"error.log\", level = \"info\" }\n\n[[upstream]]",
    );
    std::fs::write(&path, with_admin(&config)).unwrap();
    let running = Running::start(&path);
    let line = running.wait_for("infergate: listening on ");
    let addr: std::net::SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let read_when = |name: &str, needle: &str| {
        let file = dir.path().join(name);
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(started.elapsed() < PROCESS_GUARD, "{name} never held {needle:?}: {text}");
            std::thread::yield_now();
        }
    };
    fetch(addr, "/before").await;
    read_when("access.log", "GET /before HTTP/1.1");
    std::fs::rename(dir.path().join("access.log"), dir.path().join("access.log.1")).unwrap();
    std::fs::rename(dir.path().join("error.log"), dir.path().join("error.log.1")).unwrap();
    running.signal("USR1");
    read_when("error.log", "log files reopened");
    fetch(addr, "/after").await;
    let text = read_when("access.log", "GET /after HTTP/1.1");
    assert!(!text.contains("/before"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_requests_access_log_lines_are_written_before_the_gateway_exits() {
    let backend = Backend::hello().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("infergate.toml");
    let config = proxy_config(&backend.authority(), "")
        .replace("[[upstream]]", "[http]\naccess_log = { path = \"access.log\" }\n\n[[upstream]]");
    std::fs::write(&path, config).unwrap();
    let mut running = Running::start(&path);
    let line = running.wait_for("infergate: listening on ");
    let addr: std::net::SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    for i in 0..20 {
        assert_eq!(fetch(addr, &format!("/last/{i}")).await.0, StatusCode::OK);
    }
    // At once: the lines still wait in the workers' buffers for their batch.
    running.signal("TERM");
    assert_eq!(running.exit_status().await.code(), Some(0));
    let text = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    let logged = text.lines().filter(|line| line.contains("GET /last/")).count();
    assert_eq!(logged, 20, "{text}");
}

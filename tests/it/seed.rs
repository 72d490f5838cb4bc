//! The seed's whole nginx front end, `examples/seed.toml` as shipped, end to end: the port 80
//! redirect, TLS with HTTP/2, the security headers on proxied and static responses, gzip of a 20 KB
//! JSON answer, 7-day caching of static files, the rate limit's 22nd request, the access log.

use crate::support::*;
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Read;

/// About 20 KB of chat-completion JSON.
fn completion() -> String {
    let choices: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"index":{i},"message":{{"role":"assistant","content":"a red bicycle {i}"}}}}"#))
        .collect();
    format!(r#"{{"object":"chat.completion","choices":[{}]}}"#, choices.join(","))
}

/// A free port on 127.0.0.1 (the seed's two servers need two distinct addresses).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(start_paused = true)]
async fn the_seed_config_works_end_to_end() {
    let model = Backend::start(|_| async {
        Response::builder().header("content-type", "application/json").body(full(completion())).unwrap()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    for folder in ["certs", "logs", "html"] {
        std::fs::create_dir(dir.path().join(folder)).unwrap();
    }
    let ca = write_cert(&dir.path().join("certs"), "example", &["api.example.com"]);
    std::fs::write(dir.path().join("html/app.css"), "body { color: #333 }\n".repeat(100)).unwrap();
    let (http_port, https_port) = (free_port(), free_port());
    let seed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seed.toml")).unwrap();
    let config = seed
        .replace("127.0.0.1:8080", &model.authority())
        .replace("0.0.0.0:80\"", &format!("127.0.0.1:{http_port}\""))
        .replace("0.0.0.0:443\"", &format!("127.0.0.1:{https_port}\""));
    let gw = TestGateway::start_in(dir, &config).await;

    // Port 80 answers 301 to https, path and query kept.
    let plain = gw.addr(&format!("127.0.0.1:{http_port}"));
    let mut client = http1(plain).await;
    let request = Request::get("/v1/chat/completions?x=1").header("host", "api.example.com").body(full("")).unwrap();
    let (status, headers, _) = send(&mut client, request).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "https://api.example.com/v1/chat/completions?x=1");

    // Port 443: TLS with HTTP/2; the proxied JSON is gzipped and carries both security headers.
    let tls_addr = gw.addr(&format!("127.0.0.1:{https_port}"));
    let tls = tls_connect(tls_addr, "api.example.com", &ca, &[b"h2", b"http/1.1"], rustls::ALL_VERSIONS).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::post("https://api.example.com/v1/chat/completions")
        .header("accept-encoding", "gzip, deflate")
        .header("content-type", "application/json")
        .body(full(r#"{"model":"glm-4.6v-flash","messages":[]}"#))
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["content-encoding"], "gzip");
    assert_eq!(parts.headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(parts.headers["x-content-type-options"], "nosniff");
    let compressed = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
    let mut json = String::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_string(&mut json).unwrap();
    assert_eq!(json, completion());
    assert!(compressed.len() * 5 < json.len(), "{} bytes from {}", compressed.len(), json.len());

    // Static files: 7-day caching, and the server's headers too (nginx would drop them here).
    let response =
        h2.send_request(Request::get("https://api.example.com/app.css").body(full("")).unwrap()).await.unwrap();
    let (status, headers, body) = collect(response).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 2100));
    assert_eq!(headers["content-type"], "text/css");
    assert_eq!(headers["cache-control"], "max-age=604800, public, no-transform");
    assert!(headers.contains_key("expires") && headers.contains_key("etag"));
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    // /v1/inference: burst 20 nodelay at 10 r/s, so the 22nd immediate request is refused.
    for i in 1..=21 {
        let request = Request::post("https://api.example.com/v1/inference").body(full("{}")).unwrap();
        let (status, _, _) = collect(h2.send_request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
    }
    let request = Request::post("https://api.example.com/v1/inference").body(full("{}")).unwrap();
    let (status, headers, body) = collect(h2.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("rate_limit_exceeded"), "{body}");

    // Every request is in the access log, in the seed's `main` format.
    let log = gw.path("logs/access.log");
    let started = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() == 25 {
            break text;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "access log: {text}");
        tokio::task::yield_now().await;
    };
    // Lines of different workers may be out of order (docs/config.md): found by what they hold.
    assert!(
        text.lines().any(|line| line.contains(r#""GET /v1/chat/completions?x=1 HTTP/1.1" 301 0 "-" "-" "-""#)),
        "{text}"
    );
    assert!(text.lines().any(|line| line.contains(r#""POST /v1/inference HTTP/2.0" 429 "#)), "{text}");
}

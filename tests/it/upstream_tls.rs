//! Upstream servers reached over TLS (`https://` servers): real TLS on 127.0.0.1 with certificates
//! made for the test, the server's name sent (SNI) and checked, its own `Host`, a client
//! certificate where the server asks for one, and an upstream's `proxy_set_header` (a hosted
//! provider's key). Then `fallback`: the upstream that takes the requests its primary cannot.

use crate::support::*;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// What a TLS backend saw of each request: the name the client sent (SNI), `Host` (HTTP/2's
/// `:authority`) and `Authorization`.
type Seen = Arc<Mutex<Vec<(Option<String>, String, String)>>>;

/// The HTTP versions a TLS backend was spoken to in, one entry per connection.
type Versions = Arc<Mutex<Vec<http::Version>>>;

/// `der` as a PEM certificate file.
fn pem(der: &CertificateDer) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// A backend on 127.0.0.1 speaking TLS with the certificate `backend.crt` for `localhost` (its CA in
/// `backend-ca.pem` of `dir`); with `client_ca`, it asks for a client certificate signed by it.
async fn tls_backend(dir: &std::path::Path, client_ca: Option<CertificateDer<'static>>) -> (String, Seen) {
    let (server, seen, _) = tls_backend_with(dir, client_ca, false).await;
    (server, seen)
}

/// As `tls_backend`; with `http2`, it offers HTTP/2 (ALPN) before HTTP/1.1 and answers a POST with
/// its body's length, in three frames.
async fn tls_backend_with(
    dir: &std::path::Path,
    client_ca: Option<CertificateDer<'static>>,
    http2: bool,
) -> (String, Seen, Versions) {
    let ca = write_cert(dir, "backend", &["localhost"]);
    std::fs::write(dir.join("backend-ca.pem"), pem(&ca)).unwrap();
    let chain: Vec<CertificateDer> =
        CertificateDer::pem_file_iter(dir.join("backend.crt")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("backend.key")).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            builder
                .with_client_cert_verifier(rustls::server::WebPkiClientVerifier::builder(roots.into()).build().unwrap())
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    if http2 {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, versions): (Seen, Versions) = Default::default();
    let (log, connections) = (seen.clone(), versions.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (acceptor, log, connections) = (acceptor.clone(), log.clone(), connections.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let sni = tls.get_ref().1.server_name().map(String::from);
                let speaks_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                connections.lock().unwrap().push(if speaks_h2 {
                    http::Version::HTTP_2
                } else {
                    http::Version::HTTP_11
                });
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let header =
                        |name| request.headers().get(name).map_or(String::new(), |v| v.to_str().unwrap().into());
                    let host = request.uri().authority().map_or_else(|| header("host"), |a| a.to_string());
                    log.lock().unwrap().push((sni.clone(), host, header("authorization")));
                    async move {
                        let answer = match request.method() {
                            &http::Method::POST if http2 => {
                                let length = http_body_util::BodyExt::collect(request.into_body())
                                    .await
                                    .unwrap()
                                    .to_bytes()
                                    .len();
                                let frames = ["length ", "is ", Box::leak(length.to_string().into_boxed_str())];
                                let stream = futures_util::stream::iter(frames.map(|f| {
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                                        f.as_bytes(),
                                    )))
                                }));
                                http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(stream))
                            }
                            _ => full(Bytes::from_static(b"over tls")),
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(answer))
                    }
                });
                let io = TokioIo::new(tls);
                if speaks_h2 {
                    let executor = hyper_util::rt::TokioExecutor::new();
                    let _ = hyper::server::conn::http2::Builder::new(executor).serve_connection(io, service).await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                }
            });
        }
    });
    (format!("localhost:{}", addr.port()), seen, versions)
}

fn config(server: &str, tls: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "hosted"
servers = [{{ addr = "https://{server}" }}]
tls = {tls}
proxy_set_header = {{ authorization = "Bearer sk-provider" }}

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "hosted"
"#
    )
}

#[tokio::test]
async fn an_https_server_is_reached_over_tls_by_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen) = tls_backend(dir.path(), None).await;
    let gw = TestGateway::start_in(dir, &config(&server, r#"{ ca = "backend-ca.pem" }"#)).await;
    let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/v1/models").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "over tls"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(Some("localhost".into()), server.clone(), "Bearer sk-provider".into())]);
}

#[tokio::test]
async fn a_certificate_no_root_signed_is_refused_with_a_502() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen) = tls_backend(dir.path(), None).await;
    // The system's roots do not know the test's CA.
    let gw = TestGateway::start_in(dir, &config(&server, "{}")).await;
    let (status, _, body) = fetch(gw.addr("127.0.0.1:0"), "/v1/models").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(seen.lock().unwrap().is_empty(), "no request crossed an untrusted handshake");
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_asks() {
    let dir = tempfile::tempdir().unwrap();
    let client_ca = write_cert(dir.path(), "client", &["infergate"]);
    let (server, seen) = tls_backend(dir.path(), Some(client_ca)).await;
    // max_fails = 0: the refused handshake does not take the server out of rotation.
    let without = config(&server, r#"{ ca = "backend-ca.pem" }"#).replace("tls = ", "max_fails = 0\ntls = ");
    let with = config(&server, r#"{ ca = "backend-ca.pem", cert = "client.crt", key = "client.key" }"#);
    let gw = TestGateway::start_in(dir, &without).await;
    assert_eq!(fetch(gw.addr("127.0.0.1:0"), "/").await.0, StatusCode::BAD_GATEWAY, "refused without one");
    gw.rewrite(&with);
    gw.gateway.reload().await.unwrap();
    assert_eq!(fetch(gw.addr("127.0.0.1:0"), "/").await.2, "over tls");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn tls_settings_are_checked_at_load() {
    let source = |text: String| infergate::config::Source { name: "t.toml".into(), dir: ".".into(), text };
    let errors = infergate::config::load(&source(config("h:1", r#"{ cert = "c.pem" }"#))).unwrap_err().to_string();
    assert!(errors.contains("a client `cert` needs its `key`"), "{errors}");
    let bad = config("h:1", "{}").replace("https://h:1", "ftp://h:1");
    let errors = infergate::config::load(&source(bad)).unwrap_err().to_string();
    assert!(errors.contains("expected host:port or https://host[:port]"), "{errors}");
    let missing = config("h:1", r#"{ ca = "nowhere.pem" }"#);
    let errors = infergate::runtime::Runtime::load(&source(missing), None).err().unwrap().to_string();
    assert!(errors.contains("cannot load certificate"), "{errors}");
}

/// A primary model with one slot and no queue, and `fallback` a hosted one.
fn fallback_config(primary: &str, hosted: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[upstream]]
name = "local"
servers = [{{ addr = "{primary}", max_inflight = 1 }}]
queue = {{ max = 0 }}
fallback = "hosted"

[[upstream]]
name = "hosted"
servers = [{{ addr = "https://{hosted}" }}]
tls = {{ ca = "backend-ca.pem" }}
proxy_set_header = {{ authorization = "Bearer sk-provider" }}

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "local"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_takes_what_a_full_or_downed_primary_cannot() {
    use infergate::sim::{engine::LatencyModel, Sim, SimOptions};
    let dir = tempfile::tempdir().unwrap();
    let (hosted, seen) = tls_backend(dir.path(), None).await;
    let model = LatencyModel { prefill_base_ms: 60_000.0, ..LatencyModel::default() };
    let sim = Sim::start(SimOptions { latency: model, ..SimOptions::default() }).await.unwrap();
    let gw = TestGateway::start_in(dir, &fallback_config(&sim.addr.to_string(), &hosted)).await;
    let addr = gw.addr("127.0.0.1:0");
    // The primary's one slot is taken by a long generation: the next request goes to the fallback.
    let body = r#"{"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#;
    let chat = move || Request::post("/v1/chat/completions").header("host", "localhost").body(full(body)).unwrap();
    let held = tokio::spawn(async move { send(&mut http1(addr).await, chat()).await });
    let upstream = gw.gateway.runtime().upstreams["local"].clone();
    while upstream.admission.as_ref().unwrap().inflight() != vec![1] {
        tokio::task::yield_now().await;
    }
    let (status, _, answer) = send(&mut http1(addr).await, chat()).await;
    assert_eq!((status, answer.as_str()), (StatusCode::OK, "over tls"), "the hosted fallback answered");
    assert_eq!(seen.lock().unwrap()[0].2, "Bearer sk-provider", "with the fallback's own key");
    held.abort();
}

#[tokio::test]
async fn a_primary_whose_servers_are_down_sends_to_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let (hosted, seen) = tls_backend(dir.path(), None).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = TestGateway::start_in(dir, &fallback_config(&closed.to_string(), &hosted)).await;
    let addr = gw.addr("127.0.0.1:0");
    // The first request finds the server refusing (502), which marks it down (max_fails = 1) ...
    assert_eq!(fetch(addr, "/v1/models").await.0, StatusCode::BAD_GATEWAY);
    assert!(seen.lock().unwrap().is_empty());
    // ... and from then on its requests go to the fallback, without a try on the primary.
    for _ in 0..2 {
        assert_eq!(fetch(addr, "/v1/models").await.2, "over tls");
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
    let admin = infergate::admin::start(gw.gateway.clone()).await.unwrap().unwrap();
    let metrics = fetch(admin, "/metrics").await.2;
    assert!(metrics.contains(r#"infergate_upstream_fallbacks_total{upstream="local"} 2"#), "{metrics}");
}

#[tokio::test]
async fn a_fallback_is_one_step_and_must_exist() {
    let source = |text: String| infergate::config::Source { name: "t.toml".into(), dir: ".".into(), text };
    let unknown = fallback_config("127.0.0.1:1", "h:1").replace("fallback = \"hosted\"", "fallback = \"nowhere\"");
    let errors = infergate::config::load(&source(unknown)).unwrap_err().to_string();
    assert!(errors.contains("unknown fallback upstream `nowhere`"), "{errors}");
    let chained = fallback_config("127.0.0.1:1", "h:1")
        .replace("tls = { ca = \"backend-ca.pem\" }", "tls = { ca = \"backend-ca.pem\" }\nfallback = \"local\"");
    let errors = infergate::config::load(&source(chained)).unwrap_err().to_string();
    assert!(errors.contains("has a fallback of its own (one step only)"), "{errors}");
}

#[tokio::test]
async fn a_server_that_offers_http2_is_spoken_to_over_one_http2_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, seen, versions) = tls_backend_with(dir.path(), None, true).await;
    let gw = TestGateway::start_in(dir, &config(&server, r#"{ ca = "backend-ca.pem" }"#)).await;
    let addr = gw.addr("127.0.0.1:0");
    for _ in 0..3 {
        assert_eq!(fetch(addr, "/v1/models").await.2, "over tls");
    }
    // A body up and a streamed answer down, on the same connection.
    let upload =
        Request::post("/v1/chat/completions").header("host", "localhost").body(full("x".repeat(100_000))).unwrap();
    let (status, _, body) = send(&mut http1(addr).await, upload).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "length is 100000"));
    assert_eq!(versions.lock().unwrap().clone(), vec![http::Version::HTTP_2], "one connection, HTTP/2");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(
        seen.iter().all(|(sni, authority, key)| sni.as_deref() == Some("localhost")
            && *authority == server
            && key == "Bearer sk-provider"),
        "{seen:?}"
    );
}

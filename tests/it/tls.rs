//! TLS listeners: certificates by SNI, TLS 1.2 / 1.3 selection, ALPN h2 and http/1.1, and the
//! forwarding headers of an HTTPS request.

use crate::support::*;
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn tls_config(backend: &str, protocols: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "backend"
servers = [{{ addr = "{backend}" }}]

[[server]]
listen = ["127.0.0.1:0"]
server_name = ["api.example.com"]
tls = {{ cert = "api.crt", key = "api.key", protocols = [{protocols}] }}
add_header = {{ "Strict-Transport-Security" = "max-age=31536000", "X-Content-Type-Options" = "nosniff" }}

  [[server.location]]
  prefix = "/"
  proxy = "backend"

[[server]]
listen = ["127.0.0.1:0"]
server_name = ["*.other.test"]
tls = {{ cert = "other.crt", key = "other.key", protocols = [{protocols}] }}

  [[server.location]]
  prefix = "/"
  return = {{ status = 200, body = "other site" }}
"#
    )
}

struct Certs {
    api: rustls::pki_types::CertificateDer<'static>,
    other: rustls::pki_types::CertificateDer<'static>,
}

async fn start(backend: &Backend, protocols: &str) -> (TestGateway, Certs) {
    let dir = tempfile::tempdir().unwrap();
    let api = write_cert(dir.path(), "api", &["api.example.com"]);
    let other = write_cert(dir.path(), "other", &["*.other.test"]);
    let gw = TestGateway::start_in(dir, &tls_config(&backend.authority(), protocols)).await;
    (gw, Certs { api, other })
}

#[tokio::test]
async fn https_with_http1_and_h2_by_alpn() {
    let backend = Backend::hello().await;
    let (gw, certs) = start(&backend, r#""1.2", "1.3""#).await;
    let addr = gw.addr("127.0.0.1:0");

    let tls = tls_connect(addr, "api.example.com", &certs.api, &[b"http/1.1"], rustls::ALL_VERSIONS).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/v1/models").header("host", "api.example.com").body(full("")).unwrap();
    let (status, headers, body) = send(&mut sender, request).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from backend"));
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    let tls = tls_connect(addr, "api.example.com", &certs.api, &[b"h2", b"http/1.1"], rustls::ALL_VERSIONS).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let response =
        sender.send_request(Request::get("https://api.example.com/h2").body(full("")).unwrap()).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let (status, _, _) = collect(response).await;
    assert_eq!(status, StatusCode::OK);

    let seen = backend.seen.requests.lock().unwrap();
    assert!(seen.iter().all(|head| head.headers["x-forwarded-proto"] == "https"));
}

#[tokio::test]
async fn sni_selects_the_certificate_and_host_the_server() {
    let backend = Backend::hello().await;
    let (gw, certs) = start(&backend, r#""1.3""#).await;
    let addr = gw.addr("127.0.0.1:0");
    // The wildcard site's certificate is only trusted through its own CA: the handshake proves SNI chose it.
    let tls = tls_connect(addr, "a.other.test", &certs.other, &[b"http/1.1"], rustls::ALL_VERSIONS).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/").header("host", "a.other.test").body(full("")).unwrap();
    let (status, _, body) = send(&mut sender, request).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "other site"));
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn protocol_versions_are_enforced() {
    let backend = Backend::hello().await;
    let (gw, certs) = start(&backend, r#""1.3""#).await;
    let addr = gw.addr("127.0.0.1:0");
    let tls13 = tls_connect(addr, "api.example.com", &certs.api, &[], &[&rustls::version::TLS13]).await;
    assert_eq!(tls13.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));

    // A TLS 1.2-only client must be refused.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.api.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
    let result = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, stream).await;
    assert!(result.is_err(), "a TLS 1.2 handshake succeeded against a 1.3-only listener");
}

/// A TLS 1.3 handshake offering `suites` in this order; the suite the server chose, or `None` if
/// the handshake failed.
async fn negotiate(
    addr: std::net::SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    suites: &[rustls::SupportedCipherSuite],
) -> Option<rustls::CipherSuite> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.example.com").unwrap();
    let tls = connector.connect(name, stream).await.ok()?;
    tls.get_ref().1.negotiated_cipher_suite().map(|suite| suite.suite())
}

#[tokio::test]
async fn the_servers_cipher_order_wins_and_ciphers_narrows_it() {
    use rustls::crypto::aws_lc_rs::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256};
    let backend = Backend::hello().await;
    let (gw, certs) = start(&backend, r#""1.3""#).await;
    let addr = gw.addr("127.0.0.1:0");
    // The client prefers ChaCha20; the server's list puts AES-GCM first, and its order wins.
    let chosen = negotiate(addr, &certs.api, &[TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256]).await;
    assert_eq!(chosen, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));

    let narrowed = tls_config(&backend.authority(), r#""1.3""#).replace(
        r#"protocols = ["1.3"] }"#,
        r#"protocols = ["1.3"], ciphers = ["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_128_GCM_SHA256"] }"#,
    );
    gw.rewrite(&narrowed);
    gw.gateway.reload().await.unwrap();
    // The listener is rebuilt by the reload: its list is now ChaCha20 first.
    let chosen = negotiate(addr, &certs.api, &[TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256]).await;
    assert_eq!(chosen, Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    use rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384;
    assert_eq!(negotiate(addr, &certs.api, &[TLS13_AES_256_GCM_SHA384]).await, None, "a suite left out is refused");

    gw.rewrite(&narrowed.replace("TLS13_CHACHA20_POLY1305_SHA256", "TLS_RSA_WITH_RC4_128_MD5"));
    let errors = gw.gateway.reload().await.unwrap_err().to_string();
    assert!(errors.contains("unknown cipher suite \"TLS_RSA_WITH_RC4_128_MD5\""), "{errors}");
    assert!(errors.contains("infergate.toml:9:76:"), "located at its line and column: {errors}");
}

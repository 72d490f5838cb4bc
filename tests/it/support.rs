//! Test support shared by every integration test: a gateway started in-process from a config text,
//! small hyper backends on 127.0.0.1:0, HTTP/1.1, HTTP/2 and TLS clients, and test certificates.

#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use infergate::server::{ConfigOrigin, Gateway};
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

/// A body any test backend may answer with.
pub type TestBody = BoxBody<Bytes, Infallible>;

/// A full body.
pub fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed()
}

/// A gateway running in this test's runtime, with its config in a temporary folder.
pub struct TestGateway {
    pub gateway: Arc<Gateway>,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Writes `config` to `DIR/infergate.toml` (after `{dir}` is replaced by the folder) and starts it.
    pub async fn start(config: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config).await
    }

    /// As `start`, with files (certificates) already placed in `dir`.
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> TestGateway {
        let path = dir.path().join("infergate.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
        let gateway =
            Gateway::start(ConfigOrigin::File(path)).await.unwrap_or_else(|e| panic!("gateway did not start:\n{e}"));
        TestGateway { gateway, dir }
    }

    /// The bound address of the configured listen address `configured` (e.g. "127.0.0.1:0").
    pub fn addr(&self, configured: &str) -> SocketAddr {
        self.gateway.bound_addr(configured).unwrap_or_else(|| panic!("no listener {configured}"))
    }

    /// Replaces the config file's text (for a reload).
    pub fn rewrite(&self, config: &str) {
        std::fs::write(
            self.dir.path().join("infergate.toml"),
            config.replace("{dir}", &self.dir.path().display().to_string()),
        )
        .unwrap();
    }

    /// Path of a file in the gateway's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// What a test backend saw.
#[derive(Default)]
pub struct Seen {
    /// Request heads, in arrival order.
    pub requests: Mutex<Vec<http::request::Parts>>,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
}

/// An HTTP/1.1 backend on 127.0.0.1:0 answering with `handler`.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend; every request's head is recorded before `handler` runs.
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let handler = Arc::new(handler);
        let task_seen = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                task_seen.connections.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let seen = task_seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (parts, body) = request.into_parts();
                        seen.requests.lock().unwrap().push(parts.clone());
                        let response = handler(Request::from_parts(parts, body));
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    /// A backend answering every request `200 "hello from backend"`.
    pub async fn hello() -> Backend {
        Backend::start(|_| async { Response::new(full("hello from backend")) }).await
    }

    /// The `host:port` of this backend.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        self.seen.requests.lock().unwrap().len()
    }
}

/// How a raw backend treats each request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawMode {
    /// Close the connection after each answer (without saying so).
    pub close_after_answer: bool,
    /// Answer as soon as the head is in, without reading the body.
    pub answer_before_body: bool,
}

/// A backend writing raw bytes, for what a hyper server would never send. Each request (its head
/// and its body, read by `Content-Length` or to the end of a chunked body) is recorded as it came
/// on the wire and answered with `answer(request)`.
pub struct RawBackend {
    pub addr: SocketAddr,
    /// Requests as received, head and body.
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawMode {
    /// A backend that closes the connection after each answer, without saying so.
    pub const CLOSING: RawMode = RawMode { close_after_answer: true, answer_before_body: false };
}

impl RawBackend {
    /// Starts a raw backend on 127.0.0.1:0.
    pub async fn start(mode: RawMode, answer: fn(&[u8]) -> Vec<u8>) -> RawBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (task_requests, task_connections) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                task_connections.fetch_add(1, Ordering::SeqCst);
                let requests = task_requests.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(length) = read_raw_request(&mut stream, &mut buf, mode.answer_before_body).await
                        else {
                            return;
                        };
                        let request: Vec<u8> = buf.drain(..length).collect();
                        let reply = answer(&request);
                        requests.lock().unwrap().push(request);
                        if stream.write_all(&reply).await.is_err() || mode.close_after_answer {
                            return;
                        }
                        if mode.answer_before_body {
                            // Leave, with the unread body, as a backend refusing an upload does.
                            let _ = stream.read(&mut [0; 1]).await;
                            return;
                        }
                    }
                });
            }
        });
        RawBackend { addr, requests, connections, task }
    }

    /// The recorded requests as text.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect()
    }
}

/// Reads one whole request into `buf` (head only with `head_only`); returns its length, or `None`
/// when the connection ends first.
async fn read_raw_request(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let find = |buf: &[u8], needle: &[u8]| buf.windows(needle.len()).position(|w| w == needle);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body_start = end + 4;
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = if head_only {
                Some(body_start)
            } else if head.contains("transfer-encoding: chunked") {
                find(&buf[body_start..], b"0\r\n\r\n").map(|at| body_start + at + 5)
            } else {
                let total = body_start + length.unwrap_or(0);
                (buf.len() >= total).then_some(total)
            };
            if let Some(complete) = complete {
                return Some(complete);
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A config with one plain listener on 127.0.0.1:0 proxying everything to `backend`.
pub fn proxy_config(backend: &str, extra_upstream: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "backend"
servers = [{{ addr = "{backend}" }}]
{extra_upstream}

[[server]]
listen = ["127.0.0.1:0"]

  [[server.location]]
  prefix = "/"
  proxy = "backend"
"#
    )
}

/// An open HTTP/1.1 client connection.
pub async fn http1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

/// An open HTTP/2 client connection over cleartext (prior knowledge).
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// A GET request for `path` with `Host: localhost`.
pub fn get(path: &str) -> Request<TestBody> {
    Request::get(path).header("host", "localhost").body(full("")).unwrap()
}

/// Sends one GET on a fresh HTTP/1.1 connection and reads the whole answer.
pub async fn fetch(addr: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let mut client = http1(addr).await;
    send(&mut client, get(path)).await
}

/// Sends a request on an HTTP/1.1 connection and reads the whole answer.
pub async fn send(
    client: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    request: Request<TestBody>,
) -> (StatusCode, http::HeaderMap, String) {
    // A kept-alive connection takes requests once it has finished the previous exchange.
    client.ready().await.unwrap();
    let response = client.send_request(request).await.unwrap();
    collect(response).await
}

/// Reads a whole response.
pub async fn collect(response: Response<Incoming>) -> (StatusCode, http::HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// A test CA and a server certificate it signed for `names`, written as PEM files into `dir`
/// (`NAME.crt`, `NAME.key`); returns the CA certificate for clients to trust.
pub fn write_cert(
    dir: &std::path::Path,
    file_stem: &str,
    names: &[&str],
) -> rustls::pki_types::CertificateDer<'static> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{file_stem} test CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    std::fs::write(dir.join(format!("{file_stem}.crt")), leaf.pem()).unwrap();
    std::fs::write(dir.join(format!("{file_stem}.key")), leaf_key.serialize_pem()).unwrap();
    ca.der().clone()
}

/// A TLS client connection to `addr` for `server_name`, trusting `ca`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    connector.connect(name, stream).await.unwrap()
}

/// Runs a script of `tests/` with the Python of scripts/test.sh's virtual environment (where the
/// official `openai` SDK is installed; `INFERGATE_TEST_PYTHON`, else `python3`) and `args`; panics
/// with its output unless it succeeds. Returns what it printed.
pub async fn run_sdk_script(script: &str, args: &[&str]) -> String {
    let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("INFERGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python} (scripts/test.sh sets up a Python with the SDK): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai SDK check failed:\n{stdout}\n{stderr}");
    stdout
}

/// SHA-256 of an API key's secret as `[[api_key]] sha256` writes it, computed with the library the
/// gateway uses.
pub fn sha256_hex(secret: &str) -> String {
    use std::fmt::Write as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// Waits (bounded by the wall clock, without sleeping, so also on a paused clock) until `path` holds
/// `count` lines, and returns them.
pub async fn lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= count {
            return lines;
        }
        let waited = started.elapsed();
        assert!(waited < std::time::Duration::from_secs(10), "{} holds {} lines: {text}", path.display(), lines.len());
        tokio::task::yield_now().await;
    }
}

/// The gateway's binary, as a user runs it.
pub const GATEWAY_BINARY: &str = env!("CARGO_BIN_EXE_infergate");
/// Guard against a child process that hangs; a healthy one answers in milliseconds.
pub const PROCESS_GUARD: std::time::Duration = std::time::Duration::from_secs(20);

/// A running `infergate` child whose stderr lines arrive on a channel.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    pub fn start(config: &std::path::Path) -> Running {
        Running::spawn(&["run".as_ref(), "--config".as_ref(), config.as_os_str()])
    }

    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Running {
        let mut child = Command::new(GATEWAY_BINARY)
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self.lines.recv_timeout(PROCESS_GUARD).unwrap_or_else(|_| panic!("no line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < PROCESS_GUARD, "the process did not exit");
            tokio::task::yield_now().await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` on a free port of 127.0.0.1, without persistence: `INFERGATE_TEST_REDIS`,
/// else `redis-server` on the PATH (scripts/test.sh provisions Debian's). Killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { child: None, port };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (what it held is lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the server: a Redis that is there and does not answer.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("a running server").id().to_string();
        assert!(Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }

    /// Starts the server on its port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let binary = std::env::var("INFERGATE_TEST_REDIS").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {binary} (scripts/test.sh installs redis-server): {e}"));
        self.child = Some(child);
        let started = std::time::Instant::now();
        loop {
            use std::io::{Read, Write};
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut answer = [0u8; 5];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG"
                {
                    return;
                }
            }
            assert!(started.elapsed() < PROCESS_GUARD, "redis-server did not answer on port {}", self.port);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Runs one command and returns its answer.
    pub async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut connection).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

//! `infergate-load`: the load client behind `bench/run.sh` for what wrk cannot measure — time to
//! first token of SSE streams, how fast a client's disconnect reaches the model, goodput under
//! overload, holding many idle keep-alive connections, requests lost while a model dies
//! (`bench/failover.sh`), questions about repeated images (`bench/affinity.sh`), and large uploads
//! (`bench/uploads.sh`). Every mode is
//! bounded in count and time, talks to the address it is given (loopback in the benchmarks), and
//! prints `key=value` figures.

mod upload;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Time to the first content token of streamed chat completions, one request at a time.
    Ttft {
        /// Address to send to (gateway or model).
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        requests: usize,
        /// Over TLS, trusting the certificate in this PEM file (for the name `localhost`).
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// HTTP/2 (offered by ALPN; needs `--tls-ca`).
        #[arg(long, requires = "tls_ca")]
        http2: bool,
    },
    /// Milliseconds from closing a stream to the model recording the abort (`GET /stats` of the sim).
    Cancel {
        /// Address to send to (gateway or model).
        #[arg(long)]
        addr: SocketAddr,
        /// The sim itself, for `/stats`.
        #[arg(long)]
        sim: SocketAddr,
        #[arg(long, default_value_t = 20)]
        requests: usize,
    },
    /// Closed-loop clients against an overloaded model: successes within the SLO per second,
    /// rejection latency, and whether the model is still alive afterwards.
    Overload {
        #[arg(long)]
        addr: SocketAddr,
        /// The sim itself, for `/health` afterwards.
        #[arg(long)]
        sim: SocketAddr,
        #[arg(long, default_value_t = 48)]
        clients: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
        duration: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        slo: Duration,
    },
    /// Closed-loop clients of chat completions (JSON answers, or streams) for a while: every answer
    /// that is not a whole 200 counts as failed; of streams, also the time between two frames with
    /// tokens (`gap_p50_ms`, `gap_p99_ms`).
    Chat {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "6s")]
        duration: Duration,
        /// Streamed answers (`stream: true`) instead of JSON ones.
        #[arg(long)]
        stream: bool,
        /// `max_tokens` of each request.
        #[arg(long, default_value_t = 8)]
        max_tokens: u32,
        /// An API key, sent as `Authorization: Bearer KEY`.
        #[arg(long)]
        key: Option<String>,
    },
    /// Closed-loop clients asking streamed questions about `images` distinct images (PNGs of `side`
    /// x `side` pixels, each client taking them in turn from its own start), for a while: time to
    /// first token, and how many were answered.
    Images {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 12)]
        clients: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        #[arg(long, default_value_t = 12)]
        images: usize,
        #[arg(long, default_value_t = 896)]
        side: u32,
    },
    /// Streamed questions, one at a time, about one photo-like JPEG of `side` x `side` pixels: time
    /// to first token (what `images.resize` saves the model's prefill).
    Photo {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2048)]
        side: u32,
        #[arg(long, default_value_t = 5)]
        requests: usize,
    },
    /// Uploads of `mb` megabytes (a chat request with a base64 image) through the proxy at `addr` to
    /// this process's own backend on `backend`: the wait from a body's last byte to its answer's first.
    Upload {
        #[arg(long)]
        addr: SocketAddr,
        /// Where to serve the backend the proxy forwards to.
        #[arg(long)]
        backend: SocketAddr,
        #[arg(long, default_value_t = 10)]
        mb: usize,
        /// Uploads per client.
        #[arg(long, default_value_t = 10)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Each client's pace in MB a second (default: as fast as the socket takes it).
        #[arg(long)]
        rate_mb: Option<f64>,
    },
    /// Opens idle keep-alive connections (one request each, then silence) and holds them.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        hold: Duration,
    },
}

/// A connection requests are sent on: HTTP/1.1 (over TCP or TLS), or HTTP/2 (over TLS).
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Until the connection can take a request.
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(sender) => sender.ready().await,
            Sender::Http2(sender) => sender.ready().await,
        }
    }

    /// Whether the connection has closed.
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }

    /// Sends `request` (its path; HTTP/2 is given the whole `https://localhost` URI it needs, and
    /// no `Host` beside it: nginx refuses the two as a duplicate `Host`).
    async fn send_request(&mut self, mut request: Request<Full<Bytes>>) -> hyper::Result<http::Response<Incoming>> {
        match self {
            Sender::Http1(sender) => sender.send_request(request).await,
            Sender::Http2(sender) => {
                let uri = format!("https://localhost{}", request.uri().path());
                *request.uri_mut() = uri.parse().expect("a path of this client's");
                request.headers_mut().remove(http::header::HOST);
                sender.send_request(request).await
            }
        }
    }
}

/// A closed-loop client's connection, opened anew when it has none; `None`, after a pause, when it
/// cannot be.
async fn connection(sender: &mut Option<Sender>, addr: SocketAddr) -> Option<&mut Sender> {
    if sender.is_none() {
        *sender = connect(addr).await.ok();
        if sender.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sender.as_mut()
}

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(Sender::Http1(sender))
}

fn chat(stream: bool, max_tokens: u32) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "glm-4v-flash",
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "What is in this image? Answer briefly."}],
    });
    Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static request")
}

/// The clients' timings (milliseconds) together, and how many of their requests failed.
async fn joined(tasks: Vec<tokio::task::JoinHandle<(Vec<f64>, u64)>>) -> Result<(Vec<f64>, u64), String> {
    let (mut times, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (t, f) = task.await.map_err(|e| e.to_string())?;
        times.extend(t);
        failed += f;
    }
    Ok((times, failed))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "{name}_p50_ms={:.2} {name}_p90_ms={:.2} {name}_p99_ms={:.2} {name}_n={}",
        percentile(&values, 50.0),
        percentile(&values, 90.0),
        percentile(&values, 99.0),
        values.len()
    );
}

/// Sends a streamed request and waits for the first frame carrying a non-empty content delta.
async fn first_token(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<(hyper::body::Incoming, Duration), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    loop {
        let frame = body.frame().await.ok_or("stream ended before a token")?.map_err(|e| e.to_string())?;
        if frame.data_ref().is_some_and(|data| has_token(data)) {
            return Ok((body, started.elapsed()));
        }
    }
}

/// Whether SSE data carries a non-empty `"content":"..."` delta (several events may share a frame).
fn has_token(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    data.windows(KEY.len() + 1).any(|w| w.starts_with(KEY) && w[KEY.len()] != b'"')
}

async fn ttft(addr: SocketAddr, requests: usize, tls: Option<(&std::path::Path, bool)>) -> Result<(), String> {
    let mut sender = match tls {
        None => connect(addr).await.map_err(|e| e.to_string())?,
        Some((ca, http2)) => connect_tls(addr, ca, http2).await?,
    };
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let (body, elapsed) = first_token(&mut sender, chat(true, 16)).await?;
        body.collect().await.map_err(|e| e.to_string())?;
        times.push(elapsed.as_secs_f64() * 1000.0);
    }
    summary("ttft", times);
    Ok(())
}

/// A TLS connection to `addr` as `localhost`, trusting the certificates of the PEM file `ca`: HTTP/2
/// (offered by ALPN) with `http2`, else HTTP/1.1.
async fn connect_tls(addr: SocketAddr, ca: &std::path::Path, http2: bool) -> Result<Sender, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a valid name");
    let stream = TokioIo::new(
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await.map_err(|e| e.to_string())?,
    );
    if http2 {
        let (sender, connection) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), stream)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Sender::Http2(sender))
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(stream).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Sender::Http1(sender))
    }
}

async fn sim_stats(sim: SocketAddr) -> Result<serde_json::Value, String> {
    let mut sender = connect(sim).await.map_err(|e| e.to_string())?;
    let request = Request::get("/stats").header("host", "sim").body(Full::new(Bytes::new())).expect("static request");
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

async fn cancel(addr: SocketAddr, sim: SocketAddr, requests: usize) -> Result<(), String> {
    let mut delays = Vec::with_capacity(requests);
    for _ in 0..requests {
        let before = sim_stats(sim).await?["aborted"].as_u64().unwrap_or(0);
        let mut sender = connect(addr).await.map_err(|e| e.to_string())?;
        // A long answer, so the client leaves mid-stream whatever the proxy buffers.
        let (body, _) = first_token(&mut sender, chat(true, 4000)).await?;
        drop(body);
        drop(sender);
        let closed = Instant::now();
        // Poll until the abort shows, for at most 10 s; the sim says how long ago it happened.
        loop {
            let stats = sim_stats(sim).await?;
            if stats["aborted"].as_u64().unwrap_or(0) > before {
                let ago = stats["uptime_ms"].as_f64().unwrap_or(0.0) - stats["last_abort_ms"].as_f64().unwrap_or(0.0);
                delays.push((closed.elapsed().as_secs_f64() * 1000.0 - ago).max(0.0));
                break;
            }
            if closed.elapsed() > Duration::from_secs(10) {
                println!("cancel_never_seen=1");
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    summary("cancel", delays);
    Ok(())
}

#[derive(Default)]
struct Outcome {
    good: u64,
    late: u64,
    /// Latency of every 200 answer, in ms.
    answered: Vec<f64>,
    rejected: Vec<f64>,
    errors: u64,
}

async fn overload(
    addr: SocketAddr,
    sim: SocketAddr,
    clients: usize,
    duration: Duration,
    slo: Duration,
) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    // Only answers that complete within the run count, so the rate is not inflated by the tail.
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut sender: Option<Sender> = None;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() {
                    match connect(addr).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            outcome.errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(client) = sender.as_mut() else { continue };
                let started = Instant::now();
                let result = tokio::time::timeout(slo * 4, async {
                    client.ready().await.map_err(|_| ())?;
                    let response = client.send_request(chat(false, 32)).await.map_err(|_| ())?;
                    let status = response.status();
                    response.into_body().collect().await.map_err(|_| ())?;
                    Ok::<_, ()>(status)
                })
                .await;
                let elapsed = started.elapsed();
                if Instant::now() > end {
                    break;
                }
                match result {
                    Ok(Ok(status)) if status == StatusCode::OK => {
                        outcome.answered.push(elapsed.as_secs_f64() * 1000.0);
                        if elapsed <= slo {
                            outcome.good += 1;
                        } else {
                            outcome.late += 1;
                        }
                    }
                    Ok(Ok(status))
                        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS =>
                    {
                        outcome.rejected.push(elapsed.as_secs_f64() * 1000.0);
                    }
                    _ => {
                        outcome.errors += 1;
                        sender = None;
                        // A dead backend answers at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            outcome
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Outcome::default();
    for task in tasks {
        if let Ok(outcome) = tokio::time::timeout(slo * 5, task).await.map_err(|_| ()).and_then(|r| r.map_err(|_| ())) {
            total.good += outcome.good;
            total.late += outcome.late;
            total.errors += outcome.errors;
            total.rejected.extend(outcome.rejected);
            total.answered.extend(outcome.answered);
        }
    }
    let alive = sim_stats(sim).await.is_ok();
    let rejected = total.rejected.len();
    total.rejected.sort_by(f64::total_cmp);
    total.answered.sort_by(f64::total_cmp);
    let mean = total.answered.iter().sum::<f64>() / total.answered.len().max(1) as f64;
    println!(
        "goodput_rps={:.2} good={} late={} rejected={} errors={} reject_p99_ms={:.1} ok_mean_ms={:.1} ok_p99_ms={:.1} sim_alive={}",
        total.good as f64 / duration.as_secs_f64(),
        total.good,
        total.late,
        rejected,
        total.errors,
        percentile(&total.rejected, 99.0),
        mean,
        percentile(&total.answered, 99.0),
        if alive { "yes" } else { "no" }
    );
    Ok(())
}

/// What each request of `chat` load asks for.
#[derive(Clone)]
struct ChatShape {
    stream: bool,
    max_tokens: u32,
    key: Option<String>,
}

async fn chat_load(addr: SocketAddr, clients: usize, duration: Duration, shape: ChatShape) -> Result<(), String> {
    let end = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let shape = shape.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut gaps = Vec::new();
            let mut sender: Option<Sender> = None;
            while Instant::now() < end {
                let Some(client) = connection(&mut sender, addr).await else {
                    failed += 1;
                    continue;
                };
                // Each answer must come whole within 60 s (a request takes about 0.3 s; a stream of
                // 200 tokens at 100 ms, 20 s).
                let result = tokio::time::timeout(Duration::from_secs(60), async {
                    client.ready().await.map_err(|_| ())?;
                    let mut request = chat(shape.stream, shape.max_tokens);
                    if let Some(key) = &shape.key {
                        let value = format!("Bearer {key}").parse().map_err(|_| ())?;
                        request.headers_mut().insert(http::header::AUTHORIZATION, value);
                    }
                    let response = client.send_request(request).await.map_err(|_| ())?;
                    let status = response.status();
                    // Milliseconds between one frame with a token and the next.
                    let mut body = response.into_body();
                    let mut last_token: Option<Instant> = None;
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(|_| ())?;
                        if frame.data_ref().is_some_and(|data| has_token(data)) {
                            let now = Instant::now();
                            if let Some(last) = last_token.replace(now) {
                                gaps.push((now - last).as_secs_f64() * 1000.0);
                            }
                        }
                    }
                    Ok::<_, ()>(status)
                })
                .await;
                match result {
                    Ok(Ok(StatusCode::OK)) => ok += 1,
                    _ => {
                        failed += 1;
                        sender = None;
                    }
                }
            }
            (ok, failed, gaps)
        }));
    }
    let (mut ok, mut failed, mut gaps) = (0, 0, Vec::new());
    for task in tasks {
        let (o, f, g) = task.await.map_err(|e| e.to_string())?;
        ok += o;
        failed += f;
        gaps.extend(g);
    }
    if shape.stream {
        summary("gap", gaps);
    }
    println!("ok={ok} failed={failed}");
    Ok(())
}

/// A streamed question about image `index`: a PNG of `side` x `side` (its header, then 16 KB that
/// differ per image: the gateway hashes them, the sim reads the header).
fn image_question(index: usize, side: u32) -> Request<Full<Bytes>> {
    use base64::Engine as _;
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];
    png.extend_from_slice(&side.to_be_bytes());
    png.extend_from_slice(&side.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    png.extend((0..16 << 10).map(|i| (i * 31 + index * 7) as u8));
    let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&png));
    let body = serde_json::json!({
        "model": "glm-4v-flash",
        "stream": true,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}],
    });
    Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static request")
}

async fn image_questions(
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
    images: usize,
    side: u32,
) -> Result<(), String> {
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        tasks.push(tokio::spawn(async move {
            let (mut times, mut failed) = (Vec::new(), 0u64);
            let mut sender: Option<Sender> = None;
            // Every image in turn, each client starting at its own.
            let mut next = client * 5;
            while Instant::now() < end {
                let Some(client) = connection(&mut sender, addr).await else {
                    failed += 1;
                    continue;
                };
                next = (next + 1) % images.max(1);
                let asked = tokio::time::timeout(Duration::from_secs(30), async {
                    let (body, took) = first_token(client, image_question(next, side)).await?;
                    body.collect().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(took)
                })
                .await;
                match asked {
                    Ok(Ok(took)) => times.push(took.as_secs_f64() * 1000.0),
                    _ => {
                        failed += 1;
                        sender = None;
                    }
                }
            }
            (times, failed)
        }));
    }
    let (times, failed) = joined(tasks).await?;
    let answered = times.len();
    summary("ttft", times);
    println!("answered={answered} failed={failed} rps={:.2}", answered as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

/// A JPEG of `side` x `side` with the texture of a photo (smooth gradients, fine noise), as a
/// `data:` URL, made once.
fn photo_url(side: u32) -> String {
    use base64::Engine as _;
    let pixels = image::RgbImage::from_fn(side, side, |x, y| {
        let noise = ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)) % 23) as u8;
        image::Rgb([(x * 255 / side) as u8 ^ noise, (y * 255 / side) as u8, ((x + y) % 256) as u8 / 2 + noise])
    });
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(pixels).write_to(&mut jpeg, image::ImageFormat::Jpeg).expect("encodes");
    format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg.into_inner()))
}

async fn photo(addr: SocketAddr, side: u32, requests: usize) -> Result<(), String> {
    let url = photo_url(side);
    let body = serde_json::json!({
        "model": "glm-4v-flash", "stream": true, "max_tokens": 2,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this photo?"}, {"type": "image_url", "image_url": {"url": url}}]}],
    })
    .to_string();
    let mut sender = connect(addr).await.map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let request = Request::post("/v1/chat/completions")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .expect("static request");
        let (rest, took) = first_token(&mut sender, request).await?;
        rest.collect().await.map_err(|e| e.to_string())?;
        times.push(took.as_secs_f64() * 1000.0);
    }
    println!("body_bytes={}", body.len());
    summary("ttft", times);
    Ok(())
}

async fn idle(addr: SocketAddr, connections: usize, hold: Duration) -> Result<(), String> {
    let mut held = Vec::with_capacity(connections);
    let started = Instant::now();
    for _ in 0..connections {
        let mut sender = connect(addr).await.map_err(|e| e.to_string())?;
        let request =
            Request::get("/").header("host", "localhost").body(Full::new(Bytes::new())).expect("static request");
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        response.into_body().collect().await.map_err(|e| e.to_string())?;
        held.push(sender);
    }
    println!("idle_connections={} opened_in_s={:.1}", held.len(), started.elapsed().as_secs_f64());
    tokio::time::sleep(hold).await;
    let open = held.iter().filter(|s| !s.is_closed()).count();
    println!("idle_still_open={open}");
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Ttft { addr, requests, tls_ca, http2 } => {
            ttft(addr, requests, tls_ca.as_deref().map(|ca| (ca, http2))).await
        }
        Mode::Cancel { addr, sim, requests } => cancel(addr, sim, requests).await,
        Mode::Overload { addr, sim, clients, duration, slo } => overload(addr, sim, clients, duration, slo).await,
        Mode::Idle { addr, connections, hold } => idle(addr, connections, hold).await,
        Mode::Upload { addr, backend, mb, requests, clients, rate_mb } => match upload::backend(backend).await {
            Ok(()) => {
                let rate = rate_mb.map(|mb| mb * 1e6);
                upload::run(upload::Uploads { addr, bytes: mb * 1_000_000, requests, clients, rate }).await
            }
            Err(e) => Err(format!("cannot serve the backend on {backend}: {e}")),
        },
        Mode::Photo { addr, side, requests } => photo(addr, side, requests).await,
        Mode::Images { addr, clients, duration, images, side } => {
            image_questions(addr, clients, duration, images, side).await
        }
        Mode::Chat { addr, clients, duration, stream, max_tokens, key } => {
            chat_load(addr, clients, duration, ChatShape { stream, max_tokens, key }).await
        }
    };
    if let Err(e) = result {
        eprintln!("infergate-load: {e}");
        std::process::exit(1);
    }
}

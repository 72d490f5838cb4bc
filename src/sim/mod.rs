//! `infergate sim`: a simulated vision-language model server with the interface of vLLM's and
//! SGLang's OpenAI-compatible servers (and the seed's FastAPI app), so the gateway can be tried,
//! tested and measured without a GPU. Timing comes from `engine`, request and response shapes from
//! `openai`. It notices clients that leave (waiting, in prefill, mid-stream) and counts them. With
//! `--image-cache` a replica remembers the images it saw last, as an encoder or prefix cache does, so
//! affinity by image (`hash_key = "image"`) can be measured.

pub mod engine;
pub(crate) mod openai;

use bytes::Bytes;
use engine::{Engine, LatencyModel};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use lru::LruCache;
use openai::ChatRequest;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Command-line options of `infergate sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Model name in `/v1/models` and in answers when a request names none.
    #[arg(long, default_value = "glm-4v-flash")]
    pub model_name: String,
    /// Timing of the simulated engine.
    #[command(flatten)]
    pub latency: LatencyModel,
    /// Die as a GPU out of memory does (exit code 137) once more than N requests are present.
    #[arg(long)]
    pub crash_above: Option<usize>,
    /// Fraction of chat requests answered 500 at once (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Stop sending after this many tokens of a stream, without closing it.
    #[arg(long)]
    pub stall_after: Option<u32>,
    /// Answer 503 (loading) for this long after start, like a model still loading its weights.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub slow_start: Option<Duration>,
    /// Images this replica keeps encoded, as an encoder or prefix cache does (0: none): a question
    /// about one of the last N images it saw prefills that image's tokens at a tenth of their cost.
    #[arg(long, default_value_t = 0)]
    pub image_cache: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            model_name: "glm-4v-flash".into(),
            latency: LatencyModel::default(),
            crash_above: None,
            fail_rate: 0.0,
            stall_after: None,
            slow_start: None,
            image_cache: 0,
        }
    }
}

type SimBody = BoxBody<Bytes, Infallible>;

/// A running simulator.
pub struct Sim {
    /// The bound address.
    pub addr: SocketAddr,
    /// Its engine and counters.
    pub(crate) engine: Arc<Engine>,
    crashed: watch::Receiver<bool>,
}

struct Shared {
    options: SimOptions,
    engine: Arc<Engine>,
    ttft: Histogram,
    next_id: AtomicU64,
    started: tokio::time::Instant,
    crash: watch::Sender<bool>,
    /// Exit the process on a crash (the command); in-process sims close every connection instead.
    exit_on_crash: bool,
    /// The images seen last (`--image-cache`), by the hash of what names them.
    image_cache: Option<Mutex<LruCache<u64, ()>>>,
}

impl Sim {
    /// Starts a simulator on `options.listen` in the current runtime (port 0 picks a free port).
    pub async fn start(options: SimOptions) -> std::io::Result<Sim> {
        Sim::start_with(options, false).await
    }

    /// As `start`; with `exit_on_crash`, `--crash-above` ends the process with code 137.
    pub async fn start_with(options: SimOptions, exit_on_crash: bool) -> std::io::Result<Sim> {
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let engine = Engine::new(options.latency.clone());
        let (crash, crashed) = watch::channel(false);
        let image_cache = NonZeroUsize::new(options.image_cache).map(|size| Mutex::new(LruCache::new(size)));
        let shared = Arc::new(Shared {
            image_cache,
            options,
            engine: engine.clone(),
            ttft: Histogram::default(),
            next_id: AtomicU64::new(1),
            started: tokio::time::Instant::now(),
            crash,
            exit_on_crash,
        });
        tokio::spawn(accept_loop(listener, shared));
        Ok(Sim { addr, engine, crashed })
    }

    /// The counters of `GET /stats`.
    pub fn stats(&self) -> Value {
        stats_json(&self.engine)
    }

    /// Whether `--crash-above` fired.
    pub fn crashed(&self) -> bool {
        *self.crashed.borrow()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut crashed = shared.crash.subscribe();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = crashed.changed() => {
                // Out of memory: every connection dies with the process.
                connections.abort_all();
                return;
            }
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<SimBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

async fn route(shared: Arc<Shared>, request: Request<Incoming>) -> Response<SimBody> {
    let loading = shared.options.slow_start.is_some_and(|d| shared.started.elapsed() < d);
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/chat/completions" | "/v1/chat") if loading => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, &openai::error("model is loading", "server_error", 503))
        }
        (&Method::POST, "/v1/chat/completions" | "/v1/chat") => chat(shared, request).await,
        (&Method::GET, "/health") if loading => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "loading"}))
        }
        (&Method::GET, "/health") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{"id": shared.options.model_name, "object": "model", "created": unix_time(), "owned_by": "infergate-sim"}]}),
        ),
        (&Method::GET, "/stats") => json_response(StatusCode::OK, &stats_json(&shared.engine)),
        (&Method::GET, "/metrics") => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics_text(&shared))).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())),
        (&Method::GET, "/") => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(PAGE.as_bytes())).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())),
        _ => json_response(StatusCode::NOT_FOUND, &openai::error("no such endpoint", "invalid_request_error", 404)),
    }
}

const PAGE: &str = "<!doctype html><title>infergate sim</title><h1>infergate sim</h1>\
<p>A simulated vision-language model. POST /v1/chat/completions with an OpenAI chat body.</p>";

async fn chat(shared: Arc<Shared>, request: Request<Incoming>) -> Response<SimBody> {
    let stats = &shared.engine.stats;
    stats.received.fetch_add(1, Ordering::AcqRel);
    if let Some(limit) = shared.options.crash_above {
        let present = stats.running.load(Ordering::Acquire) + stats.waiting.load(Ordering::Acquire) + 1;
        if present > limit {
            tracing::error!(present, limit, "sim: out of memory (--crash-above)");
            if shared.exit_on_crash {
                std::process::exit(137);
            }
            shared.crash.send_replace(true);
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &openai::error("out of memory", "server_error", 500),
            );
        }
    }
    if shared.options.fail_rate > 0.0 && fastrand::f64() < shared.options.fail_rate {
        stats.errors.fetch_add(1, Ordering::AcqRel);
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &openai::error("simulated failure (--fail-rate)", "server_error", 500),
        );
    }
    let body = match Limited::new(request.into_body(), 64 << 20).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::AcqRel);
            return json_response(
                StatusCode::BAD_REQUEST,
                &openai::error(&format!("cannot read body: {e}"), "invalid_request_error", 400),
            );
        }
    };
    let chat = match openai::parse_chat(&body, &shared.engine.model, &shared.options.model_name) {
        Ok(chat) => chat,
        Err(message) => {
            stats.errors.fetch_add(1, Ordering::AcqRel);
            return json_response(StatusCode::BAD_REQUEST, &openai::error(&message, "invalid_request_error", 400));
        }
    };
    let admitted = shared.engine.admit(u64::from(chat.text_tokens) + u64::from(chat.image_tokens)).await;
    let arrived = tokio::time::Instant::now();
    let image_tokens = match cached_image(&shared, &body, chat.image_tokens) {
        true => chat.image_tokens / 10,
        false => chat.image_tokens,
    };
    tokio::time::sleep(shared.engine.model.prefill(chat.text_tokens, image_tokens)).await;
    shared.ttft.observe(arrived.elapsed());
    let id = format!("chatcmpl-{}", shared.next_id.fetch_add(1, Ordering::Relaxed));
    let created = unix_time();
    if !chat.stream {
        for _ in 0..chat.max_tokens {
            tokio::time::sleep(shared.engine.model.decode_interval(admitted.running())).await;
        }
        admitted.finish();
        return json_response(StatusCode::OK, &openai::completion(&id, created, &chat));
    }
    let stream = generate(shared.clone(), admitted, chat, id, created);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// The SSE events of one streamed answer; dropping the stream (the client left) drops the slot and
/// records the abort.
fn generate(
    shared: Arc<Shared>,
    admitted: engine::Admitted,
    chat: ChatRequest,
    id: String,
    created: u64,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send {
    struct State {
        shared: Arc<Shared>,
        admitted: Option<engine::Admitted>,
        chat: ChatRequest,
        id: String,
        created: u64,
        next: u32,
    }
    let state = State { shared, admitted: Some(admitted), chat, id, created, next: 0 };
    futures_util::stream::unfold(state, |mut state| async move {
        let admitted = state.admitted.as_ref()?;
        let (chat, id, created) = (&state.chat, state.id.as_str(), state.created);
        let event = if state.next == 0 {
            openai::chunk(id, created, chat, json!({"role": "assistant", "content": ""}), None)
        } else if state.next <= chat.max_tokens {
            if state.shared.options.stall_after.is_some_and(|n| state.next > n) {
                std::future::pending::<()>().await;
            }
            if state.next > 1 {
                tokio::time::sleep(state.shared.engine.model.decode_interval(admitted.running())).await;
            }
            openai::chunk(id, created, chat, json!({"content": openai::token(state.next - 1)}), None)
        } else if state.next == chat.max_tokens + 1 {
            let finish = openai::chunk(id, created, chat, json!({}), Some(openai::finish_reason(chat)));
            let usage = if chat.include_usage {
                openai::usage_chunk(id, created, chat, chat.max_tokens)
            } else {
                String::new()
            };
            format!("{finish}{usage}data: [DONE]\n\n")
        } else {
            if let Some(admitted) = state.admitted.take() {
                admitted.finish();
            }
            return None;
        };
        state.next += 1;
        Some((Ok(Frame::data(Bytes::from(event))), state))
    })
}

fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The counters as `GET /stats` returns them.
/// Whether a request's first image is in the replica's cache (it is from now on), counting the hit.
fn cached_image(shared: &Shared, body: &[u8], image_tokens: u32) -> bool {
    let (Some(cache), true) = (&shared.image_cache, image_tokens > 0) else { return false };
    let Some(key) = crate::images::affinity_key(body) else { return false };
    let key =
        std::hash::BuildHasher::hash_one(&std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(), key);
    let hit = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).put(key, ()).is_some();
    if hit {
        shared.engine.stats.image_cache_hits.fetch_add(1, Ordering::AcqRel);
    }
    hit
}

pub(crate) fn stats_json(engine: &Engine) -> Value {
    let s = &engine.stats;
    let last_abort = s.last_abort_ms.load(Ordering::Acquire);
    json!({
        "received": s.received.load(Ordering::Acquire),
        "running": s.running.load(Ordering::Acquire),
        "waiting": s.waiting.load(Ordering::Acquire),
        "max_running": s.max_running.load(Ordering::Acquire),
        "max_running_prompt_tokens": s.max_running_prompt_tokens.load(Ordering::Acquire),
        "completed": s.completed.load(Ordering::Acquire),
        "aborted": s.aborted.load(Ordering::Acquire),
        "last_abort_ms": if last_abort == 0 { Value::Null } else { json!(last_abort) },
        "errors": s.errors.load(Ordering::Acquire),
        "image_cache_hits": s.image_cache_hits.load(Ordering::Acquire),
        "uptime_ms": engine.uptime_ms(),
    })
}

/// Time-to-first-token histogram with vLLM's bucket bounds (seconds).
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

const TTFT_BOUNDS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in TTFT_BOUNDS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// Prometheus text with vLLM's metric names, for load-aware routing.
fn metrics_text(shared: &Shared) -> String {
    use std::fmt::Write;
    let s = &shared.engine.stats;
    let model = &shared.options.model_name;
    let running = s.running.load(Ordering::Acquire);
    let slots = shared.engine.model.slots.max(1);
    let mut out = String::new();
    let _ = writeln!(out, "# HELP vllm:num_requests_running Number of requests in model execution batches.");
    let _ = writeln!(out, "# TYPE vllm:num_requests_running gauge");
    let _ = writeln!(out, "vllm:num_requests_running{{model_name=\"{model}\"}} {running}");
    let _ = writeln!(out, "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.");
    let _ = writeln!(out, "# TYPE vllm:num_requests_waiting gauge");
    let _ = writeln!(out, "vllm:num_requests_waiting{{model_name=\"{model}\"}} {}", s.waiting.load(Ordering::Acquire));
    let _ = writeln!(out, "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.");
    let _ = writeln!(out, "# TYPE vllm:kv_cache_usage_perc gauge");
    let _ = writeln!(out, "vllm:kv_cache_usage_perc{{model_name=\"{model}\"}} {}", running as f64 / slots as f64);
    let _ = writeln!(out, "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.");
    let _ = writeln!(out, "# TYPE vllm:time_to_first_token_seconds histogram");
    for (bound, bucket) in TTFT_BOUNDS.iter().zip(&shared.ttft.buckets) {
        let _ = writeln!(
            out,
            "vllm:time_to_first_token_seconds_bucket{{model_name=\"{model}\",le=\"{bound}\"}} {}",
            bucket.load(Ordering::Relaxed)
        );
    }
    let count = shared.ttft.count.load(Ordering::Relaxed);
    let _ = writeln!(out, "vllm:time_to_first_token_seconds_bucket{{model_name=\"{model}\",le=\"+Inf\"}} {count}");
    let _ = writeln!(
        out,
        "vllm:time_to_first_token_seconds_sum{{model_name=\"{model}\"}} {}",
        shared.ttft.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "vllm:time_to_first_token_seconds_count{{model_name=\"{model}\"}} {count}");
    out
}

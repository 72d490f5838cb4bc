//! Prometheus metrics that speak tokens: every family is registered here, beside the handles the data
//! path holds. Per-request figures come from the request's accounting record once it ends
//! (`accounting`), so the access log and the metrics never disagree; a few counters live where the
//! event happens (retries, pooled connections, TLS handshakes, reloads); gauges of the current state
//! (in flight, queue, health, drain) are read from the running config at scrape time.
//!
//! Handles are resolved once per location and upstream at config load, so a request never looks a
//! label up, and the per-request ones are split per worker thread (`sharded`), so a request writes
//! only cache lines of its own core.

mod sharded;

pub(crate) use sharded::{shard, Padded, ShardedCounter, ShardedHistogram, SHARDS};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;

/// Latencies a user feels, from a cached answer to a long generation (seconds).
const LATENCY_BUCKETS: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Gaps between tokens of a stream (seconds): 10-100 ms is a healthy decode.
const TOKEN_GAP_BUCKETS: [f64; 12] = [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5];
/// What the gateway itself adds (seconds): tens of microseconds when healthy.
const GATEWAY_BUCKETS: [f64; 10] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];
/// Connecting to a backend (seconds).
const CONNECT_BUCKETS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
/// Waiting for a model's slot (seconds).
const QUEUE_BUCKETS: [f64; 11] = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Histograms<L> = Family<L, ShardedHistogram, fn() -> ShardedHistogram>;
type Counters<L> = Family<L, ShardedCounter>;

fn histograms<L: Clone + std::hash::Hash + Eq>(buckets: fn() -> ShardedHistogram) -> Histograms<L> {
    Family::new_with_constructor(buckets)
}

/// `server` (first `server_name`, or the listen address) and `location` (its match, as configured).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    server: String,
    location: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    server: String,
    location: String,
    upstream: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamEndLabels {
    server: String,
    location: String,
    reason: &'static str,
}

/// An upstream, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    /// The upstream's name.
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    upstream: String,
    connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A server of an upstream: its name and the server's `host:port`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServerLabels {
    /// The upstream's name.
    pub(crate) upstream: String,
    /// The server's `host:port`.
    pub(crate) server: String,
}

/// Status classes, as the `status` label writes them.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// How a stream ended, as the `reason` label writes it: every byte sent, the client left, a timeout
/// cut it, the backend failed.
pub(crate) const STREAM_ENDS: [&str; 4] = ["complete", "client", "timeout", "upstream_error"];

/// Rejections counted by reason: the error codes of `GatewayError` that refuse a request to protect
/// the model or enforce a policy.
const REJECTION_CODES: [&str; 6] =
    ["rate_limit_exceeded", "queue_full", "queue_timeout", "body_too_large", "no_healthy_server", "auth"];

/// Every metric family of one gateway; kept across reloads so counts carry on.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Counters<RequestLabels>,
    request_duration: Histograms<RouteLabels>,
    ttft: Histograms<RouteLabels>,
    token_gap: Histograms<RouteLabels>,
    output_tokens: Counters<RouteLabels>,
    streams_ended: Counters<StreamEndLabels>,
    upstream_header_time: Histograms<UpstreamLabels>,
    upstream_connect_time: Histograms<UpstreamLabels>,
    queue_wait: Histograms<UpstreamLabels>,
    retries: Counters<UpstreamLabels>,
    fallbacks: Counters<UpstreamLabels>,
    pool_connections: Counters<PoolLabels>,
    gateway_added: ShardedHistogram,
    rejections: Counters<ReasonLabels>,
    client_connections: Family<ProtocolLabels, Gauge>,
    tls_handshakes: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every family under the `infergate_` prefix.
    pub(crate) fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("infergate");
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: histograms(|| ShardedHistogram::new(&LATENCY_BUCKETS)),
            ttft: histograms(|| ShardedHistogram::new(&LATENCY_BUCKETS)),
            token_gap: histograms(|| ShardedHistogram::new(&TOKEN_GAP_BUCKETS)),
            output_tokens: Family::default(),
            streams_ended: Family::default(),
            upstream_header_time: histograms(|| ShardedHistogram::new(&LATENCY_BUCKETS)),
            upstream_connect_time: histograms(|| ShardedHistogram::new(&CONNECT_BUCKETS)),
            queue_wait: histograms(|| ShardedHistogram::new(&QUEUE_BUCKETS)),
            retries: Family::default(),
            fallbacks: Family::default(),
            pool_connections: Family::default(),
            gateway_added: ShardedHistogram::new(&GATEWAY_BUCKETS),
            rejections: Family::default(),
            client_connections: Family::default(),
            tls_handshakes: Family::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        let seconds = || Unit::Seconds;
        registry.register(
            "requests",
            "Requests answered, by server, location, upstream and status class",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "From the request head to the response's end",
            seconds(),
            metrics.request_duration.clone(),
        );
        registry.register_with_unit(
            "time_to_first_token",
            "Event streams: from the request head to the first data event",
            seconds(),
            metrics.ttft.clone(),
        );
        registry.register_with_unit(
            "inter_token_gap",
            "Event streams: time between two data events",
            seconds(),
            metrics.token_gap.clone(),
        );
        registry.register(
            "output_tokens",
            "Completion tokens reported by streams' usage",
            metrics.output_tokens.clone(),
        );
        registry.register(
            "streams_ended",
            "Event streams by how they ended: complete, client, timeout, upstream_error",
            metrics.streams_ended.clone(),
        );
        registry.register_with_unit(
            "upstream_header_time",
            "From sending to a backend to its response head",
            seconds(),
            metrics.upstream_header_time.clone(),
        );
        registry.register_with_unit(
            "upstream_connect_time",
            "Opening a connection to a backend",
            seconds(),
            metrics.upstream_connect_time.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "Time spent waiting for a model slot (admission control)",
            seconds(),
            metrics.queue_wait.clone(),
        );
        registry.register("upstream_retries", "Requests sent again to another server", metrics.retries.clone());
        registry.register(
            "upstream_fallbacks",
            "Requests sent to an upstream's fallback: every server down, or its queue full",
            metrics.fallbacks.clone(),
        );
        registry.register(
            "upstream_connections",
            "Backend connections used, reused from the pool or new",
            metrics.pool_connections.clone(),
        );
        registry.register_with_unit(
            "gateway_added_latency",
            "From the backend's response head to handing it to the client",
            seconds(),
            metrics.gateway_added.clone(),
        );
        registry.register("rejections", "Requests refused, by reason", metrics.rejections.clone());
        registry.register(
            "client_connections",
            "Open client connections, by protocol",
            metrics.client_connections.clone(),
        );
        registry.register("tls_handshakes", "TLS handshakes, by result", metrics.tls_handshakes.clone());
        registry.register("config_reloads", "Config reloads, by result", metrics.reloads.clone());
        registry.register("build", "The running build", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        // Series that exist before their first event, so dashboards and alerts see zeros, not gaps.
        for result in ["success", "failure"] {
            metrics.tls_handshakes.get_or_create_owned(&ResultLabels { result });
            metrics.reloads.get_or_create_owned(&ResultLabels { result });
        }
        Arc::new(Metrics { registry, ..metrics })
    }

    /// The handles of one location's requests; `upstreams` are the (id, name) of those it sends to.
    pub(crate) fn location(&self, server: &str, location: &str, upstreams: &[(usize, &str)]) -> LocationMetrics {
        let route = RouteLabels { server: server.to_string(), location: location.to_string() };
        let by_upstream = upstreams
            .iter()
            .map(|&(id, name)| (Some(id), name))
            .chain([(None, "")])
            .map(|(id, upstream)| {
                let classes = STATUS_CLASSES.map(|status| {
                    self.requests.get_or_create_owned(&RequestLabels {
                        server: route.server.clone(),
                        location: route.location.clone(),
                        upstream: upstream.to_string(),
                        status,
                    })
                });
                (id, classes)
            })
            .collect();
        let ends = STREAM_ENDS.map(|reason| {
            self.streams_ended.get_or_create_owned(&StreamEndLabels {
                server: route.server.clone(),
                location: route.location.clone(),
                reason,
            })
        });
        LocationMetrics {
            by_upstream,
            duration: self.request_duration.get_or_create_owned(&route),
            ttft: self.ttft.get_or_create_owned(&route),
            token_gap: self.token_gap.get_or_create_owned(&route),
            output_tokens: self.output_tokens.get_or_create_owned(&route),
            streams_ended: ends,
            gateway_added: self.gateway_added.clone(),
            rejections: REJECTION_CODES.map(|reason| self.rejections.get_or_create_owned(&ReasonLabels { reason })),
        }
    }

    /// The handles of one upstream.
    pub(crate) fn upstream(&self, name: &str) -> UpstreamMetrics {
        let labels = UpstreamLabels { upstream: name.to_string() };
        let pool = |connection| {
            self.pool_connections.get_or_create_owned(&PoolLabels { upstream: name.to_string(), connection })
        };
        UpstreamMetrics {
            header_time: self.upstream_header_time.get_or_create_owned(&labels),
            connect_time: self.upstream_connect_time.get_or_create_owned(&labels),
            queue_wait: self.queue_wait.get_or_create_owned(&labels),
            retries: self.retries.get_or_create_owned(&labels),
            fallbacks: self.fallbacks.get_or_create_owned(&labels),
            reused: pool("reused"),
            opened: pool("new"),
        }
    }

    /// Counts a request refused before any location (no such handle there): `auth` on the admin API.
    pub(crate) fn reject(&self, reason: &'static str) {
        self.rejections.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A client connection opened; the gauge goes down when the guard is dropped.
    pub(crate) fn client_connection(&self, protocol: &'static str) -> ConnectionGauge {
        let gauge = self.client_connections.get_or_create_owned(&ProtocolLabels { protocol });
        gauge.inc();
        ConnectionGauge(gauge)
    }

    /// Counts a TLS handshake.
    pub(crate) fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes.get_or_create(&ResultLabels { result: if ok { "success" } else { "failure" } }).inc();
    }

    /// Counts a config reload.
    pub(crate) fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabels { result: if ok { "success" } else { "failure" } }).inc();
    }

    /// The exposition (OpenMetrics text): every family, then `state`, the gauges of the running
    /// config made at this scrape.
    pub(crate) fn encode(&self, state: &Registry) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, state);
        let _ = prometheus_client::encoding::text::encode_eof(&mut text);
        text
    }
}

/// Keeps a client connection counted while alive.
pub(crate) struct ConnectionGauge(Gauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metric handles of one location, resolved at config load.
pub(crate) struct LocationMetrics {
    /// Request counters by status class, per upstream id (`None`: no upstream, always last).
    by_upstream: Vec<(Option<usize>, [ShardedCounter; 5])>,
    duration: ShardedHistogram,
    ttft: ShardedHistogram,
    token_gap: ShardedHistogram,
    output_tokens: ShardedCounter,
    streams_ended: [ShardedCounter; 4],
    gateway_added: ShardedHistogram,
    rejections: [ShardedCounter; 6],
}

impl LocationMetrics {
    /// Records a finished request: the upstream that answered (its id), the status, how long it took,
    /// and the code of an error the gateway answered itself.
    pub(crate) fn request(&self, upstream: Option<usize>, status: u16, duration: Duration, error_code: Option<&str>) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some((_, classes)) = self.by_upstream.iter().find(|(id, _)| *id == upstream).or(self.by_upstream.last())
        {
            classes[class].inc();
        }
        self.duration.observe(duration.as_secs_f64());
        if let Some(code) = error_code {
            if let Some(index) = REJECTION_CODES.iter().position(|c| *c == code) {
                self.rejections[index].inc();
            }
        }
    }

    /// Records a finished event stream: how it ended (one of `STREAM_ENDS`), its first token's time
    /// and the tokens its `usage` reported.
    pub(crate) fn stream(&self, end: &str, first_token: Option<Duration>, output_tokens: Option<u64>) {
        let index = STREAM_ENDS.iter().position(|reason| *reason == end).unwrap_or(0);
        self.streams_ended[index].inc();
        if let Some(first) = first_token {
            self.ttft.observe(first.as_secs_f64());
        }
        if let Some(tokens) = output_tokens {
            self.output_tokens.inc_by(tokens);
        }
    }

    /// Records the gap between two data events of a stream, as it happens.
    pub(crate) fn token_gap(&self, gap: Duration) {
        self.token_gap.observe(gap.as_secs_f64());
    }

    /// Records what the gateway added between the backend's head and the client's.
    pub(crate) fn gateway_added(&self, took: Duration) {
        self.gateway_added.observe(took.as_secs_f64());
    }
}

/// The metric handles of one upstream, resolved at config load.
pub(crate) struct UpstreamMetrics {
    /// Time to the response head.
    pub(crate) header_time: ShardedHistogram,
    /// Connect time of new connections.
    pub(crate) connect_time: ShardedHistogram,
    /// Wait for a slot.
    pub(crate) queue_wait: ShardedHistogram,
    /// Requests sent again.
    pub(crate) retries: ShardedCounter,
    /// Requests this upstream sent to its fallback.
    pub(crate) fallbacks: ShardedCounter,
    /// Pooled connections reused.
    pub(crate) reused: ShardedCounter,
    /// Connections opened.
    pub(crate) opened: ShardedCounter,
}

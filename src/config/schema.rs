//! The config file's shape: one serde type per TOML table, with every default stated beside its field.
//! Key names follow nginx's directives where one exists; `docs/config.md` documents each key.

use super::units::{Size, Span};
use crate::error::ErrorFormat;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// The whole file: connection settings, upstreams and virtual servers.
#[derive(Debug, Default)]
pub struct Config {
    /// `[http]`: client connection limits shared by every listener.
    pub http: HttpSettings,
    /// `[admin]`: the admin listener and metrics.
    pub(crate) admin: AdminConfig,
    /// `[[upstream]]`: named groups of backend servers.
    pub(crate) upstreams: Vec<UpstreamConfig>,
    /// `[[server]]`: virtual servers, each with listeners and locations.
    pub(crate) servers: Vec<ServerConfig>,
    /// `[redis]`: the Redis that zones with `shared = true` keep their counts in (default none).
    pub(crate) redis: Option<RedisConfig>,
    /// `[limit_zone.NAME]`: rate limit zones (nginx `limit_req_zone`), by name.
    pub(crate) limit_zones: Vec<(Spanned<String>, LimitZoneConfig)>,
    /// `[[api_key]]`: the API keys of `auth = "api_key"` locations, with those of `[http]
    /// api_keys_file`, which the loader reads in too.
    pub(crate) api_keys: Vec<ApiKeyConfig>,
    /// `[[image_cost]]`: how models count an image's tokens, for estimates (default GLM-4V's).
    pub(crate) image_costs: Vec<ImageCostConfig>,
    /// Some `[[upstream]]` table failed to parse: a location naming an unknown upstream may name that
    /// one, so that is not reported as a second error.
    pub(crate) upstreams_incomplete: bool,
}

/// `[http]`, nginx's `http {}` context for client connections.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Worker threads serving connections (nginx `worker_processes`); 0 means one per core, like
    /// `auto`. Read at start only: a reload keeps the running count.
    pub workers: usize,
    /// Time to receive a request head (nginx `client_header_timeout`, 60 s).
    pub(crate) client_header_timeout: Span,
    /// Longest wait between two reads of a request body (nginx `client_body_timeout`, 60 s).
    pub(crate) client_body_timeout: Span,
    /// Idle time after which a kept-alive client connection is closed (nginx `keepalive_timeout`, 75 s).
    pub(crate) keepalive_timeout: Span,
    /// Requests served on one client connection before it is closed (nginx `keepalive_requests`, 1000).
    pub(crate) keepalive_requests: u64,
    /// Longest request target (path and query); longer answers 414 (nginx's 8k header buffer).
    pub(crate) max_uri_size: Size,
    /// Largest request line plus headers; larger answers 431 (nginx `large_client_header_buffers 4 8k`: 32k).
    pub(crate) max_header_size: Size,
    /// Most header fields in one request (100).
    pub(crate) max_headers: usize,
    /// On SIGTERM, how long in-flight requests may run before the process exits anyway (30 s).
    pub(crate) drain_timeout: Span,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` / `X-Real-IP` name the client (nginx
    /// `set_real_ip_from`; default none: the client is the socket peer).
    pub(crate) trusted_proxies: Vec<Spanned<String>>,
    /// Access log of every server (nginx `access_log`; default `"off"`). Servers and locations may
    /// override.
    pub(crate) access_log: Option<AccessLogSetting>,
    /// Named access log formats with nginx variables (nginx `log_format`); `main`, `combined` and
    /// `json` are built in.
    pub(crate) log_format: BTreeMap<String, Spanned<String>>,
    /// A file of more `[[api_key]]` tables (default none), read with the config, so a reload (or the
    /// admin API's `POST /keys/reload`) adds and revokes keys.
    pub(crate) api_keys_file: Option<Spanned<PathBuf>>,
    /// The usage log (default none): one JSON line per request made with an API key that reached a
    /// model, for billing.
    pub(crate) usage_log: Option<Spanned<PathBuf>>,
    /// Where error and event logs go and from which level (nginx `error_log`; default stderr, `info`).
    /// Read at start only.
    pub error_log: Option<ErrorLogConfig>,
    /// The DNS server (`IP:PORT`) that finds servers with `resolve` or `srv` (nginx `resolver`;
    /// default the system's, from `/etc/resolv.conf`).
    pub(crate) resolver: Option<Spanned<String>>,
}

/// `access_log = "off"` or `access_log = { path = "FILE", format = "NAME" }`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AccessLogSetting {
    /// No access log here.
    Off,
    /// Log to `path` in `format`.
    Log(AccessLogConfig),
}

/// `access_log = { path, format }`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogConfig {
    /// The file, relative to the config file's folder; appended to, created if missing.
    pub(crate) path: Spanned<PathBuf>,
    /// `main`, `combined` (default), `json`, or a `[http] log_format` name.
    #[serde(default = "default_log_format")]
    pub(crate) format: Spanned<String>,
}

fn default_log_format() -> Spanned<String> {
    Spanned::new(0..0, "combined".into())
}

/// A visitor rather than an untagged enum, so that toml's spans inside survive for located errors.
impl<'de> Deserialize<'de> for AccessLogSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = AccessLogSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"off\" or { path = \"FILE\", format = \"NAME\" }")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<AccessLogSetting, E> {
                match text {
                    "off" => Ok(AccessLogSetting::Off),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<AccessLogSetting, A::Error> {
                AccessLogConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AccessLogSetting::Log)
            }
        }
        deserializer.deserialize_any(Setting)
    }
}

/// `error_log = { path, level }`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorLogConfig {
    /// The file (default: stderr); reopened on SIGUSR1.
    pub(crate) path: Option<PathBuf>,
    /// `error`, `warn`, `info` (default) or `debug`; `RUST_LOG` overrides.
    #[serde(default = "default_log_level")]
    pub(crate) level: Spanned<String>,
}

fn default_log_level() -> Spanned<String> {
    Spanned::new(0..0, "info".into())
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            workers: 0,
            client_header_timeout: Span(Duration::from_secs(60)),
            client_body_timeout: Span(Duration::from_secs(60)),
            keepalive_timeout: Span(Duration::from_secs(75)),
            keepalive_requests: 1000,
            max_uri_size: Size(8 * 1024),
            max_header_size: Size(32 * 1024),
            max_headers: 100,
            drain_timeout: Span(Duration::from_secs(30)),
            trusted_proxies: Vec::new(),
            access_log: None,
            log_format: BTreeMap::new(),
            api_keys_file: None,
            usage_log: None,
            error_log: None,
            resolver: None,
        }
    }
}

/// `[admin]`: the admin API (metrics, status, reload, drain) on a listener of its own.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminConfig {
    /// Serve the admin API (default true; `infergate run` and `demo` start it).
    pub(crate) enabled: bool,
    /// Its address (default `127.0.0.1:9901`); anything but loopback needs a `token`.
    pub(crate) listen: Spanned<String>,
    /// Bearer token every admin request must carry (default none).
    pub(crate) token: Option<String>,
    /// Keep metrics (default true); off, requests are accounted only for access logs.
    pub(crate) metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true, listen: Spanned::new(0..0, "127.0.0.1:9901".into()), token: None, metrics: true }
    }
}

/// `[[upstream]]`, nginx's `upstream {}` block.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// Name that locations use in `proxy = "NAME"`.
    pub(crate) name: Spanned<String>,
    /// Backend servers, `host:port`.
    pub(crate) servers: Vec<UpstreamServerConfig>,
    /// Idle keep-alive connections kept per server (nginx `keepalive`, 32).
    #[serde(default = "default_keepalive")]
    pub(crate) keepalive: usize,
    /// How long an idle pooled connection is kept (4 s: shorter than Uvicorn's 5 s keep-alive, so the
    /// backend never closes a connection the pool is about to use).
    #[serde(default = "default_pool_idle")]
    pub(crate) keepalive_timeout: Span,
    /// Connect, send and read timeouts (nginx `proxy_*_timeout`).
    #[serde(default)]
    pub(crate) timeouts: UpstreamTimeouts,
    /// Where requests wait when every server is at its `max_inflight`.
    #[serde(default)]
    pub(crate) queue: QueueConfig,
    /// Active health checks (default: none, only passive health).
    pub(crate) health: Option<HealthConfig>,
    /// Scrape each server's Prometheus metrics for `least_inflight` (default: none).
    pub(crate) load_metrics: Option<LoadMetricsConfig>,
    /// How a server is chosen: `round_robin` (default), `least_inflight` or `hash`.
    #[serde(default)]
    pub(crate) balance: super::values::Balance,
    /// With `balance = "hash"`: `"client_ip"`, `"header:NAME"` or `"cookie:NAME"`.
    pub(crate) hash_key: Option<Spanned<String>>,
    /// Failures within `fail_timeout` that take a server out for `fail_timeout` (nginx `max_fails`, 1;
    /// 0 never takes it out).
    #[serde(default = "default_max_fails")]
    pub(crate) max_fails: u32,
    /// The window for counting failures and how long a failed server is skipped (nginx, 10 s).
    #[serde(default = "default_fail_timeout")]
    pub(crate) fail_timeout: Span,
    /// Servers tried for one request (nginx `proxy_next_upstream_tries`; 0, the default: each server once).
    #[serde(default)]
    pub(crate) next_upstream_tries: usize,
    /// Time after which no other server is tried (nginx `proxy_next_upstream_timeout`; default none).
    pub(crate) next_upstream_timeout: Option<Span>,
    /// Request bodies up to this size are read before sending, so a failed request can go to another
    /// server (1 MB); larger ones stream and are not sent again.
    #[serde(default = "default_retry_body_max")]
    pub(crate) next_upstream_body_max: Size,
    /// Send a request that reached a server (and failed there) to another one even if its method is
    /// not idempotent, as a POST to a model is (nginx `proxy_next_upstream non_idempotent`; false).
    #[serde(default)]
    pub(crate) next_upstream_non_idempotent: bool,
    /// Count `max_inflight` across every gateway that names the same `[redis]` (slot leases there;
    /// default false).
    #[serde(default = "unshared")]
    pub(crate) shared_admission: Spanned<bool>,
    /// How `https://` servers are reached: roots, server name, client certificate (default: the
    /// system's roots, the server's host name, none).
    #[serde(default)]
    pub(crate) tls: UpstreamTlsConfig,
    /// The upstream a request goes to when every server of this one is down or its queue is full
    /// (default none).
    pub(crate) fallback: Option<Spanned<String>>,
    /// Request headers set on every request sent to this upstream, `""` removing one (a hosted
    /// provider's API key; default none).
    #[serde(default)]
    pub(crate) proxy_set_header: BTreeMap<String, String>,
}

/// `tls = { ca, server_name, cert, key }` of an upstream, for its `https://` servers.
#[derive(Debug, Deserialize, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsConfig {
    /// PEM file of the roots that may sign the servers' certificates (default: the system's).
    pub(crate) ca: Option<Spanned<PathBuf>>,
    /// The name sent (SNI) and checked in the certificate (default: each server's host).
    pub(crate) server_name: Option<Spanned<String>>,
    /// PEM certificate chain presented to servers that ask for one (with `key`).
    pub(crate) cert: Option<Spanned<PathBuf>>,
    /// PEM private key of `cert`.
    pub(crate) key: Option<Spanned<PathBuf>>,
}

fn default_retry_body_max() -> Size {
    Size(1024 * 1024)
}

fn default_max_fails() -> u32 {
    1
}

fn default_fail_timeout() -> Span {
    Span(Duration::from_secs(10))
}

/// `load_metrics = { path, interval, stale_after }` of an upstream.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoadMetricsConfig {
    /// Path of the Prometheus text (`/metrics`).
    #[serde(default = "default_metrics_path")]
    pub(crate) path: Spanned<String>,
    /// Time between two scrapes (1 s).
    #[serde(default = "default_scrape_interval")]
    pub(crate) interval: Span,
    /// Numbers older than this count as saturation (5 s).
    #[serde(default = "default_stale_after")]
    pub(crate) stale_after: Span,
}

fn default_metrics_path() -> Spanned<String> {
    Spanned::new(0..0, "/metrics".into())
}

fn default_scrape_interval() -> Span {
    Span(Duration::from_secs(1))
}

fn default_stale_after() -> Span {
    Span(Duration::from_secs(5))
}

/// `health = { path, interval, timeout, expect, rise, fall }` of an upstream.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthConfig {
    /// Path requested with `GET` (a cheap one like `/health`: never a generation).
    pub(crate) path: Spanned<String>,
    /// Time between two checks (5 s).
    #[serde(default = "default_health_interval")]
    pub(crate) interval: Span,
    /// Longest wait for an answer (2 s).
    #[serde(default = "default_health_timeout")]
    pub(crate) timeout: Span,
    /// Statuses that pass (200).
    #[serde(default = "default_health_expect")]
    pub(crate) expect: Vec<Spanned<u16>>,
    /// Passed checks in a row that bring a server back (2).
    #[serde(default = "default_rise")]
    pub(crate) rise: u32,
    /// Failed checks in a row that take a server out (3).
    #[serde(default = "default_fall")]
    pub(crate) fall: u32,
}

fn default_health_interval() -> Span {
    Span(Duration::from_secs(5))
}

fn default_health_timeout() -> Span {
    Span(Duration::from_secs(2))
}

fn default_health_expect() -> Vec<Spanned<u16>> {
    vec![Spanned::new(0..0, 200)]
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

/// `queue = { max, timeout }` of an upstream: used only when some server has `max_inflight`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct QueueConfig {
    /// Requests that may wait; one more is answered 503 at once (64).
    pub(crate) max: usize,
    /// Longest wait for a slot; then 503 (10 s).
    pub(crate) timeout: Span,
    /// Request header giving a request's place in the queue: `high`, `normal`, `low` or a digit
    /// (higher first; default none: first come, first served).
    pub(crate) priority_header: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { max: 64, timeout: Span(Duration::from_secs(10)), priority_header: None }
    }
}

fn default_keepalive() -> usize {
    32
}

fn default_pool_idle() -> Span {
    Span(Duration::from_secs(4))
}

/// One backend server of an upstream.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamServerConfig {
    /// `host:port` of the backend, e.g. `"127.0.0.1:8080"`, or `https://host[:port]` (443 by
    /// default) for one reached over TLS.
    pub(crate) addr: Spanned<String>,
    /// Most requests sent to this server at once (its batch slots); unset: no limit.
    pub(crate) max_inflight: Option<Spanned<usize>>,
    /// Most estimated tokens (prompt, images, `max_tokens`) of requests sent to it at once; unset: no limit.
    pub(crate) max_inflight_tokens: Option<Spanned<u64>>,
    /// Send this server no new requests; those in flight finish (blue/green switches, maintenance).
    #[serde(default)]
    pub(crate) drain: bool,
    /// Its share under `round_robin` and `hash` (nginx `weight`, 1).
    #[serde(default = "one")]
    pub(crate) weight: Spanned<u32>,
    /// `addr` names a host whose A and AAAA records are the servers, asked again on their TTL (nginx
    /// `server ... resolve`; default false).
    #[serde(default = "unshared")]
    pub(crate) resolve: Spanned<bool>,
    /// `addr` names SRV records (`_service._proto.name`, no port): their targets and ports are the
    /// servers, asked again on their TTL (default false).
    #[serde(default = "unshared")]
    pub(crate) srv: Spanned<bool>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// nginx's `proxy_connect_timeout`, `proxy_send_timeout` and `proxy_read_timeout` (60 s each), and
/// the timeouts shaped for generation that refine `read`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct UpstreamTimeouts {
    /// Establishing the TCP connection: refused answers 502, timed out 504.
    pub(crate) connect: Span,
    /// Between two successful writes of the request to the backend.
    pub(crate) send: Span,
    /// Between two successful reads of the response, armed once the request is sent.
    pub(crate) read: Span,
    /// From the request sent to the response head (a model's prefill); default `read`.
    pub(crate) first_byte: Option<Span>,
    /// Between two chunks of the response (a model's token gap); default `read`.
    pub(crate) idle: Option<Span>,
    /// From the request's start to the response's last byte (a whole generation); default none.
    pub(crate) total: Option<Span>,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        let sixty = Span(Duration::from_secs(60));
        UpstreamTimeouts { connect: sixty, send: sixty, read: sixty, first_byte: None, idle: None, total: None }
    }
}

impl UpstreamTimeouts {
    /// The wait for the response head.
    pub(crate) fn first_byte(&self) -> Duration {
        self.first_byte.unwrap_or(self.read).0
    }

    /// The longest gap between two response chunks.
    pub(crate) fn idle(&self) -> Duration {
        self.idle.unwrap_or(self.read).0
    }
}

/// `[limit_zone.NAME]`, nginx's `limit_req_zone`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitZoneConfig {
    /// What requests are counted by: `"client_ip"` or `"header:NAME"` (e.g. `"header:Authorization"`).
    pub(crate) key: Spanned<String>,
    /// `"10r/s"` or `"600r/m"`; needed by `limit_req`, not by `limit_conn`.
    pub(crate) rate: Option<Spanned<String>>,
    /// Keys remembered; the least recently seen is forgotten first (100000, about nginx's 10m zone).
    #[serde(default = "default_max_keys")]
    pub(crate) max_keys: usize,
    /// Count and log, but never delay or reject (nginx `limit_req_dry_run`).
    #[serde(default)]
    pub(crate) dry_run: bool,
    /// Status of a rejection (nginx `limit_req_status`; 429 here, nginx's default is 503).
    #[serde(default = "default_limit_status")]
    pub(crate) status: Spanned<u16>,
    /// Keep the counts in `[redis]`, shared by every gateway that names it (default false).
    #[serde(default = "unshared")]
    pub(crate) shared: Spanned<bool>,
    /// What a shared zone does while Redis cannot be reached (default `local`).
    #[serde(default)]
    pub(crate) fallback: SharedFallback,
}

/// What a shared zone does while its Redis cannot be reached.
#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SharedFallback {
    /// Counts on in this gateway alone, at the zone's rate.
    #[default]
    Local,
    /// Refuses the zone's requests (503).
    Refuse,
}

/// `[redis]`: where shared zones keep their counts.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]`.
    pub(crate) url: Spanned<String>,
    /// Longest wait for one command before the zone falls back (50 ms).
    #[serde(default = "default_redis_timeout")]
    pub(crate) timeout: Span,
    /// After a failure, how long zones stay on their fallback before Redis is tried again (1 s).
    #[serde(default = "default_redis_retry")]
    pub(crate) retry: Span,
    /// Prefix of every key the gateway writes (`"infergate:"`).
    #[serde(default = "default_redis_prefix")]
    pub(crate) prefix: String,
    /// Keep every API key's rate and token budgets here too (default false).
    #[serde(default)]
    pub(crate) share_api_keys: bool,
    /// How long a slot lease of `shared_admission` outlives a gateway that stopped renewing it (10 s).
    #[serde(default = "default_lease_ttl")]
    pub(crate) lease_ttl: Span,
}

fn default_lease_ttl() -> Span {
    Span(Duration::from_secs(10))
}

fn default_redis_timeout() -> Span {
    Span(Duration::from_millis(50))
}

fn default_redis_retry() -> Span {
    Span(Duration::from_secs(1))
}

fn default_redis_prefix() -> String {
    "infergate:".into()
}

fn unshared() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

fn default_max_keys() -> usize {
    100_000
}

fn default_limit_status() -> Spanned<u16> {
    Spanned::new(0..0, 429)
}

/// `[[api_key]]`: one client's key and what it may do. The secret itself is never in the file: only
/// its SHA-256 (`infergate key new NAME` prints a key and its table).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyConfig {
    /// The key's name, unique: in logs, metrics and the admin API.
    pub(crate) name: Spanned<String>,
    /// The team or customer it belongs to (default none).
    pub(crate) team: Option<String>,
    /// SHA-256 of the secret, 64 hexadecimal digits.
    pub(crate) sha256: Spanned<String>,
    /// Models it may name in a request's `model` (globs with `*`; default every model).
    #[serde(default = "every_model")]
    pub(crate) models: Vec<Spanned<String>>,
    /// Requests per second or minute (`"10r/s"`, nginx's `limit_req`; default unlimited).
    pub(crate) rate: Option<Spanned<String>>,
    /// Requests above `rate` served at once before rejecting (nginx's `burst` with `nodelay`; 0).
    #[serde(default)]
    pub(crate) burst: u64,
    /// Requests in flight at once (default unlimited).
    pub(crate) max_concurrent: Option<usize>,
    /// Tokens (prompt and completion) per minute, refilled continuously (default unlimited).
    pub(crate) tokens_per_minute: Option<u64>,
    /// Tokens per day, refilled continuously (default unlimited).
    pub(crate) tokens_per_day: Option<u64>,
    /// Prompt tokens alone per minute (default unlimited).
    pub(crate) prompt_tokens_per_minute: Option<u64>,
    /// Prompt tokens alone per day (default unlimited).
    pub(crate) prompt_tokens_per_day: Option<u64>,
    /// Completion tokens alone per minute (default unlimited).
    pub(crate) completion_tokens_per_minute: Option<u64>,
    /// Completion tokens alone per day (default unlimited).
    pub(crate) completion_tokens_per_day: Option<u64>,
    /// Its place in an upstream's admission queue: `"high"`, `"normal"` (default) or `"low"`.
    #[serde(default)]
    pub(crate) priority: KeyPriority,
    /// Whether a request's own priority header (the upstream's `queue.priority_header`) is
    /// believed instead (default false: the key's priority stands).
    #[serde(default)]
    pub(crate) client_priority: bool,
    /// When it stops working, RFC 3339 (`"2027-01-01T00:00:00Z"`; default never).
    pub(crate) expires: Option<Spanned<String>>,
    /// Refused with 403 while true (default false).
    #[serde(default)]
    pub(crate) disabled: bool,
    /// Where this table is in its file.
    #[serde(skip)]
    pub(crate) span: std::ops::Range<usize>,
}

/// `images = { ... }` of a location: what the images of an OpenAI chat request may be. Checked
/// before the backend sees a byte; sizes are read from the images' headers.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ImagesConfig {
    /// Whether requests' images are checked here (default: where the body is read whole anyway, on a
    /// `models` location or one with `auth = "api_key"`; `true` reads a `proxy` location's inference
    /// POSTs whole too).
    pub(crate) enabled: Option<bool>,
    /// Images per request (default 16).
    pub(crate) max_count: usize,
    /// Bytes of one image, decoded (default 20m).
    pub(crate) max_bytes: Size,
    /// Pixels of one image, width times height (default 50,000,000: a 48-megapixel photo passes).
    pub(crate) max_pixels: u64,
    /// Pixels of all of a request's images together (default 200,000,000).
    pub(crate) max_request_pixels: u64,
    /// Formats accepted, of `png`, `jpeg`, `webp`, `gif` (default all four).
    pub(crate) formats: Spanned<Vec<String>>,
    /// Images above these sizes are scaled down before they are forwarded (default none).
    pub(crate) resize: Option<Spanned<ResizeConfig>>,
    /// `http(s)` image URLs: `"refuse"` (default) or `"fetch"` (the gateway fetches them and
    /// forwards them inline).
    pub(crate) remote: Spanned<String>,
    /// The longest a fetch may take (default 10 s).
    pub(crate) fetch_timeout: Span,
    /// Whether a fetch may reach loopback, private and link-local addresses (default false: no
    /// request can make the gateway reach inside its own network).
    pub(crate) fetch_private: bool,
    /// Other limits for the models a glob matches (the longest matching glob decides; what a
    /// table leaves out is the location's).
    pub(crate) models: BTreeMap<String, ImageBoundsConfig>,
}

/// `images.models.GLOB`: a model's own image limits.
#[derive(Debug, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageBoundsConfig {
    pub(crate) max_count: Option<usize>,
    pub(crate) max_bytes: Option<Size>,
    pub(crate) max_pixels: Option<u64>,
    pub(crate) max_request_pixels: Option<u64>,
    pub(crate) formats: Option<Vec<String>>,
}

/// `images.resize = { max_side = N, max_pixels = N, format = "..." }`: how large a forwarded image
/// may be; larger ones are decoded, scaled down (Lanczos 3, aspect kept) and encoded again.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResizeConfig {
    /// The longer side at most, in pixels (default none).
    pub(crate) max_side: Option<u32>,
    /// Width times height at most (default none).
    pub(crate) max_pixels: Option<u64>,
    /// The format of a scaled image: `keep` (default; a GIF becomes a PNG), `png`, `jpeg`, `webp`
    /// (lossless).
    #[serde(default = "default_resize_format")]
    pub(crate) format: Spanned<String>,
}

fn default_resize_format() -> Spanned<String> {
    Spanned::new(0..0, "keep".into())
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            enabled: None,
            max_count: 16,
            max_bytes: Size(20 << 20),
            max_pixels: 50_000_000,
            max_request_pixels: 200_000_000,
            formats: Spanned::new(0..0, ["png", "jpeg", "webp", "gif"].map(String::from).to_vec()),
            resize: None,
            remote: Spanned::new(0..0, "refuse".into()),
            fetch_timeout: Span(std::time::Duration::from_secs(10)),
            fetch_private: false,
            models: BTreeMap::new(),
        }
    }
}

/// `[[image_cost]]`: how the models its globs match count an image's tokens.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageCostConfig {
    /// Model globs (`*` matches any run of characters).
    pub(crate) models: Spanned<Vec<String>>,
    /// Pixels per token along each side (default 28: 14-pixel patches merged 2x2).
    #[serde(default = "default_token_side")]
    pub(crate) token_side: Spanned<u32>,
    /// Tokens one image costs at most (a model that scales larger images down; default none).
    pub(crate) max_tokens: Option<u32>,
    /// Tokens each image adds besides its pixels (markers around it; default 0).
    #[serde(default)]
    pub(crate) extra_tokens: u32,
}

fn default_token_side() -> Spanned<u32> {
    Spanned::new(0..0, 28)
}

/// What a key's token budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Prompt and completion tokens together.
    Tokens,
    /// Prompt tokens alone.
    Prompt,
    /// Completion tokens alone.
    Completion,
}

impl Counted {
    /// What it counts, in a word.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Counted::Tokens => "tokens",
            Counted::Prompt => "prompt",
            Counted::Completion => "completion",
        }
    }
}

/// One configured token budget: what it counts, its window in milliseconds, its limit.
pub(crate) type BudgetLimit = (Counted, u64, u64);

impl ApiKeyConfig {
    /// Its token budgets, in the order answers' headers prefer them (the per-minute one of all tokens
    /// first).
    pub(crate) fn budgets(&self) -> Vec<BudgetLimit> {
        const MINUTE: u64 = 60_000;
        const DAY: u64 = 86_400_000;
        [
            (Counted::Tokens, MINUTE, self.tokens_per_minute),
            (Counted::Tokens, DAY, self.tokens_per_day),
            (Counted::Prompt, MINUTE, self.prompt_tokens_per_minute),
            (Counted::Prompt, DAY, self.prompt_tokens_per_day),
            (Counted::Completion, MINUTE, self.completion_tokens_per_minute),
            (Counted::Completion, DAY, self.completion_tokens_per_day),
        ]
        .into_iter()
        .filter_map(|(counted, window, limit)| Some((counted, window, limit?)))
        .collect()
    }
}

fn every_model() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "*".into())]
}

/// How a location authenticates its clients.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Auth {
    /// A key of `[[api_key]]`.
    ApiKey,
}

/// A built-in web page a location serves (`page`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PageKind {
    /// The image question page, talking to an OpenAI-compatible API of the same server.
    Chat,
}

/// A key's place in the admission queue.
#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyPriority {
    /// Served before the others.
    High,
    /// The default.
    #[default]
    Normal,
    /// Served after the others.
    Low,
}

/// `limit_req = { zone, burst, nodelay, delay }` on a location (one table or an array of them).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitReqConfig {
    /// A `[limit_zone.NAME]`.
    pub(crate) zone: Spanned<String>,
    /// Requests allowed above the rate before rejecting (0).
    #[serde(default)]
    pub(crate) burst: u64,
    /// Serve requests within the burst at once instead of spacing them at the rate (false).
    #[serde(default)]
    pub(crate) nodelay: bool,
    /// Requests above the rate served at once before spacing starts (0); ignored with `nodelay`.
    #[serde(default)]
    pub(crate) delay: u64,
}

/// `limit_conn = { zone, max }` on a location.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitConnConfig {
    /// A `[limit_zone.NAME]` (its `rate` is not used).
    pub(crate) zone: Spanned<String>,
    /// Requests in flight at once per key; one more is rejected.
    pub(crate) max: Spanned<usize>,
}

/// Accepts one table or an array of tables. A visitor rather than an untagged enum, so that toml's
/// spans inside (for located errors) survive.
fn one_or_many<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    struct OneOrMany<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table or an array of tables")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|one| vec![one])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    deserializer.deserialize_any(OneOrMany(std::marker::PhantomData))
}

/// `compress = { ... }`: nginx's `gzip on`, `gzip_types`, `gzip_min_length`, `gzip_comp_level`, with
/// brotli and zstd beside gzip.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CompressConfig {
    /// Whether to compress (default true once the table is there; `false` turns a server's off here).
    pub(crate) enabled: bool,
    /// Codings offered, preferred first when the client's q-values tie (default zstd, br, gzip).
    pub(crate) encodings: Vec<Spanned<String>>,
    /// Media types compressed (default: JSON, plain text, HTML, CSS, JavaScript, XML, SVG).
    pub(crate) types: Vec<String>,
    /// Responses declaring a shorter `Content-Length` are not compressed (default 1k).
    pub(crate) min_length: Size,
    /// gzip level, 1-9 (default 4; nginx's default is 1).
    pub(crate) gzip_level: Spanned<u32>,
    /// brotli quality, 0-11 (default 4).
    pub(crate) br_level: Spanned<u32>,
    /// zstd level, 1-19 (default 3).
    pub(crate) zstd_level: Spanned<i32>,
}

impl Default for CompressConfig {
    fn default() -> Self {
        let spanned = |text: &str| Spanned::new(0..0, text.to_string());
        CompressConfig {
            enabled: true,
            encodings: vec![spanned("zstd"), spanned("br"), spanned("gzip")],
            types: [
                "application/json",
                "text/plain",
                "text/html",
                "text/css",
                "application/javascript",
                "text/javascript",
                "application/xml",
                "text/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            min_length: Size(1024),
            gzip_level: Spanned::new(0..0, 4),
            br_level: Spanned::new(0..0, 4),
            zstd_level: Spanned::new(0..0, 3),
        }
    }
}

/// `[[server]]`, nginx's `server {}` block. Its `[[server.location]]` tables are read separately so
/// that an error in one location does not hide errors in the others. The keys a location may
/// override (`add_header`, `client_max_body_size`, `compress`, ...) are declared in both structs:
/// serde's `flatten` cannot be combined with `deny_unknown_fields`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerConfig {
    /// Addresses to listen on, `ip:port` (nginx `listen`).
    pub(crate) listen: Vec<Spanned<String>>,
    /// Host names this server answers: exact (`api.example.com`) or leading wildcard
    /// (`*.example.com`). Empty: answers only as the default server.
    #[serde(default)]
    pub(crate) server_name: Vec<String>,
    /// This server answers requests whose Host matches no server of its listeners (nginx
    /// `default_server`). Without one, the first server listed for an address is the default.
    #[serde(default)]
    pub(crate) default_server: bool,
    /// TLS on every address of this server.
    pub(crate) tls: Option<TlsConfig>,
    /// Offer HTTP/2 (ALPN `h2` over TLS, prior knowledge in cleartext). Default true.
    #[serde(default = "yes")]
    pub(crate) http2: bool,
    /// Response headers added to every response of this server, error responses included
    /// (nginx `add_header ... always`).
    #[serde(default)]
    pub(crate) add_header: BTreeMap<String, String>,
    /// Largest request body (nginx `client_max_body_size`; default 20 MB since base64 images are
    /// large; `"0"` means no limit). Locations may override.
    pub(crate) client_max_body_size: Option<Size>,
    /// Request headers set before the handler sees the request, `""` removing one (nginx
    /// `proxy_set_header`); locations add to these.
    #[serde(default)]
    pub(crate) proxy_set_header: BTreeMap<String, String>,
    /// Response headers removed before `add_header` runs (nginx `proxy_hide_header`, on every
    /// response); locations add to these.
    #[serde(default)]
    pub(crate) proxy_hide_header: Vec<String>,
    /// Response compression (nginx `gzip`); default off. Locations may replace it.
    pub(crate) compress: Option<CompressConfig>,
    /// Access log of this server (default `[http]`'s); locations may override.
    pub(crate) access_log: Option<AccessLogSetting>,
    /// How error responses look; locations may override. Default: `json` on proxy locations,
    /// `text` elsewhere.
    pub(crate) errors: Option<ErrorFormat>,
    /// Filled by the loader from `[[server.location]]`.
    #[serde(skip)]
    pub(crate) locations: Vec<LocationConfig>,
    /// Where this `[[server]]` table starts in the file, for errors about it as a whole.
    #[serde(skip)]
    pub(crate) span: std::ops::Range<usize>,
}

fn yes() -> bool {
    true
}

/// `tls = { cert, key, protocols }` on a server.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// PEM file with the certificate chain, leaf first; relative to the config file's folder.
    pub(crate) cert: Spanned<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: Spanned<PathBuf>,
    /// TLS versions offered, from `"1.2"` and `"1.3"` (default both, as the seed's `ssl_protocols`).
    #[serde(default = "default_tls_protocols")]
    pub(crate) protocols: Vec<Spanned<String>>,
    /// Cipher suites offered, in the server's order of preference, by their IANA names
    /// (`"TLS13_AES_128_GCM_SHA256"`); default: every AEAD suite with forward secrecy rustls has.
    pub(crate) ciphers: Option<Vec<Spanned<String>>>,
}

fn default_tls_protocols() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "1.2".into()), Spanned::new(0..0, "1.3".into())]
}

/// `[[server.location]]`, nginx's `location` block: one match and one handler.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct LocationConfig {
    /// Matches this exact path (nginx `location = /path`).
    pub(crate) exact: Option<String>,
    /// Matches paths starting with this (nginx `location /path`); the longest wins.
    pub(crate) prefix: Option<String>,
    /// Matches paths against a regular expression, `(?i)` for case-insensitive (nginx `~` / `~*`);
    /// checked in config order after prefixes, and the first match wins over the longest prefix.
    pub(crate) regex: Option<Spanned<String>>,
    /// On a prefix location: when it is the longest match, regexes are not checked (nginx `^~`).
    #[serde(default)]
    pub(crate) skip_regex: bool,
    /// Handler: forward to this upstream.
    pub(crate) proxy: Option<Spanned<String>>,
    /// With `proxy`: other upstreams taking matching requests and a weighted share of the rest.
    #[serde(default)]
    pub(crate) canary: Vec<CanaryConfig>,
    /// With `canary`: choose the weighted share by client address, so a client keeps its version.
    #[serde(default)]
    pub(crate) sticky: bool,
    /// Handler: route by the JSON body's `model` field, model name to upstream name; `GET .../models`
    /// is answered from this table.
    #[serde(default)]
    pub(crate) models: BTreeMap<String, Spanned<String>>,
    /// Handler: serve files from this folder, the request path appended (nginx `root`); relative to
    /// the config file's folder.
    pub(crate) root: Option<Spanned<PathBuf>>,
    /// Handler: serve files from this folder, which stands for the location's path (nginx `alias`).
    pub(crate) alias: Option<Spanned<PathBuf>>,
    /// With `root` / `alias`: files tried for a folder, in order (default `["index.html"]`).
    pub(crate) index: Option<Vec<String>>,
    /// With `root` / `alias`: `Cache-Control: max-age` and `Expires` this far ahead (nginx `expires`).
    pub(crate) expires: Option<Span>,
    /// With `root` / `alias`: more `Cache-Control` directives, after `max-age` (`"public, no-transform"`).
    pub(crate) cache_control: Option<String>,
    /// With `root` / `alias`: serve `FILE.br`, `FILE.zst`, `FILE.gz` when present and accepted
    /// (nginx `gzip_static`; default true).
    pub(crate) precompressed: Option<bool>,
    /// With `root` / `alias`: serve files whose real path, symlinks resolved, leaves the folder
    /// (default false: 403).
    pub(crate) allow_symlinks_outside: Option<bool>,
    /// Handler: answer with a fixed status and body (nginx `return CODE TEXT`).
    #[serde(rename = "return")]
    pub(crate) return_: Option<ReturnConfig>,
    /// Handler: redirect (nginx `return 301 URL`), with `$scheme`, `$host`, `$server_name`,
    /// `$request_uri`, `$uri` and `$args`.
    pub(crate) redirect: Option<RedirectConfig>,
    /// Handler: a built-in web page (`"chat"`, the image question page).
    pub(crate) page: Option<PageKind>,
    /// With `page = "chat"`: the OpenAI-compatible base path it calls, on the same server (`/v1`).
    pub(crate) page_api: Option<Spanned<String>>,
    /// Response headers added here, on top of the server's.
    #[serde(default)]
    pub(crate) add_header: BTreeMap<String, String>,
    /// Whether the server's `add_header` and `proxy_hide_header` apply here too (default true; false
    /// gives nginx's behaviour, where a location's `add_header` replaces the server's).
    #[serde(default = "yes")]
    pub(crate) add_header_inherit: bool,
    /// Largest request body here (nginx `client_max_body_size`); default the server's.
    pub(crate) client_max_body_size: Option<Size>,
    /// Request headers set here, on top of the server's (nginx `proxy_set_header`; `""` removes).
    #[serde(default)]
    pub(crate) proxy_set_header: BTreeMap<String, String>,
    /// Response headers removed here, on top of the server's (nginx `proxy_hide_header`).
    #[serde(default)]
    pub(crate) proxy_hide_header: Vec<String>,
    /// Response compression here, replacing the server's table.
    pub(crate) compress: Option<CompressConfig>,
    /// Limits on the images of OpenAI chat requests (default `ImagesConfig::default`: on where the
    /// body is read anyway, a `models` location or `auth = "api_key"`).
    #[serde(default)]
    pub(crate) images: ImagesConfig,
    /// Access log here (default the server's); `"off"` logs nothing here.
    pub(crate) access_log: Option<AccessLogSetting>,
    /// Rate limits (nginx `limit_req`): one table or an array.
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) limit_req: Vec<LimitReqConfig>,
    /// Concurrent request limits per key (nginx `limit_conn`): one table or an array.
    #[serde(default, deserialize_with = "one_or_many")]
    pub(crate) limit_conn: Vec<LimitConnConfig>,
    /// Error body format for this location.
    pub(crate) errors: Option<ErrorFormat>,
    /// Whether POSTs here are inference requests, safe to send to another server before their first
    /// response byte (default: those to the OpenAI-compatible generation paths).
    pub(crate) inference: Option<bool>,
    /// For a streamed chat request that waits (in an admission queue, in prefill) this long without
    /// a response head: answer the head at once and send `: keep-alive` comments at this interval
    /// until the model's first event (default off).
    pub(crate) sse_keepalive: Option<Spanned<Span>>,
    /// `"api_key"`: every request needs a configured key (`Authorization: Bearer KEY` or
    /// `X-API-Key: KEY`); default none.
    pub(crate) auth: Option<Auth>,
    /// nginx's `proxy_buffering`; accepted for parity and documented: infergate forwards every
    /// response frame as it arrives whatever this says, so streams are never delayed.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted for nginx parity; streams are never buffered")]
    pub(crate) proxy_buffering: bool,
    /// nginx's `proxy_buffer_size`; accepted with `proxy_buffering`, see there.
    #[expect(dead_code, reason = "accepted for nginx parity; streams are never buffered")]
    pub(crate) proxy_buffer_size: Option<Size>,
    /// nginx's `proxy_buffers` (`"8 32k"`); accepted with `proxy_buffering`, see there.
    pub(crate) proxy_buffers: Option<String>,
    /// Where this table is in the file.
    #[serde(skip)]
    pub(crate) span: std::ops::Range<usize>,
}

/// One `canary = [{ upstream, weight, header, cookie }]` entry of a proxy location.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct CanaryConfig {
    /// Where its requests go.
    pub(crate) upstream: Spanned<String>,
    /// Percent of the requests no rule matched (0-100; all canaries together at most 100).
    #[serde(default)]
    pub(crate) weight: u32,
    /// `"Name: value"`: requests carrying it go here (e.g. `"X-Model-Version: canary"`).
    pub(crate) header: Option<Spanned<String>>,
    /// `"name=value"`: requests with this cookie go here.
    pub(crate) cookie: Option<String>,
}

/// `return = { status = 200, body = "ok" }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReturnConfig {
    /// Response status (100-599).
    pub(crate) status: Spanned<u16>,
    /// Response body (default empty).
    #[serde(default)]
    pub(crate) body: String,
    /// Content type of the body (default `text/plain; charset=utf-8`).
    pub(crate) content_type: Option<String>,
}

/// `redirect = { url = "https://$host$request_uri", status = 301 }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedirectConfig {
    /// Target, with variables.
    pub(crate) url: Spanned<String>,
    /// 301, 302, 303, 307 or 308 (default 301).
    #[serde(default = "default_redirect_status")]
    pub(crate) status: Spanned<u16>,
}

/// `client_max_body_size` when neither the location nor its server says: base64 images are large.
pub(crate) const DEFAULT_MAX_BODY: Size = Size(20 * 1024 * 1024);

fn default_redirect_status() -> Spanned<u16> {
    Spanned::new(0..0, 301)
}

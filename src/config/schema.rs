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
    pub admin: AdminConfig,
    /// `[[upstream]]`: named groups of backend servers.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[server]]`: virtual servers, each with listeners and locations.
    pub servers: Vec<ServerConfig>,
    /// `[limit_zone.NAME]`: rate limit zones (nginx `limit_req_zone`), by name.
    pub limit_zones: Vec<(Spanned<String>, LimitZoneConfig)>,
    /// Some `[[upstream]]` table failed to parse: a location naming an unknown upstream may name that
    /// one, so that is not reported as a second error.
    pub upstreams_incomplete: bool,
}

/// `[http]`, nginx's `http {}` context for client connections.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Worker threads serving connections (nginx `worker_processes`); 0 means one per core, like
    /// `auto`. Read at start only: a reload keeps the running count.
    pub workers: usize,
    /// Time to receive a request head (nginx `client_header_timeout`, 60 s).
    pub client_header_timeout: Span,
    /// Longest wait between two reads of a request body (nginx `client_body_timeout`, 60 s).
    pub client_body_timeout: Span,
    /// Idle time after which a kept-alive client connection is closed (nginx `keepalive_timeout`, 75 s).
    pub keepalive_timeout: Span,
    /// Requests served on one client connection before it is closed (nginx `keepalive_requests`, 1000).
    pub keepalive_requests: u64,
    /// Longest request target (path and query); longer answers 414 (nginx's 8k header buffer).
    pub max_uri_size: Size,
    /// Largest request line plus headers; larger answers 431 (nginx `large_client_header_buffers 4 8k`: 32k).
    pub max_header_size: Size,
    /// Most header fields in one request (100).
    pub max_headers: usize,
    /// On SIGTERM, how long in-flight requests may run before the process exits anyway (30 s).
    pub drain_timeout: Span,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` / `X-Real-IP` name the client (nginx
    /// `set_real_ip_from`; default none: the client is the socket peer).
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Access log of every server (nginx `access_log`; default `"off"`). Servers and locations may
    /// override.
    pub access_log: Option<AccessLogSetting>,
    /// Named access log formats with nginx variables (nginx `log_format`); `main`, `combined` and
    /// `json` are built in.
    pub log_format: BTreeMap<String, Spanned<String>>,
    /// Where error and event logs go and from which level (nginx `error_log`; default stderr, `info`).
    /// Read at start only.
    pub error_log: Option<ErrorLogConfig>,
}

/// `access_log = "off"` or `access_log = { path = "FILE", format = "NAME" }`.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLogSetting {
    /// No access log here.
    Off,
    /// Log to `path` in `format`.
    Log(AccessLogConfig),
}

/// `access_log = { path, format }`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// The file, relative to the config file's folder; appended to, created if missing.
    pub path: Spanned<PathBuf>,
    /// `main`, `combined` (default), `json`, or a `[http] log_format` name.
    #[serde(default = "default_log_format")]
    pub format: Spanned<String>,
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
    pub path: Option<PathBuf>,
    /// `error`, `warn`, `info` (default) or `debug`; `RUST_LOG` overrides.
    #[serde(default = "default_log_level")]
    pub level: Spanned<String>,
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
            error_log: None,
        }
    }
}

/// `[admin]`: the admin API (metrics, status, reload, drain) on a listener of its own.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin API (default true; `infergate run` and `demo` start it).
    pub enabled: bool,
    /// Its address (default `127.0.0.1:9901`); anything but loopback needs a `token`.
    pub listen: Spanned<String>,
    /// Bearer token every admin request must carry (default none).
    pub token: Option<String>,
    /// Keep metrics (default true); off, requests are accounted only for access logs.
    pub metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true, listen: Spanned::new(0..0, "127.0.0.1:9901".into()), token: None, metrics: true }
    }
}

/// `[[upstream]]`, nginx's `upstream {}` block.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name that locations use in `proxy = "NAME"`.
    pub name: Spanned<String>,
    /// Backend servers, `host:port`.
    pub servers: Vec<UpstreamServerConfig>,
    /// Idle keep-alive connections kept per server (nginx `keepalive`, 32).
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    /// How long an idle pooled connection is kept (4 s: shorter than Uvicorn's 5 s keep-alive, so the
    /// backend never closes a connection the pool is about to use).
    #[serde(default = "default_pool_idle")]
    pub keepalive_timeout: Span,
    /// Connect, send and read timeouts (nginx `proxy_*_timeout`).
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// Where requests wait when every server is at its `max_inflight`.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Active health checks (default: none, only passive health).
    pub health: Option<HealthConfig>,
    /// Scrape each server's Prometheus metrics for `least_inflight` (default: none).
    pub load_metrics: Option<LoadMetricsConfig>,
    /// How a server is chosen: `round_robin` (default), `least_inflight` or `hash`.
    #[serde(default)]
    pub balance: super::values::Balance,
    /// With `balance = "hash"`: `"client_ip"`, `"header:NAME"` or `"cookie:NAME"`.
    pub hash_key: Option<Spanned<String>>,
    /// Failures within `fail_timeout` that take a server out for `fail_timeout` (nginx `max_fails`, 1;
    /// 0 never takes it out).
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// The window for counting failures and how long a failed server is skipped (nginx, 10 s).
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Span,
    /// Servers tried for one request (nginx `proxy_next_upstream_tries`; 0, the default: each server once).
    #[serde(default)]
    pub next_upstream_tries: usize,
    /// Time after which no other server is tried (nginx `proxy_next_upstream_timeout`; default none).
    pub next_upstream_timeout: Option<Span>,
    /// Request bodies up to this size are read before sending, so a failed request can go to another
    /// server (1 MB); larger ones stream and are not sent again.
    #[serde(default = "default_retry_body_max")]
    pub next_upstream_body_max: Size,
    /// Send a request that reached a server (and failed there) to another one even if its method is
    /// not idempotent, as a POST to a model is (nginx `proxy_next_upstream non_idempotent`; false).
    #[serde(default)]
    pub next_upstream_non_idempotent: bool,
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
pub struct LoadMetricsConfig {
    /// Path of the Prometheus text (`/metrics`).
    #[serde(default = "default_metrics_path")]
    pub path: Spanned<String>,
    /// Time between two scrapes (1 s).
    #[serde(default = "default_scrape_interval")]
    pub interval: Span,
    /// Numbers older than this count as saturation (5 s).
    #[serde(default = "default_stale_after")]
    pub stale_after: Span,
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
pub struct HealthConfig {
    /// Path requested with `GET` (a cheap one like `/health`: never a generation).
    pub path: Spanned<String>,
    /// Time between two checks (5 s).
    #[serde(default = "default_health_interval")]
    pub interval: Span,
    /// Longest wait for an answer (2 s).
    #[serde(default = "default_health_timeout")]
    pub timeout: Span,
    /// Statuses that pass (200).
    #[serde(default = "default_health_expect")]
    pub expect: Vec<Spanned<u16>>,
    /// Passed checks in a row that bring a server back (2).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failed checks in a row that take a server out (3).
    #[serde(default = "default_fall")]
    pub fall: u32,
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
pub struct QueueConfig {
    /// Requests that may wait; one more is answered 503 at once (64).
    pub max: usize,
    /// Longest wait for a slot; then 503 (10 s).
    pub timeout: Span,
    /// Request header giving a request's place in the queue: `high`, `normal`, `low` or a digit
    /// (higher first; default none: first come, first served).
    pub priority_header: Option<String>,
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
pub struct UpstreamServerConfig {
    /// `host:port` of the backend, e.g. `"127.0.0.1:8080"`.
    pub addr: Spanned<String>,
    /// Most requests sent to this server at once (its batch slots); unset: no limit.
    pub max_inflight: Option<Spanned<usize>>,
    /// Send this server no new requests; those in flight finish (blue/green switches, maintenance).
    #[serde(default)]
    pub drain: bool,
    /// Its share under `round_robin` and `hash` (nginx `weight`, 1).
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// nginx's `proxy_connect_timeout`, `proxy_send_timeout` and `proxy_read_timeout` (60 s each), and
/// the timeouts shaped for generation that refine `read`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// Establishing the TCP connection: refused answers 502, timed out 504.
    pub connect: Span,
    /// Between two successful writes of the request to the backend.
    pub send: Span,
    /// Between two successful reads of the response, armed once the request is sent.
    pub read: Span,
    /// From the request sent to the response head (a model's prefill); default `read`.
    pub first_byte: Option<Span>,
    /// Between two chunks of the response (a model's token gap); default `read`.
    pub idle: Option<Span>,
    /// From the request's start to the response's last byte (a whole generation); default none.
    pub total: Option<Span>,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        let sixty = Span(Duration::from_secs(60));
        UpstreamTimeouts { connect: sixty, send: sixty, read: sixty, first_byte: None, idle: None, total: None }
    }
}

impl UpstreamTimeouts {
    /// The wait for the response head.
    pub fn first_byte(&self) -> Duration {
        self.first_byte.unwrap_or(self.read).0
    }

    /// The longest gap between two response chunks.
    pub fn idle(&self) -> Duration {
        self.idle.unwrap_or(self.read).0
    }
}

/// `[limit_zone.NAME]`, nginx's `limit_req_zone`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitZoneConfig {
    /// What requests are counted by: `"client_ip"` or `"header:NAME"` (e.g. `"header:Authorization"`).
    pub key: Spanned<String>,
    /// `"10r/s"` or `"600r/m"`; needed by `limit_req`, not by `limit_conn`.
    pub rate: Option<Spanned<String>>,
    /// Keys remembered; the least recently seen is forgotten first (100000, about nginx's 10m zone).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Count and log, but never delay or reject (nginx `limit_req_dry_run`).
    #[serde(default)]
    pub dry_run: bool,
    /// Status of a rejection (nginx `limit_req_status`; 429 here, nginx's default is 503).
    #[serde(default = "default_limit_status")]
    pub status: Spanned<u16>,
}

fn default_max_keys() -> usize {
    100_000
}

fn default_limit_status() -> Spanned<u16> {
    Spanned::new(0..0, 429)
}

/// `limit_req = { zone, burst, nodelay, delay }` on a location (one table or an array of them).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitReqConfig {
    /// A `[limit_zone.NAME]`.
    pub zone: Spanned<String>,
    /// Requests allowed above the rate before rejecting (0).
    #[serde(default)]
    pub burst: u64,
    /// Serve requests within the burst at once instead of spacing them at the rate (false).
    #[serde(default)]
    pub nodelay: bool,
    /// Requests above the rate served at once before spacing starts (0); ignored with `nodelay`.
    #[serde(default)]
    pub delay: u64,
}

/// `limit_conn = { zone, max }` on a location.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitConnConfig {
    /// A `[limit_zone.NAME]` (its `rate` is not used).
    pub zone: Spanned<String>,
    /// Requests in flight at once per key; one more is rejected.
    pub max: Spanned<usize>,
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
pub struct CompressConfig {
    /// Whether to compress (default true once the table is there; `false` turns a server's off here).
    pub enabled: bool,
    /// Codings offered, preferred first when the client's q-values tie (default zstd, br, gzip).
    pub encodings: Vec<Spanned<String>>,
    /// Media types compressed (default: JSON, plain text, HTML, CSS, JavaScript, XML, SVG).
    pub types: Vec<String>,
    /// Responses declaring a shorter `Content-Length` are not compressed (default 1k).
    pub min_length: Size,
    /// gzip level, 1-9 (default 4; nginx's default is 1).
    pub gzip_level: Spanned<u32>,
    /// brotli quality, 0-11 (default 4).
    pub br_level: Spanned<u32>,
    /// zstd level, 1-19 (default 3).
    pub zstd_level: Spanned<i32>,
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
pub struct ServerConfig {
    /// Addresses to listen on, `ip:port` (nginx `listen`).
    pub listen: Vec<Spanned<String>>,
    /// Host names this server answers: exact (`api.example.com`) or leading wildcard
    /// (`*.example.com`). Empty: answers only as the default server.
    #[serde(default)]
    pub server_name: Vec<String>,
    /// This server answers requests whose Host matches no server of its listeners (nginx
    /// `default_server`). Without one, the first server listed for an address is the default.
    #[serde(default)]
    pub default_server: bool,
    /// TLS on every address of this server.
    pub tls: Option<TlsConfig>,
    /// Offer HTTP/2 (ALPN `h2` over TLS, prior knowledge in cleartext). Default true.
    #[serde(default = "yes")]
    pub http2: bool,
    /// Response headers added to every response of this server, error responses included
    /// (nginx `add_header ... always`).
    #[serde(default)]
    pub add_header: BTreeMap<String, String>,
    /// Largest request body (nginx `client_max_body_size`; default 20 MB since base64 images are
    /// large; `"0"` means no limit). Locations may override.
    pub client_max_body_size: Option<Size>,
    /// Request headers set before the handler sees the request, `""` removing one (nginx
    /// `proxy_set_header`); locations add to these.
    #[serde(default)]
    pub proxy_set_header: BTreeMap<String, String>,
    /// Response headers removed before `add_header` runs (nginx `proxy_hide_header`, on every
    /// response); locations add to these.
    #[serde(default)]
    pub proxy_hide_header: Vec<String>,
    /// Response compression (nginx `gzip`); default off. Locations may replace it.
    pub compress: Option<CompressConfig>,
    /// Access log of this server (default `[http]`'s); locations may override.
    pub access_log: Option<AccessLogSetting>,
    /// How error responses look; locations may override. Default: `json` on proxy locations,
    /// `text` elsewhere.
    pub errors: Option<ErrorFormat>,
    /// Filled by the loader from `[[server.location]]`.
    #[serde(skip)]
    pub locations: Vec<LocationConfig>,
    /// Where this `[[server]]` table starts in the file, for errors about it as a whole.
    #[serde(skip)]
    pub span: std::ops::Range<usize>,
}

fn yes() -> bool {
    true
}

/// `tls = { cert, key, protocols }` on a server.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first; relative to the config file's folder.
    pub cert: Spanned<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
    /// TLS versions offered, from `"1.2"` and `"1.3"` (default both, as the seed's `ssl_protocols`).
    #[serde(default = "default_tls_protocols")]
    pub protocols: Vec<Spanned<String>>,
    /// Cipher suites offered, in the server's order of preference, by their IANA names
    /// (`"TLS13_AES_128_GCM_SHA256"`); default: every AEAD suite with forward secrecy rustls has.
    pub ciphers: Option<Vec<Spanned<String>>>,
}

fn default_tls_protocols() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "1.2".into()), Spanned::new(0..0, "1.3".into())]
}

/// `[[server.location]]`, nginx's `location` block: one match and one handler.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    /// Matches this exact path (nginx `location = /path`).
    pub exact: Option<String>,
    /// Matches paths starting with this (nginx `location /path`); the longest wins.
    pub prefix: Option<String>,
    /// Matches paths against a regular expression, `(?i)` for case-insensitive (nginx `~` / `~*`);
    /// checked in config order after prefixes, and the first match wins over the longest prefix.
    pub regex: Option<Spanned<String>>,
    /// On a prefix location: when it is the longest match, regexes are not checked (nginx `^~`).
    #[serde(default)]
    pub skip_regex: bool,
    /// Handler: forward to this upstream.
    pub proxy: Option<Spanned<String>>,
    /// With `proxy`: other upstreams taking matching requests and a weighted share of the rest.
    #[serde(default)]
    pub canary: Vec<CanaryConfig>,
    /// With `canary`: choose the weighted share by client address, so a client keeps its version.
    #[serde(default)]
    pub sticky: bool,
    /// Handler: route by the JSON body's `model` field, model name to upstream name; `GET .../models`
    /// is answered from this table.
    #[serde(default)]
    pub models: BTreeMap<String, Spanned<String>>,
    /// Handler: serve files from this folder, the request path appended (nginx `root`); relative to
    /// the config file's folder.
    pub root: Option<Spanned<PathBuf>>,
    /// Handler: serve files from this folder, which stands for the location's path (nginx `alias`).
    pub alias: Option<Spanned<PathBuf>>,
    /// With `root` / `alias`: files tried for a folder, in order (default `["index.html"]`).
    pub index: Option<Vec<String>>,
    /// With `root` / `alias`: `Cache-Control: max-age` and `Expires` this far ahead (nginx `expires`).
    pub expires: Option<Span>,
    /// With `root` / `alias`: more `Cache-Control` directives, after `max-age` (`"public, no-transform"`).
    pub cache_control: Option<String>,
    /// With `root` / `alias`: serve `FILE.br`, `FILE.zst`, `FILE.gz` when present and accepted
    /// (nginx `gzip_static`; default true).
    pub precompressed: Option<bool>,
    /// With `root` / `alias`: serve files whose real path, symlinks resolved, leaves the folder
    /// (default false: 403).
    pub allow_symlinks_outside: Option<bool>,
    /// Handler: answer with a fixed status and body (nginx `return CODE TEXT`).
    #[serde(rename = "return")]
    pub return_: Option<ReturnConfig>,
    /// Handler: redirect (nginx `return 301 URL`), with `$scheme`, `$host`, `$server_name`,
    /// `$request_uri`, `$uri` and `$args`.
    pub redirect: Option<RedirectConfig>,
    /// Response headers added here, on top of the server's.
    #[serde(default)]
    pub add_header: BTreeMap<String, String>,
    /// Whether the server's `add_header` and `proxy_hide_header` apply here too (default true; false
    /// gives nginx's behaviour, where a location's `add_header` replaces the server's).
    #[serde(default = "yes")]
    pub add_header_inherit: bool,
    /// Largest request body here (nginx `client_max_body_size`); default the server's.
    pub client_max_body_size: Option<Size>,
    /// Request headers set here, on top of the server's (nginx `proxy_set_header`; `""` removes).
    #[serde(default)]
    pub proxy_set_header: BTreeMap<String, String>,
    /// Response headers removed here, on top of the server's (nginx `proxy_hide_header`).
    #[serde(default)]
    pub proxy_hide_header: Vec<String>,
    /// Response compression here, replacing the server's table.
    pub compress: Option<CompressConfig>,
    /// Access log here (default the server's); `"off"` logs nothing here.
    pub access_log: Option<AccessLogSetting>,
    /// Rate limits (nginx `limit_req`): one table or an array.
    #[serde(default, deserialize_with = "one_or_many")]
    pub limit_req: Vec<LimitReqConfig>,
    /// Concurrent request limits per key (nginx `limit_conn`): one table or an array.
    #[serde(default, deserialize_with = "one_or_many")]
    pub limit_conn: Vec<LimitConnConfig>,
    /// Error body format for this location.
    pub errors: Option<ErrorFormat>,
    /// Whether POSTs here are inference requests, safe to send to another server before their first
    /// response byte (default: those to the OpenAI-compatible generation paths).
    pub inference: Option<bool>,
    /// nginx's `proxy_buffering`; accepted for parity and documented: infergate forwards every
    /// response frame as it arrives whatever this says, so streams are never delayed.
    #[serde(default)]
    pub proxy_buffering: bool,
    /// nginx's `proxy_buffer_size`; accepted with `proxy_buffering`, see there.
    pub proxy_buffer_size: Option<Size>,
    /// nginx's `proxy_buffers` (`"8 32k"`); accepted with `proxy_buffering`, see there.
    pub proxy_buffers: Option<String>,
    /// Where this table is in the file.
    #[serde(skip)]
    pub span: std::ops::Range<usize>,
}

/// One `canary = [{ upstream, weight, header, cookie }]` entry of a proxy location.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Where its requests go.
    pub upstream: Spanned<String>,
    /// Percent of the requests no rule matched (0-100; all canaries together at most 100).
    #[serde(default)]
    pub weight: u32,
    /// `"Name: value"`: requests carrying it go here (e.g. `"X-Model-Version: canary"`).
    pub header: Option<Spanned<String>>,
    /// `"name=value"`: requests with this cookie go here.
    pub cookie: Option<String>,
}

/// `return = { status = 200, body = "ok" }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ReturnConfig {
    /// Response status (100-599).
    pub status: Spanned<u16>,
    /// Response body (default empty).
    #[serde(default)]
    pub body: String,
    /// Content type of the body (default `text/plain; charset=utf-8`).
    pub content_type: Option<String>,
}

/// `redirect = { url = "https://$host$request_uri", status = 301 }`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Target, with variables.
    pub url: Spanned<String>,
    /// 301, 302, 303, 307 or 308 (default 301).
    #[serde(default = "default_redirect_status")]
    pub status: Spanned<u16>,
}

/// `client_max_body_size` when neither the location nor its server says: base64 images are large.
pub const DEFAULT_MAX_BODY: Size = Size(20 * 1024 * 1024);

fn default_redirect_status() -> Spanned<u16> {
    Spanned::new(0..0, 301)
}

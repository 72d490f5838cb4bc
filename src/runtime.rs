//! The compiled, immutable form of a config that serves traffic. A reload builds a new `Runtime` beside
//! the running one (reusing upstream pools by name) and swaps it in; requests keep the `Runtime` they
//! started on until they finish.

use crate::accounting::access_log::{AccessLog, AccessLogs};
use crate::accounting::{Account, Books, Ledger};
use crate::ai::images::ImageLimits;
use crate::ai::Inference;
use crate::ai::ModelRouter;
use crate::canary::{Canary, ProxyTarget};
use crate::compress::{CompressPolicy, Levels};
use crate::config::{
    self, parse_net, parse_rate, AccessLogSetting, AdminConfig, Auth, CompressConfig, Config, ConfigError,
    ConfigErrors, Encoding, HttpSettings, LimitZoneConfig, LocationConfig, ServerConfig, Source,
};
use crate::cost::{ImageCost, ImageCosts};
use crate::discovery::Discovery;
use crate::error::ErrorFormat;
use crate::keys::KeyStore;
use crate::metrics::{LocationMetrics, Metrics, ServerLabels, UpstreamLabels};
use crate::pages::ChatPage;
use crate::policy::connlimit::ConnCounter;
use crate::policy::headers::HeaderEdits;
use crate::policy::ratelimit::{Limit, Zone};
use crate::policy::realip::TrustedProxies;
use crate::policy::shared_zone::SharedZone;
use crate::policy::{ConnLimit, RateLimit};
use crate::proxy::BodyLimits;
use crate::route::{Handler, Location, LocationTable, NameTable, VirtualServer};
use crate::shared::SharedStore;
use crate::static_files::{StaticFiles, StaticSettings};
use crate::template::Template;
use crate::tls::{self, TlsSite};
use crate::upstream;
use crate::upstream::Upstream;
use crate::wire::{HeadLimits, HEADER_SLOTS};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// Everything one listening address needs to serve a connection.
pub(crate) struct ListenerSpec {
    /// TLS, when the address's servers have it.
    pub(crate) tls: Option<TlsAcceptor>,
    /// Offer HTTP/2 (the default server's `http2`).
    pub(crate) http2: bool,
    /// Virtual servers by Host.
    pub(crate) hosts: NameTable<Arc<VirtualServer>>,
    /// hyper's HTTP/2 connection settings, built once here rather than per connection.
    pub(crate) http2_builder: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    /// The HTTP/1.1 connection limits.
    pub(crate) http1: HeadLimits,
    /// Client connection limits from `[http]`.
    pub(crate) limits: ConnLimits,
}

/// A compiled config.
pub struct Runtime {
    /// Counts loads since start: 1 for the first config.
    pub version: u64,
    /// Client connection settings.
    pub(crate) http: HttpSettings,
    /// Listeners by configured address (`127.0.0.1:0` stays the key even once bound to a real port).
    pub(crate) listeners: HashMap<SocketAddr, Arc<ListenerSpec>>,
    /// Upstreams by name, kept so the next reload can reuse their pools.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Rate limit zones by name, kept so the next reload can keep their counts.
    pub(crate) zones: HashMap<String, Arc<Zone>>,
    /// Concurrency counts by zone name, kept by reloads.
    pub conn_zones: HashMap<String, Arc<ConnCounter>>,
    /// The Redis of `[redis]`, kept by reloads that keep its settings.
    pub(crate) shared: Option<Arc<SharedStore>>,
    /// Servers found by DNS and their answers, kept by reloads that keep `[http] resolver`.
    pub(crate) discovery: Arc<Discovery>,
    /// The config this was compiled from, compiled again when DNS answers change.
    pub(crate) source: Source,
    /// Whose forwarding headers name the client.
    pub(crate) trusted_proxies: TrustedProxies,
    /// Metric families, kept by reloads.
    pub(crate) metrics: Arc<Metrics>,
    /// The admin API's settings (read at start).
    pub(crate) admin: AdminConfig,
    /// When this config was loaded.
    pub(crate) loaded_at: std::time::SystemTime,
    /// What accounting reads: access logs (kept by reloads) and the accounts locations route to.
    pub ledger: Ledger,
    /// Upstreams by `Upstream::id`.
    pub(crate) upstream_list: Vec<Arc<Upstream>>,
    /// The API keys (`[[api_key]]` and the keys file), kept by `auth = "api_key"` locations.
    pub(crate) keys: Arc<KeyStore>,
}

/// A connection's own handle on a runtime: requests clone an `Arc<RuntimeRef>` whose count is the
/// connection's alone, instead of bouncing the runtime's shared count between cores.
pub(crate) struct RuntimeRef {
    /// The runtime itself.
    pub(crate) runtime: Arc<Runtime>,
    /// The connection's listener in this runtime, found once per connection and reload rather than
    /// hashed per request; `None` when a reload removed it while the connection was open.
    pub(crate) listener: Option<Arc<ListenerSpec>>,
}

impl Books for RuntimeRef {
    fn ledger(&self) -> &Ledger {
        &self.runtime.ledger
    }

    fn server_authority(&self, upstream: usize, server: usize) -> Option<&str> {
        let upstream = self.runtime.upstream_list.get(upstream)?;
        Some(upstream.servers.get(server)?.authority.as_str())
    }
}

impl RuntimeRef {
    /// `runtime` as seen by a connection accepted on `listen_key`.
    pub(crate) fn new(runtime: Arc<Runtime>, listen_key: &SocketAddr) -> RuntimeRef {
        let listener = runtime.listeners.get(listen_key).cloned();
        RuntimeRef { runtime, listener }
    }
}

impl Runtime {
    /// Gauges of the running config's state, made per scrape: in flight, queue, health and drain per
    /// server, and the config version.
    pub(crate) fn state_metrics(&self) -> Registry {
        let mut registry = Registry::with_prefix("infergate");
        let in_flight = Family::<ServerLabels, Gauge>::default();
        let healthy = Family::<ServerLabels, Gauge>::default();
        let draining = Family::<ServerLabels, Gauge>::default();
        let queued = Family::<UpstreamLabels, Gauge>::default();
        let held_tokens = Family::<ServerLabels, Gauge>::default();
        let mut upstreams: Vec<_> = self.upstreams.values().collect();
        upstreams.sort_by(|a, b| a.name.cmp(&b.name));
        for upstream in upstreams {
            let admitted = upstream.admission.as_ref().map(|a| a.inflight());
            let held = upstream.admission.as_ref().filter(|a| a.weighs_tokens()).map(|a| a.inflight_tokens());
            for (index, server) in upstream.servers.iter().enumerate() {
                let labels = ServerLabels { upstream: upstream.name.to_string(), server: server.authority.to_string() };
                let count = admitted.as_ref().map_or_else(|| server.load.inflight(), |counts| counts[index]);
                in_flight.get_or_create(&labels).set(count as i64);
                healthy.get_or_create(&labels).set(i64::from(server.health.is_up()));
                draining.get_or_create(&labels).set(i64::from(server.is_draining()));
                if let Some(held) = &held {
                    held_tokens.get_or_create(&labels).set(i64::try_from(held[index]).unwrap_or(i64::MAX));
                }
            }
            if let Some(admission) = &upstream.admission {
                queued
                    .get_or_create(&UpstreamLabels { upstream: upstream.name.to_string() })
                    .set(admission.queued() as i64);
            }
        }
        registry.register("upstream_in_flight", "Requests in flight per server", in_flight);
        registry.register(
            "upstream_healthy",
            "1 while a server is in rotation by health, 0 while marked down",
            healthy,
        );
        registry.register("upstream_draining", "1 while a server is drained", draining);
        registry.register("upstream_queue_length", "Requests waiting for a slot", queued);
        registry.register(
            "upstream_in_flight_tokens",
            "Estimated tokens of the requests in flight per server (max_inflight_tokens)",
            held_tokens,
        );
        let version: Gauge = Gauge::default();
        version.set(self.version as i64);
        registry.register("config_version", "Loads of the config since start (1 for the first)", version);
        self.keys.usage().register(&mut registry);
        if let Some(store) = &self.shared {
            store.register(&mut registry);
        }
        registry
    }

    /// Parses, validates and compiles a config source. `previous` is the running runtime on reload.
    pub fn load(source: &Source, previous: Option<&Runtime>) -> Result<Runtime, ConfigErrors> {
        let config = config::load(source)?;
        Runtime::build(&config, source, previous)
    }

    /// Compiles a validated config; loads TLS material, so file errors surface here with their line.
    pub(crate) fn build(config: &Config, source: &Source, previous: Option<&Runtime>) -> Result<Runtime, ConfigErrors> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let metrics = previous.map_or_else(Metrics::new, |p| p.metrics.clone());
        let shared = config.redis.as_ref().and_then(|redis| {
            let kept = previous.and_then(|p| p.shared.clone()).filter(|store| store.same_config(redis));
            match kept.map_or_else(|| SharedStore::new(redis), Ok) {
                Ok(store) => Some(store),
                Err(e) => {
                    errors.push(source.error(redis.url.span(), format!("invalid Redis URL: {e}")));
                    None
                }
            }
        });
        let nameserver = config.http.resolver.as_ref().and_then(|r| r.get_ref().parse().ok());
        let discovery = previous
            .map(|p| p.discovery.clone())
            .filter(|kept| kept.nameserver() == nameserver)
            .unwrap_or_else(|| Arc::new(Discovery::new(nameserver)));
        discovery.keep(config.upstreams.iter().flat_map(|u| u.servers.iter()).filter_map(upstream::lookup_of));
        let upstream_context =
            upstream::BuildContext { metrics: &metrics, shared: shared.as_ref(), source, discovery: &discovery };
        let mut upstreams = HashMap::new();
        let mut upstream_list = Vec::new();
        for upstream in &config.upstreams {
            let name = upstream.name.get_ref();
            let old = previous.and_then(|p| p.upstreams.get(name)).map(Arc::as_ref);
            match Upstream::build(upstream, old, upstream_list.len(), &upstream_context) {
                Ok(mut built) => {
                    built.request_headers = request_edits(&upstream.proxy_set_header);
                    let built = Arc::new(built);
                    upstream_list.push(built.clone());
                    upstreams.insert(name.clone(), built);
                }
                Err(e) => errors.push(source.error(upstream.name.span(), e)),
            }
        }
        // Fallbacks, once every upstream is built (validation allows one step, so no cycle).
        for upstream in &config.upstreams {
            let fallback = upstream.fallback.as_ref().and_then(|name| upstreams.get(name.get_ref()));
            if let (Some(built), Some(fallback)) = (upstreams.get(upstream.name.get_ref()), fallback) {
                let _ = built.fallback.set(fallback.clone());
            }
        }

        let trusted_proxies =
            TrustedProxies::new(config.http.trusted_proxies.iter().filter_map(|entry| parse_net(entry.get_ref())));
        let mut zones = HashMap::new();
        for (name, zone) in &config.limit_zones {
            let Some(rate) = zone.rate.as_ref().and_then(|r| parse_rate(r.get_ref())) else { continue };
            let kept = previous
                .and_then(|p| p.zones.get(name.get_ref()))
                .filter(|old| old.same_settings(rate, zone.max_keys, zone.dry_run));
            let built = kept.cloned().unwrap_or_else(|| Arc::new(Zone::new(rate, zone.max_keys, zone.dry_run)));
            zones.insert(name.get_ref().clone(), built);
        }
        let shared_zones: HashMap<&str, Arc<SharedZone>> = config
            .limit_zones
            .iter()
            .filter(|(_, zone)| *zone.shared.get_ref())
            .filter_map(|(name, zone)| {
                let hashed = config::ZoneKey::parse(zone.key.get_ref()) != Some(config::ZoneKey::ClientIp);
                let store = shared.clone()?;
                Some((name.get_ref().as_str(), Arc::new(SharedZone::new(store, name.get_ref(), hashed, zone.fallback))))
            })
            .collect();
        let conn_zones: HashMap<String, Arc<ConnCounter>> = config
            .limit_zones
            .iter()
            .map(|(name, _)| {
                let kept = previous.and_then(|p| p.conn_zones.get(name.get_ref())).cloned();
                (name.get_ref().clone(), kept.unwrap_or_default())
            })
            .collect();
        let access_logs = match AccessLogs::build(config, source, previous.map(|p| &p.ledger.access_logs)) {
            Ok(logs) => logs,
            Err(mut e) => {
                errors.append(&mut e);
                AccessLogs::default()
            }
        };
        let zone_configs: HashMap<&str, &LimitZoneConfig> =
            config.limit_zones.iter().map(|(n, z)| (n.get_ref().as_str(), z)).collect();
        let routed_models = config.servers.iter().flat_map(|s| s.locations.iter()).flat_map(|l| l.models.keys());
        let shares_keys = shared.as_ref().filter(|_| config.redis.as_ref().is_some_and(|redis| redis.share_api_keys));
        let keys = Arc::new(KeyStore::build(
            &config.api_keys,
            previous.map(|p| &*p.keys),
            routed_models.map(String::as_str),
            shares_keys,
        ));
        let image_costs = Arc::new(ImageCosts::new(
            config
                .image_costs
                .iter()
                .map(|rule| {
                    let cost =
                        ImageCost { side: *rule.token_side.get_ref(), max: rule.max_tokens, extra: rule.extra_tokens };
                    (rule.models.get_ref().clone(), cost)
                })
                .collect(),
        ));
        let context = Context {
            upstreams: &upstreams,
            zones: &zones,
            shared_zones: &shared_zones,
            conn_zones: &conn_zones,
            zone_configs: &zone_configs,
            source,
            access_logs: &access_logs,
            http_access_log: config.http.access_log.as_ref(),
            client_body_timeout: config.http.client_body_timeout.0,
            metrics: &metrics,
            keys: &keys,
            image_costs: &image_costs,
            accounts: std::cell::RefCell::new(Vec::new()),
        };

        // Group servers by address, keeping config order; the declared default goes first.
        let mut by_addr: Vec<(SocketAddr, Vec<&ServerConfig>)> = Vec::new();
        for server in &config.servers {
            for listen in &server.listen {
                let Some(addr) = config::parse_listen(listen.get_ref()) else {
                    continue;
                };
                match by_addr.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, servers)) if server.default_server => servers.insert(0, server),
                    Some((_, servers)) => servers.push(server),
                    None => by_addr.push((addr, vec![server])),
                }
            }
        }

        let mut compiled: HashMap<*const ServerConfig, Arc<VirtualServer>> = HashMap::new();
        let mut listeners = HashMap::new();
        for (addr, servers) in by_addr {
            let mut hosts: Option<NameTable<Arc<VirtualServer>>> = None;
            for server in &servers {
                let vs = compiled
                    .entry(*server as *const _)
                    .or_insert_with(|| Arc::new(compile_server(server, &context)))
                    .clone();
                let table = hosts.get_or_insert_with(|| NameTable::new(vs.clone()));
                for name in &server.server_name {
                    table.add(name, vs.clone());
                }
            }
            let default = servers[0];
            let tls = match default.tls {
                None => None,
                Some(_) => {
                    let sites: Vec<TlsSite> = servers
                        .iter()
                        .filter_map(|s| s.tls.as_ref().map(|tls| TlsSite { names: &s.server_name, tls }))
                        .collect();
                    match tls::acceptor(&sites, default.http2, source) {
                        Ok(acceptor) => Some(acceptor),
                        Err(mut e) => {
                            errors.append(&mut e);
                            None
                        }
                    }
                }
            };
            let Some(hosts) = hosts else { continue };
            let http2_builder = http2_builder(&config.http);
            let http1 = http1_limits(&config.http);
            let limits = ConnLimits::of(&config.http);
            let spec = ListenerSpec { tls, http2: default.http2, hosts, http2_builder, http1, limits };
            listeners.insert(addr, Arc::new(spec));
        }

        if !errors.is_empty() {
            errors.dedup();
            return Err(ConfigErrors(errors));
        }
        let context_accounts = context.accounts.into_inner();
        Ok(Runtime {
            version: previous.map_or(1, |p| p.version + 1),
            http: config.http.clone(),
            listeners,
            upstreams,
            zones,
            shared,
            discovery,
            source: source.clone(),
            conn_zones,
            trusted_proxies,
            ledger: Ledger {
                enabled: (config.admin.enabled && config.admin.metrics) || access_logs.any() || !keys.keys().is_empty(),
                metrics_kept: config.admin.enabled && config.admin.metrics,
                access_logs,
                accounts: context_accounts,
            },
            metrics,
            admin: config.admin.clone(),
            loaded_at: std::time::SystemTime::now(),
            upstream_list,
            keys,
        })
    }
}

/// A header map from the config, validated by `config::validate`; a pair that still fails to convert
/// is skipped, never a panic.
fn header_pairs(map: &BTreeMap<String, String>) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
    map.iter().filter_map(|(name, value)| {
        Some((HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_str(value).ok()?))
    })
}

/// `proxy_hide_header` then `add_header`.
fn response_edits(hide: &[String], add: &BTreeMap<String, String>) -> HeaderEdits {
    let remove = hide.iter().filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()).collect();
    HeaderEdits::new(remove, header_pairs(add).collect())
}

/// `proxy_set_header`, where an empty value removes the header (as in nginx).
fn request_edits(set: &BTreeMap<String, String>) -> HeaderEdits {
    let (remove, set): (Vec<_>, Vec<_>) = header_pairs(set).partition(|(_, value)| value.is_empty());
    HeaderEdits::new(remove.into_iter().map(|(name, _)| name).collect(), set)
}

/// A validated `compress` table.
fn compress_policy(config: &CompressConfig) -> CompressPolicy {
    CompressPolicy {
        encodings: config.encodings.iter().filter_map(|e| Encoding::parse(e.get_ref())).collect(),
        types: config.types.iter().map(|t| t.trim().to_ascii_lowercase()).collect(),
        min_length: config.min_length.0,
        levels: Levels {
            gzip: *config.gzip_level.get_ref(),
            br: *config.br_level.get_ref(),
            zstd: *config.zstd_level.get_ref(),
        },
    }
}

/// What compiling a location may refer to.
struct Context<'a> {
    upstreams: &'a HashMap<String, Arc<Upstream>>,
    zones: &'a HashMap<String, Arc<Zone>>,
    shared_zones: &'a HashMap<&'a str, Arc<SharedZone>>,
    conn_zones: &'a HashMap<String, Arc<ConnCounter>>,
    zone_configs: &'a HashMap<&'a str, &'a LimitZoneConfig>,
    /// For paths relative to the config file's folder.
    source: &'a Source,
    access_logs: &'a AccessLogs,
    http_access_log: Option<&'a AccessLogSetting>,
    /// `[http] client_body_timeout`, for every location's body limits.
    client_body_timeout: std::time::Duration,
    metrics: &'a Metrics,
    /// The API keys, for `auth = "api_key"` locations.
    keys: &'a Arc<KeyStore>,
    /// How models count images, for every location.
    image_costs: &'a Arc<ImageCosts>,
    /// The accounts made so far; a location or server keeps its index.
    accounts: std::cell::RefCell<Vec<Account>>,
}

impl Context<'_> {
    /// Adds an account and returns its id.
    fn account(&self, metrics: LocationMetrics, log: Option<Arc<AccessLog>>) -> usize {
        let mut accounts = self.accounts.borrow_mut();
        accounts.push(Account { metrics, log });
        accounts.len() - 1
    }
}

fn compile_server(server: &ServerConfig, context: &Context) -> VirtualServer {
    let server_headers = response_edits(&server.proxy_hide_header, &server.add_header);
    let mut locations = LocationTable::default();
    for location in &server.locations {
        let Some(compiled) = compile_location(location, server, &server_headers, context) else {
            continue;
        };
        if let Some(path) = &location.exact {
            locations.add_exact(path.clone(), compiled);
        } else if let Some(prefix) = &location.prefix {
            locations.add_prefix(prefix.clone(), location.skip_regex, compiled);
        } else if let Some(Ok(regex)) = location.regex.as_ref().map(|r| regex::Regex::new(r.get_ref())) {
            locations.add_regex(regex, compiled);
        }
    }
    settle_pages(&locations);
    VirtualServer {
        primary_name: server.server_name.first().cloned().unwrap_or_default(),
        locations,
        account: context.account(
            context.metrics.location(&server_label(server), "", &[]),
            context.access_logs.select(&[server.access_log.as_ref(), context.http_access_log]),
        ),
        response_headers: server_headers,
        errors: server.errors.unwrap_or(ErrorFormat::Text),
    }
}

/// Assembles a server's chat pages with what the location of their API allows: its key, its image
/// bounds (the defaults where no API location reads images).
fn settle_pages(locations: &LocationTable) {
    for location in locations.all() {
        let Handler::Page(page) = &location.handler else { continue };
        let api = locations.find(&format!("{}/chat/completions", page.api));
        let key_required = api.is_some_and(|api| api.keys.is_some());
        let default_bounds = || (config::ImagesConfig::default().max_pixels, None);
        let bounds =
            api.and_then(|api| api.images.as_ref()).map_or_else(default_bounds, |images| images.upload_bounds());
        page.settle(key_required, bounds);
    }
}

/// A server's `server` label: its first name, else its first address.
fn server_label(server: &ServerConfig) -> String {
    server.server_name.first().or(server.listen.first().map(|l| l.get_ref())).cloned().unwrap_or_default()
}

/// A location's `location` label, written as nginx writes the match: `/prefix`, `= /exact`, `~ regex`.
fn location_label(location: &LocationConfig) -> String {
    match (&location.exact, &location.prefix, &location.regex) {
        (Some(exact), _, _) => format!("= {exact}"),
        (_, Some(prefix), _) => prefix.clone(),
        (_, _, Some(regex)) => format!("~ {}", regex.get_ref()),
        _ => String::new(),
    }
}

/// `None` only for a location `config::validate` already rejected.
fn compile_location(
    location: &LocationConfig,
    server: &ServerConfig,
    server_headers: &HeaderEdits,
    context: &Context,
) -> Option<Location> {
    let max_body = location.client_max_body_size.or(server.client_max_body_size).unwrap_or(config::DEFAULT_MAX_BODY);
    let body =
        BodyLimits { max: if max_body.0 == 0 { u64::MAX } else { max_body.0 }, idle: context.client_body_timeout };
    let handler = if let Some(proxy) = &location.proxy {
        let primary = context.upstreams.get(proxy.get_ref())?.clone();
        let mut canaries = Vec::with_capacity(location.canary.len());
        for canary in &location.canary {
            canaries.push(Canary {
                upstream: context.upstreams.get(canary.upstream.get_ref())?.clone(),
                weight: canary.weight,
                header: match &canary.header {
                    Some(header) => Some(config::parse_header_match(header.get_ref())?),
                    None => None,
                },
                cookie: canary.cookie.clone(),
            });
        }
        Handler::Proxy(ProxyTarget::new(primary, canaries, location.sticky))
    } else if !location.models.is_empty() {
        let mut models = std::collections::BTreeMap::new();
        for (model, upstream) in &location.models {
            models.insert(model.clone(), context.upstreams.get(upstream.get_ref())?.clone());
        }
        Handler::Models(ModelRouter::new(models, body))
    } else if let Some(folder) = location.root.as_ref().or(location.alias.as_ref()) {
        let alias_of = location.alias.as_ref().and(location.prefix.clone().or_else(|| location.exact.clone()));
        Handler::Static(StaticFiles::new(StaticSettings {
            dir: context.source.resolve(folder.get_ref()),
            alias_of,
            index: location.index.clone().unwrap_or_else(|| vec!["index.html".into()]),
            expires: location.expires.map(|e| e.0),
            cache_control: location.cache_control.clone(),
            precompressed: location.precompressed.unwrap_or(true),
            allow_symlinks_outside: location.allow_symlinks_outside.unwrap_or(false),
        }))
    } else if location.page.is_some() {
        Handler::Page(ChatPage::new(location.page_api.as_ref().map_or("/v1", |api| api.get_ref().as_str())))
    } else if let Some(ret) = &location.return_ {
        let content_type = ret.content_type.as_deref().unwrap_or("text/plain; charset=utf-8");
        Handler::Return {
            status: StatusCode::from_u16(*ret.status.get_ref()).ok()?,
            body: Bytes::from(ret.body.clone()),
            content_type: HeaderValue::from_str(content_type).ok()?,
        }
    } else {
        let redirect = location.redirect.as_ref()?;
        Handler::Redirect {
            status: StatusCode::from_u16(*redirect.status.get_ref()).ok()?,
            url: Template::parse(redirect.url.get_ref()).ok()?,
        }
    };
    let default_format =
        if matches!(handler, Handler::Proxy(_) | Handler::Models(_)) { ErrorFormat::Json } else { ErrorFormat::Text };
    let location_headers = response_edits(&location.proxy_hide_header, &location.add_header);
    let response_headers =
        if location.add_header_inherit { server_headers.then(location_headers) } else { location_headers };
    let request_headers = request_edits(&server.proxy_set_header).then(request_edits(&location.proxy_set_header));
    let mut limits = Vec::with_capacity(location.limit_req.len());
    for limit in &location.limit_req {
        let name = limit.zone.get_ref();
        let zone_config = context.zone_configs.get(name.as_str())?;
        limits.push(RateLimit {
            zone_name: name.clone(),
            zone: context.zones.get(name)?.clone(),
            key: config::ZoneKey::parse(zone_config.key.get_ref())?,
            limit: Limit { burst: limit.burst, delay: (!limit.nodelay).then_some(limit.delay) },
            status: StatusCode::from_u16(*zone_config.status.get_ref()).ok()?,
            shared: context.shared_zones.get(name.as_str()).cloned(),
        });
    }
    let mut conn_limits = Vec::with_capacity(location.limit_conn.len());
    for limit in &location.limit_conn {
        let name = limit.zone.get_ref();
        let zone_config = context.zone_configs.get(name.as_str())?;
        conn_limits.push(ConnLimit {
            counter: context.conn_zones.get(name)?.clone(),
            key: config::ZoneKey::parse(zone_config.key.get_ref())?,
            max: *limit.max.get_ref(),
            status: StatusCode::from_u16(*zone_config.status.get_ref()).ok()?,
            shared: context.shared_zones.get(name.as_str()).cloned(),
        });
    }
    let errors = location.errors.or(server.errors).unwrap_or(default_format);
    let compress = location.compress.as_ref().or(server.compress.as_ref()).filter(|c| c.enabled).map(compress_policy);
    let access_log = context.access_logs.select(&[
        location.access_log.as_ref(),
        server.access_log.as_ref(),
        context.http_access_log,
    ]);
    let upstreams: Vec<(usize, &str)> = location
        .proxy
        .iter()
        .chain(location.canary.iter().map(|c| &c.upstream))
        .chain(location.models.values())
        .filter_map(|name| Some((context.upstreams.get(name.get_ref())?.id, name.get_ref().as_str())))
        .collect();
    let metrics = context.metrics.location(&server_label(server), &location_label(location), &upstreams);
    let account = context.account(metrics, access_log);
    // POSTs are read whole before they are forwarded: to route them by model, to hash them by image,
    // for their API key; image checks are on there by default.
    // And where admission holds their estimated tokens.
    let weighs_tokens = handler.any_upstream(Upstream::weighs_tokens);
    let reads_bodies = match &handler {
        Handler::Models(_) => true,
        Handler::Proxy(_) => {
            handler.any_upstream(Upstream::hashes_bodies) || weighs_tokens || location.auth == Some(Auth::ApiKey)
        }
        _ => false,
    };
    let images = matches!(handler, Handler::Proxy(_) | Handler::Models(_))
        .then(|| ImageLimits::new(&location.images, reads_bodies))
        .flatten();
    Some(Location {
        handler,
        request_headers,
        response_headers,
        body,
        compress,
        limits,
        conn_limits,
        account,
        errors,
        inference: Inference::of(location.inference),
        keys: (location.auth == Some(Auth::ApiKey)).then(|| context.keys.clone()),
        image_costs: context.image_costs.clone(),
        reads_posts: reads_bodies || images.is_some() || location.sse_keepalive.is_some(),
        weighs_tokens,
        sse_keepalive: location.sse_keepalive.as_ref().map(|interval| interval.get_ref().0),
        images,
    })
}

/// What a client connection needs of `[http]`, taken once at config load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// TLS handshake and request head (`client_header_timeout`).
    pub(crate) header_timeout: Duration,
    /// Idle time before a kept-alive connection is closed (`keepalive_timeout`).
    pub(crate) keepalive_timeout: Duration,
    /// Requests per connection (`keepalive_requests`).
    pub(crate) keepalive_requests: u64,
    /// How long a closing connection may take (`drain_timeout`).
    pub(crate) drain_timeout: Duration,
}

impl ConnLimits {
    /// How long a connection may go without a request in flight: `keepalive_timeout`, or
    /// `client_header_timeout` if shorter, since the next request's head may have begun to arrive
    /// (hyper's own header timer also ran from the end of the previous request).
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.keepalive_timeout.min(self.header_timeout)
    }

    /// The limits `[http]` sets.
    pub(crate) fn of(http: &HttpSettings) -> ConnLimits {
        ConnLimits {
            header_timeout: http.client_header_timeout.0,
            keepalive_timeout: http.keepalive_timeout.0,
            keepalive_requests: http.keepalive_requests,
            drain_timeout: http.drain_timeout.0,
        }
    }
}

/// hyper's HTTP/2 connection settings from `[http]`, built once per listener at config load.
pub(crate) fn http2_builder(http: &HttpSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(http.max_header_size.0).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// The HTTP/1.1 limits from `[http]`, taken once per listener at config load.
pub(crate) fn http1_limits(http: &HttpSettings) -> HeadLimits {
    HeadLimits {
        max_head: usize::try_from(http.max_header_size.0).unwrap_or(usize::MAX),
        max_headers: http.max_headers.min(HEADER_SLOTS),
    }
}

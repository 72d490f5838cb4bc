//! Upstreams: named groups of backend servers, each server with its keep-alive connection pool, and
//! the choice of server for a request: round robin, least in flight or by hash (`balance`), under
//! admission control, passive and active health.

mod admission;
mod balance;
mod connector;
mod health;
mod http1;
mod metrics_scrape;
mod pool;
mod probe;
mod shared_slots;
mod tls_client;

pub(crate) use metrics_scrape::{spawn_scrapes, LoadMetrics};

use balance::{Ring, Weighted};
pub(crate) use balance::{ServerInFlight, ServerLoad};
pub(crate) use health::{spawn_checks, ActiveCheck, FailPolicy, FailureReport, ServerHealth};

pub(crate) use admission::{Admission, Ask, Permit, ServerLimit};
pub(crate) use connector::{ConnectError, Connector, SendTimedOut};
pub(crate) use http1::{ExchangeError, HeadWait, OutgoingBody, UpgradedBackend, UpstreamRequest};
pub(crate) use pool::{Checked, Http2Body, Http2Sender, PoolKey, PoolSettings, ServerPool, UpstreamConnection};

use crate::config::{Balance, HashKey, ServerAddr, Source, UpstreamConfig, UpstreamServerConfig, UpstreamTimeouts};
use crate::discovery::{Discovery, Lookup};
use crate::error::Rejection;
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::policy::headers::HeaderEdits;
use crate::shared::leases::Asked;
use crate::shared::SharedStore;
use http::uri::Authority;
use shared_slots::SharedSlots;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One backend server.
pub struct UpstreamServer {
    /// `host:port` as configured.
    pub authority: Authority,
    /// Its idle keep-alive connections.
    pub(crate) pool: Arc<ServerPool>,
    /// Its passive health.
    pub health: Arc<ServerHealth>,
    /// Its load, for `least_inflight`.
    pub load: Arc<ServerLoad>,
    /// Its `max_inflight`.
    pub(crate) max_inflight: Option<usize>,
    /// Its `max_inflight_tokens`.
    pub(crate) max_inflight_tokens: Option<u64>,
    /// Marked `drain = true`: no new requests.
    pub(crate) draining: bool,
    /// The `Host` its requests carry when it is reached over TLS (its own name, as a hosted API
    /// expects); `None`: the client's.
    pub(crate) host: Option<http::HeaderValue>,
}

impl UpstreamServer {
    /// Out of rotation: marked `drain = true`, or drained through the admin API.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining || self.load.drained_by_hand()
    }
}

/// A compiled `[[upstream]]`.
pub struct Upstream {
    /// Its position in the config, for `Runtime::upstream_list`.
    pub(crate) id: usize,
    /// Its config name.
    pub name: Arc<str>,
    /// Its metric handles.
    pub(crate) metrics: UpstreamMetrics,
    /// Its servers, in config order.
    pub servers: Vec<UpstreamServer>,
    /// nginx-style timeouts; connect and send live in each pool's connector, read is applied per request.
    pub(crate) timeouts: UpstreamTimeouts,
    /// Slots and queue, when some server has `max_inflight` or `max_inflight_tokens`.
    pub admission: Option<Arc<Admission>>,
    /// With `shared_admission`: `max_inflight` leased in Redis, across gateways.
    shared_slots: Option<SharedSlots>,
    /// `proxy_set_header` of the upstream: set on every request sent to it (after the location's).
    pub(crate) request_headers: HeaderEdits,
    /// Where a request goes when every server is down or the queue is full (`fallback`), linked
    /// once every upstream of the config is built.
    pub(crate) fallback: OnceLock<Arc<Upstream>>,
    /// When a server counts as failed, and for how long it is skipped.
    pub(crate) fail_policy: FailPolicy,
    /// How a server is chosen.
    pub(crate) balance: Balance,
    /// Smooth weighted round robin, when servers have different weights.
    weighted: Option<Weighted>,
    /// The consistent-hash ring and what it keys on, with `balance = "hash"`.
    hashing: Option<(Ring, HashKey)>,
    /// The request header naming a request's queue priority, if configured.
    pub(crate) priority_header: Option<http::HeaderName>,
    /// Backend-reported load, if configured (scraped by `spawn_scrapes`).
    pub(crate) load_metrics: Option<LoadMetrics>,
    /// Active health checks, if configured (run by `spawn_checks`).
    pub(crate) active_check: Option<ActiveCheck>,
    /// Servers one request may try (at least 1).
    pub(crate) tries: usize,
    /// Time after which no other server is tried.
    pub(crate) retry_timeout: Option<Duration>,
    /// Request bodies up to this size are kept, so the request can be sent to another server.
    pub(crate) retry_body_max: u64,
    /// A request that reached a server may be sent to another even if its method is not idempotent.
    pub(crate) retry_non_idempotent: bool,
    next: AtomicUsize,
}

/// What compiling an upstream may read besides its own table.
pub(crate) struct BuildContext<'a> {
    pub(crate) metrics: &'a Metrics,
    /// `[redis]`, for `shared_admission`.
    pub(crate) shared: Option<&'a Arc<SharedStore>>,
    /// For `tls` files, relative to the config's folder.
    pub(crate) source: &'a Source,
    /// The answers of servers found by DNS.
    pub(crate) discovery: &'a Discovery,
}

/// One server of an upstream: its config entry, where it is (a resolved address, for a server found
/// by DNS), and its name (the entry's own host, for TLS and `Host`).
struct Entry<'a> {
    server: &'a UpstreamServerConfig,
    addr: ServerAddr,
    name: ServerAddr,
}

/// The lookup a server entry needs, if it is found by DNS.
pub(crate) fn lookup_of(server: &UpstreamServerConfig) -> Option<Lookup> {
    if *server.srv.get_ref() {
        return Some(Lookup::Service(server.addr.get_ref().clone()));
    }
    let addr = ServerAddr::parse(server.addr.get_ref()).filter(|_| *server.resolve.get_ref())?;
    let port = addr.authority.rsplit_once(':').and_then(|(_, port)| port.parse().ok())?;
    Some(Lookup::Address { host: addr.host().to_string(), port })
}

/// The servers of `configs`: each as configured, or one per address DNS last gave for it.
fn expand<'a>(configs: &'a [UpstreamServerConfig], discovery: &Discovery) -> Result<Vec<Entry<'a>>, String> {
    let mut entries = Vec::with_capacity(configs.len());
    for server in configs {
        let name = match lookup_of(server) {
            Some(Lookup::Service(_)) => ServerAddr { authority: server.addr.get_ref().clone(), tls: false },
            _ => ServerAddr::parse(server.addr.get_ref())
                .ok_or_else(|| format!("invalid address {:?}", server.addr.get_ref()))?,
        };
        match lookup_of(server) {
            None => entries.push(Entry { server, addr: name.clone(), name }),
            Some(lookup) => {
                for found in discovery.addresses(&lookup) {
                    let addr = ServerAddr { authority: found.to_string(), tls: name.tls };
                    entries.push(Entry { server, addr, name: name.clone() });
                }
            }
        }
    }
    Ok(entries)
}

/// What a request holds on its server until its response ends: a slot (admission control), a place
/// in the in-flight count (`least_inflight`, `hash`), and for a stream the server's drain state, so
/// the stream is cut when a drained server's grace ends. Dropping it releases them.
#[derive(Default)]
pub(crate) struct Lease {
    /// The admission slot, if the upstream has limits.
    #[expect(dead_code, reason = "held, never read: dropping it frees the slot")]
    pub(crate) permit: Option<Permit>,
    /// The in-flight count, if the upstream balances by load.
    #[expect(dead_code, reason = "held, never read: dropping it lowers the count")]
    pub(crate) in_flight: Option<ServerInFlight>,
    /// The server's load and drain state, watched by event streams.
    pub(crate) drain_watch: Option<Arc<ServerLoad>>,
}

/// A request's place in an admission queue set before it reaches the upstream (by its API key): 2
/// high, 1 normal, 0 low. With `header_believed`, the upstream's priority header decides instead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuePriority {
    /// The place.
    pub(crate) level: u8,
    /// Whether the request's own priority header, when the upstream reads one, wins.
    pub(crate) header_believed: bool,
}

/// What admission knows of a request before it reaches the upstream: its place in the queue when its
/// API key sets one, and its estimated tokens when its body was read (`cost`; 0: not estimated).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Claim {
    /// Its API key's queue place.
    pub(crate) priority: Option<QueuePriority>,
    /// Held against `max_inflight_tokens` while it runs.
    pub(crate) tokens: u64,
}

/// After a reload: servers the new config removed or marks `drain = true` leave rotation and their
/// streams get `grace` to finish; servers back in rotation stop draining.
pub(crate) fn mark_drains(
    previous: &HashMap<String, Arc<Upstream>>,
    next: &HashMap<String, Arc<Upstream>>,
    grace: Duration,
) {
    for (name, old) in previous {
        for server in &old.servers {
            let now = next.get(name).and_then(|new| new.servers.iter().find(|s| s.authority == server.authority));
            match now {
                Some(new) if !new.is_draining() => new.load.stop_drain(),
                _ => server.load.start_drain(grace),
            }
        }
    }
    for upstream in next.values() {
        for server in upstream.servers.iter().filter(|s| s.draining) {
            server.load.start_drain(grace);
        }
    }
}

/// The servers one request has tried, without allocating for the usual handful.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    /// Servers 0-63, one bit each.
    low: u64,
    /// Servers from 64 on.
    high: Vec<usize>,
    count: usize,
}

impl Tried {
    /// Records a try on `index`.
    pub(crate) fn add(&mut self, index: usize) {
        match 1u64.checked_shl(u32::try_from(index).unwrap_or(u32::MAX)) {
            Some(bit) if index < 64 => self.low |= bit,
            _ => self.high.push(index),
        }
        self.count += 1;
    }

    /// Whether `index` was tried.
    pub(crate) fn contains(&self, index: usize) -> bool {
        if index < 64 {
            self.low & (1 << index) != 0
        } else {
            self.high.contains(&index)
        }
    }

    /// Tries so far.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// No try yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What balancing and queueing need to know of one request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BalanceFacts {
    /// Queue priority (higher first).
    pub(crate) priority: u8,
    /// Hash of the `hash_key`, when balancing by hash and the request has one.
    pub(crate) key: Option<u64>,
    /// Estimated tokens, for `max_inflight_tokens`.
    pub(crate) tokens: u64,
}

/// Why no server was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// Admission control: queue full or wait timed out.
    Overloaded(Rejection),
    /// Every server not yet tried is marked down.
    NoHealthyServer,
}

impl Upstream {
    /// Compiles an upstream; `previous` is the same-named upstream of the running config, whose pools
    /// (and open connections) are kept for servers whose address and pool settings did not change.
    pub(crate) fn build(
        config: &UpstreamConfig,
        previous: Option<&Upstream>,
        id: usize,
        context: &BuildContext,
    ) -> Result<Upstream, String> {
        let settings = PoolSettings {
            max_idle: config.keepalive,
            idle_timeout: config.keepalive_timeout.0,
            connector: Connector { connect_timeout: config.timeouts.connect.0, send_timeout: config.timeouts.send.0 },
        };
        let entries = expand(&config.servers, context.discovery)?;
        let tls = match entries.iter().any(|entry| entry.addr.tls) {
            true => Some(tls_client::client_config(&config.tls, context.source)?),
            false => None,
        };
        let mut servers = Vec::with_capacity(entries.len());
        for Entry { server, addr, name } in &entries {
            let authority: Authority =
                addr.authority.parse().map_err(|e| format!("invalid address {:?}: {e}", server.addr.get_ref()))?;
            let server_tls = match (&tls, addr.tls) {
                (Some(client), true) => Some(tls_client::UpstreamTls::new(client.clone(), name.host(), &config.tls)?),
                _ => None,
            };
            let same_tls =
                |pool: &ServerPool| pool.tls.as_ref().map(|t| &t.settings) == server_tls.as_ref().map(|t| &t.settings);
            let kept = previous
                .and_then(|old| {
                    old.servers
                        .iter()
                        .find(|s| s.authority == authority && s.pool.settings == settings && same_tls(&s.pool))
                })
                .map(|old| old.pool.clone());
            // The host a TLS server's requests name: its own, without the default port.
            let host = addr.tls.then(|| {
                let host = name.authority.strip_suffix(":443").unwrap_or(&name.authority);
                http::HeaderValue::from_str(host).map_err(|e| format!("invalid host {host:?}: {e}"))
            });
            let host = host.transpose()?;
            let pool = kept.unwrap_or_else(|| ServerPool::new(authority.clone(), settings, server_tls));
            let old = previous.and_then(|old| old.servers.iter().find(|s| s.authority == authority));
            let upstream_name: Arc<str> = config.name.get_ref().as_str().into();
            let health = old.map_or_else(
                || Arc::new(ServerHealth::new(upstream_name, authority.clone())),
                |old| old.health.clone(),
            );
            let load = old.map_or_else(|| Arc::new(ServerLoad::default()), |old| old.load.clone());
            servers.push(UpstreamServer {
                authority,
                pool,
                health,
                load,
                max_inflight: server.max_inflight.as_ref().map(|m| *m.get_ref()),
                max_inflight_tokens: server.max_inflight_tokens.as_ref().map(|m| *m.get_ref()),
                draining: server.drain,
                host,
            });
        }
        let limits: Vec<ServerLimit> =
            servers.iter().map(|s| ServerLimit { requests: s.max_inflight, tokens: s.max_inflight_tokens }).collect();
        let (queue_max, queue_timeout) = (config.queue.max, config.queue.timeout.0);
        let admission = limits.iter().any(ServerLimit::is_set).then(|| {
            // In-flight counts survive a reload when the servers and limits are the same.
            let same_servers =
                |old: &Upstream| old.servers.iter().map(|s| &s.authority).eq(servers.iter().map(|s| &s.authority));
            previous
                .filter(|old| same_servers(old))
                .and_then(|old| old.admission.clone())
                .filter(|old| old.same_shape(&limits, queue_max, queue_timeout))
                .unwrap_or_else(|| Admission::new(limits.clone(), queue_max, queue_timeout))
        });
        let shared_slots = context.shared.filter(|_| *config.shared_admission.get_ref()).map(|store| {
            let addrs: Vec<&str> = entries.iter().map(|entry| entry.addr.authority.as_str()).collect();
            SharedSlots::new(store, config.name.get_ref(), &addrs)
        });
        Ok(Upstream {
            id,
            name: config.name.get_ref().as_str().into(),
            metrics: context.metrics.upstream(config.name.get_ref()),
            servers,
            timeouts: config.timeouts,
            admission,
            shared_slots,
            request_headers: HeaderEdits::default(),
            fallback: OnceLock::new(),
            fail_policy: FailPolicy { max_fails: config.max_fails, fail_timeout: config.fail_timeout.0 },
            balance: config.balance,
            weighted: {
                let weights: Vec<u32> = entries.iter().map(|entry| *entry.server.weight.get_ref()).collect();
                (config.balance == Balance::RoundRobin && weights.iter().any(|&w| w != 1))
                    .then(|| Weighted::new(weights))
            },
            hashing: match (config.balance, config.hash_key.as_ref().and_then(|k| HashKey::parse(k.get_ref()))) {
                (Balance::Hash, Some(key)) => {
                    let names: Vec<String> = entries.iter().map(|entry| entry.addr.authority.clone()).collect();
                    let weights: Vec<u32> = entries.iter().map(|entry| *entry.server.weight.get_ref()).collect();
                    Some((Ring::new(&names, &weights), key))
                }
                _ => None,
            },
            priority_header: config
                .queue
                .priority_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            load_metrics: config.load_metrics.as_ref().map(|m| LoadMetrics {
                path: m.path.get_ref().clone(),
                interval: m.interval.0,
                stale_after: m.stale_after.0,
            }),
            active_check: config.health.as_ref().map(|h| ActiveCheck {
                path: h.path.get_ref().clone(),
                interval: h.interval.0,
                timeout: h.timeout.0,
                expect: h.expect.iter().filter_map(|s| http::StatusCode::from_u16(*s.get_ref()).ok()).collect(),
                rise: h.rise,
                fall: h.fall,
            }),
            tries: if config.next_upstream_tries == 0 { entries.len() } else { config.next_upstream_tries }.max(1),
            retry_timeout: config.next_upstream_timeout.map(|t| t.0),
            retry_body_max: config.next_upstream_body_max.0,
            retry_non_idempotent: config.next_upstream_non_idempotent,
            next: AtomicUsize::new(previous.map_or(0, |old| old.next.load(Ordering::Relaxed))),
        })
    }

    /// A server for the next try of a request, skipping servers marked down and those in `tried`,
    /// with its slot under admission control. The first try may wait in the queue; a retry takes a
    /// free slot or gives up at once.
    pub(crate) async fn admit(
        &self,
        tried: &Tried,
        facts: BalanceFacts,
    ) -> Result<(usize, Option<Permit>), Unavailable> {
        let eligible = |index: usize| {
            let server = &self.servers[index];
            !tried.contains(index) && !server.is_draining() && server.health.is_up()
        };
        if !(0..self.servers.len()).any(eligible) {
            return Err(Unavailable::NoHealthyServer);
        }
        let preferred = self.hash_pick(facts.key, eligible);
        match &self.admission {
            None => Ok((preferred.unwrap_or_else(|| self.pick(eligible)), None)),
            Some(admission) => {
                let ask = Ask {
                    least_loaded: self.balance == Balance::LeastInflight,
                    wait: tried.is_empty(),
                    priority: facts.priority,
                    prefer: preferred,
                    tokens: facts.tokens,
                };
                let deadline = ask.wait.then(|| tokio::time::Instant::now() + admission.queue_timeout());
                let permit = admission.acquire(eligible, ask).await.map_err(Unavailable::Overloaded)?;
                let server = permit.server();
                let permit = match (&self.shared_slots, self.servers[server].max_inflight) {
                    (Some(slots), Some(max)) => match slots.lease(server, max, deadline).await {
                        Asked::Taken(slot) => permit.with_shared(slot),
                        // Redis cannot be asked: this gateway's count alone decides.
                        Asked::Unreachable => permit,
                        Asked::Full if ask.wait => {
                            return Err(Unavailable::Overloaded(Rejection::QueueTimeout { retry_after: 1 }))
                        }
                        Asked::Full => return Err(Unavailable::Overloaded(Rejection::QueueFull { retry_after: 1 })),
                    },

                    _ => permit,
                };
                Ok((server, Some(permit)))
            }
        }
    }

    /// Whether balancing reads requests' bodies (`hash_key = "image"`): its locations read them whole.
    pub(crate) fn hashes_bodies(&self) -> bool {
        matches!(self.hashing, Some((_, HashKey::Image)))
    }

    /// Whether admission holds requests' estimated tokens (`max_inflight_tokens`): its locations read
    /// and estimate them.
    pub(crate) fn weighs_tokens(&self) -> bool {
        self.admission.as_ref().is_some_and(|admission| admission.weighs_tokens())
    }

    /// Whether requests are counted in flight per server (the balance method needs it).
    pub(crate) fn tracks_load(&self) -> bool {
        matches!(self.balance, Balance::LeastInflight | Balance::Hash)
    }

    /// What balancing and queueing need to know of a request: its claim's `QueuePriority` when it
    /// has one (its API key's), else its priority header; its hash key (`body`: the body, when read
    /// whole); its claim's tokens.
    pub(crate) fn facts(
        &self,
        headers: &http::HeaderMap,
        claim: Claim,
        client_ip: &http::HeaderValue,
        body: Option<&[u8]>,
    ) -> BalanceFacts {
        let priority = match claim.priority {
            Some(given) if !given.header_believed || self.priority_header.is_none() => given.level,
            _ => self.priority(headers),
        };
        let key = self.hashing.as_ref().and_then(|(_, key)| key.of(headers, client_ip, body));
        BalanceFacts { priority, key, tokens: claim.tokens }
    }

    /// The ring's server for a hash key, when balancing by hash.
    fn hash_pick(&self, key: Option<u64>, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let (ring, _) = self.hashing.as_ref()?;
        ring.pick(key?, eligible, |i| self.servers[i].load.inflight(), self.servers.len())
    }

    /// A request's queue priority from `queue.priority_header`: `high` 2, `normal` or none 1, `low` 0,
    /// or a digit 0-9.
    pub(crate) fn priority(&self, headers: &http::HeaderMap) -> u8 {
        let Some(value) = self.priority_header.as_ref().and_then(|name| headers.get(name)) else { return 1 };
        match value.as_bytes() {
            b"high" => 2,
            b"low" => 0,
            [digit @ b'0'..=b'9'] => digit - b'0',
            _ => 1,
        }
    }

    /// The next eligible server by the balance method (one exists).
    fn pick(&self, eligible: impl Fn(usize) -> bool) -> usize {
        if self.servers.len() == 1 {
            return 0;
        }
        if self.balance == Balance::LeastInflight {
            let candidates: Vec<usize> = (0..self.servers.len()).filter(|&i| eligible(i)).collect();
            let load = |i: usize| (&*self.servers[i].load, self.servers[i].max_inflight);
            let stale_after = self.load_metrics.as_ref().map(|m| m.stale_after);
            if let Some(index) = balance::least_loaded(&candidates, load, stale_after) {
                return index;
            }
        }
        if let Some(index) = self.weighted.as_ref().and_then(|w| w.pick(&eligible)) {
            return index;
        }
        let count = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count).map(|offset| (start + offset) % count).find(|&index| eligible(index)).unwrap_or(start % count)
    }
}

//! Upstreams: named groups of backend servers, each with a keep-alive connection pool, and the choice
//! of server for a request (round robin for now).

mod connector;

pub use connector::{ConnectError, Connector, SendTimedOut};

use crate::config::{UpstreamConfig, UpstreamTimeouts};
use crate::proxy::RequestBody;
use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// hyper-util's pooled HTTP/1.1 client over our connector. It keeps at most `keepalive` idle
/// connections per server, and retries a request once on a fresh connection when the pooled one turns
/// out closed before the request was written.
pub type Pool = Client<Connector, RequestBody>;

/// The settings a pool is built from; a reload keeps the old pool (and its open connections) when
/// these are unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSettings {
    keepalive: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    send_timeout: Duration,
}

/// One backend server.
#[derive(Debug)]
pub struct UpstreamServer {
    /// `host:port` as configured, used as the pool key and in the request URI.
    pub authority: Authority,
}

/// A compiled `[[upstream]]`.
pub struct Upstream {
    /// Its config name.
    pub name: String,
    /// Its servers, in config order.
    pub servers: Vec<UpstreamServer>,
    /// nginx-style timeouts; connect and send live in the pool's connector, read is applied per request.
    pub timeouts: UpstreamTimeouts,
    next: AtomicUsize,
    pool_settings: PoolSettings,
    pool: Pool,
}

impl Upstream {
    /// Compiles an upstream; `previous` is the same-named upstream of the running config, whose pool is
    /// reused when its settings did not change. The addresses were validated by `config::validate`.
    pub fn build(config: &UpstreamConfig, previous: Option<&Upstream>) -> Result<Upstream, String> {
        let pool_settings = PoolSettings {
            keepalive: config.keepalive,
            idle_timeout: config.keepalive_timeout.0,
            connect_timeout: config.timeouts.connect.0,
            send_timeout: config.timeouts.send.0,
        };
        let pool = match previous {
            Some(old) if old.pool_settings == pool_settings => old.pool.clone(),
            _ => new_pool(pool_settings),
        };
        let servers = config
            .servers
            .iter()
            .map(|s| {
                let addr = s.addr.get_ref();
                addr.parse::<Authority>()
                    .map(|authority| UpstreamServer { authority })
                    .map_err(|e| format!("invalid address {addr:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Upstream {
            name: config.name.get_ref().clone(),
            servers,
            timeouts: config.timeouts,
            next: AtomicUsize::new(previous.map_or(0, |old| old.next.load(Ordering::Relaxed))),
            pool_settings,
            pool,
        })
    }

    /// The server for the next request, in turn.
    pub fn pick(&self) -> &UpstreamServer {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.servers[turn % self.servers.len()]
    }

    /// The keep-alive pool requests to this upstream go through.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

fn new_pool(settings: PoolSettings) -> Pool {
    let connector = Connector { connect_timeout: settings.connect_timeout, send_timeout: settings.send_timeout };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.idle_timeout)
        .pool_max_idle_per_host(settings.keepalive)
        .set_host(false)
        .build(connector)
}

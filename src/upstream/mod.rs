//! Upstreams: named groups of backend servers, each server with its keep-alive connection pool, and
//! the choice of server for a request (round robin for now).

mod admission;
mod connector;
mod pool;

pub use admission::{Admission, Permit, Rejection};
pub use connector::{ConnectError, Connector, SendTimedOut, TimedStream};
pub use pool::{PoolKey, PoolSettings, ServerPool, UpstreamConnection};

use crate::config::{UpstreamConfig, UpstreamTimeouts};
use http::uri::Authority;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One backend server.
pub struct UpstreamServer {
    /// `host:port` as configured.
    pub authority: Authority,
    /// Its idle keep-alive connections.
    pub pool: Arc<ServerPool>,
}

/// A compiled `[[upstream]]`.
pub struct Upstream {
    /// Its config name.
    pub name: String,
    /// Its servers, in config order.
    pub servers: Vec<UpstreamServer>,
    /// nginx-style timeouts; connect and send live in each pool's connector, read is applied per request.
    pub timeouts: UpstreamTimeouts,
    /// Slots and queue, when some server has `max_inflight`.
    pub admission: Option<Arc<Admission>>,
    next: AtomicUsize,
}

impl Upstream {
    /// Compiles an upstream; `previous` is the same-named upstream of the running config, whose pools
    /// (and open connections) are kept for servers whose address and pool settings did not change.
    pub fn build(config: &UpstreamConfig, previous: Option<&Upstream>) -> Result<Upstream, String> {
        let settings = PoolSettings {
            max_idle: config.keepalive,
            idle_timeout: config.keepalive_timeout.0,
            connector: Connector { connect_timeout: config.timeouts.connect.0, send_timeout: config.timeouts.send.0 },
        };
        let mut servers = Vec::with_capacity(config.servers.len());
        for server in &config.servers {
            let addr = server.addr.get_ref();
            let authority: Authority = addr.parse().map_err(|e| format!("invalid address {addr:?}: {e}"))?;
            let kept = previous
                .and_then(|old| old.servers.iter().find(|s| s.authority == authority && s.pool.settings == settings))
                .map(|old| old.pool.clone());
            let pool = kept.unwrap_or_else(|| ServerPool::new(authority.clone(), settings));
            servers.push(UpstreamServer { authority, pool });
        }
        let limits: Vec<Option<usize>> =
            config.servers.iter().map(|s| s.max_inflight.as_ref().map(|m| *m.get_ref())).collect();
        let (queue_max, queue_timeout) = (config.queue.max, config.queue.timeout.0);
        let admission = limits.iter().any(Option::is_some).then(|| {
            // In-flight counts survive a reload when the servers and limits are the same.
            let same_servers =
                |old: &Upstream| old.servers.iter().map(|s| &s.authority).eq(servers.iter().map(|s| &s.authority));
            previous
                .filter(|old| same_servers(old))
                .and_then(|old| old.admission.clone())
                .filter(|old| old.same_shape(&limits, queue_max, queue_timeout))
                .unwrap_or_else(|| Admission::new(limits.clone(), queue_max, queue_timeout))
        });
        Ok(Upstream {
            name: config.name.get_ref().clone(),
            servers,
            timeouts: config.timeouts,
            admission,
            next: AtomicUsize::new(previous.map_or(0, |old| old.next.load(Ordering::Relaxed))),
        })
    }

    /// The server for the next request and, with admission control, its slot: waits in the queue
    /// when every server is full.
    pub async fn admit(&self) -> Result<(&UpstreamServer, Option<Permit>), Rejection> {
        match &self.admission {
            None => Ok((self.pick(), None)),
            Some(admission) => {
                let permit = admission.acquire().await?;
                Ok((&self.servers[permit.server()], Some(permit)))
            }
        }
    }

    /// The server for the next request, in turn.
    fn pick(&self) -> &UpstreamServer {
        if let [only] = self.servers.as_slice() {
            return only;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.servers[turn % self.servers.len()]
    }
}

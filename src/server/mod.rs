//! The running gateway: its listeners, the current `Runtime` (swapped atomically on reload), and
//! graceful shutdown. Connections look the runtime up per request, so a reload applies to the next
//! request while requests in flight finish on the runtime they started with.

pub(crate) mod conn;
pub(crate) mod gather;
pub(crate) mod http1;
pub mod signals;
pub mod workers;

use crate::config::{ConfigError, ConfigErrors, Source, EMBEDDED_DEFAULT};
use crate::runtime::Runtime;
use crate::upstream::{mark_drains, spawn_checks, spawn_scrapes};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the config comes from, so that a reload can read it again.
#[derive(Debug, Clone)]
pub enum ConfigOrigin {
    /// A file on disk, re-read on every reload.
    File(PathBuf),
    /// The built-in default (no file): reloads keep it.
    Embedded,
    /// A config text made by the program itself (`infergate demo`): reloads keep it.
    Text {
        /// Shown in errors in place of a file name.
        name: String,
        /// The config.
        text: String,
    },
}

impl ConfigOrigin {
    /// Reads the config text.
    pub fn read(&self) -> Result<Source, ConfigErrors> {
        match self {
            ConfigOrigin::File(path) => Source::read(path),
            ConfigOrigin::Embedded => {
                Ok(Source { name: "<embedded default>".into(), dir: PathBuf::from("."), text: EMBEDDED_DEFAULT.into() })
            }
            ConfigOrigin::Text { name, text } => {
                Ok(Source { name: name.clone(), dir: PathBuf::from("."), text: text.clone() })
            }
        }
    }
}

/// One configured address: a socket per worker, all bound to the same port with SO_REUSEPORT.
struct RunningListener {
    bound: SocketAddr,
    accept_loops: Vec<JoinHandle<()>>,
}

/// A started gateway.
pub struct Gateway {
    origin: ConfigOrigin,
    /// The runtimes connections are served on, one listening socket per address each.
    workers: Vec<Handle>,
    runtime: ArcSwap<Runtime>,
    /// The loaded runtime's version, read by connections before each request: an atomic nobody
    /// writes between reloads, so checking it costs no cross-core traffic.
    version: AtomicU64,
    listeners: Mutex<HashMap<SocketAddr, RunningListener>>,
    /// Reloads run one at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Flips to `true` on shutdown; every connection holds a receiver, so `closed()` means drained.
    shutdown: watch::Sender<bool>,
    /// The open client connections, told to end on shutdown.
    connections: conn::OpenConnections,
    /// When the gateway started, for the admin API's uptime.
    pub(crate) started: std::time::Instant,
}

impl Gateway {
    /// Loads the config, binds every listener and starts accepting on the caller's runtime alone (as
    /// tests do). Fails without side effects when the config is invalid or an address cannot be bound.
    pub async fn start(origin: ConfigOrigin) -> Result<Arc<Gateway>, ConfigErrors> {
        Gateway::start_on(origin, vec![Handle::current()]).await
    }

    /// As `start`, serving connections on the given worker runtimes.
    pub async fn start_on(origin: ConfigOrigin, workers: Vec<Handle>) -> Result<Arc<Gateway>, ConfigErrors> {
        let source = origin.read()?;
        let mut runtime = Runtime::load(&source, None)?;
        // Servers found by DNS are looked up before the first request.
        if runtime.discovery.refresh().await {
            runtime = Runtime::load(&source, Some(&runtime))?;
        }
        let (shutdown, _) = watch::channel(false);
        let gateway = Arc::new(Gateway {
            origin,
            workers,
            version: AtomicU64::new(runtime.version),
            runtime: ArcSwap::from_pointee(runtime),
            listeners: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            shutdown,
            connections: conn::OpenConnections::default(),
            started: std::time::Instant::now(),
        });
        let runtime = gateway.runtime();
        gateway.sync_listeners(&runtime, &source).await?;
        runtime.upstreams.values().for_each(spawn_checks);
        runtime.upstreams.values().for_each(spawn_scrapes);
        tokio::spawn(rediscover(Arc::downgrade(&gateway)));
        tokio::spawn(sweep_idle_connections(Arc::downgrade(&gateway)));
        Ok(gateway)
    }

    /// The runtime new requests use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The version of the runtime new requests use.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The bound address of each configured listen address (differs when the config says port 0).
    pub fn bound_addrs(&self) -> HashMap<SocketAddr, SocketAddr> {
        self.lock_listeners().iter().map(|(configured, running)| (*configured, running.bound)).collect()
    }

    /// The bound address of one configured listen address, e.g. `"127.0.0.1:0"`.
    pub fn bound_addr(&self, configured: &str) -> Option<SocketAddr> {
        let configured = crate::config::parse_listen(configured)?;
        self.lock_listeners().get(&configured).map(|l| l.bound)
    }

    /// Re-reads the config; a valid one replaces the running one (listeners added and removed, pools
    /// and counters kept by name), an invalid one changes nothing. Returns the new version.
    pub async fn reload(self: &Arc<Self>) -> Result<u64, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.runtime();
        let result = self.reload_from(&current).await;
        current.metrics.reload(result.is_ok());
        result
    }

    async fn reload_from(self: &Arc<Self>, current: &Arc<Runtime>) -> Result<u64, ConfigErrors> {
        let source = self.origin.read()?;
        self.replace(current, &source).await
    }

    /// Compiles the running config again, with what DNS answers now (servers found by DNS).
    async fn recompile(self: &Arc<Self>) {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.runtime();
        if let Err(errors) = self.replace(&current, &current.source).await {
            tracing::warn!(%errors, "recompiling the config after a DNS change failed; the running one stays");
        }
    }

    /// Compiles `source` (with `current` as the previous runtime) and puts it in `current`'s place.
    async fn replace(self: &Arc<Self>, current: &Arc<Runtime>, source: &Source) -> Result<u64, ConfigErrors> {
        let next = Arc::new(Runtime::load(source, Some(current))?);
        // Bind new addresses before publishing, so a failed bind leaves everything as it was.
        self.bind_new(&next, source).await?;
        self.runtime.store(next.clone());
        mark_drains(&current.upstreams, &next.upstreams, next.http.drain_timeout.0);
        // Checks of the replaced upstreams end on their own when those are dropped.
        next.upstreams.values().for_each(spawn_checks);
        next.upstreams.values().for_each(spawn_scrapes);
        self.version.store(next.version, Ordering::Release);
        self.stop_removed(&next).await;
        Ok(next.version)
    }

    /// Binds and starts the listeners the runtime has and we do not; stops those it no longer has.
    async fn sync_listeners(self: &Arc<Self>, runtime: &Runtime, source: &Source) -> Result<(), ConfigErrors> {
        self.bind_new(runtime, source).await?;
        self.stop_removed(runtime).await;
        Ok(())
    }

    async fn bind_new(self: &Arc<Self>, runtime: &Runtime, source: &Source) -> Result<(), ConfigErrors> {
        let missing: Vec<SocketAddr> = {
            let running = self.lock_listeners();
            runtime.listeners.keys().filter(|addr| !running.contains_key(addr)).copied().collect()
        };
        let mut bound = Vec::new();
        for configured in missing {
            match self.bind_on_workers(configured) {
                Ok(sockets) => bound.push((configured, sockets)),
                Err(e) => {
                    // Nothing was published yet: dropping the sockets bound so far undoes this step.
                    return Err(ConfigErrors(vec![ConfigError {
                        location: source.name.clone(),
                        offset: 0,
                        message: format!("cannot listen on {configured}: {e}"),
                    }]));
                }
            }
        }
        let mut running = self.lock_listeners();
        for (configured, sockets) in bound {
            let bound = sockets.first().and_then(|s| s.local_addr().ok()).unwrap_or(configured);
            let accept_loops = sockets
                .into_iter()
                .zip(&self.workers)
                .map(|(socket, worker)| worker.spawn(accept_loop(self.clone(), socket, configured)))
                .collect();
            tracing::info!(listen = %bound, workers = self.workers.len(), "listening");
            running.insert(configured, RunningListener { bound, accept_loops });
        }
        Ok(())
    }

    /// One socket per worker, registered with that worker's runtime; with port 0, the first socket's
    /// port is shared by the rest.
    fn bind_on_workers(&self, configured: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
        let mut sockets: Vec<TcpListener> = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let addr = sockets.first().map_or(Ok(configured), TcpListener::local_addr)?;
            let _in_worker = worker.enter();
            sockets.push(bind(addr, self.workers.len() > 1)?);
        }
        Ok(sockets)
    }

    async fn stop_removed(&self, runtime: &Runtime) {
        let removed: Vec<RunningListener> = {
            let mut running = self.lock_listeners();
            let gone: Vec<SocketAddr> =
                running.keys().filter(|addr| !runtime.listeners.contains_key(addr)).copied().collect();
            gone.iter().filter_map(|addr| running.remove(addr)).collect()
        };
        for listener in removed {
            tracing::info!(listen = %listener.bound, "listener removed");
            stop(listener).await;
        }
    }

    /// Stops accepting, lets open requests finish for up to `[http] drain_timeout`, and returns
    /// whether every connection closed in time.
    pub async fn shutdown(&self) -> bool {
        self.stop_accepting().await;
        let drain: Duration = self.runtime().http.drain_timeout.0;
        self.shutdown.send_replace(true);
        self.connections.shut_down();
        tokio::time::timeout(drain, self.shutdown.closed()).await.is_ok()
    }

    /// Closes every listening socket; returns once none accepts any more. Open connections go on.
    pub async fn stop_accepting(&self) {
        let running: Vec<RunningListener> = self.lock_listeners().drain().map(|(_, running)| running).collect();
        for listener in running {
            stop(listener).await;
        }
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, RunningListener>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map itself is still sound.
        self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Ends a listener's accept loops and waits until their sockets are closed.
async fn stop(listener: RunningListener) {
    for accept_loop in &listener.accept_loops {
        accept_loop.abort();
    }
    for accept_loop in listener.accept_loops {
        let _ = accept_loop.await;
    }
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(gateway: Arc<Gateway>, listener: TcpListener, configured: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                if let Some(connection) = conn::accepted(&gateway, stream, peer, configured) {
                    tokio::spawn(connection);
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes the connections idle past their timeout, a sweep every `conn::sweep_every`, until the
/// gateway shuts down or is gone.
async fn sweep_idle_connections(gateway: std::sync::Weak<Gateway>) {
    loop {
        let every = match gateway.upgrade() {
            Some(gateway) if !*gateway.shutdown.borrow() => {
                conn::sweep_every(gateway.runtime().listeners.values().map(|spec| spec.limits.idle_timeout()).min())
            }
            _ => return,
        };
        tokio::time::sleep(every).await;
        let Some(gateway) = gateway.upgrade() else { return };
        gateway.connections.close_idle(tokio::time::Instant::now());
    }
}

/// Looks up the servers found by DNS as their answers fall due, and compiles the config again when
/// one changed; ends at shutdown or when the gateway is gone. Without such servers it looks every
/// second whether a reload added some.
async fn rediscover(gateway: std::sync::Weak<Gateway>) {
    loop {
        let Some((due, mut shutdown)) =
            gateway.upgrade().map(|gateway| (gateway.runtime().discovery.next_due(), gateway.shutdown_signal()))
        else {
            return;
        };
        if *shutdown.borrow() {
            return;
        }
        let wait = due.unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(wait) => {}
            _ = shutdown.changed() => return,
        }
        drop(shutdown);
        let Some(gateway) = gateway.upgrade() else { return };
        if due.is_some() && gateway.runtime().discovery.refresh().await {
            gateway.recompile().await;
        }
    }
}

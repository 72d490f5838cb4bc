//! The running gateway: its listeners, the current `Runtime` (swapped atomically on reload), and
//! graceful shutdown. Connections look the runtime up per request, so a reload applies to the next
//! request while requests in flight finish on the runtime they started with.

mod conn;
pub mod signals;
pub mod tls;

use crate::config::{ConfigError, ConfigErrors, Source, EMBEDDED_DEFAULT};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the config comes from, so that a reload can read it again.
#[derive(Debug, Clone)]
pub enum ConfigOrigin {
    /// A file on disk, re-read on every reload.
    File(PathBuf),
    /// The built-in default (no file): reloads keep it.
    Embedded,
}

impl ConfigOrigin {
    /// Reads the config text.
    pub fn read(&self) -> Result<Source, ConfigErrors> {
        match self {
            ConfigOrigin::File(path) => Source::read(path),
            ConfigOrigin::Embedded => {
                Ok(Source { name: "<embedded default>".into(), dir: PathBuf::from("."), text: EMBEDDED_DEFAULT.into() })
            }
        }
    }
}

struct RunningListener {
    bound: SocketAddr,
    accept_loop: JoinHandle<()>,
}

/// A started gateway.
pub struct Gateway {
    origin: ConfigOrigin,
    runtime: ArcSwap<Runtime>,
    listeners: Mutex<HashMap<SocketAddr, RunningListener>>,
    /// Reloads run one at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Flips to `true` on shutdown; every connection holds a receiver, so `closed()` means drained.
    shutdown: watch::Sender<bool>,
}

impl Gateway {
    /// Loads the config, binds every listener and starts accepting. Fails without side effects when
    /// the config is invalid or an address cannot be bound.
    pub async fn start(origin: ConfigOrigin) -> Result<Arc<Gateway>, ConfigErrors> {
        let source = origin.read()?;
        let runtime = Runtime::load(&source, None)?;
        let (shutdown, _) = watch::channel(false);
        let gateway = Arc::new(Gateway {
            origin,
            runtime: ArcSwap::from_pointee(runtime),
            listeners: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            shutdown,
        });
        let runtime = gateway.runtime();
        gateway.sync_listeners(&runtime, &source).await?;
        Ok(gateway)
    }

    /// The runtime new requests use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
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
        let source = self.origin.read()?;
        let current = self.runtime();
        let next = Arc::new(Runtime::load(&source, Some(&current))?);
        // Bind new addresses before publishing, so a failed bind leaves everything as it was.
        self.bind_new(&next, &source).await?;
        self.runtime.store(next.clone());
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
            match bind(configured) {
                Ok(listener) => bound.push((configured, listener)),
                Err(e) => {
                    // Nothing was published yet: dropping the listeners bound so far undoes this step.
                    return Err(ConfigErrors(vec![ConfigError {
                        location: source.name.clone(),
                        message: format!("cannot listen on {configured}: {e}"),
                    }]));
                }
            }
        }
        let mut running = self.lock_listeners();
        for (configured, listener) in bound {
            let bound = listener.local_addr().unwrap_or(configured);
            let accept_loop = tokio::spawn(accept_loop(self.clone(), listener, configured));
            tracing::info!(listen = %bound, "listening");
            running.insert(configured, RunningListener { bound, accept_loop });
        }
        Ok(())
    }

    async fn stop_removed(&self, runtime: &Runtime) {
        let removed: Vec<RunningListener> = {
            let mut running = self.lock_listeners();
            let gone: Vec<SocketAddr> = running.keys().filter(|addr| !runtime.listeners.contains_key(addr)).copied().collect();
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
        tokio::time::timeout(drain, self.shutdown.closed()).await.is_ok()
    }

    /// Closes every listening socket; returns once none accepts any more. Open connections go on.
    pub async fn stop_accepting(&self) {
        let running: Vec<RunningListener> = self.lock_listeners().drain().map(|(_, running)| running).collect();
        for listener in running {
            stop(listener).await;
        }
    }

    fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, RunningListener>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map itself is still sound.
        self.listeners.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Ends an accept loop and waits until its socket is closed.
async fn stop(listener: RunningListener) {
    listener.accept_loop.abort();
    let _ = listener.accept_loop.await;
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
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
                tokio::spawn(conn::serve(gateway.clone(), stream, peer, configured));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

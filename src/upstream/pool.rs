//! Keep-alive connections to one backend server, used by the request's own task (see `http1`); for a
//! server reached over TLS that picks HTTP/2, one multiplexed connection per worker thread instead.
//!
//! Written by hand instead of using hyper-util's pooled client: that client runs every connection in
//! a task of its own, so each request crosses tasks (and often threads) several times, which measured
//! at twice nginx's CPU per request. An idle connection waits in a per-thread LIFO stack, unpolled;
//! before reuse it is checked once: a connection the backend closed while idle is thrown away then.

use super::connector::{BackendIo, ConnectError, Connector};
pub(crate) use super::http1::UpstreamConnection;
use super::tls_client::UpstreamTls;
use http::uri::Authority;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How a server's pool behaves; a reload keeps a pool (and its connections) when these are unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PoolSettings {
    /// Idle connections kept (nginx `keepalive`).
    pub(crate) max_idle: usize,
    /// How long an idle connection is kept.
    pub(crate) idle_timeout: Duration,
    /// Connect and send timeouts of new connections.
    pub(crate) connector: Connector,
}

struct Idle {
    connection: Box<UpstreamConnection>,
    since: Instant,
    idle_timeout: Duration,
}

/// A request body as the HTTP/2 client takes it.
pub(crate) type Http2Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::error::BoxError>;
/// Requests to one server on this worker's HTTP/2 connection to it.
pub(crate) type Http2Sender = hyper::client::conn::http2::SendRequest<Http2Body>;

/// A connection to send a request on.
pub(crate) enum Checked {
    /// An HTTP/1.1 connection of the request's own until its response ends.
    Http1(Box<UpstreamConnection>),
    /// The worker's HTTP/2 connection, shared (`reused`: it served before).
    Http2 { sender: Http2Sender, reused: bool },
}

thread_local! {
    /// This worker thread's HTTP/2 connections, by pool id.
    static HTTP2: RefCell<Vec<Option<Http2Sender>>> = const { RefCell::new(Vec::new()) };
    /// This worker thread's idle connections, a stack per pool id. Per thread, as nginx keeps a
    /// keep-alive cache per worker: a connection is registered with the runtime of the thread that
    /// opened it, and checking it in and out never touches memory another core writes.
    static IDLE: RefCell<Vec<Vec<Idle>>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's reaper task is running.
    static REAPER_RUNNING: Cell<bool> = const { Cell::new(false) };
}

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(0);

/// The keep-alive connections of one server.
pub(crate) struct ServerPool {
    key: PoolKey,
    authority: Authority,
    /// The settings this pool was built with.
    pub(crate) settings: PoolSettings,
    /// TLS over each connection, for an `https://` server.
    pub(crate) tls: Option<UpstreamTls>,
}

/// What checking a connection back in needs: plain values, so a response body can carry it without
/// sharing (and bouncing the reference count of) the pool between cores.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolKey {
    id: usize,
    max_idle: usize,
    idle_timeout: Duration,
}

impl PoolKey {
    /// Runs `f` on this thread's stack of this pool.
    fn with_stack<T>(self, f: impl FnOnce(&mut Vec<Idle>) -> T) -> T {
        IDLE.with_borrow_mut(|stacks| {
            if stacks.len() <= self.id {
                stacks.resize_with(self.id + 1, Vec::new);
            }
            f(&mut stacks[self.id])
        })
    }

    /// Returns a connection whose response is complete (at `now`, a time the caller read already);
    /// kept if it can serve again and there is room.
    pub(crate) fn checkin(self, connection: Box<UpstreamConnection>, now: Instant) {
        // The socket is looked at when the connection is taken again, after its idle time.
        if !connection.may_serve_again() {
            return;
        }
        let (max_idle, idle_timeout) = (self.max_idle, self.idle_timeout);
        let evicted = self.with_stack(|idle| {
            // Keep the most recently used ones: drop the oldest.
            let evicted = (idle.len() >= max_idle && !idle.is_empty()).then(|| idle.remove(0));
            if max_idle > 0 {
                idle.push(Idle { connection, since: now, idle_timeout });
            }
            evicted
        });
        drop(evicted);
        ensure_reaper();
    }
}

impl ServerPool {
    /// An empty pool for `authority`, its connections over `tls` when given.
    pub(crate) fn new(authority: Authority, settings: PoolSettings, tls: Option<UpstreamTls>) -> Arc<ServerPool> {
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let key = PoolKey { id, max_idle: settings.max_idle, idle_timeout: settings.idle_timeout };
        Arc::new(ServerPool { key, authority, settings, tls })
    }

    /// The key to check connections of this pool back in with.
    pub(crate) fn key(&self) -> PoolKey {
        self.key
    }

    /// This worker's HTTP/2 connection to the server when it has one open, else the most recently
    /// used idle HTTP/1.1 connection still open at `now` (a time the caller read already: each clock
    /// read costs), else a new connection. Boxed: a connection moves between the pool, the request
    /// and its response body several times per request.
    pub(crate) async fn checkout(&self, now: Instant) -> Result<Checked, ConnectError> {
        if let Some(sender) = self.http2() {
            return Ok(Checked::Http2 { sender, reused: true });
        }
        if let Some(connection) = self.take_idle(now) {
            return Ok(Checked::Http1(connection));
        }
        match self.open(false).await? {
            Opened::Http1(io) => Ok(Checked::Http1(Box::new(UpstreamConnection::new(io)))),
            Opened::Http2(io) => {
                let target = self.authority.as_str();
                let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|e| ConnectError::Failed(target.to_owned(), std::io::Error::other(e)))?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "upstream HTTP/2 connection ended");
                    }
                });
                let id = self.key.id;
                HTTP2.with_borrow_mut(|senders| {
                    if senders.len() <= id {
                        senders.resize_with(id + 1, || None);
                    }
                    senders[id] = Some(sender.clone());
                });
                Ok(Checked::Http2 { sender, reused: false })
            }
        }
    }

    /// This worker's open HTTP/2 connection to the server, if any.
    fn http2(&self) -> Option<Http2Sender> {
        HTTP2.with_borrow_mut(|senders| {
            let slot = senders.get_mut(self.key.id)?;
            if slot.as_ref().is_some_and(Http2Sender::is_closed) {
                *slot = None;
            }
            slot.clone()
        })
    }

    fn take_idle(&self, now: Instant) -> Option<Box<UpstreamConnection>> {
        loop {
            let Idle { mut connection, since, .. } = self.key.with_stack(Vec::pop)?;
            if now.duration_since(since) < self.settings.idle_timeout && connection.is_reusable() {
                connection.reused = true;
                return Some(connection);
            }
        }
    }

    /// A new HTTP/1.1 connection, never pooled before (upgrades, which leave the pool for good, and
    /// a request sent again after a stale kept-alive one).
    pub(crate) async fn connect(&self) -> Result<Box<UpstreamConnection>, ConnectError> {
        match self.open(true).await? {
            Opened::Http1(io) => Ok(Box::new(UpstreamConnection::new(io))),
            Opened::Http2(_) => Err(ConnectError::Failed(
                self.authority.to_string(),
                std::io::Error::other("the server picked HTTP/2 where only HTTP/1.1 was offered"),
            )),
        }
    }

    /// A connection, TLS over it for an `https://` server (offering HTTP/2 unless `http1`).
    async fn open(&self, http1: bool) -> Result<Opened, ConnectError> {
        let started = Instant::now();
        let stream = self.settings.connector.connect(&self.authority).await?;
        let Some(tls) = &self.tls else { return Ok(Opened::Http1(BackendIo::Plain(stream))) };
        let target = self.authority.as_str();
        // The handshake counts against the connect timeout, as nginx's does.
        let left = self.settings.connector.connect_timeout.saturating_sub(started.elapsed());
        let stream = match tokio::time::timeout(left, tls.handshake(stream, target, http1)).await {
            Ok(stream) => stream?,
            Err(_) => return Err(ConnectError::TimedOut(target.to_owned())),
        };
        Ok(match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Opened::Http2(BackendIo::Tls(Box::new(stream))),
            _ => Opened::Http1(BackendIo::Tls(Box::new(stream))),
        })
    }
}

/// A connection just opened, by the protocol it speaks.
enum Opened {
    Http1(BackendIo),
    Http2(BackendIo),
}

/// Closes this thread's idle connections past their lifetime even when no request comes to notice them.
fn ensure_reaper() {
    if REAPER_RUNNING.replace(true) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        REAPER_RUNNING.set(false);
        return;
    };
    runtime.spawn(async {
        while let Some(next_expiry) = reap() {
            tokio::time::sleep_until(next_expiry).await;
        }
    });
}

/// Drops this thread's expired idle connections; returns when the next one expires, or `None` (and
/// marks the reaper stopped) when none is left.
fn reap() -> Option<Instant> {
    let now = Instant::now();
    let expired: Vec<Idle> = IDLE.with_borrow_mut(|stacks| {
        let mut expired = Vec::new();
        for stack in stacks.iter_mut() {
            let (keep, gone): (Vec<Idle>, Vec<Idle>) =
                stack.drain(..).partition(|entry| now.duration_since(entry.since) < entry.idle_timeout);
            *stack = keep;
            expired.extend(gone);
        }
        expired
    });
    drop(expired);
    let next = IDLE.with_borrow(|stacks| stacks.iter().flatten().map(|entry| entry.since + entry.idle_timeout).min());
    if next.is_none() {
        REAPER_RUNNING.set(false);
    }
    next
}

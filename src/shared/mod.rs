//! The Redis that several gateways share their limits through (`[redis]`). One multiplexed
//! connection per worker thread (redis-rs's `ConnectionManager`, which reconnects by itself), every command
//! bounded by `timeout`. When a command fails or times out the store is marked down: for `retry`
//! every shared limit takes its fallback at once, without waiting on Redis, while one task pings it;
//! the first answer marks it up again. Said in /status and in the metrics `infergate_redis_up`,
//! `infergate_redis_errors_total` and `infergate_redis_fallbacks_total`.
//!
//! A thread's connection is made on its first use (so `infergate check` and a gateway whose Redis is
//! down both start), and its own task runs on that thread's runtime: a request's command crosses no
//! thread, as nothing else on the request path does, and no worker waits on another's turn.

pub(crate) mod leases;

use crate::config::RedisConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisResult, ScriptInvocation};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::ThreadId;
use std::time::Duration;
use tokio::time::Instant;

/// The Redis of `[redis]`, and whether it answers.
pub(crate) struct SharedStore {
    config: RedisConfig,
    /// The URL without its password, for /status and logs.
    shown_url: String,
    client: redis::Client,
    /// Per thread that used the store: its connection (made on first use).
    connections: Mutex<Vec<(ThreadId, ConnectionManager)>>,
    /// While `now_ms` is below this, Redis is taken as down (0: up).
    down_until_ms: AtomicU64,
    epoch: Instant,
    /// A task pings Redis until it answers.
    probing: AtomicBool,
    errors: AtomicU64,
    fallbacks: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SharedStore {
    /// The store `config` names; it connects on first use.
    pub(crate) fn new(config: &RedisConfig) -> Result<Arc<SharedStore>, String> {
        let client = redis::Client::open(config.url.get_ref().as_str()).map_err(|e| e.to_string())?;
        Ok(Arc::new(SharedStore {
            config: config.clone(),
            shown_url: without_password(config.url.get_ref()),
            client,
            connections: Mutex::new(Vec::new()),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            probing: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }))
    }

    /// Whether a reload can keep this store (and its connection) for `config`.
    pub(crate) fn same_config(&self, config: &RedisConfig) -> bool {
        self.config == *config
    }

    /// A key of this gateway's in Redis: the configured prefix, then `parts`.
    pub(crate) fn key(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut key = self.config.prefix.as_bytes().to_vec();
        for part in parts {
            key.extend_from_slice(part);
        }
        key
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// Whether Redis is to be asked now (it is not marked down).
    pub(crate) fn reachable(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    /// How long a slot lease outlives a gateway that stopped renewing it (`lease_ttl`).
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl.0
    }

    /// Seconds a client refused while Redis is down should wait: until it is tried again.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.config.retry.0.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Counts one decision taken by a fallback because Redis could not be asked.
    pub(crate) fn fell_back(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// This thread's connection, made on its first use (inside a tokio runtime, which then drives it).
    fn connection(self: &Arc<Self>) -> Option<ConnectionManager> {
        let thread = std::thread::current().id();
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, connection)) = connections.iter().find(|(owner, _)| *owner == thread) {
            return Some(connection.clone());
        }
        let settings = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.config.timeout.0))
            .set_connection_timeout(Some(self.config.timeout.0.max(Duration::from_millis(200))))
            .set_number_of_retries(1);
        match ConnectionManager::new_lazy_with_config(self.client.clone(), settings) {
            Ok(connection) => {
                connections.push((thread, connection.clone()));
                Some(connection)
            }
            Err(error) => {
                drop(connections);
                self.mark_down(error.to_string());
                None
            }
        }
    }

    /// Runs a script invocation within `timeout`; `None` when Redis failed or took too long (then
    /// it is marked down, see the module doc).
    pub(crate) async fn run<T: FromRedisValue>(self: &Arc<Self>, invocation: &ScriptInvocation<'_>) -> Option<T> {
        self.within(|mut connection| async move { invocation.invoke_async(&mut connection).await }).await
    }

    /// Runs one command within `timeout`, as `run` does.
    pub(crate) async fn query<T: FromRedisValue>(self: &Arc<Self>, command: &Cmd) -> Option<T> {
        self.within(|mut connection| async move { command.query_async(&mut connection).await }).await
    }

    /// `attempt` on this thread's connection within `timeout`. A connection Redis dropped (it
    /// restarted since this thread last asked) is made again and asked once more: each thread's
    /// connection finds out on its own, and the first command after a restart is not lost to it.
    async fn within<T, Answer>(self: &Arc<Self>, attempt: impl Fn(ConnectionManager) -> Answer) -> Option<T>
    where
        Answer: Future<Output = RedisResult<T>>,
    {
        let deadline = Instant::now() + self.config.timeout.0;
        let mut again = true;
        loop {
            let error = match tokio::time::timeout_at(deadline, attempt(self.connection()?)).await {
                Ok(Ok(value)) => return Some(value),
                Ok(Err(error)) if again && error.is_connection_dropped() => {
                    again = false;
                    continue;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {:?}", self.config.timeout.0),
            };
            self.mark_down(error);
            return None;
        }
    }

    /// Marks Redis down for `retry` and starts the task that pings it, unless one runs.
    fn mark_down(self: &Arc<Self>, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.down_until_ms.store(self.now_ms() + self.retry_ms(), Ordering::Relaxed);
        if !self.probing.swap(true, Ordering::AcqRel) {
            tracing::warn!(redis = %self.shown_url, %error, "Redis is unreachable: shared limits fall back");
            tokio::spawn(probe(Arc::downgrade(self)));
        }
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    fn retry_ms(&self) -> u64 {
        u64::try_from(self.config.retry.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// `"redis"` of `/status`.
    pub(crate) fn status(&self) -> Value {
        json!({
            "url": self.shown_url,
            "up": self.reachable(),
            "errors": self.errors.load(Ordering::Relaxed),
            "fallbacks": self.fallbacks.load(Ordering::Relaxed),
            "last_error": *self.last_error.lock().unwrap_or_else(PoisonError::into_inner),
        })
    }

    /// Registers the store's gauge and counters in `registry` (made at each scrape).
    pub(crate) fn register(&self, registry: &mut Registry) {
        let up: Gauge = Gauge::default();
        up.set(i64::from(self.reachable()));
        let errors: Counter = Counter::default();
        errors.inc_by(self.errors.load(Ordering::Relaxed));
        let fallbacks: Counter = Counter::default();
        fallbacks.inc_by(self.fallbacks.load(Ordering::Relaxed));
        registry.register("redis_up", "1 while the shared limits' Redis answers, 0 while they fall back", up);
        registry.register("redis_errors", "Redis commands that failed or took longer than [redis] timeout", errors);
        registry.register(
            "redis_fallbacks",
            "Shared limit decisions taken by their fallback (local counts, or refused) while Redis was down",
            fallbacks,
        );
    }
}

/// Pings the store every `retry` until it answers, then marks it up; ends when the store is gone (a
/// reload dropped `[redis]`).
async fn probe(store: Weak<SharedStore>) {
    loop {
        let Some(wait) = store.upgrade().map(|store| store.config.retry.0) else { return };
        tokio::time::sleep(wait).await;
        let Some(store) = store.upgrade() else { return };
        let Some(mut connection) = store.connection() else { return };
        let ping = redis::cmd("PING");
        let answered = matches!(
            tokio::time::timeout(store.config.timeout.0, ping.query_async::<String>(&mut connection)).await,
            Ok(Ok(_))
        );
        if answered {
            store.down_until_ms.store(0, Ordering::Relaxed);
            store.probing.store(false, Ordering::Release);
            tracing::info!(redis = %store.shown_url, "Redis answers again: shared limits are shared again");
            return;
        }
        store.down_until_ms.store(store.now_ms() + store.retry_ms(), Ordering::Relaxed);
    }
}

/// `url` with its password, if any, written `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(name, _)| name);
            format!("{scheme}://{user}:***@{host}{}", &rest[host_end..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(without_password("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(without_password("redis://:s3cret@redis:6379"), "redis://:***@redis:6379");
        assert_eq!(without_password("redis://app:s3cret@redis:6379/2"), "redis://app:***@redis:6379/2");
    }
}

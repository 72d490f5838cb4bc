//! Leases in Redis: at most N holders of one counted thing across every gateway (a model server's
//! slots for `shared_admission`, a key's requests in flight for a shared `limit_conn`). A thing's
//! leases are a sorted set of lease ids scored by their expiry (`leases.lua`); a lease is taken when
//! fewer than N are held, renewed every third of `lease_ttl` while its holder lives, and given back
//! when it is dropped; the leases of a gateway that died expire within `lease_ttl`.

use super::SharedStore;
use redis::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// The leases one gateway holds in a store, renewed together.
pub(crate) struct Leases {
    store: Arc<SharedStore>,
    ttl: Duration,
    /// Leases held now, by id: the Redis key of their thing.
    held: Mutex<HashMap<u64, Arc<[u8]>>>,
    /// A task renews the held leases.
    renewing: AtomicBool,
}

/// One lease; dropping it gives it back.
pub(crate) struct Lease {
    leases: Arc<Leases>,
    id: u64,
    key: Arc<[u8]>,
}

/// What asking for a lease came to.
pub(crate) enum Asked {
    /// Taken.
    Taken(Lease),
    /// All N were held until the deadline.
    Full,
    /// Redis cannot be asked: the caller decides by its own counts.
    Unreachable,
}

/// How often the held leases are renewed, as a part of their life.
const RENEWALS_PER_TTL: u32 = 3;
/// Between two asks for a thing whose leases are all held (plus up to as much again at random, so
/// that gateways waiting together do not ask together).
const ASK_AGAIN: Duration = Duration::from_millis(20);

static LEASES: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("leases.lua")));

impl Leases {
    /// Leases in `store`, living `ttl` without renewal.
    pub(crate) fn new(store: Arc<SharedStore>, ttl: Duration) -> Arc<Leases> {
        Arc::new(Leases { store, ttl, held: Mutex::new(HashMap::new()), renewing: AtomicBool::new(false) })
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// One of `max` leases on the thing `key`, asked for until `deadline` (`None`: once).
    pub(crate) async fn lease(self: &Arc<Self>, key: Arc<[u8]>, max: usize, deadline: Option<Instant>) -> Asked {
        let id = fastrand::u64(..);
        loop {
            if !self.store.reachable() {
                self.store.fell_back();
                return Asked::Unreachable;
            }
            let mut invocation = LEASES.prepare_invoke();
            invocation.key(&*key).arg("take").arg(max).arg(self.ttl_ms()).arg(id);
            match self.store.run::<i64>(&invocation).await {
                Some(1) => return Asked::Taken(self.hold(id, key)),
                Some(_) => {}
                None => {
                    self.store.fell_back();
                    return Asked::Unreachable;
                }
            }
            let again = ASK_AGAIN + ASK_AGAIN.mul_f64(fastrand::f64());
            match deadline {
                Some(deadline) if Instant::now() + again < deadline => tokio::time::sleep(again).await,
                _ => return Asked::Full,
            }
        }
    }

    fn hold(self: &Arc<Self>, id: u64, key: Arc<[u8]>) -> Lease {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).insert(id, key.clone());
        if !self.renewing.swap(true, Ordering::AcqRel) {
            tokio::spawn(renew(Arc::downgrade(self)));
        }
        Lease { leases: self.clone(), id, key }
    }

    /// Held leases, by their thing's key.
    fn held_by_key(&self) -> HashMap<Arc<[u8]>, Vec<u64>> {
        let mut by_key: HashMap<Arc<[u8]>, Vec<u64>> = HashMap::new();
        for (&id, key) in self.held.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            by_key.entry(key.clone()).or_default().push(id);
        }
        by_key
    }
}

/// Renews the held leases every third of their life while any is held.
async fn renew(leases: Weak<Leases>) {
    loop {
        let Some(wait) = leases.upgrade().map(|leases| leases.ttl / RENEWALS_PER_TTL) else { return };
        tokio::time::sleep(wait).await;
        let Some(leases) = leases.upgrade() else { return };
        let by_key = leases.held_by_key();
        if by_key.is_empty() {
            leases.renewing.store(false, Ordering::Release);
            // A lease taken between the look above and the store started no task: renew on for it,
            // unless one taken since started its own.
            let taken_meanwhile = !leases.held_by_key().is_empty();
            if !taken_meanwhile || leases.renewing.swap(true, Ordering::AcqRel) {
                return;
            }
            continue;
        }
        for (key, ids) in by_key {
            let mut invocation = LEASES.prepare_invoke();
            invocation.key(&*key).arg("renew").arg(leases.ttl_ms());
            for id in ids {
                invocation.arg(id);
            }
            // A renewal Redis missed is made at the next turn, within the lease's life.
            let _: Option<i64> = leases.store.run(&invocation).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.held.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        let (leases, id, key) = (self.leases.clone(), self.id, self.key.clone());
        // Given back at once; were Redis not to take it, the lease expires within its life.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut release = redis::cmd("ZREM");
                release.arg(&*key).arg(id);
                let _: Option<i64> = leases.store.query(&release).await;
            });
        }
    }
}

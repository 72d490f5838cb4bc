//! Admission shared by several gateways (`shared_admission = true`): a server's `max_inflight` is
//! counted in Redis, so that N gateways in front of one model never send it more than its slots
//! together. A request that got a slot from this gateway's admission (`admission.rs`) also takes a
//! lease in Redis (`slots.lua`: a sorted set of lease ids per server, scored by their expiry); when
//! every lease is held it asks again every few tens of milliseconds until its queue's deadline. A
//! gateway renews its leases every third of `lease_ttl`, so the leases of one that died expire and
//! their slots come back within `lease_ttl`.
//!
//! The trade-off, chosen over reading the model's own reported load: a lease costs a round trip to
//! Redis before a request is sent, and the wait for a slot freed on another gateway is polled, not
//! handed over, with no order across gateways (priorities and FIFO hold within each gateway). The
//! model's reported load would cost nothing per request but lags by its scrape interval, and every
//! gateway that reads the same number admits into the same free slot. While Redis cannot be reached
//! each gateway counts alone, so up to N times `max_inflight` may be admitted.

use crate::shared::SharedStore;
use redis::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// The leases of one upstream's servers in Redis.
pub(crate) struct SharedSlots {
    store: Arc<SharedStore>,
    /// Per server: `PREFIX` `slots:UPSTREAM:HOST:PORT`.
    keys: Vec<Vec<u8>>,
    ttl: Duration,
    /// Leases held now, by id: their server.
    held: Mutex<HashMap<u64, usize>>,
    /// A task renews the held leases.
    renewing: AtomicBool,
}

/// One lease on a server's slot; dropping it gives the slot back.
pub(crate) struct SharedSlot {
    slots: Arc<SharedSlots>,
    id: u64,
    server: usize,
}

/// How often the held leases are renewed, as a part of their life.
const RENEWALS_PER_TTL: u32 = 3;
/// Between two asks for a slot that every lease holds (plus up to as much again at random, so that
/// gateways waiting together do not ask together).
const ASK_AGAIN: Duration = Duration::from_millis(20);

static SLOTS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("slots.lua")));

impl SharedSlots {
    /// The leases of the upstream `name`'s servers (`servers`: their `host:port`), living `ttl`.
    pub(crate) fn new(store: Arc<SharedStore>, name: &str, servers: &[&str], ttl: Duration) -> Arc<SharedSlots> {
        let keys =
            servers.iter().map(|server| store.key(&[b"slots:", name.as_bytes(), b":", server.as_bytes()])).collect();
        Arc::new(SharedSlots { store, keys, ttl, held: Mutex::new(HashMap::new()), renewing: AtomicBool::new(false) })
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// A lease on one of `server`'s `slots`, asked for until `deadline` (`None`: once). `Ok(None)`:
    /// Redis cannot be asked (the request goes on this gateway's count alone); `Err`: every slot was
    /// held until the deadline.
    pub(crate) async fn lease(
        self: &Arc<Self>,
        server: usize,
        slots: usize,
        deadline: Option<Instant>,
    ) -> Result<Option<SharedSlot>, ()> {
        let id = fastrand::u64(..);
        loop {
            if !self.store.reachable() {
                self.store.fell_back();
                return Ok(None);
            }
            let mut invocation = SLOTS.prepare_invoke();
            invocation.key(self.keys[server].as_slice()).arg("take").arg(slots).arg(self.ttl_ms()).arg(id);
            match self.store.run::<i64>(&invocation).await {
                Some(1) => return Ok(Some(self.hold(id, server))),
                Some(_) => {}
                None => {
                    self.store.fell_back();
                    return Ok(None);
                }
            }
            let again = ASK_AGAIN + ASK_AGAIN.mul_f64(fastrand::f64());
            match deadline {
                Some(deadline) if Instant::now() + again < deadline => tokio::time::sleep(again).await,
                _ => return Err(()),
            }
        }
    }

    fn hold(self: &Arc<Self>, id: u64, server: usize) -> SharedSlot {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).insert(id, server);
        if !self.renewing.swap(true, Ordering::AcqRel) {
            tokio::spawn(renew(Arc::downgrade(self)));
        }
        SharedSlot { slots: self.clone(), id, server }
    }

    /// Held leases, by server.
    fn held_by_server(&self) -> Vec<Vec<u64>> {
        let mut by_server = vec![Vec::new(); self.keys.len()];
        for (&id, &server) in self.held.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            by_server[server].push(id);
        }
        by_server
    }
}

/// Renews the held leases every third of their life while any is held.
async fn renew(slots: Weak<SharedSlots>) {
    loop {
        let Some(wait) = slots.upgrade().map(|slots| slots.ttl / RENEWALS_PER_TTL) else { return };
        tokio::time::sleep(wait).await;
        let Some(slots) = slots.upgrade() else { return };
        let by_server = slots.held_by_server();
        if by_server.iter().all(Vec::is_empty) {
            slots.renewing.store(false, Ordering::Release);
            // A lease taken between the look above and the store started no task: renew on for it,
            // unless one taken since started its own.
            let taken_meanwhile = !slots.held_by_server().iter().all(Vec::is_empty);
            if !taken_meanwhile || slots.renewing.swap(true, Ordering::AcqRel) {
                return;
            }
            continue;
        }
        for (key, ids) in slots.keys.iter().zip(by_server).filter(|(_, ids)| !ids.is_empty()) {
            let mut invocation = SLOTS.prepare_invoke();
            invocation.key(key.as_slice()).arg("renew").arg(slots.ttl_ms());
            for id in ids {
                invocation.arg(id);
            }
            // A renewal Redis missed is made at the next turn, within the lease's life.
            let _: Option<i64> = slots.store.run(&invocation).await;
        }
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.slots.held.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        let (slots, id, server) = (self.slots.clone(), self.id, self.server);
        // Given back at once; were Redis not to take it, the lease expires within its life.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut release = redis::cmd("ZREM");
                release.arg(slots.keys[server].as_slice()).arg(id);
                let _: Option<i64> = slots.store.query(&release).await;
            });
        }
    }
}

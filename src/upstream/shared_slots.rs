//! Admission shared by several gateways (`shared_admission = true`): a server's `max_inflight` is
//! counted in Redis, so that N gateways in front of one model never send it more than its slots
//! together. A request that got a slot from this gateway's admission (`admission.rs`) also takes a
//! lease in Redis (`shared::leases`, one set of leases per server); when every lease is held it asks
//! again every few tens of milliseconds until its queue's deadline. A gateway renews its leases, so
//! the leases of one that died expire and their slots come back within `lease_ttl`.
//!
//! The trade-off, chosen over reading the model's own reported load: a lease costs a round trip to
//! Redis before a request is sent, and the wait for a slot freed on another gateway is polled, not
//! handed over, with no order across gateways (priorities and FIFO hold within each gateway). The
//! model's reported load would cost nothing per request but lags by its scrape interval, and every
//! gateway that reads the same number admits into the same free slot. While Redis cannot be reached
//! each gateway counts alone, so up to N times `max_inflight` may be admitted.

use crate::shared::leases::{Asked, Lease, Leases};
use crate::shared::SharedStore;
use std::sync::Arc;
use tokio::time::Instant;

/// The leases of one upstream's servers in Redis.
pub(crate) struct SharedSlots {
    leases: Arc<Leases>,
    /// Per server: `PREFIX` `slots:UPSTREAM:HOST:PORT`.
    keys: Vec<Arc<[u8]>>,
}

impl SharedSlots {
    /// The slots of the upstream `name`'s servers (`servers`: their `host:port`) in `store`.
    pub(crate) fn new(store: &Arc<SharedStore>, name: &str, servers: &[&str]) -> SharedSlots {
        let key = |server: &&str| Arc::from(store.key(&[b"slots:", name.as_bytes(), b":", server.as_bytes()]));
        SharedSlots { leases: Leases::new(store.clone(), store.lease_ttl()), keys: servers.iter().map(key).collect() }
    }

    /// A lease on one of `server`'s `slots`, asked for until `deadline` (`None`: once).
    pub(crate) async fn lease(&self, server: usize, slots: usize, deadline: Option<Instant>) -> Asked {
        self.leases.lease(self.keys[server].clone(), slots, deadline).await
    }
}

/// A slot's lease, held with its permit.
pub(crate) type SharedSlot = Lease;

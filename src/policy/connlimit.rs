//! Concurrent requests per key (nginx's `limit_conn`): a request holds a place from the moment it is
//! admitted until its response ends (a stream: its last token) or its client leaves. Only keys with
//! requests in flight are held, so memory is bounded by concurrency. A shared zone's places are
//! leases in Redis (`shared::leases`), counted across gateways.

use crate::shared::leases::Lease;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The counts of one zone.
#[derive(Debug, Default)]
pub struct ConnCounter {
    counts: Mutex<HashMap<Box<[u8]>, usize>>,
}

/// A place held by one request; dropping it frees the place.
pub(crate) struct ConnGuard(#[expect(dead_code, reason = "held, never read: dropping it frees the place")] Place);

/// Where a place is held; each frees itself when dropped, and is never read.
enum Place {
    /// In this gateway's counts.
    Local(#[expect(dead_code, reason = "held, never read")] LocalPlace),
    /// A lease in Redis.
    Shared(#[expect(dead_code, reason = "held, never read")] Lease),
}

/// A place in a `ConnCounter`, freed when dropped.
struct LocalPlace {
    counter: Arc<ConnCounter>,
    key: Box<[u8]>,
}

impl ConnGuard {
    /// A place that is a lease in Redis.
    pub(crate) fn shared(lease: Lease) -> ConnGuard {
        ConnGuard(Place::Shared(lease))
    }
}

impl ConnCounter {
    /// A place for `key` if fewer than `max` are held.
    pub(crate) fn try_acquire(self: &Arc<Self>, key: &[u8], max: usize) -> Option<ConnGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key.into()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ConnGuard(Place::Local(LocalPlace { counter: self.clone(), key: key.into() })))
    }

    /// Keys with requests in flight.
    pub fn keys(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|c| **c > 0).count()
    }
}

impl Drop for LocalPlace {
    fn drop(&mut self) {
        let mut counts = self.counter.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_per_key_and_freed_on_drop() {
        let counter = Arc::new(ConnCounter::default());
        let first = counter.try_acquire(b"a", 2).unwrap();
        let _second = counter.try_acquire(b"a", 2).unwrap();
        assert!(counter.try_acquire(b"a", 2).is_none());
        assert!(counter.try_acquire(b"b", 2).is_some(), "other keys are counted apart");
        drop(first);
        assert!(counter.try_acquire(b"a", 2).is_some());
    }
}

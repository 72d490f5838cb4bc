//! Choosing among an upstream's servers. `round_robin` takes them in turn, as nginx does by default;
//! `least_inflight` takes the less loaded of two random servers (power of two choices), load being
//! requests in flight over `max_inflight`, ties broken by a moving average of time to first byte.
//! A stream that lasts a minute weighs as much as it costs, which round robin cannot see.

use serde::Deserialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `balance = "round_robin" | "least_inflight"` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn (nginx's default).
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight load, then latency.
    LeastInflight,
}

/// What `least_inflight` knows of one server; shared by every worker.
#[derive(Debug, Default)]
pub struct ServerLoad {
    inflight: AtomicUsize,
    /// Moving average of the time to the response head, in microseconds (0: no sample yet).
    head_ewma_us: AtomicU64,
}

impl ServerLoad {
    /// Counts a request in flight until the returned guard is dropped (its response ended).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Records how long a response head took.
    pub fn observe_head(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.head_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
        self.head_ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Load for comparison: in flight per slot (scaled), then latency; a server that never answered
    /// yet loses ties, so one that holds requests without answering is not preferred.
    fn rank(&self, max_inflight: Option<usize>) -> (u64, u64) {
        let inflight = self.inflight() as u64 * 1000;
        let per_slot = max_inflight.map_or(inflight, |max| inflight / max.max(1) as u64);
        let latency = match self.head_ewma_us.load(Ordering::Relaxed) {
            0 => u64::MAX,
            ewma => ewma,
        };
        (per_slot, latency)
    }
}

/// A request counted in flight on a server.
#[derive(Debug)]
pub struct InFlight(Arc<ServerLoad>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The less loaded of two distinct random candidates (the only one when there is one).
pub fn least_loaded<'a>(
    candidates: &[usize],
    load: impl Fn(usize) -> (&'a ServerLoad, Option<usize>),
) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let first = fastrand::usize(..n);
            let second = (first + 1 + fastrand::usize(..n - 1)) % n;
            let (a, b) = (candidates[first], candidates[second]);
            let rank = |index: usize| {
                let (server, max) = load(index);
                server.rank(max)
            };
            Some(if rank(b) < rank(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_less_loaded_of_two_wins_and_latency_breaks_ties() {
        let loads: Vec<Arc<ServerLoad>> = (0..2).map(|_| Arc::new(ServerLoad::default())).collect();
        let _busy = [loads[0].start(), loads[0].start()];
        let _one = loads[1].start();
        for _ in 0..20 {
            assert_eq!(least_loaded(&[0, 1], |i| (&*loads[i], None)), Some(1));
        }
        // Per slot: 2 of 8 is less loaded than 1 of 1.
        for _ in 0..20 {
            assert_eq!(least_loaded(&[0, 1], |i| (&*loads[i], Some(if i == 0 { 8 } else { 1 }))), Some(0));
        }
        let idle: Vec<Arc<ServerLoad>> = (0..2).map(|_| Arc::new(ServerLoad::default())).collect();
        idle[0].observe_head(Duration::from_millis(300));
        idle[1].observe_head(Duration::from_millis(30));
        for _ in 0..20 {
            assert_eq!(least_loaded(&[0, 1], |i| (&*idle[i], None)), Some(1));
        }
    }
}

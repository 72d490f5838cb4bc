//! Choosing among an upstream's servers. `round_robin` takes them in turn, as nginx does by default
//! (by `weight` with nginx's smooth weighted round robin); `least_inflight` takes the less loaded of
//! two random servers (power of two choices), load being requests in flight over `max_inflight`, ties
//! broken by a moving average of time to first byte — a stream that lasts a minute weighs as much as it
//! costs, which round robin cannot see; `hash` keeps a key (client, session, API key) on one server by
//! consistent hashing with bounded load, so one hot key cannot sink its server.

use crate::config::HashKey;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Balancing's side of the config's hash key: hashing a request by it.
impl HashKey {
    /// The hash of this request's key; requests without one get `None` (then any server will do).
    /// `body` is the request's body when it was read whole (`hash_key = "image"` needs it).
    pub(crate) fn of(
        &self,
        headers: &http::HeaderMap,
        client_ip: &http::HeaderValue,
        body: Option<&[u8]>,
    ) -> Option<u64> {
        match self {
            HashKey::ClientIp => Some(hash(client_ip.as_bytes())),
            HashKey::Image => body.and_then(crate::images::affinity_key).map(hash),
            HashKey::Header(name) => headers.get(name).map(|v| hash(v.as_bytes())),
            HashKey::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key == name)
                .map(|(_, value)| hash(value.as_bytes())),
        }
    }
}

/// nginx's smooth weighted round robin: each pick adds every eligible server's weight to its current
/// weight, takes the largest, and subtracts the total from it; weights 5, 1, 1 give a a b a c a a.
#[derive(Debug)]
pub(super) struct Weighted {
    weights: Vec<i64>,
    current: std::sync::Mutex<Vec<i64>>,
}

impl Weighted {
    /// State for these weights.
    pub(super) fn new(weights: Vec<u32>) -> Weighted {
        let current = std::sync::Mutex::new(vec![0; weights.len()]);
        Weighted { weights: weights.into_iter().map(i64::from).collect(), current }
    }

    /// The next eligible server.
    pub(super) fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (index, weight) in self.weights.iter().enumerate() {
            if !eligible(index) {
                continue;
            }
            current[index] += weight;
            total += weight;
            if best.is_none_or(|b| current[index] > current[b]) {
                best = Some(index);
            }
        }
        let chosen = best?;
        current[chosen] -= total;
        Some(chosen)
    }
}

/// A consistent-hash ring: 100 points per unit of weight for each server.
#[derive(Debug)]
pub(super) struct Ring {
    points: Vec<(u64, usize)>,
}

/// Lets a server carry 25 % more than the average before the ring moves a key on.
const LOAD_BOUND: f64 = 1.25;

impl Ring {
    /// The ring of servers named by `authorities`, with `weights`.
    pub(super) fn new(authorities: &[String], weights: &[u32]) -> Ring {
        let mut points = Vec::new();
        for (index, (authority, weight)) in authorities.iter().zip(weights).enumerate() {
            for replica in 0..100 * weight.max(&1) {
                points.push((hash(format!("{authority}#{replica}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The server for `key`: the first eligible one clockwise whose load is within the bound.
    pub(super) fn pick(
        &self,
        key: u64,
        eligible: impl Fn(usize) -> bool,
        inflight: impl Fn(usize) -> usize,
        servers: usize,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..servers).filter(|&i| eligible(i)).collect();
        if candidates.is_empty() {
            return None;
        }
        let total: usize = candidates.iter().map(|&i| inflight(i)).sum();
        let bound = ((total + 1) as f64 * LOAD_BOUND / candidates.len() as f64).ceil() as usize;
        let start = self.points.partition_point(|(point, _)| *point < key);
        let walk = self.points[start..].iter().chain(&self.points[..start]);
        let mut first_eligible = None;
        for &(_, index) in walk {
            if !eligible(index) {
                continue;
            }
            first_eligible.get_or_insert(index);
            if inflight(index) < bound {
                return Some(index);
            }
        }
        first_eligible
    }
}

/// A stable 64-bit hash (SipHash with fixed keys): the same key maps to the same point in every
/// worker and after every reload.
pub(super) fn hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(bytes)
}

/// What the gateway knows of one server's load, and whether it is being drained; shared by every
/// worker and kept across reloads.
#[derive(Debug)]
pub struct ServerLoad {
    origin: tokio::time::Instant,
    /// 0, or 1 + the millisecond (since `origin`) after which its streams are cut (drain).
    drain_deadline_ms: AtomicU64,
    /// Drained through the admin API: out of rotation whatever the config says, across reloads.
    drained_by_hand: std::sync::atomic::AtomicBool,
    inflight: AtomicUsize,
    /// Moving average of the time to the response head, in microseconds (0: no sample yet).
    head_ewma_us: AtomicU64,
    /// What the server itself last reported (`load_metrics`).
    pub reported: super::metrics_scrape::Reported,
}

impl Default for ServerLoad {
    fn default() -> Self {
        ServerLoad {
            origin: tokio::time::Instant::now(),
            drain_deadline_ms: AtomicU64::new(0),
            drained_by_hand: std::sync::atomic::AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            head_ewma_us: AtomicU64::new(0),
            reported: Default::default(),
        }
    }
}

impl ServerLoad {
    /// The server leaves rotation (drained or removed): its streams may run for `grace`, then are cut.
    /// A drain already under way keeps its deadline.
    pub(crate) fn start_drain(&self, grace: Duration) {
        let deadline = u64::try_from((self.origin.elapsed() + grace).as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self.drain_deadline_ms.compare_exchange(0, deadline, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The server is back in rotation.
    pub(crate) fn stop_drain(&self) {
        self.drain_deadline_ms.store(0, Ordering::Release);
    }

    /// Takes the server out of rotation by hand (admin API), or puts it back; its streams get `grace`.
    pub(crate) fn drain_by_hand(&self, drained: bool, grace: Duration) {
        self.drained_by_hand.store(drained, Ordering::Release);
        if drained {
            self.start_drain(grace);
        } else {
            self.stop_drain();
        }
    }

    /// Whether the admin API drained this server.
    pub(crate) fn drained_by_hand(&self) -> bool {
        self.drained_by_hand.load(Ordering::Acquire)
    }

    /// When streams on this server are cut, if it is draining.
    pub(crate) fn drain_deadline(&self) -> Option<tokio::time::Instant> {
        let ms = self.drain_deadline_ms.load(Ordering::Acquire).checked_sub(1)?;
        Some(self.origin + Duration::from_millis(ms))
    }

    /// Counts a request in flight until the returned guard is dropped (its response ended).
    pub(crate) fn start(self: &Arc<Self>) -> ServerInFlight {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        ServerInFlight(self.clone())
    }

    /// Records how long a response head took.
    pub(crate) fn observe_head(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.head_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
        self.head_ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Load for comparison: the server's own report when scraped (stale: saturated), then in flight
    /// per slot (scaled), then latency; a server that never answered yet loses ties, so one that holds
    /// requests without answering is not preferred.
    fn rank(&self, max_inflight: Option<usize>, stale_after: Option<Duration>) -> (u64, u64, u64) {
        let reported = stale_after.map_or(0, |stale| self.reported.score(stale).unwrap_or(u64::MAX));
        let inflight = self.inflight() as u64 * 1000;
        let per_slot = max_inflight.map_or(inflight, |max| inflight / max.max(1) as u64);
        let latency = match self.head_ewma_us.load(Ordering::Relaxed) {
            0 => u64::MAX,
            ewma => ewma,
        };
        (reported, per_slot, latency)
    }
}

/// A request counted in flight on a server.
#[derive(Debug)]
pub(crate) struct ServerInFlight(Arc<ServerLoad>);

impl Drop for ServerInFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The less loaded of two distinct random candidates (the only one when there is one).
pub(super) fn least_loaded<'a>(
    candidates: &[usize],
    load: impl Fn(usize) -> (&'a ServerLoad, Option<usize>),
    stale_after: Option<Duration>,
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
                server.rank(max, stale_after)
            };
            Some(if rank(b) < rank(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_round_robin_spreads_like_nginx() {
        let weighted = Weighted::new(vec![5, 1, 1]);
        let picks: String = (0..7).map(|_| ["a", "b", "c"][weighted.pick(|_| true).unwrap()]).collect();
        assert_eq!(picks, "aabacaa");
        assert_eq!(weighted.pick(|i| i == 2), Some(2));
    }

    #[test]
    fn the_ring_keeps_keys_in_place_and_bounds_a_hot_server() {
        let ring = Ring::new(&["a:1".into(), "b:1".into(), "c:1".into()], &[1, 1, 1]);
        let idle = |_: usize| 0;
        let key = hash(b"session-42");
        let home = ring.pick(key, |_| true, idle, 3).unwrap();
        assert_eq!(ring.pick(key, |_| true, idle, 3), Some(home), "stable");
        // Taking another server out does not move this key.
        let other = (home + 1) % 3;
        assert_eq!(ring.pick(key, |i| i != other, idle, 3), Some(home));
        // Its home at 10 in flight while the others idle: the key moves on.
        let busy = |i: usize| if i == home { 10 } else { 0 };
        assert_ne!(ring.pick(key, |_| true, busy, 3), Some(home));
        // Keys spread over all servers.
        let mut seen = [0; 3];
        for k in 0..300u32 {
            seen[ring.pick(hash(&k.to_be_bytes()), |_| true, idle, 3).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn the_less_loaded_of_two_wins_and_latency_breaks_ties() {
        let loads: Vec<Arc<ServerLoad>> = (0..2).map(|_| Arc::new(ServerLoad::default())).collect();
        let _busy = [loads[0].start(), loads[0].start()];
        let _one = loads[1].start();
        for _ in 0..20 {
            assert_eq!(least_loaded(&[0, 1], |i| (&*loads[i], None), None), Some(1));
        }
        // Per slot: 2 of 8 is less loaded than 1 of 1.
        for _ in 0..20 {
            assert_eq!(least_loaded(&[0, 1], |i| (&*loads[i], Some(if i == 0 { 8 } else { 1 })), None), Some(0));
        }
        let idle: Vec<Arc<ServerLoad>> = (0..2).map(|_| Arc::new(ServerLoad::default())).collect();
        idle[0].observe_head(Duration::from_millis(300));
        idle[1].observe_head(Duration::from_millis(30));
        for _ in 0..20 {
            assert_eq!(least_loaded(&[0, 1], |i| (&*idle[i], None), None), Some(1));
        }
    }
}

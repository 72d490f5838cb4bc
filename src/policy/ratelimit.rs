//! Request rate limits with nginx's `limit_req` semantics, exactly. Per key a zone keeps `excess`
//! (in milli-requests) and `last` (ms): a request computes
//! `excess = max(0, excess - rate * elapsed + 1000)`; above `burst * 1000` it is rejected and the state
//! is left as it was; otherwise the state is updated and the request is delayed by
//! `(excess - delay * 1000) / rate` unless `nodelay`. A new key's first request passes. Keys are
//! bounded per zone, least recently used evicted first, so a flood of addresses cannot grow memory.

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Per-key state, as nginx's `ngx_http_limit_req_node_t`; `check` computes it, `commit` stores it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyState {
    /// Milli-requests above the rate.
    excess: u64,
    /// When the state was last updated, ms since the zone started.
    last_ms: u64,
}

/// A `[limit_zone.NAME]`: the rate and the state of every key seen.
pub(crate) struct Zone {
    /// Requests per second times 1000 (nginx's `ctx->rate`).
    rate_milli: u64,
    /// Record what would happen without delaying or rejecting anything (`dry_run`).
    pub(crate) dry_run: bool,
    start: Instant,
    keys: Mutex<LruCache<Box<[u8]>, KeyState>>,
}

/// One `limit_req` of a location.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    /// Requests allowed above the rate, in requests (nginx `burst`).
    pub(crate) burst: u64,
    /// Requests above the rate served without delay (nginx `delay`); `None` is `nodelay`.
    pub(crate) delay: Option<u64>,
}

impl Limit {
    /// How long an accepted request whose key's excess is now `excess` (milli-requests) waits, at
    /// `rate_milli`: nothing with `nodelay` or within `delay`, else until the excess above it drained.
    pub(crate) fn delay_at(&self, excess: u64, rate_milli: u64) -> Duration {
        match self.delay {
            None => Duration::ZERO,
            Some(free) if excess <= free * 1000 => Duration::ZERO,
            Some(free) => Duration::from_millis((excess - free * 1000) * 1000 / rate_milli.max(1)),
        }
    }
}

/// What a zone says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it after waiting this long (zero: at once).
    Accept(Duration),
    /// Refuse it; the client may retry after this long.
    Reject(Duration),
}

impl Zone {
    /// A zone of `rate_milli` milli-requests per second holding at most `max_keys` keys.
    pub(crate) fn new(rate_milli: u64, max_keys: usize, dry_run: bool) -> Zone {
        let capacity = NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN);
        Zone {
            rate_milli: rate_milli.max(1),
            dry_run,
            start: Instant::now(),
            keys: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Whether a reload can keep this zone's state for a zone with these settings.
    pub(crate) fn same_settings(&self, rate_milli: u64, max_keys: usize, dry_run: bool) -> bool {
        let capacity = self.keys.lock().unwrap_or_else(|p| p.into_inner()).cap().get();
        self.rate_milli == rate_milli.max(1) && capacity == max_keys.max(1) && self.dry_run == dry_run
    }

    /// The verdict for a request with `key`, and for an accepted one the state to `commit`. Nothing is
    /// stored yet: a location with several limits commits only when none of them rejects.
    pub(crate) fn check(&self, key: &[u8], limit: Limit) -> (Verdict, Option<KeyState>) {
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = keys.get(key).copied() else {
            return (Verdict::Accept(Duration::ZERO), Some(KeyState { excess: 0, last_ms: now_ms }));
        };
        let elapsed = now_ms.saturating_sub(state.last_ms);
        let drained = self.rate_milli.saturating_mul(elapsed) / 1000;
        let excess = (state.excess + 1000).saturating_sub(drained);
        let burst = limit.burst * 1000;
        if excess > burst {
            // Time until the excess falls back within the burst.
            let wait_ms = (excess - burst).saturating_mul(1000).div_ceil(self.rate_milli);
            return (Verdict::Reject(Duration::from_millis(wait_ms)), None);
        }
        let last_ms = if elapsed > 0 { now_ms } else { state.last_ms };
        (Verdict::Accept(limit.delay_at(excess, self.rate_milli)), Some(KeyState { excess, last_ms }))
    }

    /// Requests per second times 1000.
    pub(crate) fn rate_milli(&self) -> u64 {
        self.rate_milli
    }

    /// Where `key` stands now, for OpenAI's request headers: requests per minute, requests that would
    /// still pass at once with `burst`, and milliseconds until its excess has drained.
    pub(crate) fn standing(&self, key: &[u8], burst: u64) -> (u64, u64, u64) {
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let excess = self.keys.lock().unwrap_or_else(|p| p.into_inner()).peek(key).map_or(0, |state| {
            let drained = self.rate_milli.saturating_mul(now_ms.saturating_sub(state.last_ms)) / 1000;
            state.excess.saturating_sub(drained)
        });
        let per_minute = self.rate_milli * 60 / 1000;
        let remaining = (burst * 1000).saturating_sub(excess) / 1000;
        (per_minute, remaining, excess.saturating_mul(1000).div_ceil(self.rate_milli))
    }

    /// Stores the state `check` computed for an accepted request.
    pub(crate) fn commit(&self, key: &[u8], state: KeyState) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).put(key.into(), state);
    }

    /// Keys held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rate;

    /// Replays arrivals (ms since start) and returns accept-delay (ms) or `None` for a rejection.
    async fn replay(rate: &str, limit: Limit, arrivals: &[u64]) -> Vec<Option<u64>> {
        let zone = Zone::new(parse_rate(rate).unwrap(), 100, false);
        let start = Instant::now();
        let mut out = Vec::new();
        for &at in arrivals {
            tokio::time::sleep_until(start + Duration::from_millis(at)).await;
            match zone.check(b"1.2.3.4", limit) {
                (Verdict::Accept(delay), Some(state)) => {
                    zone.commit(b"1.2.3.4", state);
                    out.push(Some(delay.as_millis() as u64));
                }
                _ => out.push(None),
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_seeds_10rps_burst_20_nodelay_rejects_the_22nd_immediate_request() {
        let limit = Limit { burst: 20, delay: None };
        let mut arrivals = vec![0; 22];
        arrivals.push(100); // one rate interval later, one more fits
        arrivals.push(100);
        let verdicts = replay("10r/s", limit, &arrivals).await;
        assert!(verdicts[..21].iter().all(|v| *v == Some(0)), "{verdicts:?}");
        assert_eq!(verdicts[21], None, "the 22nd is rejected");
        assert_eq!(verdicts[22], Some(0));
        assert_eq!(verdicts[23], None);
    }

    #[tokio::test(start_paused = true)]
    async fn without_nodelay_requests_above_the_rate_are_spaced() {
        // 10 r/s, burst 5: the k-th immediate request waits k * 100 ms; the 7th is rejected.
        let verdicts = replay("10r/s", Limit { burst: 5, delay: Some(0) }, &[0, 0, 0, 0, 0, 0, 0]).await;
        assert_eq!(verdicts, vec![Some(0), Some(100), Some(200), Some(300), Some(400), Some(500), None]);
        // delay=2: the first two above the rate go at once.
        let verdicts = replay("10r/s", Limit { burst: 5, delay: Some(2) }, &[0, 0, 0, 0, 0]).await;
        assert_eq!(verdicts, vec![Some(0), Some(0), Some(0), Some(100), Some(200)]);
    }

    #[tokio::test(start_paused = true)]
    async fn excess_drains_at_the_rate_and_per_minute_rates_work() {
        // 60 r/m = 1 r/s, burst 1: at 0 ok, at 0 ok (excess 1000), at 500 rejected (1500 > 1000),
        // at 1000 ok (excess 1000 - 1000 + 1000).
        let verdicts = replay("60r/m", Limit { burst: 1, delay: None }, &[0, 0, 500, 1000]).await;
        assert_eq!(verdicts, vec![Some(0), Some(0), None, Some(0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_keys_standing_counts_down_and_drains() {
        let zone = Zone::new(parse_rate("60r/m").unwrap(), 10, false);
        let limit = Limit { burst: 2, delay: None };
        assert_eq!(zone.standing(b"k", 2), (60, 2, 0), "an unseen key may send its burst");
        for _ in 0..2 {
            let (_, state) = zone.check(b"k", limit);
            zone.commit(b"k", state.unwrap());
        }
        // The first request of a key passes without excess; the second leaves 1000 milli-requests.
        assert_eq!(zone.standing(b"k", 2), (60, 1, 1000));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(zone.standing(b"k", 2), (60, 1, 500));
    }

    #[test]
    fn keys_are_bounded_least_recently_used_first() {
        let zone = Zone::new(10_000, 2, false);
        for key in [b"a", b"b", b"c"] {
            let (_, state) = zone.check(key, Limit { burst: 0, delay: None });
            zone.commit(key, state.unwrap());
        }
        assert_eq!(zone.len(), 2);
    }
}

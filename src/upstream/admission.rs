//! Admission control: at most `max_inflight` requests, and at most `max_inflight_tokens` estimated
//! tokens, at once on each server of an upstream; the rest wait in one queue per upstream (bounded
//! in length and in time), by priority, then arrival. A request holds its slot until its response
//! ends or its client leaves; what it frees goes straight to the waiters at the head of the queue
//! that now fit. This is what keeps a burst of image requests from running a GPU out of memory.

use super::shared_slots::SharedSlot;
use crate::error::Rejection;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

struct Waiter {
    id: u64,
    /// Higher goes first; equal priorities keep arrival order.
    priority: u8,
    tokens: u64,
    slot: oneshot::Sender<Permit>,
}

/// How one request asks for a slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// Take the free server with the fewest in flight per slot, instead of the next in turn.
    pub(crate) least_loaded: bool,
    /// Wait in the queue when no slot is free (else answer `QueueFull` at once).
    pub(crate) wait: bool,
    /// Place in the queue: higher is served first (`queue.priority_header`).
    pub(crate) priority: u8,
    /// The server to take if it has a free slot (the hash ring's choice).
    pub(crate) prefer: Option<usize>,
    /// The request's estimated tokens, held against `max_inflight_tokens` (0: not estimated).
    pub(crate) tokens: u64,
}

/// What one server takes at once (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ServerLimit {
    /// `max_inflight`: requests.
    pub(crate) requests: Option<usize>,
    /// `max_inflight_tokens`: estimated tokens. A request estimated above it runs alone.
    pub(crate) tokens: Option<u64>,
}

impl ServerLimit {
    /// Whether either limit is set.
    pub(crate) fn is_set(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }
}

struct State {
    inflight: Vec<usize>,
    /// Estimated tokens held per server.
    tokens: Vec<u64>,
    waiters: VecDeque<Waiter>,
    next_waiter_id: u64,
    /// Round-robin cursor over servers with a free slot.
    cursor: usize,
    /// Moving average of the time between two freed slots, for `Retry-After`.
    drain_interval: Option<Duration>,
    last_release: Option<Instant>,
}

/// The admission state of one upstream.
pub struct Admission {
    /// Per server, in the upstream's server order.
    limits: Vec<ServerLimit>,
    queue_max: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
}

/// A slot on one server, released (or handed to the waiters) when dropped.
pub(crate) struct Permit {
    admission: Arc<Admission>,
    server: usize,
    tokens: u64,
    armed: bool,
    /// Its lease in Redis, with `shared_admission` (given back when dropped).
    shared: Option<SharedSlot>,
}

impl Permit {
    /// Index of the server this slot is on, in the upstream's server order.
    pub(crate) fn server(&self) -> usize {
        self.server
    }

    /// The slot, holding `shared` too (its lease in Redis) until it is released.
    pub(crate) fn with_shared(mut self, shared: SharedSlot) -> Permit {
        self.shared = Some(shared);
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.admission.release(self.server, self.tokens, true);
        }
    }
}

/// Whether a request of `tokens` fits on a server holding `inflight` requests of `held` tokens
/// under `limit`: a free request slot, and room for its tokens (or nothing in flight: a request
/// estimated above the limit runs alone rather than never; alone, not beside one whose tokens were
/// not estimated).
pub(crate) fn fits(limit: ServerLimit, inflight: usize, held: u64, tokens: u64) -> bool {
    limit.requests.is_none_or(|max| inflight < max)
        && limit.tokens.is_none_or(|max| inflight == 0 || held.saturating_add(tokens) <= max)
}

impl Admission {
    /// Admission for servers with these limits.
    pub(crate) fn new(limits: Vec<ServerLimit>, queue_max: usize, queue_timeout: Duration) -> Arc<Admission> {
        let state = State {
            inflight: vec![0; limits.len()],
            tokens: vec![0; limits.len()],
            waiters: VecDeque::new(),
            next_waiter_id: 0,
            cursor: 0,
            drain_interval: None,
            last_release: None,
        };
        Arc::new(Admission { limits, queue_max, queue_timeout, state: Mutex::new(state) })
    }

    /// Whether this admission can carry over a reload to servers with `limits` and this queue.
    pub(crate) fn same_shape(&self, limits: &[ServerLimit], queue_max: usize, queue_timeout: Duration) -> bool {
        self.limits == limits && self.queue_max == queue_max && self.queue_timeout == queue_timeout
    }

    /// How long a request may wait for a slot (`queue.timeout`).
    pub(crate) fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Whether some server limits estimated tokens: requests to it are estimated before they go.
    pub(crate) fn weighs_tokens(&self) -> bool {
        self.limits.iter().any(|limit| limit.tokens.is_some())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoning only means a panic elsewhere while holding it; the counters stay consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fits(&self, state: &State, server: usize, tokens: u64) -> bool {
        fits(self.limits[server], state.inflight[server], state.tokens[server], tokens)
    }

    /// A slot at once on an `eligible` server where the request fits (in turn, or the least loaded
    /// per slot), unless others wait before it; else (when `wait`) a place in the queue, waiting up
    /// to `queue.timeout`. Dropping the returned future (the client left) leaves the queue at once.
    /// Without `wait`, no free slot answers `QueueFull` at once.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        eligible: impl Fn(usize) -> bool,
        ask: Ask,
    ) -> Result<Permit, Rejection> {
        let Ask { least_loaded, wait, priority, prefer, tokens } = ask;
        let (id, slot) = {
            let mut state = self.lock();
            // A waiter as important goes first: a request heavy in tokens is not passed for ever by
            // lighter ones that fit in what is left.
            let overtakes = !wait || state.waiters.front().is_none_or(|head| head.priority < priority);
            if overtakes {
                let preferred = prefer.filter(|&p| self.fits(&state, p, tokens));
                if let Some(server) =
                    preferred.or_else(|| self.free_server(&mut state, &eligible, least_loaded, tokens))
                {
                    return Ok(self.hold(&mut state, server, tokens));
                }
            }
            if !wait || state.waiters.len() >= self.queue_max {
                return Err(Rejection::QueueFull { retry_after: retry_after(&state) });
            }
            let id = state.next_waiter_id;
            state.next_waiter_id += 1;
            let (tx, rx) = oneshot::channel();
            let position = state.waiters.iter().position(|w| w.priority < priority).unwrap_or(state.waiters.len());
            state.waiters.insert(position, Waiter { id, priority, tokens, slot: tx });
            (id, rx)
        };
        let _leave_queue = LeaveQueue { admission: self, id };
        match tokio::time::timeout(self.queue_timeout, slot).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Rejection::QueueTimeout { retry_after: retry_after(&self.lock()) }),
        }
    }

    fn hold(self: &Arc<Self>, state: &mut State, server: usize, tokens: u64) -> Permit {
        state.inflight[server] += 1;
        state.tokens[server] += tokens;
        Permit { admission: self.clone(), server, tokens, armed: true, shared: None }
    }

    fn free_server(
        &self,
        state: &mut State,
        eligible: &impl Fn(usize) -> bool,
        least_loaded: bool,
        tokens: u64,
    ) -> Option<usize> {
        let count = self.limits.len();
        let free = |server: &usize| eligible(*server) && self.fits(state, *server, tokens);
        let mut in_turn = (0..count).map(|offset| (state.cursor + offset) % count);
        let server = if least_loaded {
            // Fewest in flight per slot; unlimited servers count their requests as if they had one slot.
            in_turn.filter(free).min_by_key(|&server| {
                state.inflight[server] * 1000 / self.limits[server].requests.unwrap_or(1).max(1)
            })?
        } else {
            in_turn.find(free)?
        };
        state.cursor = (server + 1) % count;
        Some(server)
    }

    /// Frees a slot of `tokens` on `server` and hands what is free to the waiters that fit. A slot
    /// that `ended` a request counts for the drain rate `Retry-After` tells; one its waiter left
    /// before taking it does not.
    fn release(self: &Arc<Self>, server: usize, tokens: u64, ended: bool) {
        let admitted = {
            let mut state = self.lock();
            if ended {
                let now = Instant::now();
                if let Some(last) = state.last_release.replace(now) {
                    let interval = now - last;
                    state.drain_interval = Some(state.drain_interval.map_or(interval, |avg| (avg * 7 + interval) / 8));
                }
            }
            state.inflight[server] -= 1;
            state.tokens[server] -= tokens;
            self.admit_waiters(&mut state, Some(server))
        };
        self.hand_over(admitted);
    }

    /// Takes the waiters at the head of the queue, in order, while each fits on a server (`freed`
    /// first, the server that made room), holding their slots.
    fn admit_waiters(self: &Arc<Self>, state: &mut State, freed: Option<usize>) -> Vec<(Waiter, Permit)> {
        let mut admitted = Vec::new();
        while let Some(head) = state.waiters.front() {
            let tokens = head.tokens;
            let on_freed = freed.filter(|&server| self.fits(state, server, tokens));
            let Some(server) = on_freed.or_else(|| self.free_server(state, &|_| true, false, tokens)) else { break };
            let permit = self.hold(state, server, tokens);
            admitted.extend(state.waiters.pop_front().map(|waiter| (waiter, permit)));
        }
        admitted
    }

    /// Gives admitted waiters their slots, outside the lock. The slot of a waiter that left meanwhile
    /// goes to the next.
    fn hand_over(self: &Arc<Self>, admitted: Vec<(Waiter, Permit)>) {
        for (waiter, permit) in admitted {
            if let Err(mut unclaimed) = waiter.slot.send(permit) {
                unclaimed.armed = false;
                self.release(unclaimed.server, unclaimed.tokens, false);
            }
        }
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Requests holding a slot now, per server.
    pub fn inflight(&self) -> Vec<usize> {
        self.lock().inflight.clone()
    }

    /// Estimated tokens held now, per server.
    pub fn inflight_tokens(&self) -> Vec<u64> {
        self.lock().tokens.clone()
    }
}

/// Removes a waiter from the queue when its wait ends for any reason but being admitted; the head
/// leaving may let those behind it in.
struct LeaveQueue<'a> {
    admission: &'a Arc<Admission>,
    id: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let admitted = {
            let mut state = self.admission.lock();
            match state.waiters.iter().position(|w| w.id == self.id) {
                Some(index) => {
                    state.waiters.remove(index);
                    if index == 0 {
                        self.admission.admit_waiters(&mut state, None)
                    } else {
                        Vec::new()
                    }
                }
                None => Vec::new(),
            }
        };
        self.admission.hand_over(admitted);
    }
}

/// Seconds until the queue ahead has drained at the recent rate: at least 1, at most 60.
fn retry_after(state: &State) -> u64 {
    let per_slot = state.drain_interval.unwrap_or(Duration::from_secs(1));
    let ahead = u32::try_from(state.waiters.len() + 1).unwrap_or(u32::MAX);
    (per_slot * ahead).as_secs_f64().ceil().clamp(1.0, 60.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_SLOT: ServerLimit = ServerLimit { requests: Some(1), tokens: None };
    const ASK: Ask = Ask { least_loaded: false, wait: true, priority: 1, prefer: None, tokens: 0 };

    #[tokio::test(start_paused = true)]
    async fn higher_priority_waiters_go_first_and_equal_ones_in_order() {
        let admission = Admission::new(vec![ONE_SLOT], 8, Duration::from_secs(60));
        let held = admission.acquire(|_| true, ASK).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, priority) in [("low", 0), ("normal-1", 1), ("high", 2), ("normal-2", 1)] {
            let (admission, order) = (admission.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let permit = admission.acquire(|_| true, Ask { priority, ..ASK }).await.unwrap();
                order.lock().unwrap().push(name);
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["high", "normal-1", "normal-2", "low"]);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_capped_and_handed_to_waiters_in_order() {
        let admission = Admission::new(vec![ONE_SLOT, ONE_SLOT], 4, Duration::from_secs(10));
        let a = admission.acquire(|_| true, ASK).await.unwrap();
        let b = admission.acquire(|_| true, ASK).await.unwrap();
        assert_ne!(a.server(), b.server(), "the second request goes to the free server");
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (admission, order) = (admission.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let permit = admission.acquire(|_| true, ASK).await.unwrap();
                order.lock().unwrap().push(i);
                permit
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(admission.queued(), 3);
        drop(a);
        let first = waiters.remove(0).await.unwrap();
        drop(b);
        let second = waiters.remove(0).await.unwrap();
        assert_eq!(*order.lock().unwrap(), vec![0, 1]);
        assert_eq!(admission.inflight(), vec![1, 1]);
        drop((first, second));
        waiters.remove(0).await.unwrap();
        assert_eq!(admission.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_rejects_at_once_and_a_long_wait_times_out() {
        let admission = Admission::new(vec![ONE_SLOT], 1, Duration::from_secs(2));
        let _held = admission.acquire(|_| true, ASK).await.unwrap();
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move {
                let started = Instant::now();
                let result = admission.acquire(|_| true, ASK).await.map(|_| ());
                (result, started.elapsed())
            }
        });
        tokio::task::yield_now().await;
        assert!(matches!(admission.acquire(|_| true, ASK).await.map(|_| ()), Err(Rejection::QueueFull { .. })));
        let (result, waited) = waiting.await.unwrap();
        assert!(matches!(result, Err(Rejection::QueueTimeout { retry_after: 1.. })));
        assert_eq!(waited, Duration::from_secs(2));
        assert_eq!(admission.queued(), 0, "a timed-out request leaves the queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_is_removed_and_never_holds_a_slot() {
        let admission = Admission::new(vec![ONE_SLOT], 8, Duration::from_secs(60));
        let held = admission.acquire(|_| true, ASK).await.unwrap();
        let gone = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire(|_| true, ASK).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(admission.queued(), 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(admission.queued(), 0, "removed at once");
        drop(held);
        assert_eq!(admission.inflight(), vec![0], "the slot is free again");
    }

    #[test]
    fn a_request_fits_where_both_limits_leave_room_or_it_runs_alone() {
        let limit = |requests, tokens| ServerLimit { requests, tokens };
        // (limit, in flight, tokens held, request's tokens, fits)
        let table = [
            (limit(None, None), 100, 1 << 40, 1 << 40, true),
            (limit(Some(2), None), 1, 0, 0, true),
            (limit(Some(2), None), 2, 0, 0, false),
            (limit(None, Some(1000)), 3, 600, 400, true),
            (limit(None, Some(1000)), 3, 600, 401, false),
            (limit(None, Some(1000)), 0, 0, 5000, true),
            (limit(None, Some(1000)), 1, 1, 5000, false),
            // Beside a request whose tokens were not estimated, it would not run alone.
            (limit(None, Some(1000)), 1, 0, 5000, false),
            (limit(None, Some(1000)), 1, 0, 1000, true),
            (limit(Some(1), Some(1000)), 1, 0, 10, false),
            (limit(None, Some(1000)), 1, u64::MAX, u64::MAX, false),
        ];
        for (limit, inflight, held, tokens, expected) in table {
            assert_eq!(fits(limit, inflight, held, tokens), expected, "{limit:?} {inflight} {held} {tokens}");
        }
    }

    const TOKENS_1000: ServerLimit = ServerLimit { requests: None, tokens: Some(1000) };

    fn asking(tokens: u64) -> Ask {
        Ask { tokens, ..ASK }
    }

    #[tokio::test(start_paused = true)]
    async fn a_heavy_waiter_is_not_passed_and_its_end_lets_several_light_ones_in() {
        let admission = Admission::new(vec![TOKENS_1000], 8, Duration::from_secs(60));
        let light = admission.acquire(|_| true, asking(300)).await.unwrap();
        let heavy = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire(|_| true, asking(900)).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert_eq!(admission.queued(), 1, "900 more do not fit beside 300");
        let behind = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire(|_| true, asking(100)).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert_eq!(admission.queued(), 2, "100 would fit, but the heavy request waits before it");
        drop(light);
        assert_eq!(
            (admission.inflight_tokens(), admission.queued()),
            (vec![1000], 0),
            "the head and what fits beside it"
        );
        let (heavy, behind) = (heavy.await.unwrap(), behind.await.unwrap());
        let lights: Vec<_> = (0..3)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.acquire(|_| true, asking(300)).await.unwrap() })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(admission.queued(), 3);
        drop(heavy);
        let lights: Vec<_> = futures_util::future::join_all(lights).await;
        assert_eq!(admission.inflight_tokens(), vec![1000], "one end let three in");
        assert_eq!(admission.inflight(), vec![4]);
        drop((behind, lights));
        assert_eq!((admission.inflight(), admission.inflight_tokens()), (vec![0], vec![0]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_above_the_token_limit_runs_alone_and_a_head_that_leaves_lets_the_next_in() {
        let admission = Admission::new(vec![TOKENS_1000], 8, Duration::from_secs(60));
        let huge = admission.acquire(|_| true, asking(5000)).await.unwrap();
        assert_eq!(admission.inflight_tokens(), vec![5000], "an idle server takes it");
        let second_huge = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire(|_| true, asking(5000)).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(huge);
        second_huge.await.unwrap().unwrap();
        let held = admission.acquire(|_| true, asking(500)).await.unwrap();
        let head = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire(|_| true, asking(800)).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        let next = tokio::spawn({
            let admission = admission.clone();
            async move { admission.acquire(|_| true, asking(400)).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert_eq!(admission.queued(), 2);
        head.abort();
        let _ = head.await;
        let next = next.await.unwrap();
        assert_eq!(admission.inflight_tokens(), vec![900], "the client at the head left: the next fits now");
        drop((held, next));
    }

    /// Any order of requests (tokens, priorities), ends and clients leaving, on two servers: no server
    /// ever holds more than its limits (but for one request alone), a waiter at the head never waits
    /// while it fits somewhere, and once all is over nothing is left held.
    #[test]
    fn limits_hold_and_nothing_leaks_under_any_order_of_events() {
        arbtest::arbtest(|u| {
            let limits = [
                ServerLimit { requests: Some(u.int_in_range(1..=4)?), tokens: Some(u.int_in_range(1..=2000)?) },
                ServerLimit { requests: None, tokens: Some(u.int_in_range(1..=2000)?) },
            ];
            let steps: Vec<(u8, u64, u8, usize)> = (0..u.int_in_range(1..=48)?)
                .map(|_| {
                    Ok((u.int_in_range(0..=2)?, u.int_in_range(0..=2500)?, u.int_in_range(0..=2)?, u.arbitrary()?))
                })
                .collect::<arbtest::arbitrary::Result<_>>()?;
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async move {
                let admission = Admission::new(limits.to_vec(), 64, Duration::from_secs(3600));
                let mut tasks: Vec<tokio::task::JoinHandle<Option<Permit>>> = Vec::new();
                let mut held: Vec<Permit> = Vec::new();
                for (action, tokens, priority, pick) in steps {
                    match action {
                        0 => {
                            let admission = admission.clone();
                            let ask = Ask { tokens, priority, ..ASK };
                            tasks.push(tokio::spawn(async move { admission.acquire(|_| true, ask).await.ok() }));
                        }
                        1 if !held.is_empty() => drop(held.swap_remove(pick % held.len())),
                        2 if !tasks.is_empty() => tasks.swap_remove(pick % tasks.len()).abort(),
                        _ => {}
                    }
                    for _ in 0..4 {
                        tokio::task::yield_now().await;
                    }
                    let mut waiting = Vec::new();
                    for task in tasks.drain(..) {
                        match task.is_finished() {
                            true => held.extend(task.await.ok().flatten()),
                            false => waiting.push(task),
                        }
                    }
                    tasks = waiting;
                    let state = admission.lock();
                    for (server, limit) in limits.iter().enumerate() {
                        let (count, tokens) = (state.inflight[server], state.tokens[server]);
                        assert!(limit.requests.is_none_or(|max| count <= max), "{count} requests on {limit:?}");
                        assert!(count <= 1 || limit.tokens.is_none_or(|max| tokens <= max), "{tokens} on {limit:?}");
                    }
                    if let Some(head) = state.waiters.front() {
                        assert!((0..2).all(|s| !admission.fits(&state, s, head.tokens)), "the head waits in vain");
                    }
                }
                for task in tasks {
                    task.abort();
                }
                drop(held);
                tokio::task::yield_now().await;
                assert_eq!((admission.inflight(), admission.inflight_tokens()), (vec![0, 0], vec![0, 0]));
                assert_eq!(admission.queued(), 0);
            });
            Ok(())
        });
    }
}

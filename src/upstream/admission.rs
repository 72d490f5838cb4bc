//! Admission control: at most `max_inflight` requests at once on each server of an upstream; the
//! rest wait in one FIFO queue per upstream (bounded in length and in time). A request holds its
//! slot until its response ends or its client leaves; the freed slot goes straight to the oldest
//! waiter. This is what keeps a burst of image requests from running a GPU out of memory.

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
}

struct State {
    inflight: Vec<usize>,
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
    /// `max_inflight` per server, in the upstream's server order (`None`: unlimited).
    limits: Vec<Option<usize>>,
    queue_max: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
}

/// A slot on one server, released (or handed to the oldest waiter) when dropped.
pub(crate) struct Permit {
    admission: Arc<Admission>,
    server: usize,
    armed: bool,
}

impl Permit {
    /// Index of the server this slot is on, in the upstream's server order.
    pub(crate) fn server(&self) -> usize {
        self.server
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.admission.release(self.server);
        }
    }
}

impl Admission {
    /// Admission for servers with these limits.
    pub(crate) fn new(limits: Vec<Option<usize>>, queue_max: usize, queue_timeout: Duration) -> Arc<Admission> {
        let state = State {
            inflight: vec![0; limits.len()],
            waiters: VecDeque::new(),
            next_waiter_id: 0,
            cursor: 0,
            drain_interval: None,
            last_release: None,
        };
        Arc::new(Admission { limits, queue_max, queue_timeout, state: Mutex::new(state) })
    }

    /// Whether this admission can carry over a reload to servers with `limits` and this queue.
    pub(crate) fn same_shape(&self, limits: &[Option<usize>], queue_max: usize, queue_timeout: Duration) -> bool {
        self.limits == limits && self.queue_max == queue_max && self.queue_timeout == queue_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoning only means a panic elsewhere while holding it; the counters stay consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot at once on an `eligible` server with one free (in turn, or the least loaded per slot); else (when `wait`) a place in the queue,
    /// waiting in FIFO order up to `queue.timeout`. Dropping the returned future (the client left)
    /// leaves the queue at once. Without `wait`, no free slot answers `QueueFull` at once.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        eligible: impl Fn(usize) -> bool,
        ask: Ask,
    ) -> Result<Permit, Rejection> {
        let Ask { least_loaded, wait, priority, prefer } = ask;
        let (id, slot) = {
            let mut state = self.lock();
            let preferred = prefer.filter(|&p| self.limits[p].is_none_or(|max| state.inflight[p] < max));
            if let Some(server) = preferred.or_else(|| self.free_server(&mut state, &eligible, least_loaded)) {
                state.inflight[server] += 1;
                return Ok(Permit { admission: self.clone(), server, armed: true });
            }
            if !wait || state.waiters.len() >= self.queue_max {
                return Err(Rejection::QueueFull { retry_after: retry_after(&state) });
            }
            let id = state.next_waiter_id;
            state.next_waiter_id += 1;
            let (tx, rx) = oneshot::channel();
            let position = state.waiters.iter().position(|w| w.priority < priority).unwrap_or(state.waiters.len());
            state.waiters.insert(position, Waiter { id, priority, slot: tx });
            (id, rx)
        };
        let _leave_queue = LeaveQueue { admission: self, id };
        match tokio::time::timeout(self.queue_timeout, slot).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Rejection::QueueTimeout { retry_after: retry_after(&self.lock()) }),
        }
    }

    fn free_server(&self, state: &mut State, eligible: &impl Fn(usize) -> bool, least_loaded: bool) -> Option<usize> {
        let count = self.limits.len();
        let free =
            |server: &usize| eligible(*server) && self.limits[*server].is_none_or(|max| state.inflight[*server] < max);
        let mut in_turn = (0..count).map(|offset| (state.cursor + offset) % count);
        let server = if least_loaded {
            // Fewest in flight per slot; unlimited servers count their requests as if they had one slot.
            in_turn
                .filter(free)
                .min_by_key(|&server| state.inflight[server] * 1000 / self.limits[server].unwrap_or(1).max(1))?
        } else {
            in_turn.find(free)?
        };
        state.cursor = (server + 1) % count;
        Some(server)
    }

    /// Gives a freed slot to the oldest waiter still waiting, or frees it.
    fn release(self: &Arc<Self>, server: usize) {
        loop {
            let waiter = {
                let mut state = self.lock();
                let now = Instant::now();
                if let Some(last) = state.last_release.replace(now) {
                    let interval = now - last;
                    state.drain_interval = Some(state.drain_interval.map_or(interval, |avg| (avg * 7 + interval) / 8));
                }
                match state.waiters.pop_front() {
                    Some(waiter) => waiter,
                    None => {
                        state.inflight[server] -= 1;
                        return;
                    }
                }
            };
            match waiter.slot.send(Permit { admission: self.clone(), server, armed: true }) {
                Ok(()) => return,
                // That waiter left between our pop and send: the slot goes to the next one.
                Err(mut unclaimed) => unclaimed.armed = false,
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
}

/// Removes a waiter from the queue when its wait ends for any reason but being admitted.
struct LeaveQueue<'a> {
    admission: &'a Admission,
    id: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        if let Some(index) = state.waiters.iter().position(|w| w.id == self.id) {
            state.waiters.remove(index);
        }
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

    const ASK: Ask = Ask { least_loaded: false, wait: true, priority: 1, prefer: None };

    #[tokio::test(start_paused = true)]
    async fn higher_priority_waiters_go_first_and_equal_ones_in_order() {
        let admission = Admission::new(vec![Some(1)], 8, Duration::from_secs(60));
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
        let admission = Admission::new(vec![Some(1), Some(1)], 4, Duration::from_secs(10));
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
        let admission = Admission::new(vec![Some(1)], 1, Duration::from_secs(2));
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
        let admission = Admission::new(vec![Some(1)], 8, Duration::from_secs(60));
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
}

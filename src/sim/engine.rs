//! The simulated model's timing: a continuous-batching engine with `slots` requests running at once
//! (the rest wait FIFO), a prefill whose cost grows with image pixels and prompt tokens, and a decode
//! interval that grows with the number of running streams. Defaults follow the seed (a T4 serving
//! GLM-4.6V-Flash) and `../shared/sim-calibration.md`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Latency model parameters (all adjustable from the command line).
#[derive(Debug, Clone, clap::Args)]
pub struct LatencyModel {
    /// Requests generating at once (batch slots); the rest wait in FIFO order.
    #[arg(long, default_value_t = 8)]
    pub slots: usize,
    /// Fixed prefill cost per request, milliseconds.
    #[arg(long, default_value_t = 120.0)]
    pub prefill_base_ms: f64,
    /// Prefill cost per prompt text token, milliseconds.
    #[arg(long, default_value_t = 0.5)]
    pub prefill_per_token_ms: f64,
    /// Prefill cost per image token (28x28 pixels after the 2x2 merge), milliseconds: 1024x1024 is
    /// 1296 image tokens, about 1.2 s with the defaults, as the seed measured on a T4.
    #[arg(long, default_value_t = 0.83)]
    pub prefill_per_image_token_ms: f64,
    /// Decode interval per output token with one stream running, milliseconds.
    #[arg(long, default_value_t = 25.0)]
    pub decode_ms: f64,
    /// Extra decode interval per additional running stream, as a fraction (8 streams: +17.5 %).
    #[arg(long, default_value_t = 0.025)]
    pub decode_slowdown: f64,
    /// Output tokens when the request does not set `max_tokens`.
    #[arg(long, default_value_t = 32)]
    pub default_max_tokens: u32,
}

impl Default for LatencyModel {
    fn default() -> Self {
        LatencyModel {
            slots: 8,
            prefill_base_ms: 120.0,
            prefill_per_token_ms: 0.5,
            prefill_per_image_token_ms: 0.83,
            decode_ms: 25.0,
            decode_slowdown: 0.025,
            default_max_tokens: 32,
        }
    }
}

impl LatencyModel {
    /// Prefill time for a prompt of `text_tokens` with images of `image_tokens` in total.
    pub(crate) fn prefill(&self, text_tokens: u32, image_tokens: u32) -> Duration {
        let ms = self.prefill_base_ms
            + self.prefill_per_token_ms * f64::from(text_tokens)
            + self.prefill_per_image_token_ms * f64::from(image_tokens);
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    }

    /// Time for one output token while `running` streams decode together.
    pub(crate) fn decode_interval(&self, running: usize) -> Duration {
        let extra = self.decode_slowdown * running.saturating_sub(1) as f64;
        Duration::from_secs_f64((self.decode_ms * (1.0 + extra)).max(0.0) / 1000.0)
    }
}

/// Counters the tests and the bench read from `GET /stats`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Requests received (valid or not).
    pub(crate) received: AtomicU64,
    /// Requests holding a slot now.
    pub(crate) running: AtomicUsize,
    /// Requests waiting for a slot now.
    pub(crate) waiting: AtomicUsize,
    /// Most requests ever running at once.
    pub(crate) max_running: AtomicUsize,
    /// Prompt tokens (text and images) of the requests running now.
    pub(crate) running_prompt_tokens: AtomicU64,
    /// Most prompt tokens ever running at once.
    pub(crate) max_running_prompt_tokens: AtomicU64,
    /// Requests finished normally.
    pub(crate) completed: AtomicU64,
    /// Requests whose client left before the end.
    pub(crate) aborted: AtomicU64,
    /// Milliseconds since the sim started when the last abort was noticed (0: none yet).
    pub(crate) last_abort_ms: AtomicU64,
    /// Requests answered with an error.
    pub(crate) errors: AtomicU64,
    /// Questions about an image the replica had cached (`--image-cache`).
    pub(crate) image_cache_hits: AtomicU64,
}

/// The shared engine: slots, model and counters.
pub(crate) struct Engine {
    /// Timing parameters.
    pub(crate) model: LatencyModel,
    /// Counters.
    pub(crate) stats: Stats,
    slots: Arc<Semaphore>,
    started: tokio::time::Instant,
}

impl Engine {
    /// An idle engine.
    pub(crate) fn new(model: LatencyModel) -> Arc<Engine> {
        let slots = Arc::new(Semaphore::new(model.slots.max(1)));
        Arc::new(Engine { model, stats: Stats::default(), slots, started: tokio::time::Instant::now() })
    }

    /// Waits (FIFO) for a batch slot for a request of `prompt_tokens`. The returned guard counts the
    /// request (and its tokens) as running until dropped, and records an abort unless `finish` was
    /// called first.
    pub(crate) async fn admit(self: &Arc<Self>, prompt_tokens: u64) -> Admitted {
        let mut waiting = Waiting { engine: self.clone(), admitted: false };
        self.stats.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = self.slots.clone().acquire_owned().await.ok();
        waiting.admitted = true;
        drop(waiting);
        let running = self.stats.running.fetch_add(1, Ordering::AcqRel) + 1;
        self.stats.max_running.fetch_max(running, Ordering::AcqRel);
        let held = self.stats.running_prompt_tokens.fetch_add(prompt_tokens, Ordering::AcqRel) + prompt_tokens;
        self.stats.max_running_prompt_tokens.fetch_max(held, Ordering::AcqRel);
        Admitted { engine: self.clone(), _permit: permit, prompt_tokens, finished: false }
    }

    /// Records that a client left a request that never got a slot.
    fn record_abort(&self) {
        // The time first: whoever sees the count grow must see the time too.
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.stats.last_abort_ms.store(ms, Ordering::Release);
        self.stats.aborted.fetch_add(1, Ordering::AcqRel);
    }

    /// Milliseconds since start.
    pub(crate) fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Counts a request as waiting; dropped when it gets a slot, or when its client leaves first (an abort).
struct Waiting {
    engine: Arc<Engine>,
    admitted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.engine.stats.waiting.fetch_sub(1, Ordering::AcqRel);
        if !self.admitted {
            self.engine.record_abort();
        }
    }
}

/// A request holding a batch slot.
pub(crate) struct Admitted {
    engine: Arc<Engine>,
    _permit: Option<OwnedSemaphorePermit>,
    prompt_tokens: u64,
    finished: bool,
}

impl Admitted {
    /// Streams decoding now, this one included.
    pub(crate) fn running(&self) -> usize {
        self.engine.stats.running.load(Ordering::Acquire)
    }

    /// The request ran to its end.
    pub(crate) fn finish(mut self) {
        self.finished = true;
        self.engine.stats.completed.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.engine.stats.running.fetch_sub(1, Ordering::AcqRel);
        self.engine.stats.running_prompt_tokens.fetch_sub(self.prompt_tokens, Ordering::AcqRel);
        if !self.finished {
            self.engine.record_abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let model = LatencyModel::default();
        assert!(model.prefill(64, 0) < Duration::from_millis(200), "text first token under 200 ms");
        let big = model.prefill(32, crate::cost::ImageCost::default().tokens(1024, 1024));
        assert!((1100..=1300).contains(&big.as_millis()), "1024x1024 about 1.2 s, got {big:?}");
        let eight = model.decode_interval(8).as_secs_f64() / model.decode_interval(1).as_secs_f64();
        assert!((1.1..1.3).contains(&eight), "8 streams cost ~20 % more per token");
        // Full load: 8 slots, a text request of 32 tokens each about 1 s -> 8-10 requests/s.
        let per_request = model.prefill(20, 0) + model.decode_interval(8) * 32;
        let rps = 8.0 / per_request.as_secs_f64();
        assert!((7.0..=10.5).contains(&rps), "{rps} requests/s");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_granted_in_arrival_order() {
        let engine = Engine::new(LatencyModel { slots: 1, ..LatencyModel::default() });
        let first = engine.admit(10).await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (engine, order) = (engine.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let admitted = engine.admit(10).await;
                order.lock().unwrap().push(i);
                admitted.finish();
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(engine.stats.waiting.load(Ordering::Acquire), 3);
        first.finish();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(engine.stats.max_running.load(Ordering::Acquire), 1);
        assert_eq!(engine.stats.max_running_prompt_tokens.load(Ordering::Acquire), 10);
        assert_eq!(engine.stats.running_prompt_tokens.load(Ordering::Acquire), 0);
        assert_eq!(engine.stats.completed.load(Ordering::Acquire), 4);
    }
}

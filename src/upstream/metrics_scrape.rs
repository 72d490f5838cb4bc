//! Backend-reported load: an upstream's servers' Prometheus `/metrics` (vLLM's and SGLang's names)
//! scraped at an interval, so `least_inflight` sees requests the gateway did not send (other gateways,
//! direct clients) and how full the KV cache is. A server whose numbers are stale counts as saturated.

use super::Upstream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// `load_metrics = { path, interval, stale_after }` of an upstream, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoadMetrics {
    /// Path of the Prometheus text exposition.
    pub(crate) path: String,
    /// Time between two scrapes of a server.
    pub(crate) interval: Duration,
    /// Numbers older than this count as saturation.
    pub(crate) stale_after: Duration,
}

/// What a server last reported.
#[derive(Debug)]
pub struct Reported {
    origin: Instant,
    /// Milliseconds since `origin` of the last good scrape, plus one (0: never).
    at_ms: AtomicU64,
    /// `num_requests_waiting`.
    waiting: AtomicU64,
    /// `num_requests_running`.
    running: AtomicU64,
    /// `kv_cache_usage_perc` in thousandths.
    kv_milli: AtomicU64,
}

impl Default for Reported {
    fn default() -> Self {
        Reported {
            origin: Instant::now(),
            at_ms: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_milli: AtomicU64::new(0),
        }
    }
}

impl Reported {
    /// The reported load as one number (waiting requests weigh most, then KV cache use, then
    /// running requests), or `None` when the numbers are older than `stale_after` (or missing).
    pub fn score(&self, stale_after: Duration) -> Option<u64> {
        let at = self.at_ms.load(Ordering::Acquire);
        let age_ms =
            u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_sub(at.checked_sub(1)?);
        if age_ms > u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX) {
            return None;
        }
        let waiting = self.waiting.load(Ordering::Relaxed);
        let running = self.running.load(Ordering::Relaxed);
        Some(waiting * 1_000_000 + self.kv_milli.load(Ordering::Relaxed) * 1000 + running)
    }

    fn store(&self, sample: Sample) {
        self.waiting.store(sample.waiting.round() as u64, Ordering::Relaxed);
        self.running.store(sample.running.round() as u64, Ordering::Relaxed);
        self.kv_milli.store((sample.kv_usage.clamp(0.0, 1.0) * 1000.0).round() as u64, Ordering::Relaxed);
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.at_ms.store(now + 1, Ordering::Release);
    }
}

/// The numbers read from one exposition.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    waiting: f64,
    running: f64,
    kv_usage: f64,
}

/// Sums vLLM's (`vllm:`) and SGLang's (`sglang:`) gauges over their label sets; `None` when the text
/// has none of them (not a model server's metrics).
fn parse(text: &str) -> Option<Sample> {
    let mut sample = Sample::default();
    let mut found = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].split_once(':').map_or(&line[..name_end], |(_, metric)| metric);
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let slot = match name {
            "num_requests_waiting" | "num_queue_reqs" => &mut sample.waiting,
            "num_requests_running" | "num_running_reqs" => &mut sample.running,
            "kv_cache_usage_perc" | "gpu_cache_usage_perc" | "token_usage" => &mut sample.kv_usage,
            _ => continue,
        };
        *slot += value;
        found = true;
    }
    found.then_some(sample)
}

/// Scrapes an upstream's servers until the upstream is dropped (replaced by a reload).
pub(crate) fn spawn_scrapes(upstream: &Arc<Upstream>) {
    let Some(config) = upstream.load_metrics.clone() else { return };
    let interval = config.interval;
    super::probe::every(upstream, interval, move |upstream, index| {
        let config = config.clone();
        async move {
            let server = &upstream.servers[index];
            let timeout = config.interval.max(Duration::from_millis(100));
            let Some((status, body)) = super::probe::get(server, &config.path, timeout, 4 << 20).await else { return };
            let sample = status.is_success().then(|| std::str::from_utf8(&body).ok().and_then(parse)).flatten();
            if let Some(sample) = sample {
                server.load.reported.store(sample);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_gauges_summed_over_labels() {
        let text = "# HELP vllm:num_requests_running x\nvllm:num_requests_running{model_name=\"a\"} 3\n\
                    vllm:num_requests_running{model_name=\"b\"} 1\nvllm:num_requests_waiting{model_name=\"a\"} 2.0\n\
                    vllm:kv_cache_usage_perc{model_name=\"a\"} 0.5\nother_metric 9\n";
        assert_eq!(parse(text), Some(Sample { waiting: 2.0, running: 4.0, kv_usage: 0.5 }));
        assert_eq!(parse("process_cpu_seconds_total 3\n"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_numbers_count_as_saturated() {
        let reported = Reported::default();
        assert_eq!(reported.score(Duration::from_secs(5)), None, "never scraped");
        reported.store(Sample { waiting: 1.0, running: 2.0, kv_usage: 0.25 });
        assert_eq!(reported.score(Duration::from_secs(5)), Some(1_000_000 + 250_000 + 2));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(reported.score(Duration::from_secs(5)), None);
    }
}

//! Counters and histograms split into one cell per worker thread, summed at scrape time. Each worker
//! serves its requests start to finish, so a request only writes cache lines its own core owns: with
//! prometheus-client's shared atomics and locked histograms, the lines bounced between cores on every
//! request and metrics cost several percent of throughput. prometheus-client has no per-thread metric
//! type, hence these two, encoded through its `EncodeMetric`.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Cells per metric: threads beyond this share cells (still correct, just contended).
pub(crate) const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's cell index, assigned on first use.
pub(crate) fn shard() -> usize {
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

/// One cell on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A counter with a cell per worker.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardedCounter(Arc<[Padded<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub(crate) fn inc_by(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total over every cell.
    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|cell| cell.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One worker's histogram cell: a count per bucket (the last one unbounded) and the sum, in
/// microunits so it adds up atomically.
#[derive(Debug)]
struct HistogramCell {
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// A histogram with a cell per worker.
#[derive(Debug, Clone)]
pub(crate) struct ShardedHistogram {
    bounds: Arc<[f64]>,
    cells: Arc<[Padded<HistogramCell>]>,
}

impl ShardedHistogram {
    /// A histogram with these bucket upper bounds (ascending); `+Inf` is added.
    pub(crate) fn new(bounds: &[f64]) -> ShardedHistogram {
        let cells = (0..SHARDS)
            .map(|_| {
                Padded(HistogramCell {
                    buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                    sum_micros: AtomicU64::new(0),
                })
            })
            .collect();
        ShardedHistogram { bounds: bounds.into(), cells }
    }

    /// Records one value (in the metric's base unit, seconds here).
    pub(crate) fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        let cell = &self.cells[shard()].0;
        cell.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cell.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Sum, count and per-bucket counts over every cell.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().chain([&f64::MAX]).map(|bound| (*bound, 0)).collect();
        let mut sum_micros = 0;
        for cell in self.cells.iter() {
            for (total, count) in buckets.iter_mut().zip(cell.0.buckets.iter()) {
                total.1 += count.load(Ordering::Relaxed);
            }
            sum_micros += cell.0.sum_micros.load(Ordering::Relaxed);
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        (sum_micros as f64 / 1e6, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_of_every_thread_add_up() {
        let counter = ShardedCounter::default();
        let histogram = ShardedHistogram::new(&[0.1, 1.0]);
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let (counter, histogram) = (counter.clone(), histogram.clone());
                std::thread::spawn(move || {
                    for value in [0.05, 0.5, 5.0] {
                        counter.inc();
                        histogram.observe(value);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.get(), 60);
        let (sum, count, buckets) = histogram.totals();
        assert_eq!(count, 60);
        assert_eq!(buckets, vec![(0.1, 20), (1.0, 20), (f64::MAX, 20)]);
        assert!((sum - 20.0 * 5.55).abs() < 1e-6, "{sum}");
    }
}

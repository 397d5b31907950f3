//! A peer's latency histogram in shared memory: relaxed atomic counts per fixed bucket (the
//! bounds are the wire's, `shift_wire::LATENCY_BOUNDS_MS`), added to by whichever worker
//! finished the attempt, like the other counters.

use std::sync::atomic::{AtomicU64, Ordering};

use shift_wire::{bucket_of, Histogram, LATENCY_BUCKETS};

#[repr(C)]
pub struct LatencyCell {
    counts: [AtomicU64; LATENCY_BUCKETS],
    sum_ms: AtomicU64,
}

impl LatencyCell {
    pub fn new() -> LatencyCell {
        LatencyCell {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ms: AtomicU64::new(0),
        }
    }

    pub fn record(&self, ms: u64) {
        self.counts[bucket_of(ms)].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self
                .counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            sum_ms: self.sum_ms.load(Ordering::Relaxed),
        }
    }

    /// Takes `histogram`'s counts (a replaced zone's), as the other counters are carried.
    pub fn store(&self, histogram: &Histogram) {
        for (cell, &count) in self.counts.iter().zip(&histogram.counts) {
            cell.store(count, Ordering::Relaxed);
        }
        self.sum_ms.store(histogram.sum_ms, Ordering::Relaxed);
    }

    /// Back to no times at all: for a new instance of the peer.
    pub fn clear(&self) {
        for cell in &self.counts {
            cell.store(0, Ordering::Relaxed);
        }
        self.sum_ms.store(0, Ordering::Relaxed);
    }
}

impl Default for LatencyCell {
    fn default() -> LatencyCell {
        LatencyCell::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_counts_times_in_their_buckets_and_carries_over() {
        let cell = LatencyCell::new();
        for ms in [3, 3, 30, 300] {
            cell.record(ms);
        }
        let histogram = cell.snapshot();
        assert_eq!(histogram.count(), 4);
        assert_eq!(histogram.sum_ms, 336);
        assert_eq!(histogram.counts[bucket_of(3)], 2);
        let next = LatencyCell::new();
        next.store(&histogram);
        assert_eq!(next.snapshot(), histogram);
    }
}

//! Latency histograms as the API sends them: counts per fixed bucket, so that a reader can
//! difference two reads and estimate quantiles over the interval between them.

use serde::{Deserialize, Serialize};

/// Upper bounds of the buckets, in milliseconds (Nginx measures upstream times in whole
/// milliseconds); one more bucket past the last holds everything slower. From 4 ms to 10 s
/// neighbours differ by at most a third, so a quantile read from them is within a third of the
/// true one.
pub const LATENCY_BOUNDS_MS: [u64; 42] = [
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400,
    500, 600, 800, 1_000, 1_200, 1_500, 2_000, 2_500, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000,
    15_000, 20_000, 30_000, 60_000,
];

/// How many buckets a histogram has: one per bound, and one for slower.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Times of one kind (responses, or headers) of one peer since the zone was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Count per bucket (not cumulative), `LATENCY_BUCKETS` of them; empty when none.
    #[serde(default)]
    pub counts: Vec<u64>,
    /// The sum of the times, in milliseconds.
    #[serde(default)]
    pub sum_ms: u64,
}

/// The bucket a time of `ms` milliseconds falls in.
pub fn bucket_of(ms: u64) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|&bound| bound < ms)
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was added between `earlier` and `self` (two reads of one peer).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            counts: (0..self.counts.len())
                .map(|bucket| {
                    let before = earlier.counts.get(bucket).copied().unwrap_or(0);
                    self.counts[bucket].saturating_sub(before)
                })
                .collect(),
            sum_ms: self.sum_ms.saturating_sub(earlier.sum_ms),
        }
    }

    /// Both together (the peers of one side).
    pub fn plus(&self, other: &Histogram) -> Histogram {
        let len = self.counts.len().max(other.counts.len());
        Histogram {
            counts: (0..len)
                .map(|bucket| {
                    self.counts.get(bucket).copied().unwrap_or(0)
                        + other.counts.get(bucket).copied().unwrap_or(0)
                })
                .collect(),
            sum_ms: self.sum_ms + other.sum_ms,
        }
    }

    /// The `q` quantile (0 < q ≤ 1) in milliseconds, interpolated within its bucket; `None`
    /// without times. Times past the last bound read as that bound.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let low = if bucket == 0 {
                    0
                } else {
                    LATENCY_BOUNDS_MS[bucket - 1]
                };
                let Some(&high) = LATENCY_BOUNDS_MS.get(bucket) else {
                    return Some(low as f64);
                };
                let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
                return Some(low as f64 + within * (high - low) as f64);
            }
            below += count;
        }
        LATENCY_BOUNDS_MS.last().map(|&bound| bound as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(times: &[u64]) -> Histogram {
        let mut histogram = Histogram {
            counts: vec![0; LATENCY_BUCKETS],
            sum_ms: 0,
        };
        for &ms in times {
            histogram.counts[bucket_of(ms)] += 1;
            histogram.sum_ms += ms;
        }
        histogram
    }

    #[test]
    fn times_fall_in_the_bucket_whose_bound_holds_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(10), 7);
        assert_eq!(bucket_of(11), 8);
        assert_eq!(bucket_of(60_000), LATENCY_BOUNDS_MS.len() - 1);
        assert_eq!(bucket_of(90_000), LATENCY_BOUNDS_MS.len());
        let ratios = LATENCY_BOUNDS_MS
            .windows(2)
            .skip(3)
            .take_while(|pair| pair[1] <= 10_000);
        assert!(ratios.clone().count() > 30);
        for pair in ratios {
            assert!(pair[1] * 3 <= pair[0] * 4, "{pair:?}");
        }
    }

    #[test]
    fn quantiles_come_within_a_bucket_of_the_truth() {
        let tens: Vec<u64> = (0..1000).map(|n| 9 + n % 2).collect();
        let p99 = of(&tens).quantile_ms(0.99).unwrap();
        assert!((8.0..=10.0).contains(&p99), "{p99}");
        let thirties: Vec<u64> = vec![30; 1000];
        let p99 = of(&thirties).quantile_ms(0.99).unwrap();
        assert!((25.0..=30.0).contains(&p99), "{p99}");
        assert_eq!(of(&[]).quantile_ms(0.5), None);
        assert_eq!(of(&[100_000]).quantile_ms(0.5), Some(60_000.0));
    }

    #[test]
    fn two_reads_difference_into_the_interval_between_them() {
        let before = of(&[5, 10]);
        let after = of(&[5, 10, 30, 30]);
        let between = after.since(&before);
        assert_eq!(between, of(&[30, 30]));
        assert_eq!(between.count(), 2);
        assert_eq!(of(&[5]).plus(&of(&[30])), of(&[5, 30]));
    }
}

//! Latency histograms for canary analysis: fixed log-linear buckets, so that histograms from
//! different moments (a window is the difference of two snapshots) and different replicas
//! (the judge merges every replica's) add and subtract bucket by bucket, in bounded memory.
//!
//! Values are microseconds. Below 16 µs each value has its own bucket; above, every power of
//! two is split into 8 equal buckets, so a bucket's width is at most 1/8 of its lower bound
//! (a quantile read from the histogram is within 12.5 % of the true one). 280 buckets cover up
//! to 2^36 µs (19 hours); larger values land in the last one. Recording is one relaxed atomic
//! add.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Number of buckets.
pub const BUCKETS: usize = 16 + 33 * 8;

/// The bucket of a value in microseconds.
#[inline]
pub fn bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize; // 4..=63
    let sub = ((us >> (e - 3)) & 7) as usize;
    (16 + (e - 4) * 8 + sub).min(BUCKETS - 1)
}

/// The smallest value (µs) in bucket `i`.
pub fn lower(i: usize) -> u64 {
    if i < 16 {
        return i as u64;
    }
    let e = (i - 16) / 8 + 4;
    let sub = ((i - 16) % 8) as u64;
    (8 + sub) << (e - 3)
}

/// The middle of bucket `i` (µs): the value a bucket stands for.
pub fn middle(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        return lower(i);
    }
    (lower(i) + lower(i + 1) - 1) / 2
}

/// Counts per bucket, recorded from many threads.
#[derive(Debug)]
pub struct LatencySketch {
    counts: Box<[AtomicU64]>,
}

impl Default for LatencySketch {
    fn default() -> Self {
        LatencySketch { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl LatencySketch {
    /// Counts one latency.
    #[inline]
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Histogram {
        Histogram { counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect() }
    }
}

/// One version's traffic as the canary analysis reads it: answered requests, failures (5xx,
/// Weir's own 502/503/504 included) and the latency to response head. Kept per (app, version)
/// for the life of the process, across snapshots; read as cumulative snapshots whose
/// differences are windows.
#[derive(Debug, Default)]
pub struct VersionStats {
    requests: AtomicU64,
    failures: AtomicU64,
    latency: LatencySketch,
}

impl VersionStats {
    /// Counts one answer: its status and, when an upstream was asked, its latency.
    #[inline]
    pub fn record(&self, status: http::StatusCode, latency: Option<Duration>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(l) = latency {
            self.latency.record(l);
        }
    }

    /// The counts so far: (requests, failures, latencies).
    pub fn snapshot(&self) -> (u64, u64, Histogram) {
        (self.requests.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed), self.latency.snapshot())
    }
}

/// Counts per bucket: a snapshot, a window (the difference of two), or a merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Sparse", try_from = "Sparse")]
pub struct Histogram {
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS] }
    }
}

impl Histogram {
    /// A histogram of the given values (µs), for tests and simulations.
    pub fn of(values: impl IntoIterator<Item = u64>) -> Self {
        let mut h = Histogram::default();
        for v in values {
            h.counts[bucket(v)] += 1;
        }
        h
    }

    /// Adds `n` values in bucket `i`.
    pub fn add_to_bucket(&mut self, i: usize, n: u64) {
        self.counts[i.min(BUCKETS - 1)] += n;
    }

    /// Counts per bucket.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Number of values.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts (another replica's).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The counts recorded since `earlier` (a snapshot of the same sketch).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram { counts: self.counts.iter().zip(&earlier.counts).map(|(a, b)| a.saturating_sub(*b)).collect() }
    }

    /// The `q` quantile (0..=1) in µs, as its bucket's middle; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(middle(i));
            }
        }
        Some(middle(BUCKETS - 1))
    }

    /// How many values are in buckets wholly above `us` (values in the bucket holding `us`
    /// count as not above: the comparison leans towards the canary).
    pub fn count_above(&self, us: u64) -> u64 {
        self.counts[bucket(us) + 1..].iter().sum()
    }
}

/// The stored form: non-empty buckets only, `[[index, count], ...]`.
#[derive(Debug, Serialize, Deserialize)]
struct Sparse(Vec<(u16, u64)>);

impl From<Histogram> for Sparse {
    fn from(h: Histogram) -> Self {
        Sparse(h.counts.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i as u16, *c)).collect())
    }
}

impl TryFrom<Sparse> for Histogram {
    type Error = String;
    fn try_from(s: Sparse) -> Result<Self, String> {
        let mut h = Histogram::default();
        for (i, c) in s.0 {
            let slot = h.counts.get_mut(usize::from(i)).ok_or_else(|| format!("bucket {i} out of range"))?;
            *slot = slot.checked_add(c).ok_or("count overflow")?;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for us in (0..100_000u64).chain([1 << 20, 1 << 30, (1 << 36) - 1]) {
            let b = bucket(us);
            assert!(b >= last || us == 0, "bucket order at {us}");
            last = b;
            assert!(lower(b) <= us, "{us} below its bucket {b} ({})", lower(b));
            if b + 1 < BUCKETS {
                assert!(us < lower(b + 1), "{us} above its bucket {b}");
                let width = lower(b + 1) - lower(b);
                assert!(width * 8 <= lower(b).max(8), "bucket {b} too wide");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_windows_and_merges() {
        let a = Histogram::of((1..=1000).map(|i| i * 100)); // 100 µs .. 100 ms
        let p50 = a.quantile(0.5).unwrap() as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.125, "{p50}");
        let p99 = a.quantile(0.99).unwrap() as f64;
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.125, "{p99}");
        let mut m = a.clone();
        m.merge(&a);
        assert_eq!(m.total(), 2000);
        assert_eq!(m.since(&a), a);
        assert_eq!(a.count_above(1_000_000), 0);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Histogram>("[[999, 1]]").is_err());
    }

    #[test]
    fn recording_from_threads() {
        let s = std::sync::Arc::new(LatencySketch::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..1000).for_each(|i| s.record(Duration::from_micros(i))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(s.snapshot().total(), 4000);
    }
}

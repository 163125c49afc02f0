//! Choosing a version for a request from the weights of an app's split.
//!
//! A random draw per request is exact only on average: at 90/10 a user watching 20 requests in a
//! curl loop sees anything from 0 to 5 of v2. Weir walks a golden-ratio Weyl sequence instead:
//! request `n` lands at point `frac(n·φ)` of the weight line. That sequence is the most evenly
//! spread one known (three-gap theorem), so every window of requests matches the weights to
//! within about one request — 10 consecutive requests at 90/10 hold exactly one v2 — while
//! successive requests still alternate rather than running in blocks. The cost is one relaxed
//! `fetch_add` on a counter per app, a multiply and a binary search over a few integers: no lock,
//! no allocation.
//!
//! The same cumulative table maps a stable per-user bucket to a version ([`Split::pick_point`]),
//! which is what sticky assignment builds on.

use std::sync::atomic::{AtomicU64, Ordering};

/// 2^64 / φ, the Weyl increment with the lowest discrepancy.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The weights of one app's versions, ready for per-request choice.
///
/// ```
/// use weir::data::split::Split;
///
/// let split = Split::new(&[90, 10]); // v1, v2
/// let v2 = (0..100).filter(|_| split.pick() == 1).count();
/// assert_eq!(v2, 10); // exact over 100 requests, not "about 10"
/// assert_eq!(Split::new(&[0, 1]).pick(), 1); // zero weight: never chosen
/// ```
#[derive(Debug)]
pub struct Split {
    /// `cumulative[i]` = sum of the weights of versions `0..=i`.
    cumulative: Box<[u64]>,
    next: AtomicU64,
}

impl Split {
    /// Builds a split from weights aligned with the app's version order. The caller has
    /// validated them (not all zero).
    pub fn new(weights: &[u32]) -> Self {
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Split { cumulative, next: AtomicU64::new(0) }
    }

    /// Sum of all weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The version index for the next request.
    #[inline]
    pub fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.pick_unit(n.wrapping_mul(GOLDEN))
    }

    /// The version index at `unit / 2^64` of the way along the weight line. Uniform `unit`s
    /// give each version its weight's share; a fixed `unit` (a user's hash) always lands on the
    /// same version while the weights stay the same.
    #[inline]
    pub fn pick_unit(&self, unit: u64) -> usize {
        let point = ((u128::from(unit) * u128::from(self.total())) >> 64) as u64;
        self.pick_point(point)
    }

    /// The version index owning `point` in `0..total()`: the first version whose cumulative
    /// weight exceeds it, so zero-weight versions own no points.
    #[inline]
    pub fn pick_point(&self, point: u64) -> usize {
        self.cumulative.partition_point(|&c| c <= point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(split: &Split, n: usize, versions: usize) -> Vec<usize> {
        let mut c = vec![0; versions];
        for _ in 0..n {
            c[split.pick()] += 1;
        }
        c
    }

    #[test]
    fn exact_extremes() {
        assert_eq!(counts(&Split::new(&[0, 100]), 1000, 2), [0, 1000]);
        assert_eq!(counts(&Split::new(&[100, 0]), 1000, 2), [1000, 0]);
        assert_eq!(counts(&Split::new(&[0, 5, 0]), 1000, 3), [0, 1000, 0]);
    }

    #[test]
    fn every_window_of_ten_at_90_10_holds_one_v2() {
        let split = Split::new(&[90, 10]);
        let picks: Vec<usize> = (0..10_000).map(|_| split.pick()).collect();
        for (i, w) in picks.windows(10).enumerate() {
            let v2 = w.iter().filter(|&&v| v == 1).count();
            assert!((0..=2).contains(&v2), "window at {i} has {v2} v2");
        }
        let v2 = picks.iter().filter(|&&v| v == 1).count();
        assert!(v2.abs_diff(1000) <= 1, "{v2} v2 in 10,000");
    }

    #[test]
    fn proportions_hold_for_odd_weights() {
        for weights in [[1u32, 2, 3], [7, 0, 993], [333, 333, 334]] {
            let split = Split::new(&weights);
            let n = 60_000;
            let c = counts(&split, n, 3);
            for (i, &w) in weights.iter().enumerate() {
                let expected = n as f64 * f64::from(w) / split.total() as f64;
                assert!((c[i] as f64 - expected).abs() <= 3.0, "{weights:?}: {c:?}");
            }
        }
    }

    #[test]
    fn pick_point_skips_zero_weights() {
        let split = Split::new(&[0, 3, 0, 2]);
        let owners: Vec<usize> = (0..5).map(|p| split.pick_point(p)).collect();
        assert_eq!(owners, [1, 1, 1, 3, 3]);
    }
}

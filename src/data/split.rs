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

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};

use siphasher::sip::SipHasher13;

/// 2^64 / φ, the Weyl increment with the lowest discrepancy (mirroring and the demo's
/// failures spread by it too).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

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
        self.pick_unit(self.next_unit())
    }

    /// The next point of the Weyl sequence, as a fraction of 2^64.
    #[inline]
    pub fn next_unit(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed).wrapping_mul(GOLDEN)
    }

    /// The version index at `unit / 2^64` of the weight line with version `excluded` taken
    /// out (the others keep their order and proportions), or `None` when no other version
    /// has weight. Monotone in the same way as [`Split::pick_unit`] for the versions left.
    #[inline]
    pub fn pick_unit_excluding(&self, unit: u64, excluded: usize) -> Option<usize> {
        let before = if excluded == 0 { 0 } else { self.cumulative[excluded - 1] };
        let own = self.cumulative[excluded] - before;
        let rest = self.total() - own;
        if rest == 0 {
            return None;
        }
        let point = ((u128::from(unit) * u128::from(rest)) >> 64) as u64;
        Some(self.pick_point(if point >= before { point + own } else { point }))
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

/// Sticky user buckets: a request's key (a header, a cookie, else the client's address) is
/// hashed with the app's salt (SipHash-1-3 keyed by it: the same on every replica and across
/// restarts, and not guessable without the salt) to a point of the weight line, read with
/// [`Split::pick_unit`]. The same key gets the same version for the same weights, with no
/// shared state.
///
/// **Monotone.** Versions lie on the line in a fixed order (their names' order), each owning
/// `[C(i-1)/T, C(i)/T)` of it. A key's point never moves. When the *last* version's weight
/// rises and the others' stay, every boundary `C(i)/T` (i < last) moves towards 0 and the last
/// version's interval grows: users only move towards the end of the order, and nobody leaves
/// the last version. The same holds for the first version, mirrored. With two versions (v1
/// stable, v2 canary) raising the canary's weight by any means only moves users into it, and
/// lowering it only out. With three or more, keep the version being ramped first or last in
/// name order (v1, v2, v3: v3 is last) for the guarantee; a middle version's interval can
/// shift and users move between neighbours.
#[derive(Debug, Clone)]
pub struct Sticky {
    /// The header that carries the key (lower case), if any.
    pub header: Option<http::HeaderName>,
    /// The cookie that carries it, if any (checked after the header).
    pub cookie: Option<Box<str>>,
    /// Whether a client with no key gets one in that cookie (`Set-Cookie` on its response).
    pub set_cookie: bool,
    keys: (u64, u64),
}

impl Sticky {
    /// A bucketing with the given key sources and salt.
    pub fn new(header: Option<http::HeaderName>, cookie: Option<&str>, salt: &str) -> Self {
        let derive = |k: u64| {
            let mut h = SipHasher13::new_with_keys(k, !k);
            h.write(salt.as_bytes());
            h.finish()
        };
        Sticky {
            header,
            cookie: cookie.map(Into::into),
            set_cookie: false,
            keys: (derive(0x5745_4952), derive(0x7374_6963_6b79)),
        }
    }

    /// The point of the weight line (as a fraction of 2^64) a key lands on.
    #[inline]
    pub fn unit(&self, key: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        h.write(key);
        h.finish()
    }
}

/// The value of cookie `name` in one `Cookie` field value (`a=1; b=2`), if there.
pub fn cookie<'a>(field: &'a [u8], name: &str) -> Option<&'a [u8]> {
    field.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
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

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("user-{i}-{}", i.wrapping_mul(2654435761)).into_bytes()).collect()
    }

    /// For random keys and canary weights w1 < w2, every key in the canary at w1 is in it at
    /// w2, and the canary's share of 10,000 keys is within 2 points of its weight (about 4
    /// standard deviations).
    #[test]
    fn sticky_buckets_are_monotone_and_fair() {
        let sticky = Sticky::new(None, None, "web");
        let keys = keys(10_000);
        let units: Vec<u64> = keys.iter().map(|k| sticky.unit(k)).collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let (a, b) = (rng.u32(0..=1000), rng.u32(0..=1000));
            let (w1, w2) = (a.min(b), a.max(b));
            let (s1, s2) = (Split::new(&[1000 - w1, w1]), Split::new(&[1000 - w2, w2]));
            let mut in_canary = 0;
            for &u in &units {
                let at1 = s1.total() > 0 && s1.pick_unit(u) == 1;
                let at2 = s2.total() > 0 && s2.pick_unit(u) == 1;
                assert!(!at1 || at2, "a key left the canary when its weight rose from {w1} to {w2}");
                in_canary += usize::from(at2);
            }
            let share = in_canary as f64 / units.len() as f64;
            assert!((share - f64::from(w2) / 1000.0).abs() < 0.02, "share {share} at weight {w2}/1000");
        }
        // Three versions: raising the last one's weight (v3), the others unchanged, only
        // moves keys towards v3; nobody leaves it.
        for _ in 0..100 {
            let (a, b) = (rng.u32(0..=1000), rng.u32(0..=1000));
            let (w1, w2) = (a.min(b), a.max(b));
            let (s1, s2) = (Split::new(&[300, 200, w1]), Split::new(&[300, 200, w2]));
            for &u in &units {
                let (from, to) = (s1.pick_unit(u), s2.pick_unit(u));
                assert!(to >= from, "a key moved back from version {from} to {to}");
            }
        }
    }

    #[test]
    fn excluding_a_version_keeps_the_others_proportions() {
        let split = Split::new(&[30, 50, 20]);
        let mut c = [0usize; 3];
        for i in 0..100_000u64 {
            c[split.pick_unit_excluding(i.wrapping_mul(GOLDEN), 1).unwrap()] += 1;
        }
        assert_eq!(c[1], 0);
        assert!(c[0].abs_diff(60_000) <= 3 && c[2].abs_diff(40_000) <= 3, "{c:?}");
        assert_eq!(Split::new(&[0, 10]).pick_unit_excluding(12345, 1), None);
        assert_eq!(Split::new(&[0, 10]).pick_unit_excluding(12345, 0), Some(1));
    }

    #[test]
    fn same_key_same_point_and_salts_differ() {
        let (a, b) = (Sticky::new(None, None, "web"), Sticky::new(None, None, "shop"));
        assert_eq!(a.unit(b"alice"), Sticky::new(None, None, "web").unit(b"alice"));
        assert_ne!(a.unit(b"alice"), b.unit(b"alice"));
        assert_eq!(cookie(b"a=1; uid=42 ; b=", "uid"), Some(&b"42"[..]));
        assert_eq!(cookie(b"a=1; uidx=42", "uid"), None);
        assert_eq!(cookie(b"", "uid"), None);
    }
}

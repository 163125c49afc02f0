//! Judging a canary against its stable version over the same window of traffic.
//!
//! Each analysis ("look") compares two [`Sample`]s — the canary's and stable's requests,
//! failures (5xx, including the ones Weir answered itself) and latency histogram over the same
//! window — and answers [`Verdict::NotYet`] (too little traffic to say anything: never a pass),
//! [`Verdict::Pass`] or [`Verdict::Fail`] with the numbers that decided it.
//!
//! **The tests**, each one-sided (only a worse canary can fail):
//! 1. *Failure rate vs stable*: H0 `p_canary − p_stable ≤ margin`, a two-proportion z-test with
//!    the Agresti–Caffo adjustment (one success and one failure added to each side, so that
//!    zero counts do not make the variance zero).
//! 2. *Latency vs stable* (rank test): Mann–Whitney U of the canary's latencies against
//!    stable's multiplied by `latency_factor`, with the tie correction (histogram buckets are
//!    ties). Fails when the canary is stochastically slower than `factor ×` stable.
//! 3. *Latency quantile vs stable*: with `T = factor × stable's q-quantile`, H0 "at most
//!    `1 − q` of the canary's requests take longer than `T`", an exact-enough binomial test
//!    (Wilson score bound) on how many do.
//! 4. *Absolute limits* (optional, Flagger's defaults): success rate ≥ `min_success` (H0
//!    `p_canary ≤ 1 − min_success`) and q-quantile ≤ `max_latency` (H0 "at most `1 − q`
//!    above it"), both Wilson score bounds.
//!
//! **Looking again and again does not manufacture failures.** A rollout looks many times, and
//! each look could fail a healthy canary by chance. The chance is spent in advance, as in
//! group-sequential designs with a uniform spending function: the rollout knows how many
//! looks it will make (`looks`), every test of every look runs at level
//! `false_alarm / (looks × tests)`, and by Boole's inequality the probability that a healthy
//! canary fails *any* test of *any* look in the whole rollout is at most `false_alarm`
//! (default 1 %), however the looks' windows overlap. Requiring `failure_limit` failed looks
//! before rolling back only lowers it. The price is power: a look needs more evidence than a
//! single test would; the simulation in this module's tests prints what that costs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::data::sketch::{BUCKETS, Histogram, bucket, middle};

/// One version's traffic over a window (or, as replicas report it, since they started).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Requests answered (any status).
    pub requests: u64,
    /// Of those, failures: 5xx, including what Weir answered itself (502, 503, 504).
    pub failures: u64,
    /// Time to response head.
    pub latency: Histogram,
}

/// Every version's counts, per app, as a replica reports them for the rollout leader.
pub type Counts = std::collections::BTreeMap<String, std::collections::BTreeMap<String, Sample>>;

impl Sample {
    /// Adds another replica's sample of the same window.
    pub fn merge(&mut self, other: &Sample) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.latency.merge(&other.latency);
    }
}

/// What the canary is held to (`[apps.NAME.rollout.criteria]`; every field has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Criteria {
    /// Requests each version needs in the window before anything is decided.
    pub min_requests: u64,
    /// How much higher than stable's the canary's failure rate may be (0.01 = one point).
    pub failure_margin: f64,
    /// How much slower than stable the canary may be (its latencies against stable's times this).
    pub latency_factor: f64,
    /// The latency quantile held to `latency_factor` × stable's and to `max_latency` (0.99).
    pub quantile: f64,
    /// Absolute floor of the canary's success rate (Flagger: 0.99), if any.
    pub min_success: Option<f64>,
    /// Absolute ceiling of the canary's latency quantile (Flagger: 500 ms), if any.
    #[serde(with = "humantime_serde")]
    pub max_latency: Option<Duration>,
    /// Probability that a canary as good as stable is failed by chance, over the whole rollout.
    pub false_alarm: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria {
            min_requests: 100,
            failure_margin: 0.01,
            latency_factor: 1.5,
            quantile: 0.99,
            min_success: Some(0.99),
            max_latency: Some(Duration::from_millis(500)),
            false_alarm: 0.01,
        }
    }
}

/// The outcome of one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// Too little traffic to decide; says what is missing.
    NotYet {
        /// Why.
        why: String,
    },
    /// Enough traffic, and no test found the canary worse.
    Pass {
        /// The figures.
        evidence: Evidence,
    },
    /// At least one test found the canary worse.
    Fail {
        /// The figures; `failed` says which tests and by how much.
        evidence: Evidence,
    },
}

/// The figures behind a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Canary: requests, failure rate, latency quantile (ms).
    pub canary: Figures,
    /// Stable, over the same window.
    pub stable: Figures,
    /// The level each test ran at.
    pub alpha: f64,
    /// Each failed test, in words with its numbers.
    pub failed: Vec<String>,
}

/// One version's figures in a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Requests in the window.
    pub requests: u64,
    /// Failures in the window.
    pub failures: u64,
    /// Failure rate.
    pub failure_rate: f64,
    /// The criteria's latency quantile, in milliseconds.
    pub latency_ms: Option<f64>,
}

fn figures(s: &Sample, q: f64) -> Figures {
    Figures {
        requests: s.requests,
        failures: s.failures,
        failure_rate: if s.requests == 0 { 0.0 } else { s.failures as f64 / s.requests as f64 },
        latency_ms: s.latency.quantile(q).map(|us| us as f64 / 1000.0),
    }
}

impl Criteria {
    /// How many tests one look runs.
    pub fn tests(&self) -> u32 {
        3 + u32::from(self.min_success.is_some()) + u32::from(self.max_latency.is_some())
    }

    /// The level of each test when the rollout makes `looks` looks in all.
    pub fn alpha(&self, looks: u32) -> f64 {
        self.false_alarm / (f64::from(looks.max(1)) * f64::from(self.tests()))
    }

    /// Judges `canary` against `stable` (same window), as one of `looks` looks.
    pub fn judge(&self, canary: &Sample, stable: &Sample, looks: u32) -> Verdict {
        for (name, s) in [("canary", canary), ("stable", stable)] {
            if s.requests < self.min_requests {
                return Verdict::NotYet {
                    why: format!("{name} has {} requests in the window; {} needed", s.requests, self.min_requests),
                };
            }
        }
        let alpha = self.alpha(looks);
        let z = Normal::standard().inverse_cdf(1.0 - alpha);
        let mut failed = Vec::new();
        let q = self.quantile;

        // 1. Failure rate against stable's, with a margin.
        let (pc, ps) = (adjusted(canary.failures, canary.requests), adjusted(stable.failures, stable.requests));
        let se =
            (pc * (1.0 - pc) / (canary.requests + 2) as f64 + ps * (1.0 - ps) / (stable.requests + 2) as f64).sqrt();
        let zf = (pc - ps - self.failure_margin) / se;
        if zf > z {
            failed.push(format!(
                "failure rate {:.2} % is more than {:.2} points above stable's {:.2} % (z = {zf:.2} > {z:.2})",
                rate(canary) * 100.0,
                self.failure_margin * 100.0,
                rate(stable) * 100.0
            ));
        }

        // 2. Rank test: canary against stable × factor.
        let (cl, sl) = (&canary.latency, &stable.latency);
        if cl.total() > 0 && sl.total() > 0 {
            let scaled = scale(sl, self.latency_factor);
            let zu = mann_whitney_z(cl, &scaled);
            if zu > z {
                failed.push(format!(
                    "latencies are stochastically above {:.2} × stable's (Mann-Whitney z = {zu:.2} > {z:.2}; \
                     medians {:.1} ms vs {:.1} ms)",
                    self.latency_factor,
                    ms(cl.quantile(0.5)),
                    ms(sl.quantile(0.5))
                ));
            }
            // 3. Quantile against stable's × factor.
            let limit = (sl.quantile(q).unwrap_or(0) as f64 * self.latency_factor) as u64;
            if let Some(above) = too_many_above(cl, limit, q, z) {
                failed.push(format!(
                    "p{} {:.1} ms is above {:.2} × stable's {:.1} ms ({above} of {} requests over {:.1} ms)",
                    q * 100.0,
                    ms(cl.quantile(q)),
                    self.latency_factor,
                    ms(sl.quantile(q)),
                    cl.total(),
                    limit as f64 / 1000.0
                ));
            }
        }

        // 4. Absolute limits.
        if let Some(min) = self.min_success
            && wilson_lower(canary.failures, canary.requests, z) > 1.0 - min
        {
            failed.push(format!(
                "success rate {:.2} % is below {:.2} % ({} of {} failed)",
                (1.0 - rate(canary)) * 100.0,
                min * 100.0,
                canary.failures,
                canary.requests
            ));
        }
        if let Some(max) = self.max_latency
            && cl.total() > 0
        {
            let limit = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
            if let Some(above) = too_many_above(cl, limit, q, z) {
                failed.push(format!(
                    "p{} {:.1} ms is above the limit {:.1} ms ({above} of {} requests over it)",
                    q * 100.0,
                    ms(cl.quantile(q)),
                    limit as f64 / 1000.0,
                    cl.total()
                ));
            }
        }

        let evidence = Evidence { canary: figures(canary, q), stable: figures(stable, q), alpha, failed };
        if evidence.failed.is_empty() { Verdict::Pass { evidence } } else { Verdict::Fail { evidence } }
    }
}

/// How many of `h`'s values exceed `limit` (µs), when that is significantly more than the
/// `1 − q` share a q-quantile at or below `limit` allows (H0 rejected at normal quantile `z`).
fn too_many_above(h: &Histogram, limit: u64, q: f64, z: f64) -> Option<u64> {
    let above = h.count_above(limit);
    (wilson_lower(above, h.total(), z) > 1.0 - q).then_some(above)
}

fn rate(s: &Sample) -> f64 {
    if s.requests == 0 { 0.0 } else { s.failures as f64 / s.requests as f64 }
}

fn ms(us: Option<u64>) -> f64 {
    us.unwrap_or(0) as f64 / 1000.0
}

/// Agresti–Caffo: one failure and one success added.
fn adjusted(failures: u64, n: u64) -> f64 {
    (failures as f64 + 1.0) / (n as f64 + 2.0)
}

/// The Wilson score lower bound of a proportion `k / n` at normal quantile `z`.
fn wilson_lower(k: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    (p + z2 / (2.0 * n) - z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n)
}

/// `h` with every value multiplied by `factor` (each bucket moved to the bucket of its
/// middle value times the factor).
fn scale(h: &Histogram, factor: f64) -> Histogram {
    let mut out = Histogram::default();
    for (i, &c) in h.counts().iter().enumerate() {
        if c > 0 {
            let v = (middle(i) as f64 * factor).min(u64::MAX as f64 / 2.0) as u64;
            out.add_to_bucket(bucket(v), c);
        }
    }
    out
}

/// The Mann–Whitney z of `a` against `b` (positive: `a` tends to be larger), with the tie
/// correction for values in the same bucket.
fn mann_whitney_z(a: &Histogram, b: &Histogram) -> f64 {
    let (na, nb) = (a.total() as f64, b.total() as f64);
    let n = na + nb;
    let (mut u, mut below_b, mut ties) = (0.0, 0.0, 0.0);
    for i in 0..BUCKETS {
        let (ai, bi) = (a.counts()[i] as f64, b.counts()[i] as f64);
        u += ai * (below_b + 0.5 * bi);
        below_b += bi;
        let t = ai + bi;
        ties += t * t * t - t;
    }
    let mean = na * nb / 2.0;
    let var = na * nb / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 { 0.0 } else { (u - mean) / var.sqrt() }
}

#[cfg(test)]
mod tests;

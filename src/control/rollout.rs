//! Progressive rollouts run by Weir: steps, canary analysis and automatic rollback.
//!
//! A rollout moves an app from its stable version to a canary by a plan of [`Step`]s. Its
//! progress is a [`Rollout`], kept in the state store with the split (so a restart resumes
//! at the same step, the step's elapsed time counted from the store), and advanced by the
//! control task on a tick ([`Rollout::advance`] decides, the control task writes). Every
//! weight it sets is an ordinary revision with its reason.
//!
//! What is decided here is pure: given the rollout, the time and the traffic figures, what
//! happens next. The control task does the writing.

pub mod analysis;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use analysis::{Criteria, Sample, Verdict};

/// One step of a plan: in JSON and TOML an object with exactly one of the keys below.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The canary's share, in percent (the stable version gets the rest).
    SetWeight {
        /// 0–100.
        set_weight: u32,
    },
    /// Waits for a duration, or (`"manual"`) until resumed.
    Pause {
        /// How long; `None` until `resume`.
        pause: Option<Duration>,
    },
    /// Judges the canary against stable over a window of this length; the window grows until
    /// both have the minimum sample.
    Analyze {
        /// The window.
        analyze: Duration,
    },
}

const STEP_KEYS: &[&str] = &["set_weight", "pause", "analyze"];

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Step::SetWeight { set_weight } => map.serialize_entry("set_weight", set_weight)?,
            Step::Pause { pause: None } => map.serialize_entry("pause", "manual")?,
            Step::Pause { pause: Some(d) } => {
                map.serialize_entry("pause", &humantime::format_duration(*d).to_string())?
            }
            Step::Analyze { analyze } => {
                map.serialize_entry("analyze", &humantime::format_duration(*analyze).to_string())?
            }
        }
        map.end()
    }
}

/// Read strictly: an object (serde's derive would also take an array for a struct), one key
/// of [`STEP_KEYS`], nothing else in it, so a typo in a plan is refused and not guessed at.
impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Step, D::Error> {
        d.deserialize_map(StepVisitor)
    }
}

struct StepVisitor;

impl<'de> serde::de::Visitor<'de> for StepVisitor {
    type Value = Step;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"a step: {"set_weight": 0-100}, {"pause": "5m" or "manual"} or {"analyze": "5m"}"#)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
        use serde::de::Error;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!("an empty step; expected {}", Expected(self))));
        };
        let step = match key.as_str() {
            "set_weight" => Step::SetWeight { set_weight: map.next_value()? },
            "pause" => Step::Pause { pause: map.next_value::<PauseValue>()?.0 },
            "analyze" => Step::Analyze { analyze: map.next_value::<DurationValue>()?.0 },
            other => return Err(A::Error::unknown_field(other, STEP_KEYS)),
        };
        if let Some(extra) = map.next_key::<String>()? {
            return Err(A::Error::custom(format!("a step has one key, and {extra:?} is a second one after {key:?}")));
        }
        Ok(step)
    }
}

/// A visitor's `expecting`, as text.
struct Expected(StepVisitor);

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        serde::de::Visitor::expecting(&self.0, f)
    }
}

/// A humantime duration (`"90s"`, `"5m"`).
struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(DurationValue).map_err(serde::de::Error::custom)
    }
}

/// A pause: a duration or `"manual"` (`None`).
struct PauseValue(Option<Duration>);

impl<'de> Deserialize<'de> for PauseValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "manual" {
            return Ok(PauseValue(None));
        }
        parse_duration(&text)
            .map(|d| PauseValue(Some(d)))
            .map_err(|e| serde::de::Error::custom(format!("{e}, or \"manual\"")))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like \"90s\" or \"5m\" ({e})"))
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::SetWeight { set_weight } => write!(f, "set_weight {set_weight}"),
            Step::Pause { pause: None } => write!(f, "pause until resumed"),
            Step::Pause { pause: Some(d) } => write!(f, "pause {}", humantime::format_duration(*d)),
            Step::Analyze { analyze } => write!(f, "analyze {}", humantime::format_duration(*analyze)),
        }
    }
}

/// The built-in plans, by name: the seeds' strategies done by Weir.
pub fn preset(name: &str) -> Option<Vec<Step>> {
    let w = |set_weight| Step::SetWeight { set_weight };
    let a = |secs| Step::Analyze { analyze: Duration::from_secs(secs) };
    Some(match name {
        // 5 → 25 → 50 → 100, judged between.
        "canary" => vec![w(5), a(120), w(25), a(120), w(50), a(120), w(100)],
        // Equal steps of 20, judged between.
        "ramped" => vec![w(20), a(60), w(40), a(60), w(60), a(60), w(80), a(60), w(100)],
        // The idle colour judged on forced requests (testers with X-Weir-Version or a forcing
        // rule) while it has no weight, then the flip.
        "blue_green" => vec![a(300), w(100)],
        _ => return None,
    })
}

/// Checks a plan: not empty, weights 0–100, no zero-length analysis.
pub fn check_plan(steps: &[Step]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("a plan needs at least one step".into());
    }
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::SetWeight { set_weight } if *set_weight > 100 => {
                return Err(format!("step {}: set_weight {set_weight} is over 100", i + 1));
            }
            Step::Analyze { analyze } if analyze.is_zero() => {
                return Err(format!("step {}: an analysis window must be longer than 0s", i + 1));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Walking its steps.
    Progressing,
    /// Stopped by `pause`, a manual pause step, or a split changed by hand; `resume` goes on.
    Paused,
    /// Walked every step (or was promoted): the canary has all traffic.
    Succeeded,
    /// Aborted by an operator: stable has all traffic.
    Aborted,
    /// Its analysis failed `failure_limit` times: stable has all traffic.
    RolledBack,
}

impl Phase {
    /// Whether the rollout is over.
    pub fn is_done(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Aborted | Phase::RolledBack)
    }
}

/// A rollout's progress, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version that had the traffic.
    pub stable: String,
    /// The version being rolled out.
    pub canary: String,
    /// The plan's name (`custom` for one given in the call).
    pub plan: String,
    /// Its steps.
    pub steps: Vec<Step>,
    /// The current step (0-based); `steps.len()` once walked.
    pub step: usize,
    /// Where it is.
    pub phase: Phase,
    /// When the current step started (Unix ms); while paused, meaningless.
    pub step_started_ms: u64,
    /// While paused: the step's elapsed time at the pause (ms).
    #[serde(default)]
    pub paused_elapsed_ms: Option<u64>,
    /// What happened last, in words.
    pub message: String,
    /// Analyses failed so far.
    pub failed_analyses: u32,
    /// Failed analyses that roll it back.
    pub failure_limit: u32,
    /// Looks the whole rollout may take (the false-alarm budget is split over them).
    pub looks: u32,
    /// Looks taken so far.
    pub looks_done: u32,
    /// What the canary is held to.
    pub criteria: Criteria,
    /// The last analysis's verdict, with its figures.
    #[serde(default)]
    pub last_analysis: Option<Verdict>,
    /// Who started it.
    pub started_by: String,
    /// When (Unix ms).
    pub started_ms: u64,
}

/// What the control task does after an [`Rollout::advance`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to write.
    Wait,
    /// Store the rollout (its progress changed), and when `weights` is set, make them a
    /// revision with `reason` in the same write.
    Write {
        /// The canary's share to set, if any.
        canary_weight: Option<u32>,
        /// The revision's reason.
        reason: String,
        /// A failed analysis rolled it back (for the metric and the log).
        rolled_back: bool,
    },
}

/// The traffic a running analysis compares: both versions' counts at the window's start and
/// now. Kept by the control task in memory (the counts are per process: after a restart the
/// window starts again).
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// When the window started (ms on the caller's clock).
    pub started_ms: u64,
    /// Canary and stable at the start.
    pub canary: Sample,
    /// Stable at the start.
    pub stable: Sample,
}

impl Rollout {
    /// Elapsed time in the current step at `now_ms`.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        self.paused_elapsed_ms.unwrap_or_else(|| now_ms.saturating_sub(self.step_started_ms))
    }

    /// Planned looks for a plan: every analysis step may look `failure_limit` times before
    /// it rolls back, plus as many passes; a margin for windows that fail and then pass.
    pub fn planned_looks(steps: &[Step], failure_limit: u32) -> u32 {
        let analyses = steps.iter().filter(|s| matches!(s, Step::Analyze { .. })).count() as u32;
        (analyses * (failure_limit.max(1) + 1)).max(1)
    }

    fn label(&self) -> String {
        format!("rollout {}/{}", (self.step + 1).min(self.steps.len()), self.steps.len())
    }

    fn next_step(&mut self, now_ms: u64) {
        self.step += 1;
        self.step_started_ms = now_ms;
        self.paused_elapsed_ms = None;
    }

    /// Advances a progressing rollout at `now_ms`. `figures` reads the canary's and stable's
    /// counts now; `window` is the running analysis's start, if one runs (set and cleared
    /// here).
    pub fn advance(
        &mut self,
        now_ms: u64,
        figures: impl Fn() -> (Sample, Sample),
        window: &mut Option<Window>,
    ) -> Action {
        if self.phase != Phase::Progressing {
            return Action::Wait;
        }
        let Some(step) = self.steps.get(self.step).cloned() else {
            self.phase = Phase::Succeeded;
            self.message = "every step walked: the canary has all traffic".into();
            return Action::Write {
                canary_weight: Some(100),
                reason: format!("rollout of {} succeeded", self.canary),
                rolled_back: false,
            };
        };
        let label = self.label();
        match step {
            Step::SetWeight { set_weight } => {
                self.next_step(now_ms);
                self.message = format!("{label}: set_weight {set_weight}");
                Action::Write { canary_weight: Some(set_weight), reason: self.message.clone(), rolled_back: false }
            }
            Step::Pause { pause: None } => {
                self.phase = Phase::Paused;
                self.paused_elapsed_ms = Some(0);
                self.next_step(now_ms);
                self.paused_elapsed_ms = Some(0);
                self.message = format!("{label}: paused until resumed (POST .../rollout/resume)");
                Action::Write { canary_weight: None, reason: String::new(), rolled_back: false }
            }
            Step::Pause { pause: Some(d) } => {
                if self.elapsed_ms(now_ms) < d.as_millis() as u64 {
                    return Action::Wait;
                }
                self.next_step(now_ms);
                self.message = format!("{label}: paused {} and went on", humantime::format_duration(d));
                Action::Write { canary_weight: None, reason: String::new(), rolled_back: false }
            }
            Step::Analyze { analyze } => self.analyze(now_ms, analyze, figures, window, &label),
        }
    }

    fn analyze(
        &mut self,
        now_ms: u64,
        length: Duration,
        figures: impl Fn() -> (Sample, Sample),
        window: &mut Option<Window>,
        label: &str,
    ) -> Action {
        let Some(w) = window else {
            let (canary, stable) = figures();
            *window = Some(Window { started_ms: now_ms, canary, stable });
            return Action::Wait;
        };
        if now_ms.saturating_sub(w.started_ms) < length.as_millis() as u64 {
            return Action::Wait;
        }
        let (canary_now, stable_now) = figures();
        let canary = since(&canary_now, &w.canary);
        let stable = since(&stable_now, &w.stable);
        let verdict = self.criteria.judge(&canary, &stable, self.looks);
        let action = match &verdict {
            // Too little traffic: the window grows until there is enough; nothing decided.
            Verdict::NotYet { why } => {
                let message = format!("{label}: analysis waiting for traffic: {why}");
                if self.message == message {
                    self.last_analysis = Some(verdict);
                    return Action::Wait;
                }
                self.message = message;
                Action::Write { canary_weight: None, reason: String::new(), rolled_back: false }
            }
            Verdict::Pass { evidence } => {
                self.looks_done += 1;
                *window = None;
                self.next_step(now_ms);
                self.message = format!(
                    "{label}: analysis passed (canary {} requests, {:.2} % failed; stable {} requests, {:.2} % failed)",
                    evidence.canary.requests,
                    evidence.canary.failure_rate * 100.0,
                    evidence.stable.requests,
                    evidence.stable.failure_rate * 100.0
                );
                Action::Write { canary_weight: None, reason: String::new(), rolled_back: false }
            }
            Verdict::Fail { evidence } => {
                self.looks_done += 1;
                self.failed_analyses += 1;
                *window = None;
                let why = format!(
                    "{} (canary {} requests, {} failed; stable {} requests, {} failed)",
                    evidence.failed.join("; "),
                    evidence.canary.requests,
                    evidence.canary.failures,
                    evidence.stable.requests,
                    evidence.stable.failures
                );
                if self.failed_analyses >= self.failure_limit {
                    self.phase = Phase::RolledBack;
                    self.message = format!(
                        "{label}: rolled back to {} after {} failed analyses: {why}",
                        self.stable, self.failed_analyses
                    );
                    Action::Write { canary_weight: Some(0), reason: self.message.clone(), rolled_back: true }
                } else {
                    self.message = format!(
                        "{label}: analysis failed ({} of {} allowed), judging a new window: {why}",
                        self.failed_analyses, self.failure_limit
                    );
                    Action::Write { canary_weight: None, reason: String::new(), rolled_back: false }
                }
            }
        };
        self.last_analysis = Some(verdict);
        action
    }
}

/// The traffic between two cumulative counts.
fn since(now: &Sample, then: &Sample) -> Sample {
    Sample {
        requests: now.requests.saturating_sub(then.requests),
        failures: now.failures.saturating_sub(then.failures),
        latency: now.latency.since(&then.latency),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::data::sketch::Histogram;

    fn rollout(steps: Vec<Step>) -> Rollout {
        Rollout {
            stable: "v1".into(),
            canary: "v2".into(),
            plan: "custom".into(),
            looks: Rollout::planned_looks(&steps, 2),
            steps,
            step: 0,
            phase: Phase::Progressing,
            step_started_ms: 0,
            paused_elapsed_ms: None,
            message: String::new(),
            failed_analyses: 0,
            failure_limit: 2,
            looks_done: 0,
            criteria: Criteria::default(),
            last_analysis: None,
            started_by: "test".into(),
            started_ms: 0,
        }
    }

    fn sample(requests: u64, failures: u64, ms: u64) -> Sample {
        Sample { requests, failures, latency: Histogram::of((0..requests).map(|_| ms * 1000)) }
    }

    #[test]
    fn steps_parse_from_config_and_json() {
        let steps: Vec<Step> = serde_json::from_str(
            r#"[{"set_weight":5},{"analyze":"1m"},{"pause":"30s"},{"pause":"manual"},{"set_weight":100}]"#,
        )
        .unwrap();
        assert_eq!(steps[0], Step::SetWeight { set_weight: 5 });
        assert_eq!(steps[1], Step::Analyze { analyze: Duration::from_secs(60) });
        assert_eq!(steps[2], Step::Pause { pause: Some(Duration::from_secs(30)) });
        assert_eq!(steps[3], Step::Pause { pause: None });
        let back: Vec<Step> = serde_json::from_value(serde_json::to_value(&steps).unwrap()).unwrap();
        assert_eq!(back, steps);
        assert!(check_plan(&[Step::SetWeight { set_weight: 101 }]).is_err());
        assert!(check_plan(&[]).is_err());
        for name in ["canary", "ramped", "blue_green"] {
            check_plan(&preset(name).unwrap()).unwrap();
        }
    }

    #[test]
    fn steps_of_any_other_shape_are_refused() {
        for (bad, says) in [
            (r#"[20]"#, "invalid type"),
            (r#"{"set_weight":20,"junk":1}"#, "second one"),
            (r#"{"set_weight":20,"pause":"1s"}"#, "second one"),
            (r#"{"weight":20}"#, "unknown field `weight`"),
            (r#"{}"#, "an empty step"),
            (r#""20""#, "invalid type"),
            (r#"{"set_weight":-1}"#, "invalid value"),
            (r#"{"set_weight":"20"}"#, "invalid type"),
            (r#"{"pause":"soon"}"#, "not a duration like"),
            (r#"{"analyze":5}"#, "invalid type"),
        ] {
            let e = serde_json::from_str::<Step>(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let toml: BTreeMap<String, Vec<Step>> =
            toml::from_str("p = [{ set_weight = 5 }, { pause = \"manual\" }]").unwrap();
        assert_eq!(toml["p"], vec![Step::SetWeight { set_weight: 5 }, Step::Pause { pause: None }]);
        assert!(toml::from_str::<BTreeMap<String, Vec<Step>>>("p = [{ set_weight = 5, x = 1 }]").is_err());
    }

    #[test]
    fn a_healthy_canary_walks_every_step() {
        let mut r = rollout(vec![
            Step::SetWeight { set_weight: 10 },
            Step::Analyze { analyze: Duration::from_secs(10) },
            Step::Pause { pause: Some(Duration::from_secs(5)) },
            Step::SetWeight { set_weight: 100 },
        ]);
        let mut window = None;
        let figures = |t: u64| move || (sample(t * 10, 0, 10), sample(t * 90, 0, 10));
        assert_eq!(
            r.advance(0, figures(0), &mut window),
            Action::Write { canary_weight: Some(10), reason: "rollout 1/4: set_weight 10".into(), rolled_back: false }
        );
        assert_eq!(r.advance(1_000, figures(1), &mut window), Action::Wait, "the window starts");
        assert_eq!(r.advance(5_000, figures(5), &mut window), Action::Wait, "the window runs");
        assert!(matches!(r.advance(11_000, figures(30), &mut window), Action::Write { canary_weight: None, .. }));
        assert_eq!((r.step, r.looks_done), (2, 1), "{}", r.message);
        assert_eq!(r.advance(13_000, figures(31), &mut window), Action::Wait, "pausing");
        assert!(matches!(r.advance(16_100, figures(32), &mut window), Action::Write { .. }));
        assert!(matches!(r.advance(16_200, figures(32), &mut window), Action::Write { canary_weight: Some(100), .. }));
        assert!(matches!(r.advance(16_300, figures(32), &mut window), Action::Write { canary_weight: Some(100), .. }));
        assert_eq!(r.phase, Phase::Succeeded);
    }

    #[test]
    fn too_little_traffic_is_never_a_pass_and_failures_roll_back() {
        let mut r =
            rollout(vec![Step::Analyze { analyze: Duration::from_secs(10) }, Step::SetWeight { set_weight: 100 }]);
        let mut window = None;
        // 1 request a second: nothing decided for as long as it takes.
        for t in 0..60u64 {
            let a = r.advance(t * 1_000, move || (sample(t, 0, 10), sample(t, 0, 10)), &mut window);
            assert!(matches!(a, Action::Wait | Action::Write { canary_weight: None, .. }));
            assert_eq!((r.step, r.looks_done), (0, 0), "decided at {t} s: {}", r.message);
        }
        assert!(matches!(r.last_analysis, Some(Verdict::NotYet { .. })));
        // A canary failing 10 %: two failed windows roll it back.
        let mut r =
            rollout(vec![Step::Analyze { analyze: Duration::from_secs(10) }, Step::SetWeight { set_weight: 100 }]);
        let mut window = None;
        let mut last = Action::Wait;
        for t in 0..40u64 {
            last = r.advance(t * 1_000, move || (sample(t * 50, t * 5, 10), sample(t * 450, 0, 10)), &mut window);
            if r.phase.is_done() {
                break;
            }
        }
        assert_eq!(r.phase, Phase::RolledBack, "{}", r.message);
        assert!(matches!(last, Action::Write { canary_weight: Some(0), rolled_back: true, .. }));
        assert!(r.message.contains("failure rate"), "{}", r.message);
    }
}

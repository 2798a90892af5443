//! Progressive delivery: rollout plans and scheduled changes, as replicated records of the
//! flag set (`_rollout.<flag>`, `_schedule.<flag>`), so that whichever origin node leads
//! advances them and a new leader resumes where the old one stopped.
//!
//! A rollout owns its flag's targeting while it runs: each step replaces it with a
//! `fractional` split by targeting key over the step's variant weights, held for the step's
//! duration. Pause keeps the time left in the step; abort puts back the definition from before
//! the rollout in one revision. This module holds the plan and its transitions; the origin
//! commits them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The key prefix of a flag's rollout record.
pub const ROLLOUT_PREFIX: &str = "_rollout.";
/// The key prefix of a flag's scheduled change.
pub const SCHEDULE_PREFIX: &str = "_schedule.";
/// Most steps in a plan.
pub const MAX_STEPS: usize = 100;
/// Longest a step may be held, in seconds (a year).
pub const MAX_HOLD_S: u64 = 366 * 24 * 3600;

/// The record key of `flag`'s rollout.
pub fn rollout_key(flag: &str) -> String {
    format!("{ROLLOUT_PREFIX}{flag}")
}

/// The record key of `flag`'s scheduled change.
pub fn schedule_key(flag: &str) -> String {
    format!("{SCHEDULE_PREFIX}{flag}")
}

/// Why a plan or transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// The plan is malformed.
    #[error("{0}")]
    Plan(String),
    /// The transition does not apply in the rollout's state.
    #[error("the rollout is {0:?}; {1}")]
    State(RolloutState, &'static str),
}

/// One step: variant weights (integers, as `fractional` takes them) held for `hold_s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Variant → weight.
    pub weights: BTreeMap<String, u32>,
    /// Seconds to hold this step before the next (ignored for the last step).
    pub hold_s: u64,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Advancing on schedule.
    Running,
    /// Held at its step; `remaining_ms` of the step is left.
    Paused,
    /// Reached its last step (the flag keeps those weights).
    Done,
    /// Stopped; the flag was put back as it was before.
    Aborted,
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The plan.
    pub steps: Vec<Step>,
    /// Where it is.
    pub state: RolloutState,
    /// The step in force (index into `steps`).
    pub step: usize,
    /// When the next step is due (ms since the Unix epoch), while running.
    pub next_at_ms: u64,
    /// What was left of the step when it was paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    /// When it started.
    pub started_ms: u64,
    /// The flag's definition before the rollout, for abort.
    pub before: Value,
}

/// `definition` with its targeting replaced by a `fractional` split over `weights`.
pub fn with_weights(definition: &Value, weights: &BTreeMap<String, u32>) -> Value {
    let buckets: Vec<Value> = weights.iter().map(|(v, w)| json!([v, w])).collect();
    let mut out = definition.clone();
    if let Value::Object(o) = &mut out {
        o.insert("targeting".into(), json!({ "fractional": buckets }));
    }
    out
}

fn variants(definition: &Value) -> Vec<&str> {
    definition["variants"]
        .as_object()
        .map(|v| v.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Checks that `weights` name only variants of `definition` and weigh something.
fn check_weights(
    definition: &Value,
    weights: &BTreeMap<String, u32>,
    at: usize,
) -> Result<(), RolloutError> {
    let known = variants(definition);
    if let Some(v) = weights.keys().find(|v| !known.contains(&v.as_str())) {
        return Err(RolloutError::Plan(format!(
            "step {at} weighs variant {v:?}, which the flag does not have"
        )));
    }
    if weights.values().map(|w| u64::from(*w)).sum::<u64>() == 0 {
        return Err(RolloutError::Plan(format!("step {at} weighs nothing")));
    }
    Ok(())
}

impl Rollout {
    /// Starts `steps` on a flag defined as `definition` at `now_ms`: the rollout record and
    /// the flag's definition at the first step.
    pub fn start(
        steps: Vec<Step>,
        definition: &Value,
        now_ms: u64,
    ) -> Result<(Self, Value), RolloutError> {
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(RolloutError::Plan(format!(
                "a plan has 1 to {MAX_STEPS} steps"
            )));
        }
        for (i, s) in steps.iter().enumerate() {
            check_weights(definition, &s.weights, i)?;
            if s.hold_s > MAX_HOLD_S || (s.hold_s == 0 && i + 1 < steps.len()) {
                return Err(RolloutError::Plan(format!(
                    "step {i} must be held 1 to {MAX_HOLD_S} seconds"
                )));
            }
        }
        let first = with_weights(definition, &steps[0].weights);
        let single = steps.len() == 1;
        let rollout = Self {
            next_at_ms: now_ms.saturating_add(steps[0].hold_s.saturating_mul(1000)),
            state: if single {
                RolloutState::Done
            } else {
                RolloutState::Running
            },
            step: 0,
            remaining_ms: None,
            started_ms: now_ms,
            before: definition.clone(),
            steps,
        };
        Ok((rollout, first))
    }

    /// Whether the next step is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.state == RolloutState::Running && now_ms >= self.next_at_ms
    }

    /// The next step, applied to the flag's `current` definition: the new record and the new
    /// definition (`None` when the current definition lost a variant the step weighs: the
    /// rollout pauses instead, for a person to look at).
    pub fn advance(&self, current: &Value, now_ms: u64) -> (Self, Option<Value>) {
        let mut next = self.clone();
        let i = self.step + 1;
        let Some(step) = self.steps.get(i) else {
            next.state = RolloutState::Done;
            return (next, None);
        };
        if check_weights(current, &step.weights, i).is_err() {
            next.state = RolloutState::Paused;
            next.remaining_ms = Some(0);
            return (next, None);
        }
        next.step = i;
        next.next_at_ms = now_ms.saturating_add(step.hold_s.saturating_mul(1000));
        if i + 1 == self.steps.len() {
            next.state = RolloutState::Done;
        }
        (next, Some(with_weights(current, &step.weights)))
    }

    /// Holds the rollout at its step.
    pub fn pause(&self, now_ms: u64) -> Result<Self, RolloutError> {
        if self.state != RolloutState::Running {
            return Err(RolloutError::State(
                self.state,
                "only a running rollout pauses",
            ));
        }
        let mut next = self.clone();
        next.state = RolloutState::Paused;
        next.remaining_ms = Some(self.next_at_ms.saturating_sub(now_ms));
        Ok(next)
    }

    /// Goes on from where it was paused.
    pub fn resume(&self, now_ms: u64) -> Result<Self, RolloutError> {
        if self.state != RolloutState::Paused {
            return Err(RolloutError::State(
                self.state,
                "only a paused rollout resumes",
            ));
        }
        let mut next = self.clone();
        next.state = RolloutState::Running;
        next.next_at_ms = now_ms.saturating_add(self.remaining_ms.unwrap_or(0));
        next.remaining_ms = None;
        Ok(next)
    }

    /// Stops it: the record, and the definition from before the rollout to put back.
    pub fn abort(&self) -> Result<(Self, Value), RolloutError> {
        if matches!(self.state, RolloutState::Aborted) {
            return Err(RolloutError::State(self.state, "it is already aborted"));
        }
        let mut next = self.clone();
        next.state = RolloutState::Aborted;
        Ok((next, self.before.clone()))
    }

    /// Whether another rollout of the flag may start (this one is over).
    pub fn is_over(&self) -> bool {
        matches!(self.state, RolloutState::Done | RolloutState::Aborted)
    }
}

/// A flag change that takes effect at a given time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduled {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The definition then; `None` deletes the flag.
    pub definition: Option<Value>,
    /// Why, recorded in the flag's history when it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag() -> Value {
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
    }

    fn steps(list: &[(u32, u32, u64)]) -> Vec<Step> {
        list.iter()
            .map(|(on, off, hold_s)| Step {
                weights: BTreeMap::from([("on".into(), *on), ("off".into(), *off)]),
                hold_s: *hold_s,
            })
            .collect()
    }

    #[test]
    fn a_rollout_steps_through_its_plan_and_aborts_to_what_was_before() {
        let (r, first) = Rollout::start(
            steps(&[(10, 90, 60), (50, 50, 60), (100, 0, 0)]),
            &flag(),
            1_000,
        )
        .unwrap();
        assert_eq!(
            first["targeting"],
            json!({"fractional": [["off", 90], ["on", 10]]})
        );
        assert_eq!((r.state, r.next_at_ms), (RolloutState::Running, 61_000));
        assert!(!r.due(60_999) && r.due(61_000));
        let (r2, second) = r.advance(&first, 61_000);
        assert_eq!(
            second.unwrap()["targeting"]["fractional"][1],
            json!(["on", 50])
        );
        let paused = r2.pause(100_000).unwrap();
        assert_eq!(paused.remaining_ms, Some(21_000));
        assert!(!paused.due(u64::MAX));
        let resumed = paused.resume(200_000).unwrap();
        assert_eq!(resumed.next_at_ms, 221_000);
        let (done, last) = resumed.advance(&first, 221_000);
        assert_eq!(done.state, RolloutState::Done);
        assert_eq!(
            last.unwrap()["targeting"]["fractional"][1],
            json!(["on", 100])
        );
        let (aborted, before) = done.abort().unwrap();
        assert_eq!((aborted.state, before), (RolloutState::Aborted, flag()));
    }

    #[test]
    fn bad_plans_are_refused() {
        let plan = |p: Vec<Step>| Rollout::start(p, &flag(), 0).unwrap_err().to_string();
        assert!(plan(vec![]).contains("1 to"));
        assert!(plan(steps(&[(0, 0, 10)])).contains("weighs nothing"));
        assert!(plan(steps(&[(1, 1, 0), (1, 1, 0)])).contains("held"));
        let mut odd = steps(&[(1, 1, 10)]);
        odd[0].weights.insert("maybe".into(), 1);
        assert!(plan(odd).contains("\"maybe\""));
    }
}

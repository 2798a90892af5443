//! The propagation SLO: every edge applies revision v by
//! `max(commit(v), the moment it last regained a path to a holder of v) + 5 s`.
//!
//! "Last regained" is the latest moment the edge went from no path to a path, whether or not it
//! still has one: data already in flight can reach an edge just after a new cut, and its clock
//! then started when its previous path opened, not at the commit.

use std::time::Duration;

/// How late an edge applied a revision committed at `committed`, given when it last regained a
/// path to a holder; `None` if it was on time under `slo`.
pub fn late(
    now: Duration,
    committed: Duration,
    last_regained: Duration,
    slo: Duration,
) -> Option<Duration> {
    let start = committed.max(last_regained);
    let late = now.saturating_sub(start);
    (late > slo).then_some(late)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: Duration = Duration::from_secs(5);

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_clock_starts_at_the_later_of_commit_and_regained_path() {
        // Path all along: measured from the commit.
        assert_eq!(late(s(104.0), s(100.0), s(0.0), SLO), None);
        assert_eq!(late(s(106.0), s(100.0), s(0.0), SLO), Some(s(6.0)));
        // Committed while cut off, path regained at 110: measured from 110.
        assert_eq!(late(s(112.0), s(100.0), s(110.0), SLO), None);
        assert_eq!(late(s(116.0), s(100.0), s(110.0), SLO), Some(s(6.0)));
        // Applied from data in flight just after a new cut at 112: still measured from 110,
        // not from the commit at 100.
        assert_eq!(late(s(112.5), s(100.0), s(110.0), SLO), None);
    }
}

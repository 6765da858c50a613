//! Profile-derived schedules: what each phase of a program will need and
//! when, known before the program runs (its manifest's per-phase needs,
//! from `perfhint profile` + `perfhint embed`). The engine provisions a
//! phase `lead` ahead of its expected start, the lead being how long this
//! VM's own resizes take to show in the guest, and keeps it until the
//! schedule says the phase is over.
//!
//! Times in a schedule are offsets from the program's start, taken to be
//! the arrival of its manifest. When the guest announces a scheduled phase
//! (a `phase_begin` with the same id), later phases are expected relative
//! to that announcement instead, so a program that runs slower or faster
//! than its profile keeps its resources on time.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most phases a schedule holds (the wire format's limit).
pub const MAX_PHASES: usize = 16;

/// One phase of a schedule, in the engine's units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPhase {
    pub id: u32,
    /// Expected start, from the program's start.
    pub start: Duration,
    pub duration: Duration,
    /// vCPUs and memory bytes wanted (after the policy's headroom and
    /// reserve), indexed by `Resource`; `None`: the profile has no figure.
    pub want: [Option<u64>; 2],
}

/// A schedule in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
    phases: Vec<PlannedPhase>,
    /// When the program started (its manifest arrived).
    origin: Duration,
    /// The latest scheduled phase the guest announced, and when.
    anchor: Option<(usize, Duration)>,
    /// Phases the guest announced the end of.
    ended: Vec<bool>,
    /// The manifest's sequence number, named in decisions.
    pub seq: u32,
}

impl Schedule {
    /// A schedule starting at `origin`; phases sorted by start, at most
    /// [`MAX_PHASES`].
    pub fn new(origin: Duration, seq: u32, mut phases: Vec<PlannedPhase>) -> Self {
        phases.sort_by_key(|p| p.start);
        phases.truncate(MAX_PHASES);
        let ended = vec![false; phases.len()];
        Schedule {
            phases,
            origin,
            anchor: None,
            ended,
            seq,
        }
    }

    pub fn phases(&self) -> &[PlannedPhase] {
        &self.phases
    }

    /// When the program started (its manifest arrived).
    pub fn origin(&self) -> Duration {
        self.origin
    }

    fn index(&self, id: u32) -> Option<usize> {
        self.phases.iter().position(|p| p.id == id)
    }

    /// The guest began phase `id` at `now`.
    pub fn phase_began(&mut self, id: u32, now: Duration) {
        if let Some(i) = self.index(id) {
            self.anchor = Some((i, now));
            self.ended[i] = false;
        }
    }

    /// The guest ended phase `id`.
    pub fn phase_ended(&mut self, id: u32) {
        if let Some(i) = self.index(id) {
            self.ended[i] = true;
        }
    }

    /// When phase `i` is expected to start.
    pub fn expected_start(&self, i: usize) -> Duration {
        let p = &self.phases[i];
        match self.anchor {
            Some((k, at)) if i >= k => at + p.start.saturating_sub(self.phases[k].start),
            _ => self.origin + p.start,
        }
    }

    /// When phase `i` is over: its announced end, else its expected end —
    /// for an announced phase with no end yet, twice its expected length,
    /// so a guest that never ends a phase does not hold resources for ever.
    fn over(&self, i: usize, now: Duration) -> bool {
        if self.ended[i] {
            return true;
        }
        let p = &self.phases[i];
        let begun_by_guest = self.anchor.is_some_and(|(k, _)| k == i);
        let length = if begun_by_guest {
            p.duration * 2
        } else {
            p.duration
        };
        now >= self.expected_start(i) + length
    }

    /// The largest need for `resource` among the phases due at `now`: those
    /// starting within their lead time (`lead` of what they want) or
    /// running, and not over. With the phase's id.
    pub fn demand(
        &self,
        resource: usize,
        now: Duration,
        lead: impl Fn(u64) -> Duration,
    ) -> Option<(u64, u32)> {
        (0..self.phases.len())
            .filter_map(|i| Some((i, self.phases[i].want[resource]?)))
            .filter(|&(i, w)| now + lead(w) >= self.expected_start(i) && !self.over(i, now))
            .map(|(i, w)| (w, self.phases[i].id))
            .max_by_key(|&(w, _)| w)
    }

    /// Every phase is over: the schedule can go.
    pub fn finished(&self, now: Duration) -> bool {
        (0..self.phases.len()).all(|i| self.over(i, now))
    }
}

/// Recent resize latencies of one resource (decision → visible in the
/// guest), and the lead time they give.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latencies {
    recent: VecDeque<Duration>,
}

/// Latencies kept per resource.
pub const LATENCY_WINDOW: usize = 32;

impl Latencies {
    pub fn new() -> Self {
        Latencies {
            recent: VecDeque::with_capacity(LATENCY_WINDOW),
        }
    }

    pub fn observe(&mut self, d: Duration) {
        if self.recent.len() == LATENCY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    /// The 95th percentile of the recent latencies, or `initial` before any.
    pub fn lead(&self, initial: Duration) -> Duration {
        if self.recent.is_empty() {
            return initial;
        }
        let mut v: Vec<Duration> = self.recent.iter().copied().collect();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * 0.95).ceil() as usize;
        v[i.min(v.len() - 1)]
    }

    pub fn count(&self) -> usize {
        self.recent.len()
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn phase(id: u32, start: f64, len: f64, vcpus: u64) -> PlannedPhase {
        PlannedPhase {
            id,
            start: s(start),
            duration: s(len),
            want: [Some(vcpus), None],
        }
    }

    /// serial 0–3 s on 1 vCPU, parallel 3–6 s on 4, serial 6–8 s on 1.
    fn demo(origin: f64) -> Schedule {
        Schedule::new(
            s(origin),
            9,
            vec![
                phase(2, 3.0, 3.0, 4),
                phase(1, 0.0, 3.0, 1),
                phase(3, 6.0, 2.0, 1),
            ],
        )
    }

    #[test]
    fn a_phase_is_due_lead_ahead_of_its_start_and_until_its_end() {
        let sc = demo(10.0);
        let lead = s(1.0);
        assert_eq!(sc.demand(0, s(11.0), |_| lead), Some((1, 1)));
        assert_eq!(sc.demand(0, s(11.9), |_| lead), Some((1, 1)), "not yet");
        assert_eq!(sc.demand(0, s(12.0), |_| lead), Some((4, 2)), "lead ahead");
        assert_eq!(sc.demand(0, s(15.9), |_| lead), Some((4, 2)));
        assert_eq!(sc.demand(0, s(16.0), |_| lead), Some((1, 3)), "over");
        assert_eq!(sc.demand(1, s(12.0), |_| lead), None, "no memory figure");
        assert!(!sc.finished(s(17.9)));
        assert!(sc.finished(s(18.0)));
    }

    #[test]
    fn an_announced_phase_moves_the_later_ones() {
        let mut sc = demo(0.0);
        let lead = s(0.5);
        // The program runs late: its first phase begins at 2 s, not 0.
        sc.phase_began(1, s(2.0));
        assert_eq!(sc.expected_start(1), s(5.0));
        assert_eq!(sc.demand(0, s(4.0), |_| lead), Some((1, 1)));
        assert_eq!(sc.demand(0, s(4.5), |_| lead), Some((4, 2)));
        assert_eq!(sc.expected_start(0), s(2.0), "the announced phase itself");
        // A phase before the announced one keeps its profiled time.
        sc.phase_began(2, s(9.0));
        assert_eq!(sc.expected_start(0), s(0.0));
        assert_eq!(sc.expected_start(2), s(12.0));
    }

    #[test]
    fn an_announced_end_releases_at_once_and_a_missing_one_in_time() {
        let mut sc = demo(0.0);
        sc.phase_began(2, s(3.0));
        assert_eq!(sc.demand(0, s(4.0), |_| s(0.0)), Some((4, 2)));
        sc.phase_ended(2);
        assert_eq!(sc.demand(0, s(4.0), |_| s(0.0)), None);
        let mut sc = demo(0.0);
        sc.phase_began(2, s(3.0));
        assert_eq!(sc.demand(0, s(8.9), |_| s(0.0)), Some((4, 2)), "runs long");
        assert_eq!(sc.demand(0, s(9.0), |_| s(0.0)), None, "twice its length");
    }

    #[test]
    fn lead_is_the_95th_percentile_of_recent_latencies() {
        let mut l = Latencies::new();
        assert_eq!(l.lead(s(1.0)), s(1.0));
        for ms in 1..=100 {
            l.observe(Duration::from_millis(ms * 10));
        }
        assert_eq!(l.count(), LATENCY_WINDOW);
        // The window holds 690..=1000 ms; its p95 is near the top.
        assert!(l.lead(s(1.0)) >= Duration::from_millis(970));
    }

    #[test]
    fn schedules_are_bounded() {
        let phases = (0..40).map(|i| phase(i, f64::from(i), 1.0, 1)).collect();
        assert_eq!(Schedule::new(s(0.0), 0, phases).phases().len(), MAX_PHASES);
    }
}

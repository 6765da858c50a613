//! The policy engine: turns a stream of untrusted hints into vCPU
//! allocation decisions, each with its reason. Pure logic with an explicit
//! clock, so every rule is unit-tested and its latency benchmarked.
//!
//! Rules: demand comes from the innermost open phase's parallelism hint,
//! else from the latest one outside phases, else from the manifest. The
//! target is demand + headroom within [min, max]. Growing happens at once
//! (hints announce what is coming); shrinking waits until the lower target
//! has held for `shrink_after_ms` and the last change is `cooldown_ms` old.

use std::time::Duration;

use guest_hints::wire::{Hint, Outcome};
use serde::Serialize;

use super::config::{Policy, Untrusted};

/// One allocation change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Milliseconds since the VM started.
    pub t_ms: u64,
    pub resource: &'static str,
    pub from: u64,
    pub to: u64,
    pub reason: String,
    /// Sequence numbers of the hints behind it.
    pub hints: Vec<u32>,
    /// A hint behind it was clamped to the policy's bounds.
    pub clamped: bool,
    /// Hints were rate-limited since the previous decision.
    pub rate_limited: u64,
}

#[derive(Clone, Debug)]
struct Frame {
    phase: u32,
    tasks: Option<(u32, u32)>, // (demand, seq)
}

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Clone, Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl Bucket {
    fn take(&mut self, now: Duration) -> bool {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Engine {
    policy: Policy,
    /// Bounds after combining the policy with the VM's own limits.
    min: u32,
    max: u32,
    alloc: u32,
    base: Option<(u32, u32)>,
    manifest: Option<(u32, u32)>,
    frames: Vec<Frame>,
    last_change: Option<Duration>,
    lower_since: Option<Duration>,
    bucket: Bucket,
    rate_limited: u64,
    clamped_pending: bool,
}

impl Engine {
    /// `vm_max` is the VM's `--cpus max`; `boot` its boot vCPU count.
    pub fn new(policy: Policy, boot: u32, vm_max: u32) -> Self {
        let max = policy.vcpus.max.min(vm_max).max(1);
        let min = policy.vcpus.min.min(max);
        let bucket = Bucket {
            rate: f64::from(policy.hints.rate_per_sec),
            burst: f64::from(policy.hints.burst),
            tokens: f64::from(policy.hints.burst),
            last: Duration::ZERO,
        };
        Engine {
            policy,
            min,
            max,
            alloc: boot.clamp(min, max),
            base: None,
            manifest: None,
            frames: Vec::new(),
            last_change: None,
            lower_since: None,
            bucket,
            rate_limited: 0,
            clamped_pending: false,
        }
    }

    pub fn allocation(&self) -> u32 {
        self.alloc
    }

    pub fn bounds(&self) -> (u32, u32) {
        (self.min, self.max)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The vCPU count the hints ask for, with headroom, before bounds.
    fn wanted(&self) -> Option<(u32, u32)> {
        self.frames
            .iter()
            .rev()
            .find_map(|f| f.tasks)
            .or(self.base)
            .or(self.manifest)
            .map(|(d, seq)| (d.saturating_add(self.policy.vcpus.headroom), seq))
    }

    fn target(&self) -> (u32, Option<u32>) {
        match self.wanted() {
            Some((w, seq)) => (w.clamp(self.min, self.max), Some(seq)),
            None => (self.alloc, None),
        }
    }

    /// Takes one hint; returns its outcome and any decision it causes now.
    pub fn on_hint(&mut self, now: Duration, seq: u32, hint: &Hint) -> (Outcome, Option<Decision>) {
        if !self.bucket.take(now) {
            self.rate_limited += 1;
            return (Outcome::RateLimited, None);
        }
        let mut outcome = Outcome::Accepted;
        let mut demand = |tasks: u32, max_useful: u32| -> Option<u32> {
            let d = if max_useful > 0 {
                tasks.min(max_useful)
            } else {
                tasks
            };
            if d.saturating_add(self.policy.vcpus.headroom) > self.max || d == 0 {
                match self.policy.hints.untrusted {
                    Untrusted::Clamp => {
                        outcome = Outcome::Clamped;
                        Some(d)
                    }
                    Untrusted::Ignore => {
                        outcome = Outcome::Rejected;
                        None
                    }
                }
            } else {
                Some(d)
            }
        };
        match hint {
            Hint::Parallelism(p) => {
                if let Some(d) = demand(p.runnable_tasks, p.max_useful) {
                    match self.frames.last_mut() {
                        Some(f) => f.tasks = Some((d, seq)),
                        None => self.base = Some((d, seq)),
                    }
                }
            }
            Hint::Manifest(m) => {
                if let Some(p) = m.parallelism {
                    if let Some(d) = demand(p.runnable_tasks, p.max_useful) {
                        self.manifest = Some((d, seq));
                    }
                }
            }
            Hint::PhaseBegin(p) if !p.declared_only => {
                // A runaway guest cannot grow the stack without bound.
                if self.frames.len() >= 64 {
                    self.frames.remove(0);
                }
                self.frames.push(Frame {
                    phase: p.id,
                    tasks: None,
                });
            }
            Hint::PhaseEnd { id } => {
                if let Some(i) = self.frames.iter().rposition(|f| f.phase == *id) {
                    self.frames.truncate(i);
                }
            }
            _ => {}
        }
        if outcome == Outcome::Clamped {
            self.clamped_pending = true;
        }
        let decision = self.evaluate(now, Some(seq));
        (outcome, decision)
    }

    /// Re-evaluates with no new hint (delayed shrinks); call periodically.
    pub fn tick(&mut self, now: Duration) -> Option<Decision> {
        self.evaluate(now, None)
    }

    /// An allocation set from outside (a manual resize through the API).
    pub fn set_allocation(&mut self, now: Duration, to: u32, reason: &str) -> Option<Decision> {
        let to = to.clamp(self.min, self.max);
        (to != self.alloc).then(|| self.change(now, to, reason.to_string(), Vec::new()))
    }

    fn change(&mut self, now: Duration, to: u32, reason: String, hints: Vec<u32>) -> Decision {
        let d = Decision {
            t_ms: now.as_millis() as u64,
            resource: "vcpus",
            from: u64::from(self.alloc),
            to: u64::from(to),
            reason,
            hints,
            clamped: std::mem::take(&mut self.clamped_pending),
            rate_limited: std::mem::take(&mut self.rate_limited),
        };
        self.alloc = to;
        self.last_change = Some(now);
        self.lower_since = None;
        d
    }

    fn evaluate(&mut self, now: Duration, cause: Option<u32>) -> Option<Decision> {
        let (target, seq) = self.target();
        let hints: Vec<u32> = seq
            .into_iter()
            .chain(cause)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if target > self.alloc {
            let reason = format!(
                "grow: hinted parallelism needs {target} vCPU(s){}",
                if target == self.max {
                    " (policy max)"
                } else {
                    ""
                }
            );
            return Some(self.change(now, target, reason, hints));
        }
        if target < self.alloc {
            let since = *self.lower_since.get_or_insert(now);
            let held = now.saturating_sub(since)
                >= Duration::from_millis(self.policy.timing.shrink_after_ms);
            let cooled = self.last_change.is_none_or(|t| {
                now.saturating_sub(t) >= Duration::from_millis(self.policy.timing.cooldown_ms)
            });
            if held && cooled {
                let reason = format!(
                    "shrink: demand of {target} vCPU(s) held for {} ms",
                    now.saturating_sub(since).as_millis()
                );
                return Some(self.change(now, target, reason, hints));
            }
        } else {
            self.lower_since = None;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_hints::client::hint;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn engine(boot: u32, max: u32) -> Engine {
        Engine::new(Policy::default(), boot, max)
    }

    #[test]
    fn grows_at_once_and_shrinks_after_the_window() {
        let mut e = engine(1, 4);
        let (o, d) = e.on_hint(ms(0), 7, &hint::parallelism(4, 4, 0.0));
        assert_eq!(o, Outcome::Accepted);
        let d = d.expect("grow at once");
        assert_eq!((d.from, d.to, d.hints.clone()), (1, 4, vec![7]));
        let (_, d) = e.on_hint(ms(100), 8, &hint::parallelism(1, 1, 0.0));
        assert!(d.is_none(), "no shrink before the window");
        assert!(e.tick(ms(1_000)).is_none());
        let d = e.tick(ms(2_200)).expect("shrink after 2 s");
        assert_eq!((d.from, d.to), (4, 1));
        assert!(d.reason.starts_with("shrink"));
    }

    #[test]
    fn a_phase_sets_demand_and_its_end_restores_it() {
        let mut e = engine(1, 8);
        e.on_hint(ms(0), 0, &hint::parallelism(2, 2, 0.0));
        e.on_hint(ms(0), 1, &hint::phase_begin(5, "p", 0));
        let (_, d) = e.on_hint(ms(0), 2, &hint::parallelism(6, 6, 0.0));
        assert_eq!(d.unwrap().to, 6);
        e.on_hint(ms(10), 3, &hint::phase_end(5));
        assert_eq!(
            e.tick(ms(5_000)).unwrap().to,
            2,
            "back to the demand outside the phase"
        );
    }

    #[test]
    fn absurd_requests_are_clamped_or_ignored() {
        let mut e = engine(1, 4);
        let (o, d) = e.on_hint(ms(0), 0, &hint::parallelism(1000, 0, 0.0));
        assert_eq!(o, Outcome::Clamped);
        let d = d.unwrap();
        assert_eq!(d.to, 4);
        assert!(d.clamped);
        // Zero vCPUs is clamped to the minimum, never applied.
        let (o, _) = e.on_hint(ms(10), 1, &hint::parallelism(0, 0, 0.0));
        assert_eq!(o, Outcome::Clamped);
        assert_eq!(e.tick(ms(10_000)).unwrap().to, 1);
        let mut p = Policy::default();
        p.hints.untrusted = Untrusted::Ignore;
        let mut e = Engine::new(p, 1, 4);
        let (o, d) = e.on_hint(ms(0), 0, &hint::parallelism(1000, 0, 0.0));
        assert_eq!((o, d), (Outcome::Rejected, None));
    }

    #[test]
    fn floods_are_rate_limited() {
        let mut e = engine(1, 4);
        let burst = e.policy().hints.burst;
        let mut limited = 0;
        for i in 0..burst + 50 {
            if e.on_hint(ms(0), i, &hint::phase_end(0)).0 == Outcome::RateLimited {
                limited += 1;
            }
        }
        assert_eq!(limited, 50);
        // Tokens come back with time.
        assert_eq!(
            e.on_hint(ms(1_000), 0, &hint::phase_end(0)).0,
            Outcome::Accepted
        );
        let (_, d) = e.on_hint(ms(1_000), 1, &hint::parallelism(3, 3, 0.0));
        assert_eq!(d.unwrap().rate_limited, 50);
    }

    #[test]
    fn policy_bounds_and_manual_resize() {
        let mut p = Policy::default();
        p.vcpus.min = 2;
        p.vcpus.max = 3;
        let mut e = Engine::new(p, 1, 8);
        assert_eq!(e.allocation(), 2, "boot count brought within the policy");
        assert_eq!(e.set_allocation(ms(0), 8, "api").unwrap().to, 3);
        assert!(e.set_allocation(ms(0), 3, "api").is_none());
    }

    #[test]
    fn manifest_gives_a_default_demand() {
        let mut e = engine(1, 8);
        let m = guest_hints::ManifestBuilder::new("m")
            .parallelism(3, 3, 0.0)
            .build();
        let (_, d) = e.on_hint(ms(0), 0, &Hint::Manifest(m));
        assert_eq!(d.unwrap().to, 3);
        let (_, d) = e.on_hint(ms(0), 1, &hint::parallelism(5, 5, 0.0));
        assert_eq!(d.unwrap().to, 5, "a live hint overrides the manifest");
    }
}

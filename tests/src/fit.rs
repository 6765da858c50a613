//! How well an allocation fitted the demand, over a run's samples of
//! (demand, allocation) — the measures of `resize-bench`, the demo's
//! summary and `docs/benchmarks.md` (the simulator computes the same in
//! `policy/src/simulate/report.rs`).

/// Slack is the unused share of what was allocated, shortage the share of
/// samples where demand exceeded the allocation, and deficit the
/// demand-weighted share that was missing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fit {
    pub slack: f64,
    pub shortage: f64,
    pub deficit: f64,
}

impl Fit {
    /// `samples`: (demand, allocation) pairs.
    pub fn of(samples: &[(f64, f64)]) -> Fit {
        let alloc: f64 = samples.iter().map(|s| s.1).sum();
        let demand: f64 = samples.iter().map(|s| s.0).sum();
        let unused: f64 = samples.iter().map(|s| (s.1 - s.0).max(0.0)).sum();
        let missing: f64 = samples.iter().map(|s| (s.0 - s.1).max(0.0)).sum();
        let short = samples.iter().filter(|s| s.0 > s.1).count();
        Fit {
            slack: unused / alloc.max(f64::MIN_POSITIVE),
            shortage: short as f64 / samples.len().max(1) as f64,
            deficit: missing / demand.max(f64::MIN_POSITIVE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_shortage_and_deficit() {
        // Demand 1 on 4, then 4 on 2: 3 unused of 6; one sample of two
        // short; 2 missing of 5 wanted.
        let f = Fit::of(&[(1.0, 4.0), (4.0, 2.0)]);
        assert_eq!(f.slack, 0.5);
        assert_eq!(f.shortage, 0.5);
        assert_eq!(f.deficit, 0.4);
        assert_eq!(Fit::of(&[]), Fit::default());
    }
}

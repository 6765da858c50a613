//! Hint → policy decision latency: the time the policy engine takes to turn
//! one hint into an outcome and (when the allocation changes) a decision.
//! Prints p50/p99/max; asserts nothing.
//!
//!   cargo bench -p perfvmm-policy --bench engine

use std::hint::black_box;
use std::time::{Duration, Instant};

use guest_hints::client::hint;
use perfvmm_policy::{Engine, Policy, VmLimits};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mut policy = Policy::default();
    // Measure the decision path, not the rate limiter's refusals.
    policy.hints.rate_per_sec = u32::MAX;
    policy.hints.burst = u32::MAX;
    let mut engine = Engine::new(
        policy,
        VmLimits {
            boot_vcpus: 1,
            max_vcpus: 64,
            boot_memory: 512 << 20,
            max_memory: 4 << 30,
        },
    );
    let n = 200_000u32;
    let mut samples = Vec::with_capacity(n as usize);
    let mut decisions = 0u64;
    let t0 = Instant::now();
    for i in 0..n {
        // Alternate phases and demands so that many hints cause decisions.
        let h = match i % 4 {
            0 => hint::phase_begin(i, "p", 10),
            1 => hint::parallelism(1 + (i / 4) % 64, 64, 0.1),
            2 => hint::memory(1 << 30, 2 << 30, 0),
            _ => hint::phase_end(i - 3),
        };
        let now = Duration::from_micros(u64::from(i) * 50);
        let start = Instant::now();
        let (outcome, d) = engine.on_hint(now, i, black_box(&h));
        let tick = engine.tick(now);
        let elapsed = start.elapsed().as_nanos() as u64;
        black_box(outcome);
        decisions += (d.len() + tick.len()) as u64;
        samples.push(elapsed);
    }
    let total = t0.elapsed();
    samples.sort_unstable();
    println!("hint -> policy decision ({n} hints, {decisions} decisions, one thread)");
    println!("  p50 {:>7} ns", percentile(&samples, 0.50));
    println!("  p99 {:>7} ns", percentile(&samples, 0.99));
    println!("  max {:>7} ns", samples.last().copied().unwrap_or(0));
    println!(
        "  throughput {:.0} hints/s",
        f64::from(n) / total.as_secs_f64()
    );
}

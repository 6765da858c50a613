//! Random sequences of hints (decoded from arbitrary record bodies, as the
//! device hands them over), ticks, usage and latency observations, refusals,
//! manual resizes and policy reloads (valid ones, as `Policy::check` lets
//! through): every decision the engine makes stays within the bounds of the
//! policy and the VM at that moment, the boot allocation is within them,
//! and nothing panics.
#![no_main]

use std::time::Duration;

use guest_hints::wire::{decode_record, RawRecord};
use libfuzzer_sys::fuzz_target;
use perfvmm_policy::config::{Mode, Size};
use perfvmm_policy::{Decision, Engine, Policy, Resource, VmLimits};

const VM: VmLimits = VmLimits {
    boot_vcpus: 2,
    max_vcpus: 8,
    boot_memory: 512 << 20,
    max_memory: 4 << 30,
};

fn check(engine: &Engine, decisions: &[Decision]) {
    for d in decisions {
        let (lo, hi) = engine.bounds(d.resource);
        assert!(
            (lo..=hi).contains(&d.to),
            "decision {d:?} outside [{lo}, {hi}]"
        );
    }
}

/// Allocations within bounds (true at the start; after a reload only once
/// the engine has evaluated again).
fn check_allocations(engine: &Engine) {
    for r in Resource::ALL {
        let (lo, hi) = engine.bounds(r);
        let a = engine.allocation(r);
        assert!(lo <= hi, "{r:?}: min {lo} above max {hi}");
        assert!((lo..=hi).contains(&a), "{r:?}: allocation {a} outside [{lo}, {hi}]");
    }
}

/// A valid policy from four bytes: its mode, bounds (beyond the VM's too)
/// and shrink window.
fn policy(b: &[u8]) -> Policy {
    let mut p = Policy {
        mode: [Mode::Static, Mode::Reactive, Mode::Hints, Mode::Schedule][usize::from(b[0] % 4)],
        ..Policy::default()
    };
    p.vcpus.min = u32::from(b[1] % 12).max(1);
    p.vcpus.max = p.vcpus.min + u32::from(b[2] % 12);
    p.memory.min = Size(u64::from(b[3] % 8) << 28);
    p.memory.max = Size(p.memory.min.0 + (u64::from(b[3] / 8 % 32) << 28));
    p.timing.shrink_after_ms = u64::from(b[0] / 4) * 50;
    if p.check().is_err() {
        return Policy::default();
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let Some((head, mut ops)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mut engine = Engine::new(policy(head), VM);
    check_allocations(&engine);
    let mut now = Duration::ZERO;
    let mut seq = 0u32;
    let mut last: Option<Decision> = None;
    while let Some((&op, rest)) = ops.split_first() {
        // Each operation: an opcode, a length and that many bytes.
        let Some((&len, rest)) = rest.split_first() else {
            break;
        };
        let n = usize::from(len % 48).min(rest.len());
        let (arg, rest) = rest.split_at(n);
        ops = rest;
        let byte = |i: usize| arg.get(i).copied().unwrap_or(0);
        let decisions = match op % 8 {
            0 => {
                let rec = RawRecord { kind: u16::from(byte(0) % 10), body: arg.get(1..).unwrap_or(&[]) };
                match decode_record(rec) {
                    Ok(Some(hint)) => {
                        seq = seq.wrapping_add(1);
                        // A few guest streams (open files), and stream 0.
                        let stream = u16::from(op >> 5);
                        engine.on_stream_hint(now, stream, seq, &hint).1
                    }
                    _ => Vec::new(),
                }
            }
            1 => {
                now += Duration::from_millis(u64::from(byte(0)) * 20);
                engine.tick(now)
            }
            2 => {
                let r = Resource::ALL[usize::from(byte(0) % 2)];
                engine.observe_usage(now, r, f64::from(byte(1)) * 0.25);
                Vec::new()
            }
            3 => {
                let r = Resource::ALL[usize::from(byte(0) % 2)];
                let d = Duration::from_millis(u64::from(byte(1)) * 40);
                engine.observe_latency(r, d, u64::from(byte(2) % 9));
                Vec::new()
            }
            4 => {
                engine.observe_memory_in_use(u64::from(byte(0)) << 24);
                Vec::new()
            }
            5 => {
                if let Some(d) = last.take() {
                    engine.refused(&d);
                }
                Vec::new()
            }
            6 => {
                let r = Resource::ALL[usize::from(byte(0) % 2)];
                let to = match r {
                    Resource::Vcpus => u64::from(byte(1)),
                    Resource::Memory => u64::from(byte(1)) << 26,
                };
                engine.set_allocation(now, r, to, "manual").into_iter().collect()
            }
            _ => {
                engine.reload(policy(&[byte(0), byte(1), byte(2), byte(3)]));
                Vec::new()
            }
        };
        check(&engine, &decisions);
        if let Some(d) = decisions.into_iter().last() {
            last = Some(d);
        }
    }
});

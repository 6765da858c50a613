//! `GET /metrics`: allocations, memory and hint counters in Prometheus'
//! text exposition format.

use std::fmt::Write as _;

use virtio_perf_device::{Counters, DropReason};

use super::Controller;
use crate::devices::bus::lock;
use crate::policy::Resource;

/// Prometheus text exposition of allocations, memory and hint counters.
pub fn render(c: &Controller, counters: &Counters) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let allocs = lock(c.engine()).allocations();
    for a in &allocs {
        let (unit, what) = match a.resource {
            Resource::Vcpus => ("", "vCPUs"),
            Resource::Memory => ("_bytes", "guest memory"),
        };
        let r = a.resource.as_str();
        gauge(
            &format!("perfvmm_{r}_allocated{unit}"),
            &format!("{what} the policy allocates"),
            a.allocated,
        );
        gauge(
            &format!("perfvmm_{r}_wanted{unit}"),
            &format!("{what} the hints ask for (0: no hint)"),
            a.wanted.unwrap_or(0),
        );
    }
    let m = c.memory_status();
    gauge(
        "perfvmm_guest_memory_bytes",
        "memory the guest has: boot size - balloon + virtio-mem plugged",
        m.guest_bytes,
    );
    gauge(
        "perfvmm_balloon_actual_bytes",
        "memory the guest has given to the balloon",
        m.balloon_actual_bytes,
    );
    gauge(
        "perfvmm_virtio_mem_plugged_bytes",
        "memory plugged through virtio-mem",
        m.virtio_mem_plugged_bytes,
    );
    if let Some(s) = &m.guest_stats {
        if let Some(v) = s.available_memory {
            gauge(
                "perfvmm_guest_available_bytes",
                "memory the guest reports available",
                v,
            );
        }
        if let Some(v) = s.total_memory {
            gauge(
                "perfvmm_guest_total_bytes",
                "memory the guest reports in total",
                v,
            );
        }
    }
    let counts = c.counts();
    let _ = writeln!(
        out,
        "# HELP perfvmm_decisions_total policy decisions, by resource and result\n\
         # TYPE perfvmm_decisions_total counter"
    );
    for r in Resource::ALL {
        let i = r as usize;
        let _ = writeln!(
            out,
            "perfvmm_decisions_total{{resource=\"{}\",result=\"applied\"}} {}\n\
             perfvmm_decisions_total{{resource=\"{}\",result=\"refused\"}} {}",
            r.as_str(),
            counts.applied[i],
            r.as_str(),
            counts.refused[i]
        );
    }
    let s = counters.snapshot();
    let _ = writeln!(
        out,
        "# HELP perfvmm_hints_total hints received, by outcome\n# TYPE perfvmm_hints_total counter"
    );
    for (outcome, v) in [
        ("accepted", s.accepted),
        ("clamped", s.clamped),
        ("rate_limited", s.rate_limited),
        ("rejected", s.rejected),
    ] {
        let _ = writeln!(out, "perfvmm_hints_total{{outcome=\"{outcome}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP perfvmm_hint_messages_dropped_total malformed messages dropped, by reason\n\
         # TYPE perfvmm_hint_messages_dropped_total counter"
    );
    for r in DropReason::ALL {
        let _ = writeln!(
            out,
            "perfvmm_hint_messages_dropped_total{{reason=\"{}\"}} {}",
            r.as_str(),
            s.dropped(r)
        );
    }
    out
}

//! Glue between the perf-hint device, the policy engine and the actuators
//! (vCPUs, memory): the device's sink asks the engine about every hint, and
//! the event loop applies the resulting decisions and logs each one. The
//! control API reads and steers the VM through the same controller.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use guest_hints::wire::{Hint, Outcome};
use serde_json::{json, Value};
use virtio_perf_device::{DropReason, HintSink};

use super::config::Policy;
use super::engine::{Decision, Engine, Resource};
use crate::devices::bus::lock;
use crate::devices::perf_hint::HintLog;
use crate::memory_manager::MemoryManager;
use crate::vcpu_manager::VcpuManager;

/// The perf-hint device's sink: policy outcome, hint log, decision queue.
pub struct PolicySink {
    log: HintLog,
    engine: Arc<Mutex<Engine>>,
    decisions: Sender<Decision>,
    start: Instant,
}

impl PolicySink {
    pub fn flush(&mut self) {
        self.log.flush();
    }

    pub fn log_mut(&mut self) -> &mut HintLog {
        &mut self.log
    }
}

impl HintSink for PolicySink {
    fn hint(&mut self, seq: u32, hint: &Hint) -> Outcome {
        let (outcome, decisions) = lock(&self.engine).on_hint(self.start.elapsed(), seq, hint);
        self.log.record(seq, hint, outcome);
        for d in decisions {
            let _ = self.decisions.send(d);
        }
        outcome
    }

    fn dropped(&mut self, reason: DropReason, detail: &str) {
        self.log.dropped(reason, detail);
    }
}

/// Decisions the control API can list.
pub const RECENT_DECISIONS: usize = 128;

/// Decision counts, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecisionCounts {
    pub applied: [u64; 2],
    pub refused: [u64; 2],
}

/// Applies decisions to the VM and writes the decision log.
pub struct Controller {
    engine: Arc<Mutex<Engine>>,
    rx: Receiver<Decision>,
    vcpus: VcpuManager,
    memory: MemoryManager,
    log: Option<BufWriter<File>>,
    recent: VecDeque<Value>,
    counts: DecisionCounts,
    policy_path: Option<PathBuf>,
    start: Instant,
}

/// The engine and the decision queue, before the actuators exist (the
/// device's sink is needed to build the buses the vCPUs use).
pub struct PendingController {
    engine: Arc<Mutex<Engine>>,
    rx: Receiver<Decision>,
    start: Instant,
}

/// Splits a policy engine into the perf-hint device's sink and the
/// controller to finish once the actuators exist.
pub fn split(engine: Engine, hint_log: HintLog, start: Instant) -> (PolicySink, PendingController) {
    let engine = Arc::new(Mutex::new(engine));
    let (tx, rx) = channel();
    let sink = PolicySink {
        log: hint_log,
        engine: engine.clone(),
        decisions: tx,
        start,
    };
    (sink, PendingController { engine, rx, start })
}

/// The actuators and outputs a controller drives.
pub struct Actuators {
    pub vcpus: VcpuManager,
    pub memory: MemoryManager,
    pub decision_log: Option<BufWriter<File>>,
    /// The policy file, for reloads through the API.
    pub policy_path: Option<PathBuf>,
}

impl PendingController {
    pub fn finish(self, a: Actuators) -> Controller {
        Controller {
            engine: self.engine,
            rx: self.rx,
            vcpus: a.vcpus,
            memory: a.memory,
            log: a.decision_log,
            recent: VecDeque::new(),
            counts: DecisionCounts::default(),
            policy_path: a.policy_path,
            start: self.start,
        }
    }
}

/// Opens the decision log.
pub fn open_decision_log(path: Option<&Path>) -> std::io::Result<Option<BufWriter<File>>> {
    Ok(path.map(File::create).transpose()?.map(BufWriter::new))
}

impl Controller {
    fn now(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    fn write(&mut self, v: Value) {
        if let Some(out) = &mut self.log {
            if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
                log::warn!("decision log: write failed; no further decisions are logged");
                self.log = None;
            }
        }
        if self.recent.len() == RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(v);
    }

    fn apply(&mut self, d: Decision) {
        let result = match d.resource {
            Resource::Vcpus => self
                .vcpus
                .resize(u32::try_from(d.to).unwrap_or(u32::MAX))
                .map_err(|e| e.to_string()),
            Resource::Memory => self.memory.resize(d.to).map_err(|e| e.to_string()),
        };
        let r = d.resource;
        let mut v = serde_json::to_value(&d).unwrap_or_default();
        v["applied"] = json!(result.is_ok());
        match &result {
            Ok(()) => {
                self.counts.applied[r as usize] += 1;
                log::info!(
                    "policy: {} {} → {}: {}",
                    r.as_str(),
                    r.show(d.from),
                    r.show(d.to),
                    d.reason
                );
            }
            Err(e) => {
                self.counts.refused[r as usize] += 1;
                lock(&self.engine).refused(&d);
                v["error"] = json!(e);
                log::warn!(
                    "policy: {} {} → {} not applied: {e}",
                    r.as_str(),
                    r.show(d.from),
                    r.show(d.to)
                );
            }
        }
        self.write(v);
    }

    /// Applies decisions made on the hint path.
    pub fn drain(&mut self) {
        while let Ok(d) = self.rx.try_recv() {
            self.apply(d);
        }
    }

    /// Periodic work: guest memory statistics, delayed shrinks, and noting
    /// vCPUs the guest ejected.
    pub fn tick(&mut self) {
        let in_use = self.memory.tick();
        let now = self.now();
        let decisions = {
            let mut e = lock(&self.engine);
            if let Some(bytes) = in_use {
                e.observe_memory_in_use(bytes);
            }
            e.tick(now)
        };
        for d in decisions {
            self.apply(d);
        }
        self.drain();
        for cpu in self.vcpus.take_ejected() {
            let t = self.now().as_millis() as u64;
            log::info!("vCPU {cpu} ejected by the guest and parked");
            self.write(json!({ "t_ms": t, "event": "ejected", "vcpu": cpu }));
        }
    }

    /// A manual resize (control API): applied at once, logged like any decision.
    pub fn manual_resize(&mut self, r: Resource, to: u64) -> Value {
        let now = self.now();
        let (decision, current) = {
            let mut e = lock(&self.engine);
            let d = e.set_allocation(now, r, to, "manual resize through the API");
            (d, e.allocation(r))
        };
        match decision {
            Some(d) => {
                self.apply(d);
                self.recent.back().cloned().unwrap_or_default()
            }
            None => json!({
                "resource": r,
                "to": current,
                "applied": true,
                "reason": "already at that size (after the policy's bounds)",
            }),
        }
    }

    /// Reads the policy file again (or `path`) and puts it in force.
    pub fn reload_policy(&mut self, path: Option<PathBuf>) -> Result<Value, String> {
        let path = path
            .or_else(|| self.policy_path.clone())
            .ok_or("this VM has no --policy file; give a path")?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let policy =
            Policy::from_toml(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
        lock(&self.engine).reload(policy);
        self.policy_path = Some(path.clone());
        let t = self.now().as_millis() as u64;
        let v = json!({ "t_ms": t, "event": "policy_reloaded", "path": path });
        log::info!("policy reloaded from {}", path.display());
        self.write(v.clone());
        // New bounds may change allocations at once.
        self.tick();
        Ok(v)
    }

    /// Allocation, bounds, hinted demand, open phases and memory state.
    pub fn status(&self) -> Value {
        let e = lock(&self.engine);
        json!({
            "uptime_ms": self.now().as_millis() as u64,
            "allocations": e.allocations(),
            "open_phases": e.open_phases(),
            "memory": self.memory.status(),
            "policy_file": self.policy_path,
        })
    }

    pub fn recent_decisions(&self) -> Vec<Value> {
        self.recent.iter().cloned().collect()
    }

    pub fn counts(&self) -> DecisionCounts {
        self.counts
    }

    pub fn memory(&self) -> &MemoryManager {
        &self.memory
    }

    pub fn engine(&self) -> &Arc<Mutex<Engine>> {
        &self.engine
    }
}

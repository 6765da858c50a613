//! The controller: applies the policy engine's decisions to the actuators
//! (vCPUs, memory) and logs each one. Decisions come from the hint path
//! (the device's [`PolicySink`](super::PolicySink), through a channel) and
//! from the controller's own periodic tick; the control API reads and
//! steers the VM through the same controller.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::jsonl::JsonLines;
use crate::actuators::{ActuatorError, MemoryManager, VcpuManager};
use crate::devices::bus::lock;
use crate::policy::{Decision, Engine, Policy, PolicyError, Resource};

/// Decisions the control API can list.
pub const RECENT_DECISIONS: usize = 128;

/// Decision counts, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecisionCounts {
    pub applied: [u64; 2],
    pub refused: [u64; 2],
}

/// A policy reload that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this VM has no --policy file; give a path")]
    NoPolicyFile,
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// What a controller drives.
pub struct Actuators {
    pub vcpus: VcpuManager,
    pub memory: MemoryManager,
}

/// Applies decisions to the VM and writes the decision log.
pub struct Controller {
    engine: Arc<Mutex<Engine>>,
    rx: Receiver<Decision>,
    vcpus: VcpuManager,
    memory: MemoryManager,
    log: JsonLines,
    recent: VecDeque<Value>,
    counts: DecisionCounts,
    policy_path: Option<PathBuf>,
    start: Instant,
}

impl Controller {
    /// A controller applying the decisions `rx` receives (from the hint
    /// path's [`PolicySink`](super::PolicySink)) and its own, from `engine`.
    pub fn new(
        engine: Arc<Mutex<Engine>>,
        rx: Receiver<Decision>,
        actuators: Actuators,
        log: JsonLines,
        policy_path: Option<PathBuf>,
        start: Instant,
    ) -> Self {
        Controller {
            engine,
            rx,
            vcpus: actuators.vcpus,
            memory: actuators.memory,
            log,
            recent: VecDeque::new(),
            counts: DecisionCounts::default(),
            policy_path,
            start,
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn write(&mut self, v: Value) {
        self.log.write(&v);
        self.log.flush();
        if self.recent.len() == RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(v);
    }

    fn apply(&mut self, d: Decision) {
        let result: Result<(), ActuatorError> = match d.resource {
            Resource::Vcpus => self
                .vcpus
                .resize(u32::try_from(d.to).unwrap_or(u32::MAX))
                .map_err(Into::into),
            Resource::Memory => self.memory.resize(d.to).map_err(Into::into),
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
                v["error"] = json!(e.to_string());
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
    pub fn reload_policy(&mut self, path: Option<PathBuf>) -> Result<Value, ReloadError> {
        let path = path
            .or_else(|| self.policy_path.clone())
            .ok_or(ReloadError::NoPolicyFile)?;
        let policy = Policy::load(&path)?;
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

//! Glue between the perf-hint device, the policy engine and the vCPU
//! actuator: the device's sink asks the engine about every hint, and the
//! event loop applies the resulting decisions and logs each one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use guest_hints::wire::{Hint, Outcome};
use serde_json::json;
use virtio_perf_device::{DropReason, HintSink};

use super::engine::{Decision, Engine};
use crate::devices::bus::lock;
use crate::devices::perf_hint::HintLog;
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
        let (outcome, decision) = lock(&self.engine).on_hint(self.start.elapsed(), seq, hint);
        self.log.record(seq, hint, outcome);
        if let Some(d) = decision {
            let _ = self.decisions.send(d);
        }
        outcome
    }

    fn dropped(&mut self, reason: DropReason, detail: &str) {
        self.log.dropped(reason, detail);
    }
}

/// Applies decisions to the VM and writes the decision log.
pub struct Controller {
    engine: Arc<Mutex<Engine>>,
    rx: Receiver<Decision>,
    vcpus: VcpuManager,
    log: Option<BufWriter<File>>,
    start: Instant,
}

/// The engine and the decision queue, before the vCPU actuator exists (the
/// device's sink is needed to build the buses the vCPUs use).
pub struct PendingController {
    engine: Arc<Mutex<Engine>>,
    rx: Receiver<Decision>,
    start: Instant,
}

/// Splits a policy engine into the perf-hint device's sink and the
/// controller to finish once the vCPU actuator exists.
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

impl PendingController {
    pub fn finish(self, vcpus: VcpuManager, decision_log: Option<BufWriter<File>>) -> Controller {
        Controller {
            engine: self.engine,
            rx: self.rx,
            vcpus,
            log: decision_log,
            start: self.start,
        }
    }
}

/// Opens the decision log.
pub fn open_decision_log(path: Option<&Path>) -> std::io::Result<Option<BufWriter<File>>> {
    Ok(path.map(File::create).transpose()?.map(BufWriter::new))
}

impl Controller {
    fn write(&mut self, v: serde_json::Value) {
        if let Some(out) = &mut self.log {
            if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
                log::warn!("decision log: write failed; no further decisions are logged");
                self.log = None;
            }
        }
    }

    fn apply(&mut self, d: Decision) {
        let result = self.vcpus.resize(d.to as u32);
        let mut v = serde_json::to_value(&d).unwrap_or_default();
        v["applied"] = json!(result.is_ok());
        if let Err(e) = &result {
            v["error"] = json!(e.to_string());
            log::warn!("policy: {} → {} vCPUs not applied: {e}", d.from, d.to);
        } else {
            log::info!("policy: vCPUs {} → {}: {}", d.from, d.to, d.reason);
        }
        self.write(v);
    }

    /// Applies decisions made on the hint path.
    pub fn drain(&mut self) {
        while let Ok(d) = self.rx.try_recv() {
            self.apply(d);
        }
    }

    /// Periodic work: delayed shrinks, and noting vCPUs the guest ejected.
    pub fn tick(&mut self) {
        let d = lock(&self.engine).tick(self.start.elapsed());
        if let Some(d) = d {
            self.apply(d);
        }
        self.drain();
        for cpu in self.vcpus.take_ejected() {
            let t = self.start.elapsed().as_millis() as u64;
            log::info!("vCPU {cpu} ejected by the guest and parked");
            self.write(json!({ "t_ms": t, "event": "ejected", "vcpu": cpu }));
        }
    }
}

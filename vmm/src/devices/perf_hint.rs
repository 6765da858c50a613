//! perfvmm's side of the perf-hint device: the virtio-mmio transport on the
//! MMIO bus, the hint log sink, and the queue-notify handler the event loop
//! runs when the guest kicks the ioeventfd.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use guest_hints::wire::{Hint, Outcome};
use serde_json::{json, Value};
use virtio_perf_device::mmio::MmioTransport;
use virtio_perf_device::{Counters, DropReason, PerfHintDevice};

use super::bus::{lock, BusDevice};
use crate::policy::controller::PolicySink;

/// Hint fields as a JSON object.
pub fn hint_fields(h: &Hint) -> Value {
    let v = match h {
        Hint::Parallelism(p) => serde_json::to_value(p),
        Hint::Memory(m) => serde_json::to_value(m),
        Hint::Io(io) => serde_json::to_value(io),
        Hint::PhaseBegin(p) => serde_json::to_value(p),
        Hint::PhaseEnd { id } => Ok(json!({ "id": id })),
        Hint::Placement(p) => serde_json::to_value(p),
        Hint::Manifest(m) => serde_json::to_value(m),
    };
    v.unwrap_or(Value::Null)
}

/// Writes every hint, and every dropped message, as one JSON line.
pub struct HintLog {
    out: Option<BufWriter<File>>,
    start: Instant,
}

impl HintLog {
    pub fn new(path: Option<&Path>, start: Instant) -> std::io::Result<Self> {
        let out = path.map(File::create).transpose()?.map(BufWriter::new);
        Ok(Self { out, start })
    }

    fn line(&mut self, v: Value) {
        if let Some(out) = &mut self.out {
            if let Err(e) = writeln!(out, "{v}") {
                log::warn!("hint log: {e}; no further hints are logged");
                self.out = None;
            }
        }
    }

    fn t_ms(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e3
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            let _ = out.flush();
        }
    }

    /// Appends the final counters.
    pub fn finish(&mut self, counters: &Counters) {
        let c: Value = serde_json::from_str(&counters.snapshot().to_json()).unwrap_or(Value::Null);
        let t = self.t_ms();
        self.line(json!({ "t_ms": t, "counters": c }));
        self.flush();
    }
}

impl HintLog {
    /// Logs one hint and what the policy made of it.
    pub fn record(&mut self, seq: u32, hint: &Hint, outcome: Outcome) {
        let t = self.t_ms();
        self.line(json!({
            "t_ms": t,
            "seq": seq,
            "kind": hint.kind_name(),
            "fields": hint_fields(hint),
            "outcome": outcome.as_str(),
        }));
    }

    /// Logs a message the device dropped.
    pub fn dropped(&mut self, reason: DropReason, detail: &str) {
        log::debug!(
            "perf-hint: dropped a message: {} ({detail})",
            reason.as_str()
        );
        let t = self.t_ms();
        self.line(json!({ "t_ms": t, "dropped": reason.as_str(), "detail": detail }));
    }
}

pub type PerfHintTransport = MmioTransport<PerfHintDevice<PolicySink>>;

/// The transport as the MMIO bus sees it.
pub struct PerfHintMmio(pub Arc<Mutex<PerfHintTransport>>);

impl BusDevice for PerfHintMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut t = lock(&self.0);
        t.write(offset, data);
        t.device_mut().sink_mut().flush();
    }
}

/// Runs the device's queues when the guest kicks the notify ioeventfd.
pub fn on_queue_notify(transport: &Arc<Mutex<PerfHintTransport>>) {
    let mut t = lock(transport);
    t.notify_all();
    t.device_mut().sink_mut().flush();
}

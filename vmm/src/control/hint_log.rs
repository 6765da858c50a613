//! The hint log (`--hint-log`): every hint the guest sent and what the
//! policy made of it, every message the device dropped, and the device's
//! final counters, one JSON line each.

use std::path::Path;
use std::time::Instant;

use guest_hints::wire::{Hint, Outcome};
use serde_json::{json, Value};
use virtio_perf_device::{CountersSnapshot, DropReason};

use super::jsonl::JsonLines;

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
        Hint::PhaseNeeds(p) => serde_json::to_value(p),
        Hint::DataSet(name) => Ok(json!({ "name": name })),
    };
    v.unwrap_or(Value::Null)
}

pub struct HintLog {
    out: JsonLines,
    start: Instant,
}

impl HintLog {
    /// Opens the log at `path` (no log without one), at most `limit` bytes;
    /// times count from `start`.
    pub fn new(path: Option<&Path>, limit: u64, start: Instant) -> std::io::Result<Self> {
        Ok(Self {
            out: JsonLines::create("hint log", path, limit)?,
            start,
        })
    }

    fn t_ms(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e3
    }

    /// Logs one hint and what the policy made of it.
    /// `stream` is left out when 0 (a driver that does not number its
    /// open files).
    pub fn record(&mut self, stream: u16, seq: u32, hint: &Hint, outcome: Outcome) {
        let t = self.t_ms();
        let mut line = json!({
            "t_ms": t,
            "seq": seq,
            "kind": hint.kind_name(),
            "fields": hint_fields(hint),
            "outcome": outcome.as_str(),
        });
        if stream != 0 {
            line["stream"] = json!(stream);
        }
        self.out.write(&line);
    }

    /// Logs that the guest driver closed `stream` (its phases ended).
    pub fn stream_closed(&mut self, stream: u16) {
        let t = self.t_ms();
        self.out
            .write(&json!({ "t_ms": t, "stream": stream, "closed": true }));
    }

    /// Logs a message the device dropped.
    pub fn dropped(&mut self, reason: DropReason, detail: &str) {
        log::debug!(
            "perf-hint: dropped a message: {} ({detail})",
            reason.as_str()
        );
        let t = self.t_ms();
        self.out
            .write(&json!({ "t_ms": t, "dropped": reason.as_str(), "detail": detail }));
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) {
        self.out.flush();
    }

    /// Appends the final counters (past the limit if need be: the last
    /// line is always there) and closes the log.
    pub fn finish(&mut self, counters: &CountersSnapshot) {
        let t = self.t_ms();
        let dropped = self.out.dropped();
        self.out.write_always(
            &json!({ "t_ms": t, "counters": counters, "log_dropped_lines": dropped }),
        );
        self.out.close();
    }
}

//! Where the perf-hint device hands each hint: the policy engine decides
//! its outcome, the hint log records both, and any decision goes to the
//! controller through a channel (applied on the event loop right after the
//! queue is processed).

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use guest_hints::wire::{Hint, Outcome};
use virtio_perf_device::{DropReason, HintSink};

use super::hint_log::HintLog;
use crate::devices::bus::lock;
use crate::policy::{Decision, Engine};

/// The perf-hint device's [`HintSink`] in perfvmm.
pub struct PolicySink {
    engine: Arc<Mutex<Engine>>,
    log: Arc<Mutex<HintLog>>,
    decisions: Sender<Decision>,
    start: Instant,
}

impl PolicySink {
    /// Times given to the engine count from `start`, as the controller's do.
    pub fn new(
        engine: Arc<Mutex<Engine>>,
        log: Arc<Mutex<HintLog>>,
        decisions: Sender<Decision>,
        start: Instant,
    ) -> Self {
        PolicySink {
            engine,
            log,
            decisions,
            start,
        }
    }
}

impl HintSink for PolicySink {
    fn hint(&mut self, stream: u16, seq: u32, hint: &Hint) -> Outcome {
        let now = self.start.elapsed();
        let (outcome, decisions) = lock(&self.engine).on_stream_hint(now, stream, seq, hint);
        lock(&self.log).record(stream, seq, hint, outcome);
        for d in decisions {
            // The controller lives as long as the VM; a closed channel means
            // the VM is shutting down and the decision no longer matters.
            let _ = self.decisions.send(d);
        }
        outcome
    }

    fn stream_closed(&mut self, stream: u16) {
        let now = self.start.elapsed();
        let decisions = lock(&self.engine).on_stream_closed(now, stream);
        lock(&self.log).stream_closed(stream);
        for d in decisions {
            let _ = self.decisions.send(d);
        }
    }

    fn dropped(&mut self, reason: DropReason, detail: &str) {
        lock(&self.log).dropped(reason, detail);
    }
}

//! The perf-hint device model: decodes `hintq` messages into typed hints
//! for a [`HintSink`] and reports their outcomes on `eventq`.

use std::collections::VecDeque;
use std::sync::Arc;

use guest_hints::wire::{self, Hint, Outcome, MAX_MESSAGE_LEN, OUTCOME_LEN};
use serde::{Deserialize, Serialize};
use virtio_mmio::GuestMem;
use virtio_mmio::{
    read_chain, ChainError, ChainLimits, LogLimit, Mem, RestoreError, VirtioDevice, WorkLeft,
    WritableBuffers,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::counters::{Counters, DropReason, COUNTER_VALUES};
use crate::{features, EVENTQ, HINTQ, PERFHINT_DEVICE_ID, QUEUE_SIZE};

/// A hint message: readable bytes only, none empty, one message at most.
const HINTQ_LIMITS: ChainLimits = ChainLimits::read_only(MAX_MESSAGE_LEN).refusing_zero_length();
/// An event buffer: device-writable buffers only.
const EVENTQ_LIMITS: ChainLimits = ChainLimits::read_write(0);

/// The counter a refused hint chain is dropped under.
fn drop_reason(e: ChainError) -> DropReason {
    match e {
        ChainError::TooManyDescriptors => DropReason::ChainTooLong,
        ChainError::Writable(_) | ChainError::ReadableAfterWritable(_) => {
            DropReason::WritableBuffer
        }
        ChainError::ZeroLength | ChainError::Empty => DropReason::ZeroLength,
        ChainError::TooLarge(_) => DropReason::TooLarge,
        ChainError::BadAddress { .. } => DropReason::BadAddress,
    }
}

/// Receives every decoded hint and decides its outcome (the policy engine).
pub trait HintSink: Send {
    /// `seq` is the guest's sequence number for this record, in `stream`:
    /// the guest driver's open file it came through (0 without the
    /// `STREAMS` feature).
    fn hint(&mut self, stream: u16, seq: u32, hint: &Hint) -> Outcome;

    /// A message was dropped before its records could be read.
    fn dropped(&mut self, _reason: DropReason, _detail: &str) {}

    /// The guest driver closed `stream` (never 0): its phases are over.
    fn stream_closed(&mut self, _stream: u16) {}
}

/// Config space (read-only, little-endian): see `docs/perf-hint-device.md`.
pub const CONFIG_LEN: usize = 16;

/// Outcomes waiting for event-queue buffers, at most this many.
pub const MAX_PENDING_OUTCOMES: usize = 4096;

/// Outcomes are written to the event queue once this many wait (a full
/// 256-byte driver buffer), or when the VMM flushes them (its periodic tick,
/// or an event-queue notification): one interrupt per batch, not per hint.
pub const OUTCOME_BATCH: usize = 32;

/// Sequence number reported for a message whose header could not be read.
pub const UNKNOWN_SEQ: u32 = u32::MAX;

pub struct PerfHintDevice<S: HintSink> {
    sink: S,
    counters: Arc<Counters>,
    config: [u8; CONFIG_LEN],
    mem: Option<Mem>,
    queues: Vec<Queue>,
    eventq_enabled: bool,
    /// The driver acked `STREAMS`: messages carry their stream.
    streams: bool,
    pending: VecDeque<[u8; OUTCOME_LEN]>,
    /// Reused message buffer.
    buf: Vec<u8>,
    /// Whether `hintq` had chains left when its work budget ran out.
    left: WorkLeft,
    /// Warnings the guest can trigger (a used ring it broke).
    warnings: LogLimit,
}

impl<S: HintSink> PerfHintDevice<S> {
    pub fn new(sink: S) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[0..4].copy_from_slice(&u32::from(wire::VERSION).to_le_bytes());
        config[4..8].copy_from_slice(&(MAX_MESSAGE_LEN as u32).to_le_bytes());
        config[8..10].copy_from_slice(&QUEUE_SIZE.to_le_bytes());
        config[10..12].copy_from_slice(&QUEUE_SIZE.to_le_bytes());
        config[12..14].copy_from_slice(&(wire::MAX_RECORDS as u16).to_le_bytes());
        Self {
            sink,
            counters: Arc::new(Counters::default()),
            config,
            mem: None,
            queues: Vec::new(),
            eventq_enabled: false,
            streams: false,
            pending: VecDeque::new(),
            buf: Vec::with_capacity(MAX_MESSAGE_LEN),
            left: WorkLeft::default(),
            warnings: LogLimit::default(),
        }
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    fn push_outcome(&mut self, stream: u16, seq: u32, outcome: Outcome) {
        self.counters.outcome(outcome);
        if !self.eventq_enabled {
            return;
        }
        if self.pending.len() >= MAX_PENDING_OUTCOMES {
            self.pending.pop_front();
            self.counters
                .outcomes_lost
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.pending
            .push_back(wire::encode_outcome(stream, seq, outcome));
    }

    fn drop_message(&mut self, reason: DropReason, detail: &str, stream: u16, seq: u32) {
        self.counters.record_drop(reason);
        self.sink.dropped(reason, detail);
        self.push_outcome(stream, seq, Outcome::Rejected);
    }

    /// The stream `msg` came through, read before (and whether or not) the
    /// rest of its header decodes, so that even a malformed message's
    /// outcome reaches its writer.
    fn stream_of(&self, msg: &[u8]) -> u16 {
        match msg.get(wire::STREAM_OFFSET..wire::STREAM_OFFSET + 2) {
            Some(b) if self.streams => u16::from_le_bytes([b[0], b[1]]),
            _ => 0,
        }
    }

    /// Reads a chain's bytes into `self.buf`, enforcing every limit.
    fn gather(
        &mut self,
        mem: &GuestMem,
        chain: DescriptorChain<&GuestMem>,
    ) -> Result<(), (DropReason, String)> {
        read_chain(mem, chain, HINTQ_LIMITS, &mut self.buf)
            .map(|_| ())
            .map_err(|e| (drop_reason(e), e.to_string()))
    }

    /// Decodes `self.buf` and hands its hints to the sink.
    fn handle_message(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let stream = self.stream_of(&buf);
        // The driver's header-only close of a stream is not a message of
        // the guest's programs: it is not counted as one, and has no
        // outcome.
        if let Ok(h) = wire::decode_header(&buf) {
            if stream != 0 && h.count == 0 && h.flags & wire::header_flags::STREAM_CLOSED != 0 {
                self.sink.stream_closed(stream);
                self.buf = buf;
                return;
            }
        }
        self.counters
            .messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match wire::decode_message(&buf) {
            Err(e) => self.drop_message(DropReason::Malformed, e.as_str(), stream, UNKNOWN_SEQ),
            Ok((header, records)) => {
                let mut seq = header.seq;
                let mut seen = 0u16;
                for rec in records {
                    seen += 1;
                    self.counters
                        .hints
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let outcome = match rec.map(wire::decode_record) {
                        Ok(Ok(Some(hint))) => self.sink.hint(stream, seq, &hint),
                        Ok(Ok(None)) => {
                            self.counters
                                .unknown_kind
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Outcome::Rejected
                        }
                        Ok(Err(e)) | Err(e) => {
                            self.counters.record_drop(DropReason::Malformed);
                            self.sink.dropped(DropReason::Malformed, e.as_str());
                            Outcome::Rejected
                        }
                    };
                    self.push_outcome(stream, seq, outcome);
                    seq = seq.wrapping_add(1);
                }
                // Records the header promised but the framing did not hold.
                for _ in seen..header.count {
                    self.push_outcome(stream, seq, Outcome::Rejected);
                    seq = seq.wrapping_add(1);
                }
            }
        }
        self.buf = buf;
    }

    fn process_hintq(&mut self) -> bool {
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        let mut used = false;
        let mut taken = 0;
        while let Some(chain) =
            self.left
                .pop(HINTQ, self.queues.get_mut(HINTQ), mem.as_ref(), &mut taken)
        {
            let head = chain.head_index();
            match self.gather(mem.as_ref(), chain) {
                Ok(()) => self.handle_message(),
                Err((reason, detail)) => {
                    self.counters
                        .messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.drop_message(reason, &detail, 0, UNKNOWN_SEQ)
                }
            }
            let queue = &mut self.queues[HINTQ];
            if let Err(e) = queue.add_used(mem.as_ref(), head, 0) {
                self.warnings
                    .warn(format_args!("perf-hint: hintq used ring: {e}"));
                break;
            }
            used = true;
        }
        let notify = used
            && self.queues[HINTQ]
                .needs_notification(mem.as_ref())
                .unwrap_or(true);
        let flushed = self.pending.len() >= OUTCOME_BATCH && self.flush_outcomes();
        flushed || notify
    }

    /// Fills `buffers` with pending outcomes, whole entries only; returns
    /// the bytes written.
    fn write_outcomes(&mut self, mem: &GuestMem, buffers: &WritableBuffers) -> u32 {
        let mut written = 0u32;
        for (addr, len) in buffers.iter() {
            let mut off = 0u64;
            while off + OUTCOME_LEN as u64 <= u64::from(len) {
                let Some(entry) = self.pending.front() else {
                    return written;
                };
                let Some(at) = addr.0.checked_add(off) else {
                    break;
                };
                if mem.write_slice(entry, GuestAddress(at)).is_err() {
                    break;
                }
                self.pending.pop_front();
                off += OUTCOME_LEN as u64;
                written += OUTCOME_LEN as u32;
            }
        }
        written
    }

    /// Writes pending outcomes into event-queue buffers the driver posted.
    fn flush_outcomes(&mut self) -> bool {
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        if !self.eventq_enabled || self.pending.is_empty() {
            return false;
        }
        let mut used = false;
        while !self.pending.is_empty() {
            let Some(queue) = self.queues.get_mut(EVENTQ) else {
                break;
            };
            let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) else {
                break;
            };
            let head = chain.head_index();
            let written = match read_chain(mem.as_ref(), chain, EVENTQ_LIMITS, &mut self.buf) {
                Ok(buffers) => self.write_outcomes(mem.as_ref(), &buffers),
                Err(e) => {
                    log::debug!("perf-hint: event buffer returned unused: {e}");
                    0
                }
            };
            if let Err(e) = self.queues[EVENTQ].add_used(mem.as_ref(), head, written) {
                self.warnings
                    .warn(format_args!("perf-hint: eventq used ring: {e}"));
                break;
            }
            // A buffer that holds no outcome goes back to the driver empty.
            used = true;
        }
        used && self.queues[EVENTQ]
            .needs_notification(mem.as_ref())
            .unwrap_or(true)
    }
}

impl<S: HintSink> VirtioDevice for PerfHintDevice<S> {
    fn device_id(&self) -> u32 {
        PERFHINT_DEVICE_ID
    }

    fn features(&self) -> u64 {
        (1 << features::VERSION_1)
            | (1 << features::EVENTQ)
            | (1 << features::MANIFEST)
            | (1 << features::STREAMS)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio_mmio::read_config_window(&self.config, offset, data);
    }

    fn activate(&mut self, mem: Mem, acked_features: u64, queues: Vec<Queue>) {
        self.eventq_enabled = acked_features & (1 << features::EVENTQ) != 0;
        self.streams = acked_features & (1 << features::STREAMS) != 0;
        self.mem = Some(mem);
        self.queues = queues;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            HINTQ => self.process_hintq(),
            EVENTQ => self.flush_outcomes(),
            _ => false,
        }
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn reset(&mut self) {
        self.mem = None;
        self.queues.clear();
        self.pending.clear();
        self.eventq_enabled = false;
        self.streams = false;
        self.left = WorkLeft::default();
    }

    fn has_more_work(&self) -> bool {
        self.left.any()
    }
}

/// The device's own state beyond its transport's, for a VM snapshot: its
/// counters and the outcomes the driver has not yet been given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfHintState {
    pub counters: Vec<u64>,
    pub pending: Vec<[u8; OUTCOME_LEN]>,
}

impl<S: HintSink> PerfHintDevice<S> {
    pub fn save(&self) -> PerfHintState {
        PerfHintState {
            counters: self.counters.values().to_vec(),
            pending: self.pending.iter().copied().collect(),
        }
    }

    /// Takes `state` after the transport's restore (which activated the
    /// device); refuses a state this device could never have had.
    pub fn restore(&mut self, state: &PerfHintState) -> Result<(), RestoreError> {
        let counters = <[u64; COUNTER_VALUES]>::try_from(state.counters.as_slice())
            .map_err(|_| RestoreError::Device(format!("{} counters", state.counters.len())))?;
        if state.pending.len() > MAX_PENDING_OUTCOMES {
            return Err(RestoreError::Device(format!(
                "{} pending outcomes, at most {MAX_PENDING_OUTCOMES} are kept",
                state.pending.len()
            )));
        }
        self.counters.set_values(&counters);
        self.pending = state.pending.iter().copied().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests;

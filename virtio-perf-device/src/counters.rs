//! What the device has seen, readable from any thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// Why a message was dropped before its records were looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A device-writable buffer where only readable ones belong.
    WritableBuffer,
    ZeroLength,
    /// Longer than the maximum message size.
    TooLarge,
    /// More descriptors than [`crate::MAX_CHAIN_DESCRIPTORS`] (this also ends descriptor loops).
    ChainTooLong,
    /// A buffer outside guest memory.
    BadAddress,
    /// The header or record framing is malformed.
    Malformed,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::WritableBuffer,
        DropReason::ZeroLength,
        DropReason::TooLarge,
        DropReason::ChainTooLong,
        DropReason::BadAddress,
        DropReason::Malformed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::WritableBuffer => "writable_buffer",
            DropReason::ZeroLength => "zero_length",
            DropReason::TooLarge => "too_large",
            DropReason::ChainTooLong => "chain_too_long",
            DropReason::BadAddress => "bad_address",
            DropReason::Malformed => "malformed",
        }
    }
}

/// How many values [`Counters::values`] gives.
pub const COUNTER_VALUES: usize = 14;

#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub hints: AtomicU64,
    pub accepted: AtomicU64,
    pub clamped: AtomicU64,
    pub rate_limited: AtomicU64,
    pub rejected: AtomicU64,
    /// Records of kinds this device does not know (skipped, reported rejected).
    pub unknown_kind: AtomicU64,
    /// Outcomes lost because the guest posted no event buffers in time.
    pub outcomes_lost: AtomicU64,
    dropped: [AtomicU64; 6],
}

/// A copy of the counters at one moment; serialised with `dropped` as an
/// object from each [`DropReason::as_str`] to its count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    pub messages: u64,
    pub hints: u64,
    pub accepted: u64,
    pub clamped: u64,
    pub rate_limited: u64,
    pub rejected: u64,
    pub unknown_kind: u64,
    pub outcomes_lost: u64,
    #[serde(serialize_with = "serialize_dropped")]
    pub dropped: [u64; 6],
}

fn serialize_dropped<S: Serializer>(dropped: &[u64; 6], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(dropped.len()))?;
    for (r, n) in DropReason::ALL.iter().zip(dropped) {
        map.serialize_entry(r.as_str(), n)?;
    }
    map.end()
}

impl CountersSnapshot {
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped[r as usize]
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

impl Counters {
    pub fn record_drop(&self, r: DropReason) {
        self.dropped[r as usize].fetch_add(1, Relaxed);
    }

    pub fn outcome(&self, o: guest_hints::wire::Outcome) {
        use guest_hints::wire::Outcome::*;
        match o {
            Accepted => &self.accepted,
            Clamped => &self.clamped,
            RateLimited => &self.rate_limited,
            Rejected => &self.rejected,
        }
        .fetch_add(1, Relaxed);
    }

    /// Every counter, in a fixed order: what a VM snapshot keeps of them.
    pub fn values(&self) -> [u64; COUNTER_VALUES] {
        let s = self.snapshot();
        let mut v = [0; COUNTER_VALUES];
        v[..8].copy_from_slice(&[
            s.messages,
            s.hints,
            s.accepted,
            s.clamped,
            s.rate_limited,
            s.rejected,
            s.unknown_kind,
            s.outcomes_lost,
        ]);
        v[8..].copy_from_slice(&s.dropped);
        v
    }

    /// Sets every counter from [`Counters::values`] of another device.
    pub fn set_values(&self, v: &[u64; COUNTER_VALUES]) {
        let named = [
            &self.messages,
            &self.hints,
            &self.accepted,
            &self.clamped,
            &self.rate_limited,
            &self.rejected,
            &self.unknown_kind,
            &self.outcomes_lost,
        ];
        for (c, &n) in named.into_iter().chain(self.dropped.iter()).zip(v) {
            c.store(n, Relaxed);
        }
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let mut dropped = [0; 6];
        for (d, a) in dropped.iter_mut().zip(self.dropped.iter()) {
            *d = a.load(Relaxed);
        }
        CountersSnapshot {
            messages: self.messages.load(Relaxed),
            hints: self.hints.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            clamped: self.clamped.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            unknown_kind: self.unknown_kind.load(Relaxed),
            outcomes_lost: self.outcomes_lost.load(Relaxed),
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_serialises_drops_by_name() {
        let c = Counters::default();
        c.record_drop(DropReason::TooLarge);
        c.messages.fetch_add(2, Relaxed);
        let v = serde_json::to_value(c.snapshot()).unwrap();
        assert_eq!(v["messages"], 2);
        assert_eq!(v["dropped"]["too_large"], 1);
        assert_eq!(v["dropped"]["malformed"], 0);
        assert_eq!(
            v["dropped"].as_object().unwrap().len(),
            DropReason::ALL.len()
        );
    }
}

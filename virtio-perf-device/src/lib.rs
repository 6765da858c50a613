//! The virtio perf-hint device: guest software writes hints into `hintq`;
//! the device decodes them with the shared wire format
//! ([`guest_hints::wire`]) and hands each typed hint to a [`HintSink`] (the
//! VMM's policy engine), then reports per-hint outcomes on `eventq`.
//!
//! Everything the guest controls — descriptor addresses, lengths, chain
//! shape, payload bytes, register writes — is checked; a malformed message is
//! dropped and counted, the queue keeps moving, and nothing panics.
//!
//! The device model only: the virtio-mmio transport it sits behind is the
//! `virtio-mmio` crate. The spec is `docs/perf-hint-device.md`.

#![forbid(unsafe_code)]

pub mod counters;
pub mod device;

pub use counters::{Counters, CountersSnapshot, DropReason, COUNTER_VALUES};
pub use device::{HintSink, PerfHintDevice, PerfHintState};
pub use guest_hints::wire::{Hint, Outcome};

/// Experimental virtio device ID, counted down from 65535 as the virtio
/// spec's "Creating New Device Types" appendix asks.
pub const PERFHINT_DEVICE_ID: u32 = 65535;
/// Vendor ID reported in the virtio-mmio `VendorID` register ("PFVM").
pub const PERFHINT_VENDOR_ID: u32 = 0x4d56_4650;

/// Feature bits.
pub mod features {
    /// The device has an event queue and reports an outcome for every record.
    pub const EVENTQ: u32 = 0;
    /// The device accepts manifest records.
    pub const MANIFEST: u32 = 1;
    /// The driver numbers its open files in each message's `stream` field:
    /// the device keeps their phases and rate budgets apart and returns
    /// each outcome with its stream.
    pub const STREAMS: u32 = 2;
    /// VIRTIO_F_VERSION_1: required.
    pub const VERSION_1: u32 = virtio_mmio::VIRTIO_F_VERSION_1;
}

/// Queue indices and sizes.
pub const HINTQ: usize = 0;
pub const EVENTQ: usize = 1;
pub const QUEUE_SIZE: u16 = 256;

/// Longest descriptor chain the device follows for one message.
pub const MAX_CHAIN_DESCRIPTORS: usize = virtio_mmio::chain::MAX_DESCRIPTORS;

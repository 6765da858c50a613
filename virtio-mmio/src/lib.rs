//! The generic half of every virtio device perfvmm emulates:
//!
//! * [`device`]: the [`VirtioDevice`] trait a device model implements, and
//!   the [`Interrupt`] hook the transport raises;
//! * [`transport`]: the virtio-mmio (version 2) register interface in front
//!   of a device: feature negotiation, the status state machine, queue
//!   setup, notification and interrupt status;
//! * [`chain`]: one bounded reader for descriptor chains, used by every
//!   device so that each applies the same limits to what the guest posts;
//! * [`log_limit`]: a limit on the log lines a guest can trigger;
//! * [`state`]: the transport's state, saved and checked on restore.
//!
//! Register offsets, status bits and feature bits come from
//! `virtio-bindings`. Nothing here trusts the guest: every register access
//! and every descriptor is checked, and nothing panics on guest input.

#![forbid(unsafe_code)]

pub mod chain;
pub mod device;
pub mod log_limit;
pub mod state;
#[doc(hidden)]
pub mod testing;
pub mod transport;

pub use chain::{read_chain, ChainError, ChainLimits, WritableBuffers};
pub use device::{
    read_config_window, Interrupt, Mem, VirtioDevice, WorkLeft, VIRTIO_F_VERSION_1, WAKE_BUDGET,
};
pub use log_limit::LogLimit;
pub use state::{QueueSnapshot, RestoreError, TransportState};
pub use transport::MmioTransport;

/// Guest memory as every perfvmm crate sees it. Its bitmap records each
/// page the VMM writes (used rings, buffers a device fills): KVM's dirty
/// log sees only the guest's own writes, and a live migration must send
/// both again.
pub type GuestMem = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMem`].
pub type GuestRegion = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;

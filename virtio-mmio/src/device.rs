//! What a virtio device model implements to sit behind the virtio-mmio
//! transport, and the transport's interrupt hook.

use std::sync::Arc;

use crate::GuestMem;
use virtio_queue::{Queue, QueueT};

use virtio_bindings::virtio_config as config;
use virtio_bindings::virtio_mmio as mmio;

/// VIRTIO_F_VERSION_1, the feature bit every device here offers and the
/// transport requires (no legacy drivers).
pub const VIRTIO_F_VERSION_1: u32 = config::VIRTIO_F_VERSION_1;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    use super::config;

    pub const ACKNOWLEDGE: u32 = config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    pub const DRIVER: u32 = config::VIRTIO_CONFIG_S_DRIVER;
    pub const DRIVER_OK: u32 = config::VIRTIO_CONFIG_S_DRIVER_OK;
    pub const FEATURES_OK: u32 = config::VIRTIO_CONFIG_S_FEATURES_OK;
    pub const DEVICE_NEEDS_RESET: u32 = config::VIRTIO_CONFIG_S_NEEDS_RESET;
    pub const FAILED: u32 = config::VIRTIO_CONFIG_S_FAILED;
}

/// Interrupt status bits (virtio-mmio `InterruptStatus`): the used ring changed.
pub const INT_USED_RING: u32 = mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status bits: the configuration space changed.
pub const INT_CONFIG: u32 = mmio::VIRTIO_MMIO_INT_CONFIG;

/// Raises the device's interrupt line (an irqfd in perfvmm, a counter in tests).
pub trait Interrupt: Send + Sync {
    fn trigger(&self);
}

/// Guest memory as devices see it.
pub type Mem = Arc<GuestMem>;

/// A device behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    fn device_id(&self) -> u32;
    /// Features offered, as a 64-bit mask.
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device config space at `offset` into `data` (bytes past the end read as 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to config space; read-only by default.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called when the driver sets DRIVER_OK with valid queues.
    fn activate(&mut self, mem: Mem, acked_features: u64, queues: Vec<Queue>);
    /// Called when the driver notifies queue `index`; returns true when the
    /// used ring changed and the driver should be interrupted.
    fn process_queue(&mut self, index: usize) -> bool;
    /// Back to the state before activation.
    fn reset(&mut self);
    /// The queues the device took at activation (none before), for a
    /// snapshot of the transport.
    fn queues(&self) -> &[Queue];
    /// The last [`process_queue`](Self::process_queue) stopped at its work
    /// budget ([`WAKE_BUDGET`]) with chains left: the caller should run the
    /// queue again after serving its other events.
    fn has_more_work(&self) -> bool {
        false
    }
}

/// Chains a device takes from one queue per wake: one full ring of the
/// largest queue size used here. What is left waits for the next wake, so
/// a guest that keeps republishing buffers cannot hold the VMM's event loop.
pub const WAKE_BUDGET: usize = 256;

/// Copies the window `[offset, offset + data.len())` of a config space into
/// `data`; bytes past the end (or an offset that overflows) read as 0.
pub fn read_config_window(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// A device's per-queue record of work left when the budget ran out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkLeft(u32);

impl WorkLeft {
    /// Pops the next chain of `queue` (`None` once it is empty, or once
    /// `taken` reaches [`WAKE_BUDGET`], noting that queue `index` has work left).
    pub fn pop<'m>(
        &mut self,
        index: usize,
        queue: Option<&mut Queue>,
        mem: &'m GuestMem,
        taken: &mut usize,
    ) -> Option<virtio_queue::DescriptorChain<&'m GuestMem>> {
        let bit = 1u32.checked_shl(index as u32).unwrap_or(0);
        if *taken >= WAKE_BUDGET {
            self.0 |= bit;
            return None;
        }
        self.0 &= !bit;
        *taken += 1;
        queue?.pop_descriptor_chain(mem)
    }

    /// Some queue stopped at its budget.
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

//! The virtio-mmio (version 2) register interface in front of a
//! [`VirtioDevice`]: feature negotiation, the status state machine, queue
//! setup, notification and interrupt status. Every register access from the
//! guest is checked; bad ones are ignored (and logged), never trusted.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use crate::device::{status, Interrupt, Mem, VirtioDevice, INT_CONFIG, INT_USED_RING};

/// `MagicValue`: "virt" in little-endian ASCII.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version`: 2, the non-legacy interface.
pub const MMIO_VERSION: u32 = 2;

/// Register offsets (virtio 1.2, 4.2.2), from `virtio-bindings`.
pub mod reg {
    use virtio_bindings::virtio_mmio as m;

    pub const MAGIC: u64 = m::VIRTIO_MMIO_MAGIC_VALUE as u64;
    pub const VERSION: u64 = m::VIRTIO_MMIO_VERSION as u64;
    pub const DEVICE_ID: u64 = m::VIRTIO_MMIO_DEVICE_ID as u64;
    pub const VENDOR_ID: u64 = m::VIRTIO_MMIO_VENDOR_ID as u64;
    pub const DEVICE_FEATURES: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    pub const DEVICE_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    pub const DRIVER_FEATURES: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    pub const DRIVER_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    pub const QUEUE_SEL: u64 = m::VIRTIO_MMIO_QUEUE_SEL as u64;
    pub const QUEUE_NUM_MAX: u64 = m::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    pub const QUEUE_NUM: u64 = m::VIRTIO_MMIO_QUEUE_NUM as u64;
    pub const QUEUE_READY: u64 = m::VIRTIO_MMIO_QUEUE_READY as u64;
    pub const QUEUE_NOTIFY: u64 = m::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    pub const INTERRUPT_STATUS: u64 = m::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    pub const INTERRUPT_ACK: u64 = m::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    pub const STATUS: u64 = m::VIRTIO_MMIO_STATUS as u64;
    pub const QUEUE_DESC_LOW: u64 = m::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    pub const QUEUE_DESC_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    pub const QUEUE_DRIVER_LOW: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    pub const QUEUE_DRIVER_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    pub const QUEUE_DEVICE_LOW: u64 = m::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    pub const QUEUE_DEVICE_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    pub const CONFIG_GENERATION: u64 = m::VIRTIO_MMIO_CONFIG_GENERATION as u64;
    pub const CONFIG: u64 = m::VIRTIO_MMIO_CONFIG as u64;
}

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport<D: VirtioDevice> {
    pub(crate) device: D,
    pub(crate) mem: Mem,
    pub(crate) interrupt: Arc<dyn Interrupt>,
    pub(crate) vendor_id: u32,
    pub(crate) device_features_sel: u32,
    pub(crate) driver_features_sel: u32,
    pub(crate) acked_features: u64,
    pub(crate) queue_sel: u32,
    pub(crate) queues: Vec<Queue>,
    pub(crate) interrupt_status: u32,
    pub(crate) status: u32,
    pub(crate) activated: bool,
    /// Bumped on every device-side config change (`ConfigGeneration`).
    pub(crate) config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: Mem, interrupt: Arc<dyn Interrupt>, vendor_id: u32) -> Self {
        let queues = Self::fresh_queues(&device);
        Self {
            device,
            mem,
            interrupt,
            vendor_id,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            status: 0,
            activated: false,
            config_generation: 0,
        }
    }

    fn fresh_queues(device: &D) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The driver has set DRIVER_OK and the device is running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue configuration may change only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0 && self.status & status::DRIVER_OK == 0
    }

    /// Handles a queue notification (also the path of an ioeventfd).
    pub fn notify(&mut self, index: usize) {
        if self.activated && self.device.process_queue(index) {
            self.raise(INT_USED_RING);
        }
    }

    /// Runs device-initiated work (not a guest notification); when `f`
    /// returns true the used ring changed and the driver is interrupted.
    pub fn run_device(&mut self, f: impl FnOnce(&mut D) -> bool) {
        if self.activated && f(&mut self.device) {
            self.raise(INT_USED_RING);
        }
    }

    /// The device stopped at its work budget with chains left.
    pub fn has_more_work(&self) -> bool {
        self.activated && self.device.has_more_work()
    }

    /// Processes every queue, for when a notification may have been merged.
    pub fn notify_all(&mut self) {
        for i in 0..self.device.queue_max_sizes().len() {
            self.notify(i);
        }
    }

    /// Raises the interrupt again if `InterruptStatus` shows one the driver
    /// has not acknowledged: for a restored VM, once its vCPUs' interrupt
    /// controllers hold their saved state (an interrupt raised before that,
    /// or one still in KVM's irqfd work queue when the source saved them,
    /// is lost, and a driver never told would wait forever). A spare one is
    /// harmless: the driver reads `InterruptStatus` and finds nothing new.
    pub fn raise_pending(&self) {
        if self.interrupt_status != 0 {
            self.interrupt.trigger();
        }
    }

    fn raise(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        self.interrupt.trigger();
    }

    /// Tells the driver the config space changed.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.activated {
            self.raise(INT_CONFIG);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = Self::fresh_queues(&self.device);
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.status = 0;
        self.activated = false;
    }

    fn set_status(&mut self, new: u32) {
        use status::*;
        if new == 0 {
            self.reset();
            return;
        }
        if new & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        // Bits may only be added, in the order the spec gives.
        let added = new & !self.status;
        if new & self.status != self.status {
            log::debug!(
                "virtio-mmio: status {new:#x} clears bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let ok = match added {
            ACKNOWLEDGE => self.status == 0,
            DRIVER => self.status == ACKNOWLEDGE,
            FEATURES_OK => self.status == ACKNOWLEDGE | DRIVER,
            DRIVER_OK => self.status == ACKNOWLEDGE | DRIVER | FEATURES_OK,
            0 => true,
            _ => false,
        };
        if !ok {
            log::debug!(
                "virtio-mmio: status {new:#x} out of order after {:#x}; ignored",
                self.status
            );
            return;
        }
        if added == FEATURES_OK
            && self.acked_features & (1 << crate::device::VIRTIO_F_VERSION_1) == 0
        {
            // A legacy driver: FEATURES_OK stays clear, which the driver sees as refusal.
            log::info!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
            return;
        }
        self.status = new;
        if added == DRIVER_OK {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = self.mem.clone();
        // Queues the driver left unused (not ready) are fine; ready ones must be valid.
        let valid = self
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(mem.as_ref()));
        if !valid {
            log::info!("virtio-mmio: driver set DRIVER_OK with invalid queues");
            self.status |= status::DEVICE_NEEDS_RESET;
            self.raise(INT_CONFIG);
            return;
        }
        // The device owns the queues from now on; a reset makes fresh ones.
        self.device
            .activate(mem, self.acked_features, std::mem::take(&mut self.queues));
        self.activated = true;
        // Buffers the driver made available before DRIVER_OK are served now:
        // Linux's balloon primes its statistics queue and kicks it during
        // probe, and that kick may reach the ioeventfd handler before this
        // write does, when the device was not yet running to take it.
        self.notify_all();
    }

    /// A guest read of `data.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let v = match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => self.vendor_id,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.queue().map(|q| q.max_size() as u32).unwrap_or(0),
            reg::QUEUE_READY => self.queue().map(|q| q.ready() as u32).unwrap_or(0),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write of `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let lo = |q: &mut Queue, f: fn(&mut Queue, Option<u32>, Option<u32>)| f(q, Some(v), None);
        let hi = |q: &mut Queue, f: fn(&mut Queue, Option<u32>, Option<u32>)| f(q, None, Some(v));
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 {
                    let offered = self.device.features();
                    match self.driver_features_sel {
                        0 => {
                            self.acked_features =
                                (self.acked_features & !0xffff_ffff) | (u64::from(v) & offered)
                        }
                        1 => {
                            self.acked_features = (self.acked_features & 0xffff_ffff)
                                | ((u64::from(v) << 32) & offered)
                        }
                        _ => {}
                    }
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NOTIFY => self.notify(v as usize),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.set_status(v),
            _ if self.queue_config_allowed() => {
                let Some(q) = self.queue() else { return };
                match offset {
                    reg::QUEUE_NUM => {
                        // An invalid size leaves the queue invalid; activation then refuses it.
                        q.set_size(u16::try_from(v).unwrap_or(0))
                    }
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => lo(q, Queue::set_desc_table_address),
                    reg::QUEUE_DESC_HIGH => hi(q, Queue::set_desc_table_address),
                    reg::QUEUE_DRIVER_LOW => lo(q, Queue::set_avail_ring_address),
                    reg::QUEUE_DRIVER_HIGH => hi(q, Queue::set_avail_ring_address),
                    reg::QUEUE_DEVICE_LOW => lo(q, Queue::set_used_ring_address),
                    reg::QUEUE_DEVICE_HIGH => hi(q, Queue::set_used_ring_address),
                    _ => {}
                }
            }
            _ => log::debug!("virtio-mmio: write {v:#x} at {offset:#x} ignored"),
        }
    }
}

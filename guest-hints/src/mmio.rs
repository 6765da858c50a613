//! A bare-metal virtio-mmio driver for the perf-hint device, for unikernels
//! and other `no_std` guests. It drives `hintq` only (no event queue) from a
//! small DMA region the caller provides, and never blocks: when every slot is
//! in flight, a send reports [`SendError::Busy`].

use core::sync::atomic::{fence, Ordering};

use crate::client::{SendError, Transport};
use crate::wire::MAX_MESSAGE_LEN;

/// The device's 32-bit registers.
pub trait Registers {
    fn read32(&self, offset: u64) -> u32;
    fn write32(&self, offset: u64, value: u32);
}

/// Memory the device can read, at a known guest-physical address.
pub trait Dma {
    /// Guest-physical address of byte 0.
    fn phys(&self) -> u64;
    /// Size of the region in bytes.
    fn size(&self) -> usize;
    fn write(&self, offset: usize, data: &[u8]);
    fn read(&self, offset: usize, out: &mut [u8]);
}

/// Registers at a mapped MMIO address.
pub struct VolatileRegisters {
    base: *mut u8,
}

impl VolatileRegisters {
    /// # Safety
    /// `base` must map the device's whole 4 KiB register window for as long
    /// as the value lives.
    pub unsafe fn new(base: *mut u8) -> Self {
        VolatileRegisters { base }
    }
}

impl Registers for VolatileRegisters {
    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: `new`'s contract: the window is mapped; offsets are below 0x200.
        unsafe { core::ptr::read_volatile(self.base.add(offset as usize).cast::<u32>()) }
    }

    fn write32(&self, offset: u64, value: u32) {
        // SAFETY: as for `read32`.
        unsafe { core::ptr::write_volatile(self.base.add(offset as usize).cast::<u32>(), value) }
    }
}

const MAGIC: u32 = 0x7472_6976;
const R_MAGIC: u64 = 0x000;
const R_VERSION: u64 = 0x004;
const R_DEVICE_ID: u64 = 0x008;
const R_DEVICE_FEATURES: u64 = 0x010;
const R_DEVICE_FEATURES_SEL: u64 = 0x014;
const R_DRIVER_FEATURES: u64 = 0x020;
const R_DRIVER_FEATURES_SEL: u64 = 0x024;
const R_QUEUE_SEL: u64 = 0x030;
const R_QUEUE_NUM_MAX: u64 = 0x034;
const R_QUEUE_NUM: u64 = 0x038;
const R_QUEUE_READY: u64 = 0x044;
const R_QUEUE_NOTIFY: u64 = 0x050;
const R_INTERRUPT_STATUS: u64 = 0x060;
const R_INTERRUPT_ACK: u64 = 0x064;
const R_STATUS: u64 = 0x070;
const R_QUEUE_DESC: u64 = 0x080;
const R_QUEUE_DRIVER: u64 = 0x090;
const R_QUEUE_DEVICE: u64 = 0x0a0;

const S_ACK: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 128;

/// The perf-hint device ID (see `docs/perf-hint-device.md`).
pub const DEVICE_ID: u32 = 65535;
/// Slots (descriptors, message buffers) the driver keeps in flight.
pub const SLOTS: u16 = 4;

const DESC_OFF: usize = 0;
const AVAIL_OFF: usize = 16 * SLOTS as usize;
const USED_OFF: usize = (AVAIL_OFF + 6 + 2 * SLOTS as usize + 3) & !3;
const BUF_OFF: usize = (USED_OFF + 6 + 8 * SLOTS as usize + 4095) & !4095;
/// DMA bytes the driver needs.
pub const DMA_LEN: usize = BUF_OFF + SLOTS as usize * MAX_MESSAGE_LEN;

pub struct MmioTransport<R: Registers, D: Dma> {
    regs: R,
    dma: D,
    avail_idx: u16,
    used_seen: u16,
    in_flight: u16,
    ready: bool,
}

impl<R: Registers, D: Dma> MmioTransport<R, D> {
    /// Probes and initialises the device; a transport that finds no
    /// perf-hint device (or too little DMA memory) is a silent no-op.
    pub fn new(regs: R, dma: D) -> Self {
        let mut t = MmioTransport {
            regs,
            dma,
            avail_idx: 0,
            used_seen: 0,
            in_flight: 0,
            ready: false,
        };
        t.ready = t.init();
        t
    }

    fn init(&mut self) -> bool {
        let r = &self.regs;
        if r.read32(R_MAGIC) != MAGIC
            || r.read32(R_VERSION) != 2
            || r.read32(R_DEVICE_ID) != DEVICE_ID
        {
            return false;
        }
        if self.dma.size() < DMA_LEN {
            return false;
        }
        r.write32(R_STATUS, 0);
        r.write32(R_STATUS, S_ACK);
        r.write32(R_STATUS, S_ACK | S_DRIVER);
        r.write32(R_DEVICE_FEATURES_SEL, 1);
        if r.read32(R_DEVICE_FEATURES) & 1 == 0 {
            r.write32(R_STATUS, S_FAILED);
            return false;
        }
        // VIRTIO_F_VERSION_1 only: no event queue for this driver.
        r.write32(R_DRIVER_FEATURES_SEL, 0);
        r.write32(R_DRIVER_FEATURES, 0);
        r.write32(R_DRIVER_FEATURES_SEL, 1);
        r.write32(R_DRIVER_FEATURES, 1);
        r.write32(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
        if r.read32(R_STATUS) & S_FEATURES_OK == 0 {
            r.write32(R_STATUS, S_FAILED);
            return false;
        }
        r.write32(R_QUEUE_SEL, 0);
        if r.read32(R_QUEUE_NUM_MAX) < u32::from(SLOTS) {
            r.write32(R_STATUS, S_FAILED);
            return false;
        }
        let zero = [0u8; BUF_OFF];
        self.dma.write(0, &zero);
        let phys = self.dma.phys();
        r.write32(R_QUEUE_NUM, u32::from(SLOTS));
        for (reg, off) in [
            (R_QUEUE_DESC, DESC_OFF),
            (R_QUEUE_DRIVER, AVAIL_OFF),
            (R_QUEUE_DEVICE, USED_OFF),
        ] {
            let a = phys + off as u64;
            r.write32(reg, a as u32);
            r.write32(reg + 4, (a >> 32) as u32);
        }
        r.write32(R_QUEUE_READY, 1);
        r.write32(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        r.read32(R_STATUS) & S_DRIVER_OK != 0
    }

    fn read_u16(&self, off: usize) -> u16 {
        let mut b = [0u8; 2];
        self.dma.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    /// Takes back the slots the device has finished with.
    fn reclaim(&mut self) {
        fence(Ordering::Acquire);
        let used = self.read_u16(USED_OFF + 2);
        let done = used.wrapping_sub(self.used_seen);
        self.used_seen = used;
        self.in_flight = self.in_flight.saturating_sub(done);
        let isr = self.regs.read32(R_INTERRUPT_STATUS);
        if isr != 0 {
            self.regs.write32(R_INTERRUPT_ACK, isr);
        }
    }
}

impl<R: Registers, D: Dma> Transport for MmioTransport<R, D> {
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        if !self.ready {
            return Err(SendError::NoDevice);
        }
        if msg.len() > MAX_MESSAGE_LEN || msg.is_empty() {
            return Err(SendError::TooLarge);
        }
        self.reclaim();
        if self.in_flight >= SLOTS {
            return Err(SendError::Busy);
        }
        let slot = self.avail_idx % SLOTS;
        let buf = BUF_OFF + slot as usize * MAX_MESSAGE_LEN;
        self.dma.write(buf, msg);
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&(self.dma.phys() + buf as u64).to_le_bytes());
        desc[8..12].copy_from_slice(&(msg.len() as u32).to_le_bytes());
        self.dma.write(DESC_OFF + 16 * slot as usize, &desc);
        self.dma
            .write(AVAIL_OFF + 4 + 2 * slot as usize, &slot.to_le_bytes());
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.dma.write(AVAIL_OFF + 2, &self.avail_idx.to_le_bytes());
        self.in_flight += 1;
        fence(Ordering::SeqCst);
        self.regs.write32(R_QUEUE_NOTIFY, 0);
        Ok(())
    }

    fn is_connected(&self) -> bool {
        self.ready
    }
}

//! A bare-metal virtio-mmio driver for the perf-hint device, for unikernels
//! and other `no_std` guests. It drives `hintq` only (no event queue) from a
//! small DMA region the caller provides, and never blocks: when every slot is
//! in flight, a send reports [`SendError::Busy`].

use core::sync::atomic::{fence, Ordering};

use crate::client::{SendError, Transport};
use crate::wire::MAX_MESSAGE_LEN;

/// The device's 32-bit registers.
pub trait Registers {
    /// Reads the register at byte `offset` in the device's window.
    fn read32(&self, offset: u64) -> u32;
    /// Writes `value` to the register at byte `offset` in the device's window.
    fn write32(&self, offset: u64, value: u32);
}

/// Memory the device can read, at a known guest-physical address.
pub trait Dma {
    /// Guest-physical address of byte 0.
    fn phys(&self) -> u64;
    /// Size of the region in bytes.
    fn size(&self) -> usize;
    /// Copies `data` into the region at byte `offset`.
    fn write(&self, offset: usize, data: &[u8]);
    /// Copies bytes from the region at byte `offset` into `out`.
    fn read(&self, offset: usize, out: &mut [u8]);
}

/// Bytes of the virtio-mmio register window (registers and config space).
pub const WINDOW_LEN: u64 = 0x1000;

/// Registers at a mapped MMIO address.
///
/// Only 4-byte aligned offsets inside the [`WINDOW_LEN`]-byte window are
/// accessed. Any other offset is a driver bug that must not reach memory
/// outside the device: [`Registers::read32`] then returns 0 (which reads as
/// "no device" to a probe) and [`Registers::write32`] does nothing.
pub struct VolatileRegisters {
    base: *mut u8,
}

impl VolatileRegisters {
    /// # Safety
    /// `base` must be 4-byte aligned and map the device's whole
    /// [`WINDOW_LEN`]-byte register window for as long as the value lives.
    pub unsafe fn new(base: *mut u8) -> Self {
        VolatileRegisters { base }
    }

    /// The register at `offset`, if `offset` names one inside the window.
    fn register(&self, offset: u64) -> Option<*mut u32> {
        if offset & 3 != 0 || offset > WINDOW_LEN - 4 {
            return None;
        }
        // SAFETY: `offset` + 4 <= WINDOW_LEN (checked above), so the result
        // stays inside the window that `new`'s contract says is mapped.
        Some(unsafe { self.base.add(offset as usize) }.cast::<u32>())
    }
}

impl Registers for VolatileRegisters {
    fn read32(&self, offset: u64) -> u32 {
        match self.register(offset) {
            // SAFETY: `register` returns only aligned registers inside the
            // window, which `new`'s contract says is mapped.
            Some(r) => unsafe { core::ptr::read_volatile(r) },
            None => 0,
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        if let Some(r) = self.register(offset) {
            // SAFETY: as for `read32`.
            unsafe { core::ptr::write_volatile(r, value) }
        }
    }
}

// virtio-mmio (virtio 1.x, section 4.2.2) register offsets, magic value and
// device status bits. They are written out here rather than taken from the
// `virtio-bindings` crate because its 0.2 releases (0.2.7 is the newest) do
// not declare `#![no_std]` and so cannot be built for a `no_std` target;
// a unit test checks every value against virtio-bindings.
/// `"virt"` read as a little-endian u32 (virtio-bindings has no constant).
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

/// Feature bit 32, VIRTIO_F_VERSION_1: bit 0 of feature word 1.
const F_VERSION_1: u32 = 32;
const F_VERSION_1_HIGH: u32 = 1 << (F_VERSION_1 - 32);

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

/// A [`Transport`] over the perf-hint device's virtio-mmio registers and a
/// [`Dma`] region of at least [`DMA_LEN`] bytes.
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
        if r.read32(R_DEVICE_FEATURES) & F_VERSION_1_HIGH == 0 {
            r.write32(R_STATUS, S_FAILED);
            return false;
        }
        // VIRTIO_F_VERSION_1 only: no event queue for this driver.
        r.write32(R_DRIVER_FEATURES_SEL, 0);
        r.write32(R_DRIVER_FEATURES, 0);
        r.write32(R_DRIVER_FEATURES_SEL, 1);
        r.write32(R_DRIVER_FEATURES, F_VERSION_1_HIGH);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 KiB, 4-byte aligned stand-in for the register window.
    fn window() -> [u32; WINDOW_LEN as usize / 4] {
        [0; WINDOW_LEN as usize / 4]
    }

    #[test]
    fn volatile_registers_stay_inside_the_window() {
        let mut mem = window();
        mem[1] = 0x1234_5678;
        {
            // SAFETY: `mem` is aligned, WINDOW_LEN bytes long and outlives `regs`.
            let regs = unsafe { VolatileRegisters::new(mem.as_mut_ptr().cast()) };
            assert_eq!(regs.read32(4), 0x1234_5678);
            regs.write32(WINDOW_LEN - 4, 7);
            assert_eq!(regs.read32(WINDOW_LEN - 4), 7);
            for bad in [WINDOW_LEN, WINDOW_LEN - 2, 2, 0x1_0000_0000, u64::MAX - 3] {
                regs.write32(bad, 0xdead_beef);
                assert_eq!(regs.read32(bad), 0, "offset {bad:#x}");
            }
        }
        assert_eq!(mem[1], 0x1234_5678);
        assert_eq!(mem[mem.len() - 1], 7);
        assert_eq!(mem.iter().filter(|&&w| w != 0).count(), 2);
    }

    #[test]
    fn constants_match_virtio_bindings() {
        use virtio_bindings::virtio_config as cfg;
        use virtio_bindings::virtio_mmio as vb;
        let regs = [
            (R_MAGIC, vb::VIRTIO_MMIO_MAGIC_VALUE),
            (R_VERSION, vb::VIRTIO_MMIO_VERSION),
            (R_DEVICE_ID, vb::VIRTIO_MMIO_DEVICE_ID),
            (R_DEVICE_FEATURES, vb::VIRTIO_MMIO_DEVICE_FEATURES),
            (R_DEVICE_FEATURES_SEL, vb::VIRTIO_MMIO_DEVICE_FEATURES_SEL),
            (R_DRIVER_FEATURES, vb::VIRTIO_MMIO_DRIVER_FEATURES),
            (R_DRIVER_FEATURES_SEL, vb::VIRTIO_MMIO_DRIVER_FEATURES_SEL),
            (R_QUEUE_SEL, vb::VIRTIO_MMIO_QUEUE_SEL),
            (R_QUEUE_NUM_MAX, vb::VIRTIO_MMIO_QUEUE_NUM_MAX),
            (R_QUEUE_NUM, vb::VIRTIO_MMIO_QUEUE_NUM),
            (R_QUEUE_READY, vb::VIRTIO_MMIO_QUEUE_READY),
            (R_QUEUE_NOTIFY, vb::VIRTIO_MMIO_QUEUE_NOTIFY),
            (R_INTERRUPT_STATUS, vb::VIRTIO_MMIO_INTERRUPT_STATUS),
            (R_INTERRUPT_ACK, vb::VIRTIO_MMIO_INTERRUPT_ACK),
            (R_STATUS, vb::VIRTIO_MMIO_STATUS),
            (R_QUEUE_DESC, vb::VIRTIO_MMIO_QUEUE_DESC_LOW),
            (R_QUEUE_DESC + 4, vb::VIRTIO_MMIO_QUEUE_DESC_HIGH),
            (R_QUEUE_DRIVER, vb::VIRTIO_MMIO_QUEUE_AVAIL_LOW),
            (R_QUEUE_DRIVER + 4, vb::VIRTIO_MMIO_QUEUE_AVAIL_HIGH),
            (R_QUEUE_DEVICE, vb::VIRTIO_MMIO_QUEUE_USED_LOW),
            (R_QUEUE_DEVICE + 4, vb::VIRTIO_MMIO_QUEUE_USED_HIGH),
        ];
        for (ours, theirs) in regs {
            assert_eq!(ours, u64::from(theirs));
        }
        assert_eq!(S_ACK, cfg::VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert_eq!(S_DRIVER, cfg::VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(S_DRIVER_OK, cfg::VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(S_FEATURES_OK, cfg::VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(S_FAILED, cfg::VIRTIO_CONFIG_S_FAILED);
        assert_eq!(F_VERSION_1, cfg::VIRTIO_F_VERSION_1);
        assert_eq!(MAGIC.to_le_bytes(), *b"virt");
    }
}

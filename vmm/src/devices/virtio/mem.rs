//! virtio-mem (virtio 1.2, 5.15): grows the guest beyond its boot memory.
//! The device owns a region of guest physical address space above the boot
//! RAM; perfvmm sets `requested_size`, and the guest's driver plugs device
//! blocks until its plugged size matches, or unplugs them when the request
//! shrinks. Unplugged blocks have their host memory discarded.
//!
//! The guest reaches only the region's slots ([`SLOT_SIZE`]) that hold a
//! plugged block: a slot is mapped into the guest (a KVM memory slot, see
//! [`SlotMap`]) when its first block is plugged and unmapped, its memory
//! discarded, when its last is unplugged. A guest that writes where nothing
//! is plugged therefore gets no host memory: outside the mapped slots its
//! accesses are MMIO exits that no device decodes. The device offers
//! `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`, by which the driver promises not
//! to read unplugged memory (Linux 5.16 and later).
//!
//! The guest controls every request field; each address, block count and
//! state transition is checked and a bad request is answered `ERROR` (never
//! trusted, never a panic).

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_MEM;
use virtio_mmio::GuestMem;
use virtio_mmio::{
    read_chain, ChainLimits, LogLimit, Mem, RestoreError, VirtioDevice, WorkLeft,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::memory;

pub const VIRTIO_MEM_DEVICE_ID: u32 = VIRTIO_ID_MEM;
pub const QUEUE_SIZE: u16 = 128;

/// Device block size: the plug/unplug granularity (Linux needs at least its
/// pageblock size, 2 MiB on x86).
pub const BLOCK_SIZE: u64 = 2 << 20;

/// The region is mapped into the guest in slots of this size (Linux's x86
/// memory block, the unit its driver adds memory in): each is mapped while
/// any of its blocks is plugged. The region's size is a multiple of it.
pub const SLOT_SIZE: u64 = 128 << 20;
const BLOCKS_PER_SLOT: usize = (SLOT_SIZE / BLOCK_SIZE) as usize;

/// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`: the driver does not read unplugged memory.
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u64 = 1;

/// Makes slots of the region guest memory, and takes them away (in perfvmm,
/// KVM memory slots over the region's host mapping).
pub trait SlotMap: Send {
    /// Slot `index` of the region, `[gpa, gpa + len)`, becomes guest memory.
    fn map(&mut self, index: usize, gpa: u64, len: u64) -> std::io::Result<()>;
    /// Slot `index` stops being guest memory.
    fn unmap(&mut self, index: usize, gpa: u64, len: u64) -> std::io::Result<()>;
}

/// Request and response layout.
pub const REQ_LEN: usize = 24;
pub const RESP_LEN: usize = 10;

pub mod req {
    pub const PLUG: u16 = 0;
    pub const UNPLUG: u16 = 1;
    pub const UNPLUG_ALL: u16 = 2;
    pub const STATE: u16 = 3;
}

pub mod resp {
    pub const ACK: u16 = 0;
    pub const NACK: u16 = 1;
    pub const ERROR: u16 = 3;
}

pub mod state {
    pub const PLUGGED: u16 = 0;
    pub const UNPLUGGED: u16 = 1;
    pub const MIXED: u16 = 2;
}

/// A request: at most one page of readable bytes (the request is the first
/// [`REQ_LEN`]), then a device-writable buffer for the response.
const REQUEST_LIMITS: ChainLimits = ChainLimits::read_write(4096);

/// What the device has seen; read by the control API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMemCounters {
    pub plugs: u64,
    pub unplugs: u64,
    pub nacks: u64,
    pub errors: u64,
    /// Chains too malformed to answer.
    pub dropped: u64,
}

pub struct VirtioMem {
    addr: u64,
    region_size: u64,
    requested: u64,
    plugged: Vec<bool>,
    plugged_size: u64,
    slots: Box<dyn SlotMap>,
    /// Per slot: mapped into the guest.
    mapped: Vec<bool>,
    counters: VirtioMemCounters,
    mem: Option<Mem>,
    queues: Vec<Queue>,
    /// Reused request buffer.
    buf: Vec<u8>,
    left: WorkLeft,
    /// Warnings the guest can trigger (a used ring it broke).
    warnings: LogLimit,
}

impl VirtioMem {
    /// A device for the region `[addr, addr + size)`; both must be multiples
    /// of [`SLOT_SIZE`] and the region must be part of the VMM's guest
    /// memory map, none of it yet mapped into the guest: `slots` maps it
    /// slot by slot as blocks are plugged.
    pub fn new(addr: u64, size: u64, slots: Box<dyn SlotMap>) -> Self {
        VirtioMem {
            addr,
            region_size: size,
            requested: 0,
            plugged: vec![false; (size / BLOCK_SIZE) as usize],
            plugged_size: 0,
            slots,
            mapped: vec![false; size.div_ceil(SLOT_SIZE) as usize],
            counters: VirtioMemCounters::default(),
            mem: None,
            queues: Vec::new(),
            buf: Vec::with_capacity(REQ_LEN),
            left: WorkLeft::default(),
            warnings: LogLimit::default(),
        }
    }

    pub fn region(&self) -> (u64, u64) {
        (self.addr, self.region_size)
    }

    /// Sets the size the guest should plug, rounded up to whole blocks and
    /// capped by the region. The caller raises the config-change interrupt.
    pub fn set_requested(&mut self, bytes: u64) -> u64 {
        self.requested = bytes
            .div_ceil(BLOCK_SIZE)
            .saturating_mul(BLOCK_SIZE)
            .min(self.region_size);
        self.requested
    }

    pub fn requested(&self) -> u64 {
        self.requested
    }

    pub fn plugged_size(&self) -> u64 {
        self.plugged_size
    }

    pub fn counters(&self) -> &VirtioMemCounters {
        &self.counters
    }

    fn config(&self) -> [u8; 56] {
        let mut c = [0u8; 56];
        let mut put = |off: usize, v: u64| c[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put(0, BLOCK_SIZE);
        // 8: node_id and padding stay 0 (VIRTIO_MEM_F_ACPI_PXM is not offered).
        put(16, self.addr);
        put(24, self.region_size);
        put(32, self.region_size); // usable_region_size
        put(40, self.plugged_size);
        put(48, self.requested);
        c
    }

    /// Block indices for `nb` blocks at `addr`, if the range is aligned and
    /// inside the region.
    fn blocks(&self, addr: u64, nb: u16) -> Option<std::ops::Range<usize>> {
        let off = addr.checked_sub(self.addr)?;
        if !off.is_multiple_of(BLOCK_SIZE) || nb == 0 {
            return None;
        }
        let first = off / BLOCK_SIZE;
        let end = first.checked_add(u64::from(nb))?;
        (end <= self.plugged.len() as u64).then_some(first as usize..end as usize)
    }

    /// Handles one request; returns the response type and, for STATE, the state.
    fn handle(&mut self, mem: &GuestMem, r: &[u8; REQ_LEN]) -> (u16, u16) {
        let kind = u16::from_le_bytes([r[0], r[1]]);
        let mut a = [0u8; 8];
        a.copy_from_slice(&r[8..16]);
        let addr = u64::from_le_bytes(a);
        let nb = u16::from_le_bytes([r[16], r[17]]);
        match kind {
            req::UNPLUG_ALL => {
                for i in 0..self.plugged.len() {
                    if self.plugged[i] {
                        self.unplug_block(mem, i);
                    }
                }
                self.unmap_empty_slots(mem, 0..self.plugged.len());
                self.counters.unplugs += 1;
                (resp::ACK, 0)
            }
            req::PLUG | req::UNPLUG | req::STATE => {
                let Some(range) = self.blocks(addr, nb) else {
                    self.counters.errors += 1;
                    return (resp::ERROR, 0);
                };
                let bytes = u64::from(nb) * BLOCK_SIZE;
                let plugged = self.plugged[range.clone()].iter().filter(|p| **p).count();
                match kind {
                    req::STATE => {
                        let s = match plugged {
                            0 => state::UNPLUGGED,
                            n if n == range.len() => state::PLUGGED,
                            _ => state::MIXED,
                        };
                        (resp::ACK, s)
                    }
                    req::PLUG if plugged != 0 => {
                        self.counters.errors += 1;
                        (resp::ERROR, 0)
                    }
                    req::PLUG if self.plugged_size + bytes > self.requested => {
                        self.counters.nacks += 1;
                        (resp::NACK, 0)
                    }
                    req::PLUG => {
                        if let Err(e) = self.map_slots(range.clone()) {
                            self.warnings
                                .warn(format_args!("virtio-mem: mapping a slot: {e}"));
                            self.counters.nacks += 1;
                            return (resp::NACK, 0);
                        }
                        self.plugged[range].fill(true);
                        self.plugged_size += bytes;
                        self.counters.plugs += 1;
                        (resp::ACK, 0)
                    }
                    _ if plugged != range.len() => {
                        self.counters.errors += 1;
                        (resp::ERROR, 0)
                    }
                    _ => {
                        for i in range.clone() {
                            self.unplug_block(mem, i);
                        }
                        self.unmap_empty_slots(mem, range);
                        self.counters.unplugs += 1;
                        (resp::ACK, 0)
                    }
                }
            }
            _ => {
                self.counters.errors += 1;
                (resp::ERROR, 0)
            }
        }
    }

    /// The slots holding blocks `blocks`.
    fn slots_of(blocks: std::ops::Range<usize>) -> std::ops::Range<usize> {
        blocks.start / BLOCKS_PER_SLOT..blocks.end.div_ceil(BLOCKS_PER_SLOT)
    }

    fn slot_range(&self, s: usize) -> (u64, u64) {
        let off = s as u64 * SLOT_SIZE;
        (self.addr + off, SLOT_SIZE.min(self.region_size - off))
    }

    /// Maps the slots of `blocks` not yet mapped; on failure, unmaps those
    /// it mapped.
    fn map_slots(&mut self, blocks: std::ops::Range<usize>) -> std::io::Result<()> {
        let mut done = Vec::new();
        for s in Self::slots_of(blocks) {
            if self.mapped[s] {
                continue;
            }
            let (gpa, len) = self.slot_range(s);
            if let Err(e) = self.slots.map(s, gpa, len) {
                for d in done {
                    let (gpa, len) = self.slot_range(d);
                    let _ = self.slots.unmap(d, gpa, len);
                    self.mapped[d] = false;
                }
                return Err(e);
            }
            self.mapped[s] = true;
            done.push(s);
        }
        Ok(())
    }

    /// Unmaps the slots of `blocks` that no longer hold a plugged block, and
    /// discards their memory (blocks the guest wrote while unplugged
    /// included).
    fn unmap_empty_slots(&mut self, mem: &GuestMem, blocks: std::ops::Range<usize>) {
        for s in Self::slots_of(blocks) {
            let first = s * BLOCKS_PER_SLOT;
            let end = (first + BLOCKS_PER_SLOT).min(self.plugged.len());
            if !self.mapped[s] || self.plugged[first..end].iter().any(|p| *p) {
                continue;
            }
            let (gpa, len) = self.slot_range(s);
            match self.slots.unmap(s, gpa, len) {
                Ok(()) => self.mapped[s] = false,
                Err(e) => {
                    self.warnings
                        .warn(format_args!("virtio-mem: unmapping a slot: {e}"));
                    continue;
                }
            }
            if let Err(e) = memory::discard(mem, GuestAddress(gpa), len) {
                log::warn!("virtio-mem: discarding slot at {gpa:#x}: {e}");
            }
        }
    }

    fn unplug_block(&mut self, mem: &GuestMem, i: usize) {
        self.plugged[i] = false;
        self.plugged_size -= BLOCK_SIZE;
        let addr = GuestAddress(self.addr + i as u64 * BLOCK_SIZE);
        if let Err(e) = memory::discard(mem, addr, BLOCK_SIZE) {
            log::warn!("virtio-mem: discarding block at {:#x}: {e}", addr.0);
        }
    }

    /// Reads the request and finds the response buffer of one chain.
    fn parse_chain(
        mem: &GuestMem,
        chain: DescriptorChain<&GuestMem>,
        buf: &mut Vec<u8>,
    ) -> Option<([u8; REQ_LEN], GuestAddress)> {
        let writable = read_chain(mem, chain, REQUEST_LIMITS, buf).ok()?;
        let request = buf.get(..REQ_LEN)?.try_into().ok()?;
        Some((request, writable.first_holding(RESP_LEN)?))
    }

    fn process_requests(&mut self) -> bool {
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        let mut used = false;
        let mut taken = 0;
        while let Some(chain) = self
            .left
            .pop(0, self.queues.first_mut(), mem.as_ref(), &mut taken)
        {
            let head = chain.head_index();
            let mut written = 0;
            match Self::parse_chain(mem.as_ref(), chain, &mut self.buf) {
                Some((request, at)) => {
                    let (kind, st) = self.handle(mem.as_ref(), &request);
                    let mut r = [0u8; RESP_LEN];
                    r[..2].copy_from_slice(&kind.to_le_bytes());
                    r[8..].copy_from_slice(&st.to_le_bytes());
                    if mem.write_slice(&r, at).is_ok() {
                        written = RESP_LEN as u32;
                    }
                }
                None => {
                    self.counters.dropped += 1;
                    log::debug!("virtio-mem: malformed request chain dropped");
                }
            }
            if let Err(e) = self.queues[0].add_used(mem.as_ref(), head, written) {
                self.warnings
                    .warn(format_args!("virtio-mem: used ring: {e}"));
                break;
            }
            used = true;
        }
        used && self.queues[0]
            .needs_notification(mem.as_ref())
            .unwrap_or(true)
    }
}

/// virtio-mem's own state beyond its transport's, for a VM snapshot: the
/// size asked for and which blocks are plugged (their memory is in the
/// snapshot's memory file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioMemState {
    pub region: (u64, u64),
    pub requested: u64,
    pub plugged: Vec<bool>,
    pub counters: VirtioMemCounters,
}

impl VirtioMem {
    pub fn save(&self) -> VirtioMemState {
        VirtioMemState {
            region: (self.addr, self.region_size),
            requested: self.requested,
            plugged: self.plugged.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Takes `state` on a new device over the same region, and maps the
    /// slots that hold plugged blocks into the guest.
    pub fn restore(&mut self, state: &VirtioMemState) -> Result<(), RestoreError> {
        let refuse = |why: String| Err(RestoreError::Device(format!("virtio-mem: {why}")));
        if state.region != (self.addr, self.region_size) {
            return refuse(format!(
                "region {:#x}+{:#x}, this VM's is {:#x}+{:#x}",
                state.region.0, state.region.1, self.addr, self.region_size
            ));
        }
        if state.plugged.len() != self.plugged.len() || state.requested > self.region_size {
            return refuse("block map or requested size outside the region".into());
        }
        if self.mapped.iter().any(|m| *m) {
            return refuse("restore onto a device with plugged memory".into());
        }
        let plugged = state.plugged.iter().filter(|p| **p).count() as u64;
        for (s, blocks) in state.plugged.chunks(BLOCKS_PER_SLOT).enumerate() {
            if blocks.iter().any(|p| *p) {
                let (gpa, len) = self.slot_range(s);
                self.slots.map(s, gpa, len).map_err(|e| {
                    RestoreError::Device(format!("virtio-mem: mapping slot {s}: {e}"))
                })?;
                self.mapped[s] = true;
            }
        }
        self.requested = state.requested;
        self.plugged.clone_from(&state.plugged);
        self.plugged_size = plugged * BLOCK_SIZE;
        self.counters = state.counters.clone();
        Ok(())
    }
}

impl VirtioDevice for VirtioMem {
    fn device_id(&self) -> u32 {
        VIRTIO_MEM_DEVICE_ID
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config();
        virtio_mmio::read_config_window(&c, offset, data);
    }

    fn activate(&mut self, mem: Mem, _acked_features: u64, queues: Vec<Queue>) {
        self.mem = Some(mem);
        self.queues = queues;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        index == 0 && self.process_requests()
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn reset(&mut self) {
        // Plugged blocks stay plugged across a driver reset: the next driver
        // finds them in `plugged_size` and unplugs them (UNPLUG_ALL).
        self.mem = None;
        self.queues.clear();
        self.left = WorkLeft::default();
    }

    fn has_more_work(&self) -> bool {
        self.left.any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use virtio_mmio::testing::{Desc, DriverRing};

    const REGION: u64 = 1 << 30;
    const REGION_SIZE: u64 = 2 * SLOT_SIZE;
    const RING: u64 = 0x1_0000;
    const REQ: u64 = 0x2_0000;
    const RESP: u64 = 0x3_0000;

    /// Records what the device maps (true) and unmaps (false), by slot; a
    /// map fails when `refuse` is set.
    #[derive(Clone, Default)]
    struct Slots {
        log: Arc<std::sync::Mutex<Vec<(bool, usize)>>>,
        refuse: bool,
    }

    impl Slots {
        fn take(&self) -> Vec<(bool, usize)> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl SlotMap for Slots {
        fn map(&mut self, index: usize, gpa: u64, len: u64) -> std::io::Result<()> {
            assert_eq!((gpa, len), (REGION + index as u64 * SLOT_SIZE, SLOT_SIZE));
            if self.refuse {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.log.lock().unwrap().push((true, index));
            Ok(())
        }

        fn unmap(&mut self, index: usize, _gpa: u64, _len: u64) -> std::io::Result<()> {
            self.log.lock().unwrap().push((false, index));
            Ok(())
        }
    }

    fn fixture_with(slots: Slots) -> (Mem, VirtioMem, DriverRing) {
        let mem = Arc::new(
            GuestMem::from_ranges(&[
                (GuestAddress(0), 1 << 20),
                (GuestAddress(REGION), REGION_SIZE as usize),
            ])
            .unwrap(),
        );
        let ring = DriverRing::new(&mem, RING, QUEUE_SIZE);
        let mut dev = VirtioMem::new(REGION, REGION_SIZE, Box::new(slots));
        dev.activate(mem.clone(), 0, vec![ring.queue()]);
        (mem, dev, ring)
    }

    fn fixture() -> (Mem, VirtioMem, DriverRing) {
        fixture_with(Slots::default())
    }

    #[test]
    fn only_slots_holding_plugged_blocks_are_guest_memory() {
        let slots = Slots::default();
        let (mem, mut dev, mut ring) = fixture_with(slots.clone());
        dev.set_requested(REGION_SIZE);
        let b = |i: u64| REGION + i * BLOCK_SIZE;
        let mut ask = |kind, block, nb| request(&mem, &mut dev, &mut ring, kind, b(block), nb).0;
        assert_eq!(slots.take(), [], "nothing mapped before a plug");
        assert_eq!(ask(req::PLUG, 0, 1), resp::ACK);
        assert_eq!(slots.take(), [(true, 0)]);
        assert_eq!(ask(req::PLUG, 1, 1), resp::ACK);
        assert_eq!(slots.take(), [], "slot 0 is mapped already");
        // One request across the two slots maps the second.
        assert_eq!(ask(req::PLUG, 63, 2), resp::ACK);
        assert_eq!(slots.take(), [(true, 1)]);
        assert_eq!(ask(req::UNPLUG, 0, 1), resp::ACK);
        assert_eq!(slots.take(), [], "blocks 1 and 63 still plugged");
        assert_eq!(ask(req::UNPLUG, 1, 1), resp::ACK);
        assert_eq!(ask(req::UNPLUG, 63, 1), resp::ACK);
        assert_eq!(slots.take(), [(false, 0)]);
        assert_eq!(ask(req::UNPLUG_ALL, 0, 0), resp::ACK);
        assert_eq!(slots.take(), [(false, 1)]);
        // What the guest wrote in a slot is gone once the slot is unmapped.
        assert_eq!(ask(req::PLUG, 64, 1), resp::ACK);
        mem.write_obj(7u64, GuestAddress(b(100))).unwrap();
        assert_eq!(ask(req::UNPLUG, 64, 1), resp::ACK);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(b(100))).unwrap(), 0);
    }

    #[test]
    fn a_restored_device_maps_the_slots_holding_plugged_blocks() {
        let (mem, mut dev, mut ring) = fixture();
        dev.set_requested(REGION_SIZE);
        let b = |i: u64| REGION + i * BLOCK_SIZE;
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::PLUG, b(70), 2).0,
            resp::ACK
        );
        let saved = dev.save();

        let slots = Slots::default();
        let (_, mut back, _) = fixture_with(slots.clone());
        back.restore(&saved).unwrap();
        assert_eq!(
            slots.take(),
            [(true, 1)],
            "only slot 1 holds plugged blocks"
        );
        assert_eq!(back.plugged_size(), 2 * BLOCK_SIZE);
        assert_eq!(back.requested(), REGION_SIZE);
        assert_eq!(back.save(), saved);

        let (_, mut other, _) = fixture();
        let moved = VirtioMemState {
            region: (REGION + SLOT_SIZE, REGION_SIZE),
            ..saved.clone()
        };
        assert!(other.restore(&moved).is_err(), "another region");
        let short = VirtioMemState {
            plugged: vec![true; 3],
            ..saved.clone()
        };
        assert!(
            other.restore(&short).is_err(),
            "a block map of another size"
        );
        assert!(back.restore(&saved).is_err(), "onto plugged memory");
    }

    #[test]
    fn a_slot_that_cannot_be_mapped_refuses_the_plug() {
        let slots = Slots {
            refuse: true,
            ..Slots::default()
        };
        let (mem, mut dev, mut ring) = fixture_with(slots.clone());
        dev.set_requested(REGION_SIZE);
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::PLUG, REGION, 1).0,
            resp::NACK
        );
        assert_eq!(dev.plugged_size(), 0);
        assert_eq!(slots.take(), []);
        assert!(dev.features() & (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) != 0);
    }

    fn request(
        mem: &Mem,
        dev: &mut VirtioMem,
        ring: &mut DriverRing,
        kind: u16,
        addr: u64,
        nb: u16,
    ) -> (u16, u16) {
        let mut r = [0u8; REQ_LEN];
        r[..2].copy_from_slice(&kind.to_le_bytes());
        r[8..16].copy_from_slice(&addr.to_le_bytes());
        r[16..18].copy_from_slice(&nb.to_le_bytes());
        mem.write_slice(&r, GuestAddress(REQ)).unwrap();
        ring.add(
            mem,
            &[
                Desc::readable(REQ, REQ_LEN as u32),
                Desc::writable(RESP, RESP_LEN as u32),
            ],
        );
        assert!(dev.process_queue(0));
        assert_eq!(ring.take_used(mem)[0].1, RESP_LEN as u32);
        let t: u16 = mem.read_obj(GuestAddress(RESP)).unwrap();
        let s: u16 = mem.read_obj(GuestAddress(RESP + 8)).unwrap();
        (t, s)
    }

    #[test]
    fn plug_up_to_the_request_then_unplug() {
        let (mem, mut dev, mut ring) = fixture();
        assert_eq!(dev.set_requested(3 << 20), 4 << 20, "whole blocks");
        let b = |i: u64| REGION + i * BLOCK_SIZE;
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::PLUG, b(0), 2).0,
            resp::ACK
        );
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::PLUG, b(2), 1).0,
            resp::NACK,
            "beyond requested_size"
        );
        assert_eq!(dev.plugged_size(), 4 << 20);
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::STATE, b(0), 3),
            (resp::ACK, state::MIXED)
        );
        mem.write_obj(7u64, GuestAddress(b(1))).unwrap();
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::UNPLUG, b(1), 1).0,
            resp::ACK
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(b(1))).unwrap(), 0);
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::UNPLUG, b(1), 1).0,
            resp::ERROR,
            "not plugged"
        );
        assert_eq!(
            request(&mem, &mut dev, &mut ring, req::UNPLUG_ALL, 0, 0).0,
            resp::ACK
        );
        assert_eq!(dev.plugged_size(), 0);
        let mut c = [0u8; 8];
        dev.read_config(48, &mut c);
        assert_eq!(u64::from_le_bytes(c), 4 << 20, "requested_size in config");
    }

    #[test]
    fn hostile_requests_get_error_or_are_dropped() {
        let (mem, mut dev, mut ring) = fixture();
        dev.set_requested(u64::MAX);
        assert_eq!(dev.requested(), REGION_SIZE, "capped by the region");
        for (addr, nb) in [
            (REGION + 4096, 1),             // unaligned
            (REGION - BLOCK_SIZE, 1),       // below the region
            (REGION, 0),                    // no blocks
            (REGION, u16::MAX),             // past the end
            (u64::MAX - BLOCK_SIZE + 1, 2), // overflow
        ] {
            assert_eq!(
                request(&mem, &mut dev, &mut ring, req::PLUG, addr, nb).0,
                resp::ERROR
            );
        }
        assert_eq!(
            request(&mem, &mut dev, &mut ring, 77, REGION, 1).0,
            resp::ERROR
        );
        // No response buffer, and a short request: used with nothing written.
        ring.add(&mem, &[Desc::readable(REQ, REQ_LEN as u32)]);
        ring.add(&mem, &[Desc::readable(REQ, 8), Desc::writable(RESP, 10)]);
        assert!(dev.process_queue(0));
        let used = ring.take_used(&mem);
        assert_eq!(used.len(), 2);
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
        assert_eq!(dev.counters().dropped, 2);
        assert_eq!(dev.plugged_size(), 0);
    }
}

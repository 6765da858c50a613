//! A driver-side view of a split virtqueue in guest memory, for tests and
//! benchmarks: post descriptor chains, read back what the device used.

use crate::GuestMem;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
}

impl Desc {
    pub fn readable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: 0,
        }
    }

    pub fn writable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: F_WRITE,
        }
    }
}

pub struct DriverRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverRing {
    /// Lays out a ring of `size` entries at `base` and zeroes its indices.
    pub fn new(mem: &GuestMem, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        for a in [avail, used] {
            mem.write_obj(0u32, GuestAddress(a))
                .expect("ring in memory");
        }
        DriverRing {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A device-side queue configured for this ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("valid size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes a raw descriptor at table index `i`.
    pub fn write_desc(&self, mem: &GuestMem, i: u16, d: Desc, next: u16) {
        let a = self.desc + 16 * u64::from(i);
        mem.write_obj(d.addr, GuestAddress(a)).expect("desc");
        mem.write_obj(d.len, GuestAddress(a + 8)).expect("desc");
        mem.write_obj(d.flags, GuestAddress(a + 12)).expect("desc");
        mem.write_obj(next, GuestAddress(a + 14)).expect("desc");
    }

    /// Makes the chain starting at table index `head` available.
    pub fn publish(&mut self, mem: &GuestMem, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).expect("avail");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail");
    }

    /// Writes `descs` as one chain in the next free table slots and publishes it.
    pub fn add(&mut self, mem: &GuestMem, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let next = (idx + 1) % self.size;
            let d = Desc {
                flags: if last { d.flags } else { d.flags | F_NEXT },
                ..*d
            };
            self.write_desc(mem, idx, d, if last { 0 } else { next });
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    pub fn used_idx(&self, mem: &GuestMem) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).expect("used")
    }

    /// Used elements (id, len) not yet returned by an earlier call.
    pub fn take_used(&mut self, mem: &GuestMem) -> Vec<(u32, u32)> {
        let end = self.used_idx(mem);
        let mut out = Vec::new();
        while self.used_seen != end {
            let a = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(a)).expect("used");
            let len: u32 = mem.read_obj(GuestAddress(a + 4)).expect("used");
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

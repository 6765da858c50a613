//! virtio-balloon (virtio 1.2, 5.5): shrinks the guest within its boot
//! memory. perfvmm sets a target in pages; the guest's driver hands pages
//! over on the inflate queue (perfvmm gives their host memory back) and takes
//! them back on the deflate queue. The statistics queue carries the guest's
//! own memory figures (free, available, total, ...), which the policy uses
//! as a floor and the control API reports.
//!
//! `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` is not offered, so the guest's
//! `MemTotal` shrinks by what it gives away: that is the allocation the
//! policy decided. Everything the guest writes is checked: PFNs outside guest
//! memory, writable or oversized buffers and malformed statistics are
//! dropped and counted.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_mmio::GuestMem;
use virtio_mmio::{
    read_chain, ChainError, ChainLimits, LogLimit, Mem, RestoreError, VirtioDevice, WorkLeft,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestAddress;

use crate::memory::{self, PAGE_SIZE};

pub const BALLOON_DEVICE_ID: u32 = VIRTIO_ID_BALLOON;

/// Feature bits.
pub mod features {
    pub const STATS_VQ: u32 = 1;
}

pub const INFLATEQ: usize = 0;
pub const DEFLATEQ: usize = 1;
pub const STATSQ: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// The balloon protocol's page size: PFNs are always in 4 KiB units.
pub const PFN_SHIFT: u32 = 12;

/// Most bytes of PFNs read from one inflate or deflate chain (Linux sends at
/// most 256 PFNs, 1 KiB).
pub const MAX_PFN_BYTES: usize = 64 * 1024;

/// Most bytes of statistics read from one buffer: 64 tags, far more than any
/// kernel sends (6.12 has 16).
pub const MAX_STATS_BYTES: usize = 64 * STAT_LEN;

/// One statistic: `le16 tag, le64 value`, packed.
pub const STAT_LEN: usize = 10;

/// The guest's memory statistics (virtio 1.2, 5.5.6.3, and the tags Linux
/// 6.12 added). Values are as the guest reports them: bytes for the memory
/// figures, counts for the rest. `None` means the guest did not send it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free_memory: Option<u64>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    pub disk_caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
    pub oom_kill: Option<u64>,
    pub alloc_stall: Option<u64>,
    pub async_scan: Option<u64>,
    pub direct_scan: Option<u64>,
    pub async_reclaim: Option<u64>,
    pub direct_reclaim: Option<u64>,
    /// Tags this device does not know (a newer guest kernel): skipped.
    pub unknown_tags: u64,
}

impl GuestMemStats {
    /// Memory the guest needs now: total minus available.
    pub fn in_use(&self) -> Option<u64> {
        Some(self.total_memory?.saturating_sub(self.available_memory?))
    }
}

/// Statistics buffers that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatsError {
    #[error("statistics buffer of {0} bytes is not a whole number of 10-byte entries")]
    Ragged(usize),
    #[error("statistics buffer of {0} bytes is larger than {MAX_STATS_BYTES}")]
    TooLarge(usize),
}

/// Parses a statistics buffer. Unknown tags are counted and skipped rather
/// than failing the whole buffer: kernels add tags (6.12 added six), and a
/// device that refuses them loses every statistic (Firecracker #5516).
pub fn parse_stats(buf: &[u8]) -> Result<GuestMemStats, StatsError> {
    if buf.len() > MAX_STATS_BYTES {
        return Err(StatsError::TooLarge(buf.len()));
    }
    if !buf.len().is_multiple_of(STAT_LEN) {
        return Err(StatsError::Ragged(buf.len()));
    }
    let mut s = GuestMemStats::default();
    for entry in buf.chunks_exact(STAT_LEN) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&entry[2..]);
        let value = Some(u64::from_le_bytes(v));
        let slot = match tag {
            0 => &mut s.swap_in,
            1 => &mut s.swap_out,
            2 => &mut s.major_faults,
            3 => &mut s.minor_faults,
            4 => &mut s.free_memory,
            5 => &mut s.total_memory,
            6 => &mut s.available_memory,
            7 => &mut s.disk_caches,
            8 => &mut s.hugetlb_allocations,
            9 => &mut s.hugetlb_failures,
            10 => &mut s.oom_kill,
            11 => &mut s.alloc_stall,
            12 => &mut s.async_scan,
            13 => &mut s.direct_scan,
            14 => &mut s.async_reclaim,
            15 => &mut s.direct_reclaim,
            _ => {
                s.unknown_tags += 1;
                continue;
            }
        };
        *slot = value;
    }
    Ok(s)
}

/// What the balloon has seen; read by the control API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonCounters {
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub stats_updates: u64,
    /// Chains, PFNs or statistics buffers refused.
    pub dropped: u64,
}

pub struct Balloon {
    /// Pages perfvmm wants the guest to give (config `num_pages`).
    target_pages: u32,
    /// Pages the guest says it has given (config `actual`, written by it).
    actual_pages: u32,
    stats: Option<GuestMemStats>,
    stats_at: Option<Instant>,
    /// The statistics buffer the device holds until it wants fresh figures.
    stats_head: Option<u16>,
    stats_requested: Option<Instant>,
    counters: BalloonCounters,
    mem: Option<Mem>,
    queues: Vec<Queue>,
    buf: Vec<u8>,
    left: WorkLeft,
    /// Warnings the guest can trigger (a used ring it broke).
    warnings: LogLimit,
}

impl Default for Balloon {
    fn default() -> Self {
        Self::new()
    }
}

impl Balloon {
    pub fn new() -> Self {
        Balloon {
            target_pages: 0,
            actual_pages: 0,
            stats: None,
            stats_at: None,
            stats_head: None,
            stats_requested: None,
            counters: BalloonCounters::default(),
            mem: None,
            queues: Vec::new(),
            buf: Vec::new(),
            left: WorkLeft::default(),
            warnings: LogLimit::default(),
        }
    }

    /// Asks the guest to hold `pages` 4 KiB pages in the balloon. The caller
    /// raises the config-change interrupt.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.target_pages = pages;
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// The latest statistics and their age.
    pub fn stats(&self) -> Option<(&GuestMemStats, Duration)> {
        Some((self.stats.as_ref()?, self.stats_at?.elapsed()))
    }

    pub fn counters(&self) -> &BalloonCounters {
        &self.counters
    }

    /// Returns the held statistics buffer so the guest refills it, at most
    /// once per `every`. True when the used ring changed (interrupt).
    pub fn request_stats(&mut self, every: Duration) -> bool {
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        if self.stats_requested.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        let Some(head) = self.stats_head.take() else {
            return false;
        };
        let Some(q) = self.queues.get_mut(STATSQ) else {
            return false;
        };
        self.stats_requested = Some(Instant::now());
        if let Err(e) = q.add_used(mem.as_ref(), head, 0) {
            self.warnings
                .warn(format_args!("balloon: statsq used ring: {e}"));
            return false;
        }
        q.needs_notification(mem.as_ref()).unwrap_or(true)
    }

    /// Reads a chain's readable bytes into `self.buf`, at most `limit` bytes.
    fn gather(
        &mut self,
        mem: &GuestMem,
        chain: DescriptorChain<&GuestMem>,
        limit: usize,
    ) -> Result<(), ChainError> {
        read_chain(mem, chain, ChainLimits::read_only(limit), &mut self.buf).map(|_| ())
    }

    /// Inflate: discard each page's host memory. Deflate: nothing to do, the
    /// pages fault back in when the guest touches them.
    fn process_pfns(&mut self, index: usize) -> bool {
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        let mut used = false;
        let mut taken = 0;
        while let Some(chain) =
            self.left
                .pop(index, self.queues.get_mut(index), mem.as_ref(), &mut taken)
        {
            let head = chain.head_index();
            match self.gather(mem.as_ref(), chain, MAX_PFN_BYTES) {
                Ok(()) if self.buf.len().is_multiple_of(4) => {
                    let pages = (self.buf.len() / 4) as u64;
                    if index == INFLATEQ {
                        self.inflate(&mem);
                    } else {
                        self.counters.deflated_pages += pages;
                    }
                }
                Ok(()) => {
                    self.counters.dropped += 1;
                    log::debug!("balloon: PFN buffer of {} bytes dropped", self.buf.len());
                }
                Err(e) => {
                    self.counters.dropped += 1;
                    log::debug!("balloon: chain dropped: {e}");
                }
            }
            if let Err(e) = self.queues[index].add_used(mem.as_ref(), head, 0) {
                self.warnings.warn(format_args!("balloon: used ring: {e}"));
                break;
            }
            used = true;
        }
        used && self.queues[index]
            .needs_notification(mem.as_ref())
            .unwrap_or(true)
    }

    /// Discards the pages listed in `self.buf`, one call per run of
    /// adjacent pages (see [`page_runs`]).
    fn inflate(&mut self, mem: &GuestMem) {
        for (first, n) in page_runs(&self.buf) {
            self.discard_run(mem, first, n);
        }
    }

    fn discard_run(&mut self, mem: &GuestMem, first: u64, n: u64) {
        let addr = GuestAddress(first << PFN_SHIFT);
        match memory::discard(mem, addr, n * PAGE_SIZE) {
            Ok(()) => self.counters.inflated_pages += n,
            Err(e) => {
                self.counters.dropped += 1;
                log::debug!("balloon: inflate of PFN {first:#x}+{n}: {e}");
            }
        }
    }

    /// The guest posted its statistics buffer: read it and hold it.
    fn process_stats(&mut self) -> bool {
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        let mut used = false;
        let mut taken = 0;
        while let Some(chain) = self.left.pop(
            STATSQ,
            self.queues.get_mut(STATSQ),
            mem.as_ref(),
            &mut taken,
        ) {
            let head = chain.head_index();
            let parsed = self
                .gather(mem.as_ref(), chain, MAX_STATS_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|()| parse_stats(&self.buf).map_err(|e| e.to_string()));
            match parsed {
                Ok(s) => {
                    self.stats = Some(s);
                    self.stats_at = Some(Instant::now());
                    self.counters.stats_updates += 1;
                }
                Err(e) => {
                    self.counters.dropped += 1;
                    log::debug!("balloon: statistics dropped: {e}");
                }
            }
            // Keep the newest buffer; hand an older one straight back.
            if let Some(old) = self.stats_head.replace(head) {
                if self.queues[STATSQ].add_used(mem.as_ref(), old, 0).is_ok() {
                    used = true;
                }
            }
        }
        used
    }
}

/// The pages of a PFN list (little-endian 32-bit entries) as runs of
/// adjacent pages, (first PFN, count), in ascending order. The guest's
/// order and repeats do not matter to a discard, and a hostile list (one
/// page 16 384 times, or pages in reverse) would otherwise cost a system
/// call per entry.
pub fn page_runs(list: &[u8]) -> Vec<(u64, u64)> {
    let mut pfns: Vec<u64> = list
        .chunks_exact(4)
        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    // Repeats next to each other go first (a list padded with one page
    // shrinks to little), and a list already in order is not sorted again.
    pfns.dedup();
    if !pfns.is_sorted() {
        pfns.sort_unstable();
        pfns.dedup();
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in pfns {
        match runs.last_mut() {
            Some((first, n)) if p == *first + *n => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

/// The balloon's own state beyond its transport's, for a VM snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats: Option<GuestMemStats>,
    /// The statistics buffer the device held.
    pub stats_head: Option<u16>,
    pub counters: BalloonCounters,
}

impl Balloon {
    pub fn save(&self) -> BalloonState {
        BalloonState {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            stats: self.stats.clone(),
            stats_head: self.stats_head,
            counters: self.counters.clone(),
        }
    }

    /// Takes `state` after the transport's restore. The statistics count as
    /// fresh: they are as old as the snapshot's pause.
    pub fn restore(&mut self, state: &BalloonState) -> Result<(), RestoreError> {
        if let Some(head) = state.stats_head {
            let size = self.queues.get(STATSQ).map(|q| q.size()).unwrap_or(0);
            if head >= size {
                return Err(RestoreError::Device(format!(
                    "balloon: statistics buffer {head} outside a queue of {size}"
                )));
            }
        }
        self.target_pages = state.target_pages;
        self.actual_pages = state.actual_pages;
        self.stats = state.stats.clone();
        self.stats_at = state.stats.as_ref().map(|_| Instant::now());
        self.stats_head = state.stats_head;
        self.counters = state.counters.clone();
        Ok(())
    }
}

impl VirtioDevice for Balloon {
    fn device_id(&self) -> u32 {
        BALLOON_DEVICE_ID
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << features::STATS_VQ)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&self.target_pages.to_le_bytes());
        config[4..].copy_from_slice(&self.actual_pages.to_le_bytes());
        virtio_mmio::read_config_window(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4, a 32-bit field) is the driver's to write.
        if let (4, Ok(b)) = (offset, <[u8; 4]>::try_from(data)) {
            self.actual_pages = u32::from_le_bytes(b);
        }
    }

    fn activate(&mut self, mem: Mem, _acked_features: u64, queues: Vec<Queue>) {
        self.mem = Some(mem);
        self.queues = queues;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            INFLATEQ | DEFLATEQ => self.process_pfns(index),
            STATSQ => self.process_stats(),
            _ => false,
        }
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn reset(&mut self) {
        self.mem = None;
        self.queues.clear();
        self.stats_head = None;
        self.stats_requested = None;
        // A rebooted driver starts with an empty balloon.
        self.actual_pages = 0;
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
    use vm_memory::Bytes;

    const MEM: usize = 16 << 20;
    const Q: [u64; 3] = [0x1_0000, 0x2_0000, 0x3_0000];
    const DATA: u64 = 0x10_0000;

    struct Fixture {
        mem: Mem,
        dev: Balloon,
        rings: Vec<DriverRing>,
    }

    fn fixture() -> Fixture {
        let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
        let rings: Vec<DriverRing> = Q
            .iter()
            .map(|&a| DriverRing::new(&mem, a, QUEUE_SIZE))
            .collect();
        let mut dev = Balloon::new();
        dev.activate(mem.clone(), 0, rings.iter().map(|r| r.queue()).collect());
        Fixture { mem, dev, rings }
    }

    fn stat(tag: u16, v: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&v.to_le_bytes());
        e
    }

    #[test]
    fn inflate_discards_listed_pages_and_checks_each_pfn() {
        let mut f = fixture();
        let page = 0x80_0000u64;
        for p in 0..3 {
            f.mem
                .write_obj(0xabcd_u32, GuestAddress(page + p * PAGE_SIZE))
                .unwrap();
        }
        let mut pfns = Vec::new();
        // Two adjacent pages, one far away, one outside memory.
        for pfn in [page >> 12, (page >> 12) + 1, (page >> 12) + 2, 1 << 30] {
            pfns.extend_from_slice(&(pfn as u32).to_le_bytes());
        }
        f.mem.write_slice(&pfns, GuestAddress(DATA)).unwrap();
        f.rings[INFLATEQ].add(&f.mem, &[Desc::readable(DATA, pfns.len() as u32)]);
        assert!(f.dev.process_queue(INFLATEQ));
        assert_eq!(f.rings[INFLATEQ].take_used(&f.mem).len(), 1);
        for p in 0..3 {
            assert_eq!(
                f.mem
                    .read_obj::<u32>(GuestAddress(page + p * PAGE_SIZE))
                    .unwrap(),
                0
            );
        }
        assert_eq!(f.dev.counters().inflated_pages, 3);
        assert_eq!(f.dev.counters().dropped, 1, "the PFN outside memory");
    }

    #[test]
    fn repeated_and_unordered_pages_make_one_run() {
        let list =
            |pfns: &[u32]| -> Vec<u8> { pfns.iter().flat_map(|p| p.to_le_bytes()).collect() };
        assert_eq!(page_runs(&list(&[7; 16_384])), [(7, 1)]);
        assert_eq!(
            page_runs(&list(&[12, 11, 10, 10, 3, 11, 2, u32::MAX])),
            [(2, 2), (10, 3), (u64::from(u32::MAX), 1)]
        );
        assert!(page_runs(&list(&[])).is_empty());
        // A trailing partial entry is not a page.
        assert_eq!(page_runs(&[1, 0, 0, 0, 9]), [(1, 1)]);
    }

    #[test]
    fn hostile_chains_are_dropped_and_the_queue_moves_on() {
        let mut f = fixture();
        f.rings[INFLATEQ].add(&f.mem, &[Desc::writable(DATA, 8)]);
        f.rings[INFLATEQ].add(&f.mem, &[Desc::readable(DATA, 6)]);
        f.rings[INFLATEQ].add(&f.mem, &[Desc::readable(DATA, u32::MAX)]);
        f.rings[INFLATEQ].add(&f.mem, &[Desc::readable(MEM as u64 - 2, 4)]);
        assert!(f.dev.process_queue(INFLATEQ));
        assert_eq!(f.rings[INFLATEQ].take_used(&f.mem).len(), 4);
        assert_eq!(f.dev.counters().dropped, 4);
        assert_eq!(f.dev.counters().inflated_pages, 0);
    }

    #[test]
    fn guest_writes_actual_only() {
        let mut f = fixture();
        f.dev.set_target_pages(1000);
        f.dev.write_config(4, &512u32.to_le_bytes());
        f.dev.write_config(0, &7u32.to_le_bytes());
        f.dev.write_config(4, &[1, 2]);
        let mut b = [0u8; 8];
        f.dev.read_config(0, &mut b);
        assert_eq!(b[..4], 1000u32.to_le_bytes());
        assert_eq!(b[4..], 512u32.to_le_bytes());
        let mut past = [0xffu8; 4];
        f.dev.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 4]);
    }

    /// Firecracker #5516: Linux 6.12 sends six more tags; a device that
    /// refuses unknown tags loses all statistics. Ours reads the ones it
    /// knows, counts the rest, and keeps the buffer for the next request.
    #[test]
    fn stats_from_a_6_12_guest_and_the_request_cycle() {
        let mut f = fixture();
        let mut buf = Vec::new();
        for tag in 0..16u16 {
            buf.extend(stat(tag, 1000 + u64::from(tag)));
        }
        buf.extend(stat(99, 1)); // a tag from a kernel newer than this device
        buf.extend(stat(5, 512 << 20)); // total
        buf.extend(stat(6, 400 << 20)); // available
        f.mem.write_slice(&buf, GuestAddress(DATA)).unwrap();
        f.rings[STATSQ].add(&f.mem, &[Desc::readable(DATA, buf.len() as u32)]);
        assert!(!f.dev.process_queue(STATSQ), "the buffer is held");
        let (s, _) = f.dev.stats().expect("stats");
        assert_eq!(s.oom_kill, Some(1010));
        assert_eq!(s.direct_reclaim, Some(1015));
        assert_eq!(s.unknown_tags, 1);
        assert_eq!(s.in_use(), Some(112 << 20));
        // perfvmm asks for fresh figures by returning the buffer, at most once per period.
        assert!(f.dev.request_stats(Duration::from_secs(1)));
        assert_eq!(f.rings[STATSQ].take_used(&f.mem).len(), 1);
        assert!(!f.dev.request_stats(Duration::from_secs(1)), "nothing held");
    }

    #[test]
    fn malformed_stats_are_dropped() {
        assert_eq!(parse_stats(&[0u8; 11]), Err(StatsError::Ragged(11)));
        assert!(matches!(
            parse_stats(&vec![0u8; MAX_STATS_BYTES + STAT_LEN]),
            Err(StatsError::TooLarge(_))
        ));
        assert_eq!(parse_stats(&[]).unwrap(), GuestMemStats::default());
        let mut f = fixture();
        f.mem.write_slice(&[0u8; 7], GuestAddress(DATA)).unwrap();
        f.rings[STATSQ].add(&f.mem, &[Desc::readable(DATA, 7)]);
        f.dev.process_queue(STATSQ);
        assert!(f.dev.stats().is_none());
        assert_eq!(f.dev.counters().dropped, 1);
    }

    #[test]
    fn a_restored_balloon_keeps_its_sizes_and_its_statistics_buffer() {
        let mut f = fixture();
        f.dev.set_target_pages(300);
        f.dev.write_config(4, &120u32.to_le_bytes());
        f.mem
            .write_slice(&stat(4, 64 << 20), GuestAddress(DATA))
            .unwrap();
        f.rings[STATSQ].add(&f.mem, &[Desc::readable(DATA, STAT_LEN as u32)]);
        f.dev.process_queue(STATSQ);
        let saved = f.dev.save();
        assert_eq!((saved.target_pages, saved.actual_pages), (300, 120));
        assert!(saved.stats_head.is_some());

        let mut g = fixture();
        g.dev.restore(&saved).unwrap();
        assert_eq!((g.dev.target_pages(), g.dev.actual_pages()), (300, 120));
        assert_eq!(g.dev.stats().unwrap().0.free_memory, Some(64 << 20));
        assert!(
            g.dev.request_stats(Duration::from_secs(1)),
            "the held buffer goes back"
        );

        let bad = BalloonState {
            stats_head: Some(QUEUE_SIZE),
            ..saved
        };
        assert!(g.dev.restore(&bad).is_err(), "a buffer outside the queue");
    }
}

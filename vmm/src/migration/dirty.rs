//! The set of guest pages a migration must still send: one bit per 4 KiB
//! page of each guest memory region, filled from KVM's dirty log (the
//! guest's writes) and from guest memory's own bitmap (the VMM's).

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use virtio_mmio::GuestMem;

use crate::memory::{runs_where, PAGE_SIZE};

struct Region {
    start: u64,
    pages: u64,
    bits: Vec<u64>,
}

/// Dirty pages, per guest memory region.
pub struct DirtyPages {
    regions: Vec<Region>,
}

impl DirtyPages {
    /// An empty set over `regions` (`(guest address, length)`).
    pub fn new(regions: &[(u64, u64)]) -> Self {
        DirtyPages {
            regions: regions
                .iter()
                .map(|&(start, len)| {
                    let pages = len / PAGE_SIZE;
                    Region {
                        start,
                        pages,
                        bits: vec![0; pages.div_ceil(64) as usize],
                    }
                })
                .collect(),
        }
    }

    /// The region holding `gpa`, and the page's bit there: its word and
    /// its mask.
    fn locate(&self, gpa: u64) -> Option<(usize, usize, u64)> {
        self.regions.iter().enumerate().find_map(|(i, r)| {
            let page = gpa.checked_sub(r.start)? / PAGE_SIZE;
            (page < r.pages).then(|| (i, (page / 64) as usize, 1 << (page % 64)))
        })
    }

    /// Marks the page at `gpa`; one outside every region is ignored.
    pub fn mark(&mut self, gpa: u64) {
        if let Some((r, word, bit)) = self.locate(gpa) {
            self.regions[r].bits[word] |= bit;
        }
    }

    /// Marks every page a bitmap of pages from `gpa` on has set (KVM's
    /// dirty log of one slot).
    pub fn mark_bitmap(&mut self, gpa: u64, bitmap: &[u64]) {
        for (w, &word) in bitmap.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                self.mark(gpa + ((w as u64) * 64 + b) * PAGE_SIZE);
            }
        }
    }

    /// Takes the pages the VMM wrote since the last call from guest
    /// memory's bitmaps, clearing them.
    pub fn take_vmm_writes(&mut self, mem: &GuestMem) {
        for region in mem.iter() {
            let mapping: &MmapRegion<AtomicBitmap> = region;
            let words = mapping.bitmap().get_and_reset();
            self.mark_bitmap(region.start_addr().0, &words);
        }
    }

    /// Adds every page of `other` (over the same regions).
    pub fn add(&mut self, other: &DirtyPages) {
        for (a, b) in self.regions.iter_mut().zip(&other.regions) {
            for (x, y) in a.bits.iter_mut().zip(&b.bits) {
                *x |= y;
            }
        }
    }

    pub fn count(&self) -> u64 {
        let words = self.regions.iter().flat_map(|r| &r.bits);
        words.map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.count() * PAGE_SIZE
    }

    /// The dirty pages as runs `(guest address, length)`, in address order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for r in &self.regions {
            let set = |p: usize| r.bits[p / 64] & (1 << (p % 64)) != 0;
            for (first, end) in runs_where(r.pages as usize, set) {
                let (first, end) = (first as u64, end as u64);
                out.push((r.start + first * PAGE_SIZE, (end - first) * PAGE_SIZE));
            }
        }
        out
    }

    /// Whether the page at `gpa` is in the set.
    pub fn contains(&self, gpa: u64) -> bool {
        self.locate(gpa)
            .is_some_and(|(r, word, bit)| self.regions[r].bits[word] & bit != 0)
    }

    /// The byte ranges `[start, end)` of the `len` bytes from `gpa` on
    /// whose pages are not in the set, as offsets from `gpa` (`gpa` on a
    /// page boundary; the last page may be partial).
    pub fn gaps(&self, gpa: u64, len: u64) -> Vec<(u64, u64)> {
        let pages = len.div_ceil(PAGE_SIZE) as usize;
        runs_where(pages, |i| !self.contains(gpa + i as u64 * PAGE_SIZE))
            .into_iter()
            .map(|(first, end)| (first as u64 * PAGE_SIZE, (end as u64 * PAGE_SIZE).min(len)))
            .collect()
    }

    pub fn clear(&mut self) {
        for r in &mut self.regions {
            r.bits.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const P: u64 = PAGE_SIZE;

    #[test]
    fn pages_from_kvm_and_the_vmm_make_runs_per_region() {
        let regions = [(0, 64 * P), (1 << 32, 128 * P)];
        let mut d = DirtyPages::new(&regions);
        // KVM's log of a slot over the second region: pages 0, 1, 3, 127.
        d.mark_bitmap(1 << 32, &[0b1011, 1 << 63]);
        d.mark(3 * P);
        d.mark(200 * P); // in no region
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), (64 * P) as usize)]).unwrap();
        mem.write_obj(1u32, GuestAddress(4 * P + 8)).unwrap();
        d.take_vmm_writes(&mem);
        let hi = 1u64 << 32;
        assert_eq!(
            d.runs(),
            vec![
                (3 * P, 2 * P),
                (hi, 2 * P),
                (hi + 3 * P, P),
                (hi + 127 * P, P)
            ]
        );
        assert_eq!(d.count(), 6);
        // The VMM's bitmap was cleared as it was read.
        let mut again = DirtyPages::new(&regions);
        again.take_vmm_writes(&mem);
        assert_eq!(again.count(), 0);
        again.add(&d);
        assert_eq!(again.bytes(), 6 * P);
        again.clear();
        assert!(again.runs().is_empty());
    }

    /// The first round sends what is not hot: the gaps between hot pages.
    #[test]
    fn gaps_are_the_ranges_whose_pages_are_not_in_the_set() {
        let hi = 1u64 << 32;
        let mut hot = DirtyPages::new(&[(0, 64 * P), (hi, 8 * P)]);
        hot.mark(2 * P);
        hot.mark(3 * P);
        hot.mark(6 * P);
        hot.mark(hi);
        assert!(hot.contains(3 * P + 100) && !hot.contains(4 * P) && hot.contains(hi));
        assert!(!hot.contains(hi + 8 * P), "past the region");
        assert_eq!(
            hot.gaps(0, 8 * P),
            vec![(0, 2 * P), (4 * P, 6 * P), (7 * P, 8 * P)]
        );
        // A run that starts inside the set and ends on a partial page.
        assert_eq!(hot.gaps(2 * P, 3 * P + 10), vec![(2 * P, 3 * P + 10)]);
        assert_eq!(hot.gaps(hi, 2 * P), vec![(P, 2 * P)]);
        assert_eq!(
            DirtyPages::new(&[(0, 8 * P)]).gaps(0, 8 * P),
            vec![(0, 8 * P)]
        );
    }
}

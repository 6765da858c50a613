//! Guest RAM: how much goes where, creating the mapping, and the e820 map
//! the guest is told about.

pub mod slots;

use virtio_mmio::{GuestMem, GuestRegion};
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::mmap::{FromRangesError, MmapRegion, MmapRegionError};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{ACPI_END, ACPI_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// Guest RAM regions as `(start, size)` for a guest of `size` bytes: RAM
/// below the MMIO gap, and whatever does not fit there above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > MMIO_GAP_START {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize));
    }
    ranges
}

/// virtio-mem's region starts on a boundary this large (Linux hot-adds
/// memory in blocks of up to 2 GiB; 1 GiB covers guests below 64 GiB).
pub const HOTPLUG_ALIGN: u64 = 1 << 30;
/// Linux's x86 memory block size for guests below 64 GiB: the hotplug
/// region's size is a whole number of these.
pub const HOTPLUG_BLOCK: u64 = 128 << 20;

/// The guest-physical region virtio-mem may plug for a guest of `boot`
/// bytes that may grow to `max`: above all boot RAM and the MMIO gap.
pub fn hotplug_region(boot: u64, max: u64) -> Option<(u64, u64)> {
    if max <= boot {
        return None;
    }
    let ram_end = ram_ranges(boot)
        .last()
        .map(|(a, len)| a.0 + *len as u64)
        .unwrap_or(0);
    let start = ram_end.max(MMIO_GAP_END).next_multiple_of(HOTPLUG_ALIGN);
    Some((start, (max - boot).next_multiple_of(HOTPLUG_BLOCK)))
}

/// Guest memory regions `(address, length)` of a guest of `boot` bytes
/// that may grow to `max`: RAM, then the virtio-mem region.
pub fn layout(boot: u64, max: u64) -> Vec<(u64, u64)> {
    let mut regions: Vec<(u64, u64)> = ram_ranges(boot)
        .into_iter()
        .map(|(a, len)| (a.0, len as u64))
        .collect();
    regions.extend(hotplug_region(boot, max));
    regions
}

/// The first byte past RAM below the MMIO gap.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

/// Maps guest RAM, and the hotplug region when there is one, in the VMM's
/// address space. Mappings are reserved, not populated: untouched pages
/// cost nothing. Each starts on a 2 MiB boundary, as every guest region
/// does, so that the host can back guest memory with transparent huge
/// pages and KVM map them with 2 MiB nested page-table entries (it can
/// only where guest-physical and host-virtual addresses agree modulo
/// 2 MiB): fewer nested page faults and TLB misses while the guest boots
/// and first touches its memory.
pub fn create_guest_memory(
    size: u64,
    hotplug: Option<(u64, u64)>,
) -> Result<GuestMem, FromRangesError> {
    let mut ranges = ram_ranges(size);
    if let Some((start, len)) = hotplug {
        ranges.push((GuestAddress(start), len as usize));
    }
    let regions = ranges
        .iter()
        .map(|&(base, len)| {
            let region = huge_aligned_region(len)?;
            GuestRegion::new(region, base).ok_or(FromRangesError::InvalidGuestRegion)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(GuestMem::from_regions(regions)?)
}

/// Alignment of guest memory in the VMM's address space.
pub const HUGE_PAGE: usize = 2 << 20;

/// An anonymous private mapping of `len` bytes starting on a
/// [`HUGE_PAGE`] boundary, with transparent huge pages asked for (hosts
/// whose THP setting is `madvise` use them too). It stays mapped for the
/// process's life, as guest memory does.
fn huge_aligned_region(len: usize) -> Result<MmapRegion<AtomicBitmap>, MmapRegionError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let total = len
        .checked_add(HUGE_PAGE)
        .ok_or(MmapRegionError::InvalidOffsetLength)?;
    // SAFETY: a new anonymous mapping at an address the kernel chooses; no
    // existing memory is affected.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), total, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(MmapRegionError::Mmap(std::io::Error::last_os_error()));
    }
    let start = base as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = total - head - len;
    // SAFETY: both ranges lie inside the mapping just made and nothing
    // refers to them; unmapping them leaves [aligned, aligned + len) mapped.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        // Advice only: a host without THP ignores it.
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    // SAFETY: [aligned, aligned + len) is a live anonymous mapping with
    // these `prot` and `flags`, owned by the region from now on (never
    // unmapped: guest memory lives as long as the process).
    unsafe { MmapRegion::build_raw(aligned as *mut u8, len, prot, flags) }
}

/// Host page size assumed for discarding guest memory.
pub const PAGE_SIZE: u64 = 4096;

/// The runs `[first, end)` of indices below `n` for which `keep` holds, in
/// order: the pages of a range to send or write.
pub fn runs_where(n: usize, keep: impl Fn(usize) -> bool) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut run = None;
    for i in 0..n {
        match (keep(i), run) {
            (true, None) => run = Some(i),
            (false, Some(first)) => {
                runs.push((first, i));
                run = None;
            }
            _ => {}
        }
    }
    if let Some(first) = run {
        runs.push((first, n));
    }
    runs
}

/// Why guest memory could not be discarded.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error("range {addr:#x}+{len:#x} is not page-aligned")]
    Unaligned { addr: u64, len: u64 },
    #[error("range {addr:#x}+{len:#x} is not inside one guest memory region")]
    OutOfRange { addr: u64, len: u64 },
    #[error("madvise failed: {0}")]
    Madvise(std::io::Error),
}

/// Gives the host pages behind guest range `[addr, addr + len)` back to the
/// host; they read as zero when touched again. Used when the balloon
/// inflates and when virtio-mem unplugs blocks.
pub fn discard(mem: &GuestMem, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
    let raw = addr.0;
    if !raw.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || len == 0 {
        return Err(DiscardError::Unaligned { addr: raw, len });
    }
    let out = || DiscardError::OutOfRange { addr: raw, len };
    let (region, offset) = mem.to_region_addr(addr).ok_or_else(out)?;
    let end = offset.0.checked_add(len).ok_or_else(out)?;
    if end > region.len() {
        return Err(out());
    }
    let host = region.get_host_address(offset).map_err(|_| out())?;
    // SAFETY: `[host, host + len)` lies inside one live anonymous mapping
    // owned by `mem` (checked above). MADV_DONTNEED only drops its pages; the
    // mapping stays valid and reads back zeros.
    let rc = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(DiscardError::Madvise(std::io::Error::last_os_error()));
    }
    // The pages changed (to zeros) behind KVM's dirty log: a migration
    // must send them again.
    region.bitmap().mark_dirty(offset.0 as usize, len as usize);
    Ok(())
}

/// e820 entry types from the boot protocol.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One entry of the e820 map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map for a guest of `size` bytes: conventional memory, the
/// reserved EBDA/BIOS area holding the ACPI tables, and high memory.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let low_end = low_ram_end(size);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    if size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_where_gives_each_run_once_up_to_the_end() {
        let set = [1, 2, 5, 7, 8];
        let runs = super::runs_where(9, |i| set.contains(&i));
        assert_eq!(runs, vec![(1, 3), (5, 6), (7, 9)]);
        assert!(super::runs_where(0, |_| true).is_empty());
        assert_eq!(super::runs_where(3, |_| true), vec![(0, 3)]);
    }

    #[test]
    fn guest_regions_start_on_huge_page_boundaries() {
        let mem = create_guest_memory(64 << 20, hotplug_region(64 << 20, 256 << 20)).unwrap();
        assert_eq!(mem.num_regions(), 2);
        for r in mem.iter() {
            assert_eq!(
                r.as_ptr() as usize % HUGE_PAGE,
                0,
                "{:#x}",
                r.as_ptr() as usize
            );
            // Writable, and reads back.
            let a = r.start_addr();
            mem.write_obj(0x5au8, a).unwrap();
            assert_eq!(mem.read_obj::<u8>(a).unwrap(), 0x5a);
        }
    }

    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn discarded_pages_read_back_zero() {
        use vm_memory::Bytes;
        let mem = create_guest_memory(32 << 20, None).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x20_0000))
            .unwrap();
        let region = mem.iter().next().unwrap();
        let whole: &MmapRegion<AtomicBitmap> = region;
        whole.bitmap().reset();
        discard(&mem, GuestAddress(0x20_0000), PAGE_SIZE).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(), 0);
        // Marked for a migration to send again (KVM's log does not see it).
        assert!(region.bitmap().dirty_at(0x20_0000));
        assert!(!region.bitmap().dirty_at(0x20_1000));
        assert!(matches!(
            discard(&mem, GuestAddress(0x20_0001), PAGE_SIZE),
            Err(DiscardError::Unaligned { .. })
        ));
        assert!(matches!(
            discard(&mem, GuestAddress((32 << 20) - PAGE_SIZE), 2 * PAGE_SIZE),
            Err(DiscardError::OutOfRange { .. })
        ));
        assert!(matches!(
            discard(&mem, GuestAddress(!0xfff), PAGE_SIZE),
            Err(DiscardError::OutOfRange { .. })
        ));
    }

    #[test]
    fn hotplug_region_sits_above_ram_and_the_gap() {
        assert_eq!(hotplug_region(512 << 20, 512 << 20), None);
        assert_eq!(
            hotplug_region(512 << 20, 1 << 30),
            Some((MMIO_GAP_END, 512 << 20))
        );
        // 4 GiB boot: 1 GiB lives above the gap (4-5 GiB), so the region starts at 5 GiB.
        let (start, size) = hotplug_region(4 << 30, (4 << 30) + 1).unwrap();
        assert_eq!((start, size), (5 << 30, HOTPLUG_BLOCK));
        let mem = create_guest_memory(64 << 20, hotplug_region(64 << 20, 256 << 20)).unwrap();
        assert_eq!(mem.num_regions(), 2);
    }

    #[test]
    fn small_guest_is_one_low_region() {
        let r = ram_ranges(512 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 512 << 20)]);
        let e = e820_map(512 << 20);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].addr + e[2].size, 512 << 20);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let size = 4u64 << 30;
        let r = ram_ranges(size);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1 as u64, MMIO_GAP_START);
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 as u64 + r[1].1 as u64, size);
        let ram: u64 = e820_map(size)
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Only the EBDA..1 MiB hole is lost to the guest.
        assert_eq!(ram, size - (HIMEM_START - EBDA_START));
    }
}

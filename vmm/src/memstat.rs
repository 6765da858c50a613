//! perfvmm's own memory use: process RSS, peak RSS, and how much of it is
//! guest memory the guest has touched (found with mincore).

/// One sample, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemSample {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub guest_resident_kib: u64,
}

fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Bytes of `[addr, addr + len)` resident in RAM. `addr` must be page aligned.
pub fn resident_bytes(addr: usize, len: usize) -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the range, as mincore requires;
    // the range is a mapping the caller owns.
    let r = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if r != 0 {
        return 0;
    }
    vec.iter().filter(|b| *b & 1 != 0).count() as u64 * page as u64
}

/// Samples the process's memory; `guest` lists guest RAM mappings as (addr, len).
pub fn sample(guest: &[(usize, usize)]) -> MemSample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    MemSample {
        rss_kib: status_field(&status, "VmRSS:"),
        peak_rss_kib: status_field(&status, "VmHWM:"),
        guest_resident_kib: guest
            .iter()
            .map(|&(a, l)| resident_bytes(a, l))
            .sum::<u64>()
            / 1024,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_touched_pages() {
        let mem = crate::memory::create_guest_memory(64 << 20, None).unwrap();
        use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
        let r = mem.iter().next().unwrap();
        let (addr, len) = (r.as_ptr() as usize, r.len() as usize);
        let before = resident_bytes(addr, len);
        for i in 0..16u64 {
            mem.write_obj(1u8, GuestAddress(i * 4096 + (1 << 20)))
                .unwrap();
        }
        // 16 pages, or the one transparent huge page around them where the
        // host backs guest memory with huge pages (it is 2 MiB-aligned).
        let grown = resident_bytes(addr, len) - before;
        assert!(
            (16 * 4096..=crate::memory::HUGE_PAGE as u64).contains(&grown),
            "{grown}"
        );
        let s = sample(&[(addr, len)]);
        assert!(s.rss_kib >= s.guest_resident_kib && s.peak_rss_kib >= s.rss_kib);
    }
}

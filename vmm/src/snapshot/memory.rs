//! Guest memory in a snapshot: written sparse, mapped back on restore.
//!
//! The memory file holds each guest memory region in turn. Only pages that
//! hold something are written: pages of a region perfvmm mapped itself
//! that the host never backed (neither in RAM nor swapped out, by
//! `/proc/self/pagemap`) are skipped unread, and pages of zeros are left
//! as holes. On restore the file is mapped private: pages
//! come in from it as the guest touches them, so a restore does not read
//! all of memory first, and the guest's writes never reach the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_mmio::{GuestMem, GuestRegion};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{io_err, Shape, SnapshotError};
use crate::memory::PAGE_SIZE;

/// Guest memory is read this much at a time.
const CHUNK: usize = 2 << 20;
const PAGE: usize = PAGE_SIZE as usize;

/// What writing guest memory took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes of guest memory, holes included.
    pub memory: u64,
    /// Bytes written: the pages that held something.
    pub data: u64,
}

/// Writes `mem`'s regions into a new file at `path`.
pub fn write(path: &Path, mem: &GuestMem) -> Result<Written, SnapshotError> {
    let file = File::create_new(path).map_err(io_err(path))?;
    let mut data = 0;
    let memory = for_each_data_run(mem, |_, at, bytes| {
        file.write_all_at(bytes, at)?;
        data += bytes.len() as u64;
        Ok::<(), std::io::Error>(())
    })
    .map_err(io_err(path))?;
    file.set_len(memory).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(Written { memory, data })
}

/// Calls `f` with each run of guest memory that may hold data and is not
/// all zeros (pages the host never backed are skipped unread, see
/// [`Residency`]): its guest address, its offset in `mem`'s regions laid
/// end to end (a memory file's layout), and its bytes. Returns the length
/// of all regions. Snapshots write these runs; a migration's first round
/// sends them.
pub fn for_each_data_run<E: From<std::io::Error>>(
    mem: &GuestMem,
    mut f: impl FnMut(u64, u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut buf = vec![0u8; CHUNK];
    let residency = Residency::open();
    let mut region_at = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        for off in (0..len).step_by(CHUNK) {
            let n = CHUNK.min(len - off);
            let resident = residency.may_hold_data(region, off, n);
            if resident.iter().all(|r| !r) {
                continue;
            }
            let gpa = region.start_addr().raw_value() + off as u64;
            let chunk = &mut buf[..n];
            mem.read_slice(chunk, GuestAddress(gpa))
                .map_err(std::io::Error::other)?;
            for (first, end) in data_runs(chunk, &resident) {
                let start = first * PAGE;
                let bytes = &chunk[start..(end * PAGE).min(n)];
                let at = (off + start) as u64;
                f(gpa + start as u64, region_at + at, bytes)?;
            }
        }
        region_at += len as u64;
    }
    Ok(region_at)
}

/// Runs `[first, end)` of pages of `chunk` that `resident` marks and that
/// are not all zeros.
fn data_runs(chunk: &[u8], resident: &[bool]) -> Vec<(usize, usize)> {
    let pages: Vec<&[u8]> = chunk.chunks(PAGE).collect();
    let n = pages.len().min(resident.len());
    crate::memory::runs_where(n, |i| resident[i] && pages[i].iter().any(|&b| b != 0))
}

/// Which pages of guest memory may hold data. A page of perfvmm's own
/// anonymous memory that is neither in RAM nor swapped out
/// (`/proc/self/pagemap`, bits 63 and 62) was never backed and reads as
/// zeros; `mincore` would not do here, as it counts a swapped-out page,
/// whose data is not zero, as absent. A file-backed region (a restored VM)
/// and any page whose entry cannot be read may hold data.
pub struct Residency(Option<File>);

impl Residency {
    pub fn open() -> Self {
        Residency(File::open("/proc/self/pagemap").ok())
    }

    /// Per page of `[off, off + n)` of `region`: whether it may hold data.
    pub fn may_hold_data(&self, region: &GuestRegion, off: usize, n: usize) -> Vec<bool> {
        let pages = n.div_ceil(PAGE);
        let Some(pagemap) = self.0.as_ref().filter(|_| region.file_offset().is_none()) else {
            return vec![true; pages];
        };
        let first_page = (region.as_ptr() as usize + off) / PAGE;
        let mut entries = vec![0u8; pages * 8];
        if pagemap
            .read_exact_at(&mut entries, (first_page * 8) as u64)
            .is_err()
        {
            return vec![true; pages];
        }
        const PRESENT_OR_SWAPPED: u64 = 3 << 62;
        entries
            .chunks_exact(8)
            .map(|e| {
                let mut b = [0u8; 8];
                b.copy_from_slice(e);
                u64::from_le_bytes(b) & PRESENT_OR_SWAPPED != 0
            })
            .collect()
    }
}

/// Maps the memory file at `path` as the guest memory of `shape`: each
/// region a private mapping of its part of the file.
pub fn map(path: &Path, shape: &Shape) -> Result<GuestMem, SnapshotError> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let expected = shape.memory_len();
    if len != expected {
        return Err(SnapshotError::MemorySize {
            path: path.to_path_buf(),
            len,
            expected,
        });
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_NORESERVE;
    let mut at = 0u64;
    let mut regions = Vec::with_capacity(shape.regions.len());
    for &(gpa, size) in &shape.regions {
        let f = file.try_clone().map_err(io_err(path))?;
        let size_usize = usize::try_from(size)
            .map_err(|_| io_err(path)(std::io::Error::from_raw_os_error(libc::EFBIG)))?;
        let mapped = MmapRegion::<AtomicBitmap>::build(
            Some(FileOffset::new(f, at)),
            size_usize,
            prot,
            flags,
        )
        .map_err(|e| io_err(path)(std::io::Error::other(e)))?;
        let region = GuestRegion::new(mapped, GuestAddress(gpa))
            .ok_or_else(|| io_err(path)(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        regions.push(region);
        at += size;
    }
    GuestMem::from_regions(regions).map_err(|e| io_err(path)(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resident_pages_with_data_make_runs() {
        let mut chunk = vec![0u8; 6 * PAGE];
        chunk[PAGE] = 1; // page 1
        chunk[2 * PAGE + 9] = 1; // page 2
        chunk[5 * PAGE] = 1; // page 5, not resident
        let resident = [true, true, true, true, true, false];
        assert_eq!(data_runs(&chunk, &resident), vec![(1, 3)]);
        chunk[5 * PAGE - 1] = 1; // page 4
        assert_eq!(data_runs(&chunk, &resident), vec![(1, 3), (4, 5)]);
        chunk[5 * PAGE] = 0;
        let all = [true; 6];
        assert_eq!(data_runs(&chunk, &all), vec![(1, 3), (4, 5)]);
        chunk[5 * PAGE + 1] = 1;
        assert_eq!(data_runs(&chunk, &all), vec![(1, 3), (4, 6)]);
    }
}

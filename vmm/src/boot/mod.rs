//! Loading the guest kernel and initrd, and filling in the Linux x86 boot
//! protocol's zero page (setup header, command line, e820 map, RSDP).

pub mod unpack;

pub use unpack::UnpackError;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use virtio_mmio::GuestMem;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_START, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START,
    RESET_VECTOR, ZERO_PAGE_START,
};
use crate::memory::e820_map;

/// The command line every guest gets; `--cmdline` is appended to it.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel { path: PathBuf },
    #[error("cannot load kernel {path}: {reason}")]
    KernelLoad { path: PathBuf, reason: String },
    #[error("cannot unpack kernel {path} (--guest-decompress lets the guest try): {source}")]
    Unpack { path: PathBuf, source: UnpackError },
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} MiB) does not fit in guest memory below {limit} MiB next to the kernel; give the VM more --memory")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Which format a kernel image is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// Who unpacks a bzImage's compressed kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unpacker {
    /// perfvmm, when the payload is LZ4 (see [`unpack`]); otherwise the guest.
    #[default]
    Vmm,
    /// Always the guest's own decompressor (which also randomises the
    /// kernel's address).
    Guest,
}

/// Where the kernel landed and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte past the loaded image.
    pub end: u64,
    /// The image's setup header (bzImage), used to fill the zero page.
    pub header: Option<setup_header>,
}

/// Identifies a kernel image from its first bytes.
pub fn detect_format<R: Read + Seek>(image: &mut R) -> std::io::Result<Option<KernelFormat>> {
    let mut magic = [0u8; 4];
    image.seek(SeekFrom::Start(0))?;
    if image.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    let mut hdrs = [0u8; 4];
    image.seek(SeekFrom::Start(0x202))?;
    if image.read_exact(&mut hdrs).is_ok() && hdrs == *b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// Loads a bzImage or ELF vmlinux into guest memory.
pub fn load_kernel(
    mem: &GuestMem,
    path: &Path,
    unpacker: Unpacker,
) -> Result<LoadedKernel, BootError> {
    let read_err = |source| BootError::KernelRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(BootError::NotAKernel {
            path: path.to_owned(),
        });
    }
    let format =
        detect_format(&mut file)
            .map_err(read_err)?
            .ok_or_else(|| BootError::NotAKernel {
                path: path.to_owned(),
            })?;
    let load_err = |e: linux_loader::loader::Error| BootError::KernelLoad {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match format {
        KernelFormat::BzImage => {
            if unpacker == Unpacker::Vmm {
                if let Some(k) = unpack_bzimage(mem, path, &mut file)? {
                    return Ok(k);
                }
            }
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                format,
                // The 64-bit entry point sits 0x200 past the protected-mode code.
                entry: r.kernel_load.unchecked_add(0x200),
                end: r.kernel_end,
                header: r.setup_header,
            })
        }
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            Ok(LoadedKernel {
                format,
                entry: r.kernel_load,
                end: r.kernel_end,
                header: None,
            })
        }
    }
}

/// Unpacks a bzImage's LZ4 payload into guest memory; `None` when the
/// payload is in another format (the guest's decompressor then runs).
fn unpack_bzimage(
    mem: &GuestMem,
    path: &Path,
    file: &mut File,
) -> Result<Option<LoadedKernel>, BootError> {
    let read_err = |source| BootError::KernelRead {
        path: path.to_owned(),
        source,
    };
    let mut hdr = setup_header::default();
    file.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .and_then(|_| file.read_exact(hdr.as_mut_slice()))
        .map_err(read_err)?;
    // payload_offset and payload_length exist from boot protocol 2.08.
    if hdr.version < 0x0208 {
        return Ok(None);
    }
    let setup_sects = u64::from(if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects
    });
    let start = (setup_sects + 1) * 512 + u64::from(hdr.payload_offset);
    if !unpack::is_lz4(file, start).map_err(read_err)? {
        return Ok(None);
    }
    let began = std::time::Instant::now();
    let k = unpack::unpack_lz4(mem, file, start, u64::from(hdr.payload_length), HIMEM_START)
        .map_err(|source| BootError::Unpack {
            path: path.to_owned(),
            source,
        })?;
    log::info!(
        "kernel: LZ4 payload unpacked by perfvmm in {} ms (entry {:#x})",
        began.elapsed().as_millis(),
        k.entry
    );
    Ok(Some(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: GuestAddress(k.entry),
        end: k.end,
        // The bzImage's own header describes this kernel (protocol
        // version, initrd limit, load flags) to the zero page.
        header: Some(hdr),
    }))
}

/// Where an initrd was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Places the initrd as high as the kernel allows in low memory, page aligned.
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, BootError> {
    let read_err = |source| BootError::InitrdRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let addr_max = kernel
        .header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(0x7fff_ffff);
    // The top of the RAM region at address 0, which ends at or below the
    // MMIO gap (memory::ram_ranges): never high RAM or the hotplug region.
    let low_end = mem
        .find_region(GuestAddress(0))
        .map_or(0, vm_memory::GuestMemoryRegion::len);
    let limit = (addr_max + 1).min(low_end);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_owned(),
        size: size.div_ceil(1 << 20),
        limit: limit >> 20,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel.end.max(HIMEM_START) {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => read_err(source),
            other => BootError::Memory(other),
        })?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds the kernel command line: the default plus the user's extra arguments.
pub fn build_cmdline(extra: Option<&str>) -> Result<Cmdline, BootError> {
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(DEFAULT_CMDLINE)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    if let Some(extra) = extra.map(str::trim).filter(|s| !s.is_empty()) {
        cmdline
            .insert_str(extra)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Where a bzImage's setup header starts.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMem,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline: &Cmdline,
    mem_size: u64,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADFLAG_CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = ACPI_START;

    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;

    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Real-mode code at the reset vector: `mov dx, RESET_PORT; mov al, VALUE;
/// out dx, al; hlt`. A guest that reboots through its "BIOS" lands here and
/// resets the VM through the ACPI reset register.
pub fn reset_vector_stub() -> [u8; 7] {
    let [lo, hi] = ACPI_RESET_PORT.to_le_bytes();
    [0xba, lo, hi, 0xb0, ACPI_RESET_VALUE, 0xee, 0xf4]
}

/// Writes [`reset_vector_stub`] at the reset vector.
pub fn write_reset_vector(mem: &GuestMem) -> Result<(), BootError> {
    mem.write_slice(&reset_vector_stub(), GuestAddress(RESET_VECTOR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn formats_are_recognised() {
        let mut elf = vec![0u8; 0x300];
        elf[..4].copy_from_slice(b"\x7fELF");
        assert_eq!(
            detect_format(&mut Cursor::new(elf)).unwrap(),
            Some(KernelFormat::Elf)
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            Some(KernelFormat::BzImage)
        );
        assert_eq!(
            detect_format(&mut Cursor::new(vec![0u8; 16])).unwrap(),
            None
        );
        assert_eq!(
            detect_format(&mut Cursor::new(b"hello".to_vec())).unwrap(),
            None
        );
    }

    #[test]
    fn reset_vector_writes_the_reset_register() {
        let stub = reset_vector_stub();
        assert_eq!(stub, [0xba, 0x02, 0x06, 0xb0, 0x01, 0xee, 0xf4]);
        let mem = crate::memory::create_guest_memory(32 << 20, None).unwrap();
        write_reset_vector(&mem).unwrap();
        let mut b = [0u8; 7];
        mem.read_slice(&mut b, GuestAddress(RESET_VECTOR)).unwrap();
        assert_eq!(b, stub);
    }

    #[test]
    fn cmdline_extends_default() {
        let c = build_cmdline(Some("quiet  ")).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet"
        );
        assert!(build_cmdline(Some(&"x".repeat(4096))).is_err());
    }

    #[test]
    fn initrd_too_big_is_refused() {
        let mem = crate::memory::create_guest_memory(32 << 20, None).unwrap();
        let dir = std::env::temp_dir().join(format!("perfvmm-initrd-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 40 << 20]).unwrap();
        let kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(HIMEM_START),
            end: 2 << 20,
            header: None,
        };
        let err = load_initrd(&mem, &dir, &kernel).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooBig { .. }), "{err}");
        std::fs::write(&dir, vec![7u8; 1 << 20]).unwrap();
        let ok = load_initrd(&mem, &dir, &kernel).unwrap();
        assert_eq!(ok.addr.raw_value() + ok.size, 32 << 20);
        let b: u8 = mem.read_obj(ok.addr).unwrap();
        assert_eq!(b, 7);
        std::fs::remove_file(&dir).unwrap();
    }
}

//! A hostile migration source through the target's reader: the hello
//! (magic, version, length, postcard), then pages frames into a small
//! guest memory and the state frame, as `perfvmm --incoming` reads them.
//! Byte 0 chooses raw bytes or a valid hello before the rest, so the
//! frames are reached too. Nothing panics, and no page lands outside
//! guest memory (the reader refuses it).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use perfvmm::migration::receive::fill;
use perfvmm::migration::wire::{read_hello, write_hello, Hello};
use perfvmm::snapshot::Shape;
use virtio_mmio::GuestMem;
use vm_memory::GuestAddress;

const MEM: u64 = 1 << 20;

fn hello() -> Vec<u8> {
    let h = Hello {
        shape: Shape {
            max_vcpus: 1,
            boot_memory: MEM,
            max_memory: MEM,
            regions: vec![(0, MEM)],
            hotplug: None,
        },
        vcpus: 1,
        memory_bytes: MEM,
    };
    let mut out = Vec::new();
    write_hello(&mut out, &h).unwrap();
    out
}

fuzz_target!(|data: &[u8]| {
    static MEMORY: OnceLock<GuestMem> = OnceLock::new();
    let mem = MEMORY
        .get_or_init(|| GuestMem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = if mode & 1 == 0 { Vec::new() } else { hello() };
    bytes.extend_from_slice(rest);
    let mut r = &bytes[..];
    if read_hello(&mut r).is_ok() {
        let _ = fill(&mut r, mem);
    }
});

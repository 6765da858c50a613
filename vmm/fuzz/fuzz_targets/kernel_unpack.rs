//! Hostile kernel images through perfvmm's LZ4 unpacker: byte 0 chooses a
//! raw payload (framing, block lengths) or the rest packed as one valid
//! block (the ELF header, program headers and segments behind it). Nothing
//! panics, and what is accepted lies in guest memory above 1 MiB.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use perfvmm::boot::unpack::{unpack_payload, LZ4_LEGACY_MAGIC};
use vm_memory::{GuestAddress};
use virtio_mmio::{GuestMem};

const MEM: u64 = 16 << 20;
const HIMEM: u64 = 1 << 20;

fn framed(image: &[u8]) -> Vec<u8> {
    let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
    let c = lz4_flex::block::compress(image);
    out.extend_from_slice(&(c.len() as u32).to_le_bytes());
    out.extend_from_slice(&c);
    out.extend_from_slice(&(image.len() as u32).to_le_bytes());
    out
}

fuzz_target!(|data: &[u8]| {
    static MEMORY: OnceLock<GuestMem> = OnceLock::new();
    let mem = MEMORY
        .get_or_init(|| GuestMem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let payload = if mode & 1 == 1 {
        framed(rest)
    } else {
        rest.to_vec()
    };
    if let Ok(k) = unpack_payload(mem, &payload, HIMEM) {
        assert!(k.end <= MEM, "a segment ends past guest memory: {k:?}");
    }
});

//! Arbitrary virtio-mem requests: every one is answered or dropped, the
//! plugged size never exceeds the region, and nothing panics.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use perfvmm::devices::virtio::mem::{VirtioMem, BLOCK_SIZE, QUEUE_SIZE, REQ_LEN, RESP_LEN};
use virtio_mmio::testing::{Desc, DriverRing};
use virtio_mmio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const REGION: u64 = 16 << 20;
const SIZE: u64 = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(REGION), SIZE as usize),
        ])
        .unwrap(),
    );
    let mut ring = DriverRing::new(&mem, 0x1_0000, QUEUE_SIZE);
    let mut dev = VirtioMem::new(REGION, SIZE);
    dev.activate(mem.clone(), 0, vec![ring.queue()]);
    for chunk in data.chunks(REQ_LEN + 1) {
        dev.set_requested(u64::from(chunk[0]) * BLOCK_SIZE);
        let mut req = [0u8; REQ_LEN];
        let body = &chunk[1..];
        req[..body.len()].copy_from_slice(body);
        // Aim some requests inside the region.
        if chunk[0] & 1 == 1 {
            let block = u64::from(req[8] % 8);
            req[8..16].copy_from_slice(&(REGION + block * BLOCK_SIZE).to_le_bytes());
            req[1] = 0;
        }
        mem.write_slice(&req, GuestAddress(0x2_0000)).unwrap();
        ring.add(
            &mem,
            &[
                Desc::readable(0x2_0000, REQ_LEN as u32),
                Desc::writable(0x3_0000, RESP_LEN as u32),
            ],
        );
        dev.process_queue(0);
        assert!(dev.plugged_size() <= SIZE);
    }
});

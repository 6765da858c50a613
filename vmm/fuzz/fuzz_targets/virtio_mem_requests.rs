//! Arbitrary virtio-mem requests: every one is answered or dropped, the
//! plugged size never exceeds the region, a slot is mapped into the guest
//! only once and unmapped only while mapped, no slot stays mapped once
//! nothing is plugged, and nothing panics.
#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use perfvmm::devices::virtio::mem::{
    SlotMap, VirtioMem, BLOCK_SIZE, QUEUE_SIZE, REQ_LEN, RESP_LEN, SLOT_SIZE,
};
use virtio_mmio::testing::{Desc, DriverRing};
use virtio_mmio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress};
use virtio_mmio::{GuestMem};

const REGION: u64 = 1 << 30;
const SIZE: u64 = 2 * SLOT_SIZE;

/// The slots mapped now; mapping one twice or unmapping one not mapped fails.
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<BTreeSet<usize>>>);

impl SlotMap for Slots {
    fn map(&mut self, index: usize, gpa: u64, len: u64) -> std::io::Result<()> {
        assert_eq!((gpa, len), (REGION + index as u64 * SLOT_SIZE, SLOT_SIZE));
        assert!(
            self.0.lock().unwrap().insert(index),
            "slot {index} mapped twice"
        );
        Ok(())
    }

    fn unmap(&mut self, index: usize, _: u64, _: u64) -> std::io::Result<()> {
        assert!(
            self.0.lock().unwrap().remove(&index),
            "slot {index} not mapped"
        );
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // One guest memory for every input (fresh mappings per input cost more
    // than the device's work); the ring and request area an input can have
    // written is cleared first.
    static MEMORY: OnceLock<Arc<GuestMem>> = OnceLock::new();
    let mem = MEMORY
        .get_or_init(|| {
            Arc::new(
                GuestMem::from_ranges(&[
                    (GuestAddress(0), 1 << 20),
                    (GuestAddress(REGION), SIZE as usize),
                ])
                .unwrap(),
            )
        })
        .clone();
    mem.write_slice(&vec![0u8; 0x4_0000], GuestAddress(0))
        .unwrap();
    let mut ring = DriverRing::new(&mem, 0x1_0000, QUEUE_SIZE);
    let slots = Slots::default();
    let mut dev = VirtioMem::new(REGION, SIZE, Box::new(slots.clone()));
    dev.activate(mem.clone(), 0, vec![ring.queue()]);
    for chunk in data.chunks(REQ_LEN + 1) {
        dev.set_requested(u64::from(chunk[0]) * BLOCK_SIZE);
        let mut req = [0u8; REQ_LEN];
        let body = &chunk[1..];
        req[..body.len()].copy_from_slice(body);
        // Aim some requests inside the region.
        if chunk[0] & 1 == 1 {
            let block = u64::from(req[8] % 128);
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
        if dev.plugged_size() == 0 {
            assert!(
                slots.0.lock().unwrap().is_empty(),
                "a slot mapped with nothing plugged"
            );
        }
    }
});

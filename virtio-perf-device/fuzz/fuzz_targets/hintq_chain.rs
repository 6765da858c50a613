//! Arbitrary descriptor tables and payloads on hintq: the device must drop
//! or accept every chain without panicking, and always return it.
#![no_main]

use std::sync::Arc;

use guest_hints::wire::{Hint, Outcome};
use libfuzzer_sys::fuzz_target;
use virtio_mmio::testing::{Desc, DriverRing};
use virtio_mmio::VirtioDevice;
use virtio_perf_device::{HintSink, PerfHintDevice, HINTQ};
use vm_memory::{Bytes, GuestAddress};
use virtio_mmio::{GuestMem};

struct Sink;
impl HintSink for Sink {
    fn hint(&mut self, _stream: u16, _seq: u32, _hint: &Hint) -> Outcome {
        Outcome::Accepted
    }
}

const MEM: usize = 1 << 20;
const QSIZE: u16 = 16;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let mut ring = DriverRing::new(&mem, 0, QSIZE);
    let event = DriverRing::new(&mem, 0x1000, QSIZE);
    let mut dev = PerfHintDevice::new(Sink);
    let feats = dev.features();
    dev.activate(mem.clone(), feats, vec![ring.queue(), event.queue()]);

    // First byte: number of descriptors; then 12 bytes each; the rest is payload.
    let n = (data[0] as usize % QSIZE as usize) + 1;
    let heads = (data[1] as usize % 4) + 1;
    let mut rest = &data[2..];
    for i in 0..n {
        if rest.len() < 12 {
            break;
        }
        let addr = u64::from(u32::from_le_bytes(rest[0..4].try_into().unwrap()));
        let len = u32::from_le_bytes(rest[4..8].try_into().unwrap());
        let flags = u16::from_le_bytes(rest[8..10].try_into().unwrap()) & 0x7;
        let next = u16::from_le_bytes(rest[10..12].try_into().unwrap()) % (QSIZE + 2);
        ring.write_desc(&mem, i as u16, Desc { addr, len, flags }, next);
        rest = &rest[12..];
    }
    let _ = mem.write_slice(&rest[..rest.len().min(8192)], GuestAddress(0x4000));
    for h in 0..heads {
        ring.publish(&mem, (h % n) as u16);
    }
    dev.process_queue(HINTQ);
    assert_eq!(ring.take_used(&mem).len(), heads, "every chain is returned");
});

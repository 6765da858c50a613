//! Arbitrary chains on the balloon's three queues (PFN lists, statistics):
//! every chain is dropped or used, nothing panics, and no page outside
//! guest memory is touched.
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use perfvmm::devices::virtio::balloon::{parse_stats, Balloon, QUEUE_SIZE};
use virtio_mmio::testing::{Desc, DriverRing};
use virtio_mmio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress};
use virtio_mmio::{GuestMem};

const MEM: usize = 4 << 20;
const DATA: u64 = 0x10_0000;
/// The payload's window at DATA.
const WINDOW: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let _ = parse_stats(data);
    if data.len() < 3 {
        return;
    }
    // One guest memory for every input (a fresh 4 MiB mapping per input
    // cost more than the device's work). Rings are laid out afresh by
    // `DriverRing::new`; the device writes nothing else (a discarded page
    // reads as zeros), so only the previous input's payload is cleared.
    static MEMORY: OnceLock<Arc<GuestMem>> = OnceLock::new();
    static LAST: AtomicUsize = AtomicUsize::new(0);
    static ZEROS: [u8; WINDOW] = [0; WINDOW];
    let mem = MEMORY
        .get_or_init(|| Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()))
        .clone();
    let last = LAST.load(Ordering::Relaxed);
    mem.write_slice(&ZEROS[..last], GuestAddress(DATA)).unwrap();
    let mut rings: Vec<DriverRing> = (0..3u64)
        .map(|i| DriverRing::new(&mem, 0x1_0000 * (i + 1), QUEUE_SIZE))
        .collect();
    let mut dev = Balloon::new();
    dev.activate(mem.clone(), 0, rings.iter().map(|r| r.queue()).collect());
    // Byte 0: queue; byte 1: descriptor length scale; byte 2: writable?; rest: payload.
    let q = usize::from(data[0] % 3);
    let payload = &data[3..];
    let written = payload.len().min(WINDOW);
    let _ = mem.write_slice(&payload[..written], GuestAddress(DATA));
    LAST.store(written, Ordering::Relaxed);
    let len = (payload.len() as u32).wrapping_mul(u32::from(data[1]) + 1);
    let d = if data[2] & 1 == 1 {
        Desc::writable(DATA, len)
    } else {
        Desc::readable(DATA, len)
    };
    rings[q].add(&mem, &[d]);
    dev.process_queue(q);
    let _ = dev.request_stats(std::time::Duration::ZERO);
});

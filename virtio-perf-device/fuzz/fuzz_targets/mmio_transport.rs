//! Arbitrary register sequences on the virtio-mmio transport of the
//! perf-hint device — reads and writes of any width at any offset, status
//! changes in any order, queue addresses anywhere, notifications before and
//! after DRIVER_OK — over guest memory the input also fills: nothing
//! panics, and the device never activates with a queue outside memory.
#![no_main]

use std::sync::Arc;

use guest_hints::wire::{Hint, Outcome};
use libfuzzer_sys::fuzz_target;
use virtio_mmio::device::status;
use virtio_mmio::transport::MmioTransport;
use virtio_mmio::Interrupt;
use virtio_perf_device::{HintSink, PerfHintDevice};
use vm_memory::{Bytes, GuestAddress};
use virtio_mmio::{GuestMem};

const MEM: usize = 1 << 20;

struct Accept;
impl HintSink for Accept {
    fn hint(&mut self, _stream: u16, _seq: u32, _hint: &Hint) -> Outcome {
        Outcome::Accepted
    }
}

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self) {}
}

fuzz_target!(|data: &[u8]| {
    // The first 4 KiB of input become the start of guest memory (rings).
    let (image, ops) = data.split_at(data.len().min(4096));
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap());
    let _ = mem.write_slice(image, GuestAddress(0));
    let mut t = MmioTransport::new(PerfHintDevice::new(Accept), mem, Arc::new(NoIrq), 0x1af4);
    // Each operation: opcode, offset (2 bytes), value (4 bytes).
    for op in ops.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x200);
        let value = [op[3], op[4], op[5], op[6]];
        let width = [1usize, 2, 4, 8][usize::from(op[0] >> 6)];
        match op[0] % 4 {
            0 => {
                let mut buf = [0u8; 8];
                t.read(offset, &mut buf[..width]);
            }
            1 => {
                let mut buf = [0u8; 8];
                buf[..4].copy_from_slice(&value);
                t.write(offset, &buf[..width]);
            }
            2 => t.notify(usize::from(value[0])),
            _ => t.notify_all(),
        }
        if t.is_activated() {
            assert_ne!(t.status() & status::DRIVER_OK, 0, "activated without DRIVER_OK");
        }
    }
});

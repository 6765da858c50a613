//! guest-hints' bare-metal virtio-mmio driver against this device model, in
//! one process: the driver's register accesses go to the virtio-mmio
//! transport and its DMA region is (mock) guest memory.

use std::sync::{Arc, Mutex};

use guest_hints::client::{hint, Client, SendError, Transport};
use guest_hints::mmio::{Dma, MmioTransport as Driver, Registers, DMA_LEN, SLOTS};
use guest_hints::wire::{Hint, IoClass, Outcome};
use virtio_mmio::GuestMem;
use virtio_mmio::Interrupt;
use virtio_mmio::MmioTransport;
use virtio_perf_device::{HintSink, PerfHintDevice};
use vm_memory::{Bytes, GuestAddress};

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(u32, Hint)>>>);
impl HintSink for Log {
    fn hint(&mut self, _stream: u16, seq: u32, hint: &Hint) -> Outcome {
        self.0.lock().unwrap().push((seq, *hint));
        Outcome::Accepted
    }
}

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self) {}
}

type Device = Arc<Mutex<MmioTransport<PerfHintDevice<Log>>>>;

/// Register accesses, optionally leaving notifications for later (like an
/// ioeventfd the VMM has not serviced yet).
struct Regs {
    dev: Device,
    deferred: bool,
}
impl Registers for Regs {
    fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.lock().unwrap().read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&self, off: u64, v: u32) {
        if self.deferred && off == virtio_mmio::transport::reg::QUEUE_NOTIFY {
            return;
        }
        self.dev.lock().unwrap().write(off, &v.to_le_bytes());
    }
}

struct GuestDma {
    mem: Arc<GuestMem>,
    base: u64,
    len: usize,
}
impl Dma for GuestDma {
    fn phys(&self) -> u64 {
        self.base
    }
    fn size(&self) -> usize {
        self.len
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(self.base + off as u64))
            .unwrap();
    }
    fn read(&self, off: usize, out: &mut [u8]) {
        self.mem
            .read_slice(out, GuestAddress(self.base + off as u64))
            .unwrap();
    }
}

fn setup(deferred: bool, dma_len: usize) -> (Client<Driver<Regs, GuestDma>>, Device, Log) {
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let log = Log::default();
    let dev: Device = Arc::new(Mutex::new(MmioTransport::new(
        PerfHintDevice::new(log.clone()),
        mem.clone(),
        Arc::new(NoIrq),
        0,
    )));
    let driver = Driver::new(
        Regs {
            dev: dev.clone(),
            deferred,
        },
        GuestDma {
            mem,
            base: 0x1_0000,
            len: dma_len,
        },
    );
    (Client::new(driver), dev, log)
}

#[test]
fn hints_from_the_bare_metal_driver_arrive() {
    let (mut client, _dev, log) = setup(false, DMA_LEN);
    assert!(client.is_connected());
    let sent = [
        hint::parallelism(8, 8, 0.1),
        hint::io(IoClass::Random, 1 << 20),
        hint::phase_end(3),
    ];
    for h in &sent {
        client.send(h).unwrap();
    }
    client
        .send_all(&[hint::phase_begin(4, "x", 10), hint::phase_end(4)])
        .unwrap();
    let got: Vec<Hint> = log.0.lock().unwrap().iter().map(|(_, h)| *h).collect();
    assert_eq!(&got[..3], &sent);
    assert_eq!(got.len(), 5);
    let seqs: Vec<u32> = log.0.lock().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    // Many more than the ring holds: slots are reclaimed as the device uses them.
    for i in 0..100 {
        client.send(&hint::phase_end(i)).unwrap();
    }
    assert_eq!(log.0.lock().unwrap().len(), 105);
}

#[test]
fn full_ring_reports_busy_until_the_device_catches_up() {
    let (mut client, dev, log) = setup(true, DMA_LEN);
    for _ in 0..SLOTS {
        client.send(&hint::phase_end(1)).unwrap();
    }
    assert_eq!(client.send(&hint::phase_end(2)), Err(SendError::Busy));
    dev.lock().unwrap().notify(0);
    assert_eq!(log.0.lock().unwrap().len(), SLOTS as usize);
    client.send(&hint::phase_end(3)).unwrap();
    assert_eq!(client.stats().dropped, 1);
}

#[test]
fn too_little_dma_memory_is_a_silent_no_op() {
    let (mut client, _dev, log) = setup(false, DMA_LEN - 1);
    assert!(!client.transport_mut().is_connected());
    assert_eq!(client.send(&hint::phase_end(1)), Err(SendError::NoDevice));
    assert!(log.0.lock().unwrap().is_empty());
}

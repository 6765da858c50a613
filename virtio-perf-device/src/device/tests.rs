//! Device tests driven through virtio-queue's mock split queues: good
//! messages, batches, and every kind of hostile chain.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use guest_hints::wire::{self, Hint, MessageWriter, Outcome, Parallelism};
use virtio_mmio::GuestMem;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::MAX_CHAIN_DESCRIPTORS;
use virtio_mmio::testing::{self, Desc, DriverRing};
use virtio_mmio::VirtioDevice;

const MEM_SIZE: usize = 0x100_0000;
const HINTQ_ADDR: u64 = 0x0;
const EVENTQ_ADDR: u64 = 0x10_0000;
const DATA_ADDR: u64 = 0x20_0000;
const EVENT_BUF_ADDR: u64 = 0x80_0000;

/// Records what the device handed over.
#[derive(Clone, Default)]
pub struct Recorder {
    pub hints: Arc<Mutex<Vec<(u32, Hint)>>>,
    /// The stream of each hint, in order.
    pub streams: Arc<Mutex<Vec<u16>>>,
    pub drops: Arc<Mutex<Vec<DropReason>>>,
    /// Streams the driver closed, in order.
    pub closed: Arc<Mutex<Vec<u16>>>,
}

impl HintSink for Recorder {
    fn hint(&mut self, stream: u16, seq: u32, hint: &Hint) -> Outcome {
        self.hints.lock().unwrap().push((seq, *hint));
        self.streams.lock().unwrap().push(stream);
        match hint {
            Hint::Parallelism(p) if p.runnable_tasks > 64 => Outcome::Clamped,
            _ => Outcome::Accepted,
        }
    }

    fn dropped(&mut self, reason: DropReason, _detail: &str) {
        self.drops.lock().unwrap().push(reason);
    }

    fn stream_closed(&mut self, stream: u16) {
        self.closed.lock().unwrap().push(stream);
    }
}

pub struct Fixture {
    pub mem: Arc<GuestMem>,
    pub dev: PerfHintDevice<Recorder>,
    pub rec: Recorder,
    hintq: DriverRing,
    eventq: DriverRing,
    next_data: u64,
    /// Event buffers by descriptor head, for reading outcomes back.
    event_bufs: Vec<(u32, u64)>,
    next_event_buf: u64,
}

impl Fixture {
    pub fn new(eventq: bool) -> Self {
        let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let rec = Recorder::default();
        let mut dev = PerfHintDevice::new(rec.clone());
        let hintq = DriverRing::new(&mem, HINTQ_ADDR, QUEUE_SIZE);
        let eventq_ring = DriverRing::new(&mem, EVENTQ_ADDR, QUEUE_SIZE);
        let queues: Vec<Queue> = vec![hintq.queue(), eventq_ring.queue()];
        let features = if eventq {
            dev.features()
        } else {
            dev.features() & !(1 << crate::features::EVENTQ)
        };
        dev.activate(mem.clone(), features, queues);
        Fixture {
            mem,
            dev,
            rec,
            hintq,
            eventq: eventq_ring,
            next_data: DATA_ADDR,
            event_bufs: Vec::new(),
            next_event_buf: EVENT_BUF_ADDR,
        }
    }

    /// Places `bytes` in guest memory and returns their address.
    pub fn data(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.next_data;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.next_data += (bytes.len() as u64 + 15) & !15;
        addr
    }

    /// Makes a chain available on hintq.
    pub fn post_chain(&mut self, descs: &[Desc]) {
        self.hintq.add(&self.mem, descs);
    }

    /// Posts one message as a single readable buffer.
    pub fn post_message(&mut self, msg: &[u8]) {
        let addr = self.data(msg);
        self.post_chain(&[Desc::readable(addr, msg.len() as u32)]);
    }

    /// Posts `n` empty event buffers of `len` bytes.
    pub fn post_event_buffers(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let addr = self.next_event_buf;
            self.next_event_buf += u64::from(len).max(16);
            let head = self.eventq.add(&self.mem, &[Desc::writable(addr, len)]);
            self.event_bufs.push((u32::from(head), addr));
        }
    }

    /// Outcomes written into event buffers since the last call, in order.
    pub fn outcomes(&mut self) -> Vec<(u32, Outcome)> {
        self.outcomes_with_streams()
            .into_iter()
            .map(|(_, seq, o)| (seq, o))
            .collect()
    }

    /// As [`Fixture::outcomes`], with each outcome's stream.
    pub fn outcomes_with_streams(&mut self) -> Vec<(u16, u32, Outcome)> {
        let mut out = Vec::new();
        for (id, len) in self.eventq.take_used(&self.mem) {
            let addr = self
                .event_bufs
                .iter()
                .rev()
                .find(|b| b.0 == id)
                .map(|b| b.1)
                .unwrap();
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.extend(
                buf.chunks(wire::OUTCOME_LEN)
                    .filter_map(wire::decode_outcome),
            );
        }
        out
    }

    pub fn used_hintq(&self) -> u16 {
        self.hintq.used_idx(&self.mem)
    }

    /// Processes hintq, then flushes outcomes as the VMM's tick would.
    pub fn process(&mut self) -> bool {
        let hint = self.dev.process_queue(HINTQ);
        self.dev.process_queue(EVENTQ) || hint
    }
}

fn par(n: u32) -> Hint {
    Hint::Parallelism(Parallelism {
        runnable_tasks: n,
        max_useful: n,
        serial_ppm: 50_000,
    })
}

fn message(hints: &[Hint], seq: u32) -> Vec<u8> {
    let mut w = MessageWriter::new(seq);
    for h in hints {
        w.push(h).unwrap();
    }
    w.finish().to_vec()
}

/// `msg` as the guest driver sends it through open file `stream`.
fn stamped(mut msg: Vec<u8>, stream: u16) -> Vec<u8> {
    msg[wire::STREAM_OFFSET..wire::STREAM_OFFSET + 2].copy_from_slice(&stream.to_le_bytes());
    msg
}

#[test]
fn each_stream_gets_its_own_outcomes_and_the_sink_knows_the_stream() {
    let mut f = Fixture::new(true);
    f.post_event_buffers(4, 64);
    f.post_message(&stamped(message(&[par(2)], 0), 7));
    f.post_message(&stamped(message(&[par(3)], 0), 9));
    // A malformed message still reaches its writer's stream.
    let mut bad = stamped(message(&[par(1)], 5), 9);
    bad[2] = 99; // version
    f.post_message(&bad);
    f.process();
    assert_eq!(*f.rec.streams.lock().unwrap(), [7, 9]);
    assert_eq!(
        f.outcomes_with_streams(),
        [
            (7, 0, Outcome::Accepted),
            (9, 0, Outcome::Accepted),
            (9, UNKNOWN_SEQ, Outcome::Rejected)
        ]
    );
}

#[test]
fn the_driver_closing_a_stream_reaches_the_sink_with_no_outcome() {
    let mut f = Fixture::new(true);
    f.post_event_buffers(4, 64);
    f.post_message(&wire::stream_closed_message(5));
    // Stream 0 (unnumbered writers) is never closed.
    f.post_message(&wire::stream_closed_message(0));
    f.process();
    assert_eq!(*f.rec.closed.lock().unwrap(), [5]);
    assert!(f.rec.hints.lock().unwrap().is_empty());
    assert_eq!(f.outcomes_with_streams(), []);
}

#[test]
fn without_streams_acked_every_message_is_stream_0() {
    let mut f = Fixture::new(true);
    let mem = f.mem.clone();
    let queues = vec![
        DriverRing::new(&mem, HINTQ_ADDR, QUEUE_SIZE).queue(),
        DriverRing::new(&mem, EVENTQ_ADDR, QUEUE_SIZE).queue(),
    ];
    let features = f.dev.features() & !(1 << crate::features::STREAMS);
    f.dev.reset();
    f.dev.activate(mem, features, queues);
    f.post_message(&stamped(message(&[par(2)], 0), 7));
    f.post_message(&wire::stream_closed_message(7));
    f.process();
    assert_eq!(*f.rec.streams.lock().unwrap(), [0]);
    assert!(
        f.rec.closed.lock().unwrap().is_empty(),
        "no stream to close"
    );
}

#[test]
fn hints_arrive_in_order_with_outcomes() {
    let mut f = Fixture::new(true);
    f.post_event_buffers(4, 64);
    f.post_message(&message(&[par(4), Hint::PhaseEnd { id: 9 }], 100));
    f.post_message(&message(&[par(128)], 102));
    assert!(f.process(), "the driver is interrupted");
    let got = f.rec.hints.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            (100, par(4)),
            (101, Hint::PhaseEnd { id: 9 }),
            (102, par(128))
        ]
    );
    assert_eq!(f.used_hintq(), 2);
    assert_eq!(
        f.outcomes(),
        vec![
            (100, Outcome::Accepted),
            (101, Outcome::Accepted),
            (102, Outcome::Clamped)
        ]
    );
    let c = f.dev.counters().snapshot();
    assert_eq!(
        (
            c.messages,
            c.hints,
            c.accepted,
            c.clamped,
            c.dropped_total()
        ),
        (2, 3, 2, 1, 0)
    );
}

#[test]
fn message_split_over_several_buffers() {
    let mut f = Fixture::new(false);
    let msg = message(&[par(1), par(2), par(3)], 0);
    let (a, b) = msg.split_at(10);
    let (a, b) = (f.data(a), f.data(b));
    f.post_chain(&[
        Desc::readable(a, 10),
        Desc::readable(b, (msg.len() - 10) as u32),
    ]);
    f.process();
    assert_eq!(f.rec.hints.lock().unwrap().len(), 3);
}

fn expect_drop(f: &mut Fixture, reason: DropReason) {
    f.process();
    assert_eq!(f.rec.drops.lock().unwrap().last(), Some(&reason));
    assert_eq!(f.dev.counters().snapshot().dropped(reason), 1);
    assert!(
        f.rec.hints.lock().unwrap().is_empty(),
        "no hint from a dropped message"
    );
    assert_eq!(f.used_hintq(), 1, "the chain is returned to the driver");
    // The queue keeps moving: a good message afterwards is accepted.
    f.post_message(&message(&[par(2)], 5));
    f.process();
    assert_eq!(f.rec.hints.lock().unwrap().clone(), vec![(5, par(2))]);
}

#[test]
fn writable_buffer_is_dropped() {
    let mut f = Fixture::new(true);
    let msg = message(&[par(1)], 0);
    let addr = f.data(&msg);
    f.post_chain(&[Desc::writable(addr, msg.len() as u32)]);
    expect_drop(&mut f, DropReason::WritableBuffer);
}

#[test]
fn zero_length_is_dropped() {
    let mut f = Fixture::new(true);
    f.post_chain(&[Desc::readable(DATA_ADDR, 0)]);
    expect_drop(&mut f, DropReason::ZeroLength);
}

#[test]
fn oversized_message_is_dropped() {
    let mut f = Fixture::new(true);
    f.post_chain(&[Desc::readable(
        DATA_ADDR,
        (wire::MAX_MESSAGE_LEN + 1) as u32,
    )]);
    expect_drop(&mut f, DropReason::TooLarge);
}

#[test]
fn huge_length_is_dropped_without_allocating_it() {
    let mut f = Fixture::new(true);
    f.post_chain(&[Desc::readable(DATA_ADDR, u32::MAX)]);
    expect_drop(&mut f, DropReason::TooLarge);
}

#[test]
fn address_outside_memory_is_dropped() {
    let mut f = Fixture::new(true);
    f.post_chain(&[Desc::readable(MEM_SIZE as u64 - 8, 64)]);
    expect_drop(&mut f, DropReason::BadAddress);
}

#[test]
fn descriptor_loop_is_dropped() {
    let mut f = Fixture::new(true);
    let addr = f.data(&[0u8; 4]);
    // Descriptor 0 points at itself: the chain never ends.
    f.hintq.write_desc(
        &f.mem,
        0,
        Desc {
            addr,
            len: 4,
            flags: testing::F_NEXT,
        },
        0,
    );
    f.hintq.publish(&f.mem, 0);
    f.process();
    let drops = f.rec.drops.lock().unwrap().clone();
    assert_eq!(drops, vec![DropReason::ChainTooLong]);
    assert_eq!(f.used_hintq(), 1);
}

#[test]
fn over_long_chain_is_dropped() {
    let mut f = Fixture::new(true);
    let descs: Vec<Desc> = (0..MAX_CHAIN_DESCRIPTORS as u64 + 1)
        .map(|i| Desc::readable(DATA_ADDR + i, 1))
        .collect();
    f.post_chain(&descs);
    expect_drop(&mut f, DropReason::ChainTooLong);
}

#[test]
fn garbage_payload_is_dropped() {
    let mut f = Fixture::new(true);
    f.post_message(b"definitely not a perf-hint message");
    expect_drop(&mut f, DropReason::Malformed);
}

#[test]
fn bad_record_is_rejected_and_the_rest_kept() {
    let mut f = Fixture::new(true);
    f.post_event_buffers(1, 64);
    let mut msg = message(&[par(1), par(2)], 10);
    // Make the first record's serial fraction out of range.
    let off = wire::HEADER_LEN + wire::RECORD_HEADER_LEN + 8;
    msg[off..off + 4].copy_from_slice(&(wire::PPM + 1).to_le_bytes());
    f.post_message(&msg);
    f.process();
    assert_eq!(f.rec.hints.lock().unwrap().clone(), vec![(11, par(2))]);
    assert_eq!(
        f.outcomes(),
        vec![(10, Outcome::Rejected), (11, Outcome::Accepted)]
    );
}

#[test]
fn outcomes_are_batched_until_flushed() {
    let mut f = Fixture::new(true);
    f.post_event_buffers(4, 256);
    f.post_message(&message(&[par(1), par(2)], 0));
    f.dev.process_queue(HINTQ);
    assert!(
        f.outcomes().is_empty(),
        "two outcomes wait for a batch or a flush"
    );
    let many: Vec<Hint> = (0..OUTCOME_BATCH as u32).map(par).collect();
    f.post_message(&message(&many, 2));
    f.dev.process_queue(HINTQ);
    assert_eq!(
        f.outcomes().len(),
        OUTCOME_BATCH + 2,
        "a full batch is written at once"
    );
}

#[test]
fn outcomes_wait_for_event_buffers() {
    let mut f = Fixture::new(true);
    f.post_message(&message(&[par(1), par(2), par(3)], 0));
    f.process();
    assert!(f.outcomes().is_empty());
    // One 16-byte buffer takes two outcomes, the next the third.
    f.post_event_buffers(2, 16);
    assert!(f.dev.process_queue(EVENTQ));
    let seqs: Vec<u32> = f.outcomes().iter().map(|o| o.0).collect();
    assert_eq!(seqs, vec![0, 1, 2]);
}

#[test]
fn without_eventq_feature_no_outcomes_are_kept() {
    let mut f = Fixture::new(false);
    f.post_event_buffers(1, 64);
    f.post_message(&message(&[par(1)], 0));
    f.process();
    assert!(f.outcomes().is_empty());
    assert_eq!(f.dev.counters().snapshot().accepted, 1);
}

/// Counts interrupts.
#[derive(Default)]
struct IrqCount(AtomicU32);
impl virtio_mmio::Interrupt for IrqCount {
    fn trigger(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

mod transport {
    use super::*;
    use virtio_mmio::device::status::*;
    use virtio_mmio::transport::{reg, MmioTransport, MAGIC_VALUE};

    fn r(t: &mut MmioTransport<PerfHintDevice<Recorder>>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport<PerfHintDevice<Recorder>>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport() -> (
        MmioTransport<PerfHintDevice<Recorder>>,
        Arc<GuestMem>,
        Arc<IrqCount>,
    ) {
        let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let (t, irq) = transport_on(&mem);
        (t, mem, irq)
    }

    /// A new device and transport over `mem` (a restored one, say).
    fn transport_on(
        mem: &Arc<GuestMem>,
    ) -> (MmioTransport<PerfHintDevice<Recorder>>, Arc<IrqCount>) {
        let irq = Arc::new(IrqCount::default());
        let t = MmioTransport::new(
            PerfHintDevice::new(Recorder::default()),
            mem.clone(),
            irq.clone(),
            0x1234,
        );
        (t, irq)
    }

    /// Negotiates features and sets up both queues as a Linux driver would.
    fn bring_up(
        t: &mut MmioTransport<PerfHintDevice<Recorder>>,
        mem: &GuestMem,
        driver_features_hi: u32,
    ) {
        if configure(t, mem, driver_features_hi) {
            w(
                t,
                reg::STATUS,
                ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
            );
        }
    }

    /// Everything of `bring_up` but DRIVER_OK; false if features were refused.
    fn configure(
        t: &mut MmioTransport<PerfHintDevice<Recorder>>,
        mem: &GuestMem,
        driver_features_hi: u32,
    ) -> bool {
        w(t, reg::STATUS, ACKNOWLEDGE);
        w(t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        w(t, reg::DEVICE_FEATURES_SEL, 0);
        let lo = r(t, reg::DEVICE_FEATURES);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, lo);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, driver_features_hi);
        w(t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if r(t, reg::STATUS) & FEATURES_OK == 0 {
            return false;
        }
        for (q, base) in [(0u32, HINTQ_ADDR), (1, EVENTQ_ADDR)] {
            let ring = DriverRing::new(mem, base, RING);
            w(t, reg::QUEUE_SEL, q);
            assert_eq!(r(t, reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
            w(t, reg::QUEUE_NUM, u32::from(RING));
            w(t, reg::QUEUE_DESC_LOW, ring.desc as u32);
            w(t, reg::QUEUE_DESC_HIGH, 0);
            w(t, reg::QUEUE_DRIVER_LOW, ring.avail as u32);
            w(t, reg::QUEUE_DRIVER_HIGH, 0);
            w(t, reg::QUEUE_DEVICE_LOW, ring.used as u32);
            w(t, reg::QUEUE_DEVICE_HIGH, 0);
            w(t, reg::QUEUE_READY, 1);
        }
        true
    }

    /// Ring size the tests' driver configures.
    const RING: u16 = 16;

    #[test]
    fn buffers_made_available_before_driver_ok_are_served_at_activation() {
        let (mut t, mem, irq) = transport();
        assert!(configure(&mut t, &mem, 1));
        // The driver primes the hint queue and kicks before DRIVER_OK (as
        // Linux's balloon does with its statistics queue): nothing runs yet.
        let mut ring = DriverRing::new(&mem, HINTQ_ADDR, RING);
        let msg = message(&[par(2)], 1);
        mem.write_slice(&msg, GuestAddress(DATA_ADDR)).unwrap();
        ring.add(&mem, &[Desc::readable(DATA_ADDR, msg.len() as u32)]);
        t.notify(0);
        assert_eq!(ring.used_idx(&mem), 0);
        let rec = t.device().sink().clone();
        assert!(rec.hints.lock().unwrap().is_empty());
        w(
            &mut t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(ring.used_idx(&mem), 1, "the primed buffer was used");
        assert_eq!(rec.hints.lock().unwrap().len(), 1);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn identity_registers_and_config() {
        let (mut t, _, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC_VALUE);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), crate::PERFHINT_DEVICE_ID);
        assert_eq!(r(&mut t, reg::VENDOR_ID), 0x1234);
        assert_eq!(r(&mut t, reg::CONFIG), u32::from(wire::VERSION));
        assert_eq!(r(&mut t, reg::CONFIG + 4), wire::MAX_MESSAGE_LEN as u32);
        // Past the end of config space, and odd-sized register reads, read 0.
        assert_eq!(r(&mut t, reg::CONFIG + 0x800), 0);
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn negotiation_and_activation() {
        let (mut t, mem, _) = transport();
        bring_up(&mut t, &mem, 1); // VERSION_1 is bit 32
        assert_eq!(t.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(t.acked_features() & (1 << crate::features::EVENTQ), 1);
    }

    #[test]
    fn legacy_driver_is_refused() {
        let (mut t, mem, _) = transport();
        bring_up(&mut t, &mem, 0);
        assert_eq!(t.status() & FEATURES_OK, 0);
    }

    #[test]
    fn out_of_order_status_is_ignored_and_zero_resets() {
        let (mut t, _, _) = transport();
        w(&mut t, reg::STATUS, DRIVER_OK);
        assert_eq!(t.status(), 0);
        w(&mut t, reg::STATUS, ACKNOWLEDGE);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | FEATURES_OK);
        assert_eq!(t.status(), ACKNOWLEDGE);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn invalid_queue_needs_reset() {
        let (mut t, _, irq) = transport();
        w(&mut t, reg::STATUS, ACKNOWLEDGE);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 3); // not a power of two: ignored, the size stays valid
        w(&mut t, reg::QUEUE_DESC_HIGH, 0xffff); // ... but the table is outside guest memory
        w(&mut t, reg::QUEUE_READY, 1);
        w(
            &mut t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_ne!(t.status() & DEVICE_NEEDS_RESET, 0);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        // Notifications to a device that never activated do nothing.
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        w(&mut t, reg::QUEUE_NOTIFY, 0xffff_ffff);
    }

    /// A device saved mid-run and restored onto a new one (as a new
    /// perfvmm process does) carries on: the next hint is served on the
    /// same rings, and the counters and undelivered outcomes come along.
    #[test]
    fn a_saved_transport_and_device_carry_on_in_a_new_one() {
        let (mut t, mem, _) = transport();
        bring_up(&mut t, &mem, 1);
        let mut ring = DriverRing::new(&mem, HINTQ_ADDR, RING);
        let msg = message(&[par(2)], 1);
        mem.write_slice(&msg, GuestAddress(DATA_ADDR)).unwrap();
        ring.add(&mem, &[Desc::readable(DATA_ADDR, msg.len() as u32)]);
        t.notify(0);
        assert_eq!(ring.used_idx(&mem), 1);
        let saved = (t.save(), t.device().save());
        assert!(saved.0.activated);
        assert_eq!(saved.0.queues[0].next_avail, 1);
        assert_eq!(saved.1.pending.len(), 1, "the outcome waits for a batch");

        let (mut t2, irq2) = transport_on(&mem);
        t2.restore(&saved.0).unwrap();
        assert_eq!(saved.0.interrupt_status, virtio_mmio::device::INT_USED_RING);
        t2.raise_pending();
        assert_eq!(
            irq2.0.load(Ordering::SeqCst),
            1,
            "the unacknowledged used-ring interrupt is raised again"
        );
        t2.device_mut().restore(&saved.1).unwrap();
        assert_eq!(t2.status(), t.status());
        assert_eq!(
            t2.device().counters().snapshot(),
            t.device().counters().snapshot()
        );
        let msg = message(&[par(3)], 2);
        mem.write_slice(&msg, GuestAddress(DATA_ADDR)).unwrap();
        ring.add(&mem, &[Desc::readable(DATA_ADDR, msg.len() as u32)]);
        t2.notify(0);
        assert_eq!(ring.used_idx(&mem), 2, "served on the restored rings");
        assert_eq!(t2.device().counters().snapshot().messages, 2);
        assert_eq!(t2.device().save().pending.len(), 2);
    }

    #[test]
    fn a_state_the_device_could_never_have_had_is_refused_and_changes_nothing() {
        let (mut t, mem, _) = transport();
        bring_up(&mut t, &mem, 1);
        let good = t.save();
        let (mut fresh, _, _) = transport();
        let mut bad = good.clone();
        bad.queues.pop();
        assert!(fresh.restore(&bad).is_err(), "a queue short");
        let mut bad = good.clone();
        bad.queues[0].max_size = 4096;
        assert!(
            fresh.restore(&bad).is_err(),
            "a size the device never offered"
        );
        let mut bad = good.clone();
        bad.queues[1].size = 3;
        assert!(fresh.restore(&bad).is_err(), "not a power of two");
        let mut bad = good.clone();
        bad.queues[0].desc_table = MEM_SIZE as u64 * 4;
        assert!(fresh.restore(&bad).is_err(), "rings outside guest memory");
        let mut bad = good.clone();
        bad.acked_features |= 1 << 63;
        assert!(fresh.restore(&bad).is_err(), "a feature never offered");
        let mut bad = good.clone();
        bad.status &= !DRIVER_OK;
        assert!(fresh.restore(&bad).is_err(), "active without DRIVER_OK");
        assert_eq!(fresh.status(), 0, "nothing taken from refused states");
        assert!(!fresh.is_activated());

        let mut dev = t.device().save();
        dev.counters.pop();
        assert!(fresh.device_mut().restore(&dev).is_err(), "a counter short");
        let mut dev = t.device().save();
        dev.pending = vec![[0; 8]; crate::device::MAX_PENDING_OUTCOMES + 1];
        assert!(
            fresh.device_mut().restore(&dev).is_err(),
            "too many outcomes"
        );
    }

    #[test]
    fn hostile_register_writes_do_not_panic() {
        let (mut t, _, _) = transport();
        for off in (0..0x200u64).step_by(4) {
            for v in [0u32, 1, 0xffff_ffff, 0x8000_0000] {
                w(&mut t, off, v);
                t.write(off, &[1, 2]);
                let _ = r(&mut t, off);
            }
        }
    }
}

#[test]
fn one_wake_takes_at_most_a_ring_of_chains() {
    let mut f = Fixture::new(false);
    let msg = message(&[par(1)], 0);
    for _ in 0..virtio_mmio::WAKE_BUDGET {
        f.post_message(&msg);
    }
    f.process();
    assert_eq!(usize::from(f.used_hintq()), virtio_mmio::WAKE_BUDGET);
    assert!(f.dev.has_more_work(), "stopped at the budget: come back");
    for _ in 0..10 {
        f.post_message(&msg);
    }
    f.process();
    assert_eq!(usize::from(f.used_hintq()), virtio_mmio::WAKE_BUDGET + 10);
    assert!(!f.dev.has_more_work(), "drained within the budget");
}

//! Device-model throughput: hints per second through the virtqueue and
//! decoder, one message per notification and batched, and the cost of one
//! decode. Prints figures; it asserts nothing.
//!
//!   cargo bench -p virtio-perf-device

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_hints::wire::{self, Hint, MessageWriter, Outcome, Parallelism};
use virtio_mmio::testing::{Desc, DriverRing};
use virtio_mmio::GuestMem;
use virtio_mmio::VirtioDevice;
use virtio_perf_device::{features, HintSink, PerfHintDevice, HINTQ, QUEUE_SIZE};
use vm_memory::{Bytes, GuestAddress};

struct Count(u64);
impl HintSink for Count {
    fn hint(&mut self, _stream: u16, _seq: u32, hint: &Hint) -> Outcome {
        black_box(hint);
        self.0 += 1;
        Outcome::Accepted
    }
}

fn hint(i: u32) -> Hint {
    Hint::Parallelism(Parallelism {
        runnable_tasks: i % 64,
        max_useful: 64,
        serial_ppm: 10_000,
    })
}

fn message(records: u32) -> Vec<u8> {
    let mut w = MessageWriter::new(0);
    for i in 0..records {
        w.push(&hint(i)).expect("fits");
    }
    w.finish().to_vec()
}

/// Runs for about `budget`, posting `chains_per_notify` chains of one
/// `records`-record message each before every notification. Returns hints/s.
fn run(records: u32, chains_per_notify: u16, budget: Duration) -> f64 {
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("mem"));
    let mut ring = DriverRing::new(&mem, 0, QUEUE_SIZE);
    let event = DriverRing::new(&mem, 0x10_0000, QUEUE_SIZE);
    let mut dev = PerfHintDevice::new(Count(0));
    let feats = dev.features() & !(1 << features::EVENTQ);
    dev.activate(mem.clone(), feats, vec![ring.queue(), event.queue()]);
    let msg = message(records);
    let addr = 0x20_0000;
    mem.write_slice(&msg, GuestAddress(addr)).expect("msg");
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..200 {
            for _ in 0..chains_per_notify {
                ring.add(&mem, &[Desc::readable(addr, msg.len() as u32)]);
            }
            dev.process_queue(HINTQ);
        }
    }
    let hints = dev.sink().0;
    hints as f64 / start.elapsed().as_secs_f64()
}

fn decode_ns(records: u32) -> f64 {
    let msg = message(records);
    let n = 200_000 / records.max(1);
    let start = Instant::now();
    for _ in 0..n {
        let (_, recs) = wire::decode_message(black_box(&msg)).expect("valid");
        for r in recs {
            black_box(wire::decode_record(r.expect("valid")).expect("valid"));
        }
    }
    start.elapsed().as_nanos() as f64 / f64::from(n * records)
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1500),
    );
    println!("perf-hint device model (mock guest memory, one thread)");
    println!(
        "  decode: {:.1} ns per hint (1-record message)",
        decode_ns(1)
    );
    println!(
        "  decode: {:.1} ns per hint (64-record message)",
        decode_ns(64)
    );
    println!(
        "  1 hint per message, 1 message per notify:    {:>12.0} hints/s",
        run(1, 1, budget)
    );
    println!(
        "  1 hint per message, 128 messages per notify: {:>12.0} hints/s",
        run(1, 128, budget)
    );
    println!(
        "  64 hints per message, 64 messages per notify:{:>12.0} hints/s",
        run(64, 64, budget)
    );
}

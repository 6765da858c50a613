//! The source's side: pre-copy on a thread of its own while the guest
//! runs ([`Precopy`]), then the stop-and-copy on the main thread
//! ([`finish`]), which alone may stop the vCPUs and read the devices.

use std::io::{BufWriter, Write};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use virtio_mmio::GuestMem;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::dirty::DirtyPages;
use super::wire::{self, Hello};
use super::{MigrationError, Stream};
use crate::control::snapshot::{Endpoint, MigrateJob, MigrateReport};
use crate::devices::bus::lock;
use crate::exit::ExitReason;
use crate::memory::slots::KvmMemory;
use crate::snapshot::take::{Machine, VCPU_STOP_WAIT};

/// Pre-copy gives up waiting for the dirty set to shrink after this many
/// rounds, and stops the VM for what is left.
pub const MAX_ROUNDS: u32 = 30;
/// How long either side waits for the other at the handover.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(60);
/// Guest memory is read this much at a time.
const CHUNK: usize = 2 << 20;
/// With a declared working set, pre-copy first watches the guest's writes
/// this long at most (less once it has seen the working set written), and
/// leaves the pages written for after the first round.
pub const WATCH_MAX: Duration = Duration::from_millis(500);
const WATCH_STEP: Duration = Duration::from_millis(50);

/// What the pre-copy thread needs: guest memory and its dirty logs.
pub struct Precopy {
    pub mem: Arc<GuestMem>,
    pub vm: Arc<VmFd>,
    pub slots: Arc<KvmMemory>,
    pub hello: Hello,
    pub downtime: Duration,
    /// The working set the guest declared, in bytes (0: none).
    pub working_set: u64,
}

/// Where pre-copy left off: the stream, the pages still to send.
pub struct Copied {
    stream: BufWriter<Stream>,
    pending: DirtyPages,
    report: MigrateReport,
    started: Instant,
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, MigrationError> {
    r.map_err(|source| MigrationError::Kvm { what, source })
}

/// Adds what KVM and the VMM logged since the last call to `dirty`.
fn collect(
    vm: &VmFd,
    slots: &KvmMemory,
    mem: &GuestMem,
    dirty: &mut DirtyPages,
) -> Result<(), MigrationError> {
    kvm(
        "KVM_GET_DIRTY_LOG",
        slots.take_dirty(vm, |gpa, bits| dirty.mark_bitmap(gpa, bits)),
    )?;
    dirty.take_vmm_writes(mem);
    Ok(())
}

/// Sends the pages of `runs`; returns the bytes sent.
fn send_runs(
    w: &mut impl Write,
    mem: &GuestMem,
    runs: &[(u64, u64)],
) -> Result<u64, MigrationError> {
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0;
    for &(gpa, len) in runs {
        for off in (0..len).step_by(CHUNK) {
            let n = (CHUNK as u64).min(len - off) as usize;
            let at = gpa + off;
            mem.read_slice(&mut buf[..n], GuestAddress(at))
                .map_err(|e| MigrationError::Io(std::io::Error::other(e)))?;
            wire::write_pages(w, at, &buf[..n])?;
            sent += n as u64;
        }
    }
    Ok(sent)
}

/// All of guest memory that may hold data and is not zero (the target's
/// memory starts zeroed), as a snapshot writes it, but for the `hot`
/// pages, which a later round sends.
fn send_all_but(
    w: &mut impl Write,
    mem: &GuestMem,
    hot: &DirtyPages,
) -> Result<u64, MigrationError> {
    let mut sent = 0;
    crate::snapshot::memory::for_each_data_run(mem, |gpa, _, bytes| {
        for (start, end) in hot.gaps(gpa, bytes.len() as u64) {
            wire::write_pages(w, gpa + start, &bytes[start as usize..end as usize])?;
            sent += end - start;
        }
        Ok::<(), MigrationError>(())
    })?;
    Ok(sent)
}

impl Precopy {
    /// With a declared working set: the pages the guest writes while
    /// watched for up to [`WATCH_MAX`], until they add up to the working
    /// set. Without one, none (the first round sends in address order).
    fn hot_pages(&self) -> Result<DirtyPages, MigrationError> {
        let mut hot = DirtyPages::new(&self.hello.shape.regions);
        if self.working_set == 0 {
            return Ok(hot);
        }
        let until = Instant::now() + WATCH_MAX;
        while hot.bytes() < self.working_set && Instant::now() < until {
            std::thread::sleep(WATCH_STEP);
            collect(&self.vm, &self.slots, &self.mem, &mut hot)?;
        }
        Ok(hot)
    }

    /// Connects to `to`, has the target accept the VM, and copies memory
    /// until what is left fits the downtime. KVM's dirty log stays on for
    /// [`finish`]; on failure it is off again.
    pub fn run(self, to: &Endpoint) -> Result<Copied, MigrationError> {
        let started = Instant::now();
        let mut stream = Stream::connect(to)?;
        wire::write_hello(&mut stream, &self.hello)?;
        wire::read_answer(&mut stream)?;
        kvm("dirty logging", self.slots.set_logging(&self.vm, true))?;
        let copied = self.rounds(stream, to, started);
        if copied.is_err() {
            let _ = self.slots.set_logging(&self.vm, false);
        }
        copied
    }

    fn rounds(
        &self,
        stream: Stream,
        to: &Endpoint,
        started: Instant,
    ) -> Result<Copied, MigrationError> {
        let mut w = BufWriter::with_capacity(1 << 20, stream);
        let mut dirty = DirtyPages::new(&self.hello.shape.regions);
        // Round 0 sends everything: what the VMM wrote before does not count.
        dirty.take_vmm_writes(&self.mem);
        dirty.clear();
        // ... but the pages the guest is busy writing, which it would only
        // send again: they go with the next round.
        let hot = self.hot_pages()?;
        let copying = Instant::now();
        let mut sent = send_all_but(&mut w, &self.mem, &hot)?;
        w.flush()?;
        dirty.add(&hot);
        let mut rounds = 1;
        loop {
            collect(&self.vm, &self.slots, &self.mem, &mut dirty)?;
            // Bytes per second so far, at least 1 MiB/s.
            let rate = (sent as f64 / copying.elapsed().as_secs_f64().max(1e-3)).max(1e6);
            let fits = dirty.bytes() as f64 <= rate * self.downtime.as_secs_f64();
            if fits || rounds >= MAX_ROUNDS {
                break;
            }
            sent += send_runs(&mut w, &self.mem, &dirty.runs())?;
            w.flush()?;
            dirty.clear();
            rounds += 1;
        }
        log::info!(
            "migration to {to}: {rounds} rounds, {} MiB sent; {} KiB left for the stop",
            sent >> 20,
            dirty.bytes() >> 10
        );
        Ok(Copied {
            stream: w,
            pending: dirty,
            report: MigrateReport {
                to: to.to_string(),
                rounds,
                sent_bytes: sent,
                working_set_bytes: self.working_set,
                deferred_bytes: hot.bytes(),
                ..Default::default()
            },
            started,
        })
    }
}

/// The stop-and-copy, on the main thread: stops the vCPUs, sends the last
/// pages and the state, waits for the target to have built the VM, and
/// hands it over (the commit); then this VM ends. On any failure before
/// the commit the vCPUs run on here; after it, never again.
pub fn finish(machine: &Machine, copied: Copied) -> Result<MigrateReport, MigrationError> {
    let Copied {
        mut stream,
        mut pending,
        mut report,
        started,
    } = copied;
    let controller = lock(&machine.controller);
    let uptime = controller.uptime();
    let paused = Instant::now();
    let stop = || {
        let _ = machine.slots.set_logging(&machine.vm, false);
    };
    let vcpus = machine
        .vcpus
        .pause_and_save(VCPU_STOP_WAIT)
        .inspect_err(|_| stop())
        .map_err(crate::snapshot::SnapshotError::from)?;
    let stopped: Vec<(u32, bool)> = vcpus.iter().map(|v| (v.index, v.parked)).collect();
    let handed = (|| {
        collect(&machine.vm, &machine.slots, &machine.mem, &mut pending)?;
        let last = send_runs(&mut stream, &machine.mem, &pending.runs())?;
        let state = crate::snapshot::encode(&machine.state(vcpus, uptime)?)?;
        wire::write_state(&mut stream, &state)?;
        let mut s = stream.into_inner().map_err(|e| e.into_error())?;
        s.set_timeouts(TAKEOVER_WAIT)?;
        wire::read_answer(&mut s)?;
        wire::write_commit(&mut s)?;
        Ok::<u64, MigrationError>(last)
    })();
    match handed {
        Ok(last) => {
            report.final_bytes = last;
            report.sent_bytes += last;
            report.downtime_ms = paused.elapsed().as_secs_f64() * 1e3;
            report.total_ms = started.elapsed().as_secs_f64() * 1e3;
            machine.exit.notify(ExitReason::Migrated);
            Ok(report)
        }
        Err(e) => {
            stop();
            machine.vcpus.resume(&stopped);
            Err(e)
        }
    }
}

/// The working set pre-copy orders its first round by: the guest's
/// declared one when the policy asks for the ordering, else none.
fn ordered_by_working_set(machine: &Machine) -> u64 {
    let e = lock(&machine.engine);
    if e.policy().migration.order_by_working_set {
        e.mobility().working_set
    } else {
        0
    }
}

/// The main thread's end of migrations: starts the pre-copy thread and
/// finishes what it copied. One migration at a time.
pub struct Migrations {
    /// The thread's result, with the API's reply channel.
    done: Receiver<Finished>,
    done_tx: Sender<Finished>,
    pub wake: EventFd,
    busy: bool,
}

type Reply = std::sync::mpsc::SyncSender<Result<MigrateReport, String>>;
type Finished = (Result<Copied, MigrationError>, Reply);

impl Migrations {
    pub fn new() -> std::io::Result<Self> {
        let (done_tx, done) = mpsc::channel();
        Ok(Migrations {
            done,
            done_tx,
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
            busy: false,
        })
    }

    /// Starts `job`'s pre-copy beside the running guest.
    pub fn start(&mut self, machine: &Machine, job: MigrateJob) {
        if self.busy {
            let _ = job.reply.send(Err(MigrationError::Busy.to_string()));
            return;
        }
        let hello = Hello {
            shape: machine.shape.clone(),
            vcpus: lock(&machine.cpu_slots).enabled_count(),
            memory_bytes: lock(&machine.controller).memory_status().guest_bytes,
        };
        let precopy = Precopy {
            mem: machine.mem.clone(),
            vm: machine.vm.clone(),
            slots: machine.slots.clone(),
            hello,
            downtime: job.downtime,
            working_set: ordered_by_working_set(machine),
        };
        let (tx, wake) = (self.done_tx.clone(), self.wake.try_clone());
        let Ok(wake) = wake else {
            let _ = job.reply.send(Err("cannot start the migration".into()));
            return;
        };
        let to = job.to;
        let reply = job.reply;
        let (slots, vm) = (machine.slots.clone(), machine.vm.clone());
        let spawned = std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                let copied = std::panic::catch_unwind(AssertUnwindSafe(|| precopy.run(&to)))
                    .unwrap_or_else(|_| {
                        // Whatever failed, the VM runs on here, unlogged.
                        let _ = slots.set_logging(&vm, false);
                        Err(MigrationError::Io(std::io::Error::other(
                            "the migration thread failed",
                        )))
                    });
                let _ = tx.send((copied, reply));
                let _ = wake.write(1);
            });
        match spawned {
            Ok(_) => self.busy = true,
            Err(e) => log::warn!("cannot start the migration thread: {e}"),
        }
    }

    /// Finishes a pre-copy that ended: the stop-and-copy, or its error.
    pub fn finish_ready(&mut self, machine: &Machine) {
        let _ = self.wake.read();
        while let Ok((copied, reply)) = self.done.try_recv() {
            self.busy = false;
            let r = copied.and_then(|c| finish(machine, c));
            match &r {
                Ok(rep) => log::info!(
                    "migrated to {}: {} rounds, {} MiB sent, downtime {:.0} ms",
                    rep.to,
                    rep.rounds,
                    rep.sent_bytes >> 20,
                    rep.downtime_ms
                ),
                Err(e) => log::warn!("migration failed, the VM runs on here: {e}"),
            }
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
    }
}

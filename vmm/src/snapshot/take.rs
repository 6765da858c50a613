//! Taking a snapshot on the running VM, on the main thread: the vCPUs stop
//! outside `KVM_RUN` and save their own state, the main thread reads KVM's
//! VM-wide state and every device, writes memory and state, and lets the
//! vCPUs run again (or ends the VM). The controller is held throughout, so
//! no resize happens half-way; the other handlers of the event loop wait,
//! as they run on this thread too.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_bindings::{
    kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use virtio_mmio::GuestMem;
use virtio_mmio::{MmioTransport, VirtioDevice};
use vmm_sys_util::epoll::EventSet;

use super::{memory, Shape, SnapshotError, Virtio, VmState, MEMORY_FILE};
use crate::actuators::memory::{BalloonTransport, VirtioMemTransport};
use crate::actuators::vcpus::VcpuSet;
use crate::control::snapshot::{Job, SnapshotJob, SnapshotJobs, SnapshotReport};
use crate::control::{Controller, PerfHintTransport};
use crate::devices::bus::lock;
use crate::devices::cpu_hotplug::CpuStates;
use crate::exit::{ExitNotifier, ExitReason};
use crate::memory::slots::KvmMemory;
use crate::migration::send::Migrations;
use crate::policy::Engine;
use crate::vm::Console;

/// How long a vCPU may take to stop (for a snapshot or a migration).
pub const VCPU_STOP_WAIT: Duration = Duration::from_secs(5);

/// What a snapshot reads from.
pub struct Machine {
    pub shape: Shape,
    pub vm: Arc<VmFd>,
    pub mem: Arc<GuestMem>,
    pub slots: Arc<KvmMemory>,
    pub vcpus: Arc<VcpuSet>,
    pub cpu_slots: Arc<Mutex<CpuStates>>,
    pub console: Console,
    pub perf_hint: Arc<Mutex<PerfHintTransport>>,
    pub balloon: Arc<Mutex<BalloonTransport>>,
    pub virtio_mem: Option<Arc<Mutex<VirtioMemTransport>>>,
    pub controller: Arc<Mutex<Controller>>,
    pub engine: Arc<Mutex<Engine>>,
    pub exit: ExitNotifier,
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, SnapshotError> {
    r.map_err(|source| SnapshotError::Kvm { what, source })
}

impl Machine {
    /// Writes a snapshot into the new directory `dir`; the vCPUs stay
    /// stopped afterwards when `stop`, and the VM then ends.
    pub fn take(&self, dir: &Path, stop: bool) -> Result<SnapshotReport, SnapshotError> {
        let controller = lock(&self.controller);
        let uptime = controller.uptime();
        std::fs::create_dir(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SnapshotError::Exists(dir.to_path_buf()),
            _ => SnapshotError::Io {
                path: dir.to_path_buf(),
                source: e,
            },
        })?;
        let paused = Instant::now();
        let vcpus = self.vcpus.pause_and_save(VCPU_STOP_WAIT).inspect_err(|_| {
            let _ = std::fs::remove_dir(dir);
        })?;
        let stopped: Vec<(u32, bool)> = vcpus.iter().map(|v| (v.index, v.parked)).collect();
        let written = self.write(dir, vcpus, uptime);
        if !stop || written.is_err() {
            self.vcpus.resume(&stopped);
        }
        let written = written.inspect_err(|_| {
            // No half-written snapshot is left to be restored by mistake.
            let _ = std::fs::remove_dir_all(dir);
        })?;
        let pause_ms = paused.elapsed().as_secs_f64() * 1e3;
        if stop {
            self.exit.notify(ExitReason::Snapshotted);
        }
        Ok(SnapshotReport {
            dir: dir.to_path_buf(),
            vcpus: stopped.len(),
            memory_bytes: written.memory,
            written_bytes: written.data,
            pause_ms,
            stopped: stop,
        })
    }

    /// With the vCPUs stopped: memory, then the state, whose presence
    /// marks a complete snapshot.
    fn write(
        &self,
        dir: &Path,
        vcpus: Vec<crate::vcpu::VcpuState>,
        uptime: Duration,
    ) -> Result<memory::Written, SnapshotError> {
        let state = self.state(vcpus, uptime)?;
        let written = memory::write(&dir.join(MEMORY_FILE), &self.mem)?;
        super::write_state(dir, &state)?;
        Ok(written)
    }

    /// Everything but memory, read with the vCPUs stopped.
    pub fn state(
        &self,
        vcpus: Vec<crate::vcpu::VcpuState>,
        uptime: Duration,
    ) -> Result<VmState, SnapshotError> {
        let mut irqchips = Vec::with_capacity(3);
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            kvm("KVM_GET_IRQCHIP", self.vm.get_irqchip(&mut chip))?;
            irqchips.push(chip);
        }
        Ok(VmState {
            shape: self.shape.clone(),
            vcpus,
            cpu_slots: lock(&self.cpu_slots).clone(),
            irqchips,
            pit: kvm("KVM_GET_PIT2", self.vm.get_pit2())?,
            clock: kvm("KVM_GET_CLOCK", self.vm.get_clock())?,
            serial: lock(&self.console).save(),
            perf_hint: saved(&self.perf_hint, |d| d.save()),
            balloon: saved(&self.balloon, |d| d.save()),
            virtio_mem: self.virtio_mem.as_ref().map(|t| saved(t, |d| d.save())),
            engine: lock(&self.engine).save(),
            uptime,
        })
    }
}

/// A virtio device's state: its transport's and, through `device`, its own.
fn saved<D: VirtioDevice, S>(
    transport: &Mutex<MmioTransport<D>>,
    device: impl FnOnce(&D) -> S,
) -> Virtio<S> {
    let t = lock(transport);
    Virtio {
        transport: t.save(),
        device: device(t.device()),
    }
}

/// The main thread's handler of snapshot and migration requests from the
/// API.
pub struct SnapshotHandler {
    jobs: SnapshotJobs,
    machine: Machine,
    migrations: Migrations,
}

impl SnapshotHandler {
    pub fn new(jobs: SnapshotJobs, machine: Machine) -> std::io::Result<Self> {
        Ok(SnapshotHandler {
            jobs,
            machine,
            migrations: Migrations::new()?,
        })
    }

    fn run(&self, job: SnapshotJob) {
        let r = self.machine.take(&job.dir, job.stop);
        match &r {
            Ok(rep) => log::info!(
                "snapshot {}: {} vCPUs, {} of {} MiB of memory written, paused {:.0} ms",
                rep.dir.display(),
                rep.vcpus,
                rep.written_bytes >> 20,
                rep.memory_bytes >> 20,
                rep.pause_ms
            ),
            Err(e) => log::warn!("snapshot {}: {e}", job.dir.display()),
        }
        // The API may have given up waiting; the snapshot stands either way.
        let _ = job.reply.send(r.map_err(|e| e.to_string()));
    }
}

impl MutEventSubscriber for SnapshotHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.migrations.wake.as_raw_fd() {
            self.migrations.finish_ready(&self.machine);
            return;
        }
        let _ = self.jobs.wake.read();
        while let Ok(job) = self.jobs.jobs.try_recv() {
            match job {
                Job::Snapshot(job) => self.run(job),
                Job::Migrate(job) => self.migrations.start(&self.machine, job),
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.jobs.wake, &self.migrations.wake] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch for snapshot and migration requests: {e:?}");
            }
        }
    }
}

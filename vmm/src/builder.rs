//! Composes a VM from its parts, one `attach_*` step per part, in the order
//! they depend on each other:
//!
//! 1. [`Inputs::load`]: everything the user gave that can be wrong (guest
//!    memory size, policy file, log paths, API socket), checked before KVM
//!    is touched so bad input is reported the same way on every host;
//! 2. [`load_guest`]: kernel, initrd, command line, zero page and ACPI
//!    tables written into guest memory;
//! 3. [`create_kvm_vm`]: the KVM VM with its irqchip, PIT and memory;
//! 4. `attach_*`: the console and power device on the port-I/O bus; the
//!    perf-hint device, the memory devices, the CPU-hotplug controller and
//!    the boot timer on the MMIO bus, each with its event-loop handler;
//! 5. [`VmBuilder::start`]: the vCPUs, the controller, the control API: the
//!    guest starts running and a [`Vm`] is returned for [`Vm::run`].
//!
//! [`restore`] builds the same machine from a snapshot: memory mapped from
//! its file instead of step 2, KVM's VM-wide state put back after step 3,
//! each `attach_*` step restoring its device, and the saved vCPUs in step 5.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::MutEventSubscriber;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use virtio_mmio::GuestMem;
use virtio_mmio::{MmioTransport, RestoreError, VirtioDevice};
use virtio_perf_device::{Counters, PerfHintDevice, PERFHINT_VENDOR_ID};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig};
use crate::actuators::memory::{BalloonTransport, VirtioMemTransport};
use crate::actuators::placement;
use crate::actuators::{MemoryManager, VcpuManager};
use crate::boot::{self, BootError};
use crate::cli::{CpuSpec, MemSpec};
use crate::control::{
    self, api, api_server, Actuators, Controller, HintLog, HintQueueHandler, JsonLines,
    PerfHintTransport, PolicySink, PolicyTick, ReloadScope,
};
use crate::devices::boot_timer::{BootTimer, BootTimes, InitHook};
use crate::devices::bus::{lock, Bus, BusDevice, BusError};
use crate::devices::cpu_hotplug::{self, CpuHotplugController, CpuStates};
use crate::devices::i8042::{self, I8042};
use crate::devices::power::{self, PowerDevice};
use crate::devices::serial::{ConsoleOut, SerialDevice};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::mem::{self as mem_dev, SlotMap, VirtioMem};
use crate::devices::virtio::{IrqFdInterrupt, MmioSlot, QueueHandler, SlotFds};
use crate::exit::ExitNotifier;
use crate::layout::{
    virtio_slot, MmioDeviceInfo, ACPI_SLEEP_CONTROL_PORT, BALLOON_SLOT, BOOT_TIMER_ADDR,
    BOOT_TIMER_SIZE, COM1_IRQ, COM1_PORT, CPU_HOTPLUG_ADDR, GED_IRQ, KVM_TSS_ADDR, PERF_HINT_SLOT,
    VIRTIO_MEM_SLOT,
};
use crate::memory::slots::{KvmMemory, Slot};
use crate::migration::receive::Limits;
use crate::policy::{Decision, Engine, Policy, PolicyError, VmLimits};
use crate::seccomp::{self, ThreadKind};
use crate::snapshot::take::{Machine, SnapshotHandler};
use crate::snapshot::{self, Shape, SnapshotError, VmState};
use crate::vcpu::{VcpuContext, VcpuError, VcpuState};
use crate::vm::{Console, Vm, VmParts};
use crate::{event_loop, memory, memstat};

/// Everything needed to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    /// Who unpacks a compressed kernel.
    pub unpacker: boot::Unpacker,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: CpuSpec,
    pub memory: MemSpec,
    pub boot_timer: bool,
    /// A seccomp filter on every thread (`--no-seccomp` clears it).
    pub seccomp: bool,
    pub hint_log: Option<PathBuf>,
    pub decision_log: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub api_sock: Option<PathBuf>,
    /// Most bytes each of the hint and decision logs holds.
    pub log_limit: u64,
    /// A group whose members may use the API socket too.
    pub api_sock_group: Option<u32>,
    /// A directory whose policy files a reload through the API may read.
    pub policy_dir: Option<PathBuf>,
    /// Where `perfvmm ctl snapshot NAME` writes (off without it).
    pub snapshot_dir: Option<PathBuf>,
    /// `perfvmm ctl migrate` may send the VM away.
    pub allow_migrate: bool,
}

/// Why a VM could not be built (exit status 1, one line on standard error).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("migration: {0}")]
    Migration(#[from] crate::migration::MigrationError),
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel or kvm_amd)")]
    NoKvm,
    #[error("no permission to open /dev/kvm (run as root or join the 'kvm' group)")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM on this host lacks {0}, which perfvmm needs")]
    MissingCap(&'static str),
    #[error("--cpus: KVM on this host allows at most {limit} vCPUs, {asked} were asked for")]
    TooManyVcpus { asked: u32, limit: usize },
    #[error("--memory max: the hotplug region needs {needed} KVM memory slots, KVM on this host has {limit}")]
    TooManyMemorySlots { needed: usize, limit: usize },
    #[error("the virtio-mem region at {0:#x} is not the last region of guest memory")]
    HotplugRegion(u64),
    #[error("cannot allocate {size} MiB of guest memory: {source}")]
    Memory {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    #[error("cannot create {path}: {source}")]
    LogFile { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Resize(#[from] crate::actuators::ResizeError),
    #[error("--api-sock {path}: {source}")]
    ApiSock { path: PathBuf, source: io::Error },
    #[error("--snapshot-dir {0}: not a directory perfvmm can reach")]
    SnapshotDir(PathBuf),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the snapshot's {what}: {why}")]
    Restore { what: &'static str, why: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn kvm_err<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmError> {
    r.map_err(|source| VmError::Kvm { what, source })
}

/// Builds the VM `cfg` describes and starts its vCPUs; `start` is when
/// perfvmm started (boot times and log timestamps count from it).
pub fn build(cfg: &VmConfig, start: Instant) -> Result<Vm, VmError> {
    // When each setup step ended (`--boot-timer` prints them).
    let mut steps = Vec::new();
    let mut mark = |step| steps.push((step, start.elapsed()));
    let policy = load_policy(cfg)?;
    let cfg = &within_policy(cfg, &policy);
    let mem = Inputs::create_memory(cfg)?;
    mark("memory");
    let inputs = Inputs::load(cfg, policy, mem, start)?;
    mark("inputs");
    let entry = load_guest(cfg, &inputs)?;
    mark("kernel");
    let (kvm, vm, slots) = create_kvm_vm(cfg, &inputs.mem, inputs.hotplug)?;
    mark("kvm");
    let b = VmBuilder::new(cfg, start, inputs, (vm, slots), None)?;
    b.times.record_all(&steps);
    b.attach_all(&kvm, Boot::Fresh(entry))
}

fn load_policy(cfg: &VmConfig) -> Result<Policy, VmError> {
    Ok(match &cfg.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::default(),
    })
}

/// Builds the VM a snapshot in `dir` saved (`perfvmm --restore DIR`): the
/// same machine, its memory mapped from the snapshot, KVM's and every
/// device's state put back, and its vCPUs started where they stopped.
/// `cfg` gives what is not the machine's: the policy, logs, API socket.
pub fn restore(cfg: &VmConfig, dir: &Path, start: Instant) -> Result<Vm, VmError> {
    let state = snapshot::read_state(dir)?;
    let path = dir.join(snapshot::MEMORY_FILE);
    resume(cfg, state, start, false, |shape| {
        Ok(snapshot::memory::map(&path, shape)?)
    })
}

/// Builds the VM a migration brought (`perfvmm --incoming`): as a
/// snapshot's, but with the memory the stream filled, and its vCPUs held
/// until [`Vm::release`] (once the source has handed the VM over).
pub fn restore_migrated(
    cfg: &VmConfig,
    state: VmState,
    mem: GuestMem,
    start: Instant,
) -> Result<Vm, VmError> {
    resume(cfg, state, start, true, |_| Ok(mem))
}

/// What this host's policy lets a VM that migrates here have.
pub fn incoming_limits(cfg: &VmConfig) -> Result<Limits, VmError> {
    let policy = load_policy(cfg)?;
    Ok(Limits {
        vcpus: policy.vcpus.max,
        memory: policy.memory.max.0,
    })
}

/// Builds the VM `state` describes over `memory` for its shape.
fn resume(
    cfg: &VmConfig,
    mut state: VmState,
    start: Instant,
    held: bool,
    memory: impl FnOnce(&Shape) -> Result<GuestMem, VmError>,
) -> Result<Vm, VmError> {
    // When each restore step ended (`--boot-timer` prints them).
    let mut steps = vec![("state", start.elapsed())];
    let vcpus = std::mem::take(&mut state.vcpus);
    let cfg = &restored_config(cfg, &state);
    if state.shape.regions != memory_layout(cfg) {
        return Err(VmError::Restore {
            what: "memory",
            why: "its regions are not where this perfvmm puts a VM of its size".into(),
        });
    }
    let policy = load_policy(cfg)?;
    let mem = memory(&state.shape)?;
    let inputs = Inputs::load(cfg, policy, mem, start)?;
    steps.push(("memory", start.elapsed()));
    let (kvm, vm, slots) = create_kvm_vm(cfg, &inputs.mem, inputs.hotplug)?;
    restore_kvm_state(&vm, &state)?;
    steps.push(("kvm", start.elapsed()));
    let b = VmBuilder::new(cfg, start, inputs, (vm, slots), Some(state))?;
    b.times.record_all(&steps);
    let times = b.times.clone();
    let vm = b.attach_all(&kvm, Boot::Restore { vcpus, held })?;
    if cfg.boot_timer {
        // Times since perfvmm started; the guest runs from `ready_ms` on.
        eprintln!(
            "perfvmm: restore-timer: ready_ms={:.1} peak_rss_kib={} setup_ms={}",
            start.elapsed().as_secs_f64() * 1e3,
            memstat::sample(&[]).peak_rss_kib,
            times.setup_line()
        );
    }
    Ok(vm)
}

/// The configuration of the machine a snapshot saved: its vCPUs and
/// memory replace the command line's.
fn restored_config(cfg: &VmConfig, state: &VmState) -> VmConfig {
    let mut c = cfg.clone();
    let s = &state.shape;
    c.cpus = CpuSpec {
        boot: state.cpu_slots.enabled_count().max(1),
        max: s.max_vcpus,
    };
    c.memory = MemSpec {
        boot: s.boot_memory,
        max: s.max_memory,
    };
    c
}

/// Guest memory regions `(address, length)` of a VM `cfg` sizes: RAM,
/// then the virtio-mem region.
fn memory_layout(cfg: &VmConfig) -> Vec<(u64, u64)> {
    memory::layout(cfg.memory.boot, cfg.memory.max)
}

/// KVM's VM-wide state: the PICs and IOAPIC, the PIT, the clock.
fn restore_kvm_state(vm: &VmFd, state: &VmState) -> Result<(), VmError> {
    if state.irqchips.len() != 3 {
        return Err(VmError::Restore {
            what: "interrupt controllers",
            why: format!("{} saved, the VM has 3", state.irqchips.len()),
        });
    }
    for chip in &state.irqchips {
        kvm_err("KVM_SET_IRQCHIP", vm.set_irqchip(chip))?;
    }
    kvm_err("KVM_SET_PIT2", vm.set_pit2(&state.pit))?;
    let clock = kvm_bindings::kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    kvm_err("KVM_SET_CLOCK", vm.set_clock(&clock))
}

/// Raises again every interrupt a restored device shows pending, once the
/// vCPUs hold their saved state and before they run: raised earlier, KVM
/// delivers it to no one (or the vCPUs' restored state overwrites it).
fn raise_pending(
    console: &Console,
    perf_hint: &Mutex<PerfHintTransport>,
    balloon: &Mutex<BalloonTransport>,
    virtio_mem: Option<&Arc<Mutex<VirtioMemTransport>>>,
    (cpu_states, ged): (&Mutex<CpuStates>, &EventFd),
) -> Result<(), VmError> {
    lock(console).raise_pending()?;
    lock(perf_hint).raise_pending();
    lock(balloon).raise_pending();
    if let Some(t) = virtio_mem {
        lock(t).raise_pending();
    }
    // A vCPU perfvmm asked the guest to add or remove, and whose request
    // the guest's CSCN has not yet read: the GED interrupt again.
    if lock(cpu_states).has_requests() {
        ged.write(1)?;
    }
    Ok(())
}

/// How the vCPUs start: at the kernel's entry, or where a snapshot left them.
pub enum Boot {
    Fresh(GuestAddress),
    /// A snapshot's or a migration's vCPUs; `held` ones wait at their
    /// gates until [`Vm::release`].
    Restore {
        vcpus: Vec<VcpuState>,
        held: bool,
    },
}

/// The command line's boot sizes brought within the policy's bounds: the
/// VM boots at what the policy allows, and says so, rather than reporting
/// one size while the guest has another.
pub fn within_policy(cfg: &VmConfig, policy: &Policy) -> VmConfig {
    let mut c = cfg.clone();
    let vmax = policy.vcpus.max.min(cfg.cpus.max).max(1);
    let vmin = policy.vcpus.min.min(vmax);
    c.cpus.boot = cfg.cpus.boot.clamp(vmin, vmax);
    let mmax = policy.memory.max.0.min(cfg.memory.max);
    let mmin = policy.memory.min.0.min(mmax);
    // Whole 2 MiB steps, as every allocation is.
    c.memory.boot = cfg.memory.boot.clamp(mmin, mmax) & !((2 << 20) - 1);
    if c.cpus.boot != cfg.cpus.boot {
        log::warn!(
            "the policy allows {vmin}..={vmax} vCPUs: booting with {} instead of {}",
            c.cpus.boot,
            cfg.cpus.boot
        );
    }
    if c.memory.boot != cfg.memory.boot {
        log::warn!(
            "the policy allows {}..={} MiB: booting with {} MiB instead of {}",
            mmin >> 20,
            mmax >> 20,
            c.memory.boot >> 20,
            cfg.memory.boot >> 20
        );
    }
    c
}

/// What the user gave, loaded and checked before KVM is touched.
pub struct Inputs {
    mem: Arc<GuestMem>,
    /// The virtio-mem region (start, size), when `--memory` has a `max`.
    hotplug: Option<(u64, u64)>,
    /// Host address and length of each guest memory region.
    host_regions: Vec<(usize, usize)>,
    policy: Policy,
    decision_log: JsonLines,
    hint_log: HintLog,
    api_listener: Option<UnixListener>,
}

impl Inputs {
    /// Guest memory as `cfg` sizes it, reserved, not touched.
    pub fn create_memory(cfg: &VmConfig) -> Result<GuestMem, VmError> {
        let hotplug = memory::hotplug_region(cfg.memory.boot, cfg.memory.max);
        memory::create_guest_memory(cfg.memory.boot, hotplug).map_err(|source| VmError::Memory {
            size: cfg.memory.max >> 20,
            source,
        })
    }

    /// Guest memory first (binding it to a NUMA node before any page is
    /// touched), then the policy and the output files: a bad policy or a
    /// path that cannot be written is an input error too.
    pub fn load(
        cfg: &VmConfig,
        policy: Policy,
        mem: GuestMem,
        start: Instant,
    ) -> Result<Self, VmError> {
        let hotplug = memory::hotplug_region(cfg.memory.boot, cfg.memory.max);
        if let Some(dir) = &cfg.snapshot_dir {
            if !dir.is_dir() {
                return Err(VmError::SnapshotDir(dir.clone()));
            }
        }
        let host_regions: Vec<(usize, usize)> = mem
            .iter()
            .map(|r| (r.as_ptr() as usize, r.len() as usize))
            .collect();
        placement::bind_guest_memory(&policy.placement, &host_regions);
        let log_err = |path: &Option<PathBuf>| {
            let path = path.clone().unwrap_or_default();
            move |source| VmError::LogFile { path, source }
        };
        let decision_log =
            JsonLines::create("decision log", cfg.decision_log.as_deref(), cfg.log_limit)
                .map_err(log_err(&cfg.decision_log))?;
        let hint_log = HintLog::new(cfg.hint_log.as_deref(), cfg.log_limit, start)
            .map_err(log_err(&cfg.hint_log))?;
        // Bound before the guest starts, so a client can connect as soon as perfvmm runs.
        let api_listener = cfg
            .api_sock
            .as_deref()
            .map(|p| {
                api_server::bind(
                    p,
                    api_server::Access {
                        group: cfg.api_sock_group,
                    },
                )
                .map_err(|source| VmError::ApiSock {
                    path: p.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        Ok(Inputs {
            mem: Arc::new(mem),
            hotplug,
            host_regions,
            policy,
            decision_log,
            hint_log,
            api_listener,
        })
    }

    /// The virtio-mmio slots in use: perf-hint and balloon always,
    /// virtio-mem with a hotplug region.
    fn virtio_slots(&self) -> Vec<MmioDeviceInfo> {
        let mut slots = vec![virtio_slot(PERF_HINT_SLOT), virtio_slot(BALLOON_SLOT)];
        if self.hotplug.is_some() {
            slots.push(virtio_slot(VIRTIO_MEM_SLOT));
        }
        slots
    }
}

/// Writes the kernel, initrd, command line, zero page, reset vector, boot
/// page tables and ACPI tables into guest memory; returns the kernel entry.
pub fn load_guest(cfg: &VmConfig, inputs: &Inputs) -> Result<GuestAddress, VmError> {
    let mem = inputs.mem.as_ref();
    let kernel = boot::load_kernel(mem, &cfg.kernel, cfg.unpacker)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(mem, p, &kernel))
        .transpose()?;
    let cmdline = boot::build_cmdline(cfg.cmdline.as_deref())?;
    boot::write_boot_params(mem, &kernel, initrd, &cmdline, cfg.memory.boot)?;
    boot::write_reset_vector(mem)?;
    crate::arch::regs::write_boot_tables(mem).map_err(BootError::Memory)?;
    let tables = acpi::build_tables(&AcpiConfig {
        boot_vcpus: cfg.cpus.boot,
        max_vcpus: cfg.cpus.max,
        virtio_mmio: inputs.virtio_slots(),
        cpu_hotplug: Some(acpi::CpuHotplugInfo {
            regs: CPU_HOTPLUG_ADDR,
            ged_irq: GED_IRQ,
        }),
    })?;
    acpi::write_tables(mem, &tables)?;
    Ok(kernel.entry)
}

fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    })
}

fn check_caps(kvm: &Kvm) -> Result<(), VmError> {
    for (cap, name) in [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::Ioeventfd, "ioeventfd (KVM_CAP_IOEVENTFD)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::Pit2, "an in-kernel PIT (KVM_CAP_PIT2)"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(())
}

/// Registers guest RAM with KVM, one memory slot per region, but not the
/// virtio-mem region (`hotplug`): its slots are registered as the guest
/// plugs memory there ([`KvmSlots`]).
fn register_memory(
    vm: &VmFd,
    slots: &KvmMemory,
    mem: &GuestMem,
    hotplug: Option<(u64, u64)>,
) -> Result<(), VmError> {
    let ram = mem
        .iter()
        .filter(|r| hotplug.is_none_or(|(start, _)| r.start_addr().raw_value() != start));
    for (index, region) in ram.enumerate() {
        let slot = Slot {
            gpa: region.start_addr().raw_value(),
            len: region.len(),
            host: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives
        // the VM: both are kept until the process exits.
        kvm_err("KVM_SET_USER_MEMORY_REGION", unsafe {
            slots.set(vm, index as u32, slot)
        })?;
    }
    Ok(())
}

/// Opens KVM, checks what perfvmm needs of it, and creates the VM with an
/// in-kernel irqchip and PIT and with guest memory registered.
pub fn create_kvm_vm(
    cfg: &VmConfig,
    mem: &GuestMem,
    hotplug: Option<(u64, u64)>,
) -> Result<(Kvm, VmFd, Arc<KvmMemory>), VmError> {
    let kvm = open_kvm()?;
    check_caps(&kvm)?;
    let limit = kvm.get_max_vcpus();
    if cfg.cpus.max as usize > limit {
        return Err(VmError::TooManyVcpus {
            asked: cfg.cpus.max,
            limit,
        });
    }
    let vm = kvm_err("KVM_CREATE_VM", kvm.create_vm())?;
    disable_pmu(&kvm, &vm);
    kvm_err(
        "KVM_SET_TSS_ADDR",
        vm.set_tss_address(KVM_TSS_ADDR as usize),
    )?;
    kvm_err("KVM_CREATE_IRQCHIP", vm.create_irq_chip())?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    kvm_err("KVM_CREATE_PIT2", vm.create_pit2(pit))?;
    if let Some((_, size)) = hotplug {
        let needed = mem.num_regions() + size.div_ceil(mem_dev::SLOT_SIZE) as usize;
        let limit = kvm.get_nr_memslots();
        if needed > limit {
            return Err(VmError::TooManyMemorySlots { needed, limit });
        }
    }
    let slots = Arc::new(KvmMemory::default());
    register_memory(&vm, &slots, mem, hotplug)?;
    Ok((kvm, vm, slots))
}

/// Gives the guest no performance counters (the CPU template hides the PMU
/// leaves, but AMD's four legacy counters have no CPUID bit: only KVM can
/// take them away). Must come before the first vCPU. Kernels before 5.18
/// lack the capability; the guest then keeps KVM's emulated counters.
fn disable_pmu(kvm: &Kvm, vm: &VmFd) {
    let cap = kvm_bindings::KVM_CAP_PMU_CAPABILITY;
    if kvm.check_extension_raw(u64::from(cap)) & kvm_bindings::KVM_PMU_CAP_DISABLE as i32 == 0 {
        log::info!("this KVM cannot disable the guest's PMU; its counters stay emulated");
        return;
    }
    let enable = kvm_bindings::kvm_enable_cap {
        cap,
        args: [u64::from(kvm_bindings::KVM_PMU_CAP_DISABLE), 0, 0, 0],
        ..Default::default()
    };
    if let Err(e) = vm.enable_cap(&enable) {
        log::warn!("KVM_CAP_PMU_CAPABILITY: {e}; the guest's counters stay emulated");
    }
}

/// Prints the boot-timer line: timings and perfvmm's own memory use.
fn boot_timer_report(regions: Vec<(usize, usize)>) -> InitHook {
    Box::new(move |t: &BootTimes| {
        let ms = |d: Option<&std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0);
        let first = ms(t.first_instruction.get());
        let init = ms(t.init_reached.get());
        let m = memstat::sample(&regions);
        eprintln!(
            "perfvmm: boot-timer: first_instruction_ms={first:.1} init_ms={init:.1} \
             rss_kib={} guest_resident_kib={} vmm_own_kib={} peak_rss_kib={} setup_ms={}",
            m.rss_kib,
            m.guest_resident_kib,
            m.rss_kib.saturating_sub(m.guest_resident_kib),
            m.peak_rss_kib,
            t.setup_line()
        );
    })
}

/// The perf-hint device, attached: its transport and the hint path's ends.
pub struct HintPath {
    transport: Arc<Mutex<PerfHintTransport>>,
    notify: EventFd,
    counters: Arc<Counters>,
    engine: Arc<Mutex<Engine>>,
    decisions: Receiver<Decision>,
}

/// The CPU-hotplug controller, attached: its shared state and interrupt.
pub struct CpuHotplug {
    states: Arc<Mutex<CpuStates>>,
    ged: EventFd,
}

/// A virtio device on its slot: its transport and its queue-notify ioeventfd.
type Attached<D> = (Arc<Mutex<MmioTransport<D>>>, EventFd);

/// A VM under construction.
pub struct VmBuilder<'a> {
    cfg: &'a VmConfig,
    start: Instant,
    mem: Arc<GuestMem>,
    hotplug: Option<(u64, u64)>,
    host_regions: Vec<(usize, usize)>,
    policy: Policy,
    decision_log: JsonLines,
    hint_log: Arc<Mutex<HintLog>>,
    api_listener: Option<UnixListener>,
    vm: Arc<VmFd>,
    slots: Arc<KvmMemory>,
    exit: ExitNotifier,
    times: Arc<BootTimes>,
    pio: Bus,
    mmio: Bus,
    subscribers: Vec<Box<dyn MutEventSubscriber>>,
    /// The snapshot being restored, whose state each step puts back.
    restoring: Option<VmState>,
}

/// Puts a virtio device's saved state back: its transport's (which
/// activates it again), then its own; then serves what the driver had
/// posted and not yet seen served.
fn restore_virtio<D: VirtioDevice, S>(
    transport: &Mutex<MmioTransport<D>>,
    saved: &snapshot::Virtio<S>,
    what: &'static str,
    device: impl FnOnce(&mut D, &S) -> Result<(), RestoreError>,
) -> Result<(), VmError> {
    let err = |e: RestoreError| VmError::Restore {
        what,
        why: e.to_string(),
    };
    let mut t = lock(transport);
    t.restore(&saved.transport).map_err(err)?;
    device(t.device_mut(), &saved.device).map_err(err)?;
    t.notify_all();
    Ok(())
}

impl<'a> VmBuilder<'a> {
    fn new(
        cfg: &'a VmConfig,
        start: Instant,
        inputs: Inputs,
        (vm, slots): (VmFd, Arc<KvmMemory>),
        restoring: Option<VmState>,
    ) -> Result<Self, VmError> {
        Ok(VmBuilder {
            cfg,
            start,
            mem: inputs.mem,
            hotplug: inputs.hotplug,
            host_regions: inputs.host_regions,
            policy: inputs.policy,
            decision_log: inputs.decision_log,
            hint_log: Arc::new(Mutex::new(inputs.hint_log)),
            api_listener: inputs.api_listener,
            vm: Arc::new(vm),
            slots,
            exit: ExitNotifier::new()?,
            times: BootTimes::new(start),
            pio: Bus::new(),
            mmio: Bus::new(),
            subscribers: Vec::new(),
            restoring,
        })
    }

    /// When the VM's time began, which the engine's times count from: a
    /// restored VM's began its snapshot's uptime before now.
    fn vm_clock(&self) -> Instant {
        let uptime = self.restoring.as_ref().map(|st| st.uptime);
        uptime
            .and_then(|u| Instant::now().checked_sub(u))
            .unwrap_or(self.start)
    }

    /// Every part, in the order they depend on each other, then the vCPUs.
    fn attach_all(mut self, kvm: &Kvm, boot: Boot) -> Result<Vm, VmError> {
        let console = self.attach_console()?;
        self.attach_power()?;
        let hints = self.attach_perf_hint()?;
        let memory = self.attach_memory_devices()?;
        let cpus = self.attach_cpu_hotplug()?;
        self.attach_boot_timer()?;
        self.start(kvm, boot, console, hints, memory, cpus)
    }

    fn irqfd(&self, gsi: u32) -> Result<EventFd, VmError> {
        let fd = EventFd::new(libc::EFD_NONBLOCK)?;
        kvm_err("KVM_IRQFD", self.vm.register_irqfd(&fd, gsi))?;
        Ok(fd)
    }

    fn insert_mmio(
        &mut self,
        dev: impl BusDevice + 'static,
        base: u64,
        len: u64,
    ) -> Result<(), VmError> {
        Ok(self.mmio.insert(Arc::new(Mutex::new(dev)), base, len)?)
    }

    /// COM1 on the port-I/O bus, writing to standard output.
    pub fn attach_console(&mut self) -> Result<Console, VmError> {
        let irq = self.irqfd(COM1_IRQ)?;
        let out = ConsoleOut(io::stdout());
        let uart = match &self.restoring {
            Some(st) => {
                SerialDevice::from_state(&st.serial, irq, out).map_err(|why| VmError::Restore {
                    what: "console",
                    why,
                })?
            }
            None => SerialDevice::new(irq, out),
        };
        let serial = Arc::new(Mutex::new(uart));
        self.pio.insert(serial.clone(), u64::from(COM1_PORT), 8)?;
        Ok(serial)
    }

    /// The ACPI power device: sleep control and reset end the VM.
    pub fn attach_power(&mut self) -> Result<(), VmError> {
        let dev = Arc::new(Mutex::new(PowerDevice::new(self.exit.clone())));
        let port = u64::from(ACPI_SLEEP_CONTROL_PORT);
        self.pio.insert(dev, port, power::PORT_COUNT)?;
        // The i8042's reset line, for `reboot=k` (two single ports: 0x61
        // between them belongs to KVM's PIT).
        for port in [i8042::DATA_PORT, i8042::COMMAND_PORT] {
            let dev = Arc::new(Mutex::new(I8042::new(self.exit.clone(), port)));
            self.pio.insert(dev, u64::from(port), 1)?;
        }
        Ok(())
    }

    /// Puts `device` on virtio-mmio `slot`: its transport (interrupting
    /// through an irqfd) on the MMIO bus, and the ioeventfd on its
    /// `QueueNotify` register, returned with the transport.
    fn attach_virtio<D: VirtioDevice + 'static>(
        &mut self,
        slot: MmioDeviceInfo,
        device: D,
    ) -> Result<Attached<D>, VmError> {
        let fds = kvm_err(
            "KVM_IRQFD/KVM_IOEVENTFD",
            SlotFds::register(&self.vm, &slot),
        )?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.mem.clone(),
            Arc::new(IrqFdInterrupt(fds.irq)),
            PERFHINT_VENDOR_ID,
        )));
        self.insert_mmio(MmioSlot(transport.clone()), slot.base, slot.size)?;
        Ok((transport, fds.notify))
    }

    /// The perf-hint device, whose sink is the policy engine: hints in,
    /// outcomes back, decisions to the controller built in [`Self::start`].
    pub fn attach_perf_hint(&mut self) -> Result<HintPath, VmError> {
        let cpus = &self.cfg.cpus;
        let memory = &self.cfg.memory;
        let limits = VmLimits {
            boot_vcpus: cpus.boot,
            max_vcpus: cpus.max,
            boot_memory: memory.boot,
            max_memory: memory.max,
        };
        let engine =
            match &self.restoring {
                Some(st) => Engine::restore(self.policy.clone(), limits, st.engine.clone())
                    .map_err(|why| VmError::Restore {
                        what: "policy engine",
                        why,
                    })?,
                None => Engine::new(self.policy.clone(), limits),
            };
        let engine = Arc::new(Mutex::new(engine));
        let (tx, decisions) = channel();
        let sink = PolicySink::new(engine.clone(), self.hint_log.clone(), tx, self.vm_clock());
        let device = PerfHintDevice::new(sink);
        let counters = device.counters();
        let (transport, notify) = self.attach_virtio(virtio_slot(PERF_HINT_SLOT), device)?;
        if let Some(st) = &self.restoring {
            restore_virtio(&transport, &st.perf_hint, "perf-hint device", |d, s| {
                d.restore(s)
            })?;
        }
        Ok(HintPath {
            transport,
            notify,
            counters,
            engine,
            decisions,
        })
    }

    /// The balloon always, virtio-mem when `--memory` has a `max`; their
    /// queue handlers; and the memory actuator over both.
    pub fn attach_memory_devices(&mut self) -> Result<MemoryManager, VmError> {
        let (balloon, notify) = self.attach_virtio(virtio_slot(BALLOON_SLOT), Balloon::new())?;
        if let Some(st) = &self.restoring {
            restore_virtio(&balloon, &st.balloon, "balloon", Balloon::restore)?;
        }
        self.subscribers
            .push(Box::new(QueueHandler::new(notify, balloon.clone())));
        let virtio_mem = match self.hotplug {
            Some((start, size)) => {
                let slots = KvmSlots::new(self.vm.clone(), self.slots.clone(), &self.mem, start)
                    .ok_or(VmError::HotplugRegion(start))?;
                let dev = VirtioMem::new(start, size, Box::new(slots));
                let (t, notify) = self.attach_virtio(virtio_slot(VIRTIO_MEM_SLOT), dev)?;
                if let Some(st) = &self.restoring {
                    let saved = st.virtio_mem.as_ref().ok_or(VmError::Restore {
                        what: "virtio-mem",
                        why: "not saved, though the VM has a hotplug region".into(),
                    })?;
                    restore_virtio(&t, saved, "virtio-mem", VirtioMem::restore)?;
                }
                self.subscribers
                    .push(Box::new(QueueHandler::new(notify, t.clone())));
                log::info!("virtio-mem: {} MiB pluggable at {start:#x}", size >> 20);
                Some(t)
            }
            None => None,
        };
        let m = &self.cfg.memory;
        Ok(MemoryManager::new(m.boot, m.max, balloon, virtio_mem))
    }

    /// The CPU-hotplug controller's registers and the GED interrupt.
    pub fn attach_cpu_hotplug(&mut self) -> Result<CpuHotplug, VmError> {
        let states = match &self.restoring {
            Some(st) if st.cpu_slots.slots.len() != self.cfg.cpus.max as usize => {
                return Err(VmError::Restore {
                    what: "CPU hotplug slots",
                    why: format!(
                        "{} slots for a VM of at most {} vCPUs",
                        st.cpu_slots.slots.len(),
                        self.cfg.cpus.max
                    ),
                })
            }
            Some(st) => Arc::new(Mutex::new(st.cpu_slots.clone())),
            None => CpuStates::new(self.cfg.cpus.boot, self.cfg.cpus.max),
        };
        let controller = CpuHotplugController::new(states.clone());
        self.insert_mmio(controller, CPU_HOTPLUG_ADDR, cpu_hotplug::REGS_LEN)?;
        let ged = self.irqfd(GED_IRQ)?;
        Ok(CpuHotplug { states, ged })
    }

    /// The boot timer the guest's `/init` writes to (and, with
    /// `--boot-timer`, the line it prints).
    pub fn attach_boot_timer(&mut self) -> Result<(), VmError> {
        let regions = self.host_regions.clone();
        let hook = self.cfg.boot_timer.then(|| boot_timer_report(regions));
        let timer = BootTimer::new(self.times.clone(), hook);
        self.insert_mmio(timer, BOOT_TIMER_ADDR, BOOT_TIMER_SIZE)
    }

    /// Creates and starts the boot vCPUs (or a snapshot's), then the
    /// controller, its event handlers and the control API. The buses are
    /// complete from here on.
    pub fn start(
        mut self,
        kvm: &Kvm,
        boot: Boot,
        console: Console,
        hints: HintPath,
        memory: MemoryManager,
        cpus: CpuHotplug,
    ) -> Result<Vm, VmError> {
        self.times.mark("devices");
        let CpuHotplug { states, ged } = cpus;
        let clock = self.vm_clock();
        let mut held_vcpus = None;
        let ged_again = ged.try_clone()?;
        let mut vcpus = self.vcpu_manager(kvm, states.clone(), ged)?;
        let vcpu_set = vcpus.set();
        let first = match boot {
            Boot::Fresh(entry) => vcpus.create_boot(self.cfg.cpus.boot, entry)?,
            Boot::Restore { vcpus: saved, held } => {
                let restored = vcpus.restore(&saved)?;
                if held {
                    let gates: Vec<(u32, bool)> =
                        saved.iter().map(|v| (v.index, v.parked)).collect();
                    vcpu_set.hold(&gates);
                    held_vcpus = Some((vcpu_set.clone(), gates));
                }
                restored
            }
        };
        let (balloon, virtio_mem) = memory.transports();
        if self.restoring.is_some() {
            let cpus = (states.as_ref(), &ged_again);
            raise_pending(
                &console,
                &hints.transport,
                &balloon,
                virtio_mem.as_ref(),
                cpus,
            )?;
        }
        self.times.mark("vcpus");
        // Signals are blocked before any vCPU thread exists, so they inherit
        // the mask and SIGINT/SIGTERM reach only the event loop's signalfd.
        let signals = event_loop::block_stop_signals()?;
        for vcpu in first {
            vcpus.spawn(vcpu)?;
        }
        let controller = Arc::new(Mutex::new(Controller::new(
            hints.engine.clone(),
            hints.decisions,
            Actuators {
                vcpus: Box::new(vcpus),
                memory: Box::new(memory),
            },
            self.decision_log,
            ReloadScope {
                start_file: self.cfg.policy.clone(),
                dir: self.cfg.policy_dir.clone(),
            },
            clock,
        )));
        let (requests, jobs) =
            control::snapshot::channel(self.cfg.snapshot_dir.clone(), self.cfg.allow_migrate)?;
        lock(&controller).set_mover(requests.try_clone()?);
        let mut api_connections = None;
        if let Some(listener) = self.api_listener {
            let state = api::ApiState {
                controller: controller.clone(),
                counters: hints.counters.clone(),
                snapshots: requests,
            };
            let access = api_server::Access {
                group: self.cfg.api_sock_group,
            };
            api_connections = Some(api_server::spawn(
                listener,
                state,
                access,
                self.cfg.seccomp,
            )?);
        }
        let machine = Machine {
            shape: shape(self.cfg, self.hotplug),
            vm: self.vm.clone(),
            mem: self.mem.clone(),
            slots: self.slots.clone(),
            vcpus: vcpu_set,
            cpu_slots: states,
            console: console.clone(),
            perf_hint: hints.transport.clone(),
            balloon,
            virtio_mem,
            controller: controller.clone(),
            engine: hints.engine,
            exit: self.exit.clone(),
        };
        let mut subscribers = self.subscribers;
        subscribers.push(Box::new(SnapshotHandler::new(jobs, machine)?));
        subscribers.push(Box::new(HintQueueHandler::new(
            hints.notify,
            hints.transport.clone(),
            controller.clone(),
            self.hint_log.clone(),
        )));
        subscribers.push(Box::new(PolicyTick::new(
            hints.transport,
            controller.clone(),
            self.hint_log.clone(),
        )?));
        Ok(Vm::new(VmParts {
            exit: self.exit,
            signals,
            subscribers,
            console,
            hint_log: self.hint_log,
            controller,
            hint_counters: hints.counters,
            api_sock: self.cfg.api_sock.clone(),
            log_counters: self.cfg.hint_log.is_some(),
            kvm_vm: self.vm,
            mem: self.mem,
            seccomp: self.cfg.seccomp,
            snapshots: self.cfg.snapshot_dir.is_some(),
            migrations: self.cfg.allow_migrate,
            api_connections,
            held: held_vcpus,
        }))
    }

    /// The vCPU actuator, which creates vCPUs as the VM grows: each pinned
    /// by the placement policy and confined by its seccomp filter.
    fn vcpu_manager(
        &mut self,
        kvm: &Kvm,
        states: Arc<Mutex<CpuStates>>,
        ged: EventFd,
    ) -> Result<VcpuManager, VmError> {
        let supported = kvm_err(
            "KVM_GET_SUPPORTED_CPUID",
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
        )?;
        let msrs = kvm_err("KVM_GET_MSR_INDEX_LIST", kvm.get_msr_index_list())?;
        let ctx = VcpuContext {
            pio: Arc::new(std::mem::take(&mut self.pio)),
            mmio: Arc::new(std::mem::take(&mut self.mmio)),
            exit: self.exit.clone(),
            times: self.times.clone(),
            msr_indices: msrs.as_slice().into(),
        };
        let pinning = placement::Pinning::new(&self.policy.placement, self.cfg.cpus.max);
        let seccomp = self.cfg.seccomp;
        Ok(VcpuManager::new(
            self.vm.clone(),
            supported,
            self.cfg.cpus.max,
            ctx,
            states,
            ged,
            Arc::new(move |i| {
                pinning.pin_current_thread(i);
                if seccomp {
                    confine_vcpu_thread(i);
                }
            }),
        )?)
    }
}

/// The machine a snapshot of this VM belongs to.
fn shape(cfg: &VmConfig, hotplug: Option<(u64, u64)>) -> Shape {
    Shape {
        max_vcpus: cfg.cpus.max,
        boot_memory: cfg.memory.boot,
        max_memory: cfg.memory.max,
        regions: memory_layout(cfg),
        hotplug,
    }
}

/// virtio-mem's slots as KVM memory slots over the region's host mapping,
/// numbered after guest RAM's.
struct KvmSlots {
    vm: Arc<VmFd>,
    slots: Arc<KvmMemory>,
    /// KVM's number for the region's slot 0.
    first: u32,
    /// The region's guest-physical and host addresses, and its length.
    gpa: u64,
    host: u64,
    len: u64,
}

impl KvmSlots {
    /// `None` unless `gpa` starts the last region of `mem`: the other
    /// regions hold KVM slots 0.., one each in address order, so the
    /// hotplug region's slots are numbered after them.
    fn new(vm: Arc<VmFd>, slots: Arc<KvmMemory>, mem: &GuestMem, gpa: u64) -> Option<Self> {
        let region = mem.iter().last()?;
        (region.start_addr().raw_value() == gpa).then(|| KvmSlots {
            vm,
            slots,
            first: (mem.num_regions() - 1) as u32,
            gpa,
            host: region.as_ptr() as u64,
            len: region.len(),
        })
    }

    /// KVM's slot number for the region's slot `index`, and the offset of
    /// `[gpa, gpa + len)` in the region, which must hold it.
    fn locate(&self, index: usize, gpa: u64, len: u64) -> std::io::Result<(u32, u64)> {
        let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
        let slot = u32::try_from(index)
            .ok()
            .and_then(|i| self.first.checked_add(i))
            .ok_or_else(invalid)?;
        let off = gpa.checked_sub(self.gpa).ok_or_else(invalid)?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok((slot, off)),
            _ => Err(invalid()),
        }
    }
}

fn os_err(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

impl SlotMap for KvmSlots {
    fn map(&mut self, index: usize, gpa: u64, len: u64) -> std::io::Result<()> {
        let (slot, off) = self.locate(index, gpa, len)?;
        let host = self.host + off;
        // SAFETY: `locate` checked that the range lies inside the region's
        // host mapping, which is owned by the VM's guest memory and lives
        // until the process exits.
        unsafe { self.slots.set(&self.vm, slot, Slot { gpa, len, host }) }.map_err(os_err)
    }

    fn unmap(&mut self, index: usize, gpa: u64, len: u64) -> std::io::Result<()> {
        let (slot, _) = self.locate(index, gpa, len)?;
        self.slots.remove(&self.vm, slot).map_err(os_err)
    }
}

/// Installs the vCPU filter on the calling (new vCPU) thread. A vCPU that
/// could not be confined must not run: perfvmm stops.
fn confine_vcpu_thread(index: u32) {
    if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
        log::error!("vCPU {index}: {e}; stopping (--no-seccomp runs without filters)");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cpus: (u32, u32), memory: (u64, u64)) -> VmConfig {
        VmConfig {
            kernel: PathBuf::new(),
            unpacker: boot::Unpacker::Vmm,
            initrd: None,
            cmdline: None,
            cpus: CpuSpec {
                boot: cpus.0,
                max: cpus.1,
            },
            memory: MemSpec {
                boot: memory.0,
                max: memory.1,
            },
            boot_timer: false,
            seccomp: false,
            hint_log: None,
            decision_log: None,
            policy: None,
            api_sock: None,
            log_limit: 0,
            api_sock_group: None,
            policy_dir: None,
            snapshot_dir: None,
            allow_migrate: false,
        }
    }

    #[test]
    fn the_boot_size_obeys_the_policy() {
        const MIB: u64 = 1 << 20;
        let p = Policy::from_toml("p", "[vcpus]\nmax = 2\n[memory]\nmax = \"512M\"\n").unwrap();
        let c = within_policy(&cfg((4, 4), (1024 * MIB, 1024 * MIB)), &p);
        assert_eq!((c.cpus.boot, c.cpus.max), (2, 4));
        assert_eq!(c.memory.boot, 512 * MIB);
        let p = Policy::from_toml("p", "[vcpus]\nmin = 3\n").unwrap();
        assert_eq!(
            within_policy(&cfg((1, 4), (512 * MIB, 512 * MIB)), &p)
                .cpus
                .boot,
            3
        );
        assert_eq!(
            within_policy(&cfg((1, 2), (512 * MIB, 512 * MIB)), &p)
                .cpus
                .boot,
            2
        );
        let unchanged = within_policy(&cfg((2, 4), (512 * MIB, MIB << 10)), &Policy::default());
        assert_eq!((unchanged.cpus.boot, unchanged.memory.boot), (2, 512 * MIB));
    }
}

//! Building and running a VM: KVM setup, guest memory, boot data, ACPI,
//! devices, vCPU threads, then the event loop until the guest ends.

use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use virtio_perf_device::mmio::MmioTransport;
use virtio_perf_device::virtio::VirtioDevice;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, AcpiConfig, MmioDeviceInfo};
use crate::boot::{self, BootError};
use crate::cli::{CpuSpec, MemSpec};
use crate::devices::balloon::Balloon;
use crate::devices::boot_timer::{BootTimer, BootTimes, InitHook};
use crate::devices::bus::{lock, Bus, BusDevice, BusError};
use crate::devices::cpu_hotplug::{self, CpuHotplugController, CpuStates};
use crate::devices::perf_hint::{self, HintLog, PerfHintMmio};
use crate::devices::power::{self, PowerDevice};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio_mem::VirtioMem;
use crate::devices::virtio_mmio::{IrqFdInterrupt, MmioSlot, SlotFds};
use crate::event_loop::{self, ConsoleInput, EventFdHandler};
use crate::exit::{ExitNotifier, ExitReason};
use crate::layout::{
    ACPI_SLEEP_CONTROL_PORT, BALLOON_SLOT, BOOT_TIMER_ADDR, BOOT_TIMER_SIZE, COM1_IRQ, COM1_PORT,
    CPU_HOTPLUG_ADDR, GED_IRQ, KVM_TSS_ADDR, PERF_HINT_SLOT, VIRTIO_IRQS, VIRTIO_MEM_SLOT,
    VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::memory;
use crate::memory_manager::MemoryManager;
use crate::memstat;
use crate::placement;
use crate::policy::controller::{self, Actuators};
use crate::policy::{Engine, Policy, VmLimits};
use crate::vcpu::{VcpuContext, VcpuError};
use crate::vcpu_manager::VcpuManager;

/// Everything needed to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: CpuSpec,
    pub memory: MemSpec,
    pub boot_timer: bool,
    pub hint_log: Option<PathBuf>,
    pub decision_log: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub api_sock: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
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
    HintLog { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Policy(String),
    #[error(transparent)]
    Resize(#[from] crate::vcpu_manager::ResizeError),
    #[error("--api-sock {path}: {source}")]
    ApiSock { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn kvm_err<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmError> {
    r.map_err(|source| VmError::Kvm { what, source })
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

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives
        // the VM: both are kept until the process exits.
        kvm_err("KVM_SET_USER_MEMORY_REGION", unsafe {
            vm.set_user_memory_region(region_desc)
        })?;
    }
    Ok(())
}

/// Serial output: flushed on every write so the console is live.
struct ConsoleOut(io::Stdout);

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.0.lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Puts the terminal in raw mode while the VM runs, restoring it on drop.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: termios is plain data, filled in by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is stdin; `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios copied from the terminal's own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host terminal renders newlines.
        raw.c_oflag = saved.c_oflag;
        // SAFETY: fd is stdin; `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same fd.
        unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

/// Prints the boot-timer line: timings and perfvmm's own memory use.
fn boot_timer_report(regions: Vec<(usize, usize)>) -> InitHook {
    Box::new(move |t: &BootTimes| {
        let first = t
            .first_instruction
            .get()
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        let init = t
            .init_reached
            .get()
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        let m = memstat::sample(&regions);
        eprintln!(
            "perfvmm: boot-timer: first_instruction_ms={first:.1} init_ms={init:.1} \
             rss_kib={} guest_resident_kib={} vmm_own_kib={} peak_rss_kib={}",
            m.rss_kib,
            m.guest_resident_kib,
            m.rss_kib.saturating_sub(m.guest_resident_kib),
            m.peak_rss_kib
        );
    })
}

/// How often delayed policy decisions (shrinks) are re-evaluated.
const POLICY_TICK_MS: i64 = 200;

fn policy_timer() -> io::Result<vmm_sys_util::timerfd::TimerFd> {
    let mut t = vmm_sys_util::timerfd::TimerFd::new()?;
    let period = std::time::Duration::from_millis(POLICY_TICK_MS as u64);
    t.reset(period, Some(period))?;
    Ok(t)
}

/// virtio-mmio slot `n`: its MMIO window and interrupt.
fn virtio_slot(n: usize) -> MmioDeviceInfo {
    MmioDeviceInfo {
        base: VIRTIO_MMIO_BASE + n as u64 * VIRTIO_MMIO_SIZE,
        size: VIRTIO_MMIO_SIZE,
        irq: VIRTIO_IRQS[n],
    }
}

/// State shared between the event loop, the vCPU threads and the API.
type Shared<T> = Arc<Mutex<T>>;

/// Puts `device` on virtio-mmio `slot`: its transport (interrupting through
/// an irqfd), the bus entry `bus_entry` makes of it, and the ioeventfd on
/// its `QueueNotify` register, which is returned with the transport.
fn attach_virtio<D: VirtioDevice + 'static>(
    vm: &VmFd,
    mmio: &mut Bus,
    mem: &Arc<GuestMemoryMmap>,
    slot: MmioDeviceInfo,
    device: D,
    bus_entry: impl FnOnce(Shared<MmioTransport<D>>) -> Arc<Mutex<dyn BusDevice>>,
) -> Result<(Shared<MmioTransport<D>>, EventFd), VmError> {
    let fds = kvm_err("KVM_IRQFD/KVM_IOEVENTFD", SlotFds::register(vm, &slot))?;
    let transport = Arc::new(Mutex::new(MmioTransport::new(
        device,
        mem.clone(),
        Arc::new(IrqFdInterrupt(fds.irq)),
        virtio_perf_device::PERFHINT_VENDOR_ID,
    )));
    mmio.insert(bus_entry(transport.clone()), slot.base, slot.size)?;
    Ok((transport, fds.notify))
}

/// Builds the VM described by `cfg`, runs it to completion and returns why it ended.
pub fn run(cfg: &VmConfig, start: Instant) -> Result<ExitReason, VmError> {
    let hotplug = memory::hotplug_region(cfg.memory.boot, cfg.memory.max);
    let mem = Arc::new(
        memory::create_guest_memory(cfg.memory.boot, hotplug).map_err(|source| {
            VmError::Memory {
                size: cfg.memory.max >> 20,
                source,
            }
        })?,
    );
    // The policy and output files next: a bad policy or a path that cannot be
    // written is an input error too.
    let policy = match &cfg.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                VmError::Policy(format!("cannot read policy {}: {e}", path.display()))
            })?;
            Policy::from_toml(&path.display().to_string(), &text)
                .map_err(|e| VmError::Policy(e.to_string()))?
        }
        None => Policy::default(),
    };
    // Before anything touches guest memory, so every page obeys the binding.
    let host_regions: Vec<(usize, usize)> = mem
        .iter()
        .map(|r| (r.as_ptr() as usize, r.len() as usize))
        .collect();
    placement::bind_guest_memory(&policy.placement, &host_regions);
    let decision_log =
        controller::open_decision_log(cfg.decision_log.as_deref()).map_err(|source| {
            VmError::HintLog {
                path: cfg.decision_log.clone().unwrap_or_default(),
                source,
            }
        })?;
    let hint_log =
        HintLog::new(cfg.hint_log.as_deref(), start).map_err(|source| VmError::HintLog {
            path: cfg.hint_log.clone().unwrap_or_default(),
            source,
        })?;
    // The API socket is bound before the guest starts, so a client can
    // connect as soon as perfvmm runs.
    let api_listener = cfg
        .api_sock
        .as_deref()
        .map(|p| {
            crate::api::bind(p).map_err(|source| VmError::ApiSock {
                path: p.to_path_buf(),
                source,
            })
        })
        .transpose()?;
    let mut slots = vec![virtio_slot(PERF_HINT_SLOT), virtio_slot(BALLOON_SLOT)];
    if hotplug.is_some() {
        slots.push(virtio_slot(VIRTIO_MEM_SLOT));
    }

    // Boot data first: a bad kernel or initrd is reported before KVM is touched,
    // so input errors are the same on every host.
    let kernel = boot::load_kernel(&mem, &cfg.kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(&mem, p, &kernel))
        .transpose()?;
    let cmdline = boot::build_cmdline(cfg.cmdline.as_deref())?;
    boot::write_boot_params(&mem, &kernel, initrd, &cmdline, cfg.memory.boot)?;
    boot::write_reset_vector(&mem)?;
    crate::arch::regs::write_boot_tables(mem.as_ref()).map_err(BootError::Memory)?;
    let tables = acpi::build_tables(&AcpiConfig {
        boot_vcpus: cfg.cpus.boot,
        max_vcpus: cfg.cpus.max,
        virtio_mmio: slots.clone(),
        cpu_hotplug: Some(acpi::CpuHotplugInfo {
            regs: CPU_HOTPLUG_ADDR,
            ged_irq: GED_IRQ,
        }),
    })?;
    acpi::write_tables(mem.as_ref(), &tables)?;

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
    register_memory(&vm, &mem)?;

    let exit = ExitNotifier::new()?;
    let times = BootTimes::new(start);

    let mut pio = Bus::new();
    let com1_irq = EventFd::new(libc::EFD_NONBLOCK)?;
    kvm_err("KVM_IRQFD", vm.register_irqfd(&com1_irq, COM1_IRQ))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        com1_irq,
        ConsoleOut(io::stdout()),
    )));
    pio.insert(serial.clone(), u64::from(COM1_PORT), 8)?;
    pio.insert(
        Arc::new(Mutex::new(PowerDevice::new(exit.clone()))),
        u64::from(ACPI_SLEEP_CONTROL_PORT),
        power::PORT_COUNT,
    )?;

    let mut mmio = Bus::new();

    // Policy: the perf-hint device's sink decides each hint's outcome; the
    // controller (finished below, once the vCPU actuator exists) applies decisions.
    let engine = Engine::new(
        policy.clone(),
        VmLimits {
            boot_vcpus: cfg.cpus.boot,
            max_vcpus: cfg.cpus.max,
            boot_memory: cfg.memory.boot,
            max_memory: cfg.memory.max,
        },
    );
    let (sink, pending) = controller::split(engine, hint_log, start);

    // The perf-hint device. Its bus entry flushes the hint log after each
    // register write; its notifications are handled with the policy below.
    let hint_device = virtio_perf_device::PerfHintDevice::new(sink);
    let hint_counters = hint_device.counters();
    let (hint_transport, hint_notify) = attach_virtio(
        &vm,
        &mut mmio,
        &mem,
        slots[PERF_HINT_SLOT],
        hint_device,
        |t| Arc::new(Mutex::new(PerfHintMmio(t))),
    )?;

    // Memory devices: the balloon always, virtio-mem when --memory has a max.
    let mut notifiers: Vec<(EventFd, Box<dyn FnMut() + Send>)> = Vec::new();
    let (balloon, notify) = attach_virtio(
        &vm,
        &mut mmio,
        &mem,
        slots[BALLOON_SLOT],
        Balloon::new(),
        |t| Arc::new(Mutex::new(MmioSlot(t))),
    )?;
    let b = balloon.clone();
    notifiers.push((notify, Box::new(move || lock(&b).notify_all())));
    let virtio_mem = match hotplug {
        Some((start, size)) => {
            let (t, notify) = attach_virtio(
                &vm,
                &mut mmio,
                &mem,
                slots[VIRTIO_MEM_SLOT],
                VirtioMem::new(start, size),
                |t| Arc::new(Mutex::new(MmioSlot(t))),
            )?;
            let n = t.clone();
            notifiers.push((notify, Box::new(move || lock(&n).notify_all())));
            log::info!("virtio-mem: {} MiB pluggable at {start:#x}", size >> 20);
            Some(t)
        }
        None => None,
    };
    let memory_manager =
        MemoryManager::new(cfg.memory.boot, cfg.memory.max, balloon.clone(), virtio_mem);

    // CPU hotplug: the controller's registers and the GED interrupt.
    let cpu_states = CpuStates::new(cfg.cpus.boot, cfg.cpus.max);
    mmio.insert(
        Arc::new(Mutex::new(CpuHotplugController::new(cpu_states.clone()))),
        CPU_HOTPLUG_ADDR,
        cpu_hotplug::REGS_LEN,
    )?;
    let ged = EventFd::new(libc::EFD_NONBLOCK)?;
    kvm_err("KVM_IRQFD", vm.register_irqfd(&ged, GED_IRQ))?;

    let hook = cfg.boot_timer.then(|| boot_timer_report(host_regions));
    mmio.insert(
        Arc::new(Mutex::new(BootTimer::new(times.clone(), hook))),
        BOOT_TIMER_ADDR,
        BOOT_TIMER_SIZE,
    )?;

    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        exit: exit.clone(),
        times,
    };
    let supported = kvm_err(
        "KVM_GET_SUPPORTED_CPUID",
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
    )?;
    let vm = Arc::new(vm);
    let pinning = placement::Pinning::new(&policy.placement, cfg.cpus.max);
    let mut vcpus = VcpuManager::new(
        vm.clone(),
        supported,
        cfg.cpus.max,
        ctx,
        cpu_states,
        ged,
        Arc::new(move |i| pinning.pin_current_thread(i)),
    );
    let boot_vcpus = vcpus.create_boot(cfg.cpus.boot, kernel.entry)?;

    // Signals are blocked before any vCPU thread exists, so they inherit the mask
    // and SIGINT/SIGTERM reach only the event loop's signalfd.
    let signals = event_loop::block_stop_signals()?;
    for vcpu in boot_vcpus {
        vcpus.spawn(vcpu)?;
    }

    let controller = Arc::new(Mutex::new(pending.finish(Actuators {
        vcpus,
        memory: memory_manager,
        decision_log,
        policy_path: cfg.policy.clone(),
    })));
    if let Some(listener) = api_listener {
        crate::api::spawn(listener, controller.clone(), hint_counters.clone())?;
    }
    let notify_transport = hint_transport.clone();
    let notify_controller = controller.clone();
    let tick_controller = controller.clone();
    let tick_transport = hint_transport.clone();
    let mut subscribers: Vec<Box<dyn event_manager::MutEventSubscriber>> = vec![
        Box::new(EventFdHandler::new(
            Box::new(hint_notify),
            Box::new(move || {
                perf_hint::on_queue_notify(&notify_transport);
                lock(&notify_controller).drain();
            }),
        )),
        Box::new(EventFdHandler::new(
            Box::new(policy_timer()?),
            Box::new(move || {
                lock(&tick_controller).tick();
                // Outcomes short of a batch go out on the tick.
                lock(&tick_transport).notify(virtio_perf_device::EVENTQ);
            }),
        )),
    ];
    for (fd, f) in notifiers {
        subscribers.push(Box::new(EventFdHandler::new(Box::new(fd), f)));
    }

    let stdin = io::stdin();
    let raw = stdin.is_terminal().then(RawTerminal::enter).flatten();
    if raw.is_some() {
        subscribers.push(Box::new(ConsoleInput::new(
            stdin.as_raw_fd(),
            serial.clone(),
        )));
    }
    let reason = event_loop::run_until_exit(&exit, &signals, subscribers);
    drop(raw);
    let _ = io::stdout().flush();
    lock(&hint_transport)
        .device_mut()
        .sink_mut()
        .log_mut()
        .finish(&hint_counters);
    let counters = hint_counters.snapshot();
    if cfg.hint_log.is_some() || counters.messages > 0 {
        log::info!("perf-hint counters: {}", counters.to_json());
    }
    if let Some(path) = &cfg.api_sock {
        // Clients connecting from now on get "no such file", not a dead socket.
        let _ = std::fs::remove_file(path);
    }
    // The VM's memory and KVM objects are released when the process exits.
    std::mem::forget(vm);
    std::mem::forget(mem);
    Ok(reason?)
}

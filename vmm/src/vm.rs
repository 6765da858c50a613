//! A built, running VM (see [`crate::builder`]): the main thread's event
//! loop until the guest ends, then an orderly shutdown that keeps every
//! log line.

use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::MutEventSubscriber;
use kvm_ioctls::VmFd;
use virtio_mmio::GuestMem;
use virtio_perf_device::Counters;
use vmm_sys_util::terminal::Terminal;

use crate::actuators::vcpus::VcpuSet;
use crate::control::{Controller, HintLog};
use crate::devices::bus::lock;
use crate::devices::serial::{ConsoleOut, SerialDevice};
use crate::event_loop::{self, ConsoleInput};
use crate::exit::{ExitNotifier, ExitReason};
use crate::seccomp::ThreadKind;

/// The guest's serial console.
pub type Console = Arc<Mutex<SerialDevice<ConsoleOut>>>;

/// vCPUs waiting at their gates, `(index, parked)`.
pub type HeldVcpus = (Arc<VcpuSet>, Vec<(u32, bool)>);

/// What the builder hands over once the vCPUs run.
pub struct VmParts {
    pub exit: ExitNotifier,
    /// The stop signals, blocked in every thread and read from a signalfd.
    pub signals: libc::sigset_t,
    /// Device and controller handlers for the event loop.
    pub subscribers: Vec<Box<dyn MutEventSubscriber>>,
    pub console: Console,
    pub hint_log: Arc<Mutex<HintLog>>,
    /// Its decision log is closed at shutdown.
    pub controller: Arc<Mutex<Controller>>,
    pub hint_counters: Arc<Counters>,
    /// Removed at shutdown.
    pub api_sock: Option<PathBuf>,
    /// Whether the final counters are logged at `info` even with no hints.
    pub log_counters: bool,
    pub kvm_vm: Arc<VmFd>,
    pub mem: Arc<GuestMem>,
    /// Whether the main thread confines itself before its event loop.
    pub seccomp: bool,
    /// Whether it writes snapshots (its filter then lets it create files).
    pub snapshots: bool,
    /// Whether it may migrate the VM (its filter then lets it connect).
    pub migrations: bool,
    /// Connections the control API is serving.
    pub api_connections: Option<Arc<AtomicUsize>>,
    /// vCPUs built but held at their gates (a migrated VM until its source
    /// hands it over): `(index, parked)`, released by [`Vm::release`].
    pub held: Option<HeldVcpus>,
}

/// How long perfvmm waits at exit for the API's answers to go out.
const API_DRAIN: Duration = Duration::from_secs(2);

/// A VM whose vCPUs are running.
pub struct Vm {
    parts: VmParts,
}

/// Puts the terminal in raw mode while the VM runs, restoring it on drop.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> Option<Self> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        match stdin.lock().set_raw_mode() {
            Ok(()) => Some(RawTerminal),
            Err(e) => {
                log::warn!("console input disabled: cannot set the terminal raw: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = io::stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal: {e}");
        }
    }
}

impl Vm {
    pub fn new(parts: VmParts) -> Self {
        Vm { parts }
    }

    /// Lets held vCPUs run (a parked one stays parked).
    pub fn release(&mut self) {
        if let Some((set, held)) = self.parts.held.take() {
            set.resume(&held);
        }
    }

    /// Runs the event loop until the guest ends, shuts down, and returns why.
    pub fn run(self) -> io::Result<ExitReason> {
        let Vm { mut parts } = self;
        let mut subscribers = std::mem::take(&mut parts.subscribers);
        let raw = RawTerminal::enter();
        if raw.is_some() {
            let fd = io::stdin().as_raw_fd();
            subscribers.push(Box::new(ConsoleInput::new(fd, parts.console.clone())));
        }
        if parts.seccomp {
            let allow = crate::seccomp::Allow {
                snapshots: parts.snapshots,
                migration: parts.migrations,
            };
            crate::seccomp::install_with(ThreadKind::Main, allow).map_err(io::Error::other)?;
        }
        let reason = event_loop::run_until_exit(&parts.exit, &parts.signals, subscribers);
        drop(raw);
        Self::shut_down(parts);
        reason
    }

    /// Flushes the console and the hint log (with the final counters) and
    /// removes the API socket. The VM's memory and KVM objects are left to
    /// the process's exit: vCPU threads may still be inside `KVM_RUN`.
    fn shut_down(parts: VmParts) {
        if let Some(active) = &parts.api_connections {
            // The request that ended the VM (a stopping snapshot) is still
            // being answered.
            let deadline = Instant::now() + API_DRAIN;
            while active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = io::stdout().flush();
        let counters = parts.hint_counters.snapshot();
        lock(&parts.hint_log).finish(&counters);
        lock(&parts.controller).close_log();
        if parts.log_counters || counters.messages > 0 {
            match serde_json::to_string(&counters) {
                Ok(c) => log::info!("perf-hint counters: {c}"),
                Err(e) => log::warn!("perf-hint counters: {e}"),
            }
        }
        if let Some(path) = &parts.api_sock {
            // Clients connecting from now on get "no such file", not a dead socket.
            let _ = std::fs::remove_file(path);
        }
        std::mem::forget(parts.kvm_vm);
        std::mem::forget(parts.mem);
    }
}

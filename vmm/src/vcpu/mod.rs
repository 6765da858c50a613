//! vCPUs: per-vCPU setup (CPUID, MSRs, registers, LAPIC) and the run loop
//! that dispatches port-I/O and MMIO exits to the buses and turns fatal
//! exits into an [`ExitReason`].

use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestAddress;

pub mod state;

pub use state::VcpuState;

use crate::arch::{cpuid, lapic, msrs, regs};
use crate::devices::boot_timer::BootTimes;
use crate::devices::bus::Bus;
use crate::exit::{ExitNotifier, ExitReason};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        index: u32,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM accepted only {set} of {total} boot MSRs")]
    Msrs {
        index: u32,
        set: usize,
        total: usize,
    },
    #[error("vCPU {index}: KVM refused the saved value of MSR {msr:#x}")]
    MsrRefused { index: u32, msr: u32 },
}

/// What a vCPU needs from the VM to run.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: ExitNotifier,
    pub times: Arc<BootTimes>,
    /// The MSRs a snapshot saves (`KVM_GET_MSR_INDEX_LIST`).
    pub msr_indices: Arc<[u32]>,
}

pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
    ctx: VcpuContext,
    gate: Arc<Gate>,
}

/// Whether a vCPU may enter `KVM_RUN`. perfvmm closes the gate of a vCPU
/// the guest ejected and kicks its thread out of `KVM_RUN` (the vCPU
/// actuator, `actuators/vcpus.rs`); the thread then waits here until perfvmm
/// enables the vCPU's slot again. A parked vCPU therefore never runs, and a
/// guest cannot restart it with INIT/SIPI: the IPIs stay pending in its
/// LAPIC until perfvmm lets it run.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    /// The vCPU's thread is waiting at the closed gate.
    holding: bool,
    save: Save,
}

/// A snapshot's request for the vCPU's state, which its own thread answers.
#[derive(Debug, Default)]
enum Save {
    #[default]
    None,
    Wanted,
    Taken,
    Done(Result<Box<VcpuState>, String>),
}

/// Why [`Gate::pass`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// The gate is open: run the vCPU.
    Run,
    /// The gate is closed and a snapshot wants the vCPU's state.
    Save,
}

impl Gate {
    /// Closes the gate: the vCPU stops at its next pass.
    pub fn close(&self) {
        lock(&self.state).closed = true;
    }

    /// Opens the gate and wakes a vCPU waiting at it.
    pub fn open(&self) {
        lock(&self.state).closed = false;
        self.changed.notify_all();
    }

    /// Closed, with the vCPU's thread waiting at it (outside `KVM_RUN`).
    pub fn holds(&self) -> bool {
        let s = lock(&self.state);
        s.closed && s.holding
    }

    /// Closed, whether or not the vCPU has reached it yet.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Returns once the gate is open (at once if it is), or when a save is
    /// asked for while it is closed.
    pub fn pass(&self) -> Pass {
        let mut s = lock(&self.state);
        while s.closed {
            if matches!(s.save, Save::Wanted) {
                s.save = Save::Taken;
                return Pass::Save;
            }
            s.holding = true;
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.holding = false;
        Pass::Run
    }

    /// Closes the gate and asks the vCPU's thread for its state; returns
    /// whether the gate was closed before (a parked vCPU). The caller
    /// kicks the thread out of `KVM_RUN` until [`Gate::saved`] answers.
    pub fn request_save(&self) -> bool {
        let mut s = lock(&self.state);
        let was_closed = s.closed;
        s.closed = true;
        s.save = Save::Wanted;
        drop(s);
        self.changed.notify_all();
        was_closed
    }

    /// The vCPU's thread hands over its state.
    fn deliver(&self, r: Result<VcpuState, String>) {
        lock(&self.state).save = Save::Done(r.map(Box::new));
        self.changed.notify_all();
    }

    /// The state asked for, once delivered; `None` if it has not come
    /// within `wait`.
    pub fn saved(&self, wait: std::time::Duration) -> Option<Result<Box<VcpuState>, String>> {
        let s = lock(&self.state);
        let (mut s, _) = self
            .changed
            .wait_timeout_while(s, wait, |s| !matches!(s.save, Save::Done(_)))
            .unwrap_or_else(|p| p.into_inner());
        match std::mem::take(&mut s.save) {
            Save::Done(r) => Some(r),
            other => {
                s.save = other;
                None
            }
        }
    }
}

/// Whether `rip` and `cr0` are those of an x86 vCPU just out of reset (or
/// INIT): the reset vector's offset and protection and paging off.
fn is_reset_state(rip: u64, cr0: u64) -> bool {
    const CR0_PE: u64 = 1;
    const CR0_PG: u64 = 1 << 31;
    rip == 0xfff0 && cr0 & (CR0_PE | CR0_PG) == 0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vcpu {
    /// Where the guest was when it crashed, for the bug report.
    fn log_crash_state(&self) {
        let (Ok(r), Ok(sr)) = (self.fd.get_regs(), self.fd.get_sregs()) else {
            return;
        };
        log::error!(
            "vCPU {}: triple fault at rip={:#x} rsp={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} \
             idt={:#x}+{:#x} gdt={:#x}+{:#x} efer={:#x}{}",
            self.index,
            r.rip,
            r.rsp,
            sr.cr0,
            sr.cr2,
            sr.cr3,
            sr.cr4,
            sr.idt.base,
            sr.idt.limit,
            sr.gdt.base,
            sr.gdt.limit,
            sr.efer,
            if is_reset_state(r.rip, sr.cr0) {
                " (the state of a vCPU just reset: on AMD, KVM resets a vCPU after a triple \
                 fault, so these registers do not say where it crashed)"
            } else {
                ""
            }
        );
    }

    /// vCPU `index`, which enters `KVM_RUN` only through `gate`.
    pub fn new(fd: VcpuFd, index: u32, ctx: VcpuContext, gate: Arc<Gate>) -> Self {
        Self {
            fd,
            index,
            ctx,
            gate,
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    fn kvm<T>(&self, what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Kvm {
            index: self.index,
            what,
            source,
        })
    }

    /// Sets the CPUID perfvmm's template gives vCPU `index`.
    pub fn configure_cpuid(&self, supported: &CpuId, max_vcpus: u32) -> Result<(), VcpuError> {
        let mut cpuid = supported.clone();
        cpuid::configure(&mut cpuid, self.index, max_vcpus);
        self.kvm("KVM_SET_CPUID2", self.fd.set_cpuid2(&cpuid))
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; for the boot vCPU also the registers
    /// that enter the kernel at `entry`.
    pub fn configure(
        &self,
        supported: &CpuId,
        max_vcpus: u32,
        entry: Option<GuestAddress>,
    ) -> Result<(), VcpuError> {
        self.configure_cpuid(supported, max_vcpus)?;

        let msrs = msrs::boot_msrs();
        let set = self.kvm("KVM_SET_MSRS", self.fd.set_msrs(&msrs))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                index: self.index,
                set,
                total: msrs.as_slice().len(),
            });
        }
        self.kvm("KVM_SET_FPU", self.fd.set_fpu(&regs::boot_fpu()))?;

        let mut lapic_state = self.kvm("KVM_GET_LAPIC", self.fd.get_lapic())?;
        lapic::configure_lint(&mut lapic_state);
        self.kvm("KVM_SET_LAPIC", self.fd.set_lapic(&lapic_state))?;

        if let Some(entry) = entry {
            let sregs = self.kvm("KVM_GET_SREGS", self.fd.get_sregs())?;
            self.kvm("KVM_SET_SREGS", self.fd.set_sregs(&regs::boot_sregs(sregs)))?;
            self.kvm("KVM_SET_REGS", self.fd.set_regs(&regs::boot_regs(entry.0)))?;
        }
        Ok(())
    }

    /// Restores `state` (saved by [`Vcpu::save_state`] of another process)
    /// onto this new vCPU, whose CPUID [`Vcpu::configure_cpuid`] has set.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuError> {
        state::restore(&self.fd, state)
    }

    /// The vCPU's state, read by its own thread outside `KVM_RUN`. An exit
    /// the run loop has handled is completed first: a port or MMIO read's
    /// value reaches the guest's register only on the next `KVM_RUN`, which
    /// `immediate_exit` makes return before the guest runs.
    fn save_state(&mut self) -> Result<VcpuState, String> {
        self.fd.set_kvm_immediate_exit(1);
        let completed = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match completed {
            Err(e) if e.errno() == libc::EINTR => {}
            Ok(()) => {}
            Err(e) => {
                return Err(format!(
                    "vCPU {}: KVM_RUN to complete an exit: {e}",
                    self.index
                ))
            }
        }
        state::save(&self.fd, self.index, &self.ctx.msr_indices).map_err(|e| e.to_string())
    }

    /// Runs the vCPU until the VM must stop; reports why through the notifier.
    pub fn run(mut self) {
        if self.index == 0 {
            self.ctx.times.mark_first_instruction();
        }
        let reason = loop {
            if self.gate.pass() == Pass::Save {
                let r = self.save_state();
                self.gate.deliver(r);
                continue;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.ctx.pio.read(u64::from(port), data) {
                        // Nothing decodes this port: the bus floats high.
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !self.ctx.pio.write(u64::from(port), data) {
                        log::trace!("vCPU {}: unhandled write to port {port:#x}", self.index);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.ctx.mmio.read(addr, data) {
                        data.fill(0);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.ctx.mmio.write(addr, data);
                }
                Ok(VcpuExit::Shutdown) => {
                    self.log_crash_state();
                    break ExitReason::TripleFault;
                }
                Ok(VcpuExit::InternalError) => {
                    break ExitReason::InternalError(format!("vCPU {}", self.index))
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    break ExitReason::InternalError(format!(
                        "vCPU {}: VM entry failed (hardware reason {reason:#x}, cpu {cpu})",
                        self.index
                    ))
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => break ExitReason::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => break ExitReason::Reset,
                    other => {
                        break ExitReason::InternalError(format!("system event {other}"));
                    }
                },
                Ok(VcpuExit::Hlt) => {
                    // The in-kernel irqchip handles HLT; seeing it means the
                    // vCPU can never wake again.
                    break ExitReason::InternalError(format!("vCPU {} halted", self.index));
                }
                Ok(other) => log::debug!("vCPU {}: ignored exit {other:?}", self.index),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    break ExitReason::InternalError(format!("vCPU {}: KVM_RUN: {e}", self.index))
                }
            }
        };
        self.ctx.exit.notify(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_closed_gate_holds_its_vcpu_until_opened() {
        let gate = Arc::new(Gate::default());
        gate.pass();
        gate.close();
        assert!(gate.is_closed() && !gate.holds(), "closed, not yet reached");
        let g = gate.clone();
        let passed = std::thread::spawn(move || {
            g.pass();
            true
        });
        for _ in 0..200 {
            if gate.holds() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(gate.holds(), "the thread waits at the gate");
        assert!(!passed.is_finished());
        gate.open();
        assert!(passed.join().unwrap());
        assert!(!gate.holds() && !gate.is_closed());
    }

    #[test]
    fn a_vcpu_just_reset_is_told_from_one_that_crashed_running() {
        // What perfvmm read after a nested guest's triple fault (AMD).
        assert!(is_reset_state(0xfff0, 0x10));
        assert!(is_reset_state(0xfff0, 0x6000_0010));
        // A kernel's state: protected mode and paging on.
        assert!(!is_reset_state(0xffff_ffff_8100_0000, 0x8005_0033));
        // Real mode elsewhere than the reset vector.
        assert!(!is_reset_state(0x7c00, 0x10));
    }
}

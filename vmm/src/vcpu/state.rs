//! A vCPU's complete state as KVM holds it, for snapshots and live
//! migration: registers, FPU and extended state, LAPIC, MSRs, pending
//! events and run state. Saved by the vCPU's own thread once it has left
//! `KVM_RUN` for good (see [`super::Gate::request_save`]); restored on a
//! new vCPU before its thread first runs it.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::VcpuError;

/// Everything KVM keeps of one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u32,
    /// perfvmm had parked it (the guest ejected it): it stays parked.
    /// Set by the snapshot, which knows; the vCPU's thread does not.
    pub parked: bool,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("index", &self.index)
            .field("parked", &self.parked)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

fn kvm<T>(index: u32, what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuError> {
    r.map_err(|source| VcpuError::Kvm {
        index,
        what,
        source,
    })
}

/// Reads the state of vCPU `index` from `fd`; `msr_indices` are the MSRs
/// KVM lists as saveable (`KVM_GET_MSR_INDEX_LIST`).
pub fn save(fd: &VcpuFd, index: u32, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
    // The order KVM's documentation asks for: MP state first, events last.
    Ok(VcpuState {
        index,
        parked: false,
        mp_state: kvm(index, "KVM_GET_MP_STATE", fd.get_mp_state())?,
        regs: kvm(index, "KVM_GET_REGS", fd.get_regs())?,
        sregs: kvm(index, "KVM_GET_SREGS", fd.get_sregs())?,
        xsave: kvm(index, "KVM_GET_XSAVE", fd.get_xsave())?,
        xcrs: kvm(index, "KVM_GET_XCRS", fd.get_xcrs())?,
        debugregs: kvm(index, "KVM_GET_DEBUGREGS", fd.get_debug_regs())?,
        lapic: kvm(index, "KVM_GET_LAPIC", fd.get_lapic())?,
        msrs: save_msrs(fd, index, msr_indices)?,
        events: kvm(index, "KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?,
    })
}

/// Every MSR of `indices` KVM can read; KVM stops a batch at the first it
/// cannot (some it lists depend on CPUID), which is skipped.
fn save_msrs(fd: &VcpuFd, index: u32, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = msr_list(index, &entries)?;
        let n = kvm(index, "KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
        rest = &rest[(n + 1).min(chunk.len())..];
    }
    Ok(out)
}

fn msr_list(index: u32, entries: &[kvm_msr_entry]) -> Result<Msrs, VcpuError> {
    Msrs::from_entries(entries).map_err(|_| VcpuError::Msrs {
        index,
        set: 0,
        total: entries.len(),
    })
}

/// Writes `state` into a new vCPU whose CPUID is already set. Every value
/// came from a file: KVM checks each one and refuses what its vCPU could
/// not hold, and each refusal is an error.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuError> {
    let i = state.index;
    kvm(i, "KVM_SET_MP_STATE", fd.set_mp_state(state.mp_state))?;
    kvm(i, "KVM_SET_REGS", fd.set_regs(&state.regs))?;
    kvm(i, "KVM_SET_SREGS", fd.set_sregs(&state.sregs))?;
    // SAFETY: `kvm_xsave` is the legacy 4 KiB layout, and perfvmm never asks
    // for dynamically enabled XSAVE features, so KVM reads no more than it.
    kvm(i, "KVM_SET_XSAVE", unsafe { fd.set_xsave(&state.xsave) })?;
    kvm(i, "KVM_SET_XCRS", fd.set_xcrs(&state.xcrs))?;
    kvm(i, "KVM_SET_DEBUGREGS", fd.set_debug_regs(&state.debugregs))?;
    kvm(i, "KVM_SET_LAPIC", fd.set_lapic(&state.lapic))?;
    for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let n = kvm(i, "KVM_SET_MSRS", fd.set_msrs(&msr_list(i, chunk)?))?;
        if n < chunk.len() {
            return Err(VcpuError::MsrRefused {
                index: i,
                msr: chunk[n].index,
            });
        }
    }
    kvm(i, "KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&state.events))?;
    Ok(())
}

//! Creates vCPUs and resizes the running VM through ACPI CPU hotplug.
//!
//! Growing enables the lowest free vCPU slots: a slot never used gets a new
//! KVM vCPU and thread; a slot used before (its vCPU ejected and parked,
//! since KVM cannot destroy a vCPU) is simply re-enabled, and the guest's
//! INIT/SIPI wakes the parked vCPU. Shrinking asks the guest to eject the
//! highest slots; vCPU 0 is never removed.

use std::sync::{Arc, Mutex};
use std::thread;

use kvm_bindings::CpuId;
use kvm_ioctls::VmFd;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::devices::cpu_hotplug::CpuStates;
use crate::vcpu::{Vcpu, VcpuContext, VcpuError};

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("KVM_CREATE_VCPU for vCPU {0}: {1}")]
    Create(u32, kvm_ioctls::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot raise the GED interrupt: {0}")]
    Interrupt(std::io::Error),
}

pub struct VcpuManager {
    vm: Arc<VmFd>,
    supported: CpuId,
    max: u32,
    ctx: VcpuContext,
    created: Vec<bool>,
    states: Arc<Mutex<CpuStates>>,
    ged: EventFd,
    /// Called with (vCPU index, thread id) when a vCPU thread starts (pinning).
    on_start: Arc<dyn Fn(u32) + Send + Sync>,
}

impl VcpuManager {
    pub fn new(
        vm: Arc<VmFd>,
        supported: CpuId,
        max: u32,
        ctx: VcpuContext,
        states: Arc<Mutex<CpuStates>>,
        ged: EventFd,
        on_start: Arc<dyn Fn(u32) + Send + Sync>,
    ) -> Self {
        Self {
            vm,
            supported,
            max,
            ctx,
            created: vec![false; max as usize],
            states,
            ged,
            on_start,
        }
    }

    fn create(&mut self, index: u32, entry: Option<GuestAddress>) -> Result<Vcpu, ResizeError> {
        let fd = self
            .vm
            .create_vcpu(u64::from(index))
            .map_err(|e| ResizeError::Create(index, e))?;
        let vcpu = Vcpu::new(fd, index, self.ctx.clone());
        vcpu.configure(&self.supported, self.max, entry)?;
        self.created[index as usize] = true;
        Ok(vcpu)
    }

    /// Creates the boot vCPUs (not yet running).
    pub fn create_boot(
        &mut self,
        boot: u32,
        entry: GuestAddress,
    ) -> Result<Vec<Vcpu>, ResizeError> {
        (0..boot)
            .map(|i| self.create(i, (i == 0).then_some(entry)))
            .collect()
    }

    pub fn spawn(&self, vcpu: Vcpu) -> Result<(), ResizeError> {
        let on_start = self.on_start.clone();
        thread::Builder::new()
            .name(format!("vcpu{}", vcpu.index()))
            .spawn(move || {
                on_start(vcpu.index());
                vcpu.run()
            })
            .map(|_| ())
            .map_err(ResizeError::Thread)
    }

    /// vCPUs enabled and not being removed.
    pub fn count(&self) -> u32 {
        lock(&self.states).enabled_count()
    }

    /// Asks the guest to go to `to` vCPUs (1..=max).
    pub fn resize(&mut self, to: u32) -> Result<(), ResizeError> {
        let to = to.clamp(1, self.max);
        let mut added = Vec::new();
        {
            // One update of all slots, so the guest's scan never sees half of it.
            let mut st = lock(&self.states);
            let mut count = st.enabled_count();
            for (i, slot) in st.slots.iter_mut().enumerate() {
                if count >= to {
                    break;
                }
                if slot.enabled && slot.removing {
                    // A pending removal is simply withdrawn.
                    slot.removing = false;
                    count += 1;
                } else if !slot.enabled {
                    slot.enabled = true;
                    slot.inserting = true;
                    count += 1;
                    if !self.created[i] {
                        added.push(i as u32);
                    }
                }
            }
            // vCPU 0 is never removed.
            for slot in st.slots.iter_mut().skip(1).rev() {
                if count <= to {
                    break;
                }
                if slot.enabled && !slot.removing {
                    slot.removing = true;
                    slot.inserting = false;
                    count -= 1;
                }
            }
        }
        for i in added {
            let vcpu = self.create(i, None)?;
            self.spawn(vcpu)?;
        }
        self.ged.write(1).map_err(ResizeError::Interrupt)
    }

    /// vCPUs the guest ejected since the last call (now parked).
    pub fn take_ejected(&self) -> Vec<u32> {
        std::mem::take(&mut lock(&self.states).ejected)
    }
}

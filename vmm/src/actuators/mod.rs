//! The last stage of the hint path: what changes the VM when the controller
//! applies a decision. vCPUs through ACPI CPU hotplug ([`vcpus`]), memory
//! through the balloon and virtio-mem ([`memory`]), and where vCPU threads
//! and guest memory sit on the host ([`placement`]). Each actuator sets a
//! device's target and returns at once; the guest catches up.

pub mod memory;
pub mod placement;
pub mod vcpus;

pub use memory::{MemoryManager, MemoryResizeError, MemoryStatus};
pub use vcpus::{ResizeError, VcpuManager};

/// What the controller asks of the vCPU actuator.
pub trait VcpuActuator: Send {
    /// Asks the guest to go to `to` vCPUs; returns once the request is made.
    fn resize(&mut self, to: u32) -> Result<(), ResizeError>;
    /// vCPUs the guest ejected since the last call.
    fn take_ejected(&mut self) -> Vec<u32>;
    /// vCPUs enabled and not being removed.
    fn count(&self) -> u32;
    /// vCPUs the guest runs: enabled and started by the guest (vCPUs asked
    /// to go count until the guest ejects them).
    fn in_guest(&mut self) -> u32;
    /// Total time the vCPU threads have run: its growth over wall time is
    /// how many vCPUs were busy (the reactive mode's usage).
    fn run_time(&self) -> std::time::Duration;
}

/// What the controller asks of the memory actuator.
pub trait MemoryActuator: Send {
    /// Sets the guest's memory to `bytes`; returns once the devices' targets are set.
    fn resize(&mut self, bytes: u64) -> Result<(), MemoryResizeError>;
    /// Periodic work; returns the memory the guest reports in use, if fresh.
    fn tick(&mut self) -> Option<u64>;
    /// Where the guest's memory stands.
    fn status(&self) -> MemoryStatus;
    /// Memory the guest has taken: boot size − balloon + plugged.
    fn in_guest(&self) -> u64 {
        self.status().guest_bytes
    }
}

impl VcpuActuator for VcpuManager {
    fn resize(&mut self, to: u32) -> Result<(), ResizeError> {
        VcpuManager::resize(self, to)
    }

    fn take_ejected(&mut self) -> Vec<u32> {
        VcpuManager::take_ejected(self)
    }

    fn count(&self) -> u32 {
        VcpuManager::count(self)
    }

    fn in_guest(&mut self) -> u32 {
        VcpuManager::running_in_guest(self)
    }

    fn run_time(&self) -> std::time::Duration {
        VcpuManager::run_time(self)
    }
}

impl MemoryActuator for MemoryManager {
    fn resize(&mut self, bytes: u64) -> Result<(), MemoryResizeError> {
        MemoryManager::resize(self, bytes)
    }

    fn tick(&mut self) -> Option<u64> {
        MemoryManager::tick(self)
    }

    fn status(&self) -> MemoryStatus {
        MemoryManager::status(self)
    }
}

/// A decision an actuator could not carry out.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    #[error(transparent)]
    Vcpus(#[from] ResizeError),
    #[error(transparent)]
    Memory(#[from] MemoryResizeError),
}

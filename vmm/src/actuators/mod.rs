//! The last stage of the hint path: what changes the VM when the controller
//! applies a decision. vCPUs through ACPI CPU hotplug ([`vcpus`]), memory
//! through the balloon and virtio-mem ([`memory`]), and where vCPU threads
//! and guest memory sit on the host ([`placement`]). Each actuator sets a
//! device's target and returns at once; the guest catches up.

pub mod memory;
pub mod placement;
pub mod vcpus;

pub use memory::{MemoryManager, MemoryResizeError};
pub use vcpus::{ResizeError, VcpuManager};

/// A decision an actuator could not carry out.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    #[error(transparent)]
    Vcpus(#[from] ResizeError),
    #[error(transparent)]
    Memory(#[from] MemoryResizeError),
}

//! perfvmm: a minimal KVM virtual machine monitor built on the rust-vmm
//! crates, which turns the guest's resource hints into allocation
//! decisions. `docs/architecture.md` draws how the modules fit together;
//! they read in the order a hint travels:
//!
//! * [`devices`]: the emulated devices (the perf-hint device model itself
//!   is the `virtio-perf-device` crate, behind the `virtio-mmio` transport);
//! * [`control`]: the device's sink, the controller, the control API;
//! * [`policy`]: the `perfvmm-policy` crate, pure;
//! * [`actuators`]: vCPU and memory resize, placement;
//!
//! and around them the machine: [`builder`] composes a VM from [`boot`],
//! [`acpi`], [`memory`], [`vcpu`] and the above (or restores one a
//! [`snapshot`] saved); [`vm`] runs it.

pub use perfvmm_policy as policy;

pub mod acpi;
pub mod actuators;
pub mod aml;
pub mod arch;
pub mod boot;
pub mod builder;
pub mod cli;
pub mod control;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod layout;
pub mod memory;
pub mod memstat;
pub mod migration;
pub mod predict;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

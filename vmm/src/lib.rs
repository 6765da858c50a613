//! perfvmm: a minimal KVM virtual machine monitor built on the rust-vmm
//! crates. See `docs/architecture.md` for how the modules fit together.

pub mod acpi;
pub mod api;
pub mod arch;
pub mod boot;
pub mod cli;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod layout;
pub mod memory;
pub mod memory_manager;
pub mod memstat;
pub mod placement;
pub mod policy;
pub mod vcpu;
pub mod vcpu_manager;
pub mod vm;

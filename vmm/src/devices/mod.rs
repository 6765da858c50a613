//! Emulated devices and the buses they sit on. One device per module.

pub mod balloon;
pub mod boot_timer;
pub mod bus;
pub mod cpu_hotplug;
pub mod perf_hint;
pub mod power;
pub mod serial;
pub mod virtio_mem;
pub mod virtio_mmio;

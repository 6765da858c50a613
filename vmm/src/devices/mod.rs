//! Emulated devices and the buses they sit on, one module per device. A
//! device knows nothing of the policy or the controller: the perf-hint
//! device hands hints to a sink it is given, the others expose targets the
//! actuators set.

pub mod boot_timer;
pub mod bus;
pub mod cpu_hotplug;
pub mod i8042;
pub mod power;
pub mod serial;
pub mod virtio;

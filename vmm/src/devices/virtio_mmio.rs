//! Glue between a virtio-mmio transport and perfvmm: the MMIO bus entry,
//! the irqfd interrupt, and the ioeventfd the guest kicks to notify queues.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_perf_device::mmio::{reg, MmioTransport};
use virtio_perf_device::virtio::{Interrupt, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, BusDevice};
use crate::acpi::MmioDeviceInfo;

/// A device's interrupt: an eventfd registered with KVM as an irqfd.
pub struct IrqFdInterrupt(pub EventFd);

impl Interrupt for IrqFdInterrupt {
    fn trigger(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("virtio: cannot raise interrupt: {e}");
        }
    }
}

/// A virtio-mmio transport as the MMIO bus sees it.
pub struct MmioSlot<D: VirtioDevice>(pub Arc<Mutex<MmioTransport<D>>>);

impl<D: VirtioDevice> BusDevice for MmioSlot<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).write(offset, data);
    }
}

/// The KVM side of one virtio-mmio slot: an irqfd for the slot's interrupt
/// and an ioeventfd on its `QueueNotify` register.
pub struct SlotFds {
    pub irq: EventFd,
    pub notify: EventFd,
}

impl SlotFds {
    pub fn register(vm: &VmFd, slot: &MmioDeviceInfo) -> Result<Self, kvm_ioctls::Error> {
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(kvm_ioctls::Error::from);
        let irq = eventfd()?;
        vm.register_irqfd(&irq, slot.irq)?;
        let notify = eventfd()?;
        let addr = IoEventAddress::Mmio(slot.base + reg::QUEUE_NOTIFY);
        vm.register_ioevent(&notify, &addr, NoDatamatch)?;
        Ok(SlotFds { irq, notify })
    }
}

//! The virtio devices perfvmm emulates besides the perf-hint device
//! (`balloon`, `mem`), and the glue that puts any virtio-mmio transport in
//! front of the guest: its MMIO bus entry, its irqfd interrupt, the
//! ioeventfd the guest kicks, and the event-loop handler for that kick.

pub mod balloon;
pub mod mem;

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_mmio::transport::reg;
use virtio_mmio::{Interrupt, MmioTransport, VirtioDevice};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, BusDevice};
use crate::layout::MmioDeviceInfo;

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

/// Runs a device's queues when the guest kicks its notify ioeventfd.
pub struct QueueHandler<D: VirtioDevice> {
    notify: EventFd,
    transport: Arc<Mutex<MmioTransport<D>>>,
}

impl<D: VirtioDevice> QueueHandler<D> {
    pub fn new(notify: EventFd, transport: Arc<Mutex<MmioTransport<D>>>) -> Self {
        QueueHandler { notify, transport }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for QueueHandler<D> {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The ioeventfd does not say which queue was kicked: run them all.
        let _ = self.notify.read();
        let mut t = lock(&self.transport);
        t.notify_all();
        if t.has_more_work() {
            // Come back once the loop has served its other events.
            let _ = self.notify.write(1);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.notify, EventSet::IN)) {
            log::error!("cannot watch a virtio queue notification: {e:?}");
        }
    }
}

//! KVM's memory slots: which the VM has, and KVM's log of the pages the
//! guest writes in them (`KVM_GET_DIRTY_LOG`), which live migration reads.
//!
//! Every slot perfvmm registers goes through one [`KvmMemory`]: guest RAM's
//! at boot and virtio-mem's as the guest plugs memory. While the log is on,
//! each slot carries `KVM_MEM_LOG_DIRTY_PAGES`, those added meanwhile too,
//! so a migration never misses a slot the guest plugged half-way.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;

/// One KVM memory slot: guest-physical start, length, host address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub gpa: u64,
    pub len: u64,
    pub host: u64,
}

#[derive(Default)]
struct Table {
    slots: BTreeMap<u32, Slot>,
    logging: bool,
}

/// The VM's KVM memory slots.
#[derive(Default)]
pub struct KvmMemory {
    table: Mutex<Table>,
}

fn register(vm: &VmFd, index: u32, s: Slot, logging: bool) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot: index,
        guest_phys_addr: s.gpa,
        memory_size: s.len,
        userspace_addr: s.host,
        flags: if logging { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
    };
    // SAFETY: every slot in the table was added through `KvmMemory::set`,
    // whose caller vouched that its host range is a mapping that outlives
    // the VM; a zero length deletes the slot.
    unsafe { vm.set_user_memory_region(region) }
}

impl KvmMemory {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers slot `index` (or replaces it), with the dirty log on when
    /// it is on for the others.
    ///
    /// # Safety
    ///
    /// `[s.host, s.host + s.len)` must be a live mapping of the process that
    /// stays mapped as long as the VM exists: the guest reads and writes it.
    pub unsafe fn set(&self, vm: &VmFd, index: u32, s: Slot) -> Result<(), kvm_ioctls::Error> {
        let mut t = self.table();
        register(vm, index, s, t.logging)?;
        t.slots.insert(index, s);
        Ok(())
    }

    /// Deletes slot `index`; what the log had for it is dropped with it.
    pub fn remove(&self, vm: &VmFd, index: u32) -> Result<(), kvm_ioctls::Error> {
        let mut t = self.table();
        if let Some(s) = t.slots.get(&index).copied() {
            register(vm, index, Slot { len: 0, ..s }, false)?;
            t.slots.remove(&index);
        }
        Ok(())
    }

    /// Turns KVM's dirty log on or off for every slot. Turning it on
    /// starts a clean log: pages count from here on.
    pub fn set_logging(&self, vm: &VmFd, on: bool) -> Result<(), kvm_ioctls::Error> {
        let mut t = self.table();
        let slots: Vec<(u32, Slot)> = t.slots.iter().map(|(&i, &s)| (i, s)).collect();
        for (i, s) in &slots {
            if let Err(e) = register(vm, *i, *s, on) {
                // Leave every slot as it was.
                for (j, s) in slots.iter().take_while(|(j, _)| j != i) {
                    let _ = register(vm, *j, *s, t.logging);
                }
                return Err(e);
            }
        }
        t.logging = on;
        Ok(())
    }

    /// Reads and clears KVM's log of every slot: `f` gets each slot's
    /// guest-physical start and its bitmap, one bit per 4 KiB page.
    pub fn take_dirty(
        &self,
        vm: &VmFd,
        mut f: impl FnMut(u64, &[u64]),
    ) -> Result<(), kvm_ioctls::Error> {
        let t = self.table();
        if !t.logging {
            return Err(kvm_ioctls::Error::new(libc::ENOENT));
        }
        for (&i, s) in &t.slots {
            let bits = vm.get_dirty_log(i, s.len as usize)?;
            f(s.gpa, &bits);
        }
        Ok(())
    }

    /// The slots, in KVM's numbering.
    pub fn slots(&self) -> Vec<(u32, Slot)> {
        self.table().slots.iter().map(|(&i, &s)| (i, s)).collect()
    }
}

//! The ACPI CPU hotplug controller: two 32-bit MMIO registers the DSDT's
//! `\_SB.CPUS` methods use (their AML is [`aml::CpuHotplugAml`], beside the
//! registers it names).
//!
//! * `CSEL` (offset 0): selects a vCPU.
//! * `CSTS` (offset 4): reads the selected vCPU's state (bit 0 enabled,
//!   bit 1 inserting, bit 2 removing); writing bit 1 or 2 acknowledges an
//!   insert or removal request, writing bit 3 ejects the vCPU (its `_EJ0`).
//!
//! perfvmm asks the guest to add or remove a vCPU by setting *inserting* or
//! *removing* and raising the GED interrupt; the guest's `CSCN` method then
//! notifies the processor devices.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::bus::{lock, BusDevice};

pub mod aml;

/// Register offsets and the window's length.
pub const CSEL: u64 = 0;
pub const CSTS: u64 = 4;
pub const REGS_LEN: u64 = 8;

/// `CSTS` bits (the AML names them `CPEN`, `CINS`, `CRMV`, `CEJ0`).
pub const STS_ENABLED: u32 = 1 << 0;
pub const STS_INSERTING: u32 = 1 << 1;
pub const STS_REMOVING: u32 = 1 << 2;
pub const STS_EJECT: u32 = 1 << 3;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSlot {
    pub enabled: bool,
    /// The guest is told to add this vCPU (until its scan acknowledges).
    pub inserting: bool,
    /// The guest is told to remove this vCPU (until its scan acknowledges).
    pub removing: bool,
    /// perfvmm wants this vCPU gone, until the guest ejects it or perfvmm
    /// changes its mind. Only such a vCPU may be ejected.
    pub remove_requested: bool,
    /// The guest acknowledged a removal request: its eject is accepted even
    /// if perfvmm withdrew the request since (the guest may already have
    /// taken the vCPU offline).
    pub eject_allowed: bool,
}

/// vCPU states shared between the controller and perfvmm (and kept by
/// snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStates {
    pub slots: Vec<CpuSlot>,
    /// vCPUs the guest ejected, not yet seen by perfvmm.
    pub ejected: Vec<u32>,
    /// Ejects refused: vCPU 0, or a vCPU perfvmm did not ask to remove.
    pub refused_ejects: u64,
    /// `CSEL`: the vCPU the guest selected.
    pub selected: u32,
}

impl CpuStates {
    /// Whether perfvmm has asked the guest to add or remove a vCPU and the
    /// guest has not acknowledged it yet.
    pub fn has_requests(&self) -> bool {
        self.slots.iter().any(|s| s.inserting || s.removing)
    }

    pub fn new(boot: u32, max: u32) -> Arc<Mutex<Self>> {
        let slots = (0..max)
            .map(|i| CpuSlot {
                enabled: i < boot,
                ..Default::default()
            })
            .collect();
        Arc::new(Mutex::new(CpuStates {
            slots,
            ejected: Vec::new(),
            refused_ejects: 0,
            selected: 0,
        }))
    }

    /// vCPUs enabled and not asked to go.
    pub fn enabled_count(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.enabled && !s.remove_requested)
            .count() as u32
    }
}

pub struct CpuHotplugController {
    states: Arc<Mutex<CpuStates>>,
}

impl CpuHotplugController {
    pub fn new(states: Arc<Mutex<CpuStates>>) -> Self {
        Self { states }
    }
}

impl BusDevice for CpuHotplugController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let st = lock(&self.states);
        let v = match offset {
            CSEL => st.selected,
            CSTS => st
                .slots
                .get(st.selected as usize)
                .map(|s| {
                    let bit = |set: bool, b: u32| if set { b } else { 0 };
                    bit(s.enabled, STS_ENABLED)
                        | bit(s.inserting, STS_INSERTING)
                        | bit(s.removing, STS_REMOVING)
                })
                .unwrap_or(0),
            _ => 0,
        };
        drop(st);
        let bytes = v.to_le_bytes();
        for (d, b) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *d = *b;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 4];
        for (d, s) in b.iter_mut().zip(data) {
            *d = *s;
        }
        let v = u32::from_le_bytes(b);
        match offset {
            CSEL => lock(&self.states).selected = v,
            CSTS => {
                let mut st = lock(&self.states);
                let sel = st.selected;
                let Some(slot) = st.slots.get_mut(sel as usize) else {
                    return;
                };
                if v & STS_INSERTING != 0 {
                    slot.inserting = false;
                }
                if v & STS_REMOVING != 0 && slot.removing {
                    slot.removing = false;
                    slot.eject_allowed = slot.remove_requested;
                }
                let may_eject = sel != 0 && (slot.remove_requested || slot.eject_allowed);
                if v & STS_EJECT != 0 && slot.enabled && may_eject {
                    *slot = CpuSlot::default();
                    st.ejected.push(sel);
                } else if v & STS_EJECT != 0 {
                    st.refused_ejects += 1;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(c: &mut CpuHotplugController, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn insert_acknowledge_remove_eject() {
        let states = CpuStates::new(1, 4);
        let mut c = CpuHotplugController::new(states.clone());
        assert_eq!(rd(&mut c, CSTS), STS_ENABLED);
        {
            let mut s = states.lock().unwrap();
            s.slots[2] = CpuSlot {
                enabled: true,
                inserting: true,
                ..Default::default()
            };
        }
        assert!(states.lock().unwrap().has_requests());
        c.write(CSEL, &2u32.to_le_bytes());
        assert_eq!(rd(&mut c, CSTS), STS_ENABLED | STS_INSERTING);
        c.write(CSTS, &STS_INSERTING.to_le_bytes());
        assert_eq!(rd(&mut c, CSTS), STS_ENABLED);
        assert!(!states.lock().unwrap().has_requests(), "acknowledged");
        // An eject perfvmm did not ask for is refused.
        c.write(CSTS, &STS_EJECT.to_le_bytes());
        assert_eq!(rd(&mut c, CSTS), STS_ENABLED);
        {
            let mut s = states.lock().unwrap();
            s.slots[2].removing = true;
            s.slots[2].remove_requested = true;
        }
        assert_eq!(states.lock().unwrap().enabled_count(), 1);
        c.write(CSTS, &STS_REMOVING.to_le_bytes());
        c.write(CSTS, &STS_EJECT.to_le_bytes());
        assert_eq!(rd(&mut c, CSTS), 0);
        assert_eq!(states.lock().unwrap().ejected, vec![2]);
        // vCPU 0 is never ejected.
        states.lock().unwrap().slots[0].remove_requested = true;
        c.write(CSEL, &0u32.to_le_bytes());
        c.write(CSTS, &STS_EJECT.to_le_bytes());
        assert_eq!(rd(&mut c, CSTS), STS_ENABLED);
        assert_eq!(states.lock().unwrap().refused_ejects, 2);
        // Out-of-range selections read 0 and ignore writes.
        c.write(CSEL, &99u32.to_le_bytes());
        assert_eq!(rd(&mut c, CSTS), 0);
        c.write(CSTS, &STS_EJECT.to_le_bytes());
    }
}

//! Port-I/O and MMIO buses: map a guest access to the device that owns the
//! address, with the offset into that device's range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a bus. Offsets are relative to the base the
/// device was inserted at, and always within its length.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {0:#x} has zero length")]
    ZeroLength(u64),
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A sorted map of non-overlapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let before = self.entries.range(..end).next_back();
        if let Some((b, e)) = before {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.entries.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= entry.len).then_some((entry, offset))
    }

    /// Reads from the device at `addr`; `false` when no device owns it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; `false` when no device owns it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device's state stays
/// usable even if a thread panicked while holding it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Probe::default()));
        bus.insert(a.clone(), 0x100, 0x10).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x104, &mut b));
        assert_eq!(b, [4, 4]);
        assert!(bus.write(0x10e, &[9, 9]));
        assert_eq!(a.lock().unwrap().last, Some((0xe, vec![9, 9])));
        // Straddling the end, before, after: unowned.
        assert!(!bus.write(0x10f, &[1, 2]));
        assert!(!bus.read(0xff, &mut b));
        assert!(!bus.read(0x110, &mut b));
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Probe::default())) as Arc<Mutex<dyn BusDevice>>;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(bus.insert(d(), 0x108, 0x10).is_err());
        assert!(bus.insert(d(), 0xf8, 0x10).is_err());
        assert!(bus.insert(d(), 0x110, 0x10).is_ok());
        assert!(bus.insert(d(), 0xf0, 0x10).is_ok());
        assert!(bus.insert(d(), 0x200, 0).is_err());
        assert!(bus.insert(d(), u64::MAX, 2).is_err());
    }
}

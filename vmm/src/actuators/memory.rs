//! Memory resize: splits a target size between the balloon (below the boot
//! size) and virtio-mem (above it, up to `--memory max=`), and refuses,
//! with a reason, what the guest's drivers cannot do. A request never waits
//! on the guest: the devices' targets are set and the guest catches up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use virtio_mmio::MmioTransport;

use crate::devices::bus::lock;
use crate::devices::virtio::balloon::{Balloon, BalloonCounters, GuestMemStats, PFN_SHIFT};
use crate::devices::virtio::mem::{VirtioMem, VirtioMemCounters};

pub type BalloonTransport = MmioTransport<Balloon>;
pub type VirtioMemTransport = MmioTransport<VirtioMem>;

/// How often the guest is asked for fresh memory statistics.
pub const STATS_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryResizeError {
    #[error(
        "growing to {0} MiB needs virtio-mem, and this VM has none \
         (start it with --memory SIZE,max=SIZE)"
    )]
    NoHotplugRegion(u64),
    #[error(
        "growing to {0} MiB needs virtio-mem, but the guest has not \
         activated its virtio-mem driver"
    )]
    NoVirtioMemDriver(u64),
    #[error(
        "shrinking to {0} MiB needs the balloon, but the guest has not \
         activated its virtio-balloon driver"
    )]
    NoBalloonDriver(u64),
}

/// Where the guest's memory stands; reported by the control API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryStatus {
    pub boot_bytes: u64,
    pub max_bytes: u64,
    pub balloon_driver: bool,
    pub balloon_target_bytes: u64,
    pub balloon_actual_bytes: u64,
    pub balloon: BalloonCounters,
    pub virtio_mem_driver: bool,
    pub virtio_mem_requested_bytes: u64,
    pub virtio_mem_plugged_bytes: u64,
    pub virtio_mem: Option<VirtioMemCounters>,
    /// What the guest has now: boot size − balloon + plugged.
    pub guest_bytes: u64,
    pub guest_stats: Option<GuestMemStats>,
    pub guest_stats_age_ms: Option<u64>,
}

/// How a memory size is reached from the boot size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Held in the balloon (below the boot size).
    pub balloon_bytes: u64,
    /// Plugged through virtio-mem (above the boot size).
    pub plug_bytes: u64,
}

/// Splits `target` between the balloon and virtio-mem: the balloon takes
/// what is below `boot`, virtio-mem adds what is above; never both.
pub fn split(boot: u64, target: u64) -> Split {
    Split {
        balloon_bytes: boot.saturating_sub(target),
        plug_bytes: target.saturating_sub(boot),
    }
}

pub struct MemoryManager {
    boot: u64,
    max: u64,
    balloon: Arc<Mutex<BalloonTransport>>,
    virtio_mem: Option<Arc<Mutex<VirtioMemTransport>>>,
}

impl MemoryManager {
    pub fn new(
        boot: u64,
        max: u64,
        balloon: Arc<Mutex<BalloonTransport>>,
        virtio_mem: Option<Arc<Mutex<VirtioMemTransport>>>,
    ) -> Self {
        MemoryManager {
            boot,
            max,
            balloon,
            virtio_mem,
        }
    }

    /// The balloon's and virtio-mem's transports, for snapshots.
    pub fn transports(
        &self,
    ) -> (
        Arc<Mutex<BalloonTransport>>,
        Option<Arc<Mutex<VirtioMemTransport>>>,
    ) {
        (self.balloon.clone(), self.virtio_mem.clone())
    }

    /// Sets the guest's memory to `target` bytes.
    pub fn resize(&self, target: u64) -> Result<(), MemoryResizeError> {
        let mib = target >> 20;
        let Split {
            balloon_bytes,
            plug_bytes,
        } = split(self.boot, target);
        if plug_bytes > 0 {
            let vm = self
                .virtio_mem
                .as_ref()
                .ok_or(MemoryResizeError::NoHotplugRegion(mib))?;
            if !lock(vm).is_activated() {
                return Err(MemoryResizeError::NoVirtioMemDriver(mib));
            }
        }
        {
            let mut b = lock(&self.balloon);
            let pages = u32::try_from(balloon_bytes >> PFN_SHIFT).unwrap_or(u32::MAX);
            if pages != b.device().target_pages() {
                if pages > 0 && !b.is_activated() {
                    return Err(MemoryResizeError::NoBalloonDriver(mib));
                }
                b.device_mut().set_target_pages(pages);
                b.config_changed();
            }
        }
        if let Some(vm) = &self.virtio_mem {
            let mut v = lock(vm);
            if v.device().requested() != plug_bytes {
                v.device_mut().set_requested(plug_bytes);
                v.config_changed();
            }
        }
        Ok(())
    }

    /// Periodic work: asks the guest for fresh statistics; returns the
    /// memory the VM must keep, when the guest has reported: its allocation
    /// less what the guest reports available. That includes what the
    /// guest's kernel reserves out of `MemTotal` (tens of MiB), which the
    /// guest's own "in use" figure leaves out.
    pub fn tick(&self) -> Option<u64> {
        let available = {
            let mut b = lock(&self.balloon);
            b.run_device(|d| d.request_stats(STATS_PERIOD));
            b.device()
                .stats()
                .filter(|(_, age)| *age < 4 * STATS_PERIOD)
                .and_then(|(s, _)| s.available_memory)?
        };
        Some(self.status().guest_bytes.saturating_sub(available))
    }

    pub fn status(&self) -> MemoryStatus {
        let b = lock(&self.balloon);
        let page = |p: u32| u64::from(p) << PFN_SHIFT;
        let stats = b.device().stats();
        let (vm_driver, requested, plugged, vm_counters) = match &self.virtio_mem {
            Some(v) => {
                let v = lock(v);
                (
                    v.is_activated(),
                    v.device().requested(),
                    v.device().plugged_size(),
                    Some(v.device().counters().clone()),
                )
            }
            None => (false, 0, 0, None),
        };
        let actual = page(b.device().actual_pages());
        MemoryStatus {
            boot_bytes: self.boot,
            max_bytes: self.max,
            balloon_driver: b.is_activated(),
            balloon_target_bytes: page(b.device().target_pages()),
            balloon_actual_bytes: actual,
            balloon: b.device().counters().clone(),
            virtio_mem_driver: vm_driver,
            virtio_mem_requested_bytes: requested,
            virtio_mem_plugged_bytes: plugged,
            virtio_mem: vm_counters,
            guest_bytes: (self.boot.saturating_sub(actual)).saturating_add(plugged),
            guest_stats: stats.map(|(s, _)| s.clone()),
            guest_stats_age_ms: stats.map(|(_, age)| age.as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mem::SlotMap;
    use virtio_mmio::device::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};
    use virtio_mmio::transport::reg;
    use virtio_mmio::{Interrupt, Mem, VirtioDevice};

    const MIB: u64 = 1 << 20;
    const BOOT: u64 = 512 * MIB;

    struct NoIrq;
    impl Interrupt for NoIrq {
        fn trigger(&self) {}
    }

    fn mem() -> Mem {
        Arc::new(crate::memory::create_guest_memory(4 * MIB, None).unwrap())
    }

    fn transport<D: VirtioDevice>(d: D) -> Arc<Mutex<MmioTransport<D>>> {
        Arc::new(Mutex::new(MmioTransport::new(d, mem(), Arc::new(NoIrq), 0)))
    }

    /// Brings the driver up to DRIVER_OK (no queues: enough to count as active).
    fn activate<D: VirtioDevice>(t: &Mutex<MmioTransport<D>>) {
        let mut t = lock(t);
        let w = |t: &mut MmioTransport<D>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(&mut t, reg::STATUS, ACKNOWLEDGE);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1 is bit 32
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        w(
            &mut t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(t.is_activated());
    }

    /// Maps and unmaps every slot asked for.
    struct AllSlots;

    impl SlotMap for AllSlots {
        fn map(&mut self, _: usize, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }

        fn unmap(&mut self, _: usize, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn manager(with_virtio_mem: bool) -> MemoryManager {
        let vm = with_virtio_mem
            .then(|| transport(VirtioMem::new(4 << 30, 512 * MIB, Box::new(AllSlots))));
        MemoryManager::new(BOOT, 1024 * MIB, transport(Balloon::new()), vm)
    }

    #[test]
    fn split_uses_the_balloon_below_boot_and_virtio_mem_above() {
        let s = |t| split(BOOT, t);
        assert_eq!(
            s(BOOT),
            Split {
                balloon_bytes: 0,
                plug_bytes: 0
            }
        );
        assert_eq!(s(BOOT - 100 * MIB).balloon_bytes, 100 * MIB);
        assert_eq!(
            s(BOOT + 300 * MIB),
            Split {
                balloon_bytes: 0,
                plug_bytes: 300 * MIB
            }
        );
        assert_eq!(s(0).balloon_bytes, BOOT);
        assert_eq!(s(u64::MAX).plug_bytes, u64::MAX - BOOT);
    }

    #[test]
    fn refuses_what_the_guest_cannot_do() {
        let m = manager(false);
        assert_eq!(m.resize(BOOT), Ok(()), "the boot size needs no driver");
        assert_eq!(
            m.resize(768 * MIB),
            Err(MemoryResizeError::NoHotplugRegion(768))
        );
        assert_eq!(
            m.resize(256 * MIB),
            Err(MemoryResizeError::NoBalloonDriver(256))
        );
        let m = manager(true);
        assert_eq!(
            m.resize(768 * MIB),
            Err(MemoryResizeError::NoVirtioMemDriver(768))
        );
        assert_eq!(m.status().virtio_mem_requested_bytes, 0, "nothing changed");
    }

    #[test]
    fn sets_the_device_targets() {
        let m = manager(true);
        activate(&m.balloon);
        activate(m.virtio_mem.as_ref().unwrap());
        m.resize(256 * MIB).unwrap();
        let s = m.status();
        assert_eq!(s.balloon_target_bytes, 256 * MIB);
        assert_eq!(s.virtio_mem_requested_bytes, 0);
        m.resize(BOOT + 200 * MIB).unwrap();
        let s = m.status();
        assert_eq!(s.balloon_target_bytes, 0, "the balloon is emptied first");
        assert_eq!(s.virtio_mem_requested_bytes, 200 * MIB);
        m.resize(BOOT).unwrap();
        assert_eq!(m.status().virtio_mem_requested_bytes, 0);
    }
}

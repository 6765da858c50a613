//! Memory resize: splits a target size between the balloon (below the boot
//! size) and virtio-mem (above it, up to `--memory max=`), and refuses,
//! with a reason, what the guest's drivers cannot do. A request never waits
//! on the guest: the devices' targets are set and the guest catches up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use virtio_perf_device::mmio::MmioTransport;

use crate::devices::balloon::{Balloon, BalloonCounters, GuestMemStats, PFN_SHIFT};
use crate::devices::bus::lock;
use crate::devices::virtio_mem::{VirtioMem, VirtioMemCounters};

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
#[derive(Clone, Debug, Serialize)]
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

    /// Sets the guest's memory to `target` bytes.
    pub fn resize(&self, target: u64) -> Result<(), MemoryResizeError> {
        let mib = target >> 20;
        let (balloon_bytes, plug_bytes) = if target > self.boot {
            let vm = self
                .virtio_mem
                .as_ref()
                .ok_or(MemoryResizeError::NoHotplugRegion(mib))?;
            if !lock(vm).is_activated() {
                return Err(MemoryResizeError::NoVirtioMemDriver(mib));
            }
            (0, target - self.boot)
        } else {
            (self.boot - target, 0)
        };
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

    /// Periodic work: asks the guest for fresh statistics; returns what the
    /// guest reports in use, when it has reported.
    pub fn tick(&self) -> Option<u64> {
        let mut b = lock(&self.balloon);
        b.run_device(|d| d.request_stats(STATS_PERIOD));
        b.device()
            .stats()
            .filter(|(_, age)| *age < 4 * STATS_PERIOD)
            .and_then(|(s, _)| s.in_use())
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

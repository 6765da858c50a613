//! Boot timer: the guest's `/init` writes a magic byte to a fixed MMIO
//! address; perfvmm records when, as Firecracker's `--boot-timer` does.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::layout::BOOT_TIMER_MAGIC;

use super::bus::BusDevice;

/// When things happened, relative to perfvmm's start.
#[derive(Debug)]
pub struct BootTimes {
    pub start: Instant,
    pub first_instruction: OnceLock<Duration>,
    pub init_reached: OnceLock<Duration>,
}

impl BootTimes {
    pub fn new(start: Instant) -> Arc<Self> {
        Arc::new(Self {
            start,
            first_instruction: OnceLock::new(),
            init_reached: OnceLock::new(),
        })
    }

    /// Records the first guest instruction (the boot vCPU's first `KVM_RUN`).
    pub fn mark_first_instruction(&self) {
        let _ = self.first_instruction.set(self.start.elapsed());
    }
}

/// Called once when the guest reaches `/init`.
pub type InitHook = Box<dyn Fn(&BootTimes) + Send>;

pub struct BootTimer {
    times: Arc<BootTimes>,
    on_init: Option<InitHook>,
}

impl BootTimer {
    pub fn new(times: Arc<BootTimes>, on_init: Option<InitHook>) -> Self {
        Self { times, on_init }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        if self
            .times
            .init_reached
            .set(self.times.start.elapsed())
            .is_ok()
        {
            if let Some(hook) = &self.on_init {
                hook(&self.times);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn records_once_on_magic() {
        let times = BootTimes::new(Instant::now());
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let mut t = BootTimer::new(
            times.clone(),
            Some(Box::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })),
        );
        t.write(0, &[1]);
        assert!(times.init_reached.get().is_none());
        t.write(0, &[BOOT_TIMER_MAGIC]);
        t.write(0, &[BOOT_TIMER_MAGIC]);
        assert!(times.init_reached.get().is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

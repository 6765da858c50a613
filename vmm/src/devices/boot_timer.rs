//! Boot timer: the guest's `/init` writes a magic byte to a fixed MMIO
//! address; perfvmm records when, as Firecracker's `--boot-timer` does.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::layout::BOOT_TIMER_MAGIC;

use super::bus::BusDevice;

/// When things happened, relative to perfvmm's start.
#[derive(Debug)]
pub struct BootTimes {
    pub start: Instant,
    pub first_instruction: OnceLock<Duration>,
    pub init_reached: OnceLock<Duration>,
    /// perfvmm's setup before the first instruction: when each step ended.
    pub setup: Mutex<Vec<(&'static str, Duration)>>,
}

impl BootTimes {
    pub fn new(start: Instant) -> Arc<Self> {
        Arc::new(Self {
            start,
            first_instruction: OnceLock::new(),
            init_reached: OnceLock::new(),
            setup: Mutex::new(Vec::new()),
        })
    }

    /// Records that setup step `step` ended now.
    pub fn mark(&self, step: &'static str) {
        self.record(step, self.start.elapsed());
    }

    /// Records that setup step `step` ended at `at` (since the start).
    pub fn record(&self, step: &'static str, at: Duration) {
        if let Ok(mut s) = self.setup.lock() {
            s.push((step, at));
        }
    }

    /// Records steps that ended before this record existed, in order.
    pub fn record_all(&self, steps: &[(&'static str, Duration)]) {
        for &(step, at) in steps {
            self.record(step, at);
        }
    }

    /// The setup steps as `name:ms,name:ms,...` (milliseconds since the
    /// start, in the order they ended).
    pub fn setup_line(&self) -> String {
        let Ok(s) = self.setup.lock() else {
            return String::new();
        };
        s.iter()
            .map(|(n, d)| format!("{n}:{:.1}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(",")
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

    #[test]
    fn setup_steps_print_in_the_order_they_ended() {
        let times = BootTimes::new(Instant::now());
        assert_eq!(times.setup_line(), "");
        times.record("memory", Duration::from_micros(3_250));
        times.record("kernel", Duration::from_millis(61));
        times.mark("vcpus");
        let line = times.setup_line();
        assert!(line.starts_with("memory:3.2,kernel:61.0,vcpus:"), "{line}");
    }
}

//! Log lines a guest can trigger, limited: a guest that keeps a device in
//! an error state (a used ring outside its memory, an unsupported request)
//! must not fill the host's log. At most `burst` lines per `period`; the
//! rest are counted, and the next line allowed says how many were dropped.

use std::time::{Duration, Instant};

/// The limit most guest-triggered warnings share: 5 lines a minute.
pub const GUEST_WARNINGS: (u32, Duration) = (5, Duration::from_secs(60));

#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    period: Duration,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new(GUEST_WARNINGS.0, GUEST_WARNINGS.1)
    }
}

impl LogLimit {
    pub const fn new(burst: u32, period: Duration) -> Self {
        Self {
            burst,
            period,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines
    /// dropped since the last one written; `None` when this one is dropped.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`LogLimit::check`] at a given time.
    pub fn check_at(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window
            .is_none_or(|start| now.saturating_duration_since(start) >= self.period);
        if expired {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl LogLimit {
    /// Logs `line` as a warning if the limit allows it now, saying how
    /// many lines were dropped before it.
    pub fn warn(&mut self, line: std::fmt::Arguments) {
        if let Some(n) = self.check() {
            log::warn!("{line}{}", dropped_note(n));
        }
    }
}

/// " (N similar lines dropped)" for a count above zero, for the end of a
/// log line.
fn dropped_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar lines dropped)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_period_then_a_count() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(2, Duration::from_secs(10));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(l.check_at(t0 + Duration::from_secs(1)), None);
        }
        // A new period: the next line says how many were dropped.
        assert_eq!(l.check_at(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(l.check_at(t0 + Duration::from_secs(10)), Some(0));
        assert_eq!(l.check_at(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn notes() {
        assert_eq!(dropped_note(0), "");
        assert_eq!(dropped_note(3), " (3 similar lines dropped)");
    }
}

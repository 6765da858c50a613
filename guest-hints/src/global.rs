#![forbid(unsafe_code)]
//! The process-wide client most programs use: `/dev/perfhint` when it is
//! there, a silent no-op when it is not.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::client::{hint, Client, ClientStats, SendError};
use crate::linux::DevTransport;
use crate::resources::{Need, CPU_ONLINE_PATH, MEMINFO_PATH};
use crate::wire::{Hint, IoClass, Locality};

fn client() -> &'static Mutex<Client<DevTransport>> {
    static CLIENT: OnceLock<Mutex<Client<DevTransport>>> = OnceLock::new();
    CLIENT.get_or_init(|| Mutex::new(Client::new(DevTransport::open())))
}

fn with<R>(f: impl FnOnce(&mut Client<DevTransport>) -> R) -> R {
    let mut c = client().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut c)
}

/// Whether a perf-hint device is present.
pub fn is_connected() -> bool {
    with(|c| c.is_connected())
}

/// Hints sent and dropped so far by this process.
pub fn stats() -> ClientStats {
    with(|c| c.stats())
}

/// Sends hints as one message, reporting failures.
///
/// With `PERFHINT_TRACE` in the environment every hint is also traced,
/// device or not (see [`crate::trace`]): `PERFHINT_TRACE=1` prints
/// `perfhint-trace seq=N kind=K uptime_ms=T` (or `seq=dropped`) on standard error, so a
/// run can be compared with the host's hint log; `PERFHINT_TRACE=FILE`
/// appends one JSON line per hint, with a `CLOCK_MONOTONIC` timestamp, to
/// FILE (what `perfhint profile` reads).
pub fn try_send(hints: &[Hint]) -> Result<u32, SendError> {
    let t_ns = crate::trace::monotonic_ns();
    let r = with(|c| c.send_all(hints));
    crate::trace::record(t_ns, hints, r);
    r
}

/// Sends hints as one message; failures (including "no device") are counted, not reported.
pub fn send(hints: &[Hint]) {
    let _ = try_send(hints);
}

/// Sends the manifest this program embeds (see [`crate::manifest!`]), read
/// from its own executable. Returns false when there is none or no device.
pub fn announce_manifest() -> bool {
    let Ok(exe) = std::fs::read("/proc/self/exe") else {
        return false;
    };
    match crate::note::find_in_elf(&exe) {
        Ok(Some(m)) => try_send(&[Hint::Manifest(m)]).is_ok(),
        _ => false,
    }
}

/// `tasks` independent tasks are ready to run now.
pub fn parallelism(tasks: u32) {
    send(&[hint::parallelism(tasks, tasks, 0.0)]);
}

/// Parallelism with the most threads that help and the serial fraction (0.0..=1.0).
pub fn parallelism_detail(tasks: u32, max_useful: u32, serial_fraction: f64) {
    send(&[hint::parallelism(tasks, max_useful, serial_fraction)]);
}

/// The memory the work touches repeatedly.
pub fn working_set(bytes: u64) {
    send(&[hint::memory(bytes, bytes, 0)]);
}

/// The working set, the peak it may reach, and its growth per second (0: steady), in bytes.
pub fn memory(working_set_bytes: u64, peak_bytes: u64, growth_bytes_per_sec: u64) {
    send(&[hint::memory(
        working_set_bytes,
        peak_bytes,
        growth_bytes_per_sec,
    )]);
}

/// The kind of I/O the program does and its rate in bytes per second.
pub fn io(class: IoClass, bytes_per_sec: u64) {
    send(&[hint::io(class, bytes_per_sec)]);
}

/// Whether the work may move between hosts or NUMA nodes, whether it cannot
/// be split across machines, and which data locality it prefers.
pub fn placement(relocatable: bool, monolithic: bool, locality: Locality) {
    send(&[hint::placement(relocatable, monolithic, locality)]);
}

/// The data set the work reads most, by a name the operator also uses
/// (at most [`crate::wire::MAX_NAME_LEN`] bytes, not empty): the hypervisor
/// may run the work where that data is. Returns false, sending nothing,
/// for a name it cannot carry.
pub fn data_set(name: &str) -> bool {
    match hint::data_set(name) {
        Some(h) => {
            send(&[h]);
            true
        }
        None => false,
    }
}

fn next_phase_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A program phase: describe it, then [`Phase::begin`] it. The returned
/// guard ends the phase when dropped.
#[must_use = "a phase does nothing until begun"]
pub struct Phase {
    name: String,
    expected: Duration,
    extra: Vec<Hint>,
}

impl Phase {
    /// A phase called `name` (truncated to [`crate::wire::MAX_NAME_LEN`] bytes).
    pub fn new(name: &str) -> Self {
        Phase {
            name: name.to_string(),
            expected: Duration::ZERO,
            extra: Vec::new(),
        }
    }

    /// How long the phase is expected to last.
    pub fn expected(mut self, d: Duration) -> Self {
        self.expected = d;
        self
    }

    /// `tasks` independent tasks are ready to run during the phase.
    pub fn parallelism(mut self, tasks: u32) -> Self {
        self.extra.push(hint::parallelism(tasks, tasks, 0.0));
        self
    }

    /// The memory the phase touches repeatedly (also its peak).
    pub fn working_set(mut self, bytes: u64) -> Self {
        self.extra.push(hint::memory(bytes, bytes, 0));
        self
    }

    /// The phase's working set and the peak it may reach.
    pub fn memory(mut self, working_set: u64, peak: u64) -> Self {
        self.extra.push(hint::memory(working_set, peak, 0));
        self
    }

    /// The phase's kind of I/O and its rate in bytes per second.
    pub fn io(mut self, class: IoClass, bytes_per_sec: u64) -> Self {
        self.extra.push(hint::io(class, bytes_per_sec));
        self
    }

    /// What the phase asks for, as the guest can check it: its parallelism
    /// as online CPUs and its working set as available memory (the last
    /// of each given).
    pub fn need(&self) -> Need {
        let mut need = Need::default();
        for h in &self.extra {
            match h {
                Hint::Parallelism(p) => need.cpus = p.runnable_tasks,
                Hint::Memory(m) => need.working_set_bytes = m.working_set_bytes,
                _ => {}
            }
        }
        need
    }

    /// Sends the phase's begin (and its hints), then waits until what the
    /// phase asks for is online in this guest — as many online CPUs
    /// (`/sys/devices/system/cpu/online`) as its parallelism, and, if it
    /// gave a working set, that much available memory (`MemAvailable` in
    /// `/proc/meminfo`) — or until `timeout` passes, checking every 10 ms.
    ///
    /// The guest learns nothing of the host: only whether its own request
    /// is met. A phase that asks for nothing is met at once; what cannot be
    /// read is not met.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use guest_hints::{Phase, WaitOutcome};
    /// let (_phase, waited) = Phase::new("solve")
    ///     .parallelism(8)
    ///     .working_set(4 << 30)
    ///     .begin_and_wait(Duration::from_millis(500));
    /// if waited == WaitOutcome::TimedOut {
    ///     // run with what there is
    /// }
    /// ```
    pub fn begin_and_wait(self, timeout: Duration) -> (PhaseGuard, WaitOutcome) {
        let need = self.need();
        let guard = self.begin();
        (guard, wait_for(need, timeout))
    }

    /// Sends the phase's begin (and its hints) as one message.
    pub fn begin(self) -> PhaseGuard {
        let id = next_phase_id();
        let ms = u32::try_from(self.expected.as_millis()).unwrap_or(u32::MAX);
        let mut hints = vec![hint::phase_begin(id, &self.name, ms)];
        hints.extend(self.extra);
        send(&hints);
        PhaseGuard { id }
    }
}

/// What [`Phase::begin_and_wait`] and [`wait_for`] saw.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// What was asked for is online in the guest.
    Met,
    /// The timeout passed first.
    TimedOut,
}

/// How often [`wait_for`] looks.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// Whether `need` is met now, as this guest sees it.
pub fn need_is_met(need: &Need) -> bool {
    if need.is_empty() {
        return true;
    }
    let cpus = (need.cpus > 0)
        .then(|| std::fs::read_to_string(CPU_ONLINE_PATH).ok())
        .flatten();
    let meminfo = (need.working_set_bytes > 0)
        .then(|| std::fs::read_to_string(MEMINFO_PATH).ok())
        .flatten();
    need.is_met(cpus.as_deref(), meminfo.as_deref())
}

/// Waits until `need` is met in this guest or `timeout` passes, checking
/// every 10 ms (at least once, even with a zero timeout).
pub fn wait_for(need: Need, timeout: Duration) -> WaitOutcome {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        if need_is_met(&need) {
            return WaitOutcome::Met;
        }
        let now = Instant::now();
        let left = match deadline {
            Some(d) if d > now => d - now,
            Some(_) => return WaitOutcome::TimedOut,
            None => WAIT_POLL, // a timeout too long to represent: wait on
        };
        std::thread::sleep(left.min(WAIT_POLL));
    }
}

/// Ends its phase when dropped.
pub struct PhaseGuard {
    id: u32,
}

impl PhaseGuard {
    /// The phase's id, as sent in its begin and end hints.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        send(&[hint::phase_end(self.id)]);
    }
}

/// Begins a phase named `name`; it ends when the guard is dropped.
pub fn phase(name: &str) -> PhaseGuard {
    Phase::new(name).begin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_asks_for_its_last_parallelism_and_working_set() {
        let p = Phase::new("x")
            .parallelism(2)
            .working_set(10)
            .parallelism(6);
        assert_eq!(
            p.need(),
            Need {
                cpus: 6,
                working_set_bytes: 10
            }
        );
        assert_eq!(Phase::new("y").need(), Need::default());
    }

    #[test]
    fn waiting_meets_or_times_out() {
        // Nothing asked for: met at once.
        assert_eq!(wait_for(Need::default(), Duration::ZERO), WaitOutcome::Met);
        // More CPUs than any machine has: times out, about on time.
        let start = Instant::now();
        let huge = Need {
            cpus: u32::MAX,
            working_set_bytes: 0,
        };
        assert_eq!(
            wait_for(huge, Duration::from_millis(50)),
            WaitOutcome::TimedOut
        );
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50) && took < Duration::from_secs(2));
        // One CPU is online wherever /sys is mounted.
        if std::path::Path::new(CPU_ONLINE_PATH).exists() {
            let one = Need {
                cpus: 1,
                working_set_bytes: 0,
            };
            let (_g, w) = Phase::new("t")
                .parallelism(1)
                .begin_and_wait(Duration::ZERO);
            assert_eq!(w, WaitOutcome::Met);
            assert_eq!(wait_for(one, Duration::ZERO), WaitOutcome::Met);
        }
    }
}

#![forbid(unsafe_code)]
//! The process-wide client most programs use: `/dev/perfhint` when it is
//! there, a silent no-op when it is not.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::client::{hint, Client, ClientStats, SendError};
use crate::linux::DevTransport;
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

fn trace_enabled() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("PERFHINT_TRACE").is_some_and(|v| v != "0"))
}

/// Sends hints as one message, reporting failures.
///
/// With `PERFHINT_TRACE=1` in the environment, every hint is also printed to
/// standard error as `perfhint-trace seq=N kind=K` (or `seq=dropped`), so a
/// run can be compared with the host's hint log.
pub fn try_send(hints: &[Hint]) -> Result<u32, SendError> {
    let r = with(|c| c.send_all(hints));
    if trace_enabled() {
        for (i, h) in hints.iter().enumerate() {
            match r {
                Ok(seq) => eprintln!(
                    "perfhint-trace seq={} kind={}",
                    seq.wrapping_add(i as u32),
                    h.kind_name()
                ),
                Err(e) => eprintln!(
                    "perfhint-trace seq=dropped kind={} reason={e:?}",
                    h.kind_name()
                ),
            }
        }
    }
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

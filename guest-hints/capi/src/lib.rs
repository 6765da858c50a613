//! The C ABI of guest-hints (`include/perfhint.h`), built as `libperfhint.a`
//! and `libperfhint.so`. Every function is safe to call with no
//! device present; those that return `int` give 0 on success and a negative
//! `PERFHINT_E*` code otherwise.
//!
//! Build it with `cargo build --release -p perfhint-capi` and link
//! `libperfhint.a` (with `-lpthread -ldl -lm`) or `libperfhint.so`.
#![warn(missing_docs)]

use std::ffi::{c_char, c_int, CStr};

use guest_hints::client::{hint, SendError};
use guest_hints::wire::{IoClass, Locality};

/// Success.
pub const PERFHINT_OK: c_int = 0;
/// There is no perf-hint device.
pub const PERFHINT_ENODEV: c_int = -1;
/// The device's queue is full; the hint was dropped.
pub const PERFHINT_EBUSY: c_int = -2;
/// The driver refused the message.
pub const PERFHINT_EREFUSED: c_int = -3;
/// A bad argument (or a hint too large for a message).
pub const PERFHINT_EINVAL: c_int = -4;
/// [`perfhint_phase_begin_wait`]: the phase began, but what it asked for
/// was not online in the guest before the timeout (not an error: positive).
pub const PERFHINT_TIMEDOUT: c_int = 1;

fn code(r: Result<u32, SendError>) -> c_int {
    match r {
        Ok(_) => PERFHINT_OK,
        Err(SendError::NoDevice) => PERFHINT_ENODEV,
        Err(SendError::Busy) => PERFHINT_EBUSY,
        Err(SendError::Refused) => PERFHINT_EREFUSED,
        Err(SendError::TooLarge) => PERFHINT_EINVAL,
    }
}

/// 1 when a perf-hint device is present, else 0.
#[no_mangle]
pub extern "C" fn perfhint_is_connected() -> c_int {
    c_int::from(guest_hints::is_connected())
}

/// `tasks` ready to run, the most threads that help (0: no limit known),
/// and the serial fraction of the work (0.0 to 1.0, clamped).
#[no_mangle]
pub extern "C" fn perfhint_parallelism(tasks: u32, max_useful: u32, serial_fraction: f64) -> c_int {
    code(guest_hints::try_send(&[hint::parallelism(
        tasks,
        max_useful,
        serial_fraction,
    )]))
}

/// The working set, the peak, and the growth per second (0: steady), in bytes.
#[no_mangle]
pub extern "C" fn perfhint_memory(working_set: u64, peak: u64, growth_per_sec: u64) -> c_int {
    code(guest_hints::try_send(&[hint::memory(
        working_set,
        peak,
        growth_per_sec,
    )]))
}

/// The kind of I/O and its rate in bytes per second.
/// `class`: 0 none, 1 light, 2 sequential, 3 random, 4 network.
#[no_mangle]
pub extern "C" fn perfhint_io(class: c_int, bytes_per_sec: u64) -> c_int {
    let Some(class) = u8::try_from(class).ok().and_then(IoClass::from_u8) else {
        return PERFHINT_EINVAL;
    };
    code(guest_hints::try_send(&[hint::io(class, bytes_per_sec)]))
}

/// Whether the work may move between hosts or NUMA nodes (`relocatable`,
/// non-zero: yes), whether it cannot be split across machines
/// (`monolithic`, likewise), and its data locality.
/// `locality`: 0 any, 1 shared cache, 2 same NUMA node.
#[no_mangle]
pub extern "C" fn perfhint_placement(
    relocatable: c_int,
    monolithic: c_int,
    locality: c_int,
) -> c_int {
    let Some(loc) = u8::try_from(locality).ok().and_then(Locality::from_u8) else {
        return PERFHINT_EINVAL;
    };
    code(guest_hints::try_send(&[hint::placement(
        relocatable != 0,
        monolithic != 0,
        loc,
    )]))
}

/// The data set the work reads most, by a name the operator also uses:
/// the hypervisor may run the work where that data is.
/// `PERFHINT_EINVAL` when `name` is NULL, empty, not UTF-8 or longer than 48
/// bytes.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn perfhint_data_set(name: *const c_char) -> c_int {
    if name.is_null() {
        return PERFHINT_EINVAL;
    }
    // SAFETY: the caller passes a NUL-terminated string (checked non-null above).
    let name = unsafe { CStr::from_ptr(name) }.to_str().ok();
    match name.and_then(hint::data_set) {
        Some(h) => code(guest_hints::try_send(&[h])),
        None => PERFHINT_EINVAL,
    }
}

/// Begins a phase; returns its id (> 0), or 0 when `name` is NULL or not UTF-8.
/// The id is returned even with no device, so begin/end pairs stay balanced.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn perfhint_phase_begin(name: *const c_char, expected_ms: u32) -> u32 {
    if name.is_null() {
        return 0;
    }
    // SAFETY: the caller passes a NUL-terminated string (checked non-null above).
    let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else {
        return 0;
    };
    let guard = guest_hints::Phase::new(name)
        .expected(std::time::Duration::from_millis(u64::from(expected_ms)))
        .begin();
    let id = guard.id();
    std::mem::forget(guard);
    id
}

/// Begins a phase that wants `parallelism` CPUs and `working_set` bytes
/// (0: not asked for), then waits until the guest has them online — as
/// many online CPUs as `parallelism`, and `working_set` bytes of available
/// memory (`MemAvailable`) — or until `timeout_ms` passes, checking every
/// 10 ms. The guest learns nothing of the host, only whether its own
/// request is met.
///
/// Returns [`PERFHINT_OK`] when met, [`PERFHINT_TIMEDOUT`] when the timeout
/// passed first (the phase has begun either way, device or not, and its id
/// is in `*phase_id`: end it with [`perfhint_phase_end`]), or
/// [`PERFHINT_EINVAL`] when `name` is NULL or not UTF-8 or `phase_id` is
/// NULL (then no phase begins).
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string; `phase_id` must be NULL
/// or point to a writable `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn perfhint_phase_begin_wait(
    name: *const c_char,
    expected_ms: u32,
    parallelism: u32,
    working_set: u64,
    timeout_ms: u32,
    phase_id: *mut u32,
) -> c_int {
    if name.is_null() || phase_id.is_null() {
        return PERFHINT_EINVAL;
    }
    // SAFETY: the caller passes a NUL-terminated string (checked non-null above).
    let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else {
        return PERFHINT_EINVAL;
    };
    let mut phase = guest_hints::Phase::new(name)
        .expected(std::time::Duration::from_millis(u64::from(expected_ms)));
    if parallelism > 0 {
        phase = phase.parallelism(parallelism);
    }
    if working_set > 0 {
        phase = phase.working_set(working_set);
    }
    let (guard, waited) =
        phase.begin_and_wait(std::time::Duration::from_millis(u64::from(timeout_ms)));
    // SAFETY: the caller passes a writable uint32_t (checked non-null above).
    unsafe { phase_id.write(guard.id()) };
    std::mem::forget(guard);
    match waited {
        guest_hints::WaitOutcome::Met => PERFHINT_OK,
        guest_hints::WaitOutcome::TimedOut => PERFHINT_TIMEDOUT,
    }
}

/// Ends the phase `id` that [`perfhint_phase_begin`] returned.
#[no_mangle]
pub extern "C" fn perfhint_phase_end(id: u32) -> c_int {
    code(guest_hints::try_send(&[hint::phase_end(id)]))
}

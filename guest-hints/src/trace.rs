#![forbid(unsafe_code)]
//! The hint trace: with `PERFHINT_TRACE` set, every hint the process-wide
//! client sends (device or not) is also recorded, so that a run can be
//! compared with the host's hint log or profiled by `perfhint profile`.
//!
//! | `PERFHINT_TRACE` | what happens |
//! | --- | --- |
//! | unset, empty or `0` | nothing |
//! | `1` | one line per hint on standard error: `perfhint-trace seq=N kind=K uptime_ms=T` (`T`: `CLOCK_MONOTONIC` in ms, which is the guest's uptime) (or `seq=dropped kind=K reason=R`) |
//! | anything else | a file name: one JSON object per line is appended to it (created if need be) |
//!
//! (To trace into a file called `1`, name it `./1`.)
//!
//! A line of the trace file, in the format `docs/derived-hints.md`
//! describes, which other programs (an OpenMP tool, for one) write too:
//!
//! ```text
//! {"t_ns":81273645120,"pid":4242,"event":"phase_begin","id":1,"name":"load","expected_ms":0}
//! {"t_ns":81275012007,"pid":4242,"event":"parallelism","runnable_tasks":8,"max_useful":8,"serial_ppm":0}
//! {"t_ns":81391000456,"pid":4242,"event":"phase_end","id":1}
//! ```
//!
//! `t_ns` is `CLOCK_MONOTONIC` in nanoseconds; each line is written with a
//! single `write` to a file opened for appending, so lines of several
//! processes tracing into one file do not mix.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};

use crate::client::SendError;
use crate::wire::Hint;

/// The environment variable that turns tracing on.
pub const TRACE_ENV: &str = "PERFHINT_TRACE";

/// `CLOCK_MONOTONIC`, in nanoseconds: the clock of the trace file's `t_ns`.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Appends `s` to `out` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One line of the trace file (with its newline) for `hint`, sent at
/// `t_ns` by process `pid`.
pub fn hint_line(t_ns: u64, pid: u32, hint: &Hint) -> String {
    let mut s = String::with_capacity(128);
    let _ = write!(
        s,
        "{{\"t_ns\":{t_ns},\"pid\":{pid},\"event\":\"{}\"",
        hint.kind_name()
    );
    match hint {
        Hint::Parallelism(p) => {
            let _ = write!(
                s,
                ",\"runnable_tasks\":{},\"max_useful\":{},\"serial_ppm\":{}",
                p.runnable_tasks, p.max_useful, p.serial_ppm
            );
        }
        Hint::Memory(m) => {
            let _ = write!(
                s,
                ",\"working_set_bytes\":{},\"peak_bytes\":{},\"growth_bytes_per_sec\":{}",
                m.working_set_bytes, m.peak_bytes, m.growth_bytes_per_sec
            );
        }
        Hint::Io(io) => {
            let _ = write!(
                s,
                ",\"class\":\"{}\",\"bytes_per_sec\":{}",
                io.class.as_str(),
                io.bytes_per_sec
            );
        }
        Hint::PhaseBegin(p) => {
            let _ = write!(s, ",\"id\":{},\"name\":", p.id);
            json_str(&mut s, p.name.as_str());
            let _ = write!(s, ",\"expected_ms\":{}", p.expected_ms);
        }
        Hint::PhaseEnd { id } => {
            let _ = write!(s, ",\"id\":{id}");
        }
        Hint::Placement(p) => {
            let _ = write!(
                s,
                ",\"relocatable\":{},\"monolithic\":{},\"locality\":\"{}\"",
                p.relocatable,
                p.monolithic,
                p.locality.as_str()
            );
        }
        Hint::DataSet(name) => {
            s.push_str(",\"name\":");
            json_str(&mut s, name.as_str());
        }
        Hint::Manifest(m) => {
            s.push_str(",\"app\":");
            json_str(&mut s, m.app.as_str());
        }
        Hint::PhaseNeeds(p) => {
            let _ = write!(
                s,
                ",\"id\":{},\"start_ms\":{},\"duration_ms\":{},\"parallelism_p50_milli\":{},\
                 \"parallelism_p95_milli\":{},\"max_useful\":{},\"working_set_bytes\":{},\
                 \"peak_bytes\":{},\"io_class\":\"{}\",\"io_bytes_per_sec\":{}",
                p.id,
                p.start_ms,
                p.duration_ms,
                p.parallelism_p50_milli,
                p.parallelism_p95_milli,
                p.max_useful,
                p.working_set_bytes,
                p.peak_bytes,
                p.io_class.as_str(),
                p.io_bytes_per_sec
            );
        }
    }
    s.push_str("}\n");
    s
}

/// Where traces go, from `PERFHINT_TRACE`.
enum Sink {
    Off,
    Stderr,
    File(Mutex<File>),
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let Some(v) = std::env::var_os(TRACE_ENV) else {
            return Sink::Off;
        };
        if v.is_empty() || v == "0" {
            return Sink::Off;
        }
        if v == "1" {
            return Sink::Stderr;
        }
        // Non-blocking: a FIFO with no reader must not stop the program
        // (it fails to open instead, and the program runs untraced).
        let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
        let opened = OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(nonblock)
            .open(&v);
        match opened {
            Ok(f) => Sink::File(Mutex::new(f)),
            Err(e) => {
                eprintln!(
                    "perfhint: cannot open the trace file {} ({TRACE_ENV}): {e}; not tracing",
                    v.to_string_lossy()
                );
                Sink::Off
            }
        }
    })
}

/// Records `hints`, sent at `t_ns` with result `sent`, where
/// `PERFHINT_TRACE` says.
pub(crate) fn record(t_ns: u64, hints: &[Hint], sent: Result<u32, SendError>) {
    match sink() {
        Sink::Off => {}
        Sink::Stderr => {
            // One write per line: `eprintln!` may write a line in pieces,
            // and another program's output on the same console (a
            // sampler's) then lands in the middle of it.
            let mut text = String::new();
            for (i, h) in hints.iter().enumerate() {
                let _ = match sent {
                    Ok(seq) => writeln!(
                        text,
                        "perfhint-trace seq={} kind={} uptime_ms={}",
                        seq.wrapping_add(i as u32),
                        h.kind_name(),
                        t_ns / 1_000_000
                    ),
                    Err(e) => writeln!(
                        text,
                        "perfhint-trace seq=dropped kind={} reason={e:?}",
                        h.kind_name()
                    ),
                };
            }
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
        Sink::File(f) => {
            let pid = std::process::id();
            let lines: String = hints.iter().map(|h| hint_line(t_ns, pid, h)).collect();
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line keeps lines whole between processes.
            for line in lines.split_inclusive('\n') {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::hint;

    #[test]
    fn lines_are_json_with_the_documented_fields() {
        let l = hint_line(5, 7, &hint::phase_begin(3, "a \"q\" \\ \n", 10));
        assert_eq!(
            l,
            "{\"t_ns\":5,\"pid\":7,\"event\":\"phase_begin\",\"id\":3,\
             \"name\":\"a \\\"q\\\" \\\\ \\n\",\"expected_ms\":10}\n"
        );
        assert_eq!(
            hint_line(1, 2, &hint::phase_end(3)),
            "{\"t_ns\":1,\"pid\":2,\"event\":\"phase_end\",\"id\":3}\n"
        );
        let l = hint_line(1, 2, &hint::parallelism(4, 8, 0.5));
        assert!(l.contains("\"event\":\"parallelism\",\"runnable_tasks\":4,\"max_useful\":8"));
        let l = hint_line(1, 2, &hint::io(crate::wire::IoClass::Random, 9));
        assert!(l.contains("\"class\":\"random\",\"bytes_per_sec\":9}"));
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}

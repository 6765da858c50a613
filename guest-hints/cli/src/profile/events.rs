//! The trace file (`PERFHINT_TRACE`): JSON lines written by guest-hints
//! (every hint it sends) and by an OpenMP tool (parallel regions). Only the
//! events that cut a run into phases are kept; other events, unknown fields
//! and lines that are not JSON objects are skipped (and counted).

use serde_json::Value;

/// An event that marks phases.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// The program began its phase `id`.
    PhaseBegin {
        /// The program's id for the phase.
        id: u64,
        /// Its name, if given.
        name: Option<String>,
    },
    /// The program ended its phase `id`.
    PhaseEnd {
        /// The id its begin carried.
        id: u64,
    },
    /// An OpenMP parallel region began.
    ParallelBegin {
        /// The tool's id for the region, if it gave one.
        id: Option<u64>,
    },
    /// An OpenMP parallel region ended.
    ParallelEnd {
        /// The id its begin carried, if any.
        id: Option<u64>,
    },
}

/// One event, in milliseconds from the program's start.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Milliseconds from the program's start.
    pub t_ms: f64,
    /// The process that wrote it (0: not said).
    pub pid: u64,
    /// What happened.
    pub kind: Kind,
}

/// A parsed trace.
#[derive(Debug, Default)]
pub struct Trace {
    /// Phase and parallel-region events, in time order.
    pub events: Vec<Event>,
    /// Lines that were not JSON objects with `t_ns` and `event`.
    pub bad_lines: usize,
}

/// Parses the trace file's text; `t0_ns` is the program's start on the same
/// clock (`CLOCK_MONOTONIC`).
pub fn parse(text: &str, t0_ns: u64) -> Trace {
    let mut t = Trace::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            t.bad_lines += 1;
            continue;
        };
        let (Some(t_ns), Some(event)) = (
            v.get("t_ns").and_then(Value::as_u64),
            v.get("event").and_then(Value::as_str),
        ) else {
            t.bad_lines += 1;
            continue;
        };
        let id = v.get("id").and_then(Value::as_u64);
        let kind = match (event, id) {
            ("phase_begin", Some(id)) => Kind::PhaseBegin {
                id,
                name: v
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            },
            ("phase_end", Some(id)) => Kind::PhaseEnd { id },
            ("parallel_begin", id) => Kind::ParallelBegin { id },
            ("parallel_end", id) => Kind::ParallelEnd { id },
            _ => continue,
        };
        t.events.push(Event {
            t_ms: t_ns.saturating_sub(t0_ns) as f64 / 1e6,
            pid: v.get("pid").and_then(Value::as_u64).unwrap_or(0),
            kind,
        });
    }
    t.events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_phase_and_region_events() {
        let text = r#"{"t_ns":2000000,"pid":5,"event":"phase_end","id":1}
{"t_ns":1000000,"pid":5,"event":"phase_begin","id":1,"name":"load","expected_ms":0}
{"t_ns":1500000,"pid":5,"event":"parallelism","runnable_tasks":2,"max_useful":2,"serial_ppm":0}
not json
{"event":"phase_end"}
{"t_ns":3000000,"event":"parallel_begin","threads":8}
{"t_ns":4000000,"event":"parallel_end","id":3,"future_field":[1,2]}
"#;
        let t = parse(text, 500_000);
        assert_eq!(t.bad_lines, 2);
        assert_eq!(
            t.events,
            vec![
                Event {
                    t_ms: 0.5,
                    pid: 5,
                    kind: Kind::PhaseBegin {
                        id: 1,
                        name: Some("load".into())
                    }
                },
                Event {
                    t_ms: 1.5,
                    pid: 5,
                    kind: Kind::PhaseEnd { id: 1 }
                },
                Event {
                    t_ms: 2.5,
                    pid: 0,
                    kind: Kind::ParallelBegin { id: None }
                },
                Event {
                    t_ms: 3.5,
                    pid: 0,
                    kind: Kind::ParallelEnd { id: Some(3) }
                },
            ]
        );
    }
}

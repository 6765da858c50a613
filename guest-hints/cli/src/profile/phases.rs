//! Cutting a run into phases, and each phase's figures. Pure functions over
//! the samples and the trace's events (see `docs/derived-hints.md`, "How a
//! run is cut into phases").
//!
//! 1. The program's own phases (`phase_begin` … `phase_end`, per process
//!    and id; where phases nest, the innermost one holds the time).
//! 2. In the time they leave: OpenMP parallel regions, joined when less
//!    than [`MIN_GAP_MS`] apart into one sustained phase; regions shorter
//!    than that on their own are left to step 3.
//! 3. In the time still left: change points, where the mean effective
//!    parallelism, resident memory or I/O rate over the [`WINDOW_MS`] before
//!    a moment differs enough from the mean over the [`WINDOW_MS`] after it;
//!    the strongest ones first, none closer than [`MIN_PHASE_MS`] to another
//!    or to the ends of the time being cut.
//!
//! Time left between phases shorter than [`MIN_GAP_MS`] joins the phase
//! before it (the one after, at the start of the run).

use guest_hints::profile::ProfilePhase;
use guest_hints::wire::IoClass;

use super::events::{Event, Kind};

/// Gaps shorter than this join a neighbour; OpenMP regions closer than this
/// join each other.
pub const MIN_GAP_MS: f64 = 100.0;
/// The shortest phase a change point may cut off.
pub const MIN_PHASE_MS: f64 = 300.0;
/// The windows compared on each side of a candidate change point.
pub const WINDOW_MS: f64 = 150.0;
/// Effective parallelism is measured over windows of at least this long:
/// the kernel advances a running thread's CPU time only at scheduler ticks
/// (every 4 ms at 250 Hz), so over one 10 ms sample it would be off by up
/// to ±0.4 of a thread.
pub const PARALLELISM_WINDOW_MS: f64 = 50.0;
/// A change in mean effective parallelism that counts (threads).
const PARALLELISM_SHIFT: f64 = 0.5;
/// A change in resident memory that counts: this many bytes, or a quarter
/// of the larger mean, whichever is more.
const RSS_SHIFT_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
const RSS_SHIFT_SHARE: f64 = 0.25;
/// A change in I/O rate that counts: this many bytes per second, or half
/// of the larger mean, whichever is more.
const IO_SHIFT_BYTES: f64 = 1024.0 * 1024.0;
const IO_SHIFT_SHARE: f64 = 0.5;

/// I/O below this rate is class `none` (bytes per second).
pub const IO_NONE_BELOW: f64 = 64.0 * 1024.0;
/// I/O below this rate is class `light`.
pub const IO_LIGHT_BELOW: f64 = 1024.0 * 1024.0;
/// Heavier I/O moving at least this much per read or write call is
/// `sequential`, less `random`.
pub const IO_SEQUENTIAL_CALL: f64 = 64.0 * 1024.0;

/// How a phase was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The program's own phase hints.
    Explicit,
    /// OpenMP parallel regions.
    OpenMp,
    /// A change point.
    Detected,
    /// None of those.
    Unmarked,
}

impl Source {
    /// As written in a profile.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Explicit => "explicit",
            Source::OpenMp => "openmp",
            Source::Detected => "detected",
            Source::Unmarked => "unmarked",
        }
    }
}

/// A stretch of the run, in milliseconds from its start.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Start.
    pub start: f64,
    /// End (exclusive).
    pub end: f64,
    /// The program's name for it.
    pub name: Option<String>,
    /// How it was found.
    pub source: Source,
}

impl Segment {
    fn gap(start: f64, end: f64) -> Self {
        Segment {
            start,
            end,
            name: None,
            source: Source::Unmarked,
        }
    }

    fn len(&self) -> f64 {
        self.end - self.start
    }
}

/// One sample of the tree; counters are totals since the program's start.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Milliseconds from the program's start.
    pub t: f64,
    /// Threads running or runnable.
    pub running: u32,
    /// CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// I/O bytes (storage or chars, as the profile uses).
    pub io_bytes: u64,
    /// Read and write calls.
    pub io_calls: u64,
    /// The profiler's own CPU time, nanoseconds.
    pub profiler_cpu_ns: u64,
}

/// Bytes of pages referenced between `start` and `end`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WsWindow {
    /// Window start, ms.
    pub start: f64,
    /// Window end, ms.
    pub end: f64,
    /// Referenced bytes.
    pub bytes: u64,
}

/// The program's phases over `[0, wall)`, with the time between them as
/// gaps (`Source::Unmarked`): the innermost open phase holds each moment.
fn explicit_partition(events: &[Event], wall: f64) -> Vec<Segment> {
    /// A phase of the program: its span, name, and the order of its begin.
    struct Interval {
        start: f64,
        end: f64,
        name: Option<String>,
        order: usize,
    }
    /// A phase begun and not yet ended, by (pid, id).
    struct Open {
        key: (u64, u64),
        start: f64,
        name: Option<String>,
        order: usize,
    }
    let close = |o: Open, end: f64| Interval {
        start: o.start,
        end,
        name: o.name,
        order: o.order,
    };
    let mut intervals: Vec<Interval> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    for (order, e) in events.iter().enumerate() {
        match &e.kind {
            Kind::PhaseBegin { id, name } => {
                let key = (e.pid, *id);
                if let Some(i) = open.iter().position(|o| o.key == key) {
                    intervals.push(close(open.remove(i), e.t_ms));
                }
                open.push(Open {
                    key,
                    start: e.t_ms,
                    name: name.clone(),
                    order,
                });
            }
            Kind::PhaseEnd { id } => {
                let key = (e.pid, *id);
                if let Some(i) = open.iter().rposition(|o| o.key == key) {
                    intervals.push(close(open.remove(i), e.t_ms));
                }
            }
            _ => {}
        }
    }
    for o in open {
        intervals.push(close(o, wall));
    }
    let mut bounds: Vec<f64> = vec![0.0, wall];
    for iv in &intervals {
        bounds.push(iv.start.clamp(0.0, wall));
        bounds.push(iv.end.clamp(0.0, wall));
    }
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    let mut out: Vec<(Segment, Option<usize>)> = Vec::new();
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b <= a {
            continue;
        }
        let mid = (a + b) / 2.0;
        // The innermost: the latest begun of those that cover the moment.
        let holder = intervals
            .iter()
            .enumerate()
            .filter(|(_, iv)| iv.start <= mid && mid < iv.end)
            .max_by(|x, y| {
                x.1.start
                    .total_cmp(&y.1.start)
                    .then(x.1.order.cmp(&y.1.order))
            })
            .map(|(i, _)| i);
        if let Some((last, lh)) = out.last_mut() {
            if *lh == holder {
                last.end = b;
                continue;
            }
        }
        let seg = match holder {
            Some(i) => Segment {
                start: a,
                end: b,
                name: intervals[i].name.clone(),
                source: Source::Explicit,
            },
            None => Segment::gap(a, b),
        };
        out.push((seg, holder));
    }
    if out.is_empty() {
        return vec![Segment::gap(0.0, wall)];
    }
    out.into_iter().map(|(s, _)| s).collect()
}

/// OpenMP parallel regions over `[0, wall)`, joined when closer than
/// [`MIN_GAP_MS`].
fn openmp_regions(events: &[Event], wall: f64) -> Vec<(f64, f64)> {
    let mut open: Vec<(u64, Option<u64>, f64)> = Vec::new();
    let mut regions: Vec<(f64, f64)> = Vec::new();
    for e in events {
        match e.kind {
            Kind::ParallelBegin { id } => open.push((e.pid, id, e.t_ms)),
            Kind::ParallelEnd { id } => {
                let found = match id {
                    Some(_) => open.iter().rposition(|o| o.0 == e.pid && o.1 == id),
                    None => open.iter().rposition(|o| o.0 == e.pid),
                };
                if let Some(i) = found {
                    let (_, _, s) = open.remove(i);
                    regions.push((s, e.t_ms));
                }
            }
            _ => {}
        }
    }
    regions.extend(open.into_iter().map(|(_, _, s)| (s, wall)));
    regions.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut joined: Vec<(f64, f64)> = Vec::new();
    for (s, e) in regions {
        let (s, e) = (s.clamp(0.0, wall), e.clamp(0.0, wall));
        match joined.last_mut() {
            Some(last) if s - last.1 < MIN_GAP_MS => last.1 = last.1.max(e),
            _ => joined.push((s, e)),
        }
    }
    joined
}

/// Joins gaps shorter than [`MIN_GAP_MS`] to the segment before them (after
/// them, at the start).
fn absorb_short_gaps(segs: Vec<Segment>) -> Vec<Segment> {
    if segs.len() < 2 {
        return segs;
    }
    let mut out: Vec<Segment> = Vec::new();
    let mut carry: Option<f64> = None; // a short leading gap's start
    for mut s in segs {
        let short_gap = s.source == Source::Unmarked && s.len() < MIN_GAP_MS;
        if short_gap {
            match out.last_mut() {
                Some(prev) => prev.end = s.end,
                None => carry = Some(carry.unwrap_or(s.start)),
            }
            continue;
        }
        if let Some(c) = carry.take() {
            s.start = c;
        }
        out.push(s);
    }
    if let (Some(c), Some(first)) = (carry, out.first_mut()) {
        first.start = first.start.min(c);
    }
    if out.is_empty() {
        // Only short gaps: one gap over all of them.
        return vec![Segment::gap(0.0, 0.0)];
    }
    out
}

/// Per-interval values between consecutive samples (skipping intervals
/// shorter than half the sampling interval): (end time, mid time,
/// parallelism, resident bytes, I/O bytes per second).
fn intervals(samples: &[Sample], interval_ms: f64) -> Vec<(f64, f64, f64, f64, f64)> {
    let mut out = Vec::new();
    let mut prev = Sample::default(); // the start: nothing yet
    for s in samples {
        let dt = s.t - prev.t;
        if dt < interval_ms * 0.5 {
            // Too short to measure: the next interval starts from `prev` too.
            continue;
        }
        let par = s.cpu_ns.saturating_sub(prev.cpu_ns) as f64 / 1e6 / dt;
        let io = s.io_bytes.saturating_sub(prev.io_bytes) as f64 * 1000.0 / dt;
        out.push((s.t, (s.t + prev.t) / 2.0, par, s.rss as f64, io));
        prev = *s;
    }
    out
}

/// Change points inside `[a, b)`, in time order.
pub fn change_points(samples: &[Sample], a: f64, b: f64, interval_ms: f64) -> Vec<f64> {
    let pts: Vec<_> = intervals(samples, interval_ms)
        .into_iter()
        .filter(|p| p.0 > a && p.0 <= b)
        .collect();
    let w = ((WINDOW_MS / interval_ms).round() as usize).max(3);
    if pts.len() < 2 * w {
        return Vec::new();
    }
    let mean = |s: &[(f64, f64, f64, f64, f64)], f: fn(&(f64, f64, f64, f64, f64)) -> f64| {
        s.iter().map(f).sum::<f64>() / s.len() as f64
    };
    let mut scores: Vec<(usize, f64)> = Vec::new();
    for k in w..=pts.len() - w {
        let (l, r) = (&pts[k - w..k], &pts[k..k + w]);
        let (pl, pr) = (mean(l, |p| p.2), mean(r, |p| p.2));
        let (ml, mr) = (mean(l, |p| p.3), mean(r, |p| p.3));
        let (il, ir) = (mean(l, |p| p.4), mean(r, |p| p.4));
        let score = ((pl - pr).abs() / PARALLELISM_SHIFT)
            .max((ml - mr).abs() / (RSS_SHIFT_BYTES.max(RSS_SHIFT_SHARE * ml.max(mr))))
            .max((il - ir).abs() / (IO_SHIFT_BYTES.max(IO_SHIFT_SHARE * il.max(ir))));
        scores.push((k, score));
    }
    // Local maxima of at least 1, strongest first.
    let mut cands: Vec<(f64, f64)> = Vec::new();
    for (i, &(k, s)) in scores.iter().enumerate() {
        if s < 1.0 {
            continue;
        }
        let lo = i.saturating_sub(w);
        let hi = (i + w + 1).min(scores.len());
        if scores[lo..hi].iter().all(|&(_, o)| o <= s) {
            cands.push((pts[k - 1].0, s));
        }
    }
    cands.sort_by(|x, y| y.1.total_cmp(&x.1));
    let mut chosen: Vec<f64> = Vec::new();
    for (t, _) in cands {
        if t - a >= MIN_PHASE_MS
            && b - t >= MIN_PHASE_MS
            && chosen.iter().all(|c| (c - t).abs() >= MIN_PHASE_MS)
        {
            chosen.push(t);
        }
    }
    chosen.sort_by(f64::total_cmp);
    chosen
}

/// Cuts `[0, wall)` into phases (see the module's documentation).
pub fn cut(events: &[Event], samples: &[Sample], wall: f64, interval_ms: f64) -> Vec<Segment> {
    let regions = openmp_regions(events, wall);
    let mut out = Vec::new();
    for seg in absorb_short_gaps(explicit_partition(events, wall)) {
        if seg.source != Source::Unmarked {
            out.push(seg);
            continue;
        }
        // OpenMP regions inside the gap.
        let mut parts = Vec::new();
        let mut at = seg.start;
        for &(s, e) in &regions {
            let (s, e) = (s.max(seg.start), e.min(seg.end));
            if e - s < MIN_GAP_MS {
                continue;
            }
            if s > at {
                parts.push(Segment::gap(at, s));
            }
            parts.push(Segment {
                start: s,
                end: e,
                name: Some("openmp".to_string()),
                source: Source::OpenMp,
            });
            at = e;
        }
        if at < seg.end || parts.is_empty() {
            parts.push(Segment::gap(at, seg.end));
        }
        for part in absorb_short_gaps(parts) {
            if part.source != Source::Unmarked {
                out.push(part);
                continue;
            }
            let cuts = change_points(samples, part.start, part.end, interval_ms);
            if cuts.is_empty() {
                out.push(part);
                continue;
            }
            let mut from = part.start;
            for c in cuts.into_iter().chain(std::iter::once(part.end)) {
                out.push(Segment {
                    start: from,
                    end: c,
                    name: None,
                    source: Source::Detected,
                });
                from = c;
            }
        }
    }
    out
}

/// Nearest-rank percentile `q` (0..=1) of `v`, sorted in place.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The value of a total at time `t`, linear between samples (0 at the start).
fn total_at(samples: &[Sample], t: f64, f: fn(&Sample) -> u64) -> f64 {
    let mut prev = Sample::default();
    for s in samples {
        if s.t >= t {
            let span = s.t - prev.t;
            if span <= 0.0 {
                return f(s) as f64;
            }
            let (a, b) = (f(&prev) as f64, f(s) as f64);
            return a + (b - a) * (t - prev.t) / span;
        }
        prev = *s;
    }
    f(&prev) as f64
}

/// The I/O class of a rate and the bytes moved per call.
pub fn io_class(bytes_per_sec: f64, bytes_per_call: f64) -> IoClass {
    if bytes_per_sec < IO_NONE_BELOW {
        IoClass::None
    } else if bytes_per_sec < IO_LIGHT_BELOW {
        IoClass::Light
    } else if bytes_per_call >= IO_SEQUENTIAL_CALL {
        IoClass::Sequential
    } else {
        IoClass::Random
    }
}

/// The share of a phase's samples, and the fewest samples, that must show
/// a thread count for it to be the phase's `max_useful`.
const SUSTAINED_SHARE: f64 = 0.05;
const SUSTAINED_MIN_SAMPLES: usize = 2;

/// The most threads running at once that the phase sustains: the largest
/// count seen in at least 5 % of its samples and in at least two (all of
/// them when it has fewer). One sample that caught a helper thread, or a
/// worker of the phase before still exiting, does not make a one-thread
/// phase ask for two vCPUs.
fn sustained_max(mut running: Vec<u32>) -> u32 {
    if running.is_empty() {
        return 0;
    }
    running.sort_unstable_by(|a, b| b.cmp(a));
    let share = (running.len() as f64 * SUSTAINED_SHARE).ceil() as usize;
    let k = share.max(SUSTAINED_MIN_SAMPLES).min(running.len());
    running[k - 1]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The figures of `seg` (phase `id`). With `ws_from_rss`, the working set
/// is the largest resident set; otherwise the most bytes referenced in one
/// window overlapping the phase (the nearest window for a phase that
/// overlaps none), but at least the phase's growth in resident memory, and
/// at most the peak.
pub fn phase_stats(
    seg: &Segment,
    id: u32,
    samples: &[Sample],
    windows: &[WsWindow],
    ws_from_rss: bool,
    interval_ms: f64,
) -> ProfilePhase {
    // (wall ms, CPU ms) of the intervals in the phase, gathered into
    // windows of at least PARALLELISM_WINDOW_MS (a short last one joins the
    // one before).
    let mut blocks: Vec<(f64, f64)> = Vec::new();
    let mut prev = Sample::default();
    for s in samples {
        let dt = s.t - prev.t;
        if dt < interval_ms * 0.5 {
            continue;
        }
        let mid = (s.t + prev.t) / 2.0;
        let cpu = s.cpu_ns.saturating_sub(prev.cpu_ns) as f64 / 1e6;
        prev = *s;
        if !(seg.start <= mid && mid < seg.end) {
            continue;
        }
        match blocks.last_mut() {
            Some(b) if b.0 < PARALLELISM_WINDOW_MS => {
                b.0 += dt;
                b.1 += cpu;
            }
            _ => blocks.push((dt, cpu)),
        }
    }
    if blocks.len() > 1 {
        if let Some(&(w, c)) = blocks.last() {
            if w < PARALLELISM_WINDOW_MS / 2.0 {
                blocks.pop();
                if let Some(b) = blocks.last_mut() {
                    b.0 += w;
                    b.1 += c;
                }
            }
        }
    }
    let mut pars: Vec<f64> = blocks.iter().map(|&(w, c)| c / w).collect();
    let dur = seg.len();
    if pars.is_empty() && dur > 0.0 {
        // Shorter than a sample: CPU time over the phase as a whole.
        let cpu =
            total_at(samples, seg.end, |s| s.cpu_ns) - total_at(samples, seg.start, |s| s.cpu_ns);
        pars.push(cpu / 1e6 / dur);
    }
    let p50 = round3(percentile(&mut pars, 0.5));
    let p95 = round3(percentile(&mut pars, 0.95)).max(p50);
    // A sample tells of the interval that ends with it: one at a phase's
    // start belongs to the phase before.
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| seg.start < s.t && s.t <= seg.end)
        .collect();
    let nearest = || {
        samples
            .iter()
            .min_by(|a, b| {
                let da = (a.t - (seg.start + seg.end) / 2.0).abs();
                let db = (b.t - (seg.start + seg.end) / 2.0).abs();
                da.total_cmp(&db)
            })
            .copied()
            .unwrap_or_default()
    };
    let (max_useful, peak) = if inside.is_empty() {
        let n = nearest();
        (n.running, n.rss)
    } else {
        (
            sustained_max(inside.iter().map(|s| s.running).collect()),
            inside.iter().map(|s| s.rss).max().unwrap_or(0),
        )
    };
    let working_set = if ws_from_rss {
        peak
    } else {
        let overlapping = windows
            .iter()
            .filter(|w| w.start < seg.end && w.end > seg.start)
            .map(|w| w.bytes)
            .max();
        let ws = overlapping.or_else(|| {
            windows
                .iter()
                .min_by(|a, b| {
                    let da = (a.end - seg.start).abs().min((a.start - seg.end).abs());
                    let db = (b.end - seg.start).abs().min((b.start - seg.end).abs());
                    da.total_cmp(&db)
                })
                .map(|w| w.bytes)
        });
        // A phase that sweeps more memory than one window sees (a slow
        // first pass, as under emulation) still needs what it made
        // resident: never less than its growth in resident memory.
        let before = total_at(samples, seg.start, |s| s.rss);
        let grown = peak.saturating_sub(before as u64);
        match ws {
            Some(ws) if peak > 0 => ws.max(grown).min(peak),
            Some(ws) => ws,
            None => peak,
        }
    };
    let (rate, per_call) = if dur > 0.0 {
        let bytes = total_at(samples, seg.end, |s| s.io_bytes)
            - total_at(samples, seg.start, |s| s.io_bytes);
        let calls = total_at(samples, seg.end, |s| s.io_calls)
            - total_at(samples, seg.start, |s| s.io_calls);
        let per_call = if calls >= 1.0 { bytes / calls } else { bytes };
        ((bytes.max(0.0) * 1000.0 / dur), per_call)
    } else {
        (0.0, 0.0)
    };
    ProfilePhase {
        id,
        name: seg.name.clone(),
        source: seg.source.as_str().to_string(),
        start_ms: seg.start.max(0.0).round() as u64,
        duration_ms: dur.max(0.0).round() as u64,
        parallelism_p50: p50,
        parallelism_p95: p95,
        max_useful,
        working_set_bytes: working_set,
        peak_bytes: peak,
        io_bytes_per_sec: rate.round() as u64,
        io_class: io_class(rate, per_call).as_str().to_string(),
        samples: inside.len() as u64,
        cpu_ms: Some(round3(
            (total_at(samples, seg.end, |s| s.cpu_ns) - total_at(samples, seg.start, |s| s.cpu_ns))
                .max(0.0)
                / 1e6,
        )),
        profiler_cpu_ms: None,
        functions: Vec::new(),
        spread: None,
    }
}

/// The profiler's own CPU time within `seg`, milliseconds.
pub fn profiler_cpu_ms(seg: &Segment, samples: &[Sample]) -> f64 {
    let at = |t| total_at(samples, t, |s| s.profiler_cpu_ns);
    round3((at(seg.end) - at(seg.start)).max(0.0) / 1e6)
}

/// Makes rounded phases contiguous: each starts where the previous ended.
pub fn tidy(mut phases: Vec<ProfilePhase>) -> Vec<ProfilePhase> {
    let mut end = 0;
    phases.retain(|p| p.duration_ms > 0 || p.samples > 0);
    for p in &mut phases {
        if p.start_ms < end {
            let e = p.start_ms + p.duration_ms;
            p.start_ms = end;
            p.duration_ms = e.saturating_sub(end);
        }
        end = p.start_ms + p.duration_ms;
    }
    for (i, p) in phases.iter_mut().enumerate() {
        p.id = i as u32 + 1;
    }
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: f64, pid: u64, kind: Kind) -> Event {
        Event { t_ms: t, pid, kind }
    }

    fn begin(t: f64, id: u64, name: &str) -> Event {
        ev(
            t,
            1,
            Kind::PhaseBegin {
                id,
                name: Some(name.into()),
            },
        )
    }

    fn end(t: f64, id: u64) -> Event {
        ev(t, 1, Kind::PhaseEnd { id })
    }

    /// Samples every 10 ms with `par(t)` threads busy and `rss(t)` bytes.
    fn samples(wall: f64, par: impl Fn(f64) -> f64, rss: impl Fn(f64) -> u64) -> Vec<Sample> {
        let mut v = Vec::new();
        let mut cpu = 0.0;
        let mut t = 10.0;
        while t <= wall {
            cpu += par(t - 5.0) * 10.0 * 1e6;
            v.push(Sample {
                t,
                running: par(t - 5.0).ceil() as u32,
                cpu_ns: cpu as u64,
                rss: rss(t),
                io_bytes: 0,
                io_calls: 0,
                profiler_cpu_ns: 0,
            });
            t += 10.0;
        }
        v
    }

    fn spans(segs: &[Segment]) -> Vec<(f64, f64, Option<&str>, Source)> {
        segs.iter()
            .map(|s| (s.start, s.end, s.name.as_deref(), s.source))
            .collect()
    }

    #[test]
    fn explicit_phases_innermost_wins_and_short_gaps_join() {
        let events = vec![
            begin(2.0, 1, "main"),
            begin(10.0, 2, "load"),
            end(400.0, 2),
            begin(450.0, 3, "compute"),
            end(900.0, 3),
            end(950.0, 1),
        ];
        let segs = cut(&events, &[], 1000.0, 10.0);
        assert_eq!(
            spans(&segs),
            vec![
                (0.0, 10.0, Some("main"), Source::Explicit),
                (10.0, 400.0, Some("load"), Source::Explicit),
                (400.0, 450.0, Some("main"), Source::Explicit),
                (450.0, 900.0, Some("compute"), Source::Explicit),
                (900.0, 1000.0, Some("main"), Source::Explicit),
            ]
        );
        // Without the enclosing phase: the 2 ms before load joins load, the
        // 50 ms between the phases joins load, the last 100 ms is a gap.
        let events = vec![
            begin(2.0, 2, "load"),
            end(400.0, 2),
            begin(450.0, 3, "compute"),
            end(900.0, 3),
        ];
        let segs = cut(&events, &[], 1000.0, 10.0);
        assert_eq!(
            spans(&segs),
            vec![
                (0.0, 450.0, Some("load"), Source::Explicit),
                (450.0, 900.0, Some("compute"), Source::Explicit),
                (900.0, 1000.0, None, Source::Unmarked),
            ]
        );
        // The same id in two processes is two phases; an unended phase
        // lasts to the end.
        let events = vec![
            ev(
                0.0,
                7,
                Kind::PhaseBegin {
                    id: 1,
                    name: Some("a".into()),
                },
            ),
            ev(500.0, 7, Kind::PhaseEnd { id: 1 }),
            ev(
                500.0,
                8,
                Kind::PhaseBegin {
                    id: 1,
                    name: Some("b".into()),
                },
            ),
        ];
        let segs = cut(&events, &[], 1000.0, 10.0);
        assert_eq!(
            spans(&segs),
            vec![
                (0.0, 500.0, Some("a"), Source::Explicit),
                (500.0, 1000.0, Some("b"), Source::Explicit),
            ]
        );
    }

    #[test]
    fn openmp_regions_join_into_sustained_phases() {
        let mut events = Vec::new();
        // Ten 40 ms regions 10 ms apart from 200 ms, then one far later.
        for i in 0..10u32 {
            let t = 200.0 + f64::from(i) * 50.0;
            let id = Some(u64::from(i));
            events.push(ev(t, 1, Kind::ParallelBegin { id }));
            events.push(ev(t + 40.0, 1, Kind::ParallelEnd { id }));
        }
        events.push(ev(1200.0, 1, Kind::ParallelBegin { id: None }));
        events.push(ev(1210.0, 1, Kind::ParallelEnd { id: None }));
        let segs = cut(&events, &[], 1500.0, 10.0);
        assert_eq!(
            spans(&segs),
            vec![
                (0.0, 200.0, None, Source::Unmarked),
                (200.0, 690.0, Some("openmp"), Source::OpenMp),
                (690.0, 1500.0, None, Source::Unmarked),
            ]
        );
    }

    #[test]
    fn max_useful_is_the_count_a_phase_sustains_not_one_outlier() {
        // A one-thread phase of 100 samples where one sample caught a
        // second thread: one thread. Then a phase with 4 threads in a
        // tenth of its samples: four.
        let mut one = vec![1; 100];
        one[40] = 2;
        assert_eq!(sustained_max(one), 1);
        let four: Vec<u32> = (0..100).map(|i| if i % 10 == 0 { 4 } else { 1 }).collect();
        assert_eq!(sustained_max(four), 4);
        // Too few samples for a share: the second largest, then the only one.
        assert_eq!(sustained_max(vec![3, 1, 2]), 2);
        assert_eq!(sustained_max(vec![3]), 3);
        assert_eq!(sustained_max(Vec::new()), 0);
    }

    #[test]
    fn change_points_split_parallelism_and_memory_shifts() {
        // 2 threads for 600 ms, then 1 thread for 600 ms.
        let s = samples(1200.0, |t| if t < 600.0 { 2.0 } else { 1.0 }, |_| 1 << 20);
        let segs = cut(&[], &s, 1200.0, 10.0);
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert!((segs[0].end - 600.0).abs() <= 20.0, "{segs:?}");
        assert_eq!(segs[0].source, Source::Detected);
        let a = phase_stats(&segs[0], 1, &s, &[], true, 10.0);
        let b = phase_stats(&segs[1], 2, &s, &[], true, 10.0);
        assert!((a.parallelism_p50 - 2.0).abs() < 0.01, "{a:?}");
        assert!((b.parallelism_p50 - 1.0).abs() < 0.01, "{b:?}");
        assert_eq!((a.max_useful, b.max_useful), (2, 1));
        // Memory that jumps from 100 MiB to 400 MiB at 800 ms, steady CPU.
        let s = samples(
            1500.0,
            |_| 1.0,
            |t| if t < 800.0 { 100 << 20 } else { 400 << 20 },
        );
        let cuts = change_points(&s, 0.0, 1500.0, 10.0);
        assert_eq!(cuts.len(), 1);
        assert!((cuts[0] - 800.0).abs() <= 20.0, "{cuts:?}");
        // Noise below the thresholds and short runs are not cut.
        let s = samples(2000.0, |t| 1.0 + 0.2 * (t / 10.0).sin(), |_| 1 << 20);
        assert!(change_points(&s, 0.0, 2000.0, 10.0).is_empty());
        let s = samples(400.0, |t| if t < 200.0 { 4.0 } else { 1.0 }, |_| 0);
        assert!(change_points(&s, 0.0, 400.0, 10.0).is_empty());
    }

    #[test]
    fn figures_of_a_phase() {
        let s = samples(1000.0, |_| 3.0, |t| (t as u64) << 20);
        let seg = Segment::gap(200.0, 700.0);
        let windows = [
            WsWindow {
                start: 0.0,
                end: 200.0,
                bytes: 50 << 20,
            },
            WsWindow {
                start: 200.0,
                end: 400.0,
                bytes: 80 << 20,
            },
            WsWindow {
                start: 400.0,
                end: 600.0,
                bytes: 2000 << 20,
            },
            WsWindow {
                start: 800.0,
                end: 1000.0,
                bytes: 1,
            },
        ];
        let p = phase_stats(&seg, 4, &s, &windows, false, 10.0);
        assert_eq!(p.id, 4);
        assert_eq!((p.start_ms, p.duration_ms), (200, 500));
        assert_eq!(p.parallelism_p50, 3.0);
        assert_eq!(p.samples, 50);
        assert_eq!(p.peak_bytes, 700 << 20);
        // The largest overlapping window, at most the peak.
        assert_eq!(p.working_set_bytes, 700 << 20);
        assert_eq!(p.io_class, "none");
        let rss = phase_stats(&seg, 4, &s, &windows, true, 10.0);
        assert_eq!(rss.working_set_bytes, rss.peak_bytes);
        // A phase shorter than a sample still gets figures.
        let tiny = phase_stats(&Segment::gap(501.0, 503.0), 1, &s, &windows, false, 10.0);
        assert!((tiny.parallelism_p50 - 3.0).abs() < 0.01, "{tiny:?}");
        assert_eq!(tiny.samples, 0);
    }

    #[test]
    fn io_classes() {
        assert_eq!(io_class(0.0, 0.0), IoClass::None);
        assert_eq!(io_class(100.0 * 1024.0, 4096.0), IoClass::Light);
        assert_eq!(io_class(50.0 * 1048576.0, 1048576.0), IoClass::Sequential);
        assert_eq!(io_class(50.0 * 1048576.0, 4096.0), IoClass::Random);
    }

    #[test]
    fn percentiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.95), 5.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }
}

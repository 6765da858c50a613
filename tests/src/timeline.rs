//! Timeline pictures of a sampled run: what the VM had against what the
//! workload used, per resource, with the workload's phases shaded, the
//! hints it sent and perfvmm's decisions marked. SVG, drawn with plotters.
//!
//! Everything is placed on the guest's clock (its uptime, as in the
//! `sample t_ms=..` lines). A console line without a time of its own (a
//! phase starting, a hint sent) takes the time of the sample before it:
//! samples come every 100 ms, so markers are within that of the truth.
//! Decisions carry perfvmm's clock; they are moved onto the guest's by the
//! offset the trace alignment found (`trace::Recording::offset_ms`).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

use crate::trace::{parse_sample, GuestSample};

/// A stretch of the run named by the workload's console.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: String,
    /// Seconds on the guest's clock.
    pub start_s: f64,
    pub end_s: f64,
}

/// Which panel a decision belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Vcpus,
    Memory,
}

/// A decision of perfvmm's, on the guest's clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub t_s: f64,
    pub resource: Resource,
    pub applied: bool,
}

/// One run, ready to draw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    pub title: String,
    pub samples: Vec<GuestSample>,
    pub phases: Vec<Phase>,
    /// When the guest sent each hint, seconds.
    pub hints: Vec<f64>,
    pub decisions: Vec<Decision>,
}

/// The programs whose console lines mark phases: `PROGRAM: phase NAME`.
const PHASE_PRINTERS: [&str; 2] = ["demo-workload: ", "hashjoin: "];

/// What a phase-marking program printed on a line, if it did.
fn printed(line: &str) -> Option<&str> {
    PHASE_PRINTERS
        .iter()
        .find_map(|p| Some(&line[line.find(p)? + p.len()..]))
}

/// The phase a console line starts, if it starts one: `demo-workload:
/// phase NAME ...`, `hashjoin: phase NAME` or `demo-workload: idle`.
fn phase_start(line: &str) -> Option<String> {
    let rest = printed(line)?;
    if let Some(p) = rest.strip_prefix("phase ") {
        return p.split_whitespace().next().map(str::to_string);
    }
    (rest.trim_end() == "idle").then(|| "idle".to_string())
}

/// Whether a console line ends the current phase without starting another.
fn phase_end(line: &str) -> bool {
    printed(line).is_some_and(|r| r.starts_with("work done") || r.starts_with("idle ends"))
}

impl Timeline {
    /// Reads samples, phases and hints from a run's console.
    pub fn from_console(title: &str, console: &str) -> Self {
        let mut t = Timeline {
            title: title.to_string(),
            ..Timeline::default()
        };
        let first = console
            .lines()
            .find_map(parse_sample)
            .map(|s| s.t_ms / 1000.0);
        // Lines before the first sample take its time.
        let mut now = first;
        let mut open: Option<(String, f64)> = None;
        for line in console.lines() {
            if let Some(s) = parse_sample(line) {
                now = Some(s.t_ms / 1000.0);
                t.samples.push(s);
                continue;
            }
            let Some(at) = now else { continue };
            if line.contains("perfhint-trace seq=") {
                t.hints.push(at);
            }
            let starts = phase_start(line);
            if starts.is_some() || phase_end(line) {
                if let Some((name, start_s)) = open.take() {
                    t.phases.push(Phase {
                        name,
                        start_s,
                        end_s: at,
                    });
                }
                open = starts.map(|n| (n, at));
            }
        }
        if let (Some((name, start_s)), Some(end_s)) = (open, now) {
            t.phases.push(Phase {
                name,
                start_s,
                end_s,
            });
        }
        t
    }

    /// Adds the decisions of a `--decision-log`, whose clock is `offset_ms`
    /// ahead of the guest's. Lines that are not decisions (ejections,
    /// reloads, truncation markers) are skipped.
    pub fn with_decisions(mut self, decision_log: &str, offset_ms: f64) -> Self {
        for v in decision_log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let resource = match v["resource"].as_str() {
                Some("vcpus") => Resource::Vcpus,
                Some("memory") => Resource::Memory,
                _ => continue,
            };
            let Some(t_ms) = v["t_ms"].as_f64() else {
                continue;
            };
            self.decisions.push(Decision {
                t_s: (t_ms - offset_ms) / 1000.0,
                resource,
                applied: v["applied"].as_bool().unwrap_or(false),
            });
        }
        self
    }

    /// Writes the picture: vCPUs above, memory below.
    pub fn write_svg(&self, path: &Path) -> Result<(), String> {
        let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
        self.draw(&root)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        root.present()
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn draw(
        &self,
        root: &DrawingArea<SVGBackend, Shift>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let root = root.titled(&self.title, ("sans-serif", 18))?;
        let (top, bottom) = root.split_vertically(250);
        let t0 = self.samples.first().map_or(0.0, |s| s.t_ms / 1000.0);
        let t1 = self
            .samples
            .last()
            .map_or(1.0, |s| s.t_ms / 1000.0)
            .max(t0 + 1.0);
        let max_cpus = self
            .samples
            .iter()
            .map(|s| f64::from(s.cpus).max(s.running))
            .fold(1.0, f64::max);
        let cpu = Panel {
            label: "vCPUs",
            y_max: max_cpus + 1.0,
            allocated: self.series(|s| f64::from(s.cpus)),
            used: self.series(|s| s.running),
            used_label: "workload's running threads",
            resource: Resource::Vcpus,
        };
        let mib = |kib: u64| kib as f64 / 1024.0;
        let max_mib = self
            .samples
            .iter()
            .map(|s| mib(s.mem_total_kib.max(s.mem_used_kib)))
            .fold(64.0, f64::max);
        let mem = Panel {
            label: "memory, MiB",
            y_max: max_mib * 1.15,
            allocated: self.series(|s| mib(s.mem_total_kib)),
            used: self.series(|s| mib(s.mem_used_kib)),
            used_label: "in use (MemTotal - MemAvailable)",
            resource: Resource::Memory,
        };
        self.draw_panel(&top, &cpu, t0..t1)?;
        self.draw_panel(&bottom, &mem, t0..t1)?;
        Ok(())
    }

    fn series(&self, f: impl Fn(&GuestSample) -> f64) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .map(|s| (s.t_ms / 1000.0, f(s)))
            .collect()
    }

    fn draw_panel(
        &self,
        area: &DrawingArea<SVGBackend, Shift>,
        p: &Panel,
        x: std::ops::Range<f64>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(56)
            .build_cartesian_2d(x, 0.0..p.y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE.mix(0.0))
            .x_desc("guest uptime, s")
            .y_desc(p.label)
            .draw()?;
        let shade = [RGBColor(255, 214, 153), RGBColor(188, 222, 255)];
        for (i, ph) in self.phases.iter().enumerate() {
            let c = shade[i % shade.len()].mix(0.45).filled();
            chart.draw_series(std::iter::once(Rectangle::new(
                [(ph.start_s, 0.0), (ph.end_s, p.y_max)],
                c,
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                ph.name.clone(),
                (ph.start_s, p.y_max * 0.97),
                ("sans-serif", 12),
            )))?;
        }
        let marks = self.decisions.iter().filter(|d| d.resource == p.resource);
        for d in marks {
            let colour = if d.applied { RED } else { BLACK };
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(d.t_s, 0.0), (d.t_s, p.y_max)],
                colour.mix(0.6).stroke_width(1),
            )))?;
        }
        if p.resource == Resource::Vcpus {
            chart.draw_series(
                self.hints
                    .iter()
                    .map(|t| TriangleMarker::new((*t, p.y_max * 0.03), 4, MAGENTA.filled())),
            )?;
        }
        chart
            .draw_series(LineSeries::new(step(&p.allocated), BLUE.stroke_width(2)))?
            .label("allocated (guest sees)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(p.used.clone(), GREEN.stroke_width(1)))?
            .label(p.used_label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN));
        if p.resource == Resource::Vcpus {
            chart
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
                .label("decision (red: applied), hint sent (triangle)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.mix(0.6)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 12))
            .draw()?;
        Ok(())
    }
}

/// One panel's data.
struct Panel {
    label: &'static str,
    y_max: f64,
    allocated: Vec<(f64, f64)>,
    used: Vec<(f64, f64)>,
    used_label: &'static str,
    resource: Resource,
}

/// A step line through `points`: each value holds until the next point.
fn step(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push((p.0, points[i - 1].1));
        }
        out.push(*p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
demo-workload: perf-hint device present
demo-workload: phase serial
[    9.1] sample t_ms=9000 running=0 procs=1 cpus=1 mem_total_kib=400000 mem_used_kib=50000
perfhint-trace seq=1 kind=phase_begin
[    9.2] sample t_ms=9100 running=1 procs=1 cpus=1 mem_total_kib=400000 mem_used_kib=50000
demo-workload: phase parallel (4 threads) starts with 4 CPU(s) online
sample t_ms=9200 running=4 procs=4 cpus=4 mem_total_kib=400000 mem_used_kib=50000
demo-workload: work done in 200 ms
demo-workload: idle
sample t_ms=9300 running=0 procs=0 cpus=4 mem_total_kib=400000 mem_used_kib=50000
";

    #[test]
    fn phases_hints_and_samples_come_from_the_console() {
        let t = Timeline::from_console("x", CONSOLE);
        assert_eq!(t.samples.len(), 4);
        assert_eq!(t.hints, vec![9.0]);
        // `phase serial` came before the first sample: it starts there.
        let names: Vec<_> = t.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["serial", "parallel", "idle"]);
        assert_eq!((t.phases[0].start_s, t.phases[0].end_s), (9.0, 9.1));
        assert_eq!((t.phases[1].start_s, t.phases[1].end_s), (9.1, 9.2));
        // The last phase runs to the last sample.
        assert_eq!(t.phases[2].end_s, 9.3);
    }

    #[test]
    fn decisions_move_onto_the_guest_clock_and_others_are_skipped() {
        let log = r#"{"t_ms":1500,"resource":"vcpus","from":1,"to":4,"applied":true}
{"t_ms":1600,"event":"ejected","vcpu":3}
{"t_ms":2500,"resource":"memory","from":1,"to":2,"applied":false}
not json"#;
        let t = Timeline::default().with_decisions(log, -7500.0);
        assert_eq!(
            t.decisions,
            vec![
                Decision {
                    t_s: 9.0,
                    resource: Resource::Vcpus,
                    applied: true
                },
                Decision {
                    t_s: 10.0,
                    resource: Resource::Memory,
                    applied: false
                },
            ]
        );
    }

    #[test]
    fn the_picture_is_an_svg_with_both_panels() {
        let t = Timeline::from_console("demo, schedule", CONSOLE)
            .with_decisions(r#"{"t_ms":9050,"resource":"vcpus","applied":true}"#, 0.0);
        let dir = std::env::temp_dir().join(format!("timeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        t.write_svg(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in [
            "demo, schedule",
            "vCPUs",
            "memory, MiB",
            "parallel",
            "allocated",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn step_holds_each_value_until_the_next_point() {
        assert_eq!(
            step(&[(0.0, 1.0), (1.0, 4.0), (2.0, 2.0)]),
            vec![(0.0, 1.0), (1.0, 1.0), (1.0, 4.0), (2.0, 4.0), (2.0, 2.0)]
        );
    }
}

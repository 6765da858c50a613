//! A report as a readable table, and as an SVG picture (the scaling curve;
//! cost against time when hosts have prices).

use std::fmt::Write;

use plotters::prelude::*;

use crate::Report;

/// Seconds with one or two decimals, or minutes past 100 s.
pub fn secs(ms: f64) -> String {
    let s = ms / 1000.0;
    if s >= 100.0 {
        format!("{:.1} min", s / 60.0)
    } else if s >= 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.2} s")
    }
}

fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes.div_ceil(1 << 20))
    }
}

/// The report as text for a terminal.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let cpus: Vec<String> = r.profiled_cpus.iter().map(u32::to_string).collect();
    let _ = writeln!(
        o,
        "{}: {} phases, from profiles on {} CPU(s)",
        r.program,
        r.model.phases.len(),
        cpus.join(", ")
    );
    let _ = writeln!(
        o,
        "memory: {} (largest peak + {:.0} %)",
        mib(r.memory_need_bytes),
        r.memory_margin * 100.0
    );
    if let Some(h) = r.host.cores {
        let _ = writeln!(
            o,
            "host: {h} physical cores (vCPUs beyond them run no faster)"
        );
    }
    if !r.host.measured.is_empty() {
        let pts: Vec<String> = r
            .host
            .measured
            .iter()
            .map(|(n, e)| format!("{n} vCPUs = {e:.2} CPUs"))
            .collect();
        let _ = writeln!(o, "host, measured: {}", pts.join(", "));
    }
    for c in &r.changes {
        let _ = writeln!(o, "what-if: {}", describe(c));
    }
    scaling_table(&mut o, r);
    if let Some(h) = &r.hosts {
        hosts_table(&mut o, r, h);
    }
    for n in &r.model.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

fn describe(c: &crate::Change) -> String {
    use crate::Change;
    let pct = |by: f64| format!("{:+.0} %", by * 100.0);
    match c {
        Change::Function { name, by } => format!("function {name} {} time", pct(*by)),
        Change::Phase { name, by } => format!("phase {name} {} time", pct(*by)),
        Change::CpuSpeed(by) => format!("CPU speed {}", pct(*by)),
        Change::Io(by) => format!("I/O speed {}", pct(*by)),
    }
}

fn scaling_table(o: &mut String, r: &Report) {
    let _ = write!(o, "\n{:>6}  {:>10}", "vCPUs", "total");
    for p in &r.model.phases {
        let _ = write!(o, "  {:>10}", truncate(&p.name, 10));
    }
    if !r.changes.is_empty() {
        let _ = write!(o, "  {:>18}", "after the what-if");
    }
    o.push('\n');
    for s in &r.scaling {
        let _ = write!(o, "{:>6}  {:>10}", s.vcpus, secs(s.time_ms));
        for t in &s.phases_ms {
            let _ = write!(o, "  {:>10}", secs(*t));
        }
        if let Some(a) = s.time_after_ms {
            let d = (a / s.time_ms - 1.0) * 100.0;
            let _ = write!(o, "  {:>9} ({d:+.1} %)", secs(a));
        }
        o.push('\n');
    }
    match r.stops_paying_at {
        Some(n) => {
            let _ = writeln!(o, "more than {n} vCPUs save less than 5 % each step");
        }
        None => {
            let _ = writeln!(o, "every step in the table still saves 5 % or more");
        }
    }
}

fn hosts_table(o: &mut String, r: &Report, h: &crate::HostsReport) {
    let _ = writeln!(
        o,
        "\nhosts{}{}:",
        h.source
            .as_deref()
            .map(|s| format!(" ({s}"))
            .unwrap_or_default(),
        match (&h.source, &h.date) {
            (Some(_), Some(d)) => format!(", {d})"),
            (Some(_), None) => ")".into(),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        o,
        "{:<14} {:>5} {:>9} {:>10} {:>15} {:>15}  fits",
        "host", "cores", "memory", "time", "per run", "per month"
    );
    for f in &h.fits {
        let money =
            |v: Option<f64>| v.map_or("-".to_string(), |c| format!("{} {}", money(c), h.currency));
        let fits = match (&f.unfit, f.meets_deadline) {
            (Some(why), _) => format!("no: {why}"),
            (None, false) => "misses the deadline".into(),
            (None, true) => "yes".into(),
        };
        let _ = writeln!(
            o,
            "{:<14} {:>5} {:>9} {:>10} {:>15} {:>15}  {fits}",
            truncate(&f.name, 14),
            f.cores,
            mib(f.memory_bytes),
            secs(f.time_ms),
            money(f.cost_per_run),
            money(f.cost_per_month),
        );
    }
    let deadline = r
        .deadline_ms
        .map(|d| format!(" within {}", secs(d)))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "fastest{deadline}: {}; cheapest{deadline}: {}",
        h.fastest.as_deref().unwrap_or("none"),
        h.cheapest.as_deref().unwrap_or("none")
    );
}

/// An amount with three significant digits (at least two decimals).
pub fn money(c: f64) -> String {
    if !(c.is_finite() && c > 0.0) {
        return "0".to_string();
    }
    let decimals = (2 - c.log10().floor() as i32).clamp(2, 12) as usize;
    format!("{c:.decimals$}")
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The report as an SVG picture: run time against vCPUs (and after the
/// what-if), and, with priced hosts, cost per run against run time.
pub fn svg(r: &Report) -> Result<String, String> {
    let mut out = String::new();
    let priced = r
        .hosts
        .as_ref()
        .is_some_and(|h| h.fits.iter().any(|f| f.cost_per_run.is_some()));
    let width = if priced { 1100 } else { 600 };
    {
        let root = SVGBackend::with_string(&mut out, (width, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = if priced {
            let (l, r) = root.split_horizontally(550);
            (l, Some(r))
        } else {
            (root.clone(), None)
        };
        scaling_chart(&left, r).map_err(|e| e.to_string())?;
        if let (Some(area), Some(h)) = (right, &r.hosts) {
            cost_chart(&area, h).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn scaling_chart<'a>(area: &Area<'a>, r: &Report) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let max_n = r.scaling.iter().map(|s| s.vcpus).max().unwrap_or(1);
    let max_t = r
        .scaling
        .iter()
        .flat_map(|s| [Some(s.time_ms), s.time_after_ms])
        .flatten()
        .fold(0.0, f64::max)
        / 1000.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: predicted run time", r.program),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0u32..max_n + 1, 0.0..max_t * 1.1 + 0.01)?;
    chart
        .configure_mesh()
        .x_desc("vCPUs")
        .y_desc("seconds")
        .draw()?;
    let before: Vec<(u32, f64)> = r
        .scaling
        .iter()
        .map(|s| (s.vcpus, s.time_ms / 1000.0))
        .collect();
    chart
        .draw_series(LineSeries::new(before.clone(), BLUE.stroke_width(2)))?
        .label("as profiled")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart.draw_series(before.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    if r.scaling.iter().any(|s| s.time_after_ms.is_some()) {
        let after: Vec<(u32, f64)> = r
            .scaling
            .iter()
            .filter_map(|s| s.time_after_ms.map(|t| (s.vcpus, t / 1000.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(after, RED.stroke_width(2)))?
            .label("after the what-if")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

fn cost_chart<'a>(
    area: &Area<'a>,
    h: &'a crate::HostsReport,
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let pts: Vec<(f64, f64, &str, bool)> = h
        .fits
        .iter()
        .filter_map(|f| {
            f.cost_per_run
                .map(|c| (f.time_ms / 1000.0, c, f.name.as_str(), f.meets_deadline))
        })
        .collect();
    let max_t = pts.iter().map(|p| p.0).fold(0.0, f64::max);
    let max_c = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("cost per run ({})", h.currency), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_t * 1.15 + 0.01, 0.0..max_c * 1.15 + 1e-6)?;
    chart
        .configure_mesh()
        .x_desc("predicted run time, s")
        .y_desc("cost per run")
        .draw()?;
    for &(t, c, name, ok) in &pts {
        let color = if ok { GREEN.mix(0.9) } else { RED.mix(0.6) };
        chart.draw_series(std::iter::once(Circle::new((t, c), 4, color.filled())))?;
        chart.draw_series(std::iter::once(Text::new(
            name.to_string(),
            (t, c),
            ("sans-serif", 11),
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_amounts_keep_three_digits() {
        assert_eq!(money(0.000421), "0.000421");
        assert_eq!(money(0.0123), "0.0123");
        assert_eq!(money(12.5), "12.50");
        assert_eq!(money(0.0), "0");
        assert_eq!(secs(1500.0), "1.50 s");
        assert_eq!(secs(150_000.0), "2.5 min");
    }
}

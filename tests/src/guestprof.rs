//! Where a guest spends its boot, sampled from outside by the host's kernel
//! (`boot-bench --firecracker PATH --guest-profile System.map`).
//!
//! No VMM sees where its guest's vCPU is between exits, but KVM's
//! `kvm_exit` tracepoint carries the guest's instruction pointer, and the
//! host's own interrupts (its timer tick, mostly) force an exit of reason
//! INTR wherever the guest happens to be: a sampling profiler of the guest
//! that needs nothing from the guest or from the VMM, and that works the
//! same for any VMM. `kvm_vcpu_wakeup` adds how long each halt lasted (the
//! guest waiting, not working).
//!
//! [`sh_functions`] records both into the host's trace buffer around a run
//! and prints them, one short line an event; [`parse`] reads that back and
//! [`report`] names each sample's function and sets the VMMs side by side.
//!
//! The names come from a `System.map` of the guest's kernel or, where the
//! host runs the same kernel as the guest (the nested harness's L1 does:
//! both are Debian's cloud kernel of `images/kernel.env`), from the host's
//! own `/proc/kallsyms`, which `gprof_setup` prints once, moved back to
//! the link-time addresses (Debian's packages ship a placeholder
//! `System.map`; the real one is in the `-dbg` package). The guest's
//! addresses are its link-time ones only without KASLR: run with
//! `--append nokaslr` (the bench does not add it itself, so that the
//! profile is of the command line given).

use std::collections::BTreeMap;

/// Shell functions for a benchmark script run on the host: `gprof_setup`
/// once, `gprof_arm` before a run, `gprof_dump LABEL` after it (prints
/// `=== gprof LABEL ===`, the events as `gp M T` (the run's start), `gp X
/// T RIP` (an INTR exit), `gp W T NS` (a halt of NS ns ended), then
/// `=== gprof end ===`; T in seconds of the host's trace clock).
pub fn sh_functions() -> &'static str {
    r#"GPROF=/sys/kernel/tracing
gprof_setup() {
  [ -d $GPROF/events/kvm ] || mount -t tracefs nodev $GPROF
  [ -d $GPROF/events/kvm ] || echo 'bench: no KVM tracepoints in /sys/kernel/tracing'
  echo 16384 > $GPROF/buffer_size_kb
  echo '=== gprof kallsyms ==='
  awk 'NF == 3 && ($2 == "T" || $2 == "t") { print $1, $3 }' /proc/kallsyms
  echo '=== gprof kallsyms end ==='
  return 0
}
gprof_arm() {
  echo > $GPROF/trace
  echo 1 > $GPROF/events/kvm/kvm_exit/enable
  echo 1 > $GPROF/events/kvm/kvm_vcpu_wakeup/enable
  echo gprof-start > $GPROF/trace_marker
}
gprof_dump() {
  echo 0 > $GPROF/events/kvm/kvm_exit/enable
  echo 0 > $GPROF/events/kvm/kvm_vcpu_wakeup/enable
  echo "=== gprof $1 ==="
  awk '{ e = ""; for (i = 1; i < NF; i++) if ($(i+1) ~ /^(kvm_exit|kvm_vcpu_wakeup|tracing_mark_write):$/) { t = $i; e = $(i+1); break }
    if (e == "") next; sub(/:$/, "", t)
    if (e == "tracing_mark_write:") { if ($0 ~ /gprof-start/) print "gp M", t }
    else if (e == "kvm_vcpu_wakeup:") { for (j = i; j < NF; j++) if ($j == "time") { print "gp W", t, $(j+1); break } }
    else if ($0 ~ / reason interrupt /) { for (j = i; j < NF; j++) if ($j == "rip") { print "gp X", t, $(j+1); break } } }' $GPROF/trace
  echo '=== gprof end ==='
  echo > $GPROF/trace
}
"#
}

/// One run's events, times in ms since the run's start.
#[derive(Debug, Default, PartialEq)]
pub struct Run {
    pub label: String,
    /// `(ms, guest instruction pointer)` of each INTR exit.
    pub samples: Vec<(f64, u64)>,
    /// `(ms, halted ms)` of each halt, at its end.
    pub halts: Vec<(f64, f64)>,
}

/// Reads the runs printed by `gprof_dump`. A run cut short (no end line)
/// or without its start marker is left out.
pub fn parse(console: &str) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut current: Option<(Run, Option<f64>)> = None;
    for line in console.lines() {
        let line = line.trim();
        if line == "=== gprof end ===" {
            if let Some((run, Some(_))) = current.take() {
                runs.push(run);
            }
        } else if let Some(label) = line
            .strip_prefix("=== gprof ")
            .and_then(|l| l.strip_suffix(" ==="))
        {
            let run = Run {
                label: label.into(),
                ..Run::default()
            };
            current = Some((run, None));
        } else if let Some((run, start)) = current.as_mut() {
            event(line, run, start);
        }
    }
    runs
}

/// One `gp` line into `run`; events before the start marker are dropped.
fn event(line: &str, run: &mut Run, start: &mut Option<f64>) {
    let mut w = line.split_whitespace();
    if w.next() != Some("gp") {
        return;
    }
    let (kind, t) = (w.next(), w.next().and_then(|t| t.parse::<f64>().ok()));
    let (Some(kind), Some(t)) = (kind, t) else {
        return;
    };
    if kind == "M" {
        *start = Some(t);
        return;
    }
    let Some(t0) = *start else { return };
    let ms = (t - t0) * 1e3;
    let value = w.next();
    match kind {
        "X" => {
            let rip = value
                .and_then(|v| v.strip_prefix("0x"))
                .and_then(|v| u64::from_str_radix(v, 16).ok());
            if let Some(rip) = rip {
                run.samples.push((ms, rip));
            }
        }
        "W" => {
            if let Some(ns) = value.and_then(|v| v.parse::<f64>().ok()) {
                run.halts.push((ms, ns / 1e6));
            }
        }
        _ => {}
    }
}

/// A kernel's text symbols, from its `System.map` or the host's
/// `/proc/kallsyms`.
#[derive(Debug, Default)]
pub struct SymbolMap {
    /// Sorted by address.
    symbols: Vec<(u64, String)>,
}

/// Where the kernel's own mapping starts (`__START_KERNEL_map`): below it a
/// sample is the decompressor or the kernel's first instructions, which
/// run on physical addresses.
const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// Where x86-64's `_text` is linked (`__START_KERNEL_map` plus the default
/// `CONFIG_PHYSICAL_START`, 16 MiB).
const LINK_TEXT: u64 = 0xffff_ffff_8100_0000;

impl SymbolMap {
    /// Reads `ADDRESS TYPE NAME` lines, keeping text symbols (`t`, `T`,
    /// `w`, `W`); other lines are skipped.
    pub fn parse(text: &str) -> SymbolMap {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let addr = u64::from_str_radix(w.next()?, 16).ok()?;
                let kind = w.next()?;
                let name = w.next()?;
                matches!(kind, "t" | "T" | "w" | "W").then(|| (addr, name.to_string()))
            })
            .collect();
        symbols.sort();
        SymbolMap { symbols }
    }

    /// The host's kernel symbols as `gprof_setup` printed them, moved so
    /// that `_text` is at its link-time address. `None` when the console
    /// has none, or the host hid the addresses (`kptr_restrict`: all zero).
    pub fn from_host(console: &str) -> Option<SymbolMap> {
        let start = console.find("=== gprof kallsyms ===\n")?;
        let body = &console[start..];
        let end = body.find("=== gprof kallsyms end ===")?;
        let text: String = body[..end]
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (addr, name) = l.trim().split_once(' ')?;
                Some(format!("{addr} t {name}\n"))
            })
            .collect();
        let mut map = SymbolMap::parse(&text);
        let base = map.symbols.iter().find(|(_, n)| n == "_text")?.0;
        if base == 0 {
            return None;
        }
        let shift = LINK_TEXT.wrapping_sub(base);
        for (a, _) in &mut map.symbols {
            *a = a.wrapping_add(shift);
        }
        map.symbols.sort();
        Some(map)
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The function holding `rip`: the nearest symbol at or below it, or a
    /// description of where it is when no symbol is.
    pub fn name(&self, rip: u64) -> &str {
        if rip < KERNEL_MAP {
            return "(physical: decompressor, early entry)";
        }
        let i = self.symbols.partition_point(|(a, _)| *a <= rip);
        match i.checked_sub(1).and_then(|i| self.symbols.get(i)) {
            Some((_, name)) => name,
            None => "(below the kernel's text)",
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A line of the report's head: its name, its figure of one run, its unit.
type Row<'a> = (&'a str, &'a dyn Fn(&Run) -> f64, &'a str);

/// Per label (in the order given): runs, median samples, median ms halted,
/// the median time of the first sample in the kernel's own mapping, then
/// the `top` functions by median share of samples.
pub fn report(runs: &[Run], labels: &[&str], map: &SymbolMap, top: usize) -> String {
    let per: Vec<Vec<&Run>> = labels
        .iter()
        .map(|l| runs.iter().filter(|r| r.label == *l).collect())
        .collect();
    let mut s = format!("    {:<36}", "");
    for l in labels {
        s.push_str(&format!(" {l:>16}"));
    }
    s.push('\n');
    s.push_str(&format!("    {:<36}", "runs"));
    for runs in &per {
        s.push_str(&format!(" {:>16}", runs.len()));
    }
    s.push('\n');
    let rows: [Row; 4] = [
        ("INTR samples", &|r| r.samples.len() as f64, ""),
        // (+ 0.0: an empty sum is -0.0.)
        (
            "halted",
            &|r| r.halts.iter().map(|h| h.1).sum::<f64>() + 0.0,
            " ms",
        ),
        (
            "first sample in the kernel's map",
            &|r| {
                r.samples
                    .iter()
                    .find(|(_, rip)| *rip >= KERNEL_MAP)
                    .map_or(f64::NAN, |x| x.0)
            },
            " ms",
        ),
        (
            "last sample",
            &|r| r.samples.last().map_or(f64::NAN, |x| x.0),
            " ms",
        ),
    ];
    for (name, f, unit) in rows {
        s.push_str(&format!("    {name:<36}"));
        for runs in &per {
            let m = median(runs.iter().map(|r| f(r)).collect());
            s.push_str(&format!(" {:>16}", format!("{m:.0}{unit}")));
        }
        s.push('\n');
    }
    s.push_str(&functions(&per, labels, map, top));
    s
}

/// The `top` functions by the largest median share of samples.
fn functions(per: &[Vec<&Run>], labels: &[&str], map: &SymbolMap, top: usize) -> String {
    let shares: Vec<BTreeMap<&str, f64>> = per
        .iter()
        .map(|runs| {
            let mut names: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
            for (i, run) in runs.iter().enumerate() {
                let n = run.samples.len().max(1) as f64;
                for (_, rip) in &run.samples {
                    let v = names.entry(map.name(*rip)).or_default();
                    v.resize(runs.len(), 0.0);
                    v[i] += 100.0 / n;
                }
            }
            names.into_iter().map(|(k, v)| (k, median(v))).collect()
        })
        .collect();
    let mut names: Vec<&str> = shares.iter().flat_map(|m| m.keys().copied()).collect();
    names.sort_unstable();
    names.dedup();
    let largest = |n: &str| {
        shares
            .iter()
            .map(|m| m.get(n).copied().unwrap_or(0.0))
            .fold(0.0, f64::max)
    };
    names.sort_by(|a, b| largest(b).total_cmp(&largest(a)));
    let mut s = format!(
        "    functions, median % of a run's samples ({} named, {} largest shown):\n",
        names.len(),
        names.len().min(top)
    );
    for n in names.into_iter().take(top) {
        s.push_str(&format!("    {:<36}", truncate(n, 36)));
        for (m, _) in shares.iter().zip(labels) {
            s.push_str(&format!(" {:>15.1}%", m.get(n).copied().unwrap_or(0.0)));
        }
        s.push('\n');
    }
    s
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A kind of boot work in the picture: the function-name prefixes that
/// make a sample one of it, its name in the legend and its colour.
struct Kind {
    prefixes: &'static [&'static str],
    name: &'static str,
    color: plotters::style::RGBColor,
}

/// The kinds, in the legend's order; the last, with no prefixes, is the
/// rest.
const KINDS: [Kind; 6] = [
    Kind {
        prefixes: &["(physical"],
        name: "decompressor, reboot (physical addresses)",
        color: plotters::style::RGBColor(230, 97, 1),
    },
    Kind {
        prefixes: &[
            "setup_boot_APIC_clock",
            "calibrate_APIC_clock",
            "lapic_cal_handler",
        ],
        name: "APIC timer calibration",
        color: plotters::style::RGBColor(200, 0, 60),
    },
    Kind {
        prefixes: &[
            "mpi",
            "rsa_",
            "pkcs",
            "x509",
            "asn1",
            "test_akcipher",
            "crypto_",
        ],
        name: "RSA: crypto self-tests, certificates",
        color: plotters::style::RGBColor(94, 60, 153),
    },
    Kind {
        prefixes: &["free_reserved_area", "free_init_pages", "free_initmem"],
        name: "freeing init memory",
        color: plotters::style::RGBColor(27, 158, 119),
    },
    Kind {
        prefixes: &["srso_", "__x86_return_thunk"],
        name: "SRSO return thunks",
        color: plotters::style::RGBColor(120, 120, 120),
    },
    Kind {
        prefixes: &[],
        name: "other kernel work",
        color: plotters::style::RGBColor(166, 206, 227),
    },
];

/// Which of [`KINDS`] a sample's function is part of (the last: none of
/// the others).
fn kind(name: &str) -> usize {
    KINDS
        .iter()
        .position(|k| k.prefixes.iter().any(|p| name.starts_with(p)))
        .unwrap_or(KINDS.len() - 1)
}

/// A run's samples as stripes `(from ms, to ms, kind)`: a sample stands
/// for the time to the next one, at most 10 ms (longer, the guest was not
/// running); neighbours of one kind are one stripe.
fn stripes(samples: &[(f64, u64)], map: &SymbolMap) -> Vec<(f64, f64, usize)> {
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for (i, &(t, rip)) in samples.iter().enumerate() {
        let next = samples.get(i + 1).map_or(t + 3.0, |s| s.0);
        let (end, k) = (next.min(t + 10.0), kind(map.name(rip)));
        match out.last_mut() {
            Some(last) if last.2 == k && last.1 >= t => last.1 = end,
            _ => out.push((t, end, k)),
        }
    }
    out
}

/// A picture of every run: a row per boot, time from the VMM's exec to
/// the right, each sample a stripe coloured by what it was doing. Blank
/// stretches are the guest not running: the VMM's setup before its first
/// instruction, or the host handling its exits.
pub fn write_svg(
    runs: &[Run],
    labels: &[&str],
    map: &SymbolMap,
    path: &std::path::Path,
) -> Result<(), String> {
    use plotters::prelude::*;
    let rows: Vec<&Run> = labels
        .iter()
        .flat_map(|l| runs.iter().filter(move |r| r.label == *l))
        .collect();
    let end = rows
        .iter()
        .filter_map(|r| r.samples.last().map(|s| s.0))
        .fold(100.0, f64::max);
    let height = 120 + 28 * rows.len() as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let names: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = rows[..i].iter().filter(|x| x.label == r.label).count() + 1;
            format!("{} {n}", r.label)
        })
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("where each guest was during its boot", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(140)
        .build_cartesian_2d(0.0..end * 1.02, -0.5..rows.len() as f64 - 0.5)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(rows.len())
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("ms since the VMM's exec")
        .draw()
        .map_err(|e| err(&e))?;
    for (row, run) in rows.iter().enumerate() {
        let y = row as f64;
        let stripes = stripes(&run.samples, map).into_iter().map(|(from, to, k)| {
            Rectangle::new([(from, y - 0.35), (to, y + 0.35)], KINDS[k].color.filled())
        });
        chart.draw_series(stripes).map_err(|e| err(&e))?;
    }
    for Kind { name, color, .. } in KINDS {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
gp X 1.0 0xffffffff81000010
=== gprof fc ===
gp X 9.000 0xffffffff81000010
gp M 10.000000
gp X 10.100000 0x1000000
gp X 10.200000 0xffffffff81000010
gp W 10.250000 50000000
gp X 10.300000 0xffffffff81000120
gp X 10.400000 0xnothex
gp Q 10.5 1
=== gprof end ===
=== gprof pv ===
gp M 20.0
gp X 20.5 0xffffffff81000120
=== gprof end ===
=== gprof cut ===
gp M 30.0
gp X 30.5 0xffffffff81000120
";

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81000100 t early_fn
ffffffff81000200 D some_data
ffffffff81000300 W weak_fn
not a line
";

    #[test]
    fn runs_are_read_from_their_start_marker_and_cut_runs_dropped() {
        let runs = parse(CONSOLE);
        assert_eq!(runs.len(), 2);
        let fc = &runs[0];
        assert_eq!(fc.label, "fc");
        // The sample before the marker is dropped, the bad one skipped.
        assert_eq!(fc.samples.len(), 3);
        assert!((fc.samples[0].0 - 100.0).abs() < 1e-6);
        assert_eq!(fc.samples[0].1, 0x100_0000);
        assert_eq!(fc.halts.len(), 1);
        assert!((fc.halts[0].1 - 50.0).abs() < 1e-9);
        assert_eq!(runs[1].samples, vec![(500.0, 0xffff_ffff_8100_0120)]);
    }

    #[test]
    fn addresses_are_named_by_the_nearest_text_symbol_below() {
        let map = SymbolMap::parse(MAP);
        assert_eq!(map.len(), 3);
        assert_eq!(map.name(0xffff_ffff_8100_0010), "_text");
        assert_eq!(map.name(0xffff_ffff_8100_0100), "early_fn");
        // Data symbols do not end a function.
        assert_eq!(map.name(0xffff_ffff_8100_0250), "early_fn");
        assert_eq!(map.name(0xffff_ffff_8100_0400), "weak_fn");
        assert!(map.name(0x100_0000).starts_with("(physical"));
        assert!(map.name(0xffff_ffff_8000_1000).starts_with("(below"));
    }

    #[test]
    fn samples_are_sorted_into_kinds_of_boot_work() {
        assert_eq!(kind("(physical: decompressor, early entry)"), 0);
        assert_eq!(kind("setup_boot_APIC_clock"), 1);
        assert_eq!(kind("mpihelp_submul_1"), 2);
        assert_eq!(kind("free_reserved_area"), 3);
        assert_eq!(kind("srso_return_thunk"), 4);
        assert_eq!(kind("load_new_mm_cr3"), KINDS.len() - 1);
    }

    #[test]
    fn the_picture_has_a_row_per_run_and_a_legend() {
        let dir = std::env::temp_dir().join(format!("guestprof-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("boot.svg");
        let map = SymbolMap::parse(MAP);
        write_svg(&parse(CONSOLE), &["fc", "pv"], &map, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(svg.contains("fc 1") && svg.contains("pv 1"), "{svg}");
        assert!(svg.contains("APIC timer calibration"));
        // fc: the physical sample, then two `_text` ones (one stripe: other
        // kernel work) 100 ms apart (two stripes); pv: one.
        assert!(svg.matches("<rect").count() >= 4);
        let fc = &parse(CONSOLE)[0];
        assert_eq!(stripes(&fc.samples, &map).len(), 3);
    }

    #[test]
    fn the_hosts_symbols_are_moved_to_link_time_addresses() {
        let console = "=== gprof kallsyms ===\n\
                       ffffffff9a000000 _text\n\
                       ffffffff9a000100 early_fn\n\
                       bad\n\
                       === gprof kallsyms end ===\n";
        let map = SymbolMap::from_host(console).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map.name(0xffff_ffff_8100_0180), "early_fn");
        assert_eq!(map.name(0xffff_ffff_8100_0010), "_text");
        // Hidden addresses, or none printed: no map.
        let hidden = console.replace("ffffffff9a", "0000000000");
        assert!(SymbolMap::from_host(&hidden).is_none());
        assert!(SymbolMap::from_host("nothing").is_none());
    }

    #[test]
    fn the_report_gives_shares_and_times_per_label() {
        let map = SymbolMap::parse(MAP);
        let r = report(&parse(CONSOLE), &["fc", "pv", "none"], &map, 10);
        let line = |start: &str| {
            r.lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("{start} in {r}"))
                .split_whitespace()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
        };
        assert_eq!(line("runs"), ["0", "1", "1"]);
        assert_eq!(line("INTR samples"), ["0", "1", "3"]);
        assert_eq!(line("early_fn"), ["0.0%", "100.0%", "33.3%"]);
        assert_eq!(line("halted"), ["ms", "0", "ms"]);
        assert!(r.contains("first sample in the kernel's map"));
    }
}

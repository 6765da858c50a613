//! The guest's exits to KVM, counted by the host's kernel, for comparing
//! two VMMs' guests (`boot-bench --firecracker PATH --exits 1`).
//!
//! A VMM sees only the exits that reach it (port and MMIO accesses to its
//! own devices); the exits KVM handles in the kernel (HLT, MSR writes, page
//! faults of nested paging, interrupts) it does not. The host's kernel
//! counts them all, for any VMM, with histogram triggers on KVM's
//! tracepoints: by exit reason (`kvm_exit`), port (`kvm_pio`), MSR
//! (`kvm_msr`) and MMIO address (`kvm_mmio`). [`SH_FUNCTIONS`] arms them
//! before a run and prints and clears them after it; [`parse`] reads that
//! output and [`table`] sets the VMMs' medians side by side.

use std::collections::{BTreeMap, BTreeSet};

/// The tracepoints and their histogram keys.
const EVENTS: [(&str, &str); 4] = [
    ("kvm_exit", "exit_reason"),
    ("kvm_pio", "port,rw"),
    ("kvm_msr", "ecx,write"),
    ("kvm_mmio", "gpa,type"),
];

/// Shell functions for a benchmark script run on the host: `exits_arm`
/// (once per run, before it) and `exits_dump LABEL` (after it: prints each
/// histogram between `=== exits LABEL EVENT ===` and `=== exits end ===`,
/// then removes the trigger). `exits_setup` mounts tracefs once.
pub fn sh_functions() -> String {
    let mut arm = String::new();
    let mut dump = String::new();
    for (event, keys) in EVENTS {
        let trigger = format!("hist:keys={keys}:size=512");
        let file = format!("$EXITS_DIR/{event}");
        arm.push_str(&format!("  echo '{trigger}' > {file}/trigger\n"));
        dump.push_str(&format!(
            "  echo \"=== exits $1 {event} ===\"; cat {file}/hist; echo '=== exits end ==='\n\
             \x20 echo '!{trigger}' > {file}/trigger\n"
        ));
    }
    format!(
        "EXITS_DIR=/sys/kernel/tracing/events/kvm\n\
         exits_setup() {{\n\
         \x20 [ -d $EXITS_DIR ] || mount -t tracefs nodev /sys/kernel/tracing\n\
         \x20 [ -d $EXITS_DIR ] || echo 'bench: no KVM tracepoints in /sys/kernel/tracing'\n\
         \x20 [ -d /sys/module/kvm_amd ] && echo '=== exits vendor svm ==='\n\
         \x20 return 0\n\
         }}\n\
         exits_arm() {{\n{arm}}}\n\
         exits_dump() {{\n{dump}}}\n"
    )
}

/// One run's histogram of one tracepoint: its keys (as `field=value ...`)
/// and counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub label: String,
    pub event: String,
    pub counts: BTreeMap<String, u64>,
}

/// What [`parse`] found in a console: the histograms, in order, and whether
/// the host's exit reasons are AMD SVM's.
#[derive(Debug, Default)]
pub struct Exits {
    pub svm: bool,
    pub runs: Vec<Histogram>,
}

/// Reads the histograms printed by `exits_dump` (lines of the kernel's
/// format, `{ port:       1016, rw:          1 } hitcount:         20`).
pub fn parse(console: &str) -> Exits {
    let mut out = Exits::default();
    let mut current: Option<Histogram> = None;
    for line in console.lines() {
        let line = line.trim();
        if line == "=== exits vendor svm ===" {
            out.svm = true;
        } else if line == "=== exits end ===" {
            out.runs.extend(current.take());
        } else if let Some(head) = line
            .strip_prefix("=== exits ")
            .and_then(|h| h.strip_suffix(" ==="))
        {
            current = head.split_once(' ').map(|(label, event)| Histogram {
                label: label.into(),
                event: event.into(),
                counts: BTreeMap::new(),
            });
        } else if let (Some(h), Some((key, count))) = (current.as_mut(), entry(line)) {
            *h.counts.entry(key).or_default() += count;
        }
    }
    out
}

/// `{ a: 1, b: 2 } hitcount: 3` → `("a=1 b=2", 3)`.
fn entry(line: &str) -> Option<(String, u64)> {
    let (keys, rest) = line.strip_prefix('{')?.split_once('}')?;
    let count = rest.trim().strip_prefix("hitcount:")?.trim().parse().ok()?;
    let key = keys
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some(format!("{}={}", k.trim(), v.trim()))
        })
        .collect::<Option<Vec<_>>>()?
        .join(" ");
    Some((key, count))
}

/// AMD SVM's name for an exit code (`arch/x86/include/uapi/asm/svm.h`).
fn svm_exit_name(code: u64) -> Option<&'static str> {
    Some(match code {
        0x00..=0x0f => "CR read",
        0x10..=0x1f => "CR write",
        0x40..=0x5f => "exception",
        0x60 => "INTR",
        0x61 => "NMI",
        0x64 => "VINTR",
        0x6e => "RDTSC",
        0x72 => "CPUID",
        0x77 => "PAUSE",
        0x78 => "HLT",
        0x79 => "INVLPG",
        0x7b => "IOIO",
        0x7c => "MSR",
        0x7f => "SHUTDOWN",
        0x81 => "VMMCALL",
        0x87 => "RDTSCP",
        0x89 => "WBINVD",
        0x8d => "XSETBV",
        0x400 => "NPF",
        _ => return None,
    })
}

/// A key as a reader wants it: exit reasons named, ports, MSRs and
/// addresses in hex, reads and writes spelled out.
fn display_key(event: &str, key: &str, svm: bool) -> String {
    let mut parts = Vec::new();
    for kv in key.split(' ') {
        let Some((k, v)) = kv.split_once('=') else {
            parts.push(kv.to_string());
            continue;
        };
        let n: Option<u64> = v.parse().ok();
        parts.push(match (event, k, n) {
            ("kvm_exit", "exit_reason", Some(n)) => match svm.then(|| svm_exit_name(n)).flatten() {
                Some(name) => format!("{name} ({n:#x})"),
                None => format!("{n:#x}"),
            },
            (_, "port" | "ecx" | "gpa", Some(n)) => format!("{n:#x}"),
            ("kvm_pio", "rw", Some(n)) | ("kvm_msr", "write", Some(n)) => {
                if n == 0 { "read" } else { "write" }.to_string()
            }
            ("kvm_mmio", "type", Some(n)) => match n {
                0 => "unsatisfied read".to_string(),
                1 => "read".to_string(),
                2 => "write".to_string(),
                _ => format!("type {n}"),
            },
            _ => v.to_string(),
        });
    }
    parts.join(" ")
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// For each tracepoint, a table of its `top` largest keys and its total:
/// the median count over each label's runs (a run without the key counts
/// 0), labels in the order given.
pub fn table(exits: &Exits, labels: &[&str], top: usize) -> String {
    let mut s = String::new();
    for (event, _) in EVENTS {
        let runs_of = |label: &str| -> Vec<&Histogram> {
            exits
                .runs
                .iter()
                .filter(|h| h.label == label && h.event == event)
                .collect()
        };
        let per_label: Vec<Vec<&Histogram>> = labels.iter().map(|l| runs_of(l)).collect();
        if per_label.iter().all(Vec::is_empty) {
            continue;
        }
        let keys: BTreeSet<&String> = per_label
            .iter()
            .flatten()
            .flat_map(|h| h.counts.keys())
            .collect();
        let med = |runs: &[&Histogram], key: Option<&str>| {
            median(
                runs.iter()
                    .map(|h| match key {
                        Some(k) => h.counts.get(k).copied().unwrap_or(0),
                        None => h.counts.values().sum(),
                    })
                    .collect(),
            )
        };
        let mut rows: Vec<(String, Vec<u64>)> = keys
            .into_iter()
            .map(|k| {
                let m = per_label.iter().map(|r| med(r, Some(k))).collect();
                (display_key(event, k, exits.svm), m)
            })
            .collect();
        rows.sort_by_key(|(_, m)| std::cmp::Reverse(m.iter().copied().max().unwrap_or(0)));
        let shown = rows.len().min(top);
        s.push_str(&format!(
            "  {event}, median count per run ({} keys, {shown} largest shown):\n",
            rows.len()
        ));
        s.push_str(&format!("    {:<34}", ""));
        for l in labels {
            s.push_str(&format!(" {l:>16}"));
        }
        s.push('\n');
        let total = per_label.iter().map(|r| med(r, None)).collect();
        for (name, m) in rows
            .into_iter()
            .take(top)
            .chain([("all".to_string(), total)])
        {
            s.push_str(&format!("    {name:<34}"));
            for v in m {
                s.push_str(&format!(" {v:>16}"));
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
=== exits vendor svm ===
=== exits fc kvm_exit ===
# event histogram
#
# trigger info: hist:keys=exit_reason:vals=hitcount:sort=hitcount:size=512 [active]
#

{ exit_reason:        120 } hitcount:         10
{ exit_reason:       1024 } hitcount:          4

Totals:
    Hits: 14
=== exits end ===
=== exits fc kvm_pio ===
{ port:       1016, rw:          1 } hitcount:         20
=== exits end ===
=== exits fc kvm_exit ===
{ exit_reason:        120 } hitcount:         30
=== exits end ===
=== exits pv kvm_exit ===
{ exit_reason:        120 } hitcount:          2
{ exit_reason:        124 } hitcount:          7
{ garbage
=== exits end ===
";

    #[test]
    fn histograms_are_read_per_run_and_event() {
        let e = parse(CONSOLE);
        assert!(e.svm);
        assert_eq!(e.runs.len(), 4);
        assert_eq!(e.runs[0].label, "fc");
        assert_eq!(e.runs[0].counts["exit_reason=1024"], 4);
        assert_eq!(e.runs[1].event, "kvm_pio");
        assert_eq!(e.runs[1].counts["port=1016 rw=1"], 20);
        assert_eq!(e.runs[3].counts.len(), 2);
        // A dump cut short (no end line) is not a run.
        assert!(
            parse("=== exits a kvm_exit ===\n{ exit_reason: 1 } hitcount: 1\n")
                .runs
                .is_empty()
        );
    }

    #[test]
    fn keys_are_named_and_in_hex() {
        assert_eq!(
            display_key("kvm_exit", "exit_reason=120", true),
            "HLT (0x78)"
        );
        assert_eq!(display_key("kvm_exit", "exit_reason=120", false), "0x78");
        assert_eq!(
            display_key("kvm_pio", "port=1016 rw=1", true),
            "0x3f8 write"
        );
        assert_eq!(
            display_key("kvm_msr", "ecx=2144 write=0", true),
            "0x860 read"
        );
        assert_eq!(
            display_key("kvm_mmio", "gpa=4096 type=2", true),
            "0x1000 write"
        );
    }

    #[test]
    fn the_table_gives_medians_with_missing_keys_as_zero() {
        let t = table(&parse(CONSOLE), &["fc", "pv"], 10);
        // fc's HLT: runs of 10 and 30, the median of two is the larger.
        let hlt = t.lines().find(|l| l.contains("HLT")).unwrap();
        assert_eq!(
            hlt.split_whitespace().rev().take(2).collect::<Vec<_>>(),
            ["2", "30"]
        );
        let msr = t.lines().find(|l| l.contains("MSR (0x7c)")).unwrap();
        assert_eq!(
            msr.split_whitespace().collect::<Vec<_>>(),
            ["MSR", "(0x7c)", "0", "7"]
        );
        let all = t
            .lines()
            .find(|l| l.trim_start().starts_with("all"))
            .unwrap();
        assert_eq!(
            all.split_whitespace().collect::<Vec<_>>(),
            ["all", "30", "9"]
        );
        assert!(t.contains("kvm_pio"));
        assert!(!t.contains("kvm_msr"));
    }
}

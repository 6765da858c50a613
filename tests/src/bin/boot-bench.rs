//! Boot benchmark: boots the demo guest several times (nested where the
//! host's KVM cannot run Linux) and prints perfvmm's boot-timer figures:
//! start → first guest instruction, start → guest /init, and perfvmm's own
//! memory (RSS beyond the guest pages it maps).
//!
//!   cargo run --release -p perfvmm-tests --bin boot-bench -- [RUNS] [--cpus N] [--memory SIZE]
//!
//! With `--firecracker PATH` (a statically linked Firecracker, built as
//! `docs/benchmarks.md` says), perfvmm and Firecracker instead boot the
//! same kernel, the same two-line busybox initramfs and the same command
//! line, alternately, RUNS times each after one untimed boot of each (the
//! host's first VM pays one-time costs), inside ONE host (one L1 when
//! nested), timed by the same clock from each VMM's exec
//! (`tests/bench/vmm-run.c`): exec → `/init`, exec → exit after the
//! guest's `reboot -f` (`reboot=k`: the i8042 reset), peak RSS, and
//! perfvmm's own figures from its boot timer; medians, ranges and ratios.
//! perfvmm boots twice per round: as it does by default (an LZ4 bzImage
//! unpacked by perfvmm) and with `--guest-decompress` (the guest's own
//! decompressor, as under Firecracker).
//!
//!   cargo run --release -p perfvmm-tests --bin boot-bench -- [RUNS] --firecracker PATH
//!       [--append KERNEL-ARGS] [--console FILE] [--stamp 1] [--dmesg 1]
//!       [--kernel FILE] [--perfvmm-kernel FILE] [--exits 1] [--guest-profile host|SYSTEM.MAP]
//!
//! `--exits 1` also counts each run's exits to the host's KVM, by reason,
//! port, MSR and MMIO address (tracepoint histograms in the host's kernel,
//! `perfvmm_tests::exits`), and prints the three VMMs' medians side by
//! side. The histograms cost each exit a little, so the times of such a
//! run are not comparable with a run without them.
//!
//! `--guest-profile host|SYSTEM.MAP` samples where each guest is during
//! its boot from the host's KVM tracepoints (`perfvmm_tests::guestprof`)
//! and names the functions from the host's own kernel symbols (`host`: the
//! nested harness's L1 runs the guest's kernel) or from a `System.map` of
//! the guest's kernel; add `--append nokaslr` so that the guest's
//! addresses are the link-time ones. `--svg FILE` draws each boot's
//! samples on a time line. A console saved with `--console` can be read
//! again: `boot-bench --profile-console FILE [--guest-profile host|MAP]
//! [--svg FILE]`.

use std::path::{Path, PathBuf};

use perfvmm_tests::bench::{self, field};
use perfvmm_tests::GuestRun;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

const USAGE: &str = "usage: boot-bench [RUNS] [PERFVMM-ARGS...]
       boot-bench [RUNS] --firecracker PATH [--append KERNEL-ARGS] [--console FILE] [--stamp 1]
                  [--dmesg 1] [--kernel FILE] [--perfvmm-kernel FILE] [--exits 1]
                  [--guest-profile host|SYSTEM.MAP] [--svg FILE]
       boot-bench --profile-console FILE [--guest-profile host|SYSTEM.MAP] [--svg FILE]
  RUNS (5): boots of each VMM. Alone, perfvmm boots the demo guest RUNS times with
  --boot-timer and the PERFVMM-ARGS (--memory 256M unless given) and prints exec ->
  first guest instruction, -> /init, and its own memory.
  --firecracker PATH: perfvmm, perfvmm --guest-decompress and Firecracker (static,
  built as docs/benchmarks.md says) boot the same kernel, busybox initramfs and
  command line alternately in one host, 1 vCPU, 256 MiB: medians, ranges, ratios.
  --append: more kernel arguments for both; --console: save the host's console;
  --stamp 1: the host's time on each console line; --dmesg 1: the guest prints its
  uptime and log after the marker; --kernel: this kernel for both VMMs;
  --perfvmm-kernel: this kernel for perfvmm alone; --exits 1: count the guests'
  exits to the host's KVM; --guest-profile: sample where each guest spends its boot
  (host: name functions from the host's kernel; add --append nokaslr);
  --svg: draw those samples on a time line.
  --profile-console: read a saved console's samples again instead of booting.";

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    bench::help_or_go_on(&all, USAGE);
    let mut args = all.into_iter().peekable();
    let runs: usize = match args.peek().and_then(|a| a.parse().ok()) {
        Some(n) => {
            args.next();
            n
        }
        None => 5,
    };
    let mut extra: Vec<String> = args.collect();
    if extra.first().map(String::as_str) == Some("--profile-console") {
        profile_console(&extra[1..]);
        return;
    }
    if let Some(i) = extra.iter().position(|a| a == "--firecracker") {
        let Some(fc) = extra.get(i + 1).map(PathBuf::from) else {
            eprintln!("boot-bench: --firecracker needs the path of a Firecracker binary");
            std::process::exit(2);
        };
        extra.drain(i..=i + 1);
        let mut opts = SideBySide::default();
        let mut rest = extra.into_iter();
        while let Some(a) = rest.next() {
            match (a.as_str(), rest.next()) {
                ("--append", Some(v)) => opts.append = v,
                ("--console", Some(v)) => opts.console = Some(PathBuf::from(v)),
                ("--stamp", Some(v)) => opts.stamp = v == "1",
                ("--dmesg", Some(v)) => opts.dmesg = v == "1",
                ("--kernel", Some(v)) => opts.kernel = Some(PathBuf::from(v)),
                ("--perfvmm-kernel", Some(v)) => opts.perfvmm_kernel = Some(PathBuf::from(v)),
                ("--exits", Some(v)) => opts.exits = v == "1",
                ("--guest-profile", Some(v)) => opts.guest_profile = Some(PathBuf::from(v)),
                ("--svg", Some(v)) => opts.svg = Some(PathBuf::from(v)),
                _ => {
                    eprintln!(
                        "boot-bench: with --firecracker, only RUNS, --append ARGS, \
                         --console FILE, --stamp 1, --dmesg 1, --kernel FILE, \
                         --perfvmm-kernel FILE, --exits 1, --guest-profile host|SYSTEM.MAP and --svg FILE \
                         may be given (1 vCPU, 256 MiB)"
                    );
                    std::process::exit(2);
                }
            }
        }
        if let Some(map) = opts
            .guest_profile
            .as_ref()
            .filter(|m| *m != Path::new("host"))
        {
            // Before the runs, not after them.
            read_or_exit(map);
        }
        side_by_side(runs, &fc, &opts);
        return;
    }
    let mut perfvmm_args = vec!["--boot-timer".to_string()];
    perfvmm_args.extend(extra.iter().cloned());
    if !extra.iter().any(|a| a == "--memory") {
        perfvmm_args.extend(["--memory".into(), "256M".into()]);
    }
    let refs: Vec<&str> = perfvmm_args.iter().map(String::as_str).collect();

    println!(
        "boot-bench: mode {:?}, {runs} runs, perfvmm {}",
        perfvmm_tests::mode(),
        refs.join(" ")
    );
    let (mut first, mut init, mut own, mut peak) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let out = GuestRun::demo("pvrun=poweroff", &refs).run();
        let Some(line) = out
            .console
            .lines()
            .find(|l| l.contains("perfvmm: boot-timer:"))
        else {
            eprintln!(
                "run {i}: no boot-timer line; console tail:\n{}",
                out.tail(20)
            );
            std::process::exit(1);
        };
        let get = |k| field(line, k).unwrap_or(f64::NAN);
        println!(
            "run {i}: first_instruction {:.1} ms, /init {:.1} ms, vmm own {:.0} KiB, peak RSS {:.0} KiB",
            get("first_instruction_ms"),
            get("init_ms"),
            get("vmm_own_kib"),
            get("peak_rss_kib")
        );
        first.push(get("first_instruction_ms"));
        init.push(get("init_ms"));
        own.push(get("vmm_own_kib"));
        peak.push(get("peak_rss_kib"));
    }
    println!(
        "median: start→first instruction {:.1} ms",
        median(&mut first)
    );
    println!("median: start→guest /init      {:.1} ms", median(&mut init));
    println!(
        "median: perfvmm own memory     {:.0} KiB (RSS beyond guest pages)",
        median(&mut own)
    );
    println!(
        "median: peak RSS               {:.0} KiB (guest-touched pages included)",
        median(&mut peak)
    );
}

/// The guest's `/init` in the side-by-side runs: the marker, then reboot.
const MARKER: &str = "perfvmm-bench-marker";
/// The command line both VMMs give the kernel.
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// A two-line busybox initramfs: print the marker, reboot. With `dmesg`,
/// the guest's uptime and the kernel's log are printed between the two
/// (after the timed part: with `quiet`, `initcall_debug` costs the boot no
/// console output).
fn bench_initramfs(dmesg: bool) -> Vec<u8> {
    // After the marker, a write to perfvmm's boot-timer address (perfvmm
    // then prints its exec -> first instruction; Firecracker ignores it).
    let log = if dmesg {
        "/bin/busybox mkdir -p /proc\n/bin/busybox mount -t proc proc /proc\n\
         /bin/busybox echo uptime-after-marker $(/bin/busybox cat /proc/uptime)\n\
         /bin/busybox dmesg\n"
    } else {
        ""
    };
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox devmem 0xd1000000 8 123\n{log}/bin/busybox reboot -f\n"
    );
    bench::busybox_initramfs("boot-bench", &init)
}

fn read_or_exit(path: &Path) -> Vec<u8> {
    bench::read_or_exit("boot-bench", path)
}

/// The figures of one VMM over the runs.
#[derive(Default)]
struct Series {
    init: Vec<f64>,
    exit: Vec<f64>,
    rss: Vec<f64>,
    /// perfvmm only, from its boot timer.
    first: Vec<f64>,
    own: Vec<f64>,
    /// perfvmm only: its setup steps, each `(step, ms since its start)`.
    setup: Vec<Vec<(String, f64)>>,
}

/// "step median · step median ...", in the steps' order.
fn setup_summary(runs: &[Vec<(String, f64)>]) -> String {
    let Some(first) = runs.first() else {
        return "—".into();
    };
    first
        .iter()
        .map(|(step, _)| {
            let mut v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|(s, _)| s == step).map(|x| x.1))
                .collect();
            format!("{step} {:.0}", median(&mut v))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// "median (min–max)".
fn summary(v: &[f64], unit: &str) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let mut s = v.to_vec();
    let m = median(&mut s);
    format!("{m:.0} {unit} ({:.0}–{:.0})", s[0], s[s.len() - 1])
}

/// One line of the side-by-side table: the figure, its series for
/// Firecracker, perfvmm and perfvmm --guest-decompress, and its unit.
type Row<'a> = (&'a str, &'a [f64], &'a [f64], &'a [f64], &'a str);

/// Options of the side-by-side runs.
#[derive(Default)]
struct SideBySide {
    /// Appended to both VMMs' kernel command line (`printk.time=1
    /// loglevel=7` shows where a boot spends its time).
    append: String,
    /// Where to write the whole console of the run.
    console: Option<PathBuf>,
    /// Prefix each console line with the milliseconds since the VMM's exec.
    stamp: bool,
    /// Print the guest kernel's log after `/init` (see [`bench_initramfs`]).
    dmesg: bool,
    /// Another kernel for both (an ELF vmlinux, say) instead of the demo
    /// guest's bzImage.
    kernel: Option<PathBuf>,
    /// A kernel for perfvmm alone (experiments only: the comparison is
    /// then not like for like).
    perfvmm_kernel: Option<PathBuf>,
    /// Count each run's exits to the host's KVM (see `exits`).
    exits: bool,
    /// Sample where each guest is, named from the host's kernel symbols
    /// (`host`) or this `System.map` (see `guestprof`).
    guest_profile: Option<PathBuf>,
    /// Where to draw the guest profile (with `guest_profile`).
    svg: Option<PathBuf>,
}

/// The benchmark's shell script: an untimed boot of each VMM, then `runs`
/// rounds of perfvmm, perfvmm --guest-decompress and Firecracker, each run
/// bracketed by the exit histograms when `exits` is on and by the guest
/// profile's trace when `profile` is.
fn side_by_side_script(
    runs: usize,
    cmds: [(&str, &str); 3],
    fc_kernel: &str,
    stamp: bool,
    (exits, profile): (bool, bool),
) -> String {
    let mut rounds = String::new();
    for (label, cmd) in cmds {
        if exits {
            rounds.push_str("exits_arm\n");
        }
        if profile {
            rounds.push_str("gprof_arm\n");
        }
        rounds.push_str(&format!(
            "@FILES@/vmm-run {label} {MARKER} {cmd} </dev/null\n"
        ));
        if profile {
            rounds.push_str(&format!("gprof_dump {label}\n"));
        }
        if exits {
            rounds.push_str(&format!("exits_dump {label}\n"));
        }
    }
    let [(_, perfvmm), _, (_, fc)] = cmds;
    let (mut functions, mut setup) = (String::new(), String::new());
    if exits {
        functions.push_str(&perfvmm_tests::exits::sh_functions());
        setup.push_str("exits_setup\n");
    }
    if profile {
        functions.push_str(perfvmm_tests::guestprof::sh_functions());
        setup.push_str("gprof_setup\n");
    }
    format!(
        "chmod 755 @FILES@/vmm-run @FILES@/firecracker\n\
         export VMM_RUN_STAMP={}\n\
         sed -i 's|KERNEL_PATH|{fc_kernel}|; s|FILES_DIR|@FILES@|' @FILES@/fc.json\n\
         {functions}{setup}\
         @FILES@/vmm-run warmup-perfvmm {MARKER} {perfvmm} </dev/null >/dev/null\n\
         @FILES@/vmm-run warmup-firecracker {MARKER} {fc} </dev/null >/dev/null\n\
         for i in $(seq {runs}); do\n{rounds}done\n",
        u8::from(stamp)
    )
}

fn side_by_side(runs: usize, firecracker: &Path, opts: &SideBySide) {
    let boot_args = format!("{BOOT_ARGS} {}", opts.append).trim().to_string();
    let fc_config = serde_json::json!({
        "boot-source": {
            // Placeholders the script fills in with where the files are.
            "kernel_image_path": "KERNEL_PATH",
            "initrd_path": "FILES_DIR/bench.cpio",
            "boot_args": boot_args,
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
    });
    let perfvmm_kernel = match (&opts.perfvmm_kernel, &opts.kernel) {
        (Some(_), _) => "@FILES@/perfvmm-kernel",
        (None, Some(_)) => "@FILES@/kernel",
        (None, None) => "@KERNEL@",
    };
    let fc_kernel = if opts.kernel.is_some() {
        "@FILES@/kernel"
    } else {
        "@KERNEL@"
    };
    let perfvmm = format!(
        "@PERFVMM@ --kernel {perfvmm_kernel} --initrd @FILES@/bench.cpio --cpus 1 --memory 256M \
         --boot-timer --cmdline '{boot_args}'"
    );
    let guest_decompress = format!("{perfvmm} --guest-decompress");
    let fc = "@FILES@/firecracker --no-api --config-file @FILES@/fc.json";
    let script = side_by_side_script(
        runs,
        [
            ("perfvmm", &perfvmm),
            ("guest-decompress", &guest_decompress),
            ("firecracker", fc),
        ],
        fc_kernel,
        opts.stamp,
        (opts.exits, opts.guest_profile.is_some()),
    );
    println!(
        "boot-bench: mode {:?}, perfvmm, perfvmm --guest-decompress and Firecracker ({}) \
         alternately, {runs} runs each, 1 vCPU, 256 MiB, `{boot_args}`",
        perfvmm_tests::mode(),
        firecracker.display()
    );
    let mut run = GuestRun::script(&script);
    for (name, path) in [
        ("kernel", &opts.kernel),
        ("perfvmm-kernel", &opts.perfvmm_kernel),
    ] {
        if let Some(p) = path {
            run = run.file(name, read_or_exit(p));
        }
    }
    let out = run
        .file("firecracker", read_or_exit(firecracker))
        .file("vmm-run", bench::c_helper("boot-bench", "vmm-run"))
        .file("bench.cpio", bench_initramfs(opts.dmesg))
        .file("fc.json", fc_config.to_string().into_bytes())
        // The kernel's log, printed on an emulated serial port, takes about
        // a minute a boot under the nested harness.
        .timeout(std::time::Duration::from_secs(
            120 + (60 + 200 * u64::from(opts.dmesg)) * runs as u64,
        ))
        .run();
    if let Some(path) = &opts.console {
        if let Err(e) = std::fs::write(path, &out.console) {
            eprintln!("boot-bench: {}: {e}", path.display());
        }
    }
    let mut perfvmm_s = Series::default();
    let mut gd_s = Series::default();
    let mut fc_s = Series::default();
    let mut last_boot_timer: Option<String> = None;
    for line in out.console.lines() {
        if line.contains("perfvmm: boot-timer:") {
            last_boot_timer = Some(line.to_string());
            continue;
        }
        let Some(rest) = line.split_once("vmm-run: ").map(|r| r.1) else {
            continue;
        };
        // vmm-run's first word is the label the script gave the run.
        let (s, perfvmm) = match rest.split_once(' ').map(|r| r.0) {
            Some("perfvmm") => (&mut perfvmm_s, true),
            Some("guest-decompress") => (&mut gd_s, true),
            Some("firecracker") => (&mut fc_s, false),
            _ => continue,
        };
        let get = |k| field(rest, k).unwrap_or(f64::NAN);
        if get("init_ms") < 0.0 || get("status") != 0.0 {
            println!("  a run did not reach /init or failed: {rest}");
            continue;
        }
        s.init.push(get("init_ms"));
        s.exit.push(get("exit_ms"));
        s.rss.push(get("maxrss_kib") / 1024.0);
        if perfvmm {
            if let Some(t) = last_boot_timer.take() {
                s.first
                    .push(field(&t, "first_instruction_ms").unwrap_or(f64::NAN));
                s.own.push(field(&t, "vmm_own_kib").unwrap_or(f64::NAN));
                s.setup.push(bench::setup_steps(&t));
            }
        }
    }
    if perfvmm_s.init.is_empty() || fc_s.init.is_empty() {
        eprintln!(
            "boot-bench: no complete pair of runs; console tail:\n{}",
            out.tail(40)
        );
        std::process::exit(1);
    }
    let ratio = |a: &[f64], b: &[f64]| {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        median(&mut a) / median(&mut b)
    };
    println!(
        "  {:<24} {:>22} {:>22} {:>6} {:>22} {:>6}",
        "", "Firecracker", "perfvmm", "ratio", "perfvmm guest-decomp.", "ratio"
    );
    let none: &[f64] = &[];
    // (figure, Firecracker, perfvmm, perfvmm --guest-decompress, unit)
    let rows: [Row; 5] = [
        (
            "exec -> /init",
            &fc_s.init,
            &perfvmm_s.init,
            &gd_s.init,
            "ms",
        ),
        (
            "exec -> exit (reboot=k)",
            &fc_s.exit,
            &perfvmm_s.exit,
            &gd_s.exit,
            "ms",
        ),
        ("peak RSS", &fc_s.rss, &perfvmm_s.rss, &gd_s.rss, "MiB"),
        (
            "exec -> 1st instruction",
            none,
            &perfvmm_s.first,
            &gd_s.first,
            "ms",
        ),
        ("own memory", none, &perfvmm_s.own, &gd_s.own, "KiB"),
    ];
    for (name, f, p, g, unit) in rows {
        let r = |x: &[f64]| {
            if f.is_empty() {
                String::new()
            } else {
                format!("{:.2}x", ratio(x, f))
            }
        };
        println!(
            "  {:<24} {:>22} {:>22} {:>6} {:>22} {:>6}",
            name,
            summary(f, unit),
            summary(p, unit),
            r(p),
            summary(g, unit),
            r(g)
        );
    }
    println!(
        "  perfvmm's setup, median ms from its start to the end of each step:\n    \
         unpacking: {}\n    --guest-decompress: {}",
        setup_summary(&perfvmm_s.setup),
        setup_summary(&gd_s.setup)
    );
    if opts.exits {
        let exits = perfvmm_tests::exits::parse(&out.console);
        println!(
            "  exits to the host's KVM, exec -> exit (columns: Firecracker, perfvmm, \
             perfvmm --guest-decompress):\n{}",
            perfvmm_tests::exits::table(
                &exits,
                &["firecracker", "perfvmm", "guest-decompress"],
                12
            )
        );
    }
    if let Some(map) = &opts.guest_profile {
        guest_profile(&out.console, map, opts.svg.as_deref());
    }
    println!(
        "  runs: perfvmm {}, perfvmm --guest-decompress {}, Firecracker {} (of {runs} each)",
        perfvmm_s.init.len(),
        gd_s.init.len(),
        fc_s.init.len()
    );
}

/// `--profile-console FILE [--guest-profile host|SYSTEM.MAP] [--svg FILE]`:
/// the guest profile of a console saved by an earlier `--console`.
fn profile_console(args: &[String]) {
    let usage = || -> ! {
        eprintln!(
            "boot-bench: --profile-console FILE [--guest-profile host|SYSTEM.MAP] [--svg FILE]"
        );
        std::process::exit(2);
    };
    let Some(console) = args.first() else { usage() };
    let (mut map, mut svg) = (PathBuf::from("host"), None);
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match (a.as_str(), rest.next()) {
            ("--guest-profile", Some(v)) => map = PathBuf::from(v),
            ("--svg", Some(v)) => svg = Some(PathBuf::from(v)),
            _ => usage(),
        }
    }
    let text = String::from_utf8_lossy(&read_or_exit(Path::new(console))).into_owned();
    guest_profile(&text, &map, svg.as_deref());
}

/// The guest profile's table (see `guestprof`), functions named from the
/// host's symbols (`host`) or a `System.map`.
fn guest_profile(console: &str, map: &Path, svg: Option<&Path>) {
    use perfvmm_tests::guestprof;
    let map = if map == Path::new("host") {
        guestprof::SymbolMap::from_host(console).unwrap_or_default()
    } else {
        guestprof::SymbolMap::parse(&String::from_utf8_lossy(&read_or_exit(map)))
    };
    if map.is_empty() {
        println!(
            "  guest profile: no kernel text symbols to name the samples with (Debian's \
             System.map is a placeholder; the host's /proc/kallsyms was not printed or \
             its addresses were hidden)"
        );
        return;
    }
    let runs = guestprof::parse(console);
    let labels = ["firecracker", "perfvmm", "guest-decompress"];
    println!(
        "  where each guest was, sampled at the host's interrupts, exec -> exit:\n{}",
        guestprof::report(&runs, &labels, &map, 30)
    );
    if let Some(path) = svg {
        match guestprof::write_svg(&runs, &labels, &map, path) {
            Ok(()) => println!("  the boots as a picture: {}", path.display()),
            Err(e) => eprintln!("boot-bench: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_brackets_each_run_with_the_exit_histograms_only_when_asked() {
        let cmds = [
            ("perfvmm", "PV"),
            ("guest-decompress", "GD"),
            ("firecracker", "FC"),
        ];
        let plain = side_by_side_script(3, cmds, "@KERNEL@", false, (false, false));
        assert!(!plain.contains("exits_"));
        assert!(!plain.contains("gprof_"));
        assert!(plain.contains("vmm-run warmup-firecracker perfvmm-bench-marker FC"));
        assert!(plain.contains("seq 3"));
        let s = side_by_side_script(3, cmds, "@KERNEL@", true, (true, false));
        assert!(s.contains("VMM_RUN_STAMP=1"));
        for label in ["perfvmm", "guest-decompress", "firecracker"] {
            let run = format!("@FILES@/vmm-run {label} ");
            let at = s.find(&run).unwrap();
            assert!(s[..at].ends_with("exits_arm\n"), "{label}");
            assert!(
                s[at..].contains(&format!("\nexits_dump {label}\n")),
                "{label}"
            );
        }
        // The functions are defined, and tracefs set up, before the first use.
        assert!(s.find("exits_dump() {").unwrap() < s.find("exits_setup\n").unwrap());
        assert!(s.find("exits_setup\n").unwrap() < s.find("exits_arm\n").unwrap());
        // The guest profile alone: its own bracket, set up once before.
        let p = side_by_side_script(2, cmds, "@KERNEL@", false, (false, true));
        assert!(!p.contains("exits_"));
        let at = p.find("@FILES@/vmm-run firecracker ").unwrap();
        assert!(p[..at].ends_with("gprof_arm\n"));
        assert!(p[at..].contains("\ngprof_dump firecracker\n"));
        assert!(p.find("gprof_dump() {").unwrap() < p.find("gprof_setup\n").unwrap());
        assert!(p.find("gprof_setup\n").unwrap() < p.find("gprof_arm\n").unwrap());
    }

    #[test]
    fn setup_steps_are_summed_up_by_median() {
        let line = "perfvmm: boot-timer: first_instruction_ms=88.2 init_ms=5085.9 \
                    setup_ms=memory:5.7,kernel:49.9,bad,kvm:x";
        let a = bench::setup_steps(line);
        let b = bench::setup_steps("setup_ms=memory:4.0,kernel:60.0");
        let c = bench::setup_steps("setup_ms=memory:9.0,kernel:70.0");
        assert_eq!(setup_summary(&[a, b, c]), "memory 6 · kernel 60");
        assert_eq!(setup_summary(&[]), "—");
    }
}

//! Snapshot benchmark: in ONE host (one L1 when nested), for each guest
//! memory size, boots the demo guest idle, snapshots it with `--stop`,
//! and restores it in a new perfvmm; prints per size the medians of the
//! snapshot's pause and of what it wrote, and of the restore's steps
//! (`--restore --boot-timer`: state read, memory mapped, KVM set up,
//! devices and vCPUs restored), beside the same process's fresh boot to
//! its first guest instruction.
//!
//!   cargo run --release -p perfvmm-tests --bin snapshot-bench -- [RUNS] [SIZES]
//!
//! SIZES is a comma-separated list of MiB (default 256,1024,3072).
//!
//! With `--firecracker PATH` (a static Firecracker, built as
//! `docs/benchmarks.md` says), perfvmm and Firecracker instead each boot
//! the same kernel and the same small busybox guest (1 vCPU, 256 MiB),
//! which prints a line every 200 ms, snapshot it, and restore it in a new
//! process, alternately, RUNS times each: exec → the restored guest's
//! first line (`tests/bench/vmm-run.c`; Firecracker's restore is its exec
//! plus the `PUT /snapshot/load` request, `tests/bench/http-unix.c`, as
//! its API requires), peak RSS, and the memory file on disk.
//!
//!   cargo run --release -p perfvmm-tests --bin snapshot-bench -- [RUNS] --firecracker PATH
//!
//! With `--migrate`, for each size, a guest is moved live from one perfvmm
//! to another in the same host (a Unix socket), idle, busy (2 vCPUs,
//! one writing a quarter of its memory, at most 64 MiB, hard:
//! `images/workloads/memwrite.c`) and busy with that declared as its
//! working set, with a 300 ms downtime budget: pre-copy rounds, bytes
//! sent, bytes the first round left for later, bytes sent in the stop, the downtime by the source (vCPUs stopped → target
//! running), the longest pause the busy guest's clock saw, and the total.
//!
//!   cargo run --release -p perfvmm-tests --bin snapshot-bench -- [RUNS] [SIZES] --migrate [--kinds idle,busy,busy-ws]
//!
//! With `--on-host`, restores are timed on this machine's own `/dev/kvm`
//! instead, outside the nested harness's emulation (see
//! `perfvmm_tests::host_restore`): one snapshot of a guest booting there,
//! restored RUNS times per size.
//!
//!   cargo run --release -p perfvmm-tests --bin snapshot-bench -- [RUNS] [SIZES] --on-host

use std::path::{Path, PathBuf};

use perfvmm_tests::{bench, GuestRun};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|w| {
            let w = w.trim_matches(|c| c == '"' || c == '{' || c == '}');
            let (k, v) = w.split_once(['=', ':'])?;
            (k.trim_matches('"') == key).then(|| v.trim_matches('"').parse().ok())?
        })
}

/// The rest of each console line holding a tag: one run's results.
struct Results<'a>(Vec<&'a str>);

impl<'a> Results<'a> {
    fn tagged(console: &'a str, tag: &str) -> Self {
        Results(
            console
                .lines()
                .filter_map(|l| l.split_once(tag).map(|(_, r)| r))
                .collect(),
        )
    }

    /// The median of `key` over the results that start with `kind`.
    fn median(&self, kind: &str, key: &str) -> f64 {
        self.median_of(kind, |l| field(l, key))
    }

    /// The median of what `get` reads from the results that start with
    /// `kind`.
    fn median_of(&self, kind: &str, get: impl Fn(&str) -> Option<f64>) -> f64 {
        median(
            self.0
                .iter()
                .filter(|l| l.starts_with(kind))
                .filter_map(|l| get(l))
                .collect(),
        )
    }
}

/// One round for one size, run where perfvmm runs.
fn round(size: u32) -> String {
    format!(
        r#"
d=$F/snaps-{size}; rm -rf $d; mkdir -p $d
@PERFVMM@ --kernel @KERNEL@ --initrd @INITRD@ --cmdline "quiet pvrun=idle" --cpus 1 \
  --memory {size}M --api-sock $F/api --snapshot-dir $d --boot-timer </dev/null >$F/src.log 2>&1 &
pid=$!
wait_for $F/src.log "boot-timer:" 300 && sleep 1
@PERFVMM@ ctl --api-sock $F/api snapshot s --stop >$F/rep.json 2>&1
wait $pid
echo "bench: size={size} snapshot $(tr -d '\n ' <$F/rep.json) disk_kib=$(du -k $d/s/memory | cut -f1)"
grep -o "first_instruction_ms=[0-9.]*" $F/src.log | sed "s/^/bench: size={size} fresh /"
@PERFVMM@ --restore $d/s --boot-timer </dev/null >$F/dst.log 2>&1 &
pid=$!
wait_for $F/dst.log "restore-timer:" 60 && sleep 1
kill -TERM $pid; wait $pid
grep -o "restore-timer:.*" $F/dst.log | sed "s/^/bench: size={size} /"
rm -rf $d
"#
    )
}

const USAGE: &str = "usage: snapshot-bench [RUNS] [SIZES]
       snapshot-bench [RUNS] --firecracker PATH
       snapshot-bench [RUNS] [SIZES] --migrate [--kinds idle,busy,busy-ws]
       snapshot-bench [RUNS] [SIZES] --on-host
  RUNS (3): runs of each; SIZES: guest memory sizes in MiB (256,1024,3072).
  Alone: per size, snapshot an idle guest (--stop) and restore it in a new
  perfvmm; medians of the pause, the bytes written and the restore's steps.
  --firecracker PATH: perfvmm and Firecracker snapshot and restore the same
  guest alternately (1 vCPU, 256 MiB): exec -> the restored guest's first line.
  --migrate: move a guest live between two perfvmm processes, idle, busy and
  busy with its working set declared (--kinds: some of these).
  --on-host: time restores on this machine's own /dev/kvm.";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    bench::help_or_go_on(&args, USAGE);
    if let Some(i) = args.iter().position(|a| a == "--firecracker") {
        let Some(fc) = args.get(i + 1).map(PathBuf::from) else {
            eprintln!("snapshot-bench: --firecracker needs the path of a Firecracker binary");
            std::process::exit(2);
        };
        args.drain(i..=i + 1);
        let runs = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
        side_by_side(runs, &fc);
        return;
    }
    let mut kinds: Vec<&'static str> = MIGRATION_KINDS.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--kinds") {
        let asked = args.get(i + 1).cloned().unwrap_or_default();
        kinds = MIGRATION_KINDS
            .into_iter()
            .filter(|k| asked.split(',').any(|a| a == *k))
            .collect();
        if kinds.is_empty() || asked.split(',').count() != kinds.len() {
            eprintln!(
                "snapshot-bench: --kinds takes some of {}",
                MIGRATION_KINDS.join(",")
            );
            std::process::exit(2);
        }
        args.drain(i..(i + 2).min(args.len()));
    }
    let migrate = args.iter().any(|a| a == "--migrate");
    let on_host = args.iter().any(|a| a == "--on-host");
    if (migrate && on_host) || (!migrate && kinds.len() != MIGRATION_KINDS.len()) {
        eprintln!("snapshot-bench: --migrate [--kinds ...] and --on-host are separate benchmarks");
        std::process::exit(2);
    }
    args.retain(|a| a != "--migrate" && a != "--on-host");
    let runs: usize = match args.first().map(|a| a.parse()) {
        None => 3,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            eprintln!("snapshot-bench: RUNS is a number of runs, at least 1");
            std::process::exit(2);
        }
    };
    let sizes: Vec<u32> = args
        .get(1)
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 1024, 3072]);
    if sizes.is_empty() {
        eprintln!("snapshot-bench: SIZES is a comma-separated list of MiB");
        std::process::exit(2);
    }
    if migrate {
        migration(runs, &sizes, &kinds);
        return;
    }
    if on_host {
        restore_on_host(runs, &sizes);
        return;
    }
    let mut script = format!("F=@FILES@\n{}", bench::SH_WAIT_FOR);
    for r in 0..runs {
        for &size in &sizes {
            script.push_str(&format!(
                "echo 'snapshot-bench: round {} size {size} MiB'\n",
                r + 1
            ));
            script.push_str(&round(size));
        }
    }
    println!(
        "snapshot-bench: mode {:?}, {runs} rounds of sizes {sizes:?} MiB, 1 vCPU, idle guest",
        perfvmm_tests::mode()
    );
    let l1_mib = sizes.iter().max().copied().unwrap_or(256) + 1536;
    let mut run = GuestRun::script(&script)
        .timeout(std::time::Duration::from_secs(
            120 + 90 * (runs * sizes.len()) as u64,
        ))
        .streaming_lines(|l| l.starts_with("snapshot-bench:"));
    run.l1_memory_mib = l1_mib;
    let out = match run.try_run() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("snapshot-bench: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "\n| guest MiB | snapshot pause ms | written MiB | file on disk MiB | fresh boot: exec → first instruction ms | restore: exec → state read ms | → memory mapped | → KVM set up | → running ms |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &size in &sizes {
        let results = Results::tagged(&out.console, &format!("bench: size={size} "));
        let pick = |kind: &str, key: &str| results.median(kind, key);
        let step = |s: &str| results.median_of("restore-timer", |l| bench::setup_step(l, s));
        println!(
            "| {size} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pick("snapshot", "pause_ms"),
            pick("snapshot", "written_bytes") / (1 << 20) as f64,
            pick("snapshot", "disk_kib") / 1024.0,
            pick("fresh", "first_instruction_ms"),
            step("state"),
            step("memory"),
            step("kvm"),
            pick("restore-timer", "ready_ms"),
        );
    }
    let failures: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("bench: no "))
        .collect();
    if !failures.is_empty() {
        eprintln!(
            "snapshot-bench: incomplete rounds:\n{}",
            failures.join("\n")
        );
        std::process::exit(1);
    }
}

/// The guests a live migration is measured with: idle; busy (writing
/// memory hard); busy, its phase declaring what it writes as its working
/// set (pre-copy then leaves those pages for after the first round).
const MIGRATION_KINDS: [&str; 3] = ["idle", "busy", "busy-ws"];

/// Restores timed on this machine's own KVM: medians and ranges per size.
fn restore_on_host(runs: usize, sizes: &[u32]) {
    println!(
        "snapshot-bench: restores on this machine's /dev/kvm, {runs} per size, sizes {sizes:?} MiB"
    );
    println!("\n| guest MiB | restore: exec → state read ms | → memory mapped | → KVM set up | → running ms (median) | → running ms (range) |");
    println!("| ---: | ---: | ---: | ---: | ---: | --- |");
    for &size in sizes {
        let times = match perfvmm_tests::host_restore::measure(size, runs) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("snapshot-bench: {size} MiB: {e}");
                std::process::exit(1);
            }
        };
        let of = |f: fn(&perfvmm_tests::host_restore::RestoreTimes) -> f64| {
            median(times.iter().map(f).collect())
        };
        let ready: Vec<f64> = times.iter().map(|t| t.ready_ms).collect();
        let (lo, hi) = ready
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        println!(
            "| {size} | {:.1} | {:.1} | {:.1} | {:.1} | {lo:.1}–{hi:.1} |",
            of(|t| t.state_ms),
            of(|t| t.memory_ms),
            of(|t| t.kvm_ms),
            of(|t| t.ready_ms),
        );
    }
}

/// One live migration of a `size` MiB guest of `kind` (see
/// [`MIGRATION_KINDS`]).
fn migration_round(size: u32, kind: &str) -> String {
    // 64 MiB at most: a 1 GiB guest writing 256 MiB hard took the L1
    // host down (QEMU TCG's nested SVM under the dirty log's faults).
    let mib = (size / 4).min(64);
    let (cmdline, ready) = match kind {
        "idle" => ("quiet pvrun=idle".to_string(), "boot-timer:"),
        _ => (
            format!(
                "quiet pvrun=migrate pvmib={mib} pvsecs=40 pvws={}",
                u8::from(kind == "busy-ws")
            ),
            "memwrite: t=2 ",
        ),
    };
    format!(
        r#"
rm -f $F/mig.sock
# Memory stays at its size whatever the guest declares: the kinds differ in
# how the copy is ordered only.
printf '[memory]\nmin = "{size}M"\n[migration]\norder_by_working_set = true\n' >$F/fixed-memory.toml
@PERFVMM@ --kernel @KERNEL@ --initrd @INITRD@ --cmdline "{cmdline}" --cpus 1,max=2   --memory {size}M --policy $F/fixed-memory.toml --api-sock $F/api --allow-migrate --boot-timer </dev/null >$F/src.log 2>&1 &
src=$!
@PERFVMM@ --incoming unix:$F/mig.sock </dev/null >$F/dst.log 2>&1 &
dst=$!
wait_for $F/src.log "{ready}" 300 && sleep 1
@PERFVMM@ ctl --api-sock $F/api migrate --to unix:$F/mig.sock --downtime-ms 300 >$F/rep.json 2>&1
wait $src
echo "bench: size={size} {kind} migrate $(tr -d '
 ' <$F/rep.json)"
if [ {kind} != idle ]; then
  wait_for $F/dst.log "memwrite: done" 120
  grep -o "maxgap_ms=[0-9]*" $F/dst.log | sed "s/^/bench: size={size} {kind} guest /"
fi
kill -TERM $dst 2>/dev/null; wait $dst
"#
    )
}

/// Live migrations, idle and busy, per size: see the module's comment.
fn migration(runs: usize, sizes: &[u32], kinds: &[&str]) {
    let mut script = format!("F=@FILES@\n{}", bench::SH_WAIT_FOR);
    for r in 0..runs {
        for &size in sizes {
            for &kind in kinds {
                script.push_str(&format!(
                    "echo 'snapshot-bench: migration round {} size {size} MiB {kind}'\n",
                    r + 1,
                ));
                script.push_str(&migration_round(size, kind));
            }
        }
    }
    println!(
        "snapshot-bench: mode {:?}, {runs} rounds of live migration, sizes {sizes:?} MiB, budget 300 ms",
        perfvmm_tests::mode()
    );
    let mut run = GuestRun::script(&script)
        .timeout(std::time::Duration::from_secs(
            120 + 120 * (runs * sizes.len() * kinds.len()) as u64,
        ))
        .l1_cpus(2)
        .streaming_lines(|l| l.starts_with("snapshot-bench:") || l.starts_with("bench: "));
    run.l1_memory_mib = 2 * sizes.iter().max().copied().unwrap_or(256) + 1536;
    let out = match run.try_run() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("snapshot-bench: {e}");
            std::process::exit(1);
        }
    };
    println!("\n| guest MiB | guest | rounds | sent MiB | left for round 1 MiB | sent in the stop MiB | downtime ms (source) | longest pause the guest saw ms | total ms |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &size in sizes {
        for &kind in kinds {
            let results = Results::tagged(&out.console, &format!("bench: size={size} {kind} "));
            let pick = |what: &str, key: &str| results.median(what, key);
            let mib = |v: f64| v / (1 << 20) as f64;
            println!(
                "| {size} | {kind} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {} | {:.0} |",
                pick("migrate", "rounds"),
                mib(pick("migrate", "sent_bytes")),
                mib(pick("migrate", "deferred_bytes")),
                mib(pick("migrate", "final_bytes")),
                pick("migrate", "downtime_ms"),
                if kind != "idle" {
                    format!("{:.0}", pick("guest", "maxgap_ms"))
                } else {
                    "–".into()
                },
                pick("migrate", "total_ms"),
            );
        }
    }
}

/// The guest of the side-by-side runs: its `/init` prints a line every
/// 200 ms for ever.
fn ticking_initramfs() -> Vec<u8> {
    let init = "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n\
                i=0\nwhile :; do i=$((i + 1)); /bin/busybox echo \"tick $i\"; \
                /bin/busybox sleep 0.2; done\n";
    bench::busybox_initramfs("snapshot-bench", init)
}

const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off quiet";

/// One round of the side-by-side runs: each VMM boots the guest, snapshots
/// it after its fifth line and stops, then restores it under `vmm-run`,
/// which is stopped 4 s later.
fn side_by_side_round() -> String {
    format!(
        r#"
rm -rf $F/ps; mkdir $F/ps
@PERFVMM@ --kernel @KERNEL@ --initrd $F/idle.cpio --cmdline '{BOOT_ARGS}' --cpus 1 --memory 256M \
  --api-sock $F/p.sock --snapshot-dir $F/ps </dev/null >$F/p.log 2>&1 &
wait_for $F/p.log "tick 5" 300
@PERFVMM@ ctl --api-sock $F/p.sock snapshot s --stop >$F/rep.json 2>&1 || cat $F/rep.json
wait
echo "bench: perfvmm snapshot $(tr -d '\n ' <$F/rep.json) disk_kib=$(du -k $F/ps/s/memory | cut -f1)"
(sleep 4; killall perfvmm) </dev/null >/dev/null 2>&1 &
$F/vmm-run perfvmm-restore tick @PERFVMM@ --restore $F/ps/s </dev/null | grep "^vmm-run:"
wait
rm -f $F/f.sock $F/fc.snap $F/fc.mem
$F/firecracker --api-sock $F/f.sock </dev/null >$F/f.log 2>&1 &
$F/http-unix $F/f.sock PUT /boot-source \
  '{{"kernel_image_path":"@KERNEL@","initrd_path":"'$F'/idle.cpio","boot_args":"{BOOT_ARGS}"}}' >/dev/null
$F/http-unix $F/f.sock PUT /machine-config '{{"vcpu_count":1,"mem_size_mib":256}}' >/dev/null
$F/http-unix $F/f.sock PUT /actions '{{"action_type":"InstanceStart"}}' >/dev/null
wait_for $F/f.log "tick 5" 300
$F/http-unix $F/f.sock PATCH /vm '{{"state":"Paused"}}' >/dev/null
$F/http-unix $F/f.sock PUT /snapshot/create \
  '{{"snapshot_type":"Full","snapshot_path":"'$F'/fc.snap","mem_file_path":"'$F'/fc.mem"}}' >/dev/null \
  || echo "bench: firecracker snapshot failed"
killall firecracker; wait
echo "bench: firecracker snapshot disk_kib=$(du -k $F/fc.mem | cut -f1)"
(sleep 4; killall firecracker) </dev/null >/dev/null 2>&1 &
$F/vmm-run firecracker-restore tick /bin/sh $F/fc-restore.sh </dev/null | grep "^vmm-run:"
wait
"#
    )
}

/// Firecracker's restore: its exec and the load request.
const FC_RESTORE: &str = r#"F=$(dirname "$0")
rm -f $F/f2.sock
$F/firecracker --api-sock $F/f2.sock &
$F/http-unix $F/f2.sock PUT /snapshot/load \
  '{"snapshot_path":"'$F'/fc.snap","mem_backend":{"backend_type":"File","backend_path":"'$F'/fc.mem"},"resume_vm":true}' >/dev/null \
  || echo "bench: firecracker restore failed"
wait
"#;

fn side_by_side(runs: usize, firecracker: &Path) {
    let mut script = format!(
        "F=@FILES@\nchmod 755 $F/vmm-run $F/http-unix $F/firecracker\n{}",
        bench::SH_WAIT_FOR
    );
    for r in 0..runs {
        script.push_str(&format!("echo 'snapshot-bench: round {}'\n", r + 1));
        script.push_str(&side_by_side_round());
    }
    println!(
        "snapshot-bench: mode {:?}, perfvmm and Firecracker ({}) alternately, {runs} rounds, \
         1 vCPU, 256 MiB, a guest printing a line every 200 ms",
        perfvmm_tests::mode(),
        firecracker.display()
    );
    let out = GuestRun::script(&script)
        .file(
            "firecracker",
            bench::read_or_exit("snapshot-bench", firecracker),
        )
        .file("vmm-run", bench::c_helper("snapshot-bench", "vmm-run"))
        .file("http-unix", bench::c_helper("snapshot-bench", "http-unix"))
        .file("idle.cpio", ticking_initramfs())
        .file("fc-restore.sh", FC_RESTORE.as_bytes().to_vec())
        .timeout(std::time::Duration::from_secs(120 + 120 * runs as u64))
        .streaming_lines(|l| l.starts_with("snapshot-bench:") || l.starts_with("bench: "))
        .try_run()
        .unwrap_or_else(|e| {
            eprintln!("snapshot-bench: {e}");
            std::process::exit(1);
        });
    let series = |label: &str, key: &str| -> Vec<f64> {
        out.console
            .lines()
            .filter(|l| l.starts_with(&format!("vmm-run: {label} ")))
            .filter_map(|l| field(l, key))
            .collect()
    };
    let disk = |who: &str| -> Vec<f64> {
        out.console
            .lines()
            .filter(|l| l.starts_with(&format!("bench: {who} snapshot")))
            .filter_map(|l| field(l, "disk_kib"))
            .map(|k| k / 1024.0)
            .collect()
    };
    let rows = [
        (
            "exec → restored guest's first line (ms)",
            series("perfvmm-restore", "init_ms"),
            series("firecracker-restore", "init_ms"),
        ),
        (
            "peak RSS of the restored VMM (MiB)",
            series("perfvmm-restore", "maxrss_kib")
                .iter()
                .map(|k| k / 1024.0)
                .collect(),
            series("firecracker-restore", "maxrss_kib")
                .iter()
                .map(|k| k / 1024.0)
                .collect(),
        ),
        (
            "memory file on disk (MiB)",
            disk("perfvmm"),
            disk("firecracker"),
        ),
    ];
    println!("\n| | perfvmm | Firecracker | ratio |\n| --- | ---: | ---: | ---: |");
    for (what, p, f) in rows {
        let (mp, mf) = (median(p.clone()), median(f.clone()));
        println!(
            "| {what}, median of {} / {} | {mp:.1} | {mf:.1} | {:.2}× |",
            p.len(),
            f.len(),
            mp / mf
        );
    }
    let failed: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("bench: no ") || l.contains("failed"))
        .collect();
    if !failed.is_empty() {
        eprintln!("snapshot-bench: incomplete rounds:\n{}", failed.join("\n"));
        std::process::exit(1);
    }
}

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

use perfvmm_tests::GuestRun;

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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let sizes: Vec<u32> = args
        .get(1)
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 1024, 3072]);
    if sizes.is_empty() {
        eprintln!("snapshot-bench: SIZES is a comma-separated list of MiB");
        std::process::exit(2);
    }
    let mut script = String::from(
        r#"F=@FILES@
wait_for() {
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt $(($3 * 10)) ] && { echo "bench: no '$2' in $1"; return 1; }
    sleep 0.1
  done
}
"#,
    );
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
        let tag = format!("bench: size={size} ");
        let lines: Vec<&str> = out
            .console
            .lines()
            .filter_map(|l| l.split_once(&tag).map(|(_, r)| r))
            .collect();
        let pick = |kind: &str, key: &str| {
            median(
                lines
                    .iter()
                    .filter(|l| l.starts_with(kind))
                    .filter_map(|l| field(l, key))
                    .collect(),
            )
        };
        println!(
            "| {size} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            pick("snapshot", "pause_ms"),
            pick("snapshot", "written_bytes") / (1 << 20) as f64,
            pick("snapshot", "disk_kib") / 1024.0,
            pick("fresh", "first_instruction_ms"),
            pick("restore-timer", "state_ms"),
            pick("restore-timer", "memory_ms"),
            pick("restore-timer", "kvm_ms"),
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

//! Memory follows the hints (balloon below the boot size, virtio-mem above
//! it), the pitfalls other VMMs hit, and the control API — asserted from
//! inside the guest (MemTotal, nproc) and from perfvmm's decision log.

use std::time::Duration;

use perfvmm_tests::{GuestRun, RunOutput};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `--memory 512M,max=1G` with a decision log, plus `extra` arguments, in
/// an L1 host with 4 vCPUs.
fn run(cmdline: &str, extra: &[&str]) -> GuestRun {
    let mut args = vec![
        "--memory",
        "512M,max=1G",
        "--decision-log",
        "@FILES@/decisions.log",
    ];
    args.extend_from_slice(extra);
    GuestRun::demo(cmdline, &args)
        .fetch("decisions.log")
        .timeout(Duration::from_secs(420))
        .l1_cpus(4)
}

/// (from, to, applied) of every decision on `resource`.
fn changes(out: &RunOutput, resource: &str) -> Vec<(u64, u64, bool)> {
    out.json_lines("decisions.log")
        .iter()
        .filter(|v| v["resource"] == resource)
        .map(|v| {
            (
                v["from"].as_u64().unwrap(),
                v["to"].as_u64().unwrap(),
                v["applied"] == true,
            )
        })
        .collect()
}

#[test]
fn memory_hints_balloon_below_and_plug_above_the_boot_size() {
    let out = run("pvrun=memory", &[]).run();
    out.expect_contains("scenario: ballooned")
        .expect_contains("scenario: plugged")
        .expect_contains("scenario: returned")
        .expect_exit(0);
    // The default policy: 192 MiB reserve + 32 MiB; then + the 700 MiB
    // peak (892 MiB, within max=1G); then back to 224 MiB.
    let mem = changes(&out, "memory");
    assert_eq!(
        mem.get(..3),
        Some(
            &[
                (512 * MIB, 224 * MIB, true),
                (224 * MIB, 892 * MIB, true),
                (892 * MIB, 224 * MIB, true)
            ][..]
        ),
        "{mem:?}"
    );
    // Afterwards the guest may report a little more than 224 MiB in use
    // (the balloon statistics lag the return): memory then follows that
    // floor and comes back to the hinted 224 MiB, and nothing else moves it.
    let lines = out.json_lines("decisions.log");
    let later: Vec<&Value> = lines
        .iter()
        .filter(|v| v["resource"] == "memory")
        .skip(3)
        .collect();
    for d in &later {
        let reason = d["reason"].as_str().unwrap_or_default();
        let to = d["to"].as_u64().unwrap_or_default();
        assert!(
            reason.contains("in use") || to == 224 * MIB,
            "only the guest's in-use floor moves memory after the hints: {d}"
        );
    }
    assert_eq!(mem.last().map(|c| c.1), Some(224 * MIB), "{mem:?}");
}

#[test]
fn demo_workload_phases_drive_vcpus_and_memory() {
    let out = run("pvrun=demo", &["--cpus", "1,max=4"]).run();
    out.expect_contains("demo-workload: done").expect_exit(0);
    let vcpus = changes(&out, "vcpus");
    assert_eq!(vcpus.first(), Some(&(1, 4, true)), "{vcpus:?}");
    assert_eq!(vcpus.last().map(|c| c.1), Some(1), "{vcpus:?}");
    // The memory phase (256 MiB working set, 512 MiB peak) grows the guest
    // past its boot size; after it, memory goes back.
    let mem = changes(&out, "memory");
    let grow = mem.iter().position(|c| c.1 == 704 * MIB && c.2);
    assert!(grow.is_some(), "memory phase grows to 704 MiB: {mem:?}");
    assert!(
        mem[grow.unwrap()..].iter().any(|c| c.1 < 512 * MIB),
        "memory is returned after the phase: {mem:?}"
    );
    let grown: u64 = out
        .guest_line_value("demo-workload: memory phase ends with MemTotal ")
        .expect("MemTotal in the memory phase");
    assert!(grown > 512, "MemTotal past the boot size: {grown} MiB");
}

/// Cloud Hypervisor #4001: a memory resize hung when the guest never
/// activated virtio-mem. Here the grow is refused with a reason, once (no
/// retry loop), and the guest carries on.
#[test]
fn memory_grow_without_virtio_mem_driver_is_refused_with_a_reason() {
    let out = run("pvrun=memgrow pvskip=virtio_mem", &[]).run();
    out.expect_contains("scenario: memgrow done").expect_exit(0);
    let lines = out.json_lines("decisions.log");
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|v| v["resource"] == "memory" && v["applied"] == false)
        .collect();
    assert_eq!(refused.len(), 1, "refused once, not retried: {lines:?}");
    let err = refused[0]["error"].as_str().unwrap();
    assert!(err.contains("virtio-mem driver"), "{err}");
    let memtotal: u64 = out
        .guest_line_value("scenario: memgrow done memtotal=")
        .unwrap();
    assert!(memtotal < 512, "still at its boot size: {memtotal} MiB");
}

#[test]
fn control_api_resizes_reports_and_reloads() {
    let script = r#"
s=@FILES@/api.sock
ctl() { @PERFVMM@ ctl --api-sock $s "$@"; }
# Polls `ctl status` every 0.2 s until it matches every grep pattern after
# $2, for at most $1 seconds; $2 keeps the last status read. Fails on the
# deadline.
status_when() {
  end=$(( $(date +%s) + $1 )); out=$2; shift 2
  while [ "$(date +%s)" -lt $end ]; do
    if ctl status > "$out.now" 2>/dev/null; then
      mv "$out.now" "$out"; ok=1
      for p in "$@"; do grep -q "$p" "$out" || ok=0; done
      [ $ok = 1 ] && return 0
    fi
    sleep 0.2
  done
  return 1
}
status_when 120 @FILES@/status-boot.json '"virtio_mem_driver": true' || exit 1
ctl resize --vcpus 3 > @FILES@/resize-vcpus.json 2>&1
ctl resize --memory 768M > @FILES@/resize-memory.json 2>&1
ctl resize --memory 12XB > @FILES@/resize-bad.txt 2>&1; echo "exit=$?" >> @FILES@/resize-bad.txt
# The balloon's first statistics (asserted) and all 256 MiB plugged take
# the guest a while. At most 14 s: the guest powers off 18 s after it sees
# more than 600 MiB, and the calls below need it running.
status_when 14 @FILES@/status.json '"total_memory": [0-9]' '"virtio_mem_plugged_bytes": 268435456'
ctl metrics > @FILES@/metrics.txt 2>&1
printf '[vcpus]\nmax = 2\n' > @FILES@/small.toml
ctl reload @FILES@/small.toml > @FILES@/reload.json 2>&1
ctl decisions > @FILES@/decisions.json 2>&1
"#;
    let out = run(
        "pvrun=manual",
        &[
            "--cpus",
            "1,max=4",
            "--api-sock",
            "@FILES@/api.sock",
            "--policy-dir",
            "@FILES@",
        ],
    )
    .alongside(script)
    .fetch("resize-vcpus.json")
    .fetch("resize-memory.json")
    .fetch("resize-bad.txt")
    .fetch("status.json")
    .fetch("metrics.txt")
    .fetch("reload.json")
    .fetch("decisions.json")
    .run();
    if out.exit_code != Some(0) {
        eprintln!("CONSOLE:\n{}", out.console);
    }
    out.expect_contains("scenario: manual nproc=3")
        .expect_contains("scenario: manual memtotal=")
        .expect_exit(0);
    let json = |name: &str| -> Value {
        let text = out.files.get(name).cloned().unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
    };
    let v = json("resize-vcpus.json");
    assert_eq!(
        (v["to"].as_u64(), v["applied"].as_bool()),
        (Some(3), Some(true)),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("manual"), "{v}");
    let m = json("resize-memory.json");
    assert_eq!(m["to"].as_u64(), Some(768 * MIB), "{m}");
    let bad = out.files.get("resize-bad.txt").cloned().unwrap_or_default();
    assert!(bad.contains("12XB") && bad.contains("exit=1"), "{bad}");
    let status = json("status.json");
    let allocs = status["allocations"].as_array().unwrap();
    assert_eq!(allocs[0]["allocated"], 3, "{status}");
    assert_eq!(allocs[1]["allocated"].as_u64(), Some(768 * MIB));
    assert_eq!(
        status["memory"]["virtio_mem_requested_bytes"].as_u64(),
        Some(256 * MIB)
    );
    assert!(
        status["memory"]["guest_stats"]["total_memory"]
            .as_u64()
            .is_some(),
        "the balloon's statistics queue works: {status}"
    );
    let metrics = out.files.get("metrics.txt").cloned().unwrap_or_default();
    assert!(metrics.contains("perfvmm_vcpus_allocated 3"), "{metrics}");
    assert!(
        metrics.contains("perfvmm_decisions_total{resource=\"memory\",result=\"applied\"} 1"),
        "{metrics}"
    );
    assert_eq!(json("reload.json")["event"], "policy_reloaded");
    let decisions = json("decisions.json");
    assert!(
        decisions
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["event"] == "policy_reloaded"),
        "{decisions}"
    );
}

//! Hints become actions: vCPU hot-resize driven by the policy, asserted
//! from inside the guest (nproc) and from perfvmm's decision log.

use std::time::Duration;

use perfvmm_tests::{GuestRun, RunOutput};
use serde_json::Value;

/// Boots the demo guest with room for 4 vCPUs (1 at boot) and its decision
/// log, in an L1 host with 4 vCPUs.
fn run_with_decisions(cmdline: &str) -> RunOutput {
    GuestRun::demo(
        cmdline,
        &[
            "--cpus",
            "1,max=4",
            "--decision-log",
            "@FILES@/decisions.log",
        ],
    )
    .fetch("decisions.log")
    .timeout(Duration::from_secs(420))
    .l1_cpus(4)
    .run()
}

fn decisions(lines: &[Value]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .filter(|v| v["resource"] == "vcpus")
        .map(|v| (v["from"].as_u64().unwrap(), v["to"].as_u64().unwrap()))
        .collect()
}

#[test]
fn hints_grow_and_shrink_vcpus_within_bounds() {
    let out = run_with_decisions("pvrun=resize");
    // Hot-added vCPUs come online through images/cpu-onliner (the kernel's
    // uevents), not the polling fallback.
    out.expect_contains("cpu_online=uevent")
        .expect_contains("scenario: start with 1")
        .expect_contains("scenario: grew to 4")
        .expect_contains("scenario: shrank to 1")
        // Cloud Hypervisor #1338: a vCPU removed can be added again.
        .expect_contains("scenario: regrew to 3")
        // 1000 vCPUs asked for: the policy's (here the VM's) max.
        .expect_contains("scenario: clamped to 4")
        // Cloud Hypervisor #7086: a hint for 0 vCPUs is clamped to the minimum.
        .expect_contains("scenario: floor at 1")
        .expect_exit(0);
    let lines = out.json_lines("decisions.log");
    assert_eq!(decisions(&lines), [(1, 4), (4, 1), (1, 3), (3, 4), (4, 1)]);
    let first = lines.iter().find(|v| v["resource"] == "vcpus").unwrap();
    assert_eq!(first["applied"], true);
    assert!(
        !first["hints"].as_array().unwrap().is_empty(),
        "a decision names its hints: {first}"
    );
    assert!(first["reason"].as_str().unwrap().starts_with("grow"));
    let clamped: Vec<&Value> = lines.iter().filter(|v| v["clamped"] == true).collect();
    assert_eq!(
        clamped.len(),
        2,
        "the 1000-vCPU and 0-vCPU hints are clamped: {lines:?}"
    );
    let ejected = lines.iter().filter(|v| v["event"] == "ejected").count();
    // The first three ejections finish before the regrow; the last ones may
    // still be in flight when the guest powers off.
    assert!(
        (3..=6).contains(&ejected),
        "vCPUs ejected by the guest and parked: {ejected}"
    );
}

/// A vCPU the guest ejected waits outside `KVM_RUN` (the guest cannot
/// restart it), and runs again once perfvmm adds it back.
#[test]
fn an_ejected_vcpu_waits_outside_kvm_run_until_added_again() {
    // Once the guest has ejected three vCPUs, and a policy tick later, the
    // system call each vCPU thread is in (ioctl 16 is KVM_RUN, futex 202
    // the gate).
    let script = r#"
pid=""
i=0
while [ $i -lt 600 ]; do
  [ -z "$pid" ] && pid=$(pidof perfvmm)
  n=$(grep -c '"event":"ejected"' @FILES@/decisions.log 2>/dev/null)
  [ "${n:-0}" -ge 3 ] && break
  sleep 0.1
  i=$((i + 1))
done
sleep 1
for t in /proc/$pid/task/*; do
  echo "$(cat $t/comm) $(cut -d' ' -f1 $t/syscall)"
done > @FILES@/threads.txt
"#;
    let out = GuestRun::demo(
        "pvrun=park",
        &[
            "--cpus",
            "1,max=4",
            "--decision-log",
            "@FILES@/decisions.log",
        ],
    )
    .alongside(script)
    .fetch("decisions.log")
    .fetch("threads.txt")
    .timeout(Duration::from_secs(420))
    .l1_cpus(4)
    .run();
    out.expect_contains("scenario: park grew to 4")
        .expect_contains("scenario: park shrank to 1")
        .expect_contains("scenario: park back to 4")
        .expect_exit(0);
    let threads = out.files.get("threads.txt").cloned().unwrap_or_default();
    let syscall = |name: &str| {
        threads
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<i64>().ok())
    };
    for v in ["vcpu1", "vcpu2", "vcpu3"] {
        assert_eq!(
            syscall(v),
            Some(SYS_FUTEX),
            "{v} parked at its gate:\n{threads}"
        );
    }
}

/// `futex`'s system call number on x86-64 (where the gate waits).
const SYS_FUTEX: i64 = 202;

#[test]
fn demo_workload_phases_drive_vcpus() {
    let out = run_with_decisions("pvrun=demo");
    out.expect_contains("demo-workload: done").expect_exit(0);
    let lines = out.json_lines("decisions.log");
    let d = decisions(&lines);
    assert_eq!(
        d.first(),
        Some(&(1, 4)),
        "the manifest and parallel phase grow the VM to 4: {d:?}"
    );
    assert_eq!(
        d.last().map(|x| x.1),
        Some(1),
        "the idle phase gives the vCPUs back: {d:?}"
    );
    out.expect_contains("demo-workload: idle ends with 1 CPU(s) online");
}

#[test]
fn flooding_guest_is_rate_limited() {
    let policy = "[hints]\nrate_per_sec = 20\nburst = 20\n";
    let out = GuestRun::demo(
        "pvrun=flood pvcount=300",
        &[
            "--policy",
            "@FILES@/policy.toml",
            "--hint-log",
            "@FILES@/hints.log",
            "--cpus",
            "1,max=2",
        ],
    )
    .file("policy.toml", policy.as_bytes().to_vec())
    .fetch_last_line("hints.log")
    .timeout(Duration::from_secs(300))
    .run();
    out.expect_contains("flood: count=300").expect_exit(0);
    let c = &out.json_lines("hints.log")[0]["counters"];
    let limited = c["rate_limited"].as_u64().unwrap();
    assert!(
        limited >= 200,
        "most of a 300-hint burst is rate-limited: {c}"
    );
    assert_eq!(c["hints"], 300);
}

#[test]
fn without_the_driver_the_guest_keeps_its_boot_size() {
    let out = GuestRun::demo(
        "pvrun=nodriver",
        &[
            "--cpus",
            "1,max=4",
            "--decision-log",
            "@FILES@/decisions.log",
        ],
    )
    .fetch("decisions.log")
    .run();
    out.expect_contains("no perf-hint device")
        .expect_contains("scenario: nodriver done")
        .expect_exit(0);
    assert!(
        out.json_lines("decisions.log").is_empty(),
        "no decision without hints"
    );
    assert_eq!(out.guest_value("nproc").as_deref(), Some("1"));
}

#[test]
fn bad_policy_file_is_refused_with_key_and_line() {
    let out = GuestRun::demo("pvrun=poweroff", &["--policy", "@FILES@/policy.toml"])
        .file("policy.toml", b"[vcpus]\nmin = 1\nmaxx = 4\n".to_vec())
        .run();
    out.expect_contains("line 3")
        .expect_contains("maxx")
        .expect_exit(1);
}

/// `--cpus 4` with a policy of at most 2 vCPUs: the guest boots with 2,
/// and perfvmm says why (it used to keep 4 while reporting 2).
#[test]
fn the_boot_size_obeys_the_policy() {
    let out = GuestRun::demo(
        "pvrun=poweroff",
        &["--cpus", "4", "--policy", "@FILES@/policy.toml"],
    )
    .file("policy.toml", b"[vcpus]\nmax = 2\n".to_vec())
    .l1_cpus(4)
    .run();
    out.expect_contains("perfvmm-guest: nproc=2 ")
        .expect_contains("booting with 2 instead of 4")
        .expect_exit(0);
}

/// Issue 12, item 7: a hostile guest (images/hostile, a kernel module)
/// ejects vCPU 0 and vCPUs perfvmm did not ask to remove, writes where
/// virtio-mem has nothing plugged, and feeds the perf-hint device hostile
/// chains through a transport it drives by hand; then floods hints. perfvmm
/// keeps the guest within the policy, keeps answering its API, refuses the
/// chains (counted), lets nothing written to unplugged memory stick, and
/// stops on SIGTERM.
#[test]
fn a_hostile_guest_stays_within_policy_and_perfvmm_keeps_serving() {
    // Polls the API once a second while perfvmm runs.
    let script = r#"
i=0
while [ $i -lt 400 ]; do
  if @PERFVMM@ ctl --api-sock @FILES@/api.sock status >/dev/null 2>&1; then echo ok; else echo fail; fi
  sleep 1
  i=$((i + 1))
done > @FILES@/api.txt 2>&1
"#;
    let out = GuestRun::demo(
        // The last MiB of the virtio-mem region (4 GiB up, 512 MiB long).
        "pvrun=hostile pvunplugged=0x11ff00000 slub_debug=FZP init_on_free=1",
        &[
            "--cpus",
            "1,max=4",
            "--memory",
            "512M,max=1G",
            "--policy",
            "@FILES@/policy.toml",
            "--hint-log",
            "@FILES@/hints.log",
            "--decision-log",
            "@FILES@/decisions.log",
            "--api-sock",
            "@FILES@/api.sock",
        ],
    )
    .file("policy.toml", b"[vcpus]\nmax = 2\n".to_vec())
    .alongside(script)
    .fetch("hints.log")
    .fetch("decisions.log")
    .fetch("api.txt")
    .sigterm_once_console_shows("scenario: hostile done", 400)
    .timeout(Duration::from_secs(480))
    .l1_cpus(4)
    .run();
    out.expect_contains("scenario: hostile: hotplug: done")
        .expect_contains(
            "scenario: hostile: unplugged: wrote 64 KiB at 0x11ff00000, what was written is gone",
        )
        .expect_contains("scenario: hostile: hintq: done")
        .expect_contains("scenario: perf-hint bound again")
        .expect_contains("scenario: flood done")
        .expect_contains("scenario: still resized by hints nproc=2")
        .expect_contains("scenario: online cpus 0-1")
        .expect_contains("scenario: slab debugging poison=1")
        .expect_contains("scenario: kernel oops lines=0")
        .expect_exit(143);
    // perfvmm's own log stays short: guest-triggered warnings are limited
    // (virtio_mmio::LogLimit) and the virtio-queue crate's lines are off.
    let perfvmm_lines = out
        .console
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    assert!(
        perfvmm_lines <= 40 && !out.console.contains("virtio_queue"),
        "{perfvmm_lines} warning lines from perfvmm"
    );
    let decisions = out.json_lines("decisions.log");
    let vcpus: Vec<u64> = decisions
        .iter()
        .filter(|v| v["resource"] == "vcpus")
        .filter_map(|v| v["to"].as_u64())
        .collect();
    assert!(
        !vcpus.is_empty() && vcpus.iter().all(|&n| n <= 2),
        "within vcpus.max = 2: {vcpus:?}"
    );
    let hints = out.json_lines("hints.log");
    let counters = hints
        .iter()
        .rev()
        .find(|v| v["counters"].is_object())
        .expect("the hint log's counters line");
    let dropped = &counters["counters"]["dropped"];
    for reason in [
        "chain_too_long",
        "bad_address",
        "too_large",
        "writable_buffer",
    ] {
        assert!(
            dropped[reason].as_u64().unwrap_or(0) >= 1,
            "{reason} counted: {counters}"
        );
    }
    let api = out.files.get("api.txt").cloned().unwrap_or_default();
    let ok = api.lines().filter(|l| *l == "ok").count();
    assert!(
        ok >= 5,
        "the API answered throughout ({ok} answers):\n{api}"
    );
}

//! Snapshot and restore (issue 15): a guest that counts and sends hints is
//! snapshotted and stopped part-way, and a new perfvmm process restores it
//! from the snapshot; the count goes on where it stopped, with the vCPU
//! and the memory the guest had been given, its memory's contents, the
//! perf-hint device's counters and the policy engine's open phase intact,
//! and hints still flowing.

use perfvmm_tests::GuestRun;
use serde_json::Value;
use std::time::Duration;

/// Both perfvmm processes, one after the other, in one host.
const SCRIPT: &str = r#"
F=@FILES@
wait_for() {
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1))
    [ $i -gt $(($3 * 10)) ] && { echo "test: no '$2' in $1 after $3 s"; return 1; }
    sleep 0.1
  done
}
# A guest that crashed (exit 3) ends the script with 3, as a lone
# perfvmm's would: the harness retries such a run once (a known QEMU TCG
# nested-SVM fault) and reports the retry.
crash=0
crashed() { [ "$1" = 3 ] && crash=3; return 0; }
mkdir -p $F/snaps
@PERFVMM@ --kernel @KERNEL@ --initrd @INITRD@ --cmdline "quiet pvrun=count pvcount=60" \
  --cpus 1,max=2 --memory 256M,max=512M --api-sock $F/api --snapshot-dir $F/snaps \
  --hint-log $F/hints1.log </dev/null >$F/source.log 2>&1 &
pid=$!
wait_for $F/source.log "scenario: count 25 " 300
@PERFVMM@ ctl --api-sock $F/api status >$F/status1.json
@PERFVMM@ ctl --api-sock $F/api snapshot s1 --stop >$F/snap.json
echo "test: snapshot exit $?"
wait $pid
rc=$?; crashed $rc
echo "test: source exit $rc"
sed 's/^/source: /' $F/source.log
echo "test: report $(tr -d '\n' <$F/snap.json)"
echo "test: memory file $(du -k $F/snaps/s1/memory | cut -f1) KiB on disk"
@PERFVMM@ --restore $F/snaps/s1 --api-sock $F/api2 --hint-log $F/hints2.log \
  </dev/null >$F/restored.log 2>&1 &
pid=$!
wait_for $F/restored.log "scenario: count 40 " 120 &&
  @PERFVMM@ ctl --api-sock $F/api2 status >$F/status2.json
wait $pid
rc=$?; crashed $rc
echo "test: restored exit $rc"
sed 's/^/restored: /' $F/restored.log
echo "test: status1 $(cat $F/status1.json | tr -d '\n')"
echo "test: status2 $(cat $F/status2.json | tr -d '\n')"
echo "test: hints after restore $(grep -c '"kind"' $F/hints2.log)"
exit $crash
"#;

/// The `scenario: count N up=T` lines of one process's console, as (N, T).
fn counts(console: &str, prefix: &str) -> Vec<(u32, f64)> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| {
            let rest = l.split("scenario: count ").nth(1)?;
            let (n, up) = rest.split_once(" up=")?;
            Some((n.parse().ok()?, up.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn a_counting_guest_restored_from_its_snapshot_counts_on_with_its_resources() {
    let out = GuestRun::script(SCRIPT)
        .timeout(Duration::from_secs(600))
        .l1_cpus(2)
        .run();
    let c = &out.console;
    let tail = || out.tail(80);
    if let Ok(path) = std::env::var("PERFVMM_SNAPSHOT_CONSOLE") {
        let _ = std::fs::write(path, c);
    }
    for line in [
        "test: snapshot exit 0",
        "test: source exit 0",
        "test: restored exit 0",
        "source: scenario: count grew nproc=2",
        "restored: scenario: count blob same",
        "restored: perfvmm-guest: powering off",
    ] {
        assert!(c.contains(line), "{line:?} missing:\n{}", tail());
    }
    assert!(
        !c.contains("source: scenario: count done"),
        "the source stopped before the end"
    );

    let before = counts(c, "source: ");
    let after = counts(c, "restored: ");
    let (last, up_last) = *before.last().expect("counts before the snapshot");
    let (first, up_first) = *after.first().expect("counts after the restore");
    assert!(last >= 25, "snapshot taken after count 25: {last}");
    // The line being printed at the pause may be cut: after its number
    // (that step shows on both sides), or before it (that step shows on
    // neither: the restored console starts with the rest of its line). No
    // step is repeated from the start.
    assert!(
        (last..=last + 2).contains(&first),
        "the count goes on: {last} then {first}\n{}",
        tail()
    );
    assert_eq!(after.last().map(|a| a.0), Some(60), "the count finished");
    // The guest's clock stops while it is not running: it sees a pause, not the gap.
    assert!(
        up_first - up_last < 3.0,
        "guest uptime {up_last} s then {up_first} s"
    );
    let done = c
        .lines()
        .find_map(|l| l.strip_prefix("restored: scenario: count done "))
        .expect("count done");
    assert!(
        done.contains("nproc=2"),
        "hot-added vCPU still there: {done}"
    );
    let mem: u64 = done
        .split("memtotal=")
        .nth(1)
        .and_then(|m| m.trim().parse().ok())
        .expect("memtotal");
    assert!(mem > 400, "plugged memory still there: {done}");

    let snap = out.json_after("test: report ");
    assert_eq!(snap["vcpus"], 2, "{snap}");
    assert!(
        snap["written_bytes"].as_u64() < snap["memory_bytes"].as_u64(),
        "memory written sparse: {snap}"
    );
    let s1 = out.json_after("test: status1 ");
    let s2 = out.json_after("test: status2 ");
    let phases = &s1["open_phases"];
    assert!(
        phases.as_array().is_some_and(|p| !p.is_empty()),
        "the counting phase is open: {s1}"
    );
    assert_eq!(
        &s2["open_phases"], phases,
        "the policy engine keeps the open phase"
    );
    let msgs = |s: &Value| s["hint_counters"]["messages"].as_u64().unwrap_or(0);
    assert!(msgs(&s1) > 0, "{s1}");
    assert!(
        msgs(&s2) > msgs(&s1),
        "counters carried over and counting: {} then {}",
        msgs(&s1),
        msgs(&s2)
    );
    let hints = out
        .console
        .lines()
        .find_map(|l| l.strip_prefix("test: hints after restore "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(hints >= 2, "hints flow after the restore: {hints}");
}

//! The C ABI, built and linked as a C program would use it (no perf-hint
//! device here: calls must say so through their return codes).

use std::path::PathBuf;
use std::process::Command;

/// target/<profile>/ of this test binary.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

#[test]
fn c_program_links_and_runs() {
    // Build the C ABI library the way a C user would.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-q", "-p", "perfhint-capi"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success());
    let lib = target_dir().join("libperfhint.a");
    assert!(lib.exists(), "{}", lib.display());
    let dir = std::env::temp_dir().join(format!("perfhint-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("t.c");
    std::fs::write(
        &src,
        r#"
#include <stdio.h>
#include "perfhint.h"
int main(void) {
    if (perfhint_is_connected()) return 10;
    if (perfhint_parallelism(8, 8, 0.1) != PERFHINT_ENODEV) return 11;
    if (perfhint_io(99, 0) != PERFHINT_EINVAL) return 12;
    uint32_t id = perfhint_phase_begin("c-phase", 100);
    if (id == 0) return 13;
    if (perfhint_phase_begin(NULL, 0) != 0) return 14;
    if (perfhint_phase_end(id) != PERFHINT_ENODEV) return 15;
    uint32_t wid = 0;
    /* Nothing asked for: met at once. */
    if (perfhint_phase_begin_wait("w", 0, 0, 0, 0, &wid) != PERFHINT_OK || wid == 0) return 16;
    perfhint_phase_end(wid);
    /* More CPUs than any guest has: times out. */
    if (perfhint_phase_begin_wait("w2", 0, 4000000000u, 0, 30, &wid) != PERFHINT_TIMEDOUT) return 17;
    perfhint_phase_end(wid);
    if (perfhint_phase_begin_wait(NULL, 0, 0, 0, 0, &wid) != PERFHINT_EINVAL) return 18;
    if (perfhint_phase_begin_wait("x", 0, 0, 0, 0, NULL) != PERFHINT_EINVAL) return 19;
    if (perfhint_data_set("genome") != PERFHINT_ENODEV) return 20;
    if (perfhint_data_set("") != PERFHINT_EINVAL) return 21;
    if (perfhint_data_set(NULL) != PERFHINT_EINVAL) return 22;
    if (perfhint_data_set("0123456789012345678901234567890123456789012345678") != PERFHINT_EINVAL)
      return 23;
    puts("ok");
    return 0;
}
"#,
    )
    .unwrap();
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include");
    let exe = dir.join("t");
    let cc = Command::new("cc")
        .arg(&src)
        .arg("-I")
        .arg(&include)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let trace = dir.join("trace.jsonl");
    let out = Command::new(&exe)
        .env("PERFHINT_TRACE", &trace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    // With no device, every hint was still traced, one JSON line each.
    let trace = std::fs::read_to_string(&trace).unwrap();
    let events: Vec<String> = trace
        .lines()
        .map(|l| {
            let event = l.split("\"event\":\"").nth(1).unwrap();
            event[..event.find('"').unwrap()].to_string()
        })
        .collect();
    assert_eq!(
        events,
        [
            "parallelism",
            "phase_begin",
            "phase_end",
            "phase_begin",
            "phase_end",
            "phase_begin",
            "parallelism",
            "phase_end",
            "data_set",
        ],
        "{trace}"
    );
    assert!(trace.contains("\"name\":\"genome\""), "{trace}");
    assert!(trace.contains("\"name\":\"c-phase\""), "{trace}");
    std::fs::remove_dir_all(&dir).unwrap();
}

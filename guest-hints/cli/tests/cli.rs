//! The `perfhint` CLI, run as a user would (no perf-hint device here: `send`
//! and `phase` must be silent, successful no-ops).

use std::path::PathBuf;
use std::process::Command;

/// target/<profile>/ of this test binary.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

fn perfhint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perfhint"))
}

/// Builds guest-hints' `manifest_demo` example (a binary with a manifest).
fn manifest_demo() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "guest-hints",
            "--example",
            "manifest_demo",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(built.success());
    let example = target_dir().join("examples/manifest_demo");
    assert!(example.exists(), "{}", example.display());
    example
}

#[test]
fn inspect_shows_the_example_manifest() {
    let example = manifest_demo();
    let out = perfhint().arg("inspect").arg(&example).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["app"], "manifest-demo");
    assert_eq!(json["parallelism"]["max_useful"], 16);
    assert_eq!(json["io"]["class"], "sequential");
    assert_eq!(json["phases"][1]["name"], "compute");
    // Only the phases it declares: no null for each unused slot.
    assert_eq!(json["phases"].as_array().unwrap().len(), 2);
    assert_eq!(json["schedule"], serde_json::json!([]));

    // It survives strip.
    let stripped =
        std::env::temp_dir().join(format!("manifest_demo_stripped_{}", std::process::id()));
    let s = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&example)
        .status()
        .unwrap();
    assert!(s.success());
    let out = perfhint().arg("inspect").arg(&stripped).output().unwrap();
    assert!(out.status.success());
    std::fs::remove_file(&stripped).unwrap();
}

#[test]
fn inspect_without_manifest_is_a_clear_error() {
    let out = perfhint().args(["inspect", "/bin/sh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("embeds no perf-hint manifest"));
    let out = perfhint()
        .args(["inspect", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn send_and_phase_without_a_device() {
    let out = perfhint()
        .args(["send", "--parallelism", "4", "--working-set", "64M"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no perf-hint device"));
    let out = perfhint()
        .args([
            "phase",
            "build",
            "--parallelism",
            "2",
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "phase exits with the command's status"
    );
    let out = perfhint().args(["send", "--io", "bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = perfhint()
        .args(["send", "--working-set", "12XB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    let out = perfhint()
        .args(["send", "--data-set", "genome"])
        .output()
        .unwrap();
    assert!(out.status.success(), "a data set alone is a hint");
    let long = "g".repeat(49);
    for bad in ["", long.as_str()] {
        let out = perfhint()
            .args(["send", "--data-set", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("1 to 48 bytes"));
    }
}

#[test]
fn phase_can_wait_for_its_resources() {
    // No perf-hint device: the phase still begins, and what it asked for is
    // checked against what this machine has online.
    let out = perfhint()
        .args(["phase", "w", "--parallelism", "1", "--wait", "1000", "--"])
        .args(["sh", "-c", "echo $PERFHINT_WAIT"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "met");
    let start = std::time::Instant::now();
    let out = perfhint()
        .args(["phase", "w", "--parallelism", "4000000000", "--wait", "100"])
        .args(["--", "sh", "-c", "echo $PERFHINT_WAIT; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(start.elapsed() >= std::time::Duration::from_millis(100));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "timed_out");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("4000000000 CPUs not online within 100 ms"),
        "{err}"
    );
}

#[test]
fn hints_are_traced_to_a_file_without_a_device() {
    let dir = std::env::temp_dir().join(format!("perfhint-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.jsonl");
    let out = perfhint()
        .env("PERFHINT_TRACE", &trace)
        .args(["phase", "build", "--parallelism", "2", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["phase_begin", "parallelism", "phase_end"]);
    assert_eq!(lines[0]["name"], "build");
    assert_eq!(lines[0]["id"], lines[2]["id"]);
    assert_eq!(lines[1]["runnable_tasks"], 2);
    let (t0, t2) = (
        lines[0]["t_ns"].as_u64().unwrap(),
        lines[2]["t_ns"].as_u64().unwrap(),
    );
    assert!(t0 > 0 && t2 >= t0);
    assert!(lines[0]["pid"].as_u64().unwrap() > 0);
    // PERFHINT_TRACE=1 still prints the lines the end-to-end tests read.
    let out = perfhint()
        .env("PERFHINT_TRACE", "1")
        .args(["send", "--parallelism", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("perfhint-trace seq=dropped kind=parallelism"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

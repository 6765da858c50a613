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
}

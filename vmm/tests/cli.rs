//! Bad input never panics: each is one line on standard error and a
//! non-zero exit, before KVM is touched (so these run on any host).

use std::path::PathBuf;
use std::process::{Command, Output};

fn perfvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_perfvmm"))
        .args(args)
        .output()
        .expect("run perfvmm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn expect_error(args: &[&str], code: i32, needle: &str) {
    let o = perfvmm(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perfvmm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn malformed_sizes_and_counts() {
    expect_error(&["--kernel", "k", "--memory", "12XB"], 2, "unknown unit");
    expect_error(&["--kernel", "k", "--memory", "1K"], 2, "below the minimum");
    expect_error(&["--kernel", "k", "--cpus", "0"], 2, "at least 1 vCPU");
    expect_error(
        &["--kernel", "k", "--cpus", "4,max=2"],
        2,
        "below the boot count",
    );
    expect_error(&["--kernel", "k", "--cpus", "2,min=1"], 2, "unknown option");
    expect_error(
        &["--kernel", "k", "--cpus", "300"],
        2,
        "vCPUs perfvmm supports",
    );
    expect_error(&[], 2, "--kernel");
    expect_error(
        &["--kernel", "k", "--memory", "1G,max=512M"],
        2,
        "below the boot size",
    );
    expect_error(
        &["--kernel", "k", "--memory", "1G,max=9XB"],
        2,
        "unknown unit",
    );
}

#[test]
fn control_api_errors_are_one_line() {
    // A regular file where the socket should go is never replaced.
    let file = scratch("not-a-socket", b"keep me");
    let kernel = scratch("kernel-for-api", b"junk");
    expect_error(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--api-sock",
            file.to_str().unwrap(),
        ],
        1,
        "not a socket",
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    expect_error(
        &["ctl", "--api-sock", "/nonexistent/perfvmm.sock", "status"],
        1,
        "/nonexistent/perfvmm.sock",
    );
    expect_error(
        &["ctl", "--api-sock", "/nonexistent/perfvmm.sock", "resize"],
        2,
        "--vcpus",
    );
}

#[test]
fn missing_unreadable_and_wrong_files() {
    expect_error(
        &["--kernel", "/nonexistent/bzImage"],
        1,
        "cannot read kernel /nonexistent/bzImage",
    );
    expect_error(&["--kernel", "/tmp"], 1, "is not a Linux kernel");
    let junk = scratch("junk", &[0u8; 4096]);
    expect_error(
        &["--kernel", junk.to_str().unwrap()],
        1,
        "is not a Linux kernel",
    );
    let empty = scratch("empty", &[]);
    expect_error(
        &["--kernel", empty.to_str().unwrap()],
        1,
        "is not a Linux kernel",
    );
}

/// A minimal ELF64 header: enough for the loader to accept the file as ELF
/// and then refuse it cleanly.
fn tiny_elf() -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[6] = 1;
    e
}

#[test]
fn broken_elf_is_refused_cleanly() {
    let elf = scratch("broken.elf", &tiny_elf());
    expect_error(
        &["--kernel", elf.to_str().unwrap()],
        1,
        "cannot load kernel",
    );
}

#[test]
fn initrd_that_does_not_fit_and_missing_initrd() {
    let kernel = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/kernel/vmlinuz");
    if !kernel.exists() {
        panic!(
            "{} missing: run images/build.sh (scripts/test does)",
            kernel.display()
        );
    }
    let k = kernel.to_str().unwrap();
    let big = scratch("big.initrd", &vec![0u8; 40 << 20]);
    expect_error(
        &[
            "--kernel",
            k,
            "--initrd",
            big.to_str().unwrap(),
            "--memory",
            "32M",
        ],
        1,
        "does not fit",
    );
    expect_error(
        &["--kernel", k, "--initrd", "/nonexistent.cpio"],
        1,
        "cannot read initrd",
    );
}

#[test]
fn bad_policy_and_unwritable_logs() {
    let kernel = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/kernel/vmlinuz");
    let k = kernel.to_str().unwrap();
    let policy = scratch("p.toml", b"[hints]\nuntrusted = \"maybe\"\n");
    expect_error(
        &["--kernel", k, "--policy", policy.to_str().unwrap()],
        1,
        "line 2",
    );
    expect_error(
        &["--kernel", k, "--policy", "/nonexistent.toml"],
        1,
        "cannot read policy",
    );
    expect_error(
        &["--kernel", k, "--hint-log", "/nonexistent/dir/h.log"],
        1,
        "cannot create /nonexistent/dir/h.log",
    );
    expect_error(
        &["--kernel", k, "--decision-log", "/nonexistent/d.log"],
        1,
        "cannot create /nonexistent/d.log",
    );
}

#[test]
fn policy_subcommand() {
    let o = perfvmm(&["policy", "--print-default"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[vcpus]") && text.contains("[hints]"));
    let good = scratch("good.toml", text.as_bytes());
    assert!(perfvmm(&["policy", "--check", good.to_str().unwrap()])
        .status
        .success());
    let bad = scratch("bad.toml", b"[vcpus]\nmin = 0\n");
    expect_error(
        &["policy", "--check", bad.to_str().unwrap()],
        1,
        "vcpus.min",
    );
}

#[test]
fn help_tells_the_truth() {
    let o = perfvmm(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--hint-log",
        "--policy",
        "--decision-log",
        "--boot-timer",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("reboot"), "--help says what a reboot does");
    assert!(help.contains("143"), "--help lists exit statuses");
}

/// A snapshot directory holding `state` (and an empty memory file).
fn snapshot_dir(name: &str, state: &[u8]) -> PathBuf {
    let dir = scratch(&format!("{name}-unused"), b"")
        .parent()
        .unwrap()
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state"), state).unwrap();
    std::fs::write(dir.join("memory"), b"").unwrap();
    dir
}

/// A state file's header: magic, version, payload length, CRC-32.
fn header(version: u32, len: u64, crc: u32) -> Vec<u8> {
    let mut h = b"PVMMSNAP".to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

#[test]
fn a_snapshot_that_is_missing_foreign_damaged_or_newer_is_refused() {
    let missing = std::env::temp_dir().join("perfvmm-no-such-snapshot");
    let m = missing.to_str().unwrap();
    expect_error(&["--restore", m], 1, "No such file");
    let foreign = snapshot_dir("snap-foreign", b"#!/bin/sh\n");
    expect_error(
        &["--restore", foreign.to_str().unwrap()],
        1,
        "not a perfvmm snapshot",
    );
    let newer = snapshot_dir("snap-newer", &header(99, 0, 0));
    expect_error(
        &["--restore", newer.to_str().unwrap()],
        1,
        "snapshot format version 99; this perfvmm reads version 3 only",
    );
    let mut bytes = header(3, 3, 0);
    bytes.extend_from_slice(b"abc");
    let damaged = snapshot_dir("snap-damaged", &bytes);
    expect_error(
        &["--restore", damaged.to_str().unwrap()],
        1,
        "the snapshot is damaged (its checksum does not match)",
    );
    // The machine comes from the snapshot, not the command line.
    let d = damaged.to_str().unwrap();
    expect_error(&["--restore", d, "--cpus", "2"], 2, "cannot be used with");
    expect_error(&["--restore", d, "--kernel", "k"], 2, "cannot be used with");
}

#[test]
fn a_snapshot_dir_that_is_not_a_directory_is_refused() {
    expect_error(
        &["--kernel", "k", "--snapshot-dir", "/nonexistent/snaps"],
        1,
        "--snapshot-dir /nonexistent/snaps: not a directory",
    );
}

#[test]
fn a_bad_incoming_address_or_a_machine_option_beside_it_is_refused() {
    for bad in ["/run/x.sock", "tcp:localhost:1", "udp:1.2.3.4:5", "unix:"] {
        expect_error(&["--incoming", bad], 2, "unix:PATH or tcp:IP:PORT");
    }
    expect_error(
        &["--incoming", "unix:/tmp/x.sock", "--cpus", "2"],
        2,
        "cannot be used with",
    );
    // The policy is read before anything listens.
    let policy = scratch("incoming-bad.toml", b"[vcpus]\nmax = 0\n");
    expect_error(
        &[
            "--incoming",
            "unix:/tmp/perfvmm-never.sock",
            "--policy",
            policy.to_str().unwrap(),
        ],
        1,
        "vcpus.max",
    );
    assert!(!std::path::Path::new("/tmp/perfvmm-never.sock").exists());
}

#[test]
fn migrate_needs_a_target() {
    expect_error(&["ctl", "--api-sock", "/nonexistent", "migrate"], 2, "--to");
}

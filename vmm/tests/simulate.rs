//! `perfvmm simulate`: the shipped trace works in every policy mode, and
//! bad input is one line on standard error and exit status 1, never a
//! panic. Runs on any host (no VM is started).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The trace shipped in the source tree.
fn demo_trace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/traces/demo-nested.jsonl")
}

fn perfvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_perfvmm"))
        .args(args)
        .output()
        .expect("run perfvmm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perfvmm-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs `args`, expects exit 1 and exactly one line on standard error
/// containing `needle`.
fn expect_error(args: &[&str], needle: &str) {
    let o = perfvmm(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("perfvmm: "), "{err:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
}

#[test]
fn the_shipped_trace_runs_in_every_mode() {
    let trace = demo_trace();
    let trace = trace.to_str().unwrap();
    for mode in ["static", "reactive", "hints", "schedule"] {
        let policy = scratch(
            &format!("{mode}.toml"),
            format!("mode = \"{mode}\"\n").as_bytes(),
        );
        let policy = policy.to_str().unwrap();
        for latency in ["nested", "hardware"] {
            let o = perfvmm(&[
                "simulate",
                "--trace",
                trace,
                "--policy",
                policy,
                "--latency",
                latency,
            ]);
            let out = text(&o.stdout);
            assert!(o.status.success(), "{mode} {latency}: {}", text(&o.stderr));
            assert!(
                out.contains(&format!("policy mode {mode}, latency model {latency}")),
                "{out}"
            );
            for column in [
                "CPU slack",
                "CPU short",
                "mem slack",
                "mem short",
                "vCPU-s",
                "GiB-s",
            ] {
                assert!(out.contains(column), "{column}: {out}");
            }
            assert!(
                out.contains("synthetic"),
                "the trace says what it is: {out}"
            );
        }
        let o = perfvmm(&["simulate", "--trace", trace, "--policy", policy, "--json"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
        assert_eq!(v["mode"], mode);
        assert_eq!(v["samples"], 129);
        let slack = v["simulated"]["cpu"]["slack"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&slack), "{v}");
        let decisions = v["decisions"].as_array().unwrap().len();
        if mode == "static" {
            assert_eq!(decisions, 0);
        } else {
            assert!(decisions > 0, "{mode}: {v}");
        }
        assert!(
            v["measured"].is_null(),
            "the synthetic trace has no measurements"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let trace = demo_trace();
    let args = [
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--seed",
        "7",
        "--json",
    ];
    let (a, b) = (perfvmm(&args), perfvmm(&args));
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    // Without --policy: the built-in policy (schedule mode) and the nested model.
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(
        (v["mode"].as_str(), v["latency"].as_str()),
        (Some("schedule"), Some("nested"))
    );
    assert_eq!(v["seed"], 7);
}

#[test]
fn a_latency_file_is_a_model() {
    let trace = demo_trace();
    let lat = scratch(
        "lat.json",
        b"{\n  \"vcpus_ms\": [0],\n  \"memory_ms\": [0]\n}\n",
    );
    let o = perfvmm(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--latency",
        lat.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for d in v["decisions"].as_array().unwrap() {
        assert_eq!(d["latency_ms"], 0);
        assert_eq!(d["visible_ms"], d["t_ms"], "{d}");
    }
}

#[test]
fn a_bad_trace_line_is_one_line_naming_it() {
    let bad = scratch(
        "bad.jsonl",
        b"{\"format\":\"perfvmm-trace\",\"version\":1,\"vm\":{\"boot_vcpus\":1,\"boot_memory\":536870912}}\n\
          {\"t_ms\":0,\"demand\":{\"running\":1,\"mem_used_kib\":1}}\n\
          {\"t_ms\":100,\"demand\":{\"running\":1,\n",
    );
    expect_error(
        &["simulate", "--trace", bad.to_str().unwrap()],
        "line 3: not JSON",
    );
    let bad = scratch(
        "field.jsonl",
        b"{\"format\":\"perfvmm-trace\",\"version\":1,\"vm\":{\"boot_vcpus\":1,\"boot_memory\":536870912}}\n\
          {\"t_ms\":0,\"demand\":{\"running\":\"many\\nlines\",\"mem_used_kib\":1}}\n",
    );
    expect_error(
        &["simulate", "--trace", bad.to_str().unwrap()],
        // serde_json's message, with the column in the line; the string
        // is escaped, so the message stays on one line.
        r#"line 2: demand: invalid type: string "many\nlines", expected f64 at column 43"#,
    );
    let header = scratch("header.jsonl", b"{\"t_ms\":0,\"demand\":{}}\n");
    expect_error(
        &["simulate", "--trace", header.to_str().unwrap()],
        "line 1: bad header",
    );
    let binary = scratch("binary.jsonl", &[0xff, 0xfe, 0x00, b'\n']);
    expect_error(
        &["simulate", "--trace", binary.to_str().unwrap()],
        "cannot read trace",
    );
}

#[test]
fn missing_and_unusable_files_are_one_line() {
    let missing = std::env::temp_dir().join("perfvmm-simulate-no-such-trace.jsonl");
    let missing = missing.to_str().unwrap();
    expect_error(&["simulate", "--trace", missing], "cannot read trace");
    let dir = std::env::temp_dir();
    expect_error(
        &["simulate", "--trace", dir.to_str().unwrap()],
        "not a regular file",
    );
    let trace = demo_trace();
    let trace = trace.to_str().unwrap();
    expect_error(
        &["simulate", "--trace", trace, "--latency", "fast"],
        "--latency takes nested, hardware or a file",
    );
    let lat = scratch("badlat.json", b"{\"vcpus_ms\":[1]}");
    expect_error(
        &[
            "simulate",
            "--trace",
            trace,
            "--latency",
            lat.to_str().unwrap(),
        ],
        "memory_ms: missing",
    );
    expect_error(
        &["simulate", "--trace", trace, "--policy", missing],
        "cannot read policy",
    );
    let policy = scratch("bad.toml", b"mode = \"psychic\"\n");
    expect_error(
        &[
            "simulate",
            "--trace",
            trace,
            "--policy",
            policy.to_str().unwrap(),
        ],
        "line 1",
    );
}

#[test]
fn help_describes_the_subcommand() {
    let o = perfvmm(&["simulate", "--help"]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    for needle in [
        "--trace <FILE>",
        "--policy <FILE>",
        "--latency <nested|hardware|FILE>",
        "--seed <N>",
        "--json",
        "docs/simulator.md",
        "policy/traces/demo-nested.jsonl",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let o = perfvmm(&["simulate"]);
    assert_eq!(o.status.code(), Some(2), "--trace is required");
}

//! `perfvmm predict`: a table, JSON and SVG from good profiles; bad input
//! is one line on standard error and exit status 1, never a panic. Runs on
//! any host (no VM is started).

use std::path::PathBuf;
use std::process::{Command, Output};

fn perfvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_perfvmm"))
        .args(args)
        .output()
        .expect("run perfvmm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str, bytes: &[u8]) -> String {
    let dir: PathBuf = std::env::temp_dir().join(format!("perfvmm-predict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

/// A profile of a three-phase program on `cpus` CPUs: load (serial, 2 s),
/// solve (4 threads, 8 s of CPU work), write (serial, 1 s).
fn profile(cpus: u32) -> String {
    let k = cpus.min(4) as f64;
    let solve = 1000.0 + 8000.0 / k;
    format!(
        r#"{{"format":"perfhint-profile","version":1,"command":["./solver"],"binary":null,
"build_id":null,"wall_ms":{wall},"interval_ms":10,"runs":1,"cpu_time_source":"schedstat",
"working_set_source":"referenced","io_source":"storage","cpus":{cpus},"notes":[],"phases":[
{{"id":1,"name":"load","source":"explicit","start_ms":0,"duration_ms":2000,"parallelism_p50":1.0,
"parallelism_p95":1.0,"max_useful":1,"working_set_bytes":104857600,"peak_bytes":209715200,
"io_bytes_per_sec":0,"io_class":"none","samples":200,"cpu_ms":2000.0,
"functions":[{{"name":"parse","share":1.0,"serial_share":1.0}}]}},
{{"id":2,"name":"solve","source":"explicit","start_ms":2000,"duration_ms":{solve},"parallelism_p50":{p},
"parallelism_p95":{p},"max_useful":4,"working_set_bytes":104857600,"peak_bytes":314572800,
"io_bytes_per_sec":0,"io_class":"none","samples":100,"cpu_ms":9000.0,
"functions":[{{"name":"sweep","share":0.8889,"serial_share":0.0}},{{"name":"reduce","share":0.1111,"serial_share":1.0}}]}},
{{"id":3,"name":"write","source":"explicit","start_ms":{ws},"duration_ms":1000,"parallelism_p50":1.0,
"parallelism_p95":1.0,"max_useful":1,"working_set_bytes":1048576,"peak_bytes":2097152,
"io_bytes_per_sec":0,"io_class":"none","samples":100,"cpu_ms":1000.0}}]}}"#,
        wall = 3000.0 + solve,
        solve = solve as u64,
        ws = 2000 + solve as u64,
        p = 9000.0 / solve,
    )
}

fn expect_error(args: &[&str], needle: &str) {
    let o = perfvmm(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn predicts_scaling_a_what_if_and_hosts_from_two_profiles() {
    let p1 = scratch("p1.json", profile(1).as_bytes());
    let p2 = scratch("p2.json", profile(2).as_bytes());
    let svg = scratch("out.svg", b"");
    let o = perfvmm(&[
        "predict",
        &p1,
        &p2,
        "--vcpus",
        "1,2,4,8",
        "--what-if",
        "function=sweep:-10%",
        "--prices",
        "builtin",
        "--deadline",
        "20s",
        "--svg",
        &svg,
    ]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        out.contains("solver: 3 phases, from profiles on 1, 2 CPU(s)"),
        "{out}"
    );
    // 2 + (1 + 8/4) + 1 = 6 s on 4 vCPUs; 10 % less sweep: 5.8 s.
    assert!(out.contains("     4      6.00 s"), "{out}");
    assert!(out.contains("5.80 s (-3.3 %)"), "{out}");
    assert!(
        out.contains("more than 4 vCPUs save less than 5 %"),
        "{out}"
    );
    assert!(out.contains("m7i.xlarge"), "{out}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    let o = perfvmm(&["predict", &p1, &p2, "--vcpus", "4", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["scaling"][0]["time_ms"], 6000.0);
    assert_eq!(v["memory_need_bytes"], 346030080u64, "300 MiB peak + 10 %");
}

#[test]
fn bad_input_is_one_clear_line() {
    let good = scratch("good.json", profile(2).as_bytes());
    let newer = scratch("v9.json", br#"{"format":"perfhint-profile","version":9}"#);
    expect_error(&["predict", &newer], "profile version 9 is newer");
    let empty = profile(2).replace(r#""phases":["#, r#""phases":[],"x":["#);
    let empty = scratch("empty.json", empty.as_bytes());
    expect_error(&["predict", &empty], "has no phases");
    expect_error(
        &["predict", &good, "--what-if", "function=swep:-10%"],
        "nearest: sweep",
    );
    expect_error(
        &["predict", &good, "--what-if", "phase=solv:-10%"],
        "nearest: solve",
    );
    expect_error(
        &["predict", &good, "--what-if", "gpu:+10%"],
        "expected function=NAME",
    );
    let hosts = scratch("bad.toml", b"[[host]\nname = 'x'\n");
    expect_error(&["predict", &good, "--hosts", &hosts], "bad.toml");
    expect_error(&["predict", "/nonexistent/p.json"], "cannot read profile");
    expect_error(&["predict", &good, "--vcpus", "0,2"], "--vcpus");
    expect_error(&["predict", &good, "--deadline", "soon"], "--deadline");
}

#[test]
fn a_host_smaller_than_the_program_does_not_fit() {
    let good = scratch("fit.json", profile(2).as_bytes());
    let hosts = scratch(
        "hosts.toml",
        b"[[host]]\nname = 'tiny'\ncores = 1\nmemory = '128M'\n[[host]]\nname = 'big'\ncores = 8\nmemory = '2G'\n",
    );
    let o = perfvmm(&["predict", &good, "--hosts", &hosts]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        out.contains("no: 128 MiB of memory, the program needs 330 MiB"),
        "{out}"
    );
    assert!(out.contains("fastest: big"), "{out}");
}

//! `perfhint profile`, `--merge` and `embed`, run as a user would on a
//! plain Linux host (no perf-hint device): profile real programs, derive
//! and embed their manifests into C and Rust binaries, stripped or not, and
//! refuse bad input with one clear line and nothing changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

/// target/<profile>/ of this test binary.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf()
}

fn perfhint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_perfhint"))
}

/// Builds guest-hints' examples once; returns the examples directory.
fn examples() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let built = Command::new(cargo)
                .args(["build", "-q", "-p", "guest-hints"])
                .args(["--example", "phases_demo", "--example", "manifest_demo"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(built.success());
            target_dir().join("examples")
        })
        .clone()
}

/// Tests that measure CPU time take turns, so that they do not compete
/// with each other for the machine's CPUs (other work still may).
fn measuring() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("perfhint-derive-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::copy(from, to).unwrap();
    to.to_path_buf()
}

fn stripped(from: &Path, to: &Path) -> PathBuf {
    let s = Command::new("strip")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .unwrap();
    assert!(s.success());
    to.to_path_buf()
}

/// `perfhint profile -o out -- cmd...`, its output, and the profile.
fn profile(out: &Path, cmd: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let o = perfhint()
        .args(["profile", "-o"])
        .arg(out)
        .arg("--")
        .args(cmd)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let p = std::fs::read_to_string(out)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(Value::Null);
    (o, p)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The demo's own measure of each phase: (name, cpu ms, wall ms).
fn reports(stdout: &[u8]) -> Vec<(String, f64, f64)> {
    text(stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("phase ")?.split_whitespace();
            let name = w.next()?.to_string();
            let cpu = w.next()?.strip_prefix("cpu_ms=")?.parse().ok()?;
            let wall = w.next()?.strip_prefix("wall_ms=")?.parse().ok()?;
            Some((name, cpu, wall))
        })
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[test]
fn profile_finds_the_phases_and_their_parallelism() {
    let _turn = measuring();
    let dir = scratch("phases");
    let demo = examples().join("phases_demo");
    let out = dir.join("p.json");
    let (o, p) = profile(
        &out,
        &[demo.to_str().unwrap()],
        &[("PHASES_DEMO_REPORT", "1")],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(p["format"], "perfhint-profile");
    assert_eq!(p["version"], 1);
    assert_eq!(p["working_set_source"], "referenced");
    assert!(p["build_id"].as_str().unwrap().len() >= 16);
    let phases = p["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["two", "one"], "{p:#}");
    let measured = reports(&o.stdout);
    assert_eq!(measured.len(), 2, "{}", text(&o.stdout));
    for (ph, (name, cpu, wall)) in phases.iter().zip(&measured) {
        assert_eq!(ph["name"], name.as_str());
        assert_eq!(ph["source"], "explicit");
        // The phase's length and its parallelism, against what the program
        // itself measured (the machine may be busy: no fixed numbers).
        let dur = f(&ph["duration_ms"]);
        assert!((dur - wall).abs() <= 60.0, "{name}: {dur} ms vs {wall} ms");
        let expected = cpu / wall;
        let p50 = f(&ph["parallelism_p50"]);
        assert!(
            (p50 - expected).abs() <= 0.25 + 0.1 * expected,
            "{name}: p50 {p50} vs {expected:.2} measured by the program"
        );
        assert!(f(&ph["parallelism_p95"]) >= p50);
        assert!(ph["samples"].as_u64().unwrap() >= 20);
    }
    // Threads running or runnable at once: two, then one.
    assert!(phases[0]["max_useful"].as_u64().unwrap() >= 2, "{p:#}");
    assert!(
        (1..=2).contains(&phases[1]["max_useful"].as_u64().unwrap()),
        "{p:#}"
    );
    // Phase "one" touches 64 MiB over and over; "two" touches little.
    let mib = |v: &Value| v.as_u64().unwrap() >> 20;
    assert!(mib(&phases[1]["peak_bytes"]) >= 64, "{p:#}");
    assert!(mib(&phases[1]["working_set_bytes"]) >= 48, "{p:#}");
    assert!(phases[1]["working_set_bytes"].as_u64() <= phases[1]["peak_bytes"].as_u64());
    assert!(mib(&phases[0]["peak_bytes"]) < 32, "{p:#}");
    let end = phases[0]["start_ms"].as_u64().unwrap() + phases[0]["duration_ms"].as_u64().unwrap();
    assert_eq!(phases[1]["start_ms"].as_u64().unwrap(), end);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_finds_phases_nobody_announced() {
    let _turn = measuring();
    let dir = scratch("detect");
    let demo = examples().join("phases_demo");
    let out = dir.join("p.json");
    let (o, p) = profile(
        &out,
        &[demo.to_str().unwrap(), "--no-hints", "--mib", "48"],
        &[("PHASES_DEMO_REPORT", "1")],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let phases = p["phases"].as_array().unwrap();
    assert!(phases.len() >= 2, "{p:#}");
    assert!(phases.iter().all(|x| x["source"] == "detected"), "{p:#}");
    // A cut where the program went from two busy threads and little memory
    // to one thread and 48 MiB (within 200 ms: on a busy machine filling
    // the memory takes a while, and the cut falls within that ramp).
    let first_wall = reports(&o.stdout)[0].2;
    let cuts: Vec<f64> = phases[1..].iter().map(|x| f(&x["start_ms"])).collect();
    assert!(
        cuts.iter().any(|c| (c - first_wall).abs() <= 200.0),
        "cuts {cuts:?}, phase two ended after {first_wall} ms"
    );
    let last = phases.last().unwrap();
    assert!(last["peak_bytes"].as_u64().unwrap() >= 48 << 20, "{p:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_of_a_shell_script_with_phases_exits_as_it_does() {
    let _turn = measuring();
    let dir = scratch("shell");
    let out = dir.join("p.json");
    let ph = env!("CARGO_BIN_EXE_perfhint");
    // Phases announced by `perfhint phase` in a child of a child, a busy
    // loop in the background, and the script's exit status.
    let script = format!(
        "{ph} phase load -- sleep 0.4; \
         {ph} phase work -- sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'; \
         exit 3"
    );
    let (o, p) = profile(&out, &["sh", "-c", &script], &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let phases = p["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(names, ["load", "work"], "{p:#}");
    let load = &phases[0];
    assert!((f(&load["duration_ms"]) - 400.0).abs() < 150.0, "{p:#}");
    assert!(f(&load["parallelism_p50"]) < 0.1, "sleeping: {p:#}");
    // Busy, as much as a busy machine lets it be.
    let work = phases.iter().find(|x| x["name"] == "work").unwrap();
    assert!(
        f(&work["parallelism_p95"]) > f(&load["parallelism_p95"]) + 0.1,
        "busy: {p:#}"
    );
    assert!(p["binary"].as_str().unwrap().starts_with('/'));
    assert_eq!(p["command"][0], "sh");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_parts_can_be_turned_off_and_the_profile_says_so() {
    let _turn = measuring();
    let dir = scratch("parts-off");
    let out = dir.join("p.json");
    let o = perfhint()
        .args(["profile", "--no-functions", "--no-working-set", "-o"])
        .arg(&out)
        .args([
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(p["working_set_source"], "rss", "{p:#}");
    let notes = p["notes"].to_string();
    assert!(notes.contains("--no-working-set"), "{notes}");
    assert!(notes.contains("--no-functions"), "{notes}");
    assert!(p["phases"]
        .as_array()
        .unwrap()
        .iter()
        .all(|ph| ph["functions"].as_array().is_none_or(Vec::is_empty)));
    // Not with --merge: there is nothing to sample.
    let o = perfhint()
        .args(["profile", "--no-functions", "-o"])
        .arg(dir.join("m.json"))
        .args(["--merge"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profile_refuses_bad_arguments_with_one_line() {
    let dir = scratch("args");
    let out = dir.join("p.json");
    for (args, want) in [
        (
            vec!["--interval-ms", "0", "--", "true"],
            "--interval-ms must be at least 1",
        ),
        (
            vec!["--", "/nonexistent/program"],
            "cannot run /nonexistent/program",
        ),
        (vec![], "give a command after --"),
    ] {
        let o = perfhint()
            .args(["profile", "-o"])
            .arg(&out)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = text(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("perfhint profile: ") && err.contains(want),
            "{err}"
        );
        assert!(!out.exists());
    }
    // An output that cannot be written is refused before CMD runs.
    let marker = dir.join("ran");
    let o = perfhint()
        .args(["profile", "-o"])
        .arg(dir.join("no-such-dir").join("p.json"))
        .args(["--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("is not a directory"));
    assert!(!marker.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_combines_runs_of_one_binary() {
    let _turn = measuring();
    let dir = scratch("merge");
    let demo = examples().join("phases_demo");
    let mut runs = Vec::new();
    for i in 0..2 {
        let out = dir.join(format!("run{i}.json"));
        let (o, _) = profile(&out, &[demo.to_str().unwrap(), "300", "--mib", "8"], &[]);
        assert!(o.status.success());
        runs.push(out);
    }
    let merged = dir.join("merged.json");
    let o = perfhint()
        .args(["profile", "--merge"])
        .args(&runs)
        .arg("-o")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(m["runs"], 2);
    let phases = m["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    let run0: Value = serde_json::from_str(&std::fs::read_to_string(&runs[0]).unwrap()).unwrap();
    let run1: Value = serde_json::from_str(&std::fs::read_to_string(&runs[1]).unwrap()).unwrap();
    for (i, ph) in phases.iter().enumerate() {
        let (a, b) = (
            f(&run0["phases"][i]["parallelism_p50"]),
            f(&run1["phases"][i]["parallelism_p50"]),
        );
        let spread = &ph["spread"]["parallelism_p50"];
        assert_eq!(f(&spread["min"]), a.min(b));
        assert_eq!(f(&spread["max"]), a.max(b));
        assert!((f(&ph["parallelism_p50"]) - (a + b) / 2.0).abs() < 0.002);
    }
    // A profile of another binary does not merge.
    let other = dir.join("other.json");
    let (o, _) = profile(&other, &["true"], &[]);
    assert!(o.status.success());
    let o = perfhint()
        .args(["profile", "--merge"])
        .arg(&runs[0])
        .arg(&other)
        .arg("-o")
        .arg(dir.join("bad.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("profile different binaries"), "{err}");
    assert!(!dir.join("bad.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn inspect(binary: &Path) -> Value {
    let o = perfhint().arg("inspect").arg(binary).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn embed(binary: &Path, profile: &Path, out: Option<&Path>) -> Output {
    let mut c = perfhint();
    c.arg("embed").arg(binary).arg(profile);
    if let Some(o) = out {
        c.arg("-o").arg(o);
    }
    c.output().unwrap()
}

/// A small C program, built here.
fn c_binary(dir: &Path) -> PathBuf {
    let src = dir.join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    )
    .unwrap();
    let exe = dir.join("hello");
    let cc = Command::new("cc")
        .arg(&src)
        .arg("-Wl,--build-id")
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{}", text(&cc.stderr));
    exe
}

#[test]
fn embed_into_c_binaries_stripped_or_not() {
    let dir = scratch("embed-c");
    let exe = c_binary(&dir);
    let prof = dir.join("hello.json");
    let (o, p) = profile(&prof, &[exe.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello\n");
    assert!(p["build_id"].is_string());
    let plain = copy(&exe, &dir.join("plain"));
    let strip = stripped(&exe, &dir.join("stripped"));
    for bin in [&plain, &strip] {
        let o = embed(bin, &prof, None);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains("new .note.perfhint section"));
        let m = inspect(bin);
        assert_eq!(m["app"], bin.file_name().unwrap().to_str().unwrap());
        let schedule = m["schedule"].as_array().unwrap();
        assert_eq!(schedule.len(), p["phases"].as_array().unwrap().len());
        assert!(schedule[0]["duration_ms"].as_u64().is_some());
        assert!(m["parallelism"]["runnable_tasks"].as_u64().unwrap() >= 1);
        // Still runs, still the same program.
        let run = Command::new(bin).output().unwrap();
        assert_eq!(text(&run.stdout), "hello\n");
        // Embedding again replaces the section it added.
        let o = embed(bin, &prof, None);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(inspect(bin)["schedule"], m["schedule"]);
    }
    // With -o the input is left alone.
    let out = dir.join("out");
    let before = std::fs::read(&exe).unwrap();
    let o = embed(&exe, &prof, Some(&out));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&exe).unwrap(), before);
    assert!(inspect(&out)["schedule"].is_array());
    assert_eq!(Command::new(&out).output().unwrap().stdout, b"hello\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn embed_into_rust_binaries_stripped_or_not() {
    let dir = scratch("embed-rust");
    let ex = examples();
    // phases_demo has no manifest of its own; manifest_demo compiles one in.
    for (name, args) in [
        ("phases_demo", vec!["200", "--mib", "4"]),
        ("manifest_demo", vec![]),
    ] {
        let exe = ex.join(name);
        let prof = dir.join(format!("{name}.json"));
        let mut cmd = vec![exe.to_str().unwrap()];
        cmd.extend(args);
        let (o, p) = profile(&prof, &cmd, &[]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let plain = copy(&exe, &dir.join(name));
        let strip = stripped(&exe, &dir.join(format!("{name}-stripped")));
        for bin in [&plain, &strip] {
            let o = embed(bin, &prof, None);
            assert!(o.status.success(), "{name}: {}", text(&o.stderr));
            let m = inspect(bin);
            let schedule = m["schedule"].as_array().unwrap();
            let phases = p["phases"].as_array().unwrap();
            assert_eq!(schedule.len(), phases.len(), "{m:#}");
            for (s, ph) in schedule.iter().zip(phases) {
                assert_eq!(s["start_ms"], ph["start_ms"]);
                assert_eq!(s["duration_ms"], ph["duration_ms"]);
                assert_eq!(
                    s["parallelism_p50_milli"].as_f64().unwrap(),
                    (f(&ph["parallelism_p50"]) * 1000.0).round()
                );
            }
            if name == "manifest_demo" {
                // What a profile cannot tell is kept from the compiled-in manifest.
                assert_eq!(m["placement"]["locality"], "shared_cache", "{m:#}");
                let declared: Vec<&str> = m["phases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["name"].as_str().unwrap())
                    .collect();
                assert_eq!(declared, ["load", "compute"]);
            } else {
                let declared: Vec<&str> = m["phases"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["name"].as_str().unwrap())
                    .collect();
                assert_eq!(declared, ["two", "one"]);
            }
            let run = Command::new(bin).output().unwrap();
            assert!(run.status.success());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `perfhint embed`, expecting one line on stderr containing `want`,
/// exit status 1, and `unchanged` byte for byte as before.
fn embed_fails(args: &[&Path], want: &str, unchanged: &Path) {
    let before = std::fs::read(unchanged).unwrap();
    let o = perfhint().arg("embed").args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{args:?}");
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("perfhint embed: "), "{err}");
    assert!(err.contains(want), "wanted {want:?} in {err}");
    assert_eq!(std::fs::read(unchanged).unwrap(), before, "{args:?}");
    assert!(o.stdout.is_empty());
}

#[test]
fn embed_refuses_bad_input_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("embed-bad");
    let exe = c_binary(&dir);
    let prof = dir.join("hello.json");
    let (o, _) = profile(&prof, &[exe.to_str().unwrap()], &[]);
    assert!(o.status.success());
    let good = std::fs::read_to_string(&prof).unwrap();

    let truncated = dir.join("truncated.json");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    embed_fails(&[&exe, &truncated], "truncated or not JSON", &exe);

    let newer = dir.join("newer.json");
    std::fs::write(&newer, good.replace("\"version\": 1", "\"version\": 2")).unwrap();
    embed_fails(&[&exe, &newer], "profile version 2 is newer", &exe);

    // A profile of another binary: both build-ids are named.
    let other = dir.join("other.json");
    let (o, op) = profile(
        &other,
        &[examples().join("phases_demo").to_str().unwrap(), "50"],
        &[],
    );
    assert!(o.status.success());
    let other_id = op["build_id"].as_str().unwrap().to_string();
    let bin_id = serde_json::from_str::<Value>(&good).unwrap()["build_id"]
        .as_str()
        .unwrap()
        .to_string();
    embed_fails(&[&exe, &other], &format!("build-id {other_id}"), &exe);
    embed_fails(&[&exe, &other], &format!("has build-id {bin_id}"), &exe);

    let not_elf = dir.join("script.sh");
    std::fs::write(&not_elf, "#!/bin/sh\necho hi\n").unwrap();
    embed_fails(&[&not_elf, &prof], "not an ELF file", &not_elf);

    let readonly = copy(&exe, &dir.join("readonly"));
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o555)).unwrap();
    embed_fails(&[&readonly, &prof], "is read-only", &readonly);

    // An output that cannot be written: its directory is a file.
    let o = perfhint()
        .arg("embed")
        .arg(&exe)
        .arg(&prof)
        .arg("-o")
        .arg(dir.join("hello.c").join("out"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot write"), "{err}");

    let missing = dir.join("missing.json");
    embed_fails(&[&exe, &missing], "missing.json", &exe);
    // Nothing but the files made here is left in the directory.
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "hello",
            "hello.c",
            "hello.json",
            "newer.json",
            "other.json",
            "readonly",
            "script.sh",
            "truncated.json"
        ]
    );
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

//! OpenMP in the guest: libomp's topology detection on perfvmm's CPUID, and
//! hints derived from OpenMP parallel regions by the OMPT tool
//! (guest-hints/ompt), with no perfhint code in the programs
//! (images/openmp). The guest side of each nested test is a scenario in
//! images/guest-scenario; the `host_` tests run the tool on this host,
//! where there is no perf-hint device. See docs/derived-hints-ompt.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use perfvmm_tests::{GuestRun, RunOutput};
use serde_json::Value;

const HINTS: &str = "hints.log";
const DECISIONS: &str = "decisions.log";

/// The guest with `cpus` (perfvmm's `--cpus`), its hint and decision logs,
/// in an L1 host with a vCPU for each guest vCPU.
fn run_scenario(cmdline: &str, cpus: &str, l1_cpus: u32) -> RunOutput {
    GuestRun::demo(
        cmdline,
        &[
            "--cpus",
            cpus,
            "--hint-log",
            "@FILES@/hints.log",
            "--decision-log",
            "@FILES@/decisions.log",
        ],
    )
    .fetch(HINTS)
    .fetch(DECISIONS)
    .timeout(Duration::from_secs(420))
    .l1_cpus(l1_cpus)
    .run()
}

/// The topology libomp printed (`KMP_AFFINITY=verbose`) on the console
/// lines tagged `tag`: "1 socket x 2 cores/socket x 1 thread/core (2 total cores)".
fn libomp_topology(out: &RunOutput, tag: &str) -> Option<String> {
    out.console
        .lines()
        .filter(|l| l.starts_with(tag))
        .find_map(|l| {
            let rest = &l[l.find("KMP_AFFINITY: ")? + "KMP_AFFINITY: ".len()..];
            rest.contains("/socket x ").then(|| rest.trim().to_string())
        })
}

/// Checks one `KMP_AFFINITY=verbose` run of omp-work in the guest: x2APIC
/// decoding, one socket of `cores` single-threaded cores, and the program's
/// result.
fn assert_libomp_run(out: &RunOutput, which: &str, cores: u32) {
    let tag = format!("scenario-omp-{which}: ");
    out.expect_contains(&format!(
        "scenario: omp-topology {which} rc=0 nproc={cores}"
    ));
    let lines: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with(&tag))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("decoding x2APIC ids")),
        "libomp decodes the x2APIC IDs (CPUID leaf 0xB): {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("Assertion failure")),
        "{lines:#?}"
    );
    let topology = libomp_topology(out, &tag);
    // libomp says "core/socket" for one, "cores/socket" for more.
    let per_socket = if cores == 1 { "core" } else { "cores" };
    let want =
        format!("1 socket x {cores} {per_socket}/socket x 1 thread/core ({cores} total cores)");
    assert_eq!(topology.as_deref(), Some(want.as_str()), "{lines:#?}");
    println!("libomp in the guest ({which}): {want}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("omp-work: threads={cores} ")) && l.ends_with("check=ok")),
        "{lines:#?}"
    );
}

#[test]
fn libomp_sees_one_socket_of_two_cores_on_two_vcpus() {
    let out = run_scenario("pvrun=omp-topology", "2", 2);
    out.expect_exit(0);
    assert_libomp_run(&out, "boot", 2);
}

#[test]
fn libomp_sees_the_hot_added_cores() {
    // Boots with 1 vCPU of 4; a hint brings 4 online (polled in the guest
    // with a deadline), then libomp looks at the topology again.
    let out = run_scenario("pvrun=omp-topology pvgrow=4", "1,max=4", 4);
    out.expect_exit(0);
    assert_libomp_run(&out, "boot", 1);
    assert_libomp_run(&out, "grown", 4);
}

/// The hints perfvmm logged: (kind, fields).
fn hints(out: &RunOutput) -> Vec<(String, Value)> {
    out.json_lines(HINTS)
        .into_iter()
        .filter_map(|v| Some((v["kind"].as_str()?.to_string(), v["fields"].clone())))
        .collect()
}

/// (from, to) of every vCPU decision perfvmm applied.
fn vcpu_decisions(out: &RunOutput) -> Vec<(u64, u64)> {
    out.json_lines(DECISIONS)
        .iter()
        .filter(|v| v["resource"] == "vcpus" && v["applied"] == true)
        .filter_map(|v| Some((v["from"].as_u64()?, v["to"].as_u64()?)))
        .collect()
}

/// The number after `key=` on the last console line containing `marker`.
fn number_after(out: &RunOutput, marker: &str, key: &str) -> Option<u64> {
    let line = out.console.lines().rev().find(|l| l.contains(marker))?;
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The phases the tool opened and the team sizes it hinted, in order.
fn phases_and_parallelism(hints: &[(String, Value)]) -> (Vec<String>, Vec<u64>) {
    let phases = hints
        .iter()
        .filter(|(k, _)| k == "phase_begin")
        .filter_map(|(_, f)| f["name"].as_str().map(str::to_string))
        .collect();
    let tasks = hints
        .iter()
        .filter(|(k, _)| k == "parallelism")
        .filter_map(|(_, f)| f["runnable_tasks"].as_u64())
        .collect();
    (phases, tasks)
}

#[test]
fn ompt_tool_turns_parallel_regions_into_a_few_hints_and_vcpus() {
    let out = run_scenario("pvrun=omp-hints", "1,max=4", 4);
    out.expect_contains("scenario: omp-hints nproc=4 while running")
        .expect_contains("scenario: omp-hints rc=0")
        .expect_exit(0);
    let threads = number_after(&out, "omp-work: threads=", "threads").expect("omp-work's result");
    let regions = number_after(&out, "omp-work: threads=", "regions").expect("regions");
    assert!(
        out.console
            .lines()
            .any(|l| l.contains("omp-work: threads=") && l.ends_with("check=ok")),
        "{}",
        out.tail(30)
    );
    assert_eq!(threads, 4, "OMP_NUM_THREADS=4");
    // The trace: one begin line (with the team size) and one end line per region.
    out.expect_contains(&format!(
        "scenario: omp-trace begins={regions} ends={regions} threads=4,"
    ));
    // Thousands of regions, a handful of hints: the phase, the team size
    // (equal to the program's thread count), the phase's end.
    let hints = hints(&out);
    let kinds: Vec<&str> = hints.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["phase_begin", "parallelism", "phase_end"],
        "{regions} regions"
    );
    let (phases, tasks) = phases_and_parallelism(&hints);
    assert_eq!(phases, ["omp"]);
    assert_eq!(tasks, [threads]);
    assert_eq!(
        hints[2].1["id"], hints[0].1["id"],
        "the phase ended is the one begun"
    );
    println!(
        "omp-hints: {regions} parallel regions, {} hints",
        hints.len()
    );
    for v in out
        .json_lines(HINTS)
        .iter()
        .chain(&out.json_lines(DECISIONS))
    {
        println!("  {v}");
    }
    let d = vcpu_decisions(&out);
    assert_eq!(
        d.first(),
        Some(&(1, 4)),
        "the team's hint grows the VM: {d:?}"
    );
}

#[test]
fn auto_parallelised_loops_send_hints_without_source_change() {
    let out = run_scenario("pvrun=omp-autopar", "1,max=4", 4);
    out.expect_contains("scenario: omp-autopar nproc=4 while running")
        .expect_contains("scenario: omp-autopar rc=0")
        .expect_contains("scenario-omp-autopar: autopar: sweeps=")
        .expect_contains("scenario: omp-autopar-gcc rc=0")
        .expect_contains("scenario-omp-autopar-gcc: autopar: sweeps=20 ")
        .expect_exit(0);
    // Polly's program, then GCC's: one phase and one team-size hint each.
    let hints = hints(&out);
    let (phases, tasks) = phases_and_parallelism(&hints);
    assert_eq!(phases, ["omp", "omp"], "{hints:?}");
    assert_eq!(tasks, [4, 4], "{hints:?}");
    assert_eq!(
        hints.iter().filter(|(k, _)| k == "phase_end").count(),
        2,
        "{hints:?}"
    );
    let d = vcpu_decisions(&out);
    assert_eq!(d.first(), Some(&(1, 4)), "{d:?}");
}

#[test]
fn ompt_tool_without_a_device_leaves_the_program_alone() {
    let out = run_scenario("pvrun=omp-nodevice", "1,max=4", 2);
    out.expect_contains("scenario: driver unloaded: no perf-hint device")
        .expect_contains("scenario-omp-nodevice: Tool was started and is using the OMPT interface.")
        .expect_contains("scenario: omp-nodevice rc=0 nproc=1")
        .expect_exit(0);
    let regions = number_after(&out, "omp-work: threads=4 ", "regions").expect("omp-work's result");
    out.expect_contains(&format!(
        "scenario-omp-nodevice: omp-work: threads=4 regions={regions} check=ok"
    ))
    .expect_contains(&format!(
        "scenario: omp-trace begins={regions} ends={regions} threads=4,"
    ));
    assert!(hints(&out).is_empty(), "no device, no hint");
    assert!(vcpu_decisions(&out).is_empty());
}

// ---- on this host (no perf-hint device here) ----------------------------

/// The OMPT tool and omp-work, built for this host in the build directory;
/// None (the test is skipped) without clang-14 and libomp.
fn host_programs() -> Option<&'static (PathBuf, PathBuf)> {
    static BUILT: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let have = Command::new("clang-14").arg("--version").output();
            if !have.is_ok_and(|o| o.status.success())
                || !Path::new("/usr/lib/llvm-14/lib/libomp.so.5").exists()
            {
                return None;
            }
            let ws = perfvmm_tests::workspace();
            let dir = ws.build.join("openmp-host");
            std::fs::create_dir_all(&dir).expect("create build/openmp-host");
            // libperfhint.a as the tool's Makefile expects it, in this
            // test's own target directory.
            let exe = std::env::current_exe().expect("test binary path");
            let target = exe
                .ancestors()
                .nth(3)
                .expect("target directory")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&ws.root)
                .args(["build", "-q", "--release", "-p", "perfhint-capi", "--lib"])
                .arg("--target-dir")
                .arg(&target)
                .status()
                .expect("cargo");
            assert!(status.success(), "building perfhint-capi");
            let status = Command::new("make")
                .arg("-s")
                .arg("-C")
                .arg(ws.root.join("guest-hints/ompt"))
                .arg(format!("OUT={}", dir.display()))
                .arg(format!(
                    "PERFHINT_A={}",
                    target.join("release/libperfhint.a").display()
                ))
                .status()
                .expect("make");
            assert!(status.success(), "building the OMPT tool");
            let work = dir.join("omp-work");
            let status = Command::new("clang-14")
                .args(["-O2", "-Wall", "-Werror", "-fopenmp"])
                .arg(ws.root.join("images/openmp/omp-work.c"))
                .arg("-o")
                .arg(&work)
                .status()
                .expect("clang-14");
            assert!(status.success(), "building omp-work");
            Some((dir.join("libperfhint_ompt.so"), work))
        })
        .as_ref()
}

/// omp-work with the tool loaded, `env` added; stdout and each stderr line
/// with the time it arrived.
fn run_omp_work(args: &[&str], env: &[(&str, &Path)]) -> Option<(String, Vec<(Duration, String)>)> {
    let (tool, work) = host_programs()?;
    let mut cmd = Command::new(work);
    cmd.args(args)
        .env("OMP_TOOL_LIBRARIES", tool)
        .env("OMP_NUM_THREADS", "2")
        .env_remove("PERFHINT_TRACE")
        .env_remove("PERFHINT_OMPT_IDLE_MS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start omp-work");
    let stderr = child.stderr.take().expect("stderr");
    let lines: Vec<(Duration, String)> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .map(|l| (start.elapsed(), l))
        .collect();
    let out = child.wait_with_output().expect("omp-work");
    assert!(out.status.success(), "omp-work: {:?} {lines:?}", out.status);
    Some((String::from_utf8_lossy(&out.stdout).into_owned(), lines))
}

fn scratch(name: &str) -> PathBuf {
    let dir = perfvmm_tests::workspace()
        .build
        .join("runs")
        .join(format!("openmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// "omp-work: threads=T regions=R check=ok" → (T, R).
fn omp_work_result(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("omp-work: threads="))
        .unwrap_or_else(|| panic!("no result: {stdout}"));
    assert!(line.ends_with(" check=ok"), "{line}");
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line}"))
    };
    (field("threads"), field("regions"))
}

#[test]
fn host_tool_traces_every_region_and_coalesces_bursts_into_phases() {
    let _turn = perfvmm_tests::exclusive();
    let dir = scratch("trace");
    let trace = dir.join("trace.jsonl");
    // Two bursts of 0.4 s of regions, 1 s of serial sleep between them.
    let Some((stdout, stderr)) =
        run_omp_work(&["0.4", "2", "1.0"], &[("PERFHINT_TRACE", trace.as_path())])
    else {
        perfvmm_tests::skip("clang-14 and libomp-14-dev not installed (scripts/setup-host.sh)");
        return;
    };
    let (threads, regions) = omp_work_result(&stdout);
    assert_eq!(threads, 2);

    // Every region: a begin line with the team size, then an end line, in
    // CLOCK_MONOTONIC order.
    let text = std::fs::read_to_string(&trace).expect("trace file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let is_region = |v: &Value| {
        v["event"]
            .as_str()
            .is_some_and(|e| e.starts_with("parallel_"))
    };
    // The tool's region lines, and (through the perfhint library inside
    // it, which traces every hint it sends to the same file) its hints.
    let (region_lines, hint_lines): (Vec<&Value>, Vec<&Value>) =
        lines.iter().partition(|v| is_region(v));
    assert_eq!(region_lines.len() as u64, 2 * regions);
    let mut last = 0;
    for (i, v) in lines.iter().enumerate() {
        let t = v["t_ns"].as_u64().expect("t_ns");
        assert!(t >= last, "line {i} goes back in time: {v}");
        last = t;
    }
    for (i, v) in region_lines.iter().enumerate() {
        let o = v.as_object().expect("object");
        if i % 2 == 0 {
            assert_eq!(v["event"], "parallel_begin", "region line {i}");
            assert_eq!(v["threads"], 2, "region line {i}");
            assert_eq!(o.len(), 3, "{v}");
        } else {
            assert_eq!(v["event"], "parallel_end", "region line {i}");
            assert_eq!(o.len(), 2, "{v}");
        }
    }

    // What the tool sent: one phase per burst. The first ends about 200 ms
    // into the serial gap (the last region's end), by the timer, not when
    // the second burst begins 1 s later.
    let kinds: Vec<&str> = hint_lines
        .iter()
        .filter_map(|v| v["event"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "phase_begin",
            "parallelism",
            "phase_end",
            "phase_begin",
            "parallelism",
            "phase_end"
        ],
        "{regions} regions; stderr: {stderr:?}"
    );
    let t = |v: &Value| Duration::from_nanos(v["t_ns"].as_u64().unwrap_or(0));
    let first_end = t(hint_lines[2]);
    let gap = region_lines
        .iter()
        .map(|v| t(v))
        .filter(|&r| r <= first_end)
        .max()
        .expect("a region before the first phase ended");
    let reopened = t(hint_lines[3]) - gap;
    let closed = first_end - gap;
    assert!(
        closed >= Duration::from_millis(150) && closed < Duration::from_millis(800),
        "the idle phase ends ~200 ms after the last region: {closed:?}"
    );
    assert!(
        reopened >= Duration::from_millis(900),
        "the next phase begins with the next burst: {reopened:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_tool_survives_trace_files_it_cannot_write() {
    let _turn = perfvmm_tests::exclusive();
    let dir = scratch("badtrace");
    // Every write fails (ENOSPC); a FIFO nobody reads (open fails rather
    // than hang); a directory that does not exist.
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let missing = dir.join("no/such/dir/trace.jsonl");
    for path in [Path::new("/dev/full"), fifo.as_path(), missing.as_path()] {
        let Some((stdout, _)) = run_omp_work(&["0.2"], &[("PERFHINT_TRACE", path)]) else {
            perfvmm_tests::skip("clang-14 and libomp-14-dev not installed (scripts/setup-host.sh)");
            return;
        };
        let (threads, regions) = omp_work_result(&stdout);
        assert_eq!(threads, 2, "{}", path.display());
        assert!(regions > 1, "{}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

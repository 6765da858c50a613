//! Needs known before they arise: a program's profile-derived schedule
//! (`perfhint profile`, then `perfhint embed`) has its resources online
//! before each phase begins, in the nested guest.

use std::time::Duration;

use perfvmm_tests::{GuestRun, RunOutput};
use serde_json::Value;

fn run(scenario: &str) -> RunOutput {
    GuestRun::demo(
        &format!("pvrun={scenario} pvhintd=1"),
        &[
            "--cpus",
            "1,max=4",
            "--memory",
            "512M,max=1G",
            "--decision-log",
            "@FILES@/decisions.log",
        ],
    )
    .fetch("decisions.log")
    .timeout(Duration::from_secs(600))
    .l1_cpus(4)
    .run()
}

#[test]
fn the_embedded_schedule_has_the_vcpus_online_before_the_parallel_phase() {
    let out = run("derived-demo");
    out.expect_contains("demo-workload: done").expect_exit(0);
    assert_eq!(
        perfvmm_tests::parallel_start_cpus(&out.console),
        [4],
        "{}",
        out.tail(40)
    );
    let decisions = out.json_lines("decisions.log");
    let grow = decisions
        .iter()
        .find(|d| d["resource"] == "vcpus" && d["to"] == 4)
        .expect("a grow to 4 vCPUs");
    assert!(
        grow["reason"]
            .as_str()
            .is_some_and(|r| r.contains("scheduled phase 2")),
        "the schedule, not the phase's own hint, grew the VM: {grow}"
    );
    out.expect_contains("perfhintd: announced the manifest of /perfvmm/demo-workload-scheduled");
}

/// The JSON printed after `scenario: NAME `.
fn printed(out: &RunOutput, name: &str) -> Value {
    let prefix = format!("scenario: {name} ");
    let text = out
        .console
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, j)| j))
        .unwrap_or_else(|| panic!("no {name} line; console tail:\n{}", out.tail(40)));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
}

fn within(measured: f64, derived: f64, share: f64) -> bool {
    (measured - derived).abs() <= share * measured.abs().max(derived.abs())
}

#[test]
fn two_steps_in_the_guest_and_the_derived_needs_hold_on_a_later_run() {
    let out = run("derived-twostep");
    out.expect_exit(0);
    let derived = printed(&out, "derived");
    let later = printed(&out, "profile2");
    assert_eq!(
        perfvmm_tests::parallel_start_cpus(&out.console).last(),
        Some(&4),
        "{}",
        out.tail(40)
    );
    let schedule = derived["schedule"].as_array().expect("a schedule");
    let phases = later["phases"].as_array().expect("phases");
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let span = |v: &Value| (f(v, "start_ms"), f(v, "start_ms") + f(v, "duration_ms"));
    let mut compared = 0;
    // Phases that declare a need (the idle tail declares none).
    let needy = |w: &&Value| f(w, "duration_ms") >= 1000.0 && f(w, "max_useful") > 0.0;
    // The later run's phase of the same name as the first run's phase the
    // derived one comes from (the schedule keeps the profile's phase ids);
    // for a detected, unnamed phase, the one that overlaps it most (ids of
    // detected phases need not match between runs).
    let first = printed(&out, "profile1");
    let name_of = |id: f64| {
        first["phases"]
            .as_array()?
            .iter()
            .find(|p| f(p, "id") == id)?["name"]
            .as_str()
    };
    for want in schedule.iter().filter(needy) {
        let (a, b) = span(want);
        let overlap = |p: &&Value| {
            let (c, d) = span(p);
            (b.min(d) - a.max(c)).max(0.0)
        };
        let got = match name_of(f(want, "id")) {
            Some(name) => phases.iter().find(|p| p["name"].as_str() == Some(name)),
            None => phases
                .iter()
                .max_by(|x, y| overlap(x).total_cmp(&overlap(y))),
        };
        let Some(got) = got else {
            continue;
        };
        compared += 1;
        // Parallelism as the policy uses it: the most threads running at once.
        assert!(
            within(f(got, "max_useful"), f(want, "max_useful"), 0.2),
            "parallelism: {want} against {got}"
        );
        let ws = f(want, "working_set_bytes");
        if ws > (16 << 20) as f64 || f(got, "working_set_bytes") > (16 << 20) as f64 {
            assert!(
                within(f(got, "working_set_bytes"), ws, 0.2),
                "working set: {want} against {got}"
            );
        }
    }
    assert!(
        compared >= 3,
        "serial, parallel and memory compared: {derived}"
    );
}

/// coreutils' sort, a multi-threaded program from a Debian package with no
/// perfhint code: profiled (step 1), its manifest embedded (step 2), then
/// started under perfhintd. Its parallel phase finds the vCPUs online.
#[test]
fn an_unmodified_debian_program_gets_its_vcpus_before_its_parallel_phase() {
    let out = run("derived-sort");
    out.expect_contains("perfhintd: announced the manifest of /tmp/sort-derived")
        .expect_contains("scenario: sort exit=0 sorted=520000")
        .expect_exit(0);
    let profile = printed(&out, "profile");
    let parallel = profile["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["max_useful"].as_u64() >= Some(4)));
    assert!(
        parallel.is_some(),
        "the profile found the parallel phase: {profile}"
    );
    let cpus: Option<u32> = out.console.lines().find_map(|l| {
        l.split_once("sort parallel phase starts with ")?
            .1
            .split(' ')
            .next()?
            .parse()
            .ok()
    });
    let story: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.contains("scenario") || l.contains("perfhintd") || l.contains("perfvmm:"))
        .collect();
    let decisions: Vec<String> = out
        .json_lines("decisions.log")
        .iter()
        .map(|v| v.to_string())
        .collect();
    let report = format!("{}\ndecisions:\n{}", story.join("\n"), decisions.join("\n"));
    // Shown with --nocapture, and in the failure message.
    eprintln!("{report}");
    assert_eq!(cpus, Some(4), "{report}");
}

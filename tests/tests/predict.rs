//! `perfvmm predict` against real runs (issue 13): the validation workload
//! profiled in a nested guest on 1 and 2 CPUs and with its `kernel`
//! function cut by 10 %; the predictions made from the profiles without
//! the change must come within 40 % of the runs with it. Three rounds
//! each, compared by their medians: in this harness the same work takes
//! ±30 % from run to run, and one slow run (a 2-CPU run that got no
//! speed-up, 68 % off, in one CI run) must not fail the test. It guards
//! against a broken model, not for the accuracy target: that is
//! `predict-validate`'s table (more rounds, held-out programs) in
//! docs/predict.md.

use perfvmm_tests::predict::{checks, in_rounds, profiles, run_guest};

#[test]
fn predictions_match_real_runs() {
    let runs = in_rounds(&["base-1", "base-2", "kernel-2"], 3);
    let out = run_guest(&runs, 20);
    out.expect_contains("scenario: predict done").expect_exit(0);
    let p = profiles(&out.console).expect("the profiles parse");
    assert_eq!(p.len(), 3, "three programs profiled: {:?}", p.keys());
    assert!(p.values().all(|runs| runs.len() == 3), "three rounds each");
    let base = &p["base-2"][0];
    assert_eq!(base.cpus, 2, "taskset -c 0-1 gives 2 CPUs");
    let solve = base
        .phases
        .iter()
        .find(|ph| ph.name.as_deref() == Some("solve"))
        .expect("the solve phase, named by the program's hints");
    let kernel = solve
        .functions
        .iter()
        .find(|f| f.name.starts_with("kernel"))
        .expect("the kernel function sampled in solve");
    assert!(
        kernel.share > 0.5,
        "kernel is most of solve: {:?}",
        solve.functions
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .ok();
    let c = checks(&p, cores).expect("predictions");
    assert!(c.len() >= 2, "{c:?}");
    for check in &c {
        assert!(
            check.error() <= 0.40,
            "{}: predicted {:.0} ms, measured {:.0} ms",
            check.what,
            check.predicted_ms,
            check.measured_ms
        );
    }
}

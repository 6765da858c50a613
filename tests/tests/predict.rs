//! `perfvmm predict` against real runs (issue 13): the validation workload
//! profiled in a nested guest on 1 and 2 CPUs and with its `kernel`
//! function cut by 10 %; the predictions made from the profiles without
//! the change must come within 40 % of the runs with it; its need for
//! memory, checked in memory cgroups just above and below it, must be
//! right; and Coz must run in the guest (its figures are
//! `predict-validate`'s). Three rounds
//! each, compared by their medians: in this harness the same work takes
//! ±30 % from run to run, and one slow run (a 2-CPU run that got no
//! speed-up, 68 % off, in one CI run) must not fail the test. It guards
//! against a broken model, not for the accuracy target: that is
//! `predict-validate`'s table (more rounds, held-out programs) in
//! docs/predict.md. (A CI run of 2026-12-05 failed it with "kernel −10 %"
//! predicted at 3.4 s against 2.4 s: two of its three `base-2` runs began
//! with the pause that the profiler's readying of the kernel has since
//! removed; docs/predict.md, run T.)

use perfvmm_tests::predict::{in_rounds, run_guest, runs, validate, Profiling};

/// predict-work's size: about 3 s a run on 2 vCPUs on a quick day of
/// the nested harness, 10 s on a slow one. (At 20 units, 0.7 s on a quick
/// day: one stalled run was then twice another, and the check failed; at
/// 40, 1.3 s, and a CI run of 2026-12-05 had "kernel −10 %" predicted at
/// 1.8 s against 1.3 s measured.)
const UNITS: u32 = 80;

#[test]
fn predictions_match_real_runs() {
    let names = in_rounds(
        &[
            "base-1", "base-2", "kernel-2", "mem-2", "memfit-2", "memlow-2", "coz0-2", "cozk-2",
        ],
        3,
    );
    let out = run_guest(&names, UNITS, 4, Profiling::default());
    out.expect_contains("scenario: predict done").expect_exit(0);
    let r = runs(&out.console).expect("the profiles parse");
    let p = &r.profiles;
    for n in ["base-1", "base-2", "kernel-2", "mem-2", "memfit-2"] {
        let rounds = p.get(n).map_or(0, Vec::len);
        assert_eq!(rounds, 3, "{n}: three rounds profiled: {:?}", p.keys());
    }
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
    let v = validate(&r, cores).expect("predictions");
    let c = &v.checks;
    assert!(c.len() >= 4, "{c:?}");
    assert!(
        c.iter().any(|c| c.kind == "memory") && c.iter().any(|c| c.kind == "memory size"),
        "memory checked: {c:?}"
    );
    for check in c {
        assert!(
            check.error() <= 0.40,
            "{}: predicted {}, measured {}",
            check.what,
            check.show(check.predicted),
            check.show(check.measured)
        );
    }
    assert_eq!(v.fits.len(), 2, "memfit and memlow: {:?}", v.fits);
    for f in &v.fits {
        assert!(f.right(), "{f:?}");
    }
    assert_eq!(
        r.coz.get("coz0-2").map(Vec::len),
        Some(3),
        "Coz ran: {:?}",
        r.coz
    );
    assert_eq!(
        r.coz.get("cozk-2").map(Vec::len),
        Some(3),
        "Coz ran: {:?}",
        r.coz
    );
    assert_eq!(v.coz.len(), 1, "Coz beside the model: {:?}", v.coz);
}

//! `perfvmm predict`'s inputs from a hostile file: the bytes are split at
//! NUL bytes into a profile (JSON), a hosts table (TOML) and what-if
//! arguments. Parsing never panics, and whatever parses gives a prediction
//! whose times, costs and memory are finite and not negative.
#![no_main]

use guest_hints::profile::Profile;
use libfuzzer_sys::fuzz_target;
use perfvmm_predict::{predict, Change, HostTable, Request};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0).map(String::from_utf8_lossy);
    let profile = parts.next().unwrap_or_default();
    let hosts = parts.next().unwrap_or_default();
    let changes: Vec<Change> = parts.filter_map(|w| Change::parse(&w).ok()).collect();
    let table = HostTable::parse(&hosts, "fuzz").ok();
    let Ok(p) = Profile::from_json(&profile) else {
        return;
    };
    let req = Request {
        vcpus: vec![1, 2, 3, 64],
        changes,
        hosts: table,
        deadline_ms: Some(60_000.0),
        runs_per_day: 24.0,
        memory_margin: 0.1,
        host_cores: Some(2),
        host_scaling: vec![(2, 1.5), (64, 3.0)],
    };
    // Calibration from the profile as if taken on 1 and on 2 vCPUs: what
    // 2 vCPUs are worth stays within 1 to 2 CPUs.
    let (mut one, mut two) = (p.clone(), p.clone());
    one.cpus = 1;
    two.cpus = 2;
    if let Ok(c) = perfvmm_predict::calibrate(&[one, two]) {
        assert!(
            c.iter().all(|&(n, e)| n == 2 && (1.0..=2.0).contains(&e)),
            "{c:?}"
        );
    }
    let Ok(r) = predict(&[p.clone(), p], &req) else {
        return;
    };
    for s in &r.scaling {
        let ok = |t: f64| t.is_finite() && t >= 0.0;
        assert!(ok(s.time_ms), "{s:?}");
        assert!(s.time_after_ms.is_none_or(ok), "{s:?}");
        assert!(s.phases_ms.iter().all(|t| ok(*t)), "{s:?}");
    }
    if let Some(h) = &r.hosts {
        for f in &h.fits {
            assert!(f.time_ms.is_finite() && f.time_ms >= 0.0, "{f:?}");
            assert!(
                f.cost_per_run.is_none_or(|c| c.is_finite() && c >= 0.0),
                "{f:?}"
            );
        }
    }
    let _ = perfvmm_predict::report::text(&r);
});

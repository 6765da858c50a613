//! The build-time path for Rust programs: `guest_hints::build` turns a
//! profile into a `manifest!` invocation that a program includes. The
//! generated file for `fixtures/solver.profile.json` is kept as
//! `fixtures/solver_manifest.rs`; this test checks that the generator still
//! writes it, and, by including it, that it compiles and embeds the
//! manifest derived from the profile.

use std::path::PathBuf;

use guest_hints::profile::{derive_manifest, Profile};

// What a program does with the file its build script wrote.
include!("fixtures/solver_manifest.rs");

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> guest_hints::wire::Manifest {
    let p = Profile::load(&fixtures().join("solver.profile.json")).unwrap();
    derive_manifest(&p, "solver")
}

#[test]
fn the_generated_file_is_what_the_generator_writes() {
    let dir = std::env::temp_dir().join(format!("perfhint-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let written = guest_hints::build::write_manifest_to(
        &fixtures().join("solver.profile.json"),
        "solver",
        &dir,
    )
    .unwrap();
    assert_eq!(written, dir.join(guest_hints::build::FILE_NAME));
    let generated = std::fs::read_to_string(&written).unwrap();
    let kept = std::fs::read_to_string(fixtures().join("solver_manifest.rs")).unwrap();
    // The first line names the profile's path as given.
    let body = |s: &str| s.split_once('\n').map(|x| x.1.to_string()).unwrap();
    assert_eq!(
        body(&generated),
        body(&kept),
        "regenerate fixtures/solver_manifest.rs"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_included_manifest_is_in_this_binary() {
    let exe = std::fs::read("/proc/self/exe").unwrap();
    let m = guest_hints::note::find_in_elf(&exe).unwrap().unwrap();
    assert_eq!(m, expected());
    let schedule: Vec<_> = m.schedule.iter().flatten().collect();
    assert_eq!(schedule.len(), 3);
    assert_eq!(schedule[1].start_ms, 800);
    assert_eq!(schedule[1].parallelism_p50_milli, 7600);
    assert_eq!(schedule[1].max_useful, 8);
    assert_eq!(m.phases[1].unwrap().name.as_str(), "solve");
}

#[test]
fn a_bad_profile_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("perfhint-build-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"format\": \"perfhint-profile\", \"version\": 9}").unwrap();
    let e = guest_hints::build::write_manifest_to(&bad, "x", &dir).unwrap_err();
    assert!(e.to_string().contains("version 9 is newer"), "{e}");
    assert!(!dir.join(guest_hints::build::FILE_NAME).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

//! End-to-end boot tests: a stock Debian cloud kernel under perfvmm, on
//! hardware KVM or in the nested harness.

use perfvmm_tests::GuestRun;

const MARKER: &str = "perfvmm-guest: init reached";

#[test]
fn boots_one_vcpu_to_init_and_powers_off() {
    let out = GuestRun::demo("pvrun=poweroff", &["--cpus", "1", "--memory", "512M"]).run();
    out.expect_contains(MARKER).expect_exit(0);
    assert_eq!(
        out.guest_value("nproc").as_deref(),
        Some("1"),
        "{}",
        out.tail(20)
    );
}

#[test]
fn boots_four_vcpus_and_the_guest_sees_them() {
    let out = GuestRun::demo("pvrun=poweroff", &["--cpus", "4,max=8", "--memory", "512M"]).run();
    out.expect_contains(MARKER).expect_exit(0);
    assert_eq!(
        out.guest_value("nproc").as_deref(),
        Some("4"),
        "{}",
        out.tail(20)
    );
}

#[test]
fn memtotal_matches_memory_flag() {
    let out = GuestRun::demo("pvrun=poweroff", &["--memory", "1G"]).run();
    out.expect_contains(MARKER).expect_exit(0);
    let kib: u64 = out
        .guest_value("memtotal_kib")
        .and_then(|v| v.parse().ok())
        .expect("memtotal in console");
    let asked = 1u64 << 20; // KiB
                            // MemTotal is RAM less what the kernel reserves for itself (its image,
                            // early allocations): a few percent of 1 GiB, never more than asked.
    assert!(kib <= asked, "MemTotal {kib} KiB above the 1 GiB asked");
    assert!(
        kib >= asked * 92 / 100,
        "MemTotal {kib} KiB is far below 1 GiB"
    );
}

#[test]
fn guest_reboot_exits_zero() {
    let out = GuestRun::demo("pvrun=reboot", &[]).run();
    out.expect_contains("perfvmm-guest: rebooting")
        .expect_exit(0);
}

/// `reboot=k`: the guest resets through the i8042's reset line, which
/// perfvmm answers (without it the guest's wait timed out and the VM took
/// about a minute to end).
/// The demo kernel's payload is LZ4: perfvmm unpacks it itself, unless
/// `--guest-decompress` leaves that to the guest's decompressor.
#[test]
fn an_lz4_bzimage_is_unpacked_by_perfvmm_or_by_the_guest_when_asked() {
    let ours = GuestRun::demo("pvrun=poweroff", &["-v"]).run();
    ours.expect_contains("kernel: LZ4 payload unpacked by perfvmm")
        .expect_contains(MARKER)
        .expect_exit(0);
    let guest = GuestRun::demo("pvrun=poweroff", &["-v", "--guest-decompress"]).run();
    guest.expect_contains(MARKER).expect_exit(0);
    assert!(
        !guest.console.contains("unpacked by perfvmm"),
        "{}",
        guest.tail(20)
    );
}

#[test]
fn guest_reboot_through_the_keyboard_controller_exits_zero() {
    let out = GuestRun::demo("reboot=k pvrun=reboot", &["-v"]).run();
    out.expect_contains("perfvmm-guest: rebooting")
        .expect_contains("i8042: the guest pulsed the CPU reset line")
        .expect_exit(0);
}

#[test]
fn bad_kernel_file_gives_a_clear_error() {
    let out = GuestRun::raw(vec!["--kernel".into(), "@FILES@/bogus".into()])
        .file("bogus", b"this is not a kernel".repeat(100))
        .run();
    out.expect_contains("is not a Linux kernel").expect_exit(1);
    assert!(!out.console.contains("panicked"), "{}", out.tail(10));
}

#[test]
fn host_without_kvm_gives_a_clear_error() {
    if perfvmm_tests::mode() == perfvmm_tests::Mode::Direct {
        // A host with hardware KVM cannot be made to lack it; the nested
        // harness's L1 can (it simply does not load the modules).
        perfvmm_tests::skip("needs the nested harness (an L1 without the KVM modules)");
        return;
    }
    let out = GuestRun::demo("pvrun=poweroff", &[]).without_kvm().run();
    out.expect_contains("/dev/kvm does not exist")
        .expect_exit(1);
}

#[test]
fn triple_fault_is_a_crash_with_a_reason() {
    // reboot=t makes the guest reboot by triple-faulting.
    let out = GuestRun::demo("reboot=t pvrun=reboot", &[])
        .expect_crash()
        .run();
    out.expect_contains("triple fault").expect_exit(3);
}

#[test]
fn sigterm_stops_cleanly() {
    // SIGTERM once the guest has loaded its drivers and gone idle (its
    // last line before idling), with a deadline; not after a fixed delay
    // that a slow host may not boot within.
    let out = GuestRun::demo("pvrun=idle", &["--hint-log", "@FILES@/h.log"])
        .sigterm_once_console_shows("perfvmm-guest: nproc=", 180)
        .fetch("h.log")
        .run();
    out.expect_contains(MARKER)
        .expect_contains("stopped by signal 15")
        .expect_exit(143);
    // Nothing lost: the hint log was flushed and closed with its counters.
    let log = out.files.get("h.log").expect("hint log");
    assert!(
        log.lines()
            .last()
            .is_some_and(|l| l.contains("\"counters\"")),
        "{log}"
    );
}

/// The CPU template (vmm/src/arch/cpu_template.rs) is what the guest sees:
/// a fixed brand, family, model and stepping, the template's caches, no PMU
/// and no steal time (read with images/cpuid); not the host's.
#[test]
fn the_guest_sees_the_cpu_template_not_the_host() {
    let out = GuestRun::demo("pvrun=cpuinfo", &["--cpus", "2"]).run();
    out.expect_contains("scenario: perfctr_core=")
        .expect_exit(0);
    let lines: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.contains("scenario-cpuinfo: ") || l.contains("scenario-cache: "))
        .collect();
    let has = |s: &str| lines.iter().any(|l| l.ends_with(s));
    assert!(has("model name=perfvmm virtual CPU"), "{lines:#?}");
    if has("vendor_id=AuthenticAMD") {
        assert!(
            has("cpu family=23") && has("model=1") && has("stepping=2"),
            "{lines:#?}"
        );
    } else {
        assert!(
            has("cpu family=6") && has("model=85") && has("stepping=4"),
            "{lines:#?}"
        );
    }
    for cache in [
        "level=1 type=Data size=32K",
        "level=1 type=Instruction size=32K",
        "level=2 type=Unified size=1024K",
        "level=3 type=Unified size=16384K",
    ] {
        assert!(has(cache), "{cache} missing: {lines:#?}");
    }
    assert_eq!(out.guest_value("perfctr_core").as_deref(), Some("0"));
    let leaf = |leaf: &str, reg: &str| -> u32 {
        let line = out
            .console
            .lines()
            .find(|l| l.contains(&format!("scenario-cpuid leaf={leaf} ")))
            .unwrap_or_else(|| panic!("no CPUID leaf {leaf}: {}", out.tail(20)));
        let v = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{reg}=0x")))
            .unwrap_or_else(|| panic!("{line}"));
        u32::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    assert_ne!(leaf("0x40000001", "eax"), 0, "KVM's features are offered");
    assert_eq!(leaf("0x40000001", "eax") & (1 << 5), 0, "no steal time");
    assert_eq!(leaf("0xa", "eax"), 0, "no architectural PMU");
    assert_eq!(
        leaf("0x80000001", "ecx") & (1 << 23),
        0,
        "no AMD core counters"
    );
}

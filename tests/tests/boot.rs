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

//! Runs perfvmm with the given arguments through the test harness: directly
//! on hardware KVM, or nested in a QEMU TCG L1 host elsewhere. `@KERNEL@`
//! and `@INITRD@` stand for the demo guest. The console is streamed live.
//!
//!   cargo run -p perfvmm-tests --bin perfvmm-run -- --kernel @KERNEL@ --initrd @INITRD@ --cpus 2

use std::time::Duration;

use perfvmm_tests::GuestRun;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: perfvmm-run PERFVMM-ARGS...   (@KERNEL@/@INITRD@ = the demo guest)");
        std::process::exit(2);
    }
    let timeout = std::env::var("PERFVMM_RUN_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(600));
    eprintln!("perfvmm-run: mode {:?}", perfvmm_tests::mode());
    let mut run = GuestRun::raw(args).timeout(timeout).streaming();
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // Keystrokes reach the guest's console (through L1 when nested).
        run = run.interactive();
    }
    let out = run.run();
    if out.timed_out {
        eprintln!("perfvmm-run: timed out after {:?}", timeout);
        std::process::exit(124);
    }
    std::process::exit(out.exit_code.unwrap_or(125));
}

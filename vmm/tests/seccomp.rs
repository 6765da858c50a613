//! The seccomp filters of each thread kind, installed for real in a child
//! process (this test binary run again): what the thread's work needs
//! still works, and a forbidden call ends the process with status 159 and
//! a line naming the thread and the call.

use std::process::Command;

use perfvmm::seccomp::{install, ThreadKind, EXIT_BAD_SYSCALL};

const CHILD: &str = "PERFVMM_SECCOMP_CHILD";

/// Runs `child_confines_a_thread_then_misbehaves` in a new process.
fn child(kind: &str, misdeed: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_confines_a_thread_then_misbehaves",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, format!("{kind} {misdeed}"))
        .output()
        .expect("run the child");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_forbidden_call_on_each_thread_kind_stops_perfvmm_with_a_clear_message() {
    for kind in ["main", "vcpu", "api"] {
        let (code, err) = child(kind, "socket");
        assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{kind}: {err}");
        assert!(
            err.contains("confined; allowed calls work"),
            "{kind}: {err}"
        );
        let want = format!(
            "perfvmm: seccomp: the {kind} thread made system call {}, which its filter forbids",
            libc::SYS_socket
        );
        assert!(err.contains(&want), "{kind}: {err}");
    }
}

#[test]
fn files_open_only_for_reading() {
    let (code, err) = child("vcpu", "open-for-writing");
    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{err}");
    assert!(
        err.contains(&format!("made system call {}", libc::SYS_openat)),
        "{err}"
    );
}

#[test]
fn without_a_misdeed_the_child_ends_normally() {
    let (code, err) = child("api", "nothing");
    assert_eq!(code, Some(0), "{err}");
}

/// The child's side; run only by the tests above (ignored otherwise).
#[test]
#[ignore = "helper run in a child process by the other tests"]
fn child_confines_a_thread_then_misbehaves() {
    let spec = std::env::var(CHILD).expect("run by the other tests");
    let (kind, misdeed) = spec.split_once(' ').expect("KIND MISDEED");
    let kind = match kind {
        "main" => ThreadKind::Main,
        "vcpu" => ThreadKind::Vcpu,
        _ => ThreadKind::Api,
    };
    let misdeed = misdeed.to_string();
    let t = std::thread::spawn(move || {
        install(kind).expect("install the filter");
        // What every thread does: read a file, write a line, take a lock.
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("read-only open");
        assert!(status.contains("Seccomp:\t2"), "filter mode 2 in force");
        let m = std::sync::Mutex::new(0);
        *m.lock().unwrap() += 1;
        eprintln!("confined; allowed calls work");
        match misdeed.as_str() {
            // SAFETY: socket(2) with constant arguments; the filter stops it.
            "socket" => unsafe {
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            },
            "open-for-writing" => {
                let _ = std::fs::File::create("/tmp/perfvmm-seccomp-test");
            }
            _ => {}
        }
    });
    t.join().expect("child thread");
}

//! seccomp filters, one per kind of thread, as Firecracker has them.
//!
//! Each thread installs its own filter (`seccomp(2)` without TSYNC) once it
//! has done what only set-up needs:
//!
//! * **vCPU** threads, before their first `KVM_RUN`;
//! * the **API** thread, before it accepts (its connection threads inherit
//!   the filter);
//! * the **main** thread, before its event loop. It starts the vCPU
//!   threads of hot-added vCPUs, which inherit its filter and then add
//!   their own, so it allows what a new vCPU thread does before that.
//!
//! A system call outside a thread's list raises `SIGSYS`; the handler
//! prints which thread made which call and ends perfvmm with status
//! [`EXIT_BAD_SYSCALL`] (`--no-seccomp` turns the filters off, for
//! debugging). The lists allow file opens only read-only, `ioctl` only on
//! KVM's (type 0xAE) and a few terminal requests, and no socket creation,
//! `execve`, `ptrace`, `mount` or the like on any thread.

use std::cell::Cell;
use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// perfvmm's exit status when a filter stopped a system call (as a shell
/// shows a death by `SIGSYS`: 128 + 31).
pub const EXIT_BAD_SYSCALL: i32 = 159;

/// The kinds of thread, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
    Api,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} thread's seccomp filter: {1}")]
    Build(&'static str, seccompiler::BackendError),
    #[error("cannot install the {0} thread's seccomp filter: {1}")]
    Install(&'static str, seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

thread_local! {
    /// The calling thread's kind, for the SIGSYS handler's message.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Calls every thread makes: memory, futexes, signals, time, reading and
/// writing descriptors it holds, and ending.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_fcntl,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mincore,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// What the main thread adds: its event loop, KVM's and the terminal's
/// ioctls (vCPUs created on hot-add, irqfds, ioeventfds), starting vCPU
/// threads (and what a new thread does before its own filter), removing
/// the API socket at the end.
const MAIN: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_signalfd,
    libc::SYS_signalfd4,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_settime,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_sched_setaffinity,
    libc::SYS_mbind,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_kill,
];

/// What the main thread adds when it writes snapshots (`--snapshot-dir`):
/// creating the snapshot's directory and files (opens that create or
/// write are then allowed), writing them at offsets, sizing, renaming the
/// state into place and removing a snapshot that failed half-way.
const SNAPSHOT_WRITER: &[i64] = &[
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_pwrite64,
    libc::SYS_ftruncate,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_rmdir,
    libc::SYS_getdents64,
];

/// What the main thread adds when it may migrate the VM
/// (`--allow-migrate`): its migration thread, which inherits the filter,
/// connects to the target (a Unix socket or a numeric TCP address: no name
/// is resolved) and talks to it.
const MIGRATION_SENDER: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
];

/// What a thread's filter allows beyond its kind's list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    /// The main thread writes snapshots.
    pub snapshots: bool,
    /// The main thread (its migration thread) sends the VM away.
    pub migration: bool,
}

/// What a vCPU thread adds to [`COMMON`]: KVM's ioctls (through
/// [`ioctl_rule`]) and nothing else.
const VCPU: &[i64] = &[];

/// What the API thread adds: accepting, checking peers, starting a thread
/// per connection, timeouts, and (a manual resize runs on it) starting a
/// hot-added vCPU's thread.
const API: &[i64] = &[
    libc::SYS_sched_setaffinity,
    libc::SYS_seccomp,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_readlink,
    libc::SYS_getcwd,
];

/// The file-status bits an open may not carry: anything that writes or
/// creates.
const OPEN_WRITE_FLAGS: u64 =
    (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

/// `ioctl` with a request of KVM's type (0xAE), or a terminal query (the
/// logger asks whether standard error is a terminal); the main thread may
/// also set the terminal's mode (raw while the VM runs, restored after).
fn ioctl_rule(set_terminal: bool) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let mut rules = vec![SeccompRule::new(vec![cond(
        1,
        SeccompCmpOp::MaskedEq(0xff00),
        0xae00,
    )?])?];
    let mut requests = vec![libc::TCGETS, libc::TIOCGWINSZ];
    if set_terminal {
        requests.extend([libc::TCSETS, libc::TCSETSW, libc::FIONBIO]);
    }
    for req in requests {
        rules.push(SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, req)?])?);
    }
    Ok(rules)
}

/// `openat` (and `open`) only to read.
fn read_only_open() -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    Ok(vec![SeccompRule::new(vec![cond(
        2,
        SeccompCmpOp::MaskedEq(OPEN_WRITE_FLAGS),
        0,
    )?])?])
}

fn rules(
    kind: ThreadKind,
    allow: Allow,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let extra = match kind {
        ThreadKind::Main => MAIN,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Api => API,
    };
    let writes_snapshots = kind == ThreadKind::Main && allow.snapshots;
    let snapshot_calls = if writes_snapshots {
        SNAPSHOT_WRITER
    } else {
        &[]
    };
    let migration_calls = if kind == ThreadKind::Main && allow.migration {
        MIGRATION_SENDER
    } else {
        &[]
    };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .chain(snapshot_calls)
        .chain(migration_calls)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    map.insert(libc::SYS_ioctl, ioctl_rule(kind == ThreadKind::Main)?);
    // An empty rule list allows every open.
    let open_rules = if writes_snapshots {
        Vec::new()
    } else {
        read_only_open()?
    };
    map.insert(libc::SYS_openat, open_rules);
    if writes_snapshots {
        map.insert(libc::SYS_open, Vec::new());
    } else if kind == ThreadKind::Main {
        // A new vCPU thread names itself through prctl, then reads its
        // schedstat file: both above. `open` itself has the flags in arg 1.
        map.insert(
            libc::SYS_open,
            vec![SeccompRule::new(vec![cond(
                1,
                SeccompCmpOp::MaskedEq(OPEN_WRITE_FLAGS),
                0,
            )?])?],
        );
    }
    Ok(map)
}

/// The compiled filter of a thread kind.
pub fn filter(kind: ThreadKind, allow: Allow) -> Result<BpfProgram, SeccompError> {
    let build = |e| SeccompError::Build(kind.name(), e);
    let f = SeccompFilter::new(
        rules(kind, allow).map_err(build)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(f).map_err(build)
}

/// Installs the calling thread's filter.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    install_with(kind, Allow::default())
}

/// Installs the calling thread's filter with `allow`'s additions.
pub fn install_with(kind: ThreadKind, allow: Allow) -> Result<(), SeccompError> {
    install_handler()?;
    let prog = filter(kind, allow)?;
    KIND.with(|k| k.set(Some(kind)));
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind.name(), e))
}

/// Installs the `SIGSYS` handler (once per process is enough; again is
/// harmless).
fn install_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an
    // `extern "C" fn(c_int, *mut siginfo_t, *mut c_void)` as SA_SIGINFO
    // requires, and sigaction(2) only reads the struct.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes `n` in decimal into `buf`; returns the digits.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            return &buf[i..];
        }
    }
}

/// The `SIGSYS` handler: says which thread made which call, and ends the
/// process. Async-signal-safe: no allocation, no locks, only write(2) and
/// _exit(2).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // On x86-64 the SIGSYS fields of siginfo_t are `void *si_call_addr` at
    // byte 16 and `int si_syscall` at byte 24.
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // byte 24 is inside it (it is 128 bytes long).
    let nr = unsafe { std::ptr::read_unaligned((info as *const u8).add(24) as *const i32) };
    let kind = KIND.with(|k| k.get()).map_or("unknown", ThreadKind::name);
    let mut digits = [0u8; 10];
    let parts: [&[u8]; 5] = [
        b"perfvmm: seccomp: the ",
        kind.as_bytes(),
        b" thread made system call ",
        decimal(nr.max(0) as u32, &mut digits),
        b", which its filter forbids; stopping (--no-seccomp turns the filters off)\n",
    ];
    for p in parts {
        // SAFETY: writing a valid buffer to standard error.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: _exit(2) ends the process at once, as a signal handler may.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Api] {
            for (snapshots, migration) in [(false, false), (true, false), (true, true)] {
                let prog = filter(
                    kind,
                    Allow {
                        snapshots,
                        migration,
                    },
                )
                .unwrap();
                assert!(!prog.is_empty(), "{kind:?}");
            }
        }
    }

    #[test]
    fn only_a_main_thread_that_writes_snapshots_may_create_files() {
        let on = Allow {
            snapshots: true,
            ..Allow::default()
        };
        let writer = rules(ThreadKind::Main, on).unwrap();
        assert!(writer[&libc::SYS_openat].is_empty(), "any open");
        assert!(writer.contains_key(&libc::SYS_mkdirat));
        for (kind, allow) in [
            (ThreadKind::Main, Allow::default()),
            (ThreadKind::Vcpu, on),
            (ThreadKind::Api, on),
        ] {
            let r = rules(kind, allow).unwrap();
            assert!(
                !r[&libc::SYS_openat].is_empty(),
                "{kind:?}: read-only opens"
            );
            assert!(!r.contains_key(&libc::SYS_mkdirat), "{kind:?}");
            assert!(!r.contains_key(&libc::SYS_pwrite64), "{kind:?}");
        }
    }

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 10];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(41, &mut b), b"41");
        assert_eq!(decimal(u32::MAX, &mut b), b"4294967295");
    }

    #[test]
    fn no_kind_allows_sockets_exec_or_ptrace() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Api] {
            let r = rules(
                kind,
                Allow {
                    snapshots: true,
                    ..Allow::default()
                },
            )
            .unwrap();
            for nr in [
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_mount,
            ] {
                assert!(!r.contains_key(&nr), "{kind:?} allows {nr}");
            }
        }
    }
    #[test]
    fn only_a_main_thread_that_migrates_may_connect() {
        let migrating = Allow {
            migration: true,
            ..Allow::default()
        };
        let main = rules(ThreadKind::Main, migrating).unwrap();
        assert!(main.contains_key(&libc::SYS_connect));
        assert!(!main.contains_key(&libc::SYS_execve));
        for kind in [ThreadKind::Vcpu, ThreadKind::Api] {
            let r = rules(kind, migrating).unwrap();
            assert!(!r.contains_key(&libc::SYS_connect), "{kind:?}");
        }
    }
}

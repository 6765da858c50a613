//! The control API's socket and connections. The socket is created mode
//! 0600 (0660 with `--api-sock-group`), and a peer must run as perfvmm's
//! user or as root (with a group: any member, as the file mode allows).
//! Each connection is served on a thread of its own, at most
//! [`MAX_CONNECTIONS`] at once, and must deliver its whole request within
//! [`REQUEST_DEADLINE`]: a client dribbling bytes loses its connection, and
//! never holds the API, let alone the VM.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::{route, ApiState};
use super::http::{read_request, Response};
use crate::seccomp::ThreadKind;

/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 8;
/// The whole request must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Writing the response must not take longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may use the socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A group whose members may connect too (socket mode 0660).
    pub group: Option<u32>,
}

/// Binds the socket with the access's mode. A stale socket file (nobody
/// listening) is replaced; a live one, or any other kind of file, is an error.
pub fn bind(path: &Path, access: Access) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(_) => {}
    }
    // Created with no access for others from the start (perfvmm binds
    // before it starts any thread, so the umask change races with nothing).
    let old = sys::umask(0o177);
    let listener = UnixListener::bind(path);
    sys::umask(old);
    let listener = listener?;
    if let Some(gid) = access.group {
        sys::chown_group(path, gid)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    Ok(listener)
}

/// Whether the peer on `stream` may use the API.
fn peer_allowed(stream: &UnixStream, access: Access) -> io::Result<bool> {
    let (uid, _gid) = sys::peer_ids(stream.as_raw_fd())?;
    // With a group, the socket's mode already admits exactly its members.
    Ok(access.group.is_some() || uid == 0 || uid == sys::euid())
}

/// Reads from a stream, failing once `deadline` has passed, whatever the
/// size of each read.
struct DeadlineReader {
    stream: UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request took too long to arrive",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

fn serve(state: &ApiState, stream: UnixStream, access: Access) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let response = if !peer_allowed(&stream, access)? {
        Response::error(403, "this socket serves perfvmm's own user and root only")
    } else {
        let reader = DeadlineReader {
            stream: stream.try_clone()?,
            deadline: Instant::now() + REQUEST_DEADLINE,
        };
        match read_request(&mut BufReader::new(reader)) {
            Ok(req) => {
                log::debug!("api: {} {}", req.method, req.path);
                route(state, &req)
            }
            Err(e) => Response::error(400, e),
        }
    };
    let mut w = stream;
    response.write_to(&mut w)?;
    w.flush()
}

/// Serves the API until the process ends: an accepting thread, and a thread
/// per connection. Returns the count of connections being served, which
/// perfvmm lets drop to 0 before it exits (an answer, such as a stopping
/// snapshot's, is not cut off).
/// With `seccomp`, the accepting thread confines itself (and so its
/// connection threads) before it accepts.
pub fn spawn(
    listener: UnixListener,
    state: ApiState,
    access: Access,
    seccomp: bool,
) -> io::Result<Arc<AtomicUsize>> {
    let state = Arc::new(state);
    let active = Arc::new(AtomicUsize::new(0));
    let served = active.clone();
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            if seccomp {
                if let Err(e) = crate::seccomp::install(ThreadKind::Api) {
                    // An API that could not be confined is not served.
                    log::error!(
                        "api: {e}; the control API is off (--no-seccomp runs without filters)"
                    );
                    return;
                }
            }
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => accept(&state, &active, s, access),
                    Err(e) => log::warn!("api: accept: {e}"),
                }
            }
        })?;
    Ok(served)
}

fn accept(state: &Arc<ApiState>, active: &Arc<AtomicUsize>, s: UnixStream, access: Access) {
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::AcqRel);
        let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
        let busy = Response::error(503, "too many connections; try again");
        let _ = busy.write_to(&mut &s);
        return;
    }
    let (state, done) = (state.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("api-conn".into())
        .spawn(move || {
            if let Err(e) = serve(&state, s, access) {
                log::debug!("api: {e}");
            }
            done.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::AcqRel);
        log::warn!("api: cannot start a connection thread: {e}");
    }
}

/// The few calls std has no safe wrapper for.
mod sys {
    use std::io;
    use std::os::fd::RawFd;
    use std::path::Path;

    pub fn umask(mask: libc::mode_t) -> libc::mode_t {
        // SAFETY: umask(2) only swaps the process's file mode mask.
        unsafe { libc::umask(mask) }
    }

    pub fn euid() -> u32 {
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        unsafe { libc::geteuid() }
    }

    /// The peer's user and group ids (`SO_PEERCRED`).
    pub fn peer_ids(fd: RawFd) -> io::Result<(u32, u32)> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` is a ucred of `len` bytes, written by the kernel;
        // `fd` is an open socket owned by the caller.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((cred.uid, cred.gid))
    }

    pub fn chown_group(path: &Path, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, None, Some(gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("perfvmm-api-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = dir("bind");
        let sock = dir.join("s");
        let live = bind(&sock, Access::default()).unwrap();
        assert_eq!(
            bind(&sock, Access::default()).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        let again = bind(&sock, Access::default()).expect("stale socket replaced");
        drop(again);
        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file, Access::default()).is_err());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"x",
            "a file is never removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_socket_is_private_whatever_the_umask() {
        let dir = dir("mode");
        let sock = dir.join("s");
        let old = sys::umask(0);
        let l = bind(&sock, Access::default());
        sys::umask(old);
        let _l = l.unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let group = bind(&dir.join("g"), Access { group: Some(0) }).unwrap();
        let mode = std::fs::metadata(dir.join("g"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o660);
        drop(group);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dribbling_client_is_cut_off_at_the_deadline() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = DeadlineReader {
            stream: a,
            deadline: Instant::now() + Duration::from_millis(300),
        };
        let start = Instant::now();
        let mut buf = [0u8; 1];
        let mut got = 0;
        loop {
            let _ = b.write_all(b"x");
            std::thread::sleep(Duration::from_millis(50));
            match r.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) => {
                    assert!(matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ));
                    break;
                }
            }
        }
        assert!(
            got >= 2 && start.elapsed() < Duration::from_secs(2),
            "{got}"
        );
    }

    #[test]
    fn the_peer_is_this_user() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(sys::peer_ids(a.as_raw_fd()).unwrap().0, sys::euid());
        assert!(peer_allowed(&a, Access::default()).unwrap());
    }
}

//! The kernel's process-events connector: a netlink socket subscribed to
//! `CN_IDX_PROC`, delivering one message per fork, exec, exit... of which
//! perfhintd wants `PROC_EVENT_EXEC`. Messages are encoded and decoded by
//! hand (they are fixed little-endian layouts), so the only unsafe-free
//! work left to libc is the socket itself, through `std`'s raw fds.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `struct nlmsghdr` (16 bytes), then `struct cn_msg` (20), then the payload.
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
const NLMSG_DONE: u16 = 3;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
/// In `struct proc_event`: what (4), cpu (4), timestamp (8), then the event.
const EVENT_DATA: usize = NLMSG_HDR + CN_MSG_HDR + 16;

/// The subscription request: "send me process events".
pub fn listen_request(pid: u32) -> [u8; NLMSG_HDR + CN_MSG_HDR + 4] {
    let mut m = [0u8; NLMSG_HDR + CN_MSG_HDR + 4];
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_le_bytes());
    m[4..6].copy_from_slice(&NLMSG_DONE.to_le_bytes());
    m[12..16].copy_from_slice(&pid.to_le_bytes());
    m[16..20].copy_from_slice(&CN_IDX_PROC.to_le_bytes());
    m[20..24].copy_from_slice(&CN_VAL_PROC.to_le_bytes());
    m[32..34].copy_from_slice(&4u16.to_le_bytes());
    m[36..40].copy_from_slice(&PROC_CN_MCAST_LISTEN.to_le_bytes());
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The process (thread-group id) an exec event names; `None` for any other
/// message, or one too short to be an event.
pub fn exec_tgid(msg: &[u8]) -> Option<u32> {
    let idx = u32_at(msg, NLMSG_HDR)?;
    let what = u32_at(msg, NLMSG_HDR + CN_MSG_HDR)?;
    if idx != CN_IDX_PROC || what != PROC_EVENT_EXEC {
        return None;
    }
    // exec: process_pid, then process_tgid.
    u32_at(msg, EVENT_DATA + 4)
}

pub struct Listener {
    fd: std::fs::File,
    buf: Vec<u8>,
}

impl Listener {
    /// Opens and subscribes the connector socket (root only).
    pub fn open() -> io::Result<Self> {
        let fd = sys::connector_socket(CN_IDX_PROC)?;
        let mut file = std::fs::File::from(fd);
        io::Write::write_all(&mut file, &listen_request(std::process::id()))?;
        Ok(Listener {
            fd: file,
            buf: vec![0; 4096],
        })
    }

    /// Blocks until a program is executed; returns its process id.
    pub fn next_exec(&mut self) -> io::Result<u32> {
        loop {
            let n = io::Read::read(&mut self.fd, &mut self.buf)?;
            if let Some(tgid) = exec_tgid(&self.buf[..n]) {
                return Ok(tgid);
            }
        }
    }
}

/// The one system call `std` does not offer: a bound netlink socket.
mod sys {
    #![allow(unsafe_code)]
    use super::*;

    pub fn connector_socket(groups: u32) -> io::Result<OwnedFd> {
        const NETLINK_CONNECTOR: libc::c_int = 11;
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_pid = std::process::id();
        addr.nl_groups = groups;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes; `raw` is open.
        let r = unsafe { libc::bind(raw, (&addr as *const libc::sockaddr_nl).cast(), len) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_message(tgid: u32, what: u32) -> Vec<u8> {
        let mut m = vec![0u8; EVENT_DATA + 8];
        m[16..20].copy_from_slice(&CN_IDX_PROC.to_le_bytes());
        m[36..40].copy_from_slice(&what.to_le_bytes());
        m[EVENT_DATA..EVENT_DATA + 4].copy_from_slice(&(tgid + 1).to_le_bytes());
        m[EVENT_DATA + 4..EVENT_DATA + 8].copy_from_slice(&tgid.to_le_bytes());
        m
    }

    #[test]
    fn decodes_exec_events_only() {
        assert_eq!(exec_tgid(&exec_message(42, PROC_EVENT_EXEC)), Some(42));
        assert_eq!(exec_tgid(&exec_message(42, 1)), None, "a fork");
        assert_eq!(exec_tgid(&exec_message(42, PROC_EVENT_EXEC)[..40]), None);
        assert_eq!(exec_tgid(&[]), None);
    }

    #[test]
    fn the_listen_request_is_well_formed() {
        let m = listen_request(7);
        assert_eq!(u32_at(&m, 0), Some(m.len() as u32));
        assert_eq!(u32_at(&m, 12), Some(7));
        assert_eq!(u32_at(&m, NLMSG_HDR), Some(CN_IDX_PROC));
        assert_eq!(
            u32_at(&m, NLMSG_HDR + CN_MSG_HDR),
            Some(PROC_CN_MCAST_LISTEN)
        );
    }
}

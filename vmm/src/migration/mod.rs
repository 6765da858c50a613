//! Live migration: the running VM moves to another perfvmm process
//! (`perfvmm --incoming`), which may be on another host.
//!
//! The source copies guest memory while the guest runs ([`send`]): all of
//! it first, then, round after round, the pages written since the last
//! round (KVM's dirty log for the guest's writes, guest memory's bitmap for
//! the VMM's own), until what is left fits the downtime budget at the
//! rate measured so far. Then the main thread stops the vCPUs, sends the
//! last pages and the VM's state (the snapshot's [`VmState`]), and waits
//! for the target to say it runs the VM: only then does the source exit.
//! If anything fails before, the source's vCPUs run on.
//!
//! The stream ([`wire`]): a hello with the machine's shape, which the
//! target accepts or refuses; frames of pages; one frame with the state;
//! the target's answer.
//!
//! [`VmState`]: crate::snapshot::VmState

pub mod dirty;
pub mod receive;
pub mod send;
pub mod wire;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::control::snapshot::Endpoint;

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{0}: {1}")]
    Connect(Endpoint, std::io::Error),
    #[error("the stream broke: {0}")]
    Io(#[from] std::io::Error),
    #[error("the stream is not a perfvmm migration: {0}")]
    Protocol(String),
    #[error("the target refused the VM: {0}")]
    Refused(String),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("another migration is under way")]
    Busy,
}

/// A connection between source and target.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// How long either side waits for the other to say something.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl Stream {
    /// Connects to a waiting target.
    pub fn connect(to: &Endpoint) -> Result<Stream, MigrationError> {
        let err = |e| MigrationError::Connect(to.clone(), e);
        let s = match to {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p).map_err(err)?),
            Endpoint::Tcp(a) => {
                let t = TcpStream::connect_timeout(a, IO_TIMEOUT).map_err(err)?;
                let _ = t.set_nodelay(true);
                Stream::Tcp(t)
            }
        };
        s.set_timeouts(IO_TIMEOUT)?;
        Ok(s)
    }

    pub fn set_timeouts(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

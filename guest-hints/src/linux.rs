#![forbid(unsafe_code)]
//! The Linux transport: `/dev/perfhint`, provided by the `virtio_perfhint`
//! kernel module. Its contract (see `docs/perf-hint-device.md`):
//!
//! * one `write()` is one whole wire message; a message longer than the
//!   device's maximum fails with `EINVAL`;
//! * a non-blocking descriptor gets `EAGAIN` when the queue is full (the
//!   message is not sent); a blocking one waits for room;
//! * `read()` returns 8-byte outcome entries (`seq:u32 outcome:u8 pad:u8
//!   stream:u16`) as the device reports them, for this open file's own
//!   messages only; `poll()` says when some are waiting.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::client::{SendError, Transport};

/// Where the `virtio_perfhint` module puts the device.
pub const DEVICE_PATH: &str = "/dev/perfhint";

/// `/dev/perfhint`, opened non-blocking so that a hint never stalls the program.
pub struct DevTransport {
    file: Option<File>,
}

impl DevTransport {
    /// Opens the device; with no device the transport is a no-op.
    pub fn open() -> Self {
        Self::open_path(Path::new(DEVICE_PATH))
    }

    /// Opens the device at `path`; with no device there the transport is a no-op.
    pub fn open_path(path: &Path) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_nonblock())
            .open(path)
            .ok();
        DevTransport { file }
    }

    /// Reads the outcome entries waiting now (non-blocking).
    pub fn read_outcomes(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => match f.read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
                r => r,
            },
            None => Ok(0),
        }
    }
}

const fn libc_nonblock() -> i32 {
    // O_NONBLOCK on Linux (all architectures perfvmm supports).
    0o4000
}

impl Transport for DevTransport {
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
        let Some(f) = &mut self.file else {
            return Err(SendError::NoDevice);
        };
        match f.write(msg) {
            Ok(n) if n == msg.len() => Ok(()),
            Ok(_) => Err(SendError::Refused),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(SendError::Busy),
            Err(e) if e.raw_os_error() == Some(22) => Err(SendError::TooLarge),
            Err(_) => Err(SendError::Refused),
        }
    }

    fn is_connected(&self) -> bool {
        self.file.is_some()
    }
}

//! The migration stream's format. Integers are little-endian.
//!
//! ```text
//! source → target   hello   "PVMMMIGR", version u32, length u32, Hello (postcard)
//! target → source   answer  status u8 (0 accepted, 1 refused), length u16, reason
//! source → target   frames  1 pages: address u64, length u32, bytes
//!                           2 state: length u64, a snapshot's state file
//! target → source   answer  once the VM is built there, its vCPUs held
//!                           (or why it is not)
//! source → target   commit  "GO": the source has stopped for good; the
//!                           target lets the vCPUs run
//! ```
//!
//! Only one side ever runs the VM: the source gives it up when it sends
//! the commit, and the target runs it only once the commit arrived.
//!
//! Everything read is checked here or by its receiver: lengths against
//! fixed limits, page addresses against the guest's memory, the state by
//! the snapshot decoder (CRC, version, shape) and the restore.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::MigrationError;
use crate::snapshot::{Shape, MAX_STATE_LEN};

pub const MAGIC: [u8; 8] = *b"PVMMMIGR";
/// The stream's format version; a target refuses any other.
pub const VERSION: u32 = 1;
/// The largest hello (a shape is a few hundred bytes).
const MAX_HELLO_LEN: u32 = 64 << 10;
/// The most bytes one pages frame carries.
pub const MAX_PAGES_LEN: u32 = 1 << 20;
/// The longest reason in an answer.
const MAX_REASON_LEN: usize = 1024;
const PAGES: u8 = 1;
const STATE: u8 = 2;
const COMMIT: [u8; 2] = *b"GO";

/// What the source says first: the machine, and what it uses now, which
/// the target checks against what it may give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub shape: Shape,
    pub vcpus: u32,
    pub memory_bytes: u64,
}

/// One frame after the hello.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Guest memory from `gpa`, its bytes in the reader's buffer.
    Pages { gpa: u64, len: usize },
    /// The VM's state, encoded as a snapshot's state file.
    State(Vec<u8>),
}

fn protocol(why: impl Into<String>) -> MigrationError {
    MigrationError::Protocol(why.into())
}

fn read_array<const N: usize>(r: &mut impl Read) -> Result<[u8; N], MigrationError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

pub fn write_hello(w: &mut impl Write, hello: &Hello) -> Result<(), MigrationError> {
    let body = postcard::to_stdvec(hello).map_err(|e| protocol(e.to_string()))?;
    w.write_all(&MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&body)?;
    Ok(w.flush()?)
}

pub fn read_hello(r: &mut impl Read) -> Result<Hello, MigrationError> {
    if read_array::<8>(r)? != MAGIC {
        return Err(protocol("it does not start with perfvmm's magic"));
    }
    let version = u32::from_le_bytes(read_array(r)?);
    if version != VERSION {
        return Err(protocol(format!(
            "stream format version {version}; this perfvmm reads version {VERSION} only"
        )));
    }
    let len = u32::from_le_bytes(read_array(r)?);
    if len > MAX_HELLO_LEN {
        return Err(protocol(format!("a hello of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(|e| protocol(format!("hello: {e}")))
}

/// The target's answer: accepted, or refused with a reason.
pub fn write_answer(w: &mut impl Write, answer: Result<(), &str>) -> Result<(), MigrationError> {
    let (status, reason) = match answer {
        Ok(()) => (0u8, ""),
        Err(why) => (1, why),
    };
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    w.write_all(&[status])?;
    w.write_all(&(end as u16).to_le_bytes())?;
    w.write_all(&reason.as_bytes()[..end])?;
    Ok(w.flush()?)
}

/// Reads the target's answer; a refusal is `MigrationError::Refused`.
pub fn read_answer(r: &mut impl Read) -> Result<(), MigrationError> {
    let [status] = read_array::<1>(r)?;
    let len = u16::from_le_bytes(read_array(r)?) as usize;
    if len > MAX_REASON_LEN {
        return Err(protocol(format!("an answer of {len} bytes")));
    }
    let mut reason = vec![0u8; len];
    r.read_exact(&mut reason)?;
    match status {
        0 => Ok(()),
        1 => Err(MigrationError::Refused(
            String::from_utf8_lossy(&reason).into_owned(),
        )),
        s => Err(protocol(format!("answer status {s}"))),
    }
}

/// The source hands the VM over: from here on it never runs it again.
pub fn write_commit(w: &mut impl Write) -> Result<(), MigrationError> {
    w.write_all(&COMMIT)?;
    Ok(w.flush()?)
}

/// Waits for the source to hand the VM over.
pub fn read_commit(r: &mut impl Read) -> Result<(), MigrationError> {
    if read_array::<2>(r)? != COMMIT {
        return Err(protocol("the source did not commit"));
    }
    Ok(())
}

/// Writes guest memory `data` from `gpa` as pages frames.
pub fn write_pages(w: &mut impl Write, gpa: u64, data: &[u8]) -> Result<(), MigrationError> {
    for (i, chunk) in data.chunks(MAX_PAGES_LEN as usize).enumerate() {
        w.write_all(&[PAGES])?;
        w.write_all(&(gpa + (i as u64) * u64::from(MAX_PAGES_LEN)).to_le_bytes())?;
        w.write_all(&(chunk.len() as u32).to_le_bytes())?;
        w.write_all(chunk)?;
    }
    Ok(())
}

pub fn write_state(w: &mut impl Write, state: &[u8]) -> Result<(), MigrationError> {
    w.write_all(&[STATE])?;
    w.write_all(&(state.len() as u64).to_le_bytes())?;
    w.write_all(state)?;
    Ok(w.flush()?)
}

/// Reads one frame; a pages frame's bytes go into `buf`, which is at least
/// [`MAX_PAGES_LEN`] long.
pub fn read_frame(r: &mut impl Read, buf: &mut [u8]) -> Result<Frame, MigrationError> {
    let [kind] = read_array::<1>(r)?;
    match kind {
        PAGES => {
            let gpa = u64::from_le_bytes(read_array(r)?);
            let len = u32::from_le_bytes(read_array(r)?);
            if len == 0 || len > MAX_PAGES_LEN || len as usize > buf.len() {
                return Err(protocol(format!("a pages frame of {len} bytes")));
            }
            r.read_exact(&mut buf[..len as usize])?;
            Ok(Frame::Pages {
                gpa,
                len: len as usize,
            })
        }
        STATE => {
            let len = u64::from_le_bytes(read_array(r)?);
            if len > MAX_STATE_LEN {
                return Err(protocol(format!("a state of {len} bytes")));
            }
            let mut state = Vec::new();
            r.take(len).read_to_end(&mut state)?;
            if state.len() as u64 != len {
                return Err(protocol("the stream ends inside the state"));
            }
            Ok(Frame::State(state))
        }
        k => Err(protocol(format!("frame kind {k}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            shape: Shape {
                max_vcpus: 2,
                boot_memory: 256 << 20,
                max_memory: 256 << 20,
                regions: vec![(0, 256 << 20)],
                hotplug: None,
            },
            vcpus: 1,
            memory_bytes: 256 << 20,
        }
    }

    #[test]
    fn a_stream_round_trips() {
        let mut out = Vec::new();
        write_hello(&mut out, &hello()).unwrap();
        write_pages(&mut out, 0x1000, &vec![7u8; MAX_PAGES_LEN as usize + 4096]).unwrap();
        write_state(&mut out, b"state").unwrap();
        write_answer(&mut out, Err("too big")).unwrap();
        write_commit(&mut out).unwrap();
        let mut r = &out[..];
        assert_eq!(read_hello(&mut r).unwrap(), hello());
        let mut buf = vec![0u8; MAX_PAGES_LEN as usize];
        assert_eq!(
            read_frame(&mut r, &mut buf).unwrap(),
            Frame::Pages {
                gpa: 0x1000,
                len: MAX_PAGES_LEN as usize
            }
        );
        let second = read_frame(&mut r, &mut buf).unwrap();
        assert_eq!(
            second,
            Frame::Pages {
                gpa: 0x1000 + u64::from(MAX_PAGES_LEN),
                len: 4096
            }
        );
        assert_eq!(buf[..4096], [7u8; 4096]);
        assert_eq!(
            read_frame(&mut r, &mut buf).unwrap(),
            Frame::State(b"state".to_vec())
        );
        let refused = read_answer(&mut r).unwrap_err();
        assert_eq!(refused.to_string(), "the target refused the VM: too big");
        read_commit(&mut r).unwrap();
        assert!(read_commit(&mut &b"NO"[..]).is_err());
        assert!(read_commit(&mut &b""[..]).is_err());
    }

    #[test]
    fn foreign_or_oversized_input_is_refused() {
        let mut buf = vec![0u8; MAX_PAGES_LEN as usize];
        assert!(read_hello(&mut &b"GET / HTTP/1.1\r\n"[..]).is_err());
        let mut newer = MAGIC.to_vec();
        newer.extend(2u32.to_le_bytes());
        newer.extend(0u32.to_le_bytes());
        let e = read_hello(&mut &newer[..]).unwrap_err().to_string();
        assert!(e.contains("version 2"), "{e}");
        let mut big = vec![PAGES];
        big.extend(0u64.to_le_bytes());
        big.extend((MAX_PAGES_LEN + 1).to_le_bytes());
        assert!(read_frame(&mut &big[..], &mut buf).is_err());
        let mut state = vec![STATE];
        state.extend((MAX_STATE_LEN + 1).to_le_bytes());
        assert!(read_frame(&mut &state[..], &mut buf).is_err());
        let mut short = vec![STATE];
        short.extend(10u64.to_le_bytes());
        short.extend(b"abc");
        assert!(read_frame(&mut &short[..], &mut buf).is_err());
        assert!(read_frame(&mut &[9u8][..], &mut buf).is_err());
        assert!(read_answer(&mut &[5u8, 0, 0][..]).is_err());
    }
}

//! One bounded reader for descriptor chains. Every device reads what the
//! guest posts through [`read_chain`], so every device applies the same
//! rules: at most [`MAX_DESCRIPTORS`] descriptors (which also ends descriptor
//! loops), device-readable buffers before device-writable ones (virtio 1.2,
//! 2.7.4.2), readable bytes gathered into a caller-owned buffer no longer
//! than the device's limit, and every buffer inside guest memory.

use crate::GuestMem;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

/// The most descriptors any device follows in one chain.
pub const MAX_DESCRIPTORS: usize = 16;

/// What a device accepts in one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLimits {
    /// Device-readable bytes gathered at most; more is [`ChainError::TooLarge`].
    pub max_readable: usize,
    /// Whether device-writable buffers may follow the readable ones.
    pub writable: bool,
    /// Whether a zero-length descriptor is refused ([`ChainError::ZeroLength`]).
    pub refuse_zero_length: bool,
}

impl ChainLimits {
    /// A request the device only reads: at most `max_readable` bytes, no
    /// device-writable buffer.
    pub const fn read_only(max_readable: usize) -> Self {
        ChainLimits {
            max_readable,
            writable: false,
            refuse_zero_length: false,
        }
    }

    /// A request followed by buffers for the device's answer.
    pub const fn read_write(max_readable: usize) -> Self {
        ChainLimits {
            max_readable,
            writable: true,
            refuse_zero_length: false,
        }
    }

    /// Also refuses zero-length descriptors.
    pub const fn refusing_zero_length(mut self) -> Self {
        self.refuse_zero_length = true;
        self
    }
}

/// Why a chain was not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("descriptor at {0:#x} is device-writable")]
    Writable(u64),
    #[error("device-readable descriptor at {0:#x} after a device-writable one")]
    ReadableAfterWritable(u64),
    #[error("zero-length descriptor")]
    ZeroLength,
    #[error("empty chain")]
    Empty,
    #[error("more than {0} bytes")]
    TooLarge(usize),
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
}

/// The device-writable buffers of a chain, in chain order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WritableBuffers {
    bufs: [(u64, u32); MAX_DESCRIPTORS],
    len: usize,
}

impl WritableBuffers {
    fn push(&mut self, addr: u64, len: u32) {
        // `read_chain` stops before more than MAX_DESCRIPTORS descriptors.
        if let Some(slot) = self.bufs.get_mut(self.len) {
            *slot = (addr, len);
            self.len += 1;
        }
    }

    /// Each buffer's guest address and length.
    pub fn iter(&self) -> impl Iterator<Item = (GuestAddress, u32)> + '_ {
        self.bufs[..self.len]
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
    }

    /// The first buffer that holds at least `len` bytes.
    pub fn first_holding(&self, len: usize) -> Option<GuestAddress> {
        self.iter()
            .find(|&(_, l)| l as usize >= len)
            .map(|(a, _)| a)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads one chain: its device-readable bytes into `buf` (cleared first)
/// and its device-writable buffers into the result, enforcing `limits`.
pub fn read_chain(
    mem: &GuestMem,
    chain: impl Iterator<Item = Descriptor>,
    limits: ChainLimits,
    buf: &mut Vec<u8>,
) -> Result<WritableBuffers, ChainError> {
    buf.clear();
    let mut writable = WritableBuffers::default();
    let mut descriptors = 0;
    for desc in chain {
        descriptors += 1;
        if descriptors > MAX_DESCRIPTORS {
            return Err(ChainError::TooManyDescriptors);
        }
        let (addr, len) = (desc.addr().0, desc.len());
        if len == 0 && limits.refuse_zero_length {
            return Err(ChainError::ZeroLength);
        }
        if desc.is_write_only() {
            if !limits.writable {
                return Err(ChainError::Writable(addr));
            }
            writable.push(addr, len);
            continue;
        }
        if !writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable(addr));
        }
        gather(mem, buf, addr, len, limits.max_readable)?;
    }
    if descriptors == 0 {
        return Err(ChainError::Empty);
    }
    Ok(writable)
}

/// Appends one readable buffer to `buf`, within `max` bytes in all.
fn gather(
    mem: &GuestMem,
    buf: &mut Vec<u8>,
    addr: u64,
    len: u32,
    max: usize,
) -> Result<(), ChainError> {
    let start = buf.len();
    let end = start
        .checked_add(len as usize)
        .filter(|&end| end <= max)
        .ok_or(ChainError::TooLarge(max))?;
    buf.resize(end, 0);
    mem.read_slice(&mut buf[start..], GuestAddress(addr))
        .map_err(|_| ChainError::BadAddress { addr, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Desc, DriverRing};
    use virtio_queue::QueueT;

    fn fixture() -> (GuestMem, DriverRing, virtio_queue::Queue) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let ring = DriverRing::new(&mem, 0x1000, 32);
        let q = ring.queue();
        (mem, ring, q)
    }

    fn read(descs: &[Desc], limits: ChainLimits) -> (Result<WritableBuffers, ChainError>, Vec<u8>) {
        let (mem, mut ring, mut q) = fixture();
        mem.write_slice(&[7u8; 64], GuestAddress(0x8000)).unwrap();
        ring.add(&mem, descs);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut buf = Vec::new();
        let r = read_chain(&mem, chain, limits, &mut buf);
        (r, buf)
    }

    #[test]
    fn gathers_readable_then_lists_writable() {
        let (r, buf) = read(
            &[
                Desc::readable(0x8000, 8),
                Desc::readable(0x8010, 4),
                Desc::writable(0x9000, 4),
                Desc::writable(0x9100, 16),
            ],
            ChainLimits::read_write(64),
        );
        let w = r.unwrap();
        assert_eq!(buf, vec![7u8; 12]);
        assert_eq!(w.first_holding(10), Some(GuestAddress(0x9100)));
        assert_eq!(w.iter().count(), 2);
    }

    #[test]
    fn limits_are_enforced() {
        let ro = ChainLimits::read_only(16);
        let one = |d: Desc, l: ChainLimits| read(&[d], l).0;
        assert_eq!(
            one(Desc::writable(0x9000, 4), ro),
            Err(ChainError::Writable(0x9000))
        );
        assert_eq!(
            one(Desc::readable(0x8000, 17), ro),
            Err(ChainError::TooLarge(16))
        );
        assert_eq!(
            one(Desc::readable(0x8000, u32::MAX), ro),
            Err(ChainError::TooLarge(16))
        );
        assert_eq!(
            one(Desc::readable(0x8000, 0), ro.refusing_zero_length()),
            Err(ChainError::ZeroLength)
        );
        assert!(one(Desc::readable(0x8000, 0), ro).is_ok());
        assert_eq!(
            one(Desc::readable(2 << 20, 4), ro),
            Err(ChainError::BadAddress {
                addr: 2 << 20,
                len: 4
            })
        );
        let (r, _) = read(
            &[Desc::writable(0x9000, 4), Desc::readable(0x8000, 4)],
            ChainLimits::read_write(16),
        );
        assert_eq!(r, Err(ChainError::ReadableAfterWritable(0x8000)));
        let long = vec![Desc::readable(0x8000, 1); MAX_DESCRIPTORS + 1];
        assert_eq!(
            read(&long, ChainLimits::read_only(64)).0,
            Err(ChainError::TooManyDescriptors)
        );
    }
}

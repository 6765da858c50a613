#![forbid(unsafe_code)]
//! The transport-independent client: numbers records, batches them into
//! messages and hands whole messages to a [`Transport`]. `no_std`.

use crate::wire::{
    Hint, Io, IoClass, Locality, Memory, MessageWriter, Name, Parallelism, PhaseBegin, Placement,
    PPM,
};

/// Why a message did not reach the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// There is no perf-hint device (the normal case on bare metal).
    NoDevice,
    /// The device's queue is full; the message was dropped.
    Busy,
    /// The device or driver refused the message.
    Refused,
    /// The hint does not fit in a message.
    TooLarge,
}

/// Carries finished messages to the device.
pub trait Transport {
    /// Sends one message (header and records). Must not block for long.
    fn send(&mut self, msg: &[u8]) -> Result<(), SendError>;

    /// Whether a device is there at all.
    fn is_connected(&self) -> bool;
}

/// A transport for when there is no device: everything is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDevice;

impl Transport for NoDevice {
    fn send(&mut self, _msg: &[u8]) -> Result<(), SendError> {
        Err(SendError::NoDevice)
    }

    fn is_connected(&self) -> bool {
        false
    }
}

/// Hints sent and dropped by one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Hints the transport accepted.
    pub sent: u64,
    /// Hints that were not sent (no device, full queue, refused, too large).
    pub dropped: u64,
}

/// Numbers hints and sends them through a transport.
pub struct Client<T: Transport> {
    transport: T,
    next_seq: u32,
    stats: ClientStats,
}

impl<T: Transport> Client<T> {
    /// A client over `transport`, numbering hints from 0.
    pub const fn new(transport: T) -> Self {
        Client {
            transport,
            next_seq: 0,
            stats: ClientStats {
                sent: 0,
                dropped: 0,
            },
        }
    }

    /// Whether the transport has a device behind it.
    pub fn is_connected(&self) -> bool {
        self.transport.is_connected()
    }

    /// Hints sent and dropped so far.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The transport, for transport-specific calls.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends hints as one message; returns the sequence number of the first.
    pub fn send_all(&mut self, hints: &[Hint]) -> Result<u32, SendError> {
        if hints.is_empty() {
            return Ok(self.next_seq);
        }
        if !self.transport.is_connected() {
            return Err(SendError::NoDevice);
        }
        let seq = self.next_seq;
        let mut w = MessageWriter::new(seq);
        for h in hints {
            if w.push(h).is_err() {
                self.stats.dropped += hints.len() as u64;
                return Err(SendError::TooLarge);
            }
        }
        let n = u64::from(w.count());
        match self.transport.send(w.finish()) {
            Ok(()) => {
                self.next_seq = self.next_seq.wrapping_add(n as u32);
                self.stats.sent += n;
                Ok(seq)
            }
            Err(e) => {
                self.stats.dropped += n;
                Err(e)
            }
        }
    }

    /// Sends one hint as a message; returns its sequence number.
    pub fn send(&mut self, hint: &Hint) -> Result<u32, SendError> {
        self.send_all(core::slice::from_ref(hint))
    }
}

/// Serial fraction (0.0..=1.0) in parts per million, clamped.
pub fn serial_ppm(fraction: f64) -> u32 {
    if fraction.is_nan() || fraction <= 0.0 {
        0
    } else if fraction >= 1.0 {
        PPM
    } else {
        (fraction * PPM as f64) as u32
    }
}

/// Constructors for each hint.
pub mod hint {
    use super::*;

    /// Tasks ready to run, the most threads that help (0: no limit known),
    /// and the serial fraction (0.0..=1.0, clamped).
    pub fn parallelism(runnable_tasks: u32, max_useful: u32, serial_fraction: f64) -> Hint {
        Hint::Parallelism(Parallelism {
            runnable_tasks,
            max_useful,
            serial_ppm: serial_ppm(serial_fraction),
        })
    }

    /// Working set, peak, and expected growth per second (0: steady), in bytes.
    pub fn memory(working_set_bytes: u64, peak_bytes: u64, growth_bytes_per_sec: u64) -> Hint {
        Hint::Memory(Memory {
            working_set_bytes,
            peak_bytes,
            growth_bytes_per_sec,
        })
    }

    /// The kind of I/O and its rate in bytes per second.
    pub fn io(class: IoClass, bytes_per_sec: u64) -> Hint {
        Hint::Io(Io {
            class,
            bytes_per_sec,
        })
    }

    /// Begins phase `id`; `name` is truncated to [`crate::wire::MAX_NAME_LEN`]
    /// bytes, `expected_ms` is 0 when unknown.
    pub fn phase_begin(id: u32, name: &str, expected_ms: u32) -> Hint {
        Hint::PhaseBegin(PhaseBegin {
            id,
            expected_ms,
            name: Name::truncated(name),
            declared_only: false,
        })
    }

    /// Ends phase `id`.
    pub fn phase_end(id: u32) -> Hint {
        Hint::PhaseEnd { id }
    }

    /// The data set the work reads most, by a name the operator also uses;
    /// `None` when `name` is empty or longer than
    /// [`crate::wire::MAX_NAME_LEN`] bytes (a cut name would name another).
    pub fn data_set(name: &str) -> Option<Hint> {
        Name::new(name)
            .ok()
            .filter(|n| !n.is_empty())
            .map(Hint::DataSet)
    }

    /// Whether the work may move, whether it can be split, and its locality.
    pub fn placement(relocatable: bool, monolithic: bool, locality: Locality) -> Hint {
        Hint::Placement(Placement {
            relocatable,
            monolithic,
            locality,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Capture {
        msgs: usize,
        last_len: usize,
        busy: bool,
    }

    impl Transport for Capture {
        fn send(&mut self, msg: &[u8]) -> Result<(), SendError> {
            if self.busy {
                return Err(SendError::Busy);
            }
            self.msgs += 1;
            self.last_len = msg.len();
            Ok(())
        }
        fn is_connected(&self) -> bool {
            true
        }
    }

    #[test]
    fn numbers_records_and_counts() {
        let mut c = Client::new(Capture {
            msgs: 0,
            last_len: 0,
            busy: false,
        });
        assert_eq!(c.send(&hint::phase_end(1)), Ok(0));
        assert_eq!(c.send_all(&[hint::phase_end(2), hint::phase_end(3)]), Ok(1));
        assert_eq!(c.send(&hint::phase_end(4)), Ok(3));
        c.transport_mut().busy = true;
        assert_eq!(c.send(&hint::phase_end(5)), Err(SendError::Busy));
        assert_eq!(
            c.stats(),
            ClientStats {
                sent: 4,
                dropped: 1
            }
        );
        // A failed send does not use up sequence numbers.
        c.transport_mut().busy = false;
        assert_eq!(c.send(&hint::phase_end(6)), Ok(4));
    }

    #[test]
    fn no_device_is_silent() {
        let mut c = Client::new(NoDevice);
        assert_eq!(
            c.send(&hint::parallelism(4, 4, 0.1)),
            Err(SendError::NoDevice)
        );
        assert!(!c.is_connected());
    }

    #[test]
    fn serial_fraction_is_clamped() {
        assert_eq!(serial_ppm(-1.0), 0);
        assert_eq!(serial_ppm(f64::NAN), 0);
        assert_eq!(serial_ppm(0.25), 250_000);
        assert_eq!(serial_ppm(7.0), PPM);
    }
}

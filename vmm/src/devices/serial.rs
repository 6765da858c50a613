//! COM1: a 16550 UART (vm-superio) whose interrupt is an eventfd registered
//! with KVM as an irqfd.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// IIR bit 0: set while no interrupt is pending.
const IIR_NO_INTERRUPT: u8 = 0x01;

/// Raises the UART's interrupt line by signalling its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A UART's state: its nine registers (divisor low and high, IER, IIR,
/// LCR, LSR, MCR, MSR, scratch) and the input the guest has not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    pub registers: [u8; 9],
    pub input: Vec<u8>,
}

/// COM1 on the port-I/O bus.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(irq: EventFd, out: W) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// A UART restored from a snapshot's `state`; refused when its input
    /// holds more than the UART's FIFO.
    pub fn from_state(state: &UartState, irq: EventFd, out: W) -> Result<Self, String> {
        let r = state.registers;
        let s = SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: state.input.clone(),
        };
        let uart = Serial::from_state(&s, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map_err(|e| format!("serial: {e:?}"))?;
        Ok(Self { uart })
    }

    /// The UART's registers and unread input, for a snapshot.
    pub fn save(&self) -> UartState {
        let s = self.uart.state();
        UartState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            input: s.in_buffer,
        }
    }

    /// Raises the UART's interrupt again if its IIR shows one pending: for
    /// a restored VM, once its vCPUs' interrupt controllers hold their
    /// saved state. (vm-superio raises it when the UART is restored, but
    /// that is before the vCPUs exist, so KVM delivers it to no one; and
    /// the source's may still have been in KVM's irqfd work queue when it
    /// saved the controllers.) Lost, it leaves the guest's 8250 driver
    /// waiting for "transmitter empty" forever: a silent console. A spare
    /// one finds IIR empty and is ignored.
    pub fn raise_pending(&self) -> std::io::Result<()> {
        if self.uart.state().interrupt_identification & IIR_NO_INTERRUPT == 0 {
            self.uart.interrupt_evt().trigger()?;
        }
        Ok(())
    }

    /// Queues console input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&first), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, first) {
                log::debug!("serial: {e:?}");
            }
        }
    }
}

/// Standard output as the console: flushed on every write so it is live.
pub struct ConsoleOut(pub std::io::Stdout);

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self.0.lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_to_writer_and_raises_irq() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Vec::new());
        // Enable the "transmitter holding register empty" interrupt.
        s.write(1, &[0x02]);
        s.write(0, b"h");
        s.write(0, b"i");
        assert_eq!(s.uart.writer(), b"hi");
        assert!(irq.read().unwrap() >= 1);
        // Input lands in the receive buffer.
        assert_eq!(s.enqueue_input(b"x"), 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    /// A UART with "transmitter empty" pending raises it again when asked,
    /// and one with nothing pending stays quiet.
    #[test]
    fn raise_pending_raises_only_what_is_pending() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let quiet = SerialDevice::new(irq.try_clone().unwrap(), Vec::new());
        quiet.raise_pending().unwrap();
        assert!(irq.read().is_err(), "nothing pending, nothing raised");

        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Vec::new());
        s.write(1, &[0x02]);
        s.write(0, b"h");
        assert_eq!(irq.read().unwrap(), 1);
        s.raise_pending().unwrap();
        assert_eq!(irq.read().unwrap(), 1, "THR empty is still pending");
        let mut iir = [0u8];
        s.read(2, &mut iir);
        assert_eq!(iir[0] & IIR_NO_INTERRUPT, 0, "read once, then cleared");
        s.raise_pending().unwrap();
        assert!(irq.read().is_err(), "acknowledged, nothing raised");
    }
}

//! The one piece of the i8042 keyboard controller a Linux guest needs: the
//! CPU reset line. With `reboot=k` (the kernel's default order on many
//! configurations, and what Firecracker's documentation recommends) a guest
//! reboots by waiting for the controller's input buffer to be empty (status
//! port 0x64, bit 1) and writing the pulse-reset command 0xFE there. Without
//! the controller the wait times out and the guest falls back to other
//! methods, and the VM takes about a minute to end.
//!
//! There is no keyboard or mouse: the status register always reads "both
//! buffers empty", and the data port reads 0. The guest's i8042 driver does
//! not bind, as perfvmm's ACPI tables declare no PS/2 controller.

use super::bus::BusDevice;
use super::power::{PowerEvent, PowerEventSink};

/// The data port and the status/command port.
pub const DATA_PORT: u16 = 0x60;
pub const COMMAND_PORT: u16 = 0x64;

/// The command that pulses the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// One byte at either port; which one is told apart by the owner.
pub struct I8042<S: PowerEventSink> {
    sink: S,
    port: u16,
}

impl<S: PowerEventSink> I8042<S> {
    /// The device behind `port` (`DATA_PORT` or `COMMAND_PORT`).
    pub fn new(sink: S, port: u16) -> Self {
        Self { sink, port }
    }
}

impl<S: PowerEventSink> BusDevice for I8042<S> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output and input buffers empty; data: nothing to read.
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if self.port == COMMAND_PORT && data.first() == Some(&CMD_RESET_CPU) {
            log::info!("i8042: the guest pulsed the CPU reset line (reboot=k)");
            self.sink.power_event(PowerEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::power::Chan;
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn only_0xfe_on_the_command_port_resets() {
        let (tx, rx) = mpsc::channel();
        let mut cmd = I8042::new(Chan(tx.clone()), COMMAND_PORT);
        let mut data = I8042::new(Chan(tx), DATA_PORT);
        let mut status = [0xffu8];
        cmd.read(0, &mut status);
        assert_eq!(
            status,
            [0],
            "input buffer empty: the guest's wait ends at once"
        );
        data.write(0, &[CMD_RESET_CPU]);
        cmd.write(0, &[0xaa]);
        cmd.write(0, &[]);
        assert!(rx.try_recv().is_err());
        cmd.write(0, &[CMD_RESET_CPU]);
        assert_eq!(rx.try_recv(), Ok(PowerEvent::Reset));
    }
}

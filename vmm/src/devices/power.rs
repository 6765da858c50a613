//! The hardware-reduced ACPI sleep-control, sleep-status and reset
//! registers named in the FADT. A guest `poweroff` writes `SLP_TYP=S5 |
//! SLP_EN` to sleep control; a reboot writes the reset value.

use crate::layout::{ACPI_RESET_VALUE, ACPI_S5_SLP_TYP};

use super::bus::BusDevice;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// Offsets from the device's base port.
pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 = 1;
pub const RESET: u64 = 2;
pub const PORT_COUNT: u64 = 3;

/// What the guest asked the platform to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    PowerOff,
    Reset,
}

/// Receives the guest's power requests.
pub trait PowerEventSink: Send {
    fn power_event(&self, event: PowerEvent);
}

pub struct PowerDevice<S: PowerEventSink> {
    sink: S,
}

impl<S: PowerEventSink> PowerDevice<S> {
    pub fn new(sink: S) -> Self {
        Self { sink }
    }
}

impl<S: PowerEventSink> BusDevice for PowerDevice<S> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No wake status is ever pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        log::debug!("power: write {value:#x} at offset {offset}");
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 => {
                let typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if typ == ACPI_S5_SLP_TYP {
                    self.sink.power_event(PowerEvent::PowerOff);
                } else {
                    log::info!("power: guest asked for sleep type {typ}, which is not supported");
                }
            }
            RESET if value == ACPI_RESET_VALUE => self.sink.power_event(PowerEvent::Reset),
            _ => {}
        }
    }
}

/// A sink that passes power events to a channel, for device tests.
#[cfg(test)]
pub(crate) struct Chan(pub std::sync::mpsc::Sender<PowerEvent>);

#[cfg(test)]
impl PowerEventSink for Chan {
    fn power_event(&self, e: PowerEvent) {
        self.0.send(e).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn decodes_s5_and_reset() {
        let (tx, rx) = mpsc::channel();
        let mut d = PowerDevice::new(Chan(tx));
        d.write(SLEEP_CONTROL, &[(ACPI_S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(rx.try_recv(), Ok(PowerEvent::PowerOff));
        d.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: ignored
        d.write(SLEEP_CONTROL, &[ACPI_S5_SLP_TYP << 2]); // no SLP_EN
        d.write(RESET, &[0x7]);
        assert!(rx.try_recv().is_err());
        d.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(rx.try_recv(), Ok(PowerEvent::Reset));
        d.write(RESET, &[]);
    }
}

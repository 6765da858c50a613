//! Arbitrary guest accesses through the MMIO and port-I/O buses to the CPU
//! hotplug controller and the serial port, interleaved with perfvmm's own
//! requests to add and remove vCPUs: nothing panics, vCPU 0 is never
//! ejected, and the guest ejects only vCPUs perfvmm asked to remove.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use perfvmm::devices::bus::Bus;
use perfvmm::devices::cpu_hotplug::{CpuHotplugController, CpuStates, REGS_LEN};
use perfvmm::devices::serial::SerialDevice;
use vmm_sys_util::eventfd::EventFd;

const MAX: u32 = 6;
const HOTPLUG: u64 = 0x1000;
const COM1: u64 = 0x3f8;

fuzz_target!(|data: &[u8]| {
    let states = CpuStates::new(2, MAX);
    let mut mmio = Bus::new();
    let mut pio = Bus::new();
    let ctl = Arc::new(Mutex::new(CpuHotplugController::new(states.clone())));
    mmio.insert(ctl, HOTPLUG, REGS_LEN).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, std::io::sink())));
    pio.insert(serial.clone(), COM1, 8).unwrap();
    let mut asked = [false; MAX as usize];
    // Each operation: opcode, address byte, value (4 bytes).
    for op in data.chunks_exact(6) {
        let width = [1usize, 2, 4, 8][usize::from(op[0] >> 6)];
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&op[2..6]);
        match op[0] % 6 {
            0 => {
                mmio.read(HOTPLUG - 4 + u64::from(op[1] % 16), &mut buf[..width]);
            }
            1 => {
                mmio.write(HOTPLUG - 4 + u64::from(op[1] % 16), &buf[..width]);
            }
            2 => {
                pio.read(COM1 - 2 + u64::from(op[1] % 12), &mut buf[..width]);
            }
            3 => {
                pio.write(COM1 - 2 + u64::from(op[1] % 12), &buf[..width]);
            }
            4 => {
                let _ = serial.lock().unwrap().enqueue_input(&op[2..]);
            }
            _ => {
                // perfvmm asks for a vCPU to be added (even) or removed (odd).
                let i = usize::from(op[1]) % MAX as usize;
                let mut st = states.lock().unwrap();
                let slot = &mut st.slots[i];
                if op[2] % 2 == 0 && !slot.enabled {
                    slot.enabled = true;
                    slot.inserting = true;
                    asked[i] = false;
                } else if i != 0 && slot.enabled {
                    slot.removing = true;
                    slot.remove_requested = true;
                    asked[i] = true;
                }
            }
        }
        let mut st = states.lock().unwrap();
        assert!(st.slots[0].enabled, "vCPU 0 was ejected");
        for cpu in std::mem::take(&mut st.ejected) {
            assert!(asked[cpu as usize], "vCPU {cpu} ejected unasked");
            asked[cpu as usize] = false;
        }
    }
});

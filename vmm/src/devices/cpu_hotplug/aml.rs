//! The controller as the guest's ACPI sees it: the processor container
//! `\_SB.CPUS` (one `ACPI0007` device per possible vCPU, with `_STA`, `_MAT`
//! and `_EJ0` backed by the controller's registers, and the `CSCN` scan
//! method) and the Generic Event Device `\_SB.GED0`, whose interrupt runs
//! `CSCN`.
//!
//! The registers are declared as named fields over the controller's window
//! (`CSEL`, and `CSTS` split into the bits `CPEN`, `CINS`, `CRMV`, `CEJ0`),
//! written with `WriteAsZeros` so that setting one bit acknowledges only
//! that bit.

use acpi_tables::aml::{self, Arg, Local};
use acpi_tables::{Aml, AmlSink};

use super::{CSTS, REGS_LEN, STS_EJECT, STS_ENABLED, STS_INSERTING, STS_REMOVING};
use crate::aml::{append, RawAml};

// The field list below lays the status bits out in this order.
const _: () = assert!(CSTS == 4);
const _: () = assert!(STS_ENABLED == 1 && STS_INSERTING == 2);
const _: () = assert!(STS_REMOVING == 4 && STS_EJECT == 8);

/// ACPI notification values (ACPI 6.5, 5.6.6).
const NOTIFY_DEVICE_CHECK: u8 = 1;
const NOTIFY_EJECT_REQUEST: u8 = 3;

/// The AML of the CPU hotplug controller.
pub struct CpuHotplugAml {
    /// Possible vCPUs: one processor device each.
    pub max_vcpus: u32,
    /// Guest-physical address of the controller's registers.
    pub regs: u64,
    /// The GED's interrupt.
    pub ged_irq: u32,
}

impl CpuHotplugAml {
    fn registers(&self, out: &mut Vec<u8>) {
        let len = REGS_LEN as u32;
        append(
            &aml::OpRegion::new(
                "PRST".into(),
                aml::OpRegionSpace::SystemMemory,
                &self.regs,
                &len,
            ),
            out,
        );
        append(
            &aml::Field::new(
                "PRST".into(),
                aml::FieldAccessType::DWord,
                aml::FieldLockRule::NoLock,
                aml::FieldUpdateRule::WriteAsZeroes,
                vec![
                    aml::FieldEntry::Named(*b"CSEL", 32),
                    aml::FieldEntry::Named(*b"CPEN", 1),
                    aml::FieldEntry::Named(*b"CINS", 1),
                    aml::FieldEntry::Named(*b"CRMV", 1),
                    aml::FieldEntry::Named(*b"CEJ0", 1),
                    aml::FieldEntry::Reserved(28),
                ],
            ),
            out,
        );
        append(&aml::Mutex::new("CLCK".into(), 0), out);
    }

    /// `STAT(cpu)`: 0xF when the vCPU is enabled, else 0.
    fn stat(out: &mut Vec<u8>) {
        append(
            &aml::Method::new(
                "STAT".into(),
                1,
                true,
                vec![
                    &aml::Acquire::new("CLCK".into(), 0xffff),
                    &aml::Store::new(&aml::Path::new("CSEL"), &Arg(0)),
                    &aml::Store::new(&Local(0), &aml::Path::new("CPEN")),
                    &aml::Release::new("CLCK".into()),
                    &aml::If::new(
                        &aml::Equal::new(&Local(0), &aml::ONE),
                        vec![&aml::Return::new(&0xfu8)],
                    ),
                    &aml::Return::new(&aml::ZERO),
                ],
            ),
            out,
        );
    }

    /// `EJCT(cpu)`: the guest has offlined the vCPU; tell perfvmm.
    fn eject(out: &mut Vec<u8>) {
        append(
            &aml::Method::new(
                "EJCT".into(),
                1,
                true,
                vec![
                    &aml::Acquire::new("CLCK".into(), 0xffff),
                    &aml::Store::new(&aml::Path::new("CSEL"), &Arg(0)),
                    &aml::Store::new(&aml::Path::new("CEJ0"), &aml::ONE),
                    &aml::Release::new("CLCK".into()),
                ],
            ),
            out,
        );
    }

    /// `CTFY(cpu, event)`: notifies the processor device of that vCPU.
    fn notify(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        for i in 0..self.max_vcpus {
            append(
                &aml::If::new(
                    &aml::Equal::new(&Arg(0), &i),
                    vec![&aml::Notify::new(&aml::Path::new(&cpu_name(i)), &Arg(1))],
                ),
                &mut body,
            );
        }
        append(
            &aml::Method::new("CTFY".into(), 2, true, vec![&RawAml(body)]),
            out,
        );
    }

    /// `CSCN()`: for every vCPU with a pending insert (device check) or
    /// removal (eject request), acknowledges it and notifies the guest.
    fn scan(&self, out: &mut Vec<u8>) {
        let pending = |bit: &'static str, event: u8| -> Vec<u8> {
            let mut v = Vec::new();
            append(
                &aml::If::new(
                    &aml::Equal::new(&aml::Path::new(bit), &aml::ONE),
                    vec![
                        &aml::Store::new(&aml::Path::new(bit), &aml::ONE),
                        &aml::MethodCall::new("CTFY".into(), vec![&Local(0), &event]),
                    ],
                ),
                &mut v,
            );
            v
        };
        let insert = RawAml(pending("CINS", NOTIFY_DEVICE_CHECK));
        let remove = RawAml(pending("CRMV", NOTIFY_EJECT_REQUEST));
        append(
            &aml::Method::new(
                "CSCN".into(),
                0,
                true,
                vec![
                    &aml::Acquire::new("CLCK".into(), 0xffff),
                    &aml::Store::new(&Local(0), &aml::ZERO),
                    &aml::While::new(
                        &aml::LessThan::new(&Local(0), &self.max_vcpus),
                        vec![
                            &aml::Store::new(&aml::Path::new("CSEL"), &Local(0)),
                            &insert,
                            &remove,
                            &aml::Add::new(&Local(0), &Local(0), &aml::ONE),
                        ],
                    ),
                    &aml::Release::new("CLCK".into()),
                ],
            ),
            out,
        );
    }

    /// One `ACPI0007` processor device.
    fn processor(i: u32, out: &mut Vec<u8>) {
        // _MAT: a MADT local APIC entry (type 0, length 8, enabled).
        let mat = vec![0u8, 8, i as u8, i as u8, 1, 0, 0, 0];
        append(
            &aml::Device::new(
                cpu_name(i).as_str().into(),
                vec![
                    &aml::Name::new("_HID".into(), &"ACPI0007"),
                    &aml::Name::new("_UID".into(), &i),
                    &aml::Method::new(
                        "_STA".into(),
                        0,
                        false,
                        vec![&aml::Return::new(&aml::MethodCall::new(
                            "STAT".into(),
                            vec![&i],
                        ))],
                    ),
                    &aml::Method::new(
                        "_MAT".into(),
                        0,
                        false,
                        vec![&aml::Return::new(&aml::BufferData::new(mat))],
                    ),
                    &aml::Method::new(
                        "_EJ0".into(),
                        1,
                        false,
                        vec![&aml::MethodCall::new("EJCT".into(), vec![&i])],
                    ),
                ],
            ),
            out,
        );
    }

    fn ged(&self, out: &mut Vec<u8>) {
        append(
            &aml::Device::new(
                "GED0".into(),
                vec![
                    &aml::Name::new("_HID".into(), &"ACPI0013"),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                            true,
                            true,
                            false,
                            false,
                            self.ged_irq,
                        )]),
                    ),
                    &aml::Method::new(
                        "_EVT".into(),
                        1,
                        true,
                        vec![&aml::MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![])],
                    ),
                ],
            ),
            out,
        );
    }
}

/// The processor device of vCPU `i`: `C000`, `C001`, ...
fn cpu_name(i: u32) -> String {
    format!("C{i:03X}")
}

impl Aml for CpuHotplugAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let mut cpus = Vec::new();
        self.registers(&mut cpus);
        Self::stat(&mut cpus);
        Self::eject(&mut cpus);
        self.notify(&mut cpus);
        self.scan(&mut cpus);
        for i in 0..self.max_vcpus {
            Self::processor(i, &mut cpus);
        }
        let mut out = Vec::new();
        append(
            &aml::Device::new(
                "CPUS".into(),
                vec![
                    &aml::Name::new("_HID".into(), &"ACPI0010"),
                    &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A05")),
                    &RawAml(cpus),
                ],
            ),
            &mut out,
        );
        self.ged(&mut out);
        sink.vec(&out);
    }
}

//! ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) built with the `acpi_tables`
//! crate. The platform is hardware-reduced: power-off and reset go through
//! the FADT's sleep-control and reset registers, which perfvmm's power
//! device implements.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::aml::RawAml;
use crate::devices::cpu_hotplug::aml::CpuHotplugAml;
pub use crate::layout::MmioDeviceInfo;
use crate::layout::{
    ACPI_END, ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_START, COM1_IRQ, COM1_PORT, IOAPIC_ADDR, LAPIC_ADDR,
};

const OEM_ID: [u8; 6] = *b"PERFVM";
/// IA-PC boot architecture flags: no VGA, no CMOS RTC (the guest takes wall
/// time from kvm-clock). Without the RTC flag Linux probes ports 0x70/0x71
/// and waits seconds for an update cycle that never ends.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
const OEM_TABLE_ID: [u8; 8] = *b"PERFVMM ";
const OEM_REVISION: u32 = 1;

/// What the tables describe.
#[derive(Clone, Debug, Default)]
pub struct AcpiConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
    pub virtio_mmio: Vec<MmioDeviceInfo>,
    /// CPU hotplug: the controller's registers and the GED interrupt.
    pub cpu_hotplug: Option<CpuHotplugInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuHotplugInfo {
    pub regs: u64,
    pub ged_irq: u32,
}

/// Tables ready to be written, each with its guest address.
#[derive(Debug)]
pub struct AcpiTables {
    pub rsdp: GuestAddress,
    pub tables: Vec<(&'static str, GuestAddress, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {0} bytes, more than the {1} bytes reserved for them")]
    TooLarge(u64, u64),
    #[error("writing ACPI tables: {0}")]
    Memory(#[from] GuestMemoryError),
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn build_fadt(dsdt: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = io_gas(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_gas(ACPI_SLEEP_STATUS_PORT);
    fadt.reset_reg = io_gas(ACPI_RESET_PORT);
    fadt.reset_value = ACPI_RESET_VALUE;
    fadt.iapc_boot_arch =
        (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT).into();
    to_bytes(&fadt.finalize())
}

/// MADT revision 5 (ACPI 6.3) gives local APIC entries the "online
/// capable" flag; Linux then counts those vCPUs as hot-pluggable.
const MADT_REVISION: u8 = 5;

fn build_madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for id in 0..cfg.max_vcpus {
        // vCPUs above the boot count are present but not enabled, and
        // online capable, so the guest counts them as possible CPUs.
        let status = if id < cfg.boot_vcpus {
            EnabledStatus::Enabled
        } else {
            EnabledStatus::DisabledOnlineCapable
        };
        madt.add_structure(ProcessorLocalApic::new(id as u8, id as u8, status));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut bytes = to_bytes(&madt);
    // acpi_tables writes revision 1; raise it and fix the checksum.
    bytes[8] = MADT_REVISION;
    bytes[9] = 0;
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    bytes[9] = 0u8.wrapping_sub(sum);
    bytes
}

fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    // Each device is encoded in one statement so the AML temporaries it
    // borrows live long enough.
    let mut sb_body = Vec::new();
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut sb_body);

    for (i, dev) in cfg.virtio_mmio.iter().enumerate() {
        aml::Device::new(
            format!("V{i:03X}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &(i as u32)),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, dev.base as u32, dev.size as u32),
                        &aml::Interrupt::new(true, true, false, false, dev.irq),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(&mut sb_body);
    }

    if let Some(hp) = cfg.cpu_hotplug {
        CpuHotplugAml {
            max_vcpus: cfg.max_vcpus,
            regs: hp.regs,
            ged_irq: hp.ged_irq,
        }
        .to_aml_bytes(&mut sb_body);
    }

    let mut body = Vec::new();
    aml::Scope::new("\\_SB_".into(), vec![&RawAml(sb_body)]).to_aml_bytes(&mut body);
    let s5_typ = u32::from(ACPI_S5_SLP_TYP);
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&s5_typ, &s5_typ]))
        .to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

fn align8(v: u64) -> u64 {
    (v + 7) & !7
}

/// Builds all tables and assigns them addresses from [`ACPI_START`].
pub fn build_tables(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    let rsdp_addr = ACPI_START;
    let mut next = align8(rsdp_addr + Rsdp::len() as u64);

    let dsdt = build_dsdt(cfg);
    let dsdt_addr = next;
    next = align8(next + dsdt.len() as u64);

    let fadt = build_fadt(dsdt_addr);
    let fadt_addr = next;
    next = align8(next + fadt.len() as u64);

    let madt = build_madt(cfg);
    let madt_addr = next;
    next = align8(next + madt.len() as u64);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let xsdt_addr = next;
    next += xsdt.len() as u64;

    if next > ACPI_END {
        return Err(AcpiError::TooLarge(
            next - ACPI_START,
            ACPI_END - ACPI_START,
        ));
    }
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        rsdp: GuestAddress(rsdp_addr),
        tables: vec![
            ("RSDP", GuestAddress(rsdp_addr), rsdp),
            ("DSDT", GuestAddress(dsdt_addr), dsdt),
            ("FACP", GuestAddress(fadt_addr), fadt),
            ("APIC", GuestAddress(madt_addr), madt),
            ("XSDT", GuestAddress(xsdt_addr), xsdt),
        ],
    })
}

/// Writes built tables into guest memory.
pub fn write_tables<M: GuestMemoryBackend>(mem: &M, t: &AcpiTables) -> Result<(), AcpiError> {
    for (_, addr, bytes) in &t.tables {
        mem.write_slice(bytes, *addr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> AcpiConfig {
        AcpiConfig {
            boot_vcpus: 2,
            max_vcpus: 8,
            virtio_mmio: vec![MmioDeviceInfo {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            }],
            cpu_hotplug: Some(CpuHotplugInfo {
                regs: 0xd100_1000,
                ged_irq: 6,
            }),
        }
    }

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_have_valid_lengths_and_checksums() {
        let t = build_tables(&sample()).unwrap();
        for (name, _, bytes) in &t.tables {
            if *name == "RSDP" {
                assert!(checksum_ok(&bytes[..20]));
                assert!(checksum_ok(bytes));
                continue;
            }
            assert_eq!(&bytes[..4], name.as_bytes());
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len(), "{name} length field");
            assert!(checksum_ok(bytes), "{name} checksum");
        }
        let madt = &t.tables.iter().find(|t| t.0 == "APIC").unwrap().2;
        // Header (44) + 8 local APICs (8 bytes each) + one IOAPIC (12).
        assert_eq!(madt.len(), 44 + 8 * 8 + 12);
        // Local APIC flags: the first two enabled, the rest online capable.
        let flags = |i: usize| madt[44 + i * 8 + 4];
        assert_eq!((flags(0), flags(1), flags(2), flags(7)), (1, 1, 2, 2));
        assert_eq!(madt[8], MADT_REVISION);
    }

    #[test]
    fn dsdt_declares_virtio_mmio_and_s5() {
        let t = build_tables(&sample()).unwrap();
        let dsdt = &t.tables.iter().find(|t| t.0 == "DSDT").unwrap().2;
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"LNRO0005"));
        assert!(has(b"_S5_"));
        assert!(has(b"COM1"));
        assert!(has(b"ACPI0013") && has(b"ACPI0010") && has(b"CSCN") && has(b"C007"));
    }

    /// Disassembles every table with iasl (Debian's acpica-tools) and fails
    /// on any error it reports.
    #[test]
    fn iasl_disassembles_tables_without_errors() {
        if Command::new("iasl").arg("-v").output().is_err() {
            // The test environment installs acpica-tools (scripts/setup-host.sh);
            // make its absence loud rather than silently passing.
            panic!("iasl not found: run scripts/setup-host.sh");
        }
        let t = build_tables(&sample()).unwrap();
        let dir = std::env::temp_dir().join(format!("perfvmm-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, _, bytes) in &t.tables {
            if *name == "RSDP" {
                continue;
            }
            let path = dir.join(format!("{name}.dat"));
            std::fs::write(&path, bytes).unwrap();
            let out = Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .current_dir(&dir)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl failed on {name}:\n{text}");
            assert!(
                !text.contains("Error"),
                "iasl reported errors on {name}:\n{text}"
            );
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            assert!(
                !dsl.contains("**** Unknown"),
                "iasl could not decode part of {name}:\n{dsl}"
            );
        }
        if std::env::var_os("PERFVMM_KEEP_ACPI").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

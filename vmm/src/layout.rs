//! Guest physical memory layout and the fixed addresses the VMM and the
//! guest agree on. Everything that places something in guest memory or on a
//! bus takes its address from here.

/// Global descriptor table used to enter 64-bit mode.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) loaded before entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT, four PDs (4 GiB in 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 `COMMAND_LINE_SIZE`, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; conventional RAM ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables live in the BIOS read-only area, where Linux also scans for
/// the RSDP; the zero page's `acpi_rsdp_addr` points at it too.
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;
/// The x86 reset vector (real mode F000:FFF0). Linux on a hardware-reduced
/// ACPI platform without EFI reboots by jumping here ("BIOS" reboot), so a
/// tiny stub here writes the ACPI reset register.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Where high memory (and the kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;

/// Hole below 4 GiB for device MMIO; RAM above it is relocated past 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// virtio-mmio device windows: slot `n` is at `VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_SLOTS: u64 = 32;
/// Boot-timer MMIO address: the guest's `/init` writes [`BOOT_TIMER_MAGIC`] here.
pub const BOOT_TIMER_ADDR: u64 = 0xd100_0000;
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// ACPI CPU hotplug controller registers (see `devices::cpu_hotplug`).
pub const CPU_HOTPLUG_ADDR: u64 = 0xd100_1000;
/// The Generic Event Device's interrupt: "rescan the hotplug controllers".
pub const GED_IRQ: u32 = 6;

/// KVM needs three pages for the TSS on Intel hosts; keep them out of RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The in-kernel IOAPIC has 24 pins.
pub const IOAPIC_PINS: u32 = 24;

/// Legacy COM1.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// ACPI hardware-reduced sleep control / status and reset registers.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The `SLP_TYP` value the DSDT's `_S5` object announces.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// Interrupts of virtio-mmio slots 0, 1, 2 (COM1 takes 4, the GED 6).
pub const VIRTIO_IRQS: [u32; 3] = [5, 10, 11];
/// The virtio-mmio slot of each device.
pub const PERF_HINT_SLOT: usize = 0;
pub const BALLOON_SLOT: usize = 1;
pub const VIRTIO_MEM_SLOT: usize = 2;

/// The highest APIC ID an xAPIC MADT entry can name (255 is broadcast).
pub const MAX_APIC_ID: u32 = 254;

/// A virtio-mmio device as the guest must find it: its window and interrupt
/// (`LNRO0005` in the DSDT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

/// virtio-mmio slot `n` (one of [`PERF_HINT_SLOT`], [`BALLOON_SLOT`],
/// [`VIRTIO_MEM_SLOT`]): its window and interrupt.
pub fn virtio_slot(n: usize) -> MmioDeviceInfo {
    MmioDeviceInfo {
        base: VIRTIO_MMIO_BASE + n as u64 * VIRTIO_MMIO_SIZE,
        size: VIRTIO_MMIO_SIZE,
        irq: VIRTIO_IRQS[n],
    }
}

//! x86-64 CPU state for booting Linux: CPUID, MSRs, registers, page tables,
//! GDT and the local APIC.

pub mod cpu_template;
pub mod cpuid;
pub mod lapic;
pub mod msrs;
pub mod regs;

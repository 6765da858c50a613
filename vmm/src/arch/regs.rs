//! Registers, segments, GDT and identity page tables for the 64-bit Linux
//! boot protocol entry.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, IDENTITY_MAPPED_GIB, PDE_START,
    PDPTE_START, PML4_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT entries: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE_SEL: usize = 1;
const DATA_SEL: usize = 2;
const TSS_SEL: usize = 3;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let bit = |shift: u64, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bit(55, 1);
    kvm_segment {
        base,
        // Limit in bytes when the granularity bit is set.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: (index * 8) as u16,
        type_: bit(40, 0xf),
        present: bit(47, 1),
        dpl: bit(45, 3),
        db: bit(54, 1),
        s: bit(44, 1),
        l: bit(53, 1),
        g,
        avl: bit(52, 1),
        padding: 0,
        unusable: if bit(47, 1) == 0 { 1 } else { 0 },
    }
}

/// Writes the GDT, an empty IDT and 4 GiB of identity-mapped 2 MiB pages.
pub fn write_boot_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), GuestMemoryError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;

    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(PDPTE_START + gib * 8))?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            // Present, writable, 2 MiB page.
            mem.write_obj(addr | 0x83, GuestAddress(pd + i * 8))?;
        }
    }
    Ok(())
}

/// Long-mode special registers for the boot vCPU, starting from KVM's defaults.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(GDT[CODE_SEL], CODE_SEL);
    let data = segment_from_gdt(GDT[DATA_SEL], DATA_SEL);
    let tss = segment_from_gdt(GDT[TSS_SEL], TSS_SEL);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers for the 64-bit boot protocol: `rsi` points at the zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// x87/SSE control words as after `FNINIT`.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_mmio::GuestMem;

    #[test]
    fn code_segment_is_long_mode() {
        let cs = segment_from_gdt(GDT[CODE_SEL], CODE_SEL);
        assert_eq!(cs.l, 1);
        assert_eq!(cs.present, 1);
        assert_eq!(cs.selector, 8);
        assert_eq!(cs.limit, 0xffff_ffff);
        let tss = segment_from_gdt(GDT[TSS_SEL], TSS_SEL);
        assert_eq!(tss.type_, 0xb);
    }

    #[test]
    fn page_tables_identity_map() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 5)).unwrap();
        assert_eq!(pde, (5 << 21) | 0x83);
        let last_pd = PDE_START + 3 * 0x1000;
        let pde: u64 = mem.read_obj(GuestAddress(last_pd + 8 * 511)).unwrap();
        assert_eq!(pde & !0xfff, (3 << 30) | (511 << 21));
    }
}

//! Per-vCPU CPUID: KVM's supported set, with the topology leaves rewritten so
//! that vCPU `index` has APIC ID `index` in a single package of `max` cores.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const AMD_ECX_TOPOEXT: u32 = 1 << 22;

/// Topology level types in leaf 0xb's ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Number of APIC-ID bits needed to number `count` items.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites `cpuid` (KVM's supported CPUID) for vCPU `index` of a VM that
/// may have up to `max_vcpus`.
pub fn configure(cpuid: &mut CpuId, index: u32, max_vcpus: u32) {
    let apic_id = index;
    let core_bits = id_bits(max_vcpus);
    // Leaves whose topology we do not describe are removed rather than left
    // describing the host.
    let entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_EXT_TOPOLOGY_V2 && e.function != LEAF_AMD_TOPOLOGY)
        .copied()
        .collect();
    let mut out = Vec::with_capacity(entries.len());
    for mut e in entries {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((max_vcpus.min(255)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if max_vcpus > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: logical
                // processors sharing this cache - 1 (L3 is shared, the rest private).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { max_vcpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff)
                    | ((max_vcpus.min(64) - 1) << 26)
                    | ((sharing.min(0xfff)) << 14);
            }
            LEAF_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = max_vcpus;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_EXT_FEATURES => {
                e.ecx &= !AMD_ECX_TOPOEXT;
                if max_vcpus > 1 {
                    e.ecx |= AMD_ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[7:0]: cores - 1; ECX[15:12]: APIC ID bits for cores.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (max_vcpus - 1).min(255);
            }
            _ => {}
        }
        out.push(e);
    }
    // The entry count only shrinks, so the FAM wrapper accepts it.
    if let Ok(new) = CpuId::from_entries(&out) {
        *cpuid = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn topology_leaves_name_the_vcpu() {
        let mut c = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY_V2, 0),
            entry(LEAF_AMD_SIZE_IDS, 0),
        ])
        .unwrap();
        configure(&mut c, 3, 8);
        let s = c.as_slice();
        assert_eq!(s.len(), 4, "leaf 0x1f is dropped");
        assert_eq!(s[0].ebx >> 24, 3);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!(s[2].ebx, 8);
        assert_eq!(s[2].eax, 3);
        assert_eq!(s[3].ecx & 0xff, 7);
    }

    #[test]
    fn id_bits_counts() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}

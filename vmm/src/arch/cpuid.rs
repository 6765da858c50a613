//! Per-vCPU CPUID: KVM's supported set, with the topology leaves rewritten so
//! that vCPU `index` has (x2)APIC ID `index` in a single package of `max`
//! cores, one thread per core.
//!
//! KVM's supported CPUID (`KVM_GET_SUPPORTED_CPUID`, Linux 5.19 and later)
//! deliberately describes no topology: leaves 0xB and 0x1F come as a single
//! all-zero sub-leaf 0 (flagged as indexed), and AMD's 0x8000001E is zeroed.
//! Editing only the entries KVM lists therefore gives a guest an SMT level
//! and no core level (sub-leaf 1 reads as zeros, the end of the list), and
//! libomp's x2APIC decoding aborts on it ("core_level != -1"). So the
//! extended topology leaves are built here whole, not edited:
//!
//! | sub-leaf | level type | EAX (ID shift to the next level) | EBX (logical CPUs) |
//! | --- | --- | --- | --- |
//! | 0 | SMT (1) | 0 | 1 |
//! | 1 | core (2) | bits for `max` cores | `max` |
//! | 2 | invalid (0): the end | 0 | 0 |
//!
//! each with EDX = the x2APIC ID and `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`, so
//! that KVM answers each sub-leaf with its own entry. Leaf 0x1F carries the
//! same levels when the basic range reaches it. The legacy leaves (1, 4 and
//! AMD's 0x80000008) say the same: `max` cores in one package, with
//! `1 << bits` addressable IDs. AMD's extended topology (TOPOEXT, leaves
//! 0x8000001D/0x8000001E) is hidden, so that a Linux guest on an AMD host
//! takes its topology from 0x80000008 and the APIC IDs rather than from a
//! leaf KVM leaves zeroed.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_BASIC_MAX: u32 = 0x0;
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
const LEVEL_INVALID: u32 = 0;
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

/// The sub-leaves of an extended topology leaf (0xB or 0x1F) for the vCPU
/// with x2APIC ID `apic_id`: SMT, core, and the terminating invalid level.
fn extended_topology(function: u32, apic_id: u32, max_vcpus: u32) -> [kvm_cpuid_entry2; 3] {
    let level = |index: u32, level_type: u32, shift: u32, count: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count.min(0xffff),
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        level(0, LEVEL_SMT, 0, 1),
        level(1, LEVEL_CORE, id_bits(max_vcpus), max_vcpus),
        level(2, LEVEL_INVALID, 0, 0),
    ]
}

/// Rewrites `cpuid` (KVM's supported CPUID) for vCPU `index` of a VM that
/// may have up to `max_vcpus`.
/// The host-describing leaves are replaced by the CPU template first
/// ([`super::cpu_template`]).
pub fn configure(cpuid: &mut CpuId, index: u32, max_vcpus: u32) {
    let templated = super::cpu_template::apply(cpuid.as_slice());
    let entries = configured_entries(&templated, index, max_vcpus);
    match CpuId::from_entries(&entries) {
        Ok(new) => *cpuid = new,
        // KVM lists a few dozen entries and this adds at most five; the
        // wrapper holds 256.
        Err(e) => log::warn!(
            "vCPU {index}: CPUID with {} entries not accepted ({e:?}); the guest sees KVM's topology",
            entries.len()
        ),
    }
}

/// The entries of `supported` configured for vCPU `index` of `max_vcpus`.
fn configured_entries(
    supported: &[kvm_cpuid_entry2],
    index: u32,
    max_vcpus: u32,
) -> Vec<kvm_cpuid_entry2> {
    let max_vcpus = max_vcpus.max(1);
    let apic_id = index;
    let core_bits = id_bits(max_vcpus);
    // Addressable core IDs in the package: what leaves 1 and 4 count.
    let addressable = 1u32 << core_bits;
    // The basic range must reach leaf 0xB; it reaches 0x1F only if KVM's does.
    let max_basic = supported
        .iter()
        .find(|e| e.function == LEAF_BASIC_MAX)
        .map_or(LEAF_EXT_TOPOLOGY, |e| e.eax.max(LEAF_EXT_TOPOLOGY));
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.len() + 6);
    for e in supported {
        let mut e = *e;
        match e.function {
            // Built below; AMD's topology leaf is hidden with TOPOEXT.
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 | LEAF_AMD_TOPOLOGY => continue,
            LEAF_BASIC_MAX => e.eax = max_basic,
            LEAF_FEATURES => {
                // EBX[31:24]: initial APIC ID; EBX[23:16]: addressable
                // logical processor IDs in the package.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (addressable.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if max_vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // The sub-leaf that ends the list (cache type 0) stays zero.
            LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
                // EAX[31:26]: addressable core IDs - 1; EAX[25:14]: addressable
                // IDs sharing this cache - 1 (L3 is shared, the rest private).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { addressable - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff)
                    | ((addressable.min(64) - 1) << 26)
                    | (sharing.min(0xfff) << 14);
            }
            LEAF_EXT_FEATURES => {
                e.ecx &= !AMD_ECX_TOPOEXT;
                if max_vcpus > 1 {
                    e.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_ECX_CMP_LEGACY;
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
    out.extend(extended_topology(LEAF_EXT_TOPOLOGY, apic_id, max_vcpus));
    if max_basic >= LEAF_EXT_TOPOLOGY_V2 {
        out.extend(extended_topology(LEAF_EXT_TOPOLOGY_V2, apic_id, max_vcpus));
    }
    out
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

    fn indexed(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..entry(function, index)
        }
    }

    /// The shape of KVM_GET_SUPPORTED_CPUID in the nested harness's L1
    /// (Linux 6.1, QEMU `-cpu EPYC`: basic leaves up to 0xD, extended up to
    /// 0x8000001E): leaf 0xB is one zeroed, indexed sub-leaf 0; no 0x1F;
    /// 0x8000001E zeroed; TOPOEXT offered.
    fn kvm_61_on_epyc() -> CpuId {
        let mut leaf0 = entry(LEAF_BASIC_MAX, 0);
        leaf0.eax = 0xd;
        let mut ext = entry(LEAF_EXT_FEATURES, 0);
        ext.ecx = AMD_ECX_TOPOEXT | AMD_ECX_CMP_LEGACY;
        let mut sizes = entry(LEAF_AMD_SIZE_IDS, 0);
        sizes.eax = 0x3030;
        CpuId::from_entries(&[
            leaf0,
            entry(LEAF_FEATURES, 0),
            kvm_cpuid_entry2 {
                eax: 0x121, // a level-1 data cache
                ..indexed(LEAF_CACHE_PARAMS, 0)
            },
            indexed(0x7, 0),
            indexed(LEAF_EXT_TOPOLOGY, 0),
            indexed(0xd, 0),
            indexed(0xd, 1),
            entry(0x8000_0000, 0),
            ext,
            sizes,
            indexed(0x8000_001d, 0),
            entry(LEAF_AMD_TOPOLOGY, 0),
        ])
        .unwrap()
    }

    /// What the guest's CPUID instruction returns, as KVM looks it up: the
    /// entry for the function (and the sub-leaf, when the entry is flagged
    /// as indexed), else zeros.
    fn cpuid(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> [u32; 4] {
        entries
            .iter()
            .find(|e| {
                e.function == function
                    && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
            })
            .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
    }

    /// Walks an extended topology leaf the way libomp and Linux do: sub-leaf
    /// by sub-leaf until a level of type 0; returns (type, shift, count) of
    /// each level before it and the x2APIC ID.
    fn levels(entries: &[kvm_cpuid_entry2], leaf: u32) -> (Vec<(u32, u32, u32)>, u32) {
        let mut levels = Vec::new();
        for index in 0..8 {
            let [eax, ebx, ecx, _] = cpuid(entries, leaf, index);
            let level_type = (ecx >> 8) & 0xff;
            if level_type == LEVEL_INVALID {
                return (levels, cpuid(entries, leaf, 0)[3]);
            }
            assert_eq!(ecx & 0xff, index, "ECX[7:0] echoes the sub-leaf");
            levels.push((level_type, eax & 0x1f, ebx & 0xffff));
        }
        panic!("leaf {leaf:#x} has no terminating level: {levels:?}");
    }

    fn configured(supported: &CpuId, index: u32, max: u32) -> Vec<kvm_cpuid_entry2> {
        let mut c = supported.clone();
        configure(&mut c, index, max);
        c.as_slice().to_vec()
    }

    #[test]
    fn kvm_supported_cpuid_alone_has_no_core_level() {
        // The bug: sub-leaf 1 of leaf 0xB is not in KVM's list, so it reads
        // as zeros, the end of the levels, right after sub-leaf 0.
        let kvm = kvm_61_on_epyc();
        assert_eq!(levels(kvm.as_slice(), LEAF_EXT_TOPOLOGY).0, []);
        assert!(kvm
            .as_slice()
            .iter()
            .all(|e| e.function != LEAF_EXT_TOPOLOGY || e.index == 0));
    }

    #[test]
    fn leaf_0xb_has_smt_core_and_end_levels_for_every_vcpu() {
        let kvm = kvm_61_on_epyc();
        for max in [1, 2, 3, 4, 8, 64] {
            let bits = id_bits(max);
            for index in 0..max {
                let c = configured(&kvm, index, max);
                let (lv, apic) = levels(&c, LEAF_EXT_TOPOLOGY);
                assert_eq!(
                    lv,
                    [(LEVEL_SMT, 0, 1), (LEVEL_CORE, bits, max)],
                    "max={max} index={index}"
                );
                assert_eq!(apic, index, "x2APIC ID = vCPU index");
                // Decoded as libomp does: thread, core and package IDs.
                let thread = apic & ((1 << lv[0].1) - 1);
                let core = (apic >> lv[0].1) & ((1 << (lv[1].1 - lv[0].1)) - 1);
                let package = apic >> lv[1].1;
                assert_eq!((package, core, thread), (0, index, 0));
                // Every sub-leaf names the same x2APIC ID and is indexed.
                for e in c.iter().filter(|e| e.function == LEAF_EXT_TOPOLOGY) {
                    assert_eq!(e.edx, index);
                    assert_eq!(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 1);
                }
                // The legacy APIC ID in leaf 1 agrees.
                assert_eq!(cpuid(&c, LEAF_FEATURES, 0)[1] >> 24, index);
            }
        }
    }

    #[test]
    fn hot_added_vcpus_get_the_same_levels_as_boot_vcpus() {
        // A hot-added vCPU is configured like a boot one, from the same
        // supported CPUID and max: only its APIC ID differs.
        let kvm = kvm_61_on_epyc();
        let boot = configured(&kvm, 0, 4);
        let added = configured(&kvm, 3, 4);
        assert_eq!(boot.len(), added.len());
        for (b, a) in boot.iter().zip(&added) {
            assert_eq!((b.function, b.index), (a.function, a.index));
            if b.function == LEAF_EXT_TOPOLOGY {
                assert_eq!((b.eax, b.ebx, b.ecx), (a.eax, a.ebx, a.ecx));
            } else if b.function == LEAF_FEATURES {
                assert_eq!(b.ebx & 0x00ff_ffff, a.ebx & 0x00ff_ffff);
            } else {
                assert_eq!(b, a, "leaf {:#x}", b.function);
            }
        }
    }

    #[test]
    fn the_template_s_caches_get_the_vm_s_sharing() {
        let templated = super::super::cpu_template::apply(kvm_61_on_epyc().as_slice());
        let c = configured_entries(&templated, 1, 4);
        // L3 (sub-leaf 3) is shared by the package's 4 addressable IDs, L1
        // is private; the sub-leaf that ends the list stays all zero.
        assert_eq!((cpuid(&c, LEAF_CACHE_PARAMS, 3)[0] >> 14) & 0xfff, 3);
        assert_eq!((cpuid(&c, LEAF_CACHE_PARAMS, 0)[0] >> 14) & 0xfff, 0);
        assert_eq!(cpuid(&c, LEAF_CACHE_PARAMS, 4), [0; 4]);
    }

    #[test]
    fn each_function_and_subleaf_appears_once() {
        let c = configured(&kvm_61_on_epyc(), 1, 4);
        let mut keys: Vec<(u32, u32)> = c.iter().map(|e| (e.function, e.index)).collect();
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n, "{keys:x?}");
    }

    #[test]
    fn leaf_0x1f_mirrors_0xb_only_where_the_basic_range_reaches_it() {
        let epyc = configured(&kvm_61_on_epyc(), 2, 4);
        assert!(epyc.iter().all(|e| e.function != LEAF_EXT_TOPOLOGY_V2));
        assert_eq!(cpuid(&epyc, LEAF_BASIC_MAX, 0)[0], 0xd);

        let mut leaf0 = entry(LEAF_BASIC_MAX, 0);
        leaf0.eax = 0x1f;
        let mut host_1f = indexed(LEAF_EXT_TOPOLOGY_V2, 0);
        host_1f.ebx = 96; // a host's topology must not leak through
        let intel = CpuId::from_entries(&[leaf0, indexed(LEAF_EXT_TOPOLOGY, 0), host_1f]).unwrap();
        let c = configured(&intel, 2, 4);
        assert_eq!(
            levels(&c, LEAF_EXT_TOPOLOGY_V2),
            levels(&c, LEAF_EXT_TOPOLOGY)
        );
        assert_eq!(
            levels(&c, LEAF_EXT_TOPOLOGY_V2),
            (vec![(LEVEL_SMT, 0, 1), (LEVEL_CORE, 2, 4)], 2)
        );
    }

    #[test]
    fn basic_range_is_raised_to_reach_leaf_0xb() {
        let mut leaf0 = entry(LEAF_BASIC_MAX, 0);
        leaf0.eax = 0x7;
        let c = configured(&CpuId::from_entries(&[leaf0]).unwrap(), 1, 2);
        assert_eq!(cpuid(&c, LEAF_BASIC_MAX, 0)[0], LEAF_EXT_TOPOLOGY);
        assert_eq!(
            levels(&c, LEAF_EXT_TOPOLOGY),
            (vec![(LEVEL_SMT, 0, 1), (LEVEL_CORE, 1, 2)], 1)
        );
    }

    #[test]
    fn legacy_and_amd_leaves_describe_the_same_package() {
        let c = configured(&kvm_61_on_epyc(), 3, 3);
        let [_, ebx, ecx, edx] = cpuid(&c, LEAF_FEATURES, 0);
        assert_eq!(ebx >> 24, 3, "initial APIC ID");
        assert_eq!((ebx >> 16) & 0xff, 4, "addressable IDs: 2 bits for 3 cores");
        assert_ne!(ecx & ECX_HYPERVISOR, 0);
        assert_ne!(edx & EDX_HTT, 0);
        assert_eq!(cpuid(&c, LEAF_CACHE_PARAMS, 0)[0] >> 26, 3);
        // AMD: TOPOEXT hidden with its leaf; 0x80000008 counts the cores.
        assert_eq!(cpuid(&c, LEAF_EXT_FEATURES, 0)[2] & AMD_ECX_TOPOEXT, 0);
        assert_ne!(cpuid(&c, LEAF_EXT_FEATURES, 0)[2] & AMD_ECX_CMP_LEGACY, 0);
        assert!(c.iter().all(|e| e.function != LEAF_AMD_TOPOLOGY));
        let [eax, _, ecx, _] = cpuid(&c, LEAF_AMD_SIZE_IDS, 0);
        assert_eq!(eax, 0x3030, "address sizes untouched");
        assert_eq!(ecx & 0xff, 2, "NC: 3 cores - 1");
        assert_eq!((ecx >> 12) & 0xf, 2, "ApicIdCoreIdSize");

        let one = configured(&kvm_61_on_epyc(), 0, 1);
        assert_eq!(cpuid(&one, LEAF_FEATURES, 0)[3] & EDX_HTT, 0);
        assert_eq!(cpuid(&one, LEAF_EXT_FEATURES, 0)[2] & AMD_ECX_CMP_LEGACY, 0);
        assert_eq!(
            levels(&one, LEAF_EXT_TOPOLOGY),
            (vec![(LEVEL_SMT, 0, 1), (LEVEL_CORE, 0, 1)], 0)
        );
    }

    #[test]
    fn id_bits_counts() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}

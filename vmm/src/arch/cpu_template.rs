//! The CPU template: what of the host's CPUID a guest may see.
//!
//! KVM's supported CPUID describes the host: its family, model and
//! stepping, its caches, its PMU, its frequency. perfvmm's guests should
//! learn nothing about where they run, so, as Firecracker's CPU templates
//! and QEMU's named CPU models do, these leaves are replaced by one fixed,
//! documented description per vendor (`docs/security.md`, "CPU template"):
//!
//! | leaf | what the guest sees |
//! | --- | --- |
//! | 0x0 | the host's vendor (kept: the instruction set differs) |
//! | 0x1 EAX | AMD: family 0x17 model 0x01 stepping 2; Intel: family 6 model 0x55 stepping 4 |
//! | 0x2 | Intel: "no descriptors, see leaf 4" |
//! | 0x4 | L1d and L1i 32 KiB 8-way, L2 1 MiB 16-way, L3 16 MiB 16-way, 64-byte lines (sharing and core counts: `cpuid.rs`) |
//! | 0x6 | thermal and power management: nothing |
//! | 0xA | no architectural PMU (version 0) |
//! | 0x16, 0x80000022, 0x8000001D | removed (frequencies, AMD PMU v2, AMD cache topology) |
//! | 0x40000001 EAX | KVM features without steal time |
//! | 0x80000001 ECX | AMD core, northbridge and L3 performance counters cleared |
//! | 0x80000002-4 | brand string "perfvmm virtual CPU" |
//! | 0x80000005, 0x80000006 | the same caches, in AMD's format; no TLB details |
//!
//! Feature flags (leaves 0x1 ECX/EDX, 0x7, 0xD, 0x80000001 EDX) stay what
//! KVM supports on this host: a guest must not be told of an instruction
//! the host cannot run. The topology leaves are rewritten afterwards, per
//! vCPU, by [`super::cpuid`].

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_DESCRIPTORS: u32 = 0x2;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_THERMAL: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_FREQUENCY: u32 = 0x16;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_BRAND: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];
const LEAF_AMD_L1: u32 = 0x8000_0005;
const LEAF_AMD_L2_L3: u32 = 0x8000_0006;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_PMU_V2: u32 = 0x8000_0022;

/// The brand string (leaves 0x80000002-4, NUL-padded to 48 bytes).
pub const BRAND: &str = "perfvmm virtual CPU";

/// Leaf 1 EAX: AMD family 0x17 (base 0xF + extended 0x8) model 0x01 stepping 2.
pub const AMD_SIGNATURE: u32 = 0x0080_0f12;
/// Leaf 1 EAX: Intel family 6 model 0x55 (extended 0x5, base 0x5) stepping 4.
pub const INTEL_SIGNATURE: u32 = 0x0005_0654;

const KVM_FEATURE_STEAL_TIME: u32 = 1 << 5;
/// AMD leaf 0x80000001 ECX: PerfCtrExtCore, PerfCtrExtNB, PerfCtrExtLLC.
const AMD_ECX_PERFCTRS: u32 = (1 << 23) | (1 << 24) | (1 << 28);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Amd,
    Intel,
    Other,
}

impl Vendor {
    /// From leaf 0's EBX ("Auth", "Genu"; Hygon's "Hygo" is AMD's design).
    fn of(entries: &[kvm_cpuid_entry2]) -> Self {
        match entries
            .iter()
            .find(|e| e.function == LEAF_VENDOR)
            .map(|e| e.ebx)
        {
            Some(0x6874_7541) | Some(0x6f67_7948) => Vendor::Amd,
            Some(0x756e_6547) => Vendor::Intel,
            _ => Vendor::Other,
        }
    }
}

/// One cache of the template.
struct Cache {
    level: u32,
    /// Leaf 4's type: 1 data, 2 instruction, 3 unified.
    kind: u32,
    ways: u32,
    sets: u32,
}

const LINE: u32 = 64;
const CACHES: [Cache; 4] = [
    Cache {
        level: 1,
        kind: 1,
        ways: 8,
        sets: 64,
    }, // 32 KiB
    Cache {
        level: 1,
        kind: 2,
        ways: 8,
        sets: 64,
    }, // 32 KiB
    Cache {
        level: 2,
        kind: 3,
        ways: 16,
        sets: 1024,
    }, // 1 MiB
    Cache {
        level: 3,
        kind: 3,
        ways: 16,
        sets: 16384,
    }, // 16 MiB
];

impl Cache {
    fn kib(&self) -> u32 {
        self.ways * self.sets * LINE / 1024
    }

    /// Leaf 4 sub-leaf `index` (sharing and core counts left at 0).
    fn leaf4(&self, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function: LEAF_CACHE_PARAMS,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: self.kind | (self.level << 5) | (1 << 8),
            ebx: (LINE - 1) | ((self.ways - 1) << 22),
            ecx: self.sets - 1,
            edx: 0,
            ..Default::default()
        }
    }
}

/// AMD's associativity code in leaf 0x80000006 (8-way is 6, 16-way is 8).
fn amd_l2_assoc(ways: u32) -> u32 {
    match ways {
        8 => 0x6,
        16 => 0x8,
        _ => 0xf,
    }
}

fn brand_words() -> [u32; 12] {
    let mut bytes = [0u8; 48];
    bytes[..BRAND.len()].copy_from_slice(BRAND.as_bytes());
    let mut words = [0u32; 12];
    for (w, c) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    words
}

/// KVM's supported CPUID with the host-describing leaves replaced.
pub fn apply(supported: &[kvm_cpuid_entry2]) -> Vec<kvm_cpuid_entry2> {
    let vendor = Vendor::of(supported);
    let brand = brand_words();
    let [l1d, l1i, l2, l3] = &CACHES;
    let mut out = Vec::with_capacity(supported.len() + CACHES.len());
    let mut cache_leaf_done = false;
    for e in supported {
        let mut e = *e;
        match e.function {
            LEAF_FREQUENCY | LEAF_AMD_CACHE_TOPOLOGY | LEAF_AMD_PMU_V2 => continue,
            LEAF_CACHE_PARAMS => {
                // All of KVM's sub-leaves give way to the template's, once.
                if !cache_leaf_done {
                    out.extend(CACHES.iter().zip(0..).map(|(c, i)| c.leaf4(i)));
                    out.push(kvm_cpuid_entry2 {
                        function: LEAF_CACHE_PARAMS,
                        index: CACHES.len() as u32,
                        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                        ..Default::default()
                    });
                    cache_leaf_done = true;
                }
                continue;
            }
            LEAF_FEATURES => {
                e.eax = match vendor {
                    Vendor::Amd => AMD_SIGNATURE,
                    Vendor::Intel => INTEL_SIGNATURE,
                    Vendor::Other => e.eax,
                };
            }
            LEAF_DESCRIPTORS => {
                // One iteration; descriptor 0xFF: "see leaf 4".
                (e.eax, e.ebx, e.ecx, e.edx) = (0x0000_ff01, 0, 0, 0);
            }
            LEAF_THERMAL | LEAF_PMU => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            LEAF_KVM_FEATURES => e.eax &= !KVM_FEATURE_STEAL_TIME,
            LEAF_EXT_FEATURES if vendor == Vendor::Amd => e.ecx &= !AMD_ECX_PERFCTRS,
            f if LEAF_BRAND.contains(&f) => {
                let i = (f - LEAF_BRAND[0]) as usize * 4;
                (e.eax, e.ebx, e.ecx, e.edx) = (brand[i], brand[i + 1], brand[i + 2], brand[i + 3]);
            }
            LEAF_AMD_L1 => {
                let l1 = |c: &Cache| (c.kib() << 24) | (c.ways << 16) | (1 << 8) | LINE;
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, l1(l1d), l1(l1i));
            }
            LEAF_AMD_L2_L3 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = (l2.kib() << 16) | (amd_l2_assoc(l2.ways) << 12) | (1 << 8) | LINE;
                // L3 size in 512 KiB units.
                e.edx = ((l3.kib() / 512) << 18) | (amd_l2_assoc(l3.ways) << 12) | (1 << 8) | LINE;
            }
            _ => {}
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn get(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<[u32; 4]> {
        entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
    }

    /// A host as KVM describes it: an AMD EPYC with its own caches, PMU,
    /// brand and steal time.
    fn amd_host() -> Vec<kvm_cpuid_entry2> {
        let auth = [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65];
        vec![
            entry(0x0, 0, auth),
            entry(0x1, 0, [0x00a0_0f11, 0x0001_0800, 0xfed8_3203, 0x178b_fbff]),
            entry(0x4, 0, [0x121, 0x01c0_003f, 0x3f, 0]),
            entry(0x4, 1, [0x122, 0x01c0_003f, 0x3f, 0]),
            entry(0x6, 0, [4, 0, 1, 0]),
            entry(0xa, 0, [0x0704_3002, 0, 0, 0x603]),
            entry(0x16, 0, [3000, 3700, 100, 0]),
            entry(0x4000_0001, 0, [0x0100_7afb, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0x75c2_37ff, 0x2fd3_fbff]),
            entry(
                0x8000_0002,
                0,
                [0x2044_4d41, 0x43595045, 0x3337_3720, 0x2d333631],
            ),
            entry(0x8000_0003, 0, [1, 2, 3, 4]),
            entry(0x8000_0004, 0, [5, 6, 7, 8]),
            entry(
                0x8000_0005,
                0,
                [0xff40_ff40, 0xff40_ff40, 0x2004_0140, 0x2004_0140],
            ),
            entry(
                0x8000_0006,
                0,
                [0x2600_0000, 0x4200_4200, 0x0200_6140, 0x0200_9140],
            ),
            entry(0x8000_001d, 0, [0x4121, 0x01c0_003f, 0x3f, 0]),
            entry(0x8000_0022, 0, [7, 0x6, 0, 0]),
        ]
    }

    fn brand_of(entries: &[kvm_cpuid_entry2]) -> String {
        let mut bytes = Vec::new();
        for f in LEAF_BRAND {
            for r in get(entries, f, 0).unwrap() {
                bytes.extend(r.to_le_bytes());
            }
        }
        String::from_utf8_lossy(&bytes)
            .trim_end_matches('\0')
            .to_string()
    }

    #[test]
    fn the_host_s_identity_is_replaced() {
        let t = apply(&amd_host());
        assert_eq!(get(&t, 0x0, 0), get(&amd_host(), 0x0, 0), "vendor kept");
        let [eax, ebx, ecx, edx] = get(&t, 0x1, 0).unwrap();
        assert_eq!(eax, AMD_SIGNATURE);
        assert_eq!(
            (ebx, ecx, edx),
            (0x0001_0800, 0xfed8_3203, 0x178b_fbff),
            "features kept"
        );
        // family = base + extended, model = extended:base.
        let family = ((eax >> 8) & 0xf) + ((eax >> 20) & 0xff);
        let model = ((eax >> 16) & 0xf) << 4 | ((eax >> 4) & 0xf);
        assert_eq!((family, model, eax & 0xf), (0x17, 0x01, 2));
        assert_eq!(brand_of(&t), BRAND);
    }

    #[test]
    fn pmu_frequency_and_steal_time_are_hidden() {
        let t = apply(&amd_host());
        assert_eq!(get(&t, 0xa, 0), Some([0; 4]));
        assert_eq!(get(&t, 0x6, 0), Some([0; 4]));
        for gone in [0x16, 0x8000_001d, 0x8000_0022] {
            assert_eq!(get(&t, gone, 0), None, "{gone:#x}");
        }
        assert_eq!(
            get(&t, 0x4000_0001, 0).unwrap()[0] & KVM_FEATURE_STEAL_TIME,
            0
        );
        assert_ne!(
            get(&t, 0x4000_0001, 0).unwrap()[0],
            0,
            "other KVM features kept"
        );
        assert_eq!(get(&t, 0x8000_0001, 0).unwrap()[2] & AMD_ECX_PERFCTRS, 0);
    }

    #[test]
    fn caches_come_from_the_template_in_both_formats() {
        let t = apply(&amd_host());
        let sizes: Vec<u32> = (0..)
            .map_while(|i| get(&t, 0x4, i).filter(|r| r[0] & 0x1f != 0))
            .map(|[eax, ebx, ecx, _]| {
                assert_ne!(eax & (1 << 8), 0, "self-initialising");
                let ways = (ebx >> 22) + 1;
                let line = (ebx & 0xfff) + 1;
                ways * line * (ecx + 1) / 1024
            })
            .collect();
        assert_eq!(sizes, [32, 32, 1024, 16384]);
        assert_eq!(get(&t, 0x4, 4), Some([0; 4]), "the list ends");
        let [_, _, l1d, l1i] = get(&t, 0x8000_0005, 0).unwrap();
        assert_eq!((l1d >> 24, l1i >> 24), (32, 32));
        let [l2_tlb, _, l2, l3] = get(&t, 0x8000_0006, 0).unwrap();
        assert_eq!(l2_tlb, 0);
        assert_eq!((l2 >> 16, (l3 >> 18) * 512), (1024, 16384));
    }

    #[test]
    fn intel_gets_its_own_signature_and_descriptor_leaf() {
        let mut host = amd_host();
        host[0].ebx = 0x756e_6547; // "Genu"
        host.push(entry(0x2, 0, [0x0076_0301, 0x00f0_b5ff, 0, 0x00c3_0000]));
        let t = apply(&host);
        assert_eq!(get(&t, 0x1, 0).unwrap()[0], INTEL_SIGNATURE);
        assert_eq!(get(&t, 0x2, 0), Some([0xff01, 0, 0, 0]));
        // AMD's counters bit layout means nothing on Intel: left alone.
        assert_eq!(get(&t, 0x8000_0001, 0).unwrap()[2], 0x75c2_37ff);
    }
}

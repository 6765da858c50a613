use super::*;
use crate::devices::cpu_hotplug::CpuSlot;
use vm_memory::{Bytes, GuestAddress};

fn vcpu(index: u32) -> VcpuState {
    let regs = kvm_bindings::kvm_regs {
        rip: 0xffff_ffff_8100_0000 + u64::from(index),
        ..Default::default()
    };
    VcpuState {
        index,
        parked: index == 1,
        mp_state: Default::default(),
        regs,
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debugregs: Default::default(),
        lapic: Default::default(),
        msrs: vec![kvm_bindings::kvm_msr_entry {
            index: 0x10,
            data: 12345,
            ..Default::default()
        }],
        events: Default::default(),
    }
}

fn state() -> VmState {
    VmState {
        shape: Shape {
            max_vcpus: 2,
            boot_memory: 8 << 20,
            max_memory: 8 << 20,
            regions: vec![(0, 8 << 20)],
            hotplug: None,
        },
        vcpus: vec![vcpu(0), vcpu(1)],
        cpu_slots: CpuStates {
            slots: vec![
                CpuSlot {
                    enabled: true,
                    ..Default::default()
                };
                2
            ],
            ..Default::default()
        },
        irqchips: vec![Default::default(); 3],
        pit: Default::default(),
        clock: Default::default(),
        serial: UartState {
            registers: [1, 2, 3, 4, 5, 6, 7, 8, 9],
            input: b"ls\n".to_vec(),
        },
        perf_hint: Virtio {
            transport: TransportState::default(),
            device: PerfHintState::default(),
        },
        balloon: Virtio {
            transport: TransportState::default(),
            device: BalloonState::default(),
        },
        virtio_mem: None,
        engine: crate::policy::Engine::new(
            crate::policy::Policy::default(),
            crate::policy::VmLimits {
                boot_vcpus: 1,
                max_vcpus: 2,
                boot_memory: 8 << 20,
                max_memory: 8 << 20,
            },
        )
        .save(),
        uptime: std::time::Duration::from_millis(15_250),
    }
}

const P: &str = "snap/state";

#[test]
fn a_state_comes_back_as_it_was_saved() {
    let bytes = encode(&state()).unwrap();
    let back = decode(Path::new(P), &bytes).unwrap();
    assert_eq!(back.shape, state().shape);
    assert_eq!(back.vcpus.len(), 2);
    assert_eq!(back.vcpus[0].regs.rip, state().vcpus[0].regs.rip);
    assert!(back.vcpus[1].parked);
    assert_eq!(back.vcpus[1].msrs[0].data, 12345);
    assert_eq!(back.serial, state().serial);
    assert_eq!(back.cpu_slots, state().cpu_slots);
    assert_eq!(back.uptime.as_millis(), 15_250);
}

#[test]
fn a_foreign_damaged_or_newer_file_is_refused_with_its_reason() {
    let good = encode(&state()).unwrap();
    let path = Path::new(P);
    assert!(matches!(
        decode(path, b"#!/bin/sh\necho hi\n"),
        Err(SnapshotError::NotASnapshot(_))
    ));
    assert!(matches!(
        decode(path, &[]),
        Err(SnapshotError::NotASnapshot(_))
    ));

    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let e = decode(path, &newer).unwrap_err();
    assert!(matches!(e, SnapshotError::Version { found, .. } if found == FORMAT_VERSION + 1));
    assert!(
        e.to_string().contains(&format!("version {FORMAT_VERSION}")),
        "{e}"
    );

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let e = decode(path, &flipped).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");

    let e = decode(path, &good[..good.len() - 10]).unwrap_err();
    assert!(e.to_string().contains("length"), "{e}");
}

#[test]
fn a_well_formed_state_of_an_impossible_machine_is_refused() {
    for shape in [
        Shape {
            regions: vec![],
            ..state().shape
        },
        Shape {
            regions: vec![(0x10_0000, 4096), (0, 4096)],
            ..state().shape
        },
        Shape {
            hotplug: Some((1 << 32, 1 << 27)),
            ..state().shape
        },
    ] {
        let st = VmState { shape, ..state() };
        let e = decode(Path::new(P), &encode(&st).unwrap()).unwrap_err();
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}");
    }
}

#[test]
fn garbage_after_a_valid_header_never_panics() {
    let mut bytes = encode(&state()).unwrap();
    // Every payload byte in turn set to 0xff, with the checksum made to
    // match, so the decoder itself meets the damage.
    for i in super::HEADER_LEN..bytes.len() {
        let old = bytes[i];
        bytes[i] = 0xff;
        let crc = crc32fast::hash(&bytes[super::HEADER_LEN..]);
        let mut b = bytes.clone();
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        let _ = decode(Path::new(P), &b);
        bytes[i] = old;
    }
}

#[test]
fn memory_is_written_sparse_and_mapped_back() {
    let dir = std::env::temp_dir().join(format!("perfvmm-snap-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let size = 8u64 << 20;
    let mem = crate::memory::create_guest_memory(size, None).unwrap();
    mem.write_slice(b"first page", GuestAddress(0)).unwrap();
    mem.write_slice(&[7u8; 4096], GuestAddress(5 << 20))
        .unwrap();
    // Touched, but zero: a hole too.
    mem.write_slice(&[0u8; 4096], GuestAddress(6 << 20))
        .unwrap();
    let path = dir.join(MEMORY_FILE);
    let w = memory::write(&path, &mem).unwrap();
    assert_eq!(w.memory, size);
    assert_eq!(w.data, 2 * 4096, "two pages held something");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);

    let shape = state().shape;
    let back = memory::map(&path, &shape).unwrap();
    let mut buf = [0u8; 10];
    back.read_slice(&mut buf, GuestAddress(0)).unwrap();
    assert_eq!(&buf, b"first page");
    let mut page = [0u8; 4096];
    back.read_slice(&mut page, GuestAddress(5 << 20)).unwrap();
    assert!(page.iter().all(|&b| b == 7));
    back.read_slice(&mut page, GuestAddress(3 << 20)).unwrap();
    assert!(page.iter().all(|&b| b == 0));
    // The guest's writes stay in this process.
    back.write_slice(b"changed", GuestAddress(0)).unwrap();
    let again = memory::map(&path, &shape).unwrap();
    again.read_slice(&mut buf, GuestAddress(0)).unwrap();
    assert_eq!(&buf, b"first page");
    // And a snapshot of the restored memory reads every page from it.
    let w2 = memory::write(&dir.join("memory2"), &back).unwrap();
    assert_eq!(w2.data, 2 * 4096);

    let short = Shape {
        regions: vec![(0, 16 << 20)],
        ..shape
    };
    let e = memory::map(&path, &short).unwrap_err();
    assert!(matches!(e, SnapshotError::MemorySize { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_state_file_is_written_whole_and_read_back() {
    let dir = std::env::temp_dir().join(format!("perfvmm-snap-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    write_state(&dir, &state()).unwrap();
    let back = read_state(&dir).unwrap();
    assert_eq!(back.shape, state().shape);
    assert!(!dir.join(".state.tmp").exists());
    std::fs::write(dir.join(STATE_FILE), b"PVMMSNAP").unwrap();
    assert!(matches!(
        read_state(&dir),
        Err(SnapshotError::NotASnapshot(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

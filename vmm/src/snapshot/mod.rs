//! Snapshots: a VM's complete state in a directory, from which a new
//! perfvmm process restores it (`perfvmm --restore DIR`).
//!
//! A snapshot directory holds two files:
//!
//! * `state`: a header (magic, format version, payload length, CRC-32)
//!   and the [`VmState`] encoded with `postcard`;
//! * `memory`: guest memory, region after region, as a sparse file: pages
//!   the guest never touched, gave back (balloon) or unplugged
//!   (virtio-mem), and pages of zeros, are holes.
//!
//! [`take`] pauses the vCPUs, writes both and lets the vCPUs run again (or
//! stops the VM); the builder restores ([`crate::builder::restore`]).
//! Both files are untrusted input on restore: the header and the CRC catch
//! a damaged or foreign file, and every part of the state is checked by
//! what it is restored into (the virtio transports, the devices, KVM).

pub mod memory;
pub mod take;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};
use virtio_mmio::TransportState;
use virtio_perf_device::PerfHintState;

use crate::devices::cpu_hotplug::CpuStates;
use crate::devices::serial::UartState;
use crate::devices::virtio::balloon::BalloonState;
use crate::devices::virtio::mem::VirtioMemState;
use crate::policy::EngineState;
use crate::vcpu::VcpuState;

/// The first bytes of a state file.
pub const MAGIC: [u8; 8] = *b"PVMMSNAP";
/// The state's format version: bumped on any change to [`VmState`]'s
/// encoding. A snapshot of another version is refused.
pub const FORMAT_VERSION: u32 = 3;
/// Magic, version, payload length and CRC-32.
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// A state larger than this is not one perfvmm wrote (the largest VM's
/// state is a few MiB: 4 KiB of XSAVE and the MSRs per vCPU).
pub const MAX_STATE_LEN: u64 = 64 << 20;

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

/// The machine a state belongs to: a restore builds this machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub max_vcpus: u32,
    /// Guest RAM at boot (the balloon takes from it).
    pub boot_memory: u64,
    /// The most memory the VM may have (virtio-mem plugs up to it).
    pub max_memory: u64,
    /// Guest memory regions, `(guest address, length)`, in the memory file's order.
    pub regions: Vec<(u64, u64)>,
    /// virtio-mem's region `(start, length)`, the last of `regions`.
    pub hotplug: Option<(u64, u64)>,
}

impl Shape {
    /// Bytes of the memory file: every region, one after another.
    pub fn memory_len(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }
}

/// A virtio device: its transport's state and its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Virtio<S> {
    pub transport: TransportState,
    pub device: S,
}

/// Everything of a VM but its memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    pub shape: Shape,
    /// Every vCPU KVM has, parked ones included.
    pub vcpus: Vec<VcpuState>,
    pub cpu_slots: CpuStates,
    /// The in-kernel PICs (master, slave) and IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub serial: UartState,
    pub perf_hint: Virtio<PerfHintState>,
    pub balloon: Virtio<BalloonState>,
    pub virtio_mem: Option<Virtio<VirtioMemState>>,
    /// The policy engine: open phases, demands, windows, schedule.
    pub engine: EngineState,
    /// The VM's time at the snapshot, which the engine's times count in: a
    /// restored VM's time goes on from it.
    pub uptime: std::time::Duration,
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a perfvmm snapshot")]
    NotASnapshot(PathBuf),
    #[error(
        "{path}: snapshot format version {found}; this perfvmm reads version {FORMAT_VERSION} only"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: the snapshot is damaged ({why})")]
    Corrupt { path: PathBuf, why: String },
    #[error("{path}: {len} bytes where the snapshot's memory is {expected}")]
    MemorySize {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    #[error("cannot encode the VM's state: {0}")]
    Encode(postcard::Error),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Vcpus(#[from] crate::actuators::vcpus::SaveError),
    #[error("{0} exists: a snapshot is never written over")]
    Exists(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes `state` with its header.
pub fn encode(state: &VmState) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_stdvec(state).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a state file's bytes; `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<VmState, SnapshotError> {
    let corrupt = |why: &str| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot(path.to_path_buf()));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let found = word(8);
    if found != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let payload = &bytes[HEADER_LEN..];
    if u64::from_le_bytes(len) != payload.len() as u64 {
        return Err(corrupt("its length does not match its header"));
    }
    if crc32fast::hash(payload) != word(20) {
        return Err(corrupt("its checksum does not match"));
    }
    let state: VmState = postcard::from_bytes(payload).map_err(|e| corrupt(&e.to_string()))?;
    check_shape(&state.shape).map_err(|why| corrupt(&why))?;
    Ok(state)
}

/// What any state must satisfy before a VM is built from it.
pub fn check_shape(s: &Shape) -> Result<(), String> {
    if s.regions.is_empty() || s.max_vcpus == 0 {
        return Err("no memory or no vCPU".into());
    }
    let mut end = 0u64;
    for &(gpa, len) in &s.regions {
        if gpa < end || len == 0 || gpa.checked_add(len).is_none() {
            return Err("memory regions overlap or are out of order".into());
        }
        end = gpa + len;
    }
    if s.hotplug.is_some() && s.hotplug != s.regions.last().copied() {
        return Err("the virtio-mem region is not the last region".into());
    }
    let ram: u64 = s.regions.iter().map(|r| r.1).sum::<u64>() - s.hotplug.map_or(0, |h| h.1);
    let pluggable = s.hotplug.map_or(0, |h| h.1);
    if s.boot_memory != ram || s.max_memory < s.boot_memory || s.max_memory - ram > pluggable {
        return Err("its memory sizes do not match its regions".into());
    }
    Ok(())
}

/// Writes `state` to `dir/state`, through a temporary file renamed into
/// place: a state file is complete or absent.
pub fn write_state(dir: &Path, state: &VmState) -> Result<(), SnapshotError> {
    let bytes = encode(state)?;
    let tmp = dir.join(".state.tmp");
    let path = dir.join(STATE_FILE);
    let mut f = std::fs::File::create_new(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Reads and checks `dir/state`.
pub fn read_state(dir: &Path) -> Result<VmState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let f = std::fs::File::open(&path).map_err(io_err(&path))?;
    let mut bytes = Vec::new();
    f.take(MAX_STATE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    if bytes.len() as u64 > MAX_STATE_LEN {
        return Err(SnapshotError::Corrupt {
            path,
            why: format!("larger than {} MiB", MAX_STATE_LEN >> 20),
        });
    }
    decode(&path, &bytes)
}

#[cfg(test)]
mod tests;

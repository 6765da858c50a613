//! The target's side (`perfvmm --incoming`): waits for one source, checks
//! that this host may run its VM, and fills new guest memory from the
//! stream until the VM's state arrives. The builder then restores it as it
//! restores a snapshot, and [`Received::answer`] tells the source.

use std::io::{BufReader, Read};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::Path;

use virtio_mmio::GuestMem;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::wire::{self, Frame, Hello};
use super::{MigrationError, Stream, IO_TIMEOUT};
use crate::control::snapshot::Endpoint;
use crate::snapshot::VmState;

/// The most this host gives a VM (its policy's bounds).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub vcpus: u32,
    pub memory: u64,
}

/// A VM received whole: its state, its memory, and its source.
pub struct Received {
    pub state: VmState,
    pub mem: GuestMem,
    pub source: Source,
}

/// The source, waiting to hear whether the VM runs here.
pub struct Source(Stream);

impl Source {
    /// Tells the source whether the VM is ready here (built, its vCPUs
    /// held) or why not.
    pub fn answer(&mut self, r: Result<(), &str>) -> Result<(), MigrationError> {
        wire::write_answer(&mut self.0, r)
    }

    /// Waits for the source to hand the VM over. Without it the VM must
    /// not run here: the source may run it still.
    pub fn await_commit(&mut self) -> Result<(), MigrationError> {
        self.0.set_timeouts(super::send::TAKEOVER_WAIT)?;
        wire::read_commit(&mut self.0)
    }
}

/// Waits at `at` for one source and receives its VM.
pub fn listen(at: &Endpoint, limits: Limits) -> Result<Received, MigrationError> {
    let err = |e| MigrationError::Connect(at.clone(), e);
    let stream = match at {
        Endpoint::Unix(path) => {
            let l = UnixListener::bind(path).map_err(err)?;
            log::info!("waiting for a VM on {at}");
            let accepted = l.accept();
            let _ = std::fs::remove_file(path);
            Stream::Unix(accepted.map_err(err)?.0)
        }
        Endpoint::Tcp(addr) => {
            let l = TcpListener::bind(addr).map_err(err)?;
            log::info!("waiting for a VM on {at}");
            Stream::Tcp(l.accept().map_err(err)?.0)
        }
    };
    stream.set_timeouts(IO_TIMEOUT)?;
    receive(stream, limits, |shape| {
        let mem = crate::memory::create_guest_memory(shape.boot_memory, shape.hotplug)
            .map_err(|e| format!("cannot map guest memory: {e}"))?;
        Ok(mem)
    })
}

/// Why this host will not take the VM `hello` describes, if it will not:
/// a machine perfvmm does not build, or more than this host's policy
/// allows. Checked before any memory is mapped for it.
pub fn refusal(hello: &Hello, limits: Limits) -> Option<String> {
    let s = &hello.shape;
    if let Err(why) = crate::snapshot::check_shape(s) {
        return Some(format!("not a machine perfvmm builds: {why}"));
    }
    let layout = crate::memory::layout(s.boot_memory, s.max_memory);
    let hotplug = crate::memory::hotplug_region(s.boot_memory, s.max_memory);
    if layout != s.regions || hotplug != s.hotplug {
        return Some("its memory regions are not where this perfvmm puts them".into());
    }
    if hello.vcpus > limits.vcpus {
        return Some(format!(
            "the VM has {} vCPUs; this host's policy allows at most {}",
            hello.vcpus, limits.vcpus
        ));
    }
    let memory = hello.memory_bytes.max(s.max_memory);
    if memory > limits.memory {
        return Some(format!(
            "the VM may have {} MiB of memory; this host's policy allows at most {} MiB",
            memory >> 20,
            limits.memory >> 20
        ));
    }
    None
}

/// Why this host will not run the VM `state` describes, now that it
/// arrived: what it had at the stop, which may be more than it said at the
/// hello (a vCPU hot-added meanwhile).
fn state_refusal(state: &VmState, limits: Limits) -> Option<String> {
    let vcpus = state.cpu_slots.enabled_count();
    (vcpus > limits.vcpus).then(|| {
        format!(
            "the VM has {vcpus} vCPUs; this host's policy allows at most {}",
            limits.vcpus
        )
    })
}

/// Receives a VM from `stream`, its memory made by `memory` for the shape
/// the source announced.
pub fn receive(
    mut stream: Stream,
    limits: Limits,
    memory: impl FnOnce(&crate::snapshot::Shape) -> Result<GuestMem, String>,
) -> Result<Received, MigrationError> {
    let hello = wire::read_hello(&mut stream)?;
    let mem = match refusal(&hello, limits).map_or_else(|| memory(&hello.shape), Err) {
        Ok(mem) if regions(&mem) == hello.shape.regions => mem,
        Ok(_) => {
            return refuse(
                stream,
                "its memory regions are not where this perfvmm puts them",
            )
        }
        Err(why) => return refuse(stream, &why),
    };
    wire::write_answer(&mut stream, Ok(()))?;
    let mut r = BufReader::with_capacity(1 << 20, stream);
    let state = fill(&mut r, &mem)?;
    if state.shape != hello.shape {
        return Err(MigrationError::Protocol(
            "the state's machine is not the one announced".into(),
        ));
    }
    if let Some(why) = state_refusal(&state, limits) {
        return refuse(r.into_inner(), &why);
    }
    Ok(Received {
        state,
        mem,
        source: Source(r.into_inner()),
    })
}

fn refuse(mut stream: Stream, why: &str) -> Result<Received, MigrationError> {
    wire::write_answer(&mut stream, Err(why))?;
    Err(MigrationError::Refused(why.to_string()))
}

fn regions(mem: &GuestMem) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
}

/// Writes pages frames into `mem` until the state frame, which it decodes:
/// what follows the accepted hello.
pub fn fill(r: &mut impl Read, mem: &GuestMem) -> Result<VmState, MigrationError> {
    let mut buf = vec![0u8; wire::MAX_PAGES_LEN as usize];
    loop {
        match wire::read_frame(r, &mut buf)? {
            Frame::Pages { gpa, len } => {
                let slice = mem.get_slice(GuestAddress(gpa), len).map_err(|_| {
                    MigrationError::Protocol(format!(
                        "pages at {gpa:#x}+{len:#x} are not in one region of guest memory"
                    ))
                })?;
                slice.copy_from(&buf[..len]);
            }
            Frame::State(bytes) => {
                return Ok(crate::snapshot::decode(
                    Path::new("the migration stream"),
                    &bytes,
                )?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::snapshot::Shape;

    const MIB: u64 = 1 << 20;

    fn hello(vcpus: u32, memory_bytes: u64) -> Hello {
        Hello {
            shape: Shape {
                max_vcpus: 2,
                boot_memory: 2 * MIB,
                max_memory: 2 * MIB,
                regions: vec![(0, 2 * MIB)],
                hotplug: None,
            },
            vcpus,
            memory_bytes,
        }
    }

    fn small(_: &Shape) -> Result<GuestMem, String> {
        Ok(GuestMem::from_ranges(&[(GuestAddress(0), 2 * MIB as usize)]).unwrap())
    }

    const LIMITS: Limits = Limits {
        vcpus: 2,
        memory: 2 * MIB,
    };

    /// Runs `source` against a receiver on a socket pair.
    fn exchange(
        source: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> Result<Received, MigrationError> {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || source(&mut b));
        let r = receive(Stream::Unix(a), LIMITS, small);
        t.join().unwrap();
        r
    }

    #[test]
    fn a_vm_larger_than_the_policy_allows_is_refused_before_any_page() {
        for (vcpus, mem) in [(3, MIB), (1, 3 * MIB)] {
            let r = exchange(move |s| {
                wire::write_hello(s, &hello(vcpus, mem)).unwrap();
                let e = wire::read_answer(s).unwrap_err().to_string();
                assert!(e.contains("this host's policy allows at most"), "{e}");
            });
            assert!(matches!(r, Err(MigrationError::Refused(_))));
        }
    }

    #[test]
    fn a_machine_perfvmm_does_not_build_is_refused_before_memory_is_mapped() {
        let mut huge = hello(1, MIB);
        huge.shape.boot_memory = 1 << 40;
        huge.shape.max_memory = 1 << 40;
        huge.shape.regions = crate::memory::ram_ranges(1 << 40)
            .into_iter()
            .map(|(a, len)| (a.0, len as u64))
            .collect();
        let mut odd = hello(1, MIB);
        odd.shape.regions = vec![(4096, 2 * MIB)];
        let mut empty = hello(1, MIB);
        empty.shape.boot_memory = 0;
        empty.shape.regions = vec![];
        for (h, why) in [
            (huge, "this host's policy allows at most 2 MiB"),
            (odd, "not where this perfvmm puts them"),
            (empty, "not a machine perfvmm builds"),
        ] {
            let (a, mut b) = UnixStream::pair().unwrap();
            let t = std::thread::spawn(move || {
                wire::write_hello(&mut b, &h).unwrap();
                wire::read_answer(&mut b).unwrap_err().to_string()
            });
            let r = receive(Stream::Unix(a), LIMITS, |_| panic!("memory mapped"));
            assert!(matches!(r, Err(MigrationError::Refused(_))));
            let said = t.join().unwrap();
            assert!(said.contains(why), "{said}");
        }
    }

    #[test]
    fn pages_outside_guest_memory_or_a_bad_state_end_the_stream() {
        let r = exchange(|s| {
            wire::write_hello(s, &hello(1, MIB)).unwrap();
            wire::read_answer(s).unwrap();
            wire::write_pages(s, 2 * MIB - 4096, &[1u8; 8192]).unwrap();
        });
        let e = r.err().unwrap().to_string();
        assert!(e.contains("not in one region"), "{e}");
        let r = exchange(|s| {
            wire::write_hello(s, &hello(1, MIB)).unwrap();
            wire::read_answer(s).unwrap();
            wire::write_pages(s, 4096, &[1u8; 4096]).unwrap();
            wire::write_state(s, b"PVMMSNAP but not a state").unwrap();
        });
        let e = r.err().unwrap().to_string();
        assert!(e.contains("the migration stream"), "{e}");
    }

    #[test]
    fn a_stream_that_ends_early_is_an_error_not_a_vm() {
        let r = exchange(|s| {
            wire::write_hello(s, &hello(1, MIB)).unwrap();
            wire::read_answer(s).unwrap();
            wire::write_pages(s, 0, &[7u8; 4096]).unwrap();
        });
        assert!(matches!(r, Err(MigrationError::Io(_))));
    }
}

//! Placement: pins each vCPU thread to a host CPU chosen by the policy's
//! strategy, and reports the host's NUMA layout.

use crate::policy::config::{parse_cpu_list, PinStrategy, PlacementPolicy};

/// Which host CPU each vCPU index goes to.
#[derive(Clone, Debug)]
pub struct Pinning {
    cpus: Vec<usize>,
    strategy: PinStrategy,
    max_vcpus: u32,
}

/// Host CPUs this process may run on.
fn allowed_host_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set filled above.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn numa_nodes() -> usize {
    std::fs::read_dir("/sys/devices/system/node")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("node") && n[4..].parse::<u32>().is_ok()
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

impl Pinning {
    pub fn new(p: &PlacementPolicy, max_vcpus: u32) -> Self {
        let allowed = allowed_host_cpus();
        let wanted = parse_cpu_list(&p.host_cpus).unwrap_or_default();
        let cpus: Vec<usize> = if wanted.is_empty() {
            allowed
        } else {
            wanted.into_iter().filter(|c| allowed.contains(c)).collect()
        };
        if p.strategy != PinStrategy::None && cpus.is_empty() {
            log::warn!("placement: none of placement.host_cpus is available; vCPUs are not pinned");
        }
        Pinning {
            cpus,
            strategy: p.strategy,
            max_vcpus: max_vcpus.max(1),
        }
    }

    /// The host CPU for vCPU `index`, if it is pinned.
    pub fn host_cpu(&self, index: u32) -> Option<usize> {
        if self.cpus.is_empty() {
            return None;
        }
        let n = self.cpus.len();
        let i = index as usize;
        match self.strategy {
            PinStrategy::None => None,
            PinStrategy::Compact => Some(self.cpus[i % n]),
            PinStrategy::Spread => Some(self.cpus[(i * n / self.max_vcpus as usize) % n]),
        }
    }

    /// Pins the calling thread (a vCPU thread) for vCPU `index`.
    pub fn pin_current_thread(&self, index: u32) {
        let Some(cpu) = self.host_cpu(index) else {
            return;
        };
        // SAFETY: cpu_set_t is plain data; CPU_SET writes one bit of it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (it came from sched_getaffinity).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is the calling thread; `set` is valid.
        let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if r == 0 {
            log::info!("placement: vCPU {index} pinned to host CPU {cpu}");
        } else {
            log::warn!(
                "placement: cannot pin vCPU {index}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Binds guest memory (`regions` as host address and length) to the
/// policy's NUMA node where the host has several nodes, and says what it did.
pub fn bind_guest_memory(p: &PlacementPolicy, regions: &[(usize, usize)]) {
    let nodes = numa_nodes();
    match p.numa_node {
        None if nodes > 1 => log::info!(
            "placement: the host has {nodes} NUMA nodes; guest memory is not bound \
             (set placement.numa_node)"
        ),
        None => log::info!("placement: the host has one NUMA node; guest memory is not bound"),
        Some(node) if nodes == 1 => log::info!(
            "placement: the host has one NUMA node; placement.numa_node = {node} has no effect"
        ),
        Some(node) => match regions
            .iter()
            .try_for_each(|&(addr, len)| bind_to_node(addr, len, node))
        {
            Ok(()) => log::info!("placement: guest memory bound to NUMA node {node}"),
            Err(e) => log::warn!("placement: cannot bind guest memory to node {node}: {e}"),
        },
    }
}

/// `mbind(MPOL_BIND)` of `[addr, addr + len)` to `node`: pages the guest
/// touches from now on come from that node.
pub fn bind_to_node(addr: usize, len: usize, node: u32) -> std::io::Result<()> {
    const MPOL_BIND: libc::c_ulong = 2;
    if node >= crate::policy::config::MAX_NUMA_NODES {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mask: libc::c_ulong = 1 << node;
    // SAFETY: mbind only changes the memory policy of the range, a live
    // anonymous mapping owned by guest memory; `mask` outlives the call and
    // holds `maxnode` (64) bits.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            MPOL_BIND,
            &mask as *const libc::c_ulong,
            64 as libc::c_ulong,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinning(strategy: PinStrategy, cpus: Vec<usize>, max: u32) -> Pinning {
        Pinning {
            cpus,
            strategy,
            max_vcpus: max,
        }
    }

    #[test]
    fn memory_binds_to_a_node_the_host_has() {
        let mem = crate::memory::create_guest_memory(4 << 20, None).unwrap();
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let r = mem.iter().next().unwrap();
        let (addr, len) = (r.as_ptr() as usize, r.len() as usize);
        // Every Linux host has node 0; node 63 exists on none we run on.
        bind_to_node(addr, len, 0).expect("bind to node 0");
        assert!(bind_to_node(addr, len, 63).is_err());
        assert!(bind_to_node(addr, len, 64).is_err());
    }

    #[test]
    fn strategies() {
        let c = pinning(PinStrategy::Compact, vec![2, 3, 4, 5], 8);
        assert_eq!(
            (0..5).map(|i| c.host_cpu(i).unwrap()).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 2]
        );
        let s = pinning(PinStrategy::Spread, vec![0, 1, 2, 3], 2);
        assert_eq!((s.host_cpu(0), s.host_cpu(1)), (Some(0), Some(2)));
        assert_eq!(pinning(PinStrategy::None, vec![0], 1).host_cpu(0), None);
        assert_eq!(pinning(PinStrategy::Compact, vec![], 1).host_cpu(0), None);
    }
}

#![forbid(unsafe_code)]
//! What the guest itself can see of its resources: online CPUs and
//! available memory, read from the text of `/sys/devices/system/cpu/online`
//! and `/proc/meminfo`. Pure functions over that text (`no_std`), so that
//! `Phase::begin_and_wait` (with `std`) can ask whether a phase's request
//! is met without learning anything of the host.

/// Where the kernel lists the online CPUs.
pub const CPU_ONLINE_PATH: &str = "/sys/devices/system/cpu/online";
/// Where the kernel reports memory.
pub const MEMINFO_PATH: &str = "/proc/meminfo";

/// The number of CPUs in a kernel CPU list such as `0-3,6,8-9` (the format
/// of `/sys/devices/system/cpu/online`); `None` when it is not one.
///
/// ```
/// use guest_hints::resources::count_cpu_list;
/// assert_eq!(count_cpu_list("0-3,6,8-9\n"), Some(7));
/// assert_eq!(count_cpu_list("0"), Some(1));
/// assert_eq!(count_cpu_list("3-1"), None);
/// ```
pub fn count_cpu_list(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for part in s.split(',') {
        let part = part.trim();
        let count = match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.trim().parse().ok()?;
                let b: u32 = b.trim().parse().ok()?;
                b.checked_sub(a)?.checked_add(1)?
            }
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
        n = n.checked_add(count)?;
    }
    Some(n)
}

/// The value of `key` (for example `MemTotal`) in `/proc/meminfo` text, in
/// bytes (the file gives kB); `None` when it is missing or malformed.
///
/// ```
/// use guest_hints::resources::meminfo_bytes;
/// let text = "MemTotal:       16384 kB\nMemAvailable:    8192 kB\n";
/// assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(8192 * 1024));
/// assert_eq!(meminfo_bytes(text, "MemFree"), None);
/// ```
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// Memory the guest can still hand out, in bytes: `MemAvailable`, or
/// `MemTotal` on a kernel too old to report `MemAvailable` (before 3.14).
pub fn available_memory(meminfo: &str) -> Option<u64> {
    meminfo_bytes(meminfo, "MemAvailable").or_else(|| meminfo_bytes(meminfo, "MemTotal"))
}

/// What a phase asked for, as the guest can check it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    /// Online CPUs wanted (0: none asked for).
    pub cpus: u32,
    /// Available memory wanted, in bytes (0: none asked for).
    pub working_set_bytes: u64,
}

impl Need {
    /// Whether the guest has what was asked for, given the text of
    /// [`CPU_ONLINE_PATH`] and of [`MEMINFO_PATH`] (`None`: unreadable).
    /// What was not asked for is met; what was asked for but cannot be read
    /// is not.
    ///
    /// ```
    /// use guest_hints::resources::Need;
    /// let need = Need { cpus: 4, working_set_bytes: 1 << 30 };
    /// let meminfo = "MemTotal: 4194304 kB\nMemAvailable: 2097152 kB\n";
    /// assert!(need.is_met(Some("0-3"), Some(meminfo)));
    /// assert!(!need.is_met(Some("0-1"), Some(meminfo)));
    /// assert!(!need.is_met(None, Some(meminfo)));
    /// ```
    pub fn is_met(&self, cpu_online: Option<&str>, meminfo: Option<&str>) -> bool {
        let cpus = self.cpus == 0 || cpu_online.and_then(count_cpu_list).unwrap_or(0) >= self.cpus;
        let memory = self.working_set_bytes == 0
            || meminfo.and_then(available_memory).unwrap_or(0) >= self.working_set_bytes;
        cpus && memory
    }

    /// Whether nothing was asked for.
    pub fn is_empty(&self) -> bool {
        self.cpus == 0 && self.working_set_bytes == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0,2,4-7"), Some(6));
        assert_eq!(count_cpu_list(" 5 "), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("0-"), None);
        assert_eq!(count_cpu_list("a"), None);
        assert_eq!(count_cpu_list("0,,1"), None);
        assert_eq!(count_cpu_list("0-4294967295"), None);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24683656 kB\nMemFree:        100 kB\n\
                    MemAvailable:   23289448 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(24683656 * 1024));
        assert_eq!(meminfo_bytes(text, "HugePages_Total"), Some(0));
        assert_eq!(available_memory(text), Some(23289448 * 1024));
        assert_eq!(available_memory("MemTotal: 10 kB\n"), Some(10240));
        assert_eq!(available_memory("MemTotal: x kB\n"), None);
        assert_eq!(meminfo_bytes("MemTotal: 1 MB\n", "MemTotal"), None);
        assert_eq!(
            meminfo_bytes("MemTotal: 18446744073709551615 kB", "MemTotal"),
            None
        );
    }

    #[test]
    fn needs() {
        let meminfo = "MemTotal: 2048 kB\nMemAvailable: 1024 kB\n";
        let none = Need::default();
        assert!(none.is_empty());
        assert!(none.is_met(None, None));
        let cpus = Need {
            cpus: 2,
            working_set_bytes: 0,
        };
        assert!(cpus.is_met(Some("0-1"), None));
        assert!(!cpus.is_met(Some("0"), None));
        assert!(!cpus.is_met(Some("garbage"), None));
        let mem = Need {
            cpus: 0,
            working_set_bytes: 1024 * 1024,
        };
        assert!(mem.is_met(None, Some(meminfo)));
        assert!(!Need {
            working_set_bytes: 1024 * 1024 + 1,
            ..mem
        }
        .is_met(None, Some(meminfo)));
        assert!(!mem.is_met(None, None));
    }
}

//! What `/proc` says about a process tree: threads running or runnable, CPU
//! time, resident memory, I/O counters, and referenced pages. Parsers are
//! pure functions over the files' text; `Procfs` reads the files.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The fields of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// One letter: R running or runnable, S sleeping, D disk wait, Z zombie…
    pub state: u8,
    /// The parent's pid.
    pub ppid: u32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
    /// The command name, which an `exec` changes.
    pub comm: Comm,
}

/// A command name as `stat` gives it: the kernel keeps 15 bytes
/// (`TASK_COMM_LEN`), longer text is cut at 16.
pub type Comm = [u8; 16];

/// Parses a `stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let close = text.rfind(')')?;
    let name = text.get(text.find('(')? + 1..close)?.as_bytes();
    let mut comm: Comm = [0; 16];
    let n = name.len().min(comm.len());
    comm[..n].copy_from_slice(&name[..n]);
    let rest = &text[close + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); field n is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(Stat {
        state: *f.first()?.as_bytes().first()?,
        ppid: u32::try_from(field(4)?).ok()?,
        cpu_ticks: field(14)?.saturating_add(field(15)?),
        rss_pages: field(24).unwrap_or(0),
        comm,
    })
}

/// The run time in nanoseconds from `schedstat` (its first field).
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// A process's I/O counters from `/proc/PID/io`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// `read_bytes + write_bytes`: what reached storage.
    pub storage: u64,
    /// `rchar + wchar`: what went through read and write calls.
    pub chars: u64,
    /// `syscr + syscw`: read and write calls.
    pub calls: u64,
}

/// Parses `/proc/PID/io`.
pub fn parse_io(text: &str) -> Option<IoCounters> {
    let mut v: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let (k, n) = line.split_once(':')?;
        v.insert(k.trim(), n.trim().parse().ok()?);
    }
    let get = |k: &str| v.get(k).copied().unwrap_or(0);
    Some(IoCounters {
        storage: get("read_bytes").saturating_add(get("write_bytes")),
        chars: get("rchar").saturating_add(get("wchar")),
        calls: get("syscr").saturating_add(get("syscw")),
    })
}

/// The sum of the `Referenced:` lines of `smaps` or `smaps_rollup`, in bytes.
pub fn parse_referenced(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut found = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Referenced:") {
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            total = total.saturating_add(kb.saturating_mul(1024));
            found = true;
        }
    }
    found.then_some(total)
}

/// One look at the tree.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Processes in the tree.
    pub pids: Vec<u32>,
    /// The command name of each of `pids`, in the same order.
    pub comms: Vec<Comm>,
    /// Threads in state R.
    pub running: u32,
    /// Each thread's CPU time so far, in nanoseconds.
    pub thread_cpu_ns: Vec<(u32, u64)>,
    /// Resident memory of the tree, in bytes.
    pub rss_bytes: u64,
    /// Each process's I/O counters.
    pub io: Vec<(u32, IoCounters)>,
}

/// Reads `/proc`.
pub struct Procfs {
    root: PathBuf,
    page_size: u64,
    ns_per_tick: u64,
    /// Whether per-thread `schedstat` gives nanoseconds (else clock ticks).
    pub schedstat: bool,
    /// Whether each thread lists its children (`/proc/PID/task/TID/children`,
    /// `CONFIG_PROC_CHILDREN`): the tree is then walked from its root,
    /// instead of reading every process's `stat` on each look
    /// (`docs/derived-hints.md` gives what each costs).
    pub children: bool,
}

impl Procfs {
    /// `/proc`, probed once for `schedstat`.
    pub fn new() -> Self {
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        let root = PathBuf::from("/proc");
        let schedstat = fs::read_to_string(root.join("self/schedstat"))
            .ok()
            .and_then(|t| parse_schedstat(&t))
            .is_some();
        let children = root.join("thread-self/children").exists();
        Procfs {
            root,
            page_size: rustix::param::page_size() as u64,
            ns_per_tick: 1_000_000_000 / ticks,
            schedstat,
            children,
        }
    }

    /// The `/proc` this reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `Cpus_allowed_list` of process `who` (a pid, or `self`): the
    /// CPUs it may run on, or `None` when it cannot be read.
    pub fn cpus_allowed_list(&self, who: &str) -> Option<String> {
        let status = fs::read_to_string(self.root.join(who).join("status")).ok()?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
        Some(list.trim().to_string())
    }

    /// `root` and its descendants, from every process's parent in `/proc`
    /// (when threads do not list their children).
    fn tree_by_scan(&self, root: u32) -> Vec<u32> {
        let mut all: Vec<(u32, u32)> = Vec::new();
        if let Ok(dir) = fs::read_dir(&self.root) {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(st) = self.stat(&e.path()) {
                    all.push((pid, st.ppid));
                }
            }
        }
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for &(pid, ppid) in &all {
            children.entry(ppid).or_default().push(pid);
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            if !seen.insert(pid) {
                continue;
            }
            out.push(pid);
            if let Some(kids) = children.get(&pid) {
                queue.extend(kids);
            }
        }
        out
    }

    fn stat(&self, dir: &Path) -> Option<Stat> {
        fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
    }

    /// The tree under `root` now: each process from `root` down, and the
    /// threads of each.
    pub fn snapshot(&self, root: u32) -> Snapshot {
        let mut s = Snapshot::default();
        let mut queue = if self.children {
            vec![root]
        } else {
            self.tree_by_scan(root)
        };
        queue.reverse();
        let mut seen = HashSet::new();
        while let Some(pid) = queue.pop() {
            if !seen.insert(pid) {
                continue;
            }
            let dir = self.root.join(pid.to_string());
            // A process that ended since it was listed is left out.
            let Some(st) = self.stat(&dir) else {
                continue;
            };
            s.pids.push(pid);
            s.comms.push(st.comm);
            s.rss_bytes = s
                .rss_bytes
                .saturating_add(st.rss_pages.saturating_mul(self.page_size));
            let kids = self.threads(&dir, &mut s);
            queue.extend(kids);
            if let Some(io) = fs::read_to_string(dir.join("io"))
                .ok()
                .and_then(|t| parse_io(&t))
            {
                s.io.push((pid, io));
            }
        }
        s
    }

    /// Adds the threads of the process in `dir` to `s`; their children,
    /// when threads list them.
    fn threads(&self, dir: &Path, s: &mut Snapshot) -> Vec<u32> {
        let mut kids = Vec::new();
        let Ok(tasks) = fs::read_dir(dir.join("task")) else {
            return kids;
        };
        for e in tasks.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let path = e.path();
            let Some(t) = self.stat(&path) else {
                continue;
            };
            if t.state == b'R' {
                s.running += 1;
            }
            let ns = if self.schedstat {
                fs::read_to_string(path.join("schedstat"))
                    .ok()
                    .and_then(|t| parse_schedstat(&t))
            } else {
                None
            };
            let ns = ns.unwrap_or(t.cpu_ticks.saturating_mul(self.ns_per_tick));
            s.thread_cpu_ns.push((tid, ns));
            if self.children {
                if let Ok(list) = fs::read_to_string(path.join("children")) {
                    kids.extend(
                        list.split_whitespace()
                            .filter_map(|p| p.parse::<u32>().ok()),
                    );
                }
            }
        }
        kids
    }

    /// Bytes of pages `pid` referenced since its last [`Self::clear_refs`].
    pub fn referenced(&self, pid: u32) -> io::Result<u64> {
        let dir = self.root.join(pid.to_string());
        let text = fs::read_to_string(dir.join("smaps_rollup"))
            .or_else(|_| fs::read_to_string(dir.join("smaps")))?;
        parse_referenced(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Referenced: lines"))
    }

    /// Clears `pid`'s referenced bits (`echo 1 > /proc/PID/clear_refs`).
    pub fn clear_refs(&self, pid: u32) -> io::Result<()> {
        fs::write(self.root.join(pid.to_string()).join("clear_refs"), b"1")
    }
}

/// A running total of counters that belong to threads or processes which
/// come and go: each sample adds what each one gained since the last (all
/// of it for one not seen before); one that is gone adds nothing more.
#[derive(Debug, Default)]
pub struct Counter {
    prev: HashMap<u32, u64>,
    /// The total so far.
    pub total: u64,
}

impl Counter {
    /// Takes the current values and returns the new total.
    pub fn update(&mut self, now: impl IntoIterator<Item = (u32, u64)>) -> u64 {
        let mut next = HashMap::new();
        for (k, v) in now {
            let gained = match self.prev.get(&k) {
                Some(&p) => v.saturating_sub(p),
                None => v,
            };
            self.total = self.total.saturating_add(gained);
            next.insert(k, v);
        }
        self.prev = next;
        self.total
    }
}

/// The number of CPUs in a list such as `0-3,6,8-9`.
/// Whether two CPU lists (`0-3,6`) share a CPU; false where either does
/// not parse.
pub fn cpu_lists_meet(a: &str, b: &str) -> bool {
    let ranges = |list: &str| -> Option<Vec<(u32, u32)>> {
        list.split(',')
            .filter(|p| !p.is_empty())
            .map(|part| match part.split_once('-') {
                Some((x, y)) => Some((x.parse().ok()?, y.parse().ok()?)),
                None => part.parse().ok().map(|x| (x, x)),
            })
            .collect()
    };
    let (Some(a), Some(b)) = (ranges(a), ranges(b)) else {
        return false;
    };
    a.iter()
        .any(|&(a0, a1)| b.iter().any(|&(b0, b1)| a0 <= b1 && b0 <= a1))
}

pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n: u32 = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists_meet_where_they_share_a_cpu() {
        use super::cpu_lists_meet;
        assert!(cpu_lists_meet("0-3", "3"));
        assert!(cpu_lists_meet("0,2", "1-2"));
        assert!(!cpu_lists_meet("0", "3"));
        assert!(!cpu_lists_meet("0-1", "2-3,5"));
        assert!(!cpu_lists_meet("x", "0"));
    }

    #[test]
    fn cpu_lists_count() {
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    use super::*;

    #[test]
    fn stat_lines() {
        let line = "4242 (my (odd) prog) R 4241 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 30 0 0 20 0 3 0 12345 1000000 512 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: b'R',
                ppid: 4241,
                cpu_ticks: 280,
                rss_pages: 512,
                comm: *b"my (odd) prog\0\0\0",
            })
        );
        let long = "7 (a name of twenty bytes) S 1 0 0 0 0 0 0 0 0 0 1 2 0 0 0 0 0 0 0 0 9";
        assert_eq!(
            parse_stat(long).map(|s| s.comm),
            Some(*b"a name of twenty"),
            "cut at 16 bytes"
        );
        assert_eq!(parse_stat("1 (x) S"), None);
        assert_eq!(parse_stat("1 )x( S 1 0 0 0 0 0 0 0 0 0 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn small_files() {
        assert_eq!(
            parse_schedstat("239135349 155529912 605\n"),
            Some(239135349)
        );
        assert_eq!(parse_schedstat(""), None);
        let io = "rchar: 6976\nwchar: 24\nsyscr: 10\nsyscw: 2\nread_bytes: 4096\n\
                  write_bytes: 0\ncancelled_write_bytes: 0\n";
        assert_eq!(
            parse_io(io),
            Some(IoCounters {
                storage: 4096,
                chars: 7000,
                calls: 12
            })
        );
        assert_eq!(parse_io("rchar 1"), None);
        let smaps = "Rss: 1724 kB\nReferenced:  1000 kB\nAnonymous: 1 kB\nReferenced: 24 kB\n";
        assert_eq!(parse_referenced(smaps), Some(1024 * 1024));
        assert_eq!(parse_referenced("Rss: 1 kB\n"), None);
    }

    #[test]
    fn counters_follow_threads_that_come_and_go() {
        let mut c = Counter::default();
        assert_eq!(c.update([(1, 100)]), 100);
        assert_eq!(c.update([(1, 150), (2, 30)]), 180);
        // Thread 1 is gone; thread 2 goes on.
        assert_eq!(c.update([(2, 50)]), 200);
        // A counter never goes back.
        assert_eq!(c.update([(2, 40)]), 200);
    }

    #[test]
    fn a_child_is_found_both_ways() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep runs");
        let me = std::process::id();
        let mut p = Procfs::new();
        let mut trees = Vec::new();
        for children in [p.children, false] {
            p.children = children;
            trees.push(p.snapshot(me).pids);
        }
        let _ = child.kill();
        let _ = child.wait();
        for pids in &trees {
            assert_eq!(pids.first(), Some(&me), "{pids:?}");
            assert!(pids.contains(&child.id()), "{pids:?}");
        }
        // Other tests' children may come and go meanwhile.
        let sorted = |v: &Vec<u32>| {
            let mut v = v.clone();
            v.sort_unstable();
            v
        };
        assert!(sorted(&trees[0]).contains(&child.id()));
        assert!(sorted(&trees[1]).contains(&child.id()));
    }

    #[test]
    fn this_process_is_its_own_tree() {
        let p = Procfs::new();
        let s = p.snapshot(std::process::id());
        // First: the root (other tests may have children of their own).
        assert_eq!(s.pids.first(), Some(&std::process::id()));
        assert!(s.running >= 1, "the test thread is running");
        assert!(s.rss_bytes > 0);
        assert!(!s.thread_cpu_ns.is_empty());
    }
}

//! What perfhintd does with a process that started: read its binary's
//! manifest (once per binary: a bounded cache keyed by file identity) and
//! send it. And, for hosts without process events, a `/proc` poller.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use guest_hints::wire::{Hint, Manifest};

/// Binaries larger than this are not read.
pub const MAX_BINARY_BYTES: u64 = 256 << 20;
/// Binaries remembered (with or without a manifest).
pub const CACHE_ENTRIES: usize = 512;

/// A binary's identity: device, inode, size and modification time.
type FileId = (u64, u64, u64, i64);

pub struct Announcer {
    cache: HashMap<FileId, Option<Manifest>>,
    verbose: bool,
    sent: u64,
}

impl Announcer {
    pub fn new(verbose: bool) -> Self {
        Announcer {
            cache: HashMap::new(),
            verbose,
            sent: 0,
        }
    }

    /// Manifests sent so far.
    #[cfg(test)]
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Process `pid` has just executed a program: announce its manifest.
    pub fn started(&mut self, pid: u32) {
        if pid == std::process::id() {
            return;
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        // The process may be gone already; then there is nothing to announce.
        let Ok(file) = File::open(&exe) else { return };
        let Some(manifest) = self.manifest_of(file) else {
            return;
        };
        if guest_hints::try_send(&[Hint::Manifest(manifest)]).is_ok() {
            self.sent += 1;
            if self.verbose {
                let path = std::fs::read_link(&exe).unwrap_or(exe);
                say!(
                    "perfhintd: announced the manifest of {} (pid {pid})",
                    path.display()
                );
            }
        }
    }

    fn manifest_of(&mut self, mut file: File) -> Option<Manifest> {
        let meta = file.metadata().ok()?;
        let id = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
        if let Some(m) = self.cache.get(&id) {
            return *m;
        }
        let manifest = if meta.len() <= MAX_BINARY_BYTES {
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut bytes).ok()?;
            guest_hints::note::find_in_elf(&bytes).ok().flatten()
        } else {
            None
        };
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(id, manifest);
        manifest
    }
}

/// Finds processes that appeared in `/proc` since the last look.
pub struct Poller {
    seen: HashSet<u32>,
}

impl Poller {
    /// Processes running now count as seen: they started before perfhintd.
    pub fn new() -> Self {
        Poller { seen: pids() }
    }

    pub fn new_processes(&mut self) -> Vec<u32> {
        let now = pids();
        let new = now.difference(&self.seen).copied().collect();
        self.seen = now;
        new
    }
}

fn pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_read_once_and_one_without_a_manifest_is_remembered() {
        let mut a = Announcer::new(false);
        // The test binary itself embeds no manifest.
        let me = File::open("/proc/self/exe").unwrap();
        assert_eq!(a.manifest_of(me), None);
        assert_eq!(a.cache.len(), 1);
        a.started(std::process::id());
        a.started(u32::MAX);
        assert_eq!(a.sent(), 0, "no device, no manifest, no process");
    }

    #[test]
    fn the_poller_sees_a_new_process() {
        let mut p = Poller::new();
        let mut child = std::process::Command::new("sleep")
            .arg("2")
            .spawn()
            .unwrap();
        let new = p.new_processes();
        assert!(new.contains(&child.id()), "{new:?}");
        assert!(!p.new_processes().contains(&child.id()), "seen once");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

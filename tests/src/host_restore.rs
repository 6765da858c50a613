//! Restore timed on this machine's own `/dev/kvm`, outside the nested
//! harness (`snapshot-bench --on-host`).
//!
//! In the nested harness every KVM ioctl runs in an L1 kernel that QEMU
//! emulates instruction by instruction, so a restore's KVM work there
//! costs many times what it would natively. This machine's own `/dev/kvm`
//! cannot boot Linux to the end (`../shared/KVM-ON-THIS-MACHINE.md`: guest
//! ring 0 is emulated and stops on an instruction it cannot emulate), but
//! it creates VMs and vCPUs and takes their state natively. So: boot the
//! demo guest here for a few seconds (its kernel is part-way through
//! booting, all of the machine's devices exist), snapshot it with
//! `--stop`, then restore it again and again in new processes and read
//! `--boot-timer`'s restore line: the same code path, without the
//! emulation of the host kernel.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{guest_image, static_perfvmm};

/// How long the guest boots before its snapshot.
const BOOT_FOR: Duration = Duration::from_secs(5);
/// How long a restore may take to print its line.
const RESTORE_WAIT: Duration = Duration::from_secs(30);

/// One restore's `restore-timer` line: milliseconds since exec.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreTimes {
    pub state_ms: f64,
    pub memory_ms: f64,
    pub kvm_ms: f64,
    pub ready_ms: f64,
}

impl RestoreTimes {
    /// Reads `perfvmm: restore-timer: ready_ms=.. peak_rss_kib=..
    /// setup_ms=state:..,memory:..,kvm:..,...`.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.split_once("restore-timer:")?.1;
        let ready_ms = crate::bench::field(rest, "ready_ms")?;
        let step = |s| crate::bench::setup_step(rest, s);
        Some(RestoreTimes {
            state_ms: step("state")?,
            memory_ms: step("memory")?,
            kvm_ms: step("kvm")?,
            ready_ms,
        })
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots a `size_mib` guest on this machine's KVM for [`BOOT_FOR`] and
/// snapshots it (`--stop`) as `dir/snaps/s`.
fn snapshot(perfvmm: &Path, dir: &Path, size_mib: u32) -> Result<(), String> {
    let (kernel, initrd) = guest_image();
    let api = dir.join("api");
    let snaps = dir.join("snaps");
    std::fs::create_dir_all(&snaps).map_err(|e| format!("{}: {e}", snaps.display()))?;
    let vm = Command::new(perfvmm)
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--cmdline", "console=ttyS0 quiet", "--cpus", "1"])
        .args(["--memory", &format!("{size_mib}M")])
        .arg("--api-sock")
        .arg(&api)
        .arg("--snapshot-dir")
        .arg(&snaps)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start perfvmm: {e}"))?;
    std::thread::sleep(BOOT_FOR);
    let out = Command::new(perfvmm)
        .arg("ctl")
        .arg("--api-sock")
        .arg(&api)
        .args(["snapshot", "s", "--stop"])
        .output()
        .map_err(|e| format!("cannot run perfvmm ctl: {e}"))?;
    kill(vm);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the snapshot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Restores `snap` in a new perfvmm and returns its restore line; the
/// restored VM is stopped as soon as it printed it.
fn restore(perfvmm: &Path, snap: &Path) -> Result<RestoreTimes, String> {
    let mut child = Command::new(perfvmm)
        .arg("--restore")
        .arg(snap)
        .arg("--boot-timer")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start perfvmm: {e}"))?;
    // Read on a thread of its own, so that a perfvmm that hangs silent
    // cannot hold the bench past the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            let found = BufReader::new(err)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| RestoreTimes::parse(&l));
            let _ = tx.send(found);
        });
    }
    let found = rx.recv_timeout(RESTORE_WAIT).ok().flatten();
    kill(child);
    found.ok_or_else(|| "the restore printed no restore-timer line".into())
}

/// `runs` restores of one snapshot of a `size_mib` guest, on this machine's
/// own KVM.
pub fn measure(size_mib: u32, runs: usize) -> Result<Vec<RestoreTimes>, String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("this machine has no /dev/kvm".into());
    }
    let perfvmm = static_perfvmm();
    let dir = std::env::temp_dir().join(format!(
        "perfvmm-host-restore-{}-{size_mib}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = snapshot(perfvmm, &dir, size_mib).and_then(|()| {
        (0..runs)
            .map(|_| restore(perfvmm, &dir.join("snaps/s")))
            .collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_line_is_read() {
        let t = RestoreTimes::parse(
            "perfvmm: restore-timer: ready_ms=8.3 peak_rss_kib=4188 \
             setup_ms=state:0.4,memory:0.5,kvm:7.5,devices:7.9,vcpus:8.1",
        )
        .unwrap();
        assert_eq!((t.state_ms, t.kvm_ms, t.ready_ms), (0.4, 7.5, 8.3));
        assert!(RestoreTimes::parse("perfvmm: boot-timer: ready_ms=1").is_none());
        // A step missing or malformed: no times.
        assert!(RestoreTimes::parse(
            "perfvmm: restore-timer: ready_ms=8.3 setup_ms=state:x,memory:0.5,kvm:7.5"
        )
        .is_none());
    }
}

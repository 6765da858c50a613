//! What the side-by-side benchmarks (`boot-bench`, `snapshot-bench`)
//! share: the files they put beside the VMMs in the host they run in. Each
//! stops the benchmark with a line naming `tool` when it cannot.

use std::path::Path;
use std::process::Command;

use crate::cpio::CpioWriter;

/// `path`'s bytes, or the benchmark ends with status 1.
pub fn read_or_exit(tool: &str, path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("{tool}: {}: {e}", path.display());
        std::process::exit(1);
    })
}

/// `tests/bench/NAME.c` built static (so that it runs in L1), as bytes.
pub fn c_helper(tool: &str, name: &str) -> Vec<u8> {
    let ws = crate::workspace();
    let out = ws.build.join(name);
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-static", "-o"])
        .arg(&out)
        .arg(ws.root.join(format!("tests/bench/{name}.c")))
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("{tool}: cannot build tests/bench/{name}.c with gcc");
        std::process::exit(1);
    }
    read_or_exit(tool, &out)
}

/// An initramfs of the host's static busybox and `init` (a script run by
/// `/bin/busybox sh`), the same for every VMM.
pub fn busybox_initramfs(tool: &str, init: &str) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        eprintln!("{tool}: /bin/busybox (busybox-static, scripts/setup-host.sh): {e}");
        std::process::exit(1);
    });
    let mut c = CpioWriter::new();
    c.dir("bin")
        .dir("dev")
        .file("bin/busybox", 0o755, &busybox)
        .file("init", 0o755, init.as_bytes());
    c.finish()
}

/// A shell function for benchmark scripts: `wait_for FILE TEXT SECS` waits
/// until FILE holds TEXT, or says `bench: no 'TEXT' in FILE` after SECS.
pub const SH_WAIT_FOR: &str = r#"wait_for() {
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt $(($3 * 10)) ] && { echo "bench: no '$2' in $1"; return 1; }
    sleep 0.1
  done
}
"#;

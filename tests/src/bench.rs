//! What the side-by-side benchmarks (`boot-bench`, `snapshot-bench`)
//! share: the files they put beside the VMMs in the host they run in. Each
//! stops the benchmark with a line naming `tool` when it cannot.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::cpio::CpioWriter;

/// Prints `usage` and ends the tool (status 0) when its arguments ask for
/// help (`-h`, `--help`) anywhere: the benchmarks pass other arguments on
/// to the VMM in a nested boot, which a request for help must not start.
pub fn help_or_go_on(args: &[String], usage: &str) {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        // Not println!: a closed pipe (`| head`) must not panic.
        let _ = writeln!(std::io::stdout(), "{usage}");
        std::process::exit(0);
    }
}

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
    // On a fresh clone the build folder is made by the first guest run,
    // which comes after this.
    if let Err(e) = std::fs::create_dir_all(&ws.build) {
        eprintln!("{tool}: {}: {e}", ws.build.display());
        std::process::exit(1);
    }
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

/// The number in `key=NUMBER`, a whitespace-separated word of `line` (the
/// form of perfvmm's boot-timer and restore-timer lines and of vmm-run's).
pub fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The `setup_ms=step:ms,step:ms,...` field of a boot-timer or
/// restore-timer line: each of perfvmm's setup steps and when it ended, in
/// milliseconds since perfvmm's start. Malformed pairs are left out.
pub fn setup_steps(line: &str) -> Vec<(String, f64)> {
    let Some(list) = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("setup_ms="))
    else {
        return Vec::new();
    };
    list.split(',')
        .filter_map(|s| {
            let (step, ms) = s.split_once(':')?;
            Some((step.to_string(), ms.parse().ok()?))
        })
        .collect()
}

/// When setup step `step` of `line` ended (see [`setup_steps`]).
pub fn setup_step(line: &str, step: &str) -> Option<f64> {
    setup_steps(line)
        .into_iter()
        .find_map(|(s, ms)| (s == step).then_some(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_steps_are_read_in_order_and_malformed_ones_left_out() {
        let line = "perfvmm: boot-timer: first_instruction_ms=88.2 init_ms=5085.9 \
                    setup_ms=memory:5.7,kernel:49.9,bad,kvm:x";
        assert_eq!(
            setup_steps(line),
            vec![("memory".into(), 5.7), ("kernel".into(), 49.9)]
        );
        assert!(setup_steps("perfvmm: boot-timer: init_ms=1").is_empty());
        assert_eq!(setup_step(line, "kernel"), Some(49.9));
        assert_eq!(setup_step(line, "kvm"), None);
    }
}

//! What the harness did besides running tests: tests skipped and nested
//! runs retried, one line each (`test: reason`), appended to files under
//! [`dir`]. `scripts/test` empties the directory when it starts and sums
//! the files up when it ends, so that a skip or a retry is never hidden
//! behind libtest's "ok".

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file skipped tests are listed in, under [`dir`].
pub const SKIPS: &str = "skips";
/// The file retried nested runs are listed in, under [`dir`].
pub const RETRIES: &str = "retries";

/// `$PERFVMM_TEST_REPORT_DIR`, else `perfvmm-tests-report` in the target
/// directory (`$CARGO_TARGET_DIR`, else the workspace's `target`).
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PERFVMM_TEST_REPORT_DIR") {
        return PathBuf::from(d);
    }
    let root = &crate::workspace().root;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"));
    target.join("perfvmm-tests-report")
}

/// The running test as `binary::test` (libtest names each test's thread
/// after the test), or the program's name outside a test.
pub fn test_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("?");
    let bin = without_cargo_hash(stem);
    match std::thread::current().name() {
        Some(t) if t != "main" => format!("{bin}::{t}"),
        _ => bin.to_string(),
    }
}

/// `NAME` of a test binary's `NAME-HASH` (16 hex digits); other names whole.
fn without_cargo_hash(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => stem,
    }
}

/// Appends `test: reason` to report file `file`; a report that cannot be
/// written is said on stderr, and does not fail the test.
pub fn record(file: &str, reason: &str) {
    let line = format!("{}: {}\n", test_name(), reason.replace('\n', " "));
    let dir = dir();
    if let Err(e) = append(&dir, file, &line) {
        eprintln!("harness: cannot write {}/{file}: {e}", dir.display());
    }
}

fn append(dir: &Path, file: &str, line: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))?
        .write_all(line.as_bytes())
}

/// The tests that had a retry, once per retry.
fn lock_done() -> std::sync::MutexGuard<'static, Vec<String>> {
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    DONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a retry of a nested run by the running test; returns how many
/// it has had in this process, this one included.
pub fn retry(reason: &str) -> usize {
    lock_done().push(test_name());
    record(RETRIES, reason);
    retries()
}

/// How many retries the running test has had in this process.
pub fn retries() -> usize {
    let name = test_name();
    lock_done().iter().filter(|n| **n == name).count()
}

/// Marks the running test skipped: says so on stderr (past libtest's
/// output capture, so that it shows when the test passes) and in the
/// report. The caller returns at once; libtest still prints "ok", and
/// `scripts/test` lists the skip in its summary.
pub fn skip(reason: &str) {
    let line = format!("SKIPPED: {}: {reason}\n", test_name());
    let _ = std::io::stderr().write_all(line.as_bytes());
    record(SKIPS, reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_name_is_the_binary_and_the_test() {
        let name = test_name();
        assert!(
            name.ends_with("::report::tests::test_name_is_the_binary_and_the_test"),
            "{name}"
        );
    }

    #[test]
    fn cargo_hashes_are_dropped_from_binary_names() {
        assert_eq!(without_cargo_hash("boot-0123456789abcdef"), "boot");
        assert_eq!(without_cargo_hash("perfvmm-run"), "perfvmm-run");
        assert_eq!(without_cargo_hash("resize-bench"), "resize-bench");
    }

    #[test]
    fn lines_are_appended() {
        let dir = crate::scratch_dir("report");
        append(&dir, SKIPS, "a: one\n").unwrap();
        append(&dir, SKIPS, "b: two\n").unwrap();
        let text = std::fs::read_to_string(dir.join(SKIPS)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "a: one\nb: two\n");
    }
}

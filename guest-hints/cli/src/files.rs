//! Writing files so that a failure loses nothing: a temporary file beside
//! the target, then a rename over it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whether `path` exists and has no write permission for anyone (checked
/// from its mode, so that it holds for root too).
pub fn is_read_only(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.permissions().readonly())
        .unwrap_or(false)
}

/// Whether `target` could be written by [`write_atomic`]: not read-only,
/// not a directory, in a directory that exists.
pub fn check_writable(target: &Path) -> Result<(), String> {
    if is_read_only(target) {
        return Err(format!("{} is read-only", target.display()));
    }
    if fs::metadata(target).is_ok_and(|m| m.is_dir()) {
        return Err(format!("{} is a directory", target.display()));
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Err(format!(
            "cannot write {}: {} is not a directory",
            target.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Replaces `target` with `bytes` (mode `mode`) through a temporary file in
/// the same directory and a rename; on any error `target` is unchanged.
/// Refuses a target that is read-only.
pub fn write_atomic(target: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    check_writable(target)?;
    let name = target
        .file_name()
        .ok_or_else(|| format!("{} names no file", target.display()))?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = dir.join(format!(
        ".{}.perfhint-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", target.display());
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode & 0o7777))?;
        fs::rename(&temp, target)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        fail(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_or_refuses() {
        let dir = std::env::temp_dir().join(format!("perfhint-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a");
        write_atomic(&f, b"one", 0o644).unwrap();
        write_atomic(&f, b"two", 0o755).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o755
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o444)).unwrap();
        let e = write_atomic(&f, b"three", 0o644).unwrap_err();
        assert!(e.ends_with("is read-only"), "{e}");
        assert_eq!(fs::read(&f).unwrap(), b"two");
        let e = write_atomic(&f.join("under-a-file"), b"x", 0o644).unwrap_err();
        assert!(e.starts_with("cannot write"), "{e}");
        let e = write_atomic(&dir, b"x", 0o644).unwrap_err();
        assert!(e.ends_with("is a directory"), "{e}");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}

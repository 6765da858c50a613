//! One JSON-lines writer for every log perfvmm keeps (hints, decisions): a
//! line per value, at most a set number of bytes (past it, lines are
//! counted, and [`JsonLines::close`] writes how many were dropped), and on
//! the first write error a warning and no further lines, so neither a
//! flooding guest nor a full disk stops the VM.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A JSON-lines file, or nothing when no path was given.
pub struct JsonLines {
    out: Option<BufWriter<File>>,
    /// What the file holds, for the warning ("hint log").
    what: &'static str,
    path: PathBuf,
    /// Bytes written, and the most that may be.
    written: u64,
    limit: u64,
    /// Lines not written because of the limit.
    dropped: u64,
    line: Vec<u8>,
}

impl JsonLines {
    /// Creates (truncates) `path`, to hold at most `limit` bytes of lines;
    /// `None` makes a writer that drops every line.
    pub fn create(what: &'static str, path: Option<&Path>, limit: u64) -> std::io::Result<Self> {
        let out = path.map(File::create).transpose()?.map(BufWriter::new);
        Ok(JsonLines {
            out,
            what,
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            written: 0,
            limit,
            dropped: 0,
            line: Vec::new(),
        })
    }

    /// Whether lines go anywhere.
    pub fn is_open(&self) -> bool {
        self.out.is_some()
    }

    /// Appends one value as a line (buffered until [`flush`](Self::flush)),
    /// or counts it as dropped past the limit.
    pub fn write(&mut self, v: &impl Serialize) {
        let Some(out) = &mut self.out else { return };
        self.line.clear();
        if let Err(e) = serde_json::to_writer(&mut self.line, v) {
            log::warn!("{}: cannot encode a line: {e}", self.what);
            return;
        }
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.written.saturating_add(len) > self.limit {
            self.dropped += 1;
            return;
        }
        match out.write_all(&self.line) {
            Ok(()) => self.written += len,
            Err(e) => self.fail(e),
        }
    }

    /// Appends one value as a line whatever the limit (the last line of a
    /// log, such as the final counters).
    pub fn write_always(&mut self, v: &impl Serialize) {
        let limit = std::mem::replace(&mut self.limit, u64::MAX);
        self.write(v);
        self.limit = limit;
    }

    /// Lines dropped at the limit so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes, past the limit, one line saying how many lines were dropped
    /// (when any were), and flushes.
    pub fn close(&mut self) {
        if self.dropped > 0 {
            if let Some(out) = &mut self.out {
                let marker = serde_json::json!({
                    "truncated": { "limit_bytes": self.limit, "dropped_lines": self.dropped }
                });
                if let Err(e) = writeln!(out, "{marker}") {
                    self.fail(e);
                }
            }
        }
        self.flush();
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) {
        if let Some(Err(e)) = self.out.as_mut().map(|o| o.flush()) {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        log::warn!(
            "{} {}: {e}; nothing more is written to it",
            self.what,
            self.path.display()
        );
        self.out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_one_line_per_value_and_survives_no_path() {
        let path = std::env::temp_dir().join(format!("perfvmm-jsonl-{}", std::process::id()));
        let mut log = JsonLines::create("test log", Some(&path), 1 << 20).unwrap();
        log.write(&json!({"a": 1}));
        log.write(&json!({"b": [2, 3]}));
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":[2,3]}\n");
        std::fs::remove_file(&path).unwrap();

        let mut none = JsonLines::create("test log", None, 1 << 20).unwrap();
        assert!(!none.is_open());
        none.write(&json!(1));
        none.flush();
    }

    #[test]
    fn past_the_limit_lines_are_counted_and_the_count_written_last() {
        let path = std::env::temp_dir().join(format!("perfvmm-jsonl-cap-{}", std::process::id()));
        let mut log = JsonLines::create("test log", Some(&path), 20).unwrap();
        for i in 0..10 {
            log.write(&json!({ "i": i }));
        }
        assert_eq!(log.dropped(), 8, "two 8-byte lines fit in 20 bytes");
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["{\"i\":0}", "{\"i\":1}"]);
        assert!(lines[2].contains("\"dropped_lines\":8"), "{text}");
        std::fs::remove_file(&path).unwrap();
    }
}

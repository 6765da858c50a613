//! One JSON-lines writer for every log perfvmm keeps (hints, decisions): a
//! line per value, and on the first write error a warning and no further
//! lines, so a full disk never stops the VM.

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
}

impl JsonLines {
    /// Creates (truncates) `path`; `None` makes a writer that drops every line.
    pub fn create(what: &'static str, path: Option<&Path>) -> std::io::Result<Self> {
        let out = path.map(File::create).transpose()?.map(BufWriter::new);
        Ok(JsonLines {
            out,
            what,
            path: path.map(Path::to_path_buf).unwrap_or_default(),
        })
    }

    /// Whether lines go anywhere.
    pub fn is_open(&self) -> bool {
        self.out.is_some()
    }

    /// Appends one value as a line (buffered until [`flush`](Self::flush)).
    pub fn write(&mut self, v: &impl Serialize) {
        let Some(out) = &mut self.out else { return };
        let r = serde_json::to_writer(&mut *out, v)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        if let Err(e) = r {
            self.fail(e);
        }
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
        let mut log = JsonLines::create("test log", Some(&path)).unwrap();
        log.write(&json!({"a": 1}));
        log.write(&json!({"b": [2, 3]}));
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":[2,3]}\n");
        std::fs::remove_file(&path).unwrap();

        let mut none = JsonLines::create("test log", None).unwrap();
        assert!(!none.is_open());
        none.write(&json!(1));
        none.flush();
    }
}

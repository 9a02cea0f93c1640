//! Progress bars (indicatif) on a terminal; JSON or silence otherwise.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use chunkbak_engine::progress::{Change, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{path_json, Out};

pub struct Bar {
    bar: Option<ProgressBar>,
    out: Out,
    /// Warnings seen, printed at once (text) or as JSON lines.
    lock: Mutex<()>,
    /// Print each change a restore makes (dry runs, -v).
    changes: bool,
}

impl Bar {
    /// A byte-counting bar when stderr is a terminal and output is for humans.
    pub fn new(out: &Out, enabled: bool, what: &str) -> Self {
        let bar = (enabled && !out.json && !out.quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            b.set_prefix(what.to_string());
            b
        });
        Bar {
            bar,
            out: out.clone(),
            lock: Mutex::new(()),
            changes: false,
        }
    }

    /// Also prints every change a restore makes (or would make): on standard output, as
    /// "new PATH" lines or JSON `change` lines.
    pub fn with_changes(mut self, on: bool) -> Self {
        self.changes = on;
        self
    }

    /// A status line for humans, above the bar (nothing with --json or --quiet).
    pub fn note(&self, line: &str) {
        if self.out.json || self.out.quiet {
            return;
        }
        let _g = self.lock.lock();
        match &self.bar {
            Some(b) => b.println(line),
            None => crate::elog!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn total(&self, files: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_length(bytes);
            b.set_message(format!("{files} files"));
        }
    }

    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn file_done(&self, path: &Path) {
        if self.out.verbose >= 2 {
            let _g = self.lock.lock();
            let line = format!("{}", path.display());
            match &self.bar {
                Some(b) => b.println(line),
                None => crate::elog!("{line}"),
            }
        }
    }

    fn change(&self, change: Change, path: &Path) {
        if !self.changes {
            return;
        }
        let _g = self.lock.lock();
        let bytes = path.as_os_str().as_encoded_bytes();
        if self.out.json {
            let mut d = serde_json::Map::new();
            d.insert("action".into(), change.as_str().into());
            path_json(&mut d, "path", bytes);
            self.out.json_line("change", serde_json::Value::Object(d));
            return;
        }
        let mut line = format!("{:<7}", change.as_str()).into_bytes();
        line.extend_from_slice(bytes);
        match &self.bar {
            Some(b) => b.println(String::from_utf8_lossy(&line)),
            None => self.out.raw_line(&line),
        }
    }

    fn warning(&self, path: &Path, message: &str) {
        let _g = self.lock.lock();
        if self.out.json {
            let mut d = serde_json::Map::new();
            path_json(&mut d, "path", path.as_os_str().as_encoded_bytes());
            d.insert("message".into(), message.into());
            self.out.json_line("warning", serde_json::Value::Object(d));
            return;
        }
        let line = format!("warning: {}: {message}", path.display());
        match &self.bar {
            Some(b) => b.println(line),
            None => crate::elog!("{line}"),
        }
    }
}

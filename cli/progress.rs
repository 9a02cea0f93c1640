//! Progress bars (indicatif) on a terminal; JSON or silence otherwise.
//!
//! What the bar says comes from [`Model`], which is given the time by its caller, so what it
//! shows at each moment is tested with a made-up clock.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chunkbak_engine::progress::{Change, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{human_bytes, path_json, Out};

/// What a run has done and has left, as the engine reports it.
#[derive(Debug)]
pub struct Model {
    /// What the counted items are: "files", "packs", "snapshots".
    unit: &'static str,
    /// When the first byte was done: the rate counts from then, not from planning or a wait
    /// for archived data before it.
    start: Option<Instant>,
    files_total: u64,
    bytes_total: u64,
    /// The totals are complete (the scan ended, or the plan knew them).
    known: bool,
    files_done: u64,
    bytes_done: u64,
    errors: u64,
    current: Option<String>,
    message: Option<String>,
}

/// The longest current path shown, in characters (the end of a longer one is kept).
const PATH_CHARS: usize = 40;

impl Model {
    pub fn new(unit: &'static str) -> Self {
        Model {
            unit,
            start: None,
            files_total: 0,
            bytes_total: 0,
            known: false,
            files_done: 0,
            bytes_done: 0,
            errors: 0,
            current: None,
            message: None,
        }
    }

    /// Whether there is a size to draw a bar against.
    pub fn measured(&self) -> bool {
        self.bytes_total > 0
    }

    /// Seconds left at the rate so far: only once the totals are complete, some work is done
    /// and a second has passed (before that, any figure would be a guess).
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        let elapsed = self.elapsed(now);
        if !self.known || self.bytes_done == 0 || elapsed < 1.0 {
            return None;
        }
        let left = self.bytes_total.saturating_sub(self.bytes_done);
        let rate = self.bytes_done as f64 / elapsed;
        Some(Duration::from_secs_f64(left as f64 / rate).max(Duration::ZERO))
    }

    /// The status after the bar: bytes, rate, ETA, items, errors, current path.
    pub fn render(&self, now: Instant) -> String {
        let mut parts: Vec<String> = Vec::new();
        let so_far = if self.known { "" } else { " so far" };
        let elapsed = self.elapsed(now);
        if self.bytes_total > 0 {
            parts.push(format!(
                "{}/{}{so_far}",
                human_bytes(self.bytes_done),
                human_bytes(self.bytes_total)
            ));
        } else if self.bytes_done > 0 {
            parts.push(human_bytes(self.bytes_done));
        }
        if self.bytes_done > 0 && elapsed >= 1.0 {
            parts.push(format!(
                "{}/s",
                human_bytes((self.bytes_done as f64 / elapsed) as u64)
            ));
        }
        if let Some(eta) = self.eta(now) {
            parts.push(format!("ETA {}", short_duration(eta)));
        }
        if self.files_total > 0 {
            parts.push(format!(
                "{}/{}{so_far} {}",
                self.files_done, self.files_total, self.unit
            ));
        } else if self.files_done > 0 {
            parts.push(format!("{} {}", self.files_done, self.unit));
        }
        if self.errors > 0 {
            parts.push(format!(
                "{} error{}",
                self.errors,
                if self.errors == 1 { "" } else { "s" }
            ));
        }
        if parts.is_empty() {
            if let Some(m) = &self.message {
                parts.push(m.clone());
            }
        }
        if let Some(p) = &self.current {
            parts.push(tail(p, PATH_CHARS));
        }
        parts.join(" · ")
    }

    /// Totals: `known` ones replace any; running ones (a scan's so far) only running ones.
    pub fn total(&mut self, files: u64, bytes: u64, known: bool) {
        if self.known && !known {
            return;
        }
        self.files_total = files;
        self.bytes_total = bytes;
        self.known |= known;
    }
    /// Seconds since the first byte.
    fn elapsed(&self, now: Instant) -> f64 {
        self.start
            .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64())
    }

    pub fn bytes(&mut self, n: u64, now: Instant) {
        self.start.get_or_insert(now);
        self.bytes_done += n;
    }
    pub fn done(&mut self) {
        self.files_done += 1;
    }
    pub fn started(&mut self, path: &Path) {
        self.current = Some(path.display().to_string());
    }
    pub fn error(&mut self) {
        self.errors += 1;
    }
    pub fn message(&mut self, m: &str) {
        self.message = Some(m.to_string());
    }
}

/// `1h 02m`, `5m 07s`, `42s`.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The last `n` characters of `s`, after an ellipsis when cut.
fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        return s.to_string();
    }
    let rest: String = s.chars().skip(count - (n - 1)).collect();
    format!("…{rest}")
}

/// How often the status line is recomputed (the bar itself redraws at 5 Hz).
const RENDER_EVERY: Duration = Duration::from_millis(200);

pub struct Bar {
    bar: Option<ProgressBar>,
    model: Mutex<(Model, Option<Instant>)>,
    out: Out,
    /// Warnings seen, printed at once (text) or as JSON lines.
    lock: Mutex<()>,
    /// Print each change a restore makes (dry runs, -v).
    changes: bool,
}

impl Bar {
    /// A bar when stderr is a terminal and output is for humans: a spinner with what is done
    /// until there is a size to measure against. Its items are files.
    pub fn new(out: &Out, enabled: bool, what: &str) -> Self {
        let bar =
            (enabled && !out.json && !out.quiet && std::io::stderr().is_terminal()).then(|| {
                let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
                b.set_style(spinner_style());
                b.set_prefix(what.to_string());
                b.enable_steady_tick(Duration::from_millis(200));
                b
            });
        Bar {
            bar,
            model: Mutex::new((Model::new("files"), None)),
            out: out.clone(),
            lock: Mutex::new(()),
            changes: false,
        }
    }

    /// What the counted items are ("packs", "snapshots").
    pub fn unit(self, unit: &'static str) -> Self {
        self.model.lock().expect("progress").0.unit = unit;
        self
    }

    /// Also prints every change a restore makes (or would make): on standard output, as
    /// "new PATH" lines or JSON `change` lines.
    pub fn with_changes(mut self, on: bool) -> Self {
        self.changes = on;
        self
    }

    /// Applies a change to the model and redraws (at most every [`RENDER_EVERY`], unless
    /// `force`).
    fn update(&self, force: bool, f: impl FnOnce(&mut Model, Instant)) {
        let Some(b) = &self.bar else { return };
        let mut g = self.model.lock().expect("progress");
        let was_measured = g.0.measured();
        let now = Instant::now();
        f(&mut g.0, now);
        if !was_measured && g.0.measured() {
            b.set_style(bar_style());
            b.set_length(g.0.bytes_total);
        }
        if !force && g.1.is_some_and(|t| now.duration_since(t) < RENDER_EVERY) {
            return;
        }
        g.1 = Some(now);
        if g.0.measured() {
            b.set_length(g.0.bytes_total.max(g.0.bytes_done));
            b.set_position(g.0.bytes_done);
        }
        b.set_message(g.0.render(now));
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

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{elapsed_precise}] {spinner} {msg}")
        .expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {msg}")
        .expect("valid template")
}

impl Progress for Bar {
    fn total(&self, files: u64, bytes: u64) {
        self.update(false, |m, _| m.total(files, bytes, false));
    }

    fn final_total(&self, files: u64, bytes: u64) {
        self.update(true, |m, _| m.total(files, bytes, true));
    }

    fn bytes(&self, n: u64) {
        self.update(false, |m, now| m.bytes(n, now));
    }

    fn started(&self, path: &Path) {
        self.update(false, |m, _| m.started(path));
    }

    fn message(&self, message: &str) {
        self.update(true, |m, _| m.message(message));
    }

    fn file_done(&self, path: &Path) {
        self.update(false, |m, _| m.done());
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
        self.update(true, |m, _| m.error());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: f64) -> Instant {
        start + Duration::from_secs_f64(secs)
    }

    /// A backup whose scan is ahead of the reading: files done of the total so far, no ETA
    /// until the scan ends, then one that counts down with the work.
    #[test]
    fn backup_shows_done_of_total_and_an_eta_only_once_the_total_is_known() {
        let t0 = Instant::now();
        let mut m = Model::new("files");
        assert_eq!(m.render(t0), "", "nothing to show yet");
        m.total(1000, 10_000_000, false);
        m.started(Path::new("/data/a"));
        m.bytes(1_000_000, t0);
        for _ in 0..100 {
            m.done();
        }
        let s = m.render(at(t0, 2.0));
        assert!(s.contains("100/1000 so far files"), "{s}");
        assert!(s.contains("976.56 KiB/9.54 MiB so far"), "{s}");
        assert!(s.contains("488.28 KiB/s"), "{s}");
        assert!(s.ends_with("/data/a"), "{s}");
        assert!(!s.contains("ETA"), "an ETA against a growing total: {s}");
        // The scan ends: 2000 files, 20 MB.
        m.total(2000, 20_000_000, true);
        m.bytes(1_000_000, at(t0, 3.0));
        let s = m.render(at(t0, 4.0));
        assert!(s.contains("1.91 MiB/19.07 MiB · "), "{s}");
        assert!(s.contains("ETA 36s"), "18 MB left at 0.5 MB/s: {s}");
        assert!(s.contains("100/2000 files"), "{s}");
        m.bytes(8_000_000, at(t0, 19.0));
        assert!(
            m.render(at(t0, 20.0)).contains("ETA 20s"),
            "10 MB left at 0.5 MB/s"
        );
        m.bytes(10_000_000, at(t0, 39.0));
        assert_eq!(m.eta(at(t0, 40.0)), Some(Duration::ZERO));
        // A later `total` with a scan's running figures changes nothing.
        m.total(500, 5_000_000, false);
        assert!(m.eta(at(t0, 40.0)).is_some());
        assert!(m.render(at(t0, 40.0)).contains("100/2000 files"));
    }

    /// A restore: the plan knows its totals before the first byte, and the rate counts from
    /// that byte (not from the planning or a wait for archived data); errors are counted; a
    /// long path is shown by its end.
    #[test]
    fn restore_counts_errors_and_shows_the_current_path_by_its_end() {
        let t0 = Instant::now();
        let mut m = Model::new("files");
        m.total(10, 1 << 30, true);
        assert!(m.eta(at(t0, 5.0)).is_none(), "no rate yet");
        // Thirty seconds of planning and thawing, then a minute of writing.
        m.bytes(1 << 28, at(t0, 30.0));
        m.done();
        m.error();
        m.started(Path::new(
            "/srv/www/releases/2026-12-06/assets/images/large-banner.png",
        ));
        let s = m.render(at(t0, 90.0));
        assert!(s.contains("256.00 MiB/1.00 GiB"), "{s}");
        assert!(s.contains("ETA 3m 00s"), "{s}");
        assert!(s.contains("1/10 files · 1 error · "), "{s}");
        assert!(
            s.ends_with(" · …26-12-06/assets/images/large-banner.png"),
            "{s}"
        );
        let shown = s.rsplit(" · ").next().unwrap();
        assert_eq!(shown.chars().count(), PATH_CHARS);
        m.error();
        assert!(m.render(at(t0, 91.0)).contains("2 errors"));
        assert_eq!(short_duration(Duration::from_secs(3725)), "1h 02m");
    }

    /// Nothing to measure: the status message, no byte figures, no bar, no ETA.
    #[test]
    fn nothing_to_measure_shows_the_message_and_no_bar() {
        let t0 = Instant::now();
        let mut m = Model::new("packs");
        m.message("reading the index");
        assert!(!m.measured());
        assert_eq!(m.render(at(t0, 3.0)), "reading the index");
        // Packs checked without a byte total: counted in packs.
        m.done();
        m.done();
        assert_eq!(m.render(at(t0, 3.0)), "2 packs");
        assert!(m.eta(at(t0, 3.0)).is_none());
    }
}

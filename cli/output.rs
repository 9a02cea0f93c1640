//! Human and JSON Lines output. A broken pipe ends the program quietly with exit code 0.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use serde_json::{json, Map, Value};

#[derive(Clone, Debug)]
pub struct Out {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
}

impl Out {
    fn write(&self, bytes: &[u8]) {
        let mut o = std::io::stdout().lock();
        if let Err(e) = o.write_all(bytes).and_then(|_| o.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("chunkbak: writing output: {e}");
            std::process::exit(1);
        }
    }

    /// A line of text for humans (suppressed by --quiet and --json).
    pub fn line(&self, s: impl AsRef<str>) {
        if !self.json && !self.quiet {
            let mut b = s.as_ref().as_bytes().to_vec();
            b.push(b'\n');
            self.write(&b);
        }
    }

    /// Raw bytes plus newline (file names that are not UTF-8 are printed as they are).
    pub fn raw_line(&self, bytes: &[u8]) {
        if !self.json && !self.quiet {
            let mut b = bytes.to_vec();
            b.push(b'\n');
            self.write(&b);
        }
    }

    /// One JSON Lines message `{"type": ty, "data": data}`.
    pub fn json_line(&self, ty: &str, data: Value) {
        let mut s = serde_json::to_vec(&json!({"type": ty, "data": data})).expect("JSON encodes");
        s.push(b'\n');
        self.write(&s);
    }
}

/// Stores a path under `key` when it is UTF-8, otherwise its bytes base64-encoded under `key_b64`.
pub fn path_json(m: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            m.insert(key.into(), s.into());
        }
        Err(_) => {
            m.insert(
                format!("{key}_b64"),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
    }
}

/// 1.5 GiB style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// The `--log-file`, once opened: every message chunkbak writes to stderr also goes there,
/// with a UTC time and the process id, and each run ends with its summary line.
static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Opens (appending, creating) the log file.
pub fn open_log(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let _ = LOG.set(Mutex::new(f));
    Ok(())
}

/// Appends one line to the log file, if there is one (each line of a multi-line message on
/// its own line, all with the same stamp).
pub fn log_line(msg: &str) {
    let Some(f) = LOG.get() else { return };
    let stamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let pid = std::process::id();
    let mut buf = String::new();
    for l in msg.lines().filter(|l| !l.trim().is_empty()) {
        buf.push_str(&format!("{stamp} [{pid}] {l}\n"));
    }
    if let Ok(mut f) = f.lock() {
        let _ = f.write_all(buf.as_bytes());
    }
}

/// What a command says of its run in the one-line summary (snapshot, files, bytes, ...).
static SUMMARY: Mutex<Option<String>> = Mutex::new(None);

pub fn set_summary(s: String) {
    *SUMMARY.lock().expect("summary lock") = Some(s);
}

pub fn take_summary() -> Option<String> {
    SUMMARY.lock().expect("summary lock").take()
}

/// `eprintln!` that also writes the line to the `--log-file`.
#[macro_export]
macro_rules! elog {
    ($($t:tt)*) => {{
        let m = format!($($t)*);
        eprintln!("{m}");
        $crate::output::log_line(&m);
    }};
}

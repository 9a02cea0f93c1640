//! Human and JSON Lines output. A broken pipe ends the program quietly with exit code 0.

use std::io::{IsTerminal, Write};
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
            let mut b = on_terminal(s.as_ref().as_bytes(), std::io::stdout().is_terminal());
            b.push(b'\n');
            self.write(&b);
        }
    }

    /// Raw bytes plus newline (file names that are not UTF-8 are printed as they are; on a
    /// terminal, control characters are escaped).
    pub fn raw_line(&self, bytes: &[u8]) {
        if !self.json && !self.quiet {
            let mut b = on_terminal(bytes, std::io::stdout().is_terminal());
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

/// Opens (appending, creating) the log file, readable by its owner only.
pub fn open_log(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // An older log may be readable by others: tighten it (it names hosts, paths and snapshots).
    if f.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    {
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    let _ = LOG.set(Mutex::new(f));
    Ok(())
}

/// The command line as the log shows it: the values of options that name a password source
/// (its command, its file) replaced by `<redacted>`.
pub fn redact_args(args: &[String]) -> Vec<String> {
    let secret = |a: &str| {
        a.starts_with("--")
            && a.contains("password")
            && (a.ends_with("-command") || a.ends_with("-file"))
    };
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
        } else if let Some((k, _)) = a.split_once('=').filter(|(k, _)| secret(k)) {
            out.push(format!("{k}=<redacted>"));
        } else {
            hide_next = secret(a);
            out.push(a.clone());
        }
    }
    out
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

/// `1 file`, `2 files`: a count and its noun (`one` singular; the plural adds an s).
pub fn count(n: u64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// Standard output and standard error are the same terminal (an interactive run).
pub fn one_terminal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let (o, e) = (std::io::stdout(), std::io::stderr());
    if !o.is_terminal() || !e.is_terminal() {
        return false;
    }
    let meta = |fd: i32| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok();
    match (meta(1), meta(2)) {
        (Some(a), Some(b)) => a.dev() == b.dev() && a.ino() == b.ino() && a.rdev() == b.rdev(),
        _ => true,
    }
}

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
        $crate::output::eprint_line(&m);
        $crate::output::log_line(&m);
    }};
}

/// One message line on stderr, control characters escaped when stderr is a terminal.
pub fn eprint_line(m: &str) {
    let mut b = on_terminal(m.as_bytes(), std::io::stderr().is_terminal());
    b.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&b);
}

/// `bytes` as they may reach a terminal: control characters (C0 but newline, DEL, and the C1
/// range as UTF-8 encodes it) become `\xNN` escapes, so a file name cannot move the cursor,
/// retitle the window or fake output. Elsewhere (a pipe, a file, `--json`) bytes are kept.
pub fn on_terminal(bytes: &[u8], terminal: bool) -> Vec<u8> {
    if !terminal {
        return bytes.to_vec();
    }
    escape_controls(bytes)
}

/// Every control character but newline as `\xNN` (C1 controls as their two UTF-8 bytes).
pub fn escape_controls(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let c1 = b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n));
        if (b < 0x20 && b != b'\n') || b == 0x7f {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else if c1 {
            out.extend_from_slice(format!("\\x{b:02x}\\x{:02x}", bytes[i + 1]).as_bytes());
            i += 1;
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_for_a_terminal_only() {
        let name = b"a\x1b]0;owned\x07b\tc\x7f\xc2\x9bd\xff\xc3\xa9";
        assert_eq!(
            escape_controls(name),
            b"a\\x1b]0;owned\\x07b\\x09c\\x7f\\xc2\\x9bd\xff\xc3\xa9".to_vec()
        );
        assert_eq!(on_terminal(name, false), name.to_vec());
        assert_eq!(escape_controls(b"line\n"), b"line\n".to_vec());
    }

    #[test]
    fn password_sources_are_redacted_from_the_logged_command_line() {
        let args: Vec<String> = [
            "chunkbak",
            "--password-command",
            "vault read secret",
            "--new-password-file=/root/pw",
            "backup",
            "/srv",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            redact_args(&args),
            [
                "chunkbak",
                "--password-command",
                "<redacted>",
                "--new-password-file=<redacted>",
                "backup",
                "/srv"
            ]
        );
    }
}

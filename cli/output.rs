//! Human and JSON Lines output. A broken pipe ends the program quietly with exit code 0.

use std::io::Write;

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

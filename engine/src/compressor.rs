//! Stage 3: zstd compression per blob, skipped when it does not pay.

use crate::error::{Error, Result};

/// Compression of a stored blob, as recorded in pack headers and the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

impl Compression {
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Compresses `raw` at `level`; returns the raw bytes flagged `None` when zstd does not save at
/// least 1/32 of the size (incompressible data is stored as it is). Level 0 disables compression.
pub fn compress(raw: &[u8], level: i32) -> (Compression, Vec<u8>) {
    if level == 0 || raw.len() < 64 {
        return (Compression::None, raw.to_vec());
    }
    // One zstd context per thread, reused: creating one per blob costs more than compressing
    // a small file.
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let r = CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, z) = c.as_mut().expect("set above");
        z.compress(raw)
    });
    match r {
        Ok(c) if c.len() + raw.len() / 32 < raw.len() => (Compression::Zstd, c),
        _ => (Compression::None, raw.to_vec()),
    }
}

/// Inverse of [`compress`]; `raw_len` is the length recorded for the blob and bounds the output.
pub fn decompress(c: Compression, data: Vec<u8>, raw_len: usize, name: &str) -> Result<Vec<u8>> {
    match c {
        Compression::None => {
            if data.len() != raw_len {
                return Err(Error::corrupt(
                    name,
                    format!("stored length {} != recorded {}", data.len(), raw_len),
                ));
            }
            Ok(data)
        }
        Compression::Zstd => {
            thread_local! {
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            let out = DCTX
                .with(|d| {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new()?);
                    }
                    d.as_mut().expect("set above").decompress(&data, raw_len)
                })
                .map_err(|e| Error::corrupt(name, format!("zstd: {e}")))?;
            if out.len() != raw_len {
                return Err(Error::corrupt(
                    name,
                    format!("decompressed {} bytes, expected {}", out.len(), raw_len),
                ));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_and_incompressible() {
        let text = b"the quick brown fox ".repeat(1000);
        let (c, z) = compress(&text, 3);
        assert_eq!(c, Compression::Zstd);
        assert!(z.len() < text.len() / 10);
        assert_eq!(decompress(c, z, text.len(), "t").unwrap(), text);

        let mut x = 0x9E3779B97F4A7C15u64;
        let random: Vec<u8> = (0..10000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (c, z) = compress(&random, 3);
        assert_eq!(c, Compression::None);
        assert_eq!(z, random);
        assert!(decompress(Compression::Zstd, b"garbage".to_vec(), 10, "t").is_err());
    }
}

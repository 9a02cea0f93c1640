//! Stage 3: zstd compression per blob, skipped when it does not pay.

use crate::error::{Error, Result};

/// Compression of a stored blob, as recorded in pack headers and the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
    /// A zstd frame compressed with a base blob's plaintext as its prefix (format-spec 6.1):
    /// a delta against the base, which the record's base id names.
    Delta = 2,
}

impl Compression {
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Delta),
            _ => None,
        }
    }
}

/// Level 3 (the default) on inputs over this size uses [`TUNED_LOGS`] instead of zstd's table.
const TUNED_ABOVE: usize = 256 * 1024;

/// zstd's level 3 hash logs for large inputs: the long-match table one size up (18 instead of
/// 17) and the short-match table two sizes down (14 instead of 16). On 1 MiB chunks the
/// default short table fills with 5-byte matches that cost more than they save on structured
/// text: a plain-SQL dump compresses 2.3% smaller, binaries and documents 0.1-0.2% larger,
/// at the same speed (docs/benchmarks.md, "zstd parameters").
const TUNED_LOGS: (u32, u32) = (18, 14);

/// Compresses `raw` at `level`; returns the raw bytes flagged `None` when zstd does not save at
/// least 1/32 of the size (incompressible data is stored as it is). Level 0 disables compression.
pub fn compress(raw: &[u8], level: i32) -> (Compression, Vec<u8>) {
    if level == 0 || raw.len() < 64 {
        return (Compression::None, raw.to_vec());
    }
    // One zstd context per thread, reused: creating one per blob costs more than compressing
    // a small file.
    thread_local! {
        static CCTX: std::cell::RefCell<Option<(i32, bool, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let tune = level == 3 && raw.len() > TUNED_ABOVE;
    let r = CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _, _)| *l != level) {
            *c = Some((level, false, zstd::bulk::Compressor::new(level)?));
        }
        let (_, tuned, z) = c.as_mut().expect("set above");
        if *tuned != tune {
            // 0 gives the parameter back to the level's own table.
            let (hash, chain) = if tune { TUNED_LOGS } else { (0, 0) };
            z.set_parameter(zstd::zstd_safe::CParameter::HashLog(hash))?;
            z.set_parameter(zstd::zstd_safe::CParameter::ChainLog(chain))?;
            *tuned = tune;
        }
        z.compress(raw)
    });
    match r {
        Ok(c) if c.len() + raw.len() / 32 < raw.len() => (Compression::Zstd, c),
        _ => (Compression::None, raw.to_vec()),
    }
}

/// The most a zstd frame can expand: a 128 KiB block in 4 bytes.
const MAX_ZSTD_RATIO: u64 = 128 * 1024 / 4;

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
        Compression::Delta => Err(Error::corrupt(
            name,
            "a delta blob decodes only with its base (decompress_delta)",
        )),
        Compression::Zstd => {
            // The output buffer is allocated up front: only as large as the frame says and the
            // input can hold (a zstd block of 128 KiB takes at least 4 bytes, as an RLE block).
            match zstd::zstd_safe::get_frame_content_size(&data) {
                Ok(Some(n)) if n != raw_len as u64 => {
                    return Err(Error::corrupt(
                        name,
                        format!("zstd frame holds {n} bytes, expected {raw_len}"),
                    ))
                }
                Ok(_) => {}
                Err(_) => return Err(Error::corrupt(name, "not a zstd frame")),
            }
            if raw_len as u64 > (data.len() as u64).saturating_mul(MAX_ZSTD_RATIO) {
                return Err(Error::corrupt(
                    name,
                    format!("{} bytes cannot expand to {raw_len}", data.len()),
                ));
            }
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

/// Compresses `raw` as a zstd frame whose history starts with `base` (ZSTD_CCtx_refPrefix):
/// what `raw` shares with `base` costs a few bytes per match. The frame records its content size
/// and no dictionary id. For many frames, [`DeltaCompressor`] keeps its tables between them.
pub fn compress_delta(raw: &[u8], base: &[u8], level: i32) -> Result<Vec<u8>> {
    DeltaCompressor::new(level)?.compress(raw, base)
}

/// A zstd context for delta frames, kept between frames (a backup gives one to each rayon
/// split of a batch): its match tables are allocated once instead of per frame.
pub struct DeltaCompressor<'a> {
    cx: zstd::zstd_safe::CCtx<'a>,
    level: i32,
}

impl<'a> DeltaCompressor<'a> {
    /// A compressor for the repository's compression `level`.
    pub fn new(level: i32) -> Result<Self> {
        let cx = zstd::zstd_safe::CCtx::try_create()
            .ok_or_else(|| Error::Other("zstd: no memory".into()))?;
        Ok(DeltaCompressor { cx, level })
    }

    /// As [`compress_delta`].
    pub fn compress(&mut self, raw: &[u8], base: &'a [u8]) -> Result<Vec<u8>> {
        use zstd::zstd_safe::ResetDirective;
        if raw.len() > MAX_DELTA_LEN || base.len() > MAX_DELTA_LEN {
            return Err(Error::Other(format!(
                "delta of {} bytes on {} bytes: above the 16 MiB limit",
                raw.len(),
                base.len()
            )));
        }
        let fail = |code: usize| {
            Error::Other(format!(
                "zstd delta: {}",
                zstd::zstd_safe::get_error_name(code)
            ))
        };
        let c = &mut self.cx;
        // A prefix serves one frame only; parameters are set afresh for each frame.
        c.reset(ResetDirective::SessionAndParameters)
            .map_err(fail)?;
        // The window must reach from the end of the input back to the start of the prefix.
        let need = (raw.len() + base.len())
            .max(1 << 10)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(10, MAX_DELTA_WINDOW_LOG);
        for p in delta_params(self.level, need) {
            c.set_parameter(p).map_err(fail)?;
        }
        // A delta worth storing is a fraction of the chunk (a backup keeps one only when it
        // is under 3/4 of the chunk compressed alone), and the bound of a 2 MiB chunk held by
        // every worker at once showed in a dump's peak memory: a quarter first, then, after
        // any failure, the bound (the prefix is given again: a frame consumes it, even one
        // that failed; an error that is not about room comes again and is returned).
        c.ref_prefix(base).map_err(fail)?;
        let mut out = Vec::with_capacity(raw.len() / 4 + 1024);
        if c.compress2(&mut out, raw).is_ok() {
            return Ok(out);
        }
        c.reset(ResetDirective::SessionOnly).map_err(fail)?;
        c.ref_prefix(base).map_err(fail)?;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
        c.compress2(&mut out, raw).map_err(fail)?;
        Ok(out)
    }
}

/// The zstd parameters of a delta frame whose window is `2^window_log` bytes: the
/// repository's level, with long-distance matching to find the base's long runs that level
/// 3's tables miss. (Measured on two days of a 0.9 GB dump: level 1 with a hash table of a
/// quarter of the window compresses in 0.53x the time but stores 9-20% more; without
/// long-distance matching level 3 stores 7x more.)
fn delta_params(level: i32, window_log: u32) -> [zstd::zstd_safe::CParameter; 4] {
    use zstd::zstd_safe::CParameter;
    [
        CParameter::CompressionLevel(level.max(1)),
        CParameter::ContentSizeFlag(true),
        CParameter::WindowLog(window_log),
        CParameter::EnableLongDistanceMatching(true),
    ]
}

/// Largest plaintext of a delta blob and of its base (format-spec 6.1).
pub const MAX_DELTA_LEN: usize = 16 << 20;

/// Largest window a delta frame may need: base and blob of at most [`MAX_DELTA_LEN`] each, so
/// decoders can refuse frames asking for more.
pub const MAX_DELTA_WINDOW_LOG: u32 = 25;

/// Inverse of [`compress_delta`]: `raw_len` is the recorded plaintext length and bounds the
/// output, as for [`decompress`].
pub fn decompress_delta(data: &[u8], base: &[u8], raw_len: usize, name: &str) -> Result<Vec<u8>> {
    use zstd::zstd_safe::{DCtx, DParameter};
    if raw_len > MAX_DELTA_LEN || base.len() > MAX_DELTA_LEN {
        return Err(Error::corrupt(
            name,
            format!(
                "a delta blob of {raw_len} bytes on a base of {} bytes: above the 16 MiB limit",
                base.len()
            ),
        ));
    }
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n == raw_len as u64 => {}
        Ok(Some(n)) => {
            return Err(Error::corrupt(
                name,
                format!("delta frame holds {n} bytes, expected {raw_len}"),
            ))
        }
        Ok(None) => return Err(Error::corrupt(name, "delta frame does not record its size")),
        Err(_) => return Err(Error::corrupt(name, "not a zstd frame")),
    }
    let fail = |code: usize| {
        Error::corrupt(
            name,
            format!("zstd delta: {}", zstd::zstd_safe::get_error_name(code)),
        )
    };
    let mut d = DCtx::try_create().ok_or_else(|| Error::Other("zstd: no memory".into()))?;
    d.set_parameter(DParameter::WindowLogMax(MAX_DELTA_WINDOW_LOG))
        .map_err(fail)?;
    d.ref_prefix(base).map_err(fail)?;
    let mut out = Vec::with_capacity(raw_len);
    d.decompress(&mut out, data).map_err(fail)?;
    if out.len() != raw_len {
        return Err(Error::corrupt(
            name,
            format!("delta decoded to {} bytes, expected {raw_len}", out.len()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table-like text of `rows` lines, as a database dump holds.
    fn rows(n: usize) -> Vec<u8> {
        let mut x = 12345u64;
        let mut out = Vec::new();
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(
                format!(
                    "{i}\t{}\t{}.{:02}\tPAID\tC{:05}\n",
                    1_700_000_000 + i * 37,
                    x % 100_000,
                    x % 100,
                    (x >> 20) % 99_999
                )
                .as_bytes(),
            );
        }
        out
    }

    /// A delta that needs more than the first try's room (a quarter of the chunk) is made
    /// again in the bound and decodes; the context then makes the same frames as a new one.
    #[test]
    fn a_delta_past_a_quarter_of_the_chunk_round_trips() {
        let raw = crate::chunker::splitmix_bytes(99, 300_000);
        let base = rows(2_000);
        let (small, mut base2) = (rows(3_000), rows(3_000));
        base2[5_000..5_010].copy_from_slice(b"0123456789");
        let mut dc = DeltaCompressor::new(3).unwrap();
        let f = dc.compress(&raw, &base).unwrap();
        assert!(f.len() > raw.len() / 4 + 1024, "{}", f.len());
        assert_eq!(decompress_delta(&f, &base, raw.len(), "t").unwrap(), raw);
        let again = dc.compress(&small, &base2).unwrap();
        assert!(again.len() < small.len() / 100);
        assert_eq!(again, compress_delta(&small, &base2, 3).unwrap());
        assert_eq!(
            decompress_delta(&again, &base2, small.len(), "t").unwrap(),
            small
        );
    }

    /// The tuned hash logs apply to large level-3 inputs only: a small input compresses to the
    /// same bytes before and after a large one on the same thread's context, and both round-trip.
    #[test]
    fn tuned_parameters_apply_to_large_inputs_only() {
        let small = rows(2_000);
        let large = rows(60_000);
        assert!(small.len() < TUNED_ABOVE && large.len() > TUNED_ABOVE);
        let before = std::thread::spawn({
            let s = small.clone();
            move || compress(&s, 3).1
        })
        .join()
        .unwrap();
        let (cl, zl) = compress(&large, 3);
        let plain = zstd::bulk::compress(&large, 3).unwrap();
        assert_ne!(zl, plain, "large inputs use the tuned logs");
        assert_eq!(
            compress(&small, 3).1,
            before,
            "small inputs use zstd's own table"
        );
        assert_eq!(decompress(cl, zl, large.len(), "t").unwrap(), large);
    }

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

    /// Guards a fuzz finding (fixed in e53dc78; its input is
    /// fuzz/regressions/blob/declared-4GiB-from-a-small-frame-is-refused-before-allocating): a
    /// blob record that declares 4 GiB for a small zstd frame without a content size made
    /// `decompress` allocate the declared length first. Now it is refused before any output
    /// buffer exists, naming the object; a frame whose content size disagrees is refused too.
    #[test]
    fn declared_length_larger_than_the_input_can_hold_is_refused_before_allocating() {
        let data = b"tiny input ".repeat(100);
        // A frame that does not record its content size (as a streaming compressor writes).
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &data).unwrap();
        let frame = enc.finish().unwrap();
        assert!(
            matches!(zstd::zstd_safe::get_frame_content_size(&frame), Ok(None)),
            "the frame must not say its size"
        );
        let e = decompress(
            Compression::Zstd,
            frame.clone(),
            u32::MAX as usize,
            "data/ab/cd",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("data/ab/cd") && e.contains("cannot expand"),
            "{e}"
        );
        assert_eq!(
            decompress(Compression::Zstd, frame, data.len(), "t").unwrap(),
            data
        );
        let sized = zstd::bulk::compress(&data, 3).unwrap();
        let e = decompress(Compression::Zstd, sized, data.len() + 1, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame holds"), "{e}");
    }
}

//! Every on-disk structure, one file per section of `format-spec.md`. Decoders never panic: any
//! input yields a value or an [`Error::Corrupt`] naming the object.

pub mod config;
pub mod envelope;
pub mod index;
pub mod key;
pub mod pack;
pub mod snapshot;
pub mod tree;

use crate::error::{Error, Result};
use crate::id::Id;

/// First four bytes of every object chunkbak stores.
pub const MAGIC: [u8; 4] = *b"CBAK";
/// Format version written by this build.
pub const VERSION: u8 = 1;

/// What an object is; the sixth byte of every object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    Config = 1,
    Key = 2,
    Snapshot = 3,
    Index = 4,
    DataPack = 5,
    TreePack = 6,
}

impl ObjectKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => ObjectKind::Config,
            2 => ObjectKind::Key,
            3 => ObjectKind::Snapshot,
            4 => ObjectKind::Index,
            5 => ObjectKind::DataPack,
            6 => ObjectKind::TreePack,
            _ => return None,
        })
    }

    /// The 6-byte prefix of an object of this kind: magic, version, kind.
    pub fn prefix(self) -> [u8; 6] {
        let m = MAGIC;
        [m[0], m[1], m[2], m[3], VERSION, self as u8]
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Key => "key",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Index => "index",
            ObjectKind::DataPack => "data pack",
            ObjectKind::TreePack => "tree pack",
        }
    }
}

/// Checks an object's 6-byte prefix.
pub fn check_prefix(bytes: &[u8], kind: ObjectKind, name: &str) -> Result<()> {
    if bytes.len() < 6 || bytes[..4] != MAGIC {
        return Err(Error::corrupt(name, "not a chunkbak object (bad magic)"));
    }
    if bytes[4] != VERSION {
        return Err(Error::corrupt(
            name,
            format!(
                "format version {} is not supported by this chunkbak (reads version {VERSION})",
                bytes[4]
            ),
        ));
    }
    if bytes[5] != kind as u8 {
        return Err(Error::corrupt(
            name,
            format!(
                "object kind {} where a {} was expected",
                bytes[5],
                kind.name()
            ),
        ));
    }
    Ok(())
}

/// The bincode configuration of every bincode-encoded structure: little-endian, fixed-width
/// integers, lengths as u64, at most 256 MiB per structure.
pub(crate) const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<{ 256 << 20 }>,
> = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<{ 256 << 20 }>();

pub(crate) fn bincode_encode<T: bincode::Encode>(v: &T) -> Vec<u8> {
    bincode::encode_to_vec(v, BINCODE).expect("encoding to a Vec cannot fail")
}

/// Decodes a bincode structure that must fill `bytes` exactly. What decoding may allocate is
/// bounded by the input: bincode reserves a container's declared length before it reads the
/// elements, so a few bytes declaring a long list would otherwise claim up to the 256 MiB
/// limit (the `objects` fuzz target found a 269-byte input that reserved 2.4 MiB). Decoded
/// structures take at most a few times their encoding (a `String` is 24 bytes in memory and at
/// least 8 encoded), so the limit is the smallest step of 64 KiB x 16^k at least 16 times the
/// input.
pub(crate) fn bincode_decode<T: bincode::Decode<()>>(bytes: &[u8], name: &str) -> Result<T> {
    fn with<T: bincode::Decode<()>, const L: usize>(
        bytes: &[u8],
    ) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
        bincode::decode_from_slice(bytes, BINCODE.with_limit::<L>())
    }
    let n = bytes.len().saturating_mul(16);
    let r = if n <= 64 << 10 {
        with::<T, { 64 << 10 }>(bytes)
    } else if n <= 1 << 20 {
        with::<T, { 1 << 20 }>(bytes)
    } else if n <= 16 << 20 {
        with::<T, { 16 << 20 }>(bytes)
    } else {
        bincode::decode_from_slice(bytes, BINCODE)
    };
    let (v, used) = r.map_err(|e| Error::corrupt(name, format!("decoding: {e}")))?;
    if used != bytes.len() {
        return Err(Error::corrupt(
            name,
            format!("{} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(v)
}

/// A bounds-checked little-endian reader over bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    name: &'a str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], name: &'a str) -> Self {
        Reader { buf, pos: 0, name }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(Error::corrupt(
                self.name,
                format!("truncated: need {n} bytes at offset {}", self.pos),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn id(&mut self) -> Result<Id> {
        Ok(Id(self.array()?))
    }

    /// A count of records of `size` bytes each that must fit in what is left.
    pub fn count(&mut self, size: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(size) > self.remaining() {
            return Err(Error::corrupt(
                self.name,
                format!("count {n} exceeds the object's length"),
            ));
        }
        Ok(n)
    }

    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::corrupt(
                self.name,
                format!("{} trailing bytes", self.remaining()),
            ));
        }
        Ok(())
    }

    pub fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corrupt(self.name, reason)
    }
}

#[cfg(test)]
mod tests {
    /// Guards the `objects` fuzz finding
    /// (fuzz/regressions/objects/declared-length-beyond-the-input-reserves-megabytes): a length
    /// prefix far beyond the input is refused by the input-sized limit instead of reserving it.
    #[test]
    fn declared_length_beyond_the_input_is_refused_before_allocating() {
        let mut bytes = 2_000_000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"short");
        let e = super::bincode_decode::<Vec<u8>>(&bytes, "snapshots/ab").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("snapshots/ab") && msg.contains("imit"),
            "{msg}"
        );
        // Within the limit, a real structure decodes.
        let ok = super::bincode_encode(&vec![7u8; 100_000]);
        assert_eq!(
            super::bincode_decode::<Vec<u8>>(&ok, "x").unwrap().len(),
            100_000
        );
    }
}

//! Reading sparse files: holes are found with `SEEK_DATA`/`SEEK_HOLE` and given to the chunker
//! as zeros without being read, so an 8 GiB file with 4 KiB of data costs one read. (A restore
//! leaves all-zero blocks as holes, which recreates them.)

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

pub(super) struct HoleSkipping {
    pub(super) file: File,
    pos: u64,
    /// End of the current region (data or hole) as last asked of the file system.
    region_end: u64,
    in_hole: bool,
    /// The file system cannot tell holes: plain reads.
    plain: bool,
    /// Length at open: a hole reaching the end of the file ends there.
    len: u64,
}

impl HoleSkipping {
    pub(super) fn new(file: File, len: u64) -> Self {
        HoleSkipping {
            file,
            pos: 0,
            region_end: 0,
            in_hole: false,
            plain: false,
            len,
        }
    }

    fn seek(&self, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        // SAFETY: the descriptor is open; lseek has no memory effects.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), self.pos as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // No data at or after pos: a hole up to the end.
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    }

    /// Finds the region `pos` is in.
    fn locate(&mut self) -> std::io::Result<()> {
        match self.seek(libc::SEEK_DATA) {
            Ok(Some(d)) if d > self.pos => {
                self.in_hole = true;
                self.region_end = d;
            }
            Ok(Some(_)) => {
                self.in_hole = false;
                self.region_end = self.seek(libc::SEEK_HOLE)?.unwrap_or(u64::MAX);
            }
            Ok(None) => {
                self.in_hole = true;
                self.region_end = self.len.max(self.pos);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.plain = true,
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

impl Read for HoleSkipping {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.plain && self.pos >= self.region_end {
            self.locate()?;
        }
        let want = if self.plain {
            buf.len()
        } else {
            buf.len()
                .min((self.region_end - self.pos).min(usize::MAX as u64) as usize)
        };
        let n = if self.in_hole && !self.plain {
            buf[..want].fill(0);
            want
        } else {
            self.file.read_at(&mut buf[..want], self.pos)?
        };
        if n == 0 && !self.plain && !self.in_hole && self.pos < self.region_end {
            // The file shrank while being read: the end.
            return Ok(0);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_read_as_zeros_and_data_as_written() {
        let dir = std::env::temp_dir().join(format!("chunkbak-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        let f = File::create(&p).unwrap();
        let len = 64u64 << 20;
        f.set_len(len).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all_at(&data, 10 << 20).unwrap();
        f.write_all_at(&data, len - data.len() as u64).unwrap();
        drop(f);
        let mut r = HoleSkipping::new(File::open(&p).unwrap(), len);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 3 << 20];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, std::fs::read(&p).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

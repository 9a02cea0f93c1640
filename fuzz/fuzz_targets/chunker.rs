//! The chunker: any input read in any piece sizes gives the chunks of one pass, and the chunks
//! concatenate to the input.
#![no_main]
use chunkbak_engine::chunker::{Chunker, ChunkerParams};
use libfuzzer_sys::fuzz_target;

struct Pieces<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    i: usize,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let step = 1 + *self.sizes.get(self.i % self.sizes.len().max(1)).unwrap_or(&255) as usize * 37;
        self.i += 1;
        let n = step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>, u64)| {
    let (data, sizes, seed) = input;
    let p = ChunkerParams { min_size: 64, avg_size: 256, max_size: 1024, normalization: 1 };
    let c = Chunker::new(p, seed).unwrap();
    let one: Vec<usize> = c.cut_all(&data);
    let chunks: Vec<Vec<u8>> = c.chunks(Pieces { data: &data, sizes: &sizes, i: 0 }).map(|r| r.unwrap()).collect();
    assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), one);
    assert_eq!(chunks.concat(), data);
    assert!(one.iter().all(|&n| n <= 1024));
});

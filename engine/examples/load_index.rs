//! Loads a repository's index and prints the peak and current RSS and the bytes per blob:
//! `load_index DIR PASSWORD` (scripts/index-scale.sh).

use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::Repository;

fn status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repo = Repository::open(Arc::new(LocalBackend::new(&args[1])), args[2].as_bytes()).unwrap();
    let before = status("VmRSS:");
    let t = std::time::Instant::now();
    repo.load_index().unwrap();
    let blobs = repo.index().read().unwrap().len();
    let after = status("VmRSS:");
    println!(
        "{blobs} blobs loaded in {:.2} s; RSS {} MiB before, {} MiB after ({:.1} bytes a blob), peak {} MiB",
        t.elapsed().as_secs_f64(),
        before >> 10,
        after >> 10,
        (after - before) as f64 * 1024.0 / blobs as f64,
        status("VmHWM:") >> 10
    );
}

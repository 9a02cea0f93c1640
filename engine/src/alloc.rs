//! What the engine asks of the process's allocator.

/// Returns the free memory inside the allocator's arenas to the system (glibc's
/// `malloc_trim`). Freed buffers of a few MiB leave holes that glibc keeps: the delta path of a
/// dump backup, which frees tens of chunk-sized buffers per batch, held 20-30 MB of them.
/// Elsewhere (other allocators, other systems) it does nothing.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

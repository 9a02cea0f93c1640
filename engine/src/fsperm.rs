//! Local files that hold repository data or its cache are private: folders 0700, files 0600
//! (key files can be attacked offline; packs and cached trees reveal sizes and names' counts).
//! Folders found looser are tightened, and the caller warns.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and missing parents, each new one 0700.
pub fn mkdir_private(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes the folder `dir` 0700 when group or others may read or enter it: whether it did.
/// With the top folder private, nothing below it is reachable by other users.
pub fn tighten(dir: &Path) -> io::Result<bool> {
    let m = fs::symlink_metadata(dir)?;
    if m.is_dir() && m.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        return Ok(true);
    }
    Ok(false)
}

/// Creates a new file (never an existing one) readable and writable by its owner only.
pub fn create_private(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes `bytes` to a new file at `path`, 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    create_private(path)?.write_all(bytes)
}

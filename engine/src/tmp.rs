//! This process's private temporary folder (mode 0700, a random name under the system's
//! temporary folder): packs waiting for upload and other scratch files go there, never into a
//! fixed shared path another local user could create first or replace with a symlink.
//! [`remove`] deletes it; the CLI calls it before it exits.

use std::path::PathBuf;
use std::sync::Mutex;

static DIR: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);

/// The folder, created on first use.
pub fn dir() -> std::io::Result<PathBuf> {
    let mut d = DIR.lock().expect("temp dir lock");
    if let Some(t) = d.as_ref() {
        if t.path().is_dir() {
            return Ok(t.path().to_path_buf());
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::Builder::new()
        .prefix(&format!("chunkbak-{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()?;
    let p = t.path().to_path_buf();
    *d = Some(t);
    Ok(p)
}

/// Deletes the folder and what is left in it.
pub fn remove() {
    if let Ok(mut d) = DIR.lock() {
        d.take();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_folder_is_private_and_removed() {
        let d = super::dir().unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(super::dir().unwrap(), d);
        super::remove();
        assert!(!d.exists());
    }
}

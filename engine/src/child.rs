//! Child processes chunkbak starts (`--stdin-from-command`, `--password-command`): they never
//! see a password. A dump command's environment may end up in the backup itself (`env`), a
//! password command may log it.

use std::process::Command;

/// Whether an environment variable carries a password or names where one is: every
/// `CHUNKBAK_*PASSWORD*` (the repository's, `--from`'s, the new one of `key add/passwd`, and
/// their `_FILE`/`_COMMAND` forms).
pub fn is_secret(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.starts_with("CHUNKBAK_") && n.contains("PASSWORD")
}

/// `cmd` without the password variables of this process's environment.
pub fn without_secrets(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if is_secret(&k) {
            cmd.env_remove(&k);
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_variables_are_secret_and_others_are_not() {
        for s in [
            "CHUNKBAK_PASSWORD",
            "CHUNKBAK_PASSWORD_FILE",
            "CHUNKBAK_PASSWORD_COMMAND",
            "CHUNKBAK_NEW_PASSWORD",
            "CHUNKBAK_FROM_PASSWORD",
        ] {
            assert!(is_secret(std::ffi::OsStr::new(s)), "{s}");
        }
        for s in ["CHUNKBAK_REPOSITORY", "PASSWORD", "HOME", "PGPASSWORD"] {
            assert!(!is_secret(std::ffi::OsStr::new(s)), "{s}");
        }
    }
}

//! The configuration file: named profiles whose keys are the command line's own long option
//! names, so every option a profile can set is also a flag, from one (clap) definition.
//!
//! ```toml
//! [profiles.default]                  # options of every command (global flags)
//! repo = "s3:backups/web-01"
//! password-file = "/etc/chunkbak/password"
//!
//! [profiles.default.backup]           # options of `chunkbak backup`
//! paths = ["/srv", "/etc"]            # positional arguments by name
//! exclude = ["*.tmp", "/srv/cache"]
//!
//! [profiles.default.forget]
//! keep-daily = 7
//! keep-weekly = 5
//!
//! [profiles.default.lifecycle.apply]  # a subcommand of a subcommand
//! transition-after = "30d"
//! ```
//!
//! Precedence, highest first: a flag on the command line, its `CHUNKBAK_*` environment
//! variable, the profile, the built-in default. The file is found at `--config`
//! (`CHUNKBAK_CONFIG`), else `$XDG_CONFIG_HOME/chunkbak/config.toml` (`~/.config/...`), else
//! `/etc/chunkbak/config.toml`; the profile is `--profile` (`CHUNKBAK_PROFILE`), else
//! `default` when the file has one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Keys a profile may not set: they choose the profile, or only print.
/// `now` (`prune --now`) is for an operator at a terminal who knows no writer runs: a profile
/// must not make a timed prune skip the grace period.
const NOT_IN_PROFILES: &[&str] = &["config", "profile", "help", "version", "now"];

/// Where the configuration file is, when none is named: the user's, then the system's.
pub fn default_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        v.push(PathBuf::from(x).join("chunkbak/config.toml"));
    } else if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join(".config/chunkbak/config.toml"));
    }
    v.push(PathBuf::from("/etc/chunkbak/config.toml"));
    v
}

/// The profile in force for a run, read from its file.
pub struct Profile {
    pub file: PathBuf,
    pub name: String,
    table: toml::Table,
}

impl Profile {
    /// A string the profile sets for a command's option (`["backup", "host"]`), if any.
    pub fn string(&self, path: &[&str]) -> Option<String> {
        let (last, tables) = path.split_last()?;
        let mut t = &self.table;
        for k in tables {
            t = t.get(*k)?.as_table()?;
        }
        t.get(*last)?.as_str().map(str::to_string)
    }
}

/// Reads the configuration file and picks the profile. `None` when no file exists (and none
/// was named) or the file has no profile of that name and none was asked for.
pub fn load(explicit: Option<&Path>, profile: Option<&str>) -> Result<Option<Profile>, String> {
    let file = match explicit {
        Some(p) => {
            if !p.is_file() {
                return Err(format!(
                    "configuration file {}: not found (--config / CHUNKBAK_CONFIG)",
                    p.display()
                ));
            }
            p.to_path_buf()
        }
        None => match default_paths().into_iter().find(|p| p.is_file()) {
            Some(p) => p,
            None if profile.is_some() => {
                return Err(format!(
                    "profile {:?} asked for, but there is no configuration file (looked at {})",
                    profile.unwrap_or_default(),
                    default_paths()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            None => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("configuration file {}: {e}", file.display()))?;
    let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        one_line(&format!("configuration file {}: {e}", file.display()))
    })?;
    for key in doc.keys() {
        if key != "profiles" {
            return Err(format!(
                "configuration file {}: unknown top-level key `{key}` (settings go under [profiles.NAME])",
                file.display()
            ));
        }
    }
    let mut profiles = match doc.remove("profiles") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            return Err(format!(
                "configuration file {}: `profiles` must be a table ([profiles.NAME])",
                file.display()
            ))
        }
    };
    let name = profile.unwrap_or("default").to_string();
    match profiles.remove(&name) {
        Some(toml::Value::Table(table)) => Ok(Some(Profile { file, name, table })),
        Some(_) => Err(format!(
            "configuration file {}: profile `{name}` must be a table ([profiles.{name}])",
            file.display()
        )),
        // A profile asked for, or a file named on the command line, must apply.
        None if profile.is_some() || explicit.is_some() => {
            let mut known: Vec<&String> = profiles.keys().collect();
            known.sort();
            Err(format!(
                "configuration file {}: no profile `{name}` (it has: {})",
                file.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
        }
        None => Ok(None),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a profile adds to one run: options of the top-level command (before the subcommand)
/// and of the subcommand that runs (after it).
#[derive(Debug, Default)]
pub struct Extra {
    pub global: Vec<OsString>,
    pub command: Vec<OsString>,
}

/// Checks every key of the profile against the command-line definition (all sections, so a
/// typo is caught on any run) and returns the arguments it adds to this run: each option the
/// command line and the environment left at its default.
pub fn extra_args(p: &Profile, root: &Command, m: &ArgMatches) -> Result<Extra, String> {
    // The matches of every command level that runs, the top level first.
    let mut levels = vec![m];
    while let Some((_, sub)) = levels[levels.len() - 1].subcommand() {
        levels.push(sub);
    }
    let mut w = Walker {
        profile: p,
        levels,
        extra: Extra::default(),
    };
    w.table(&p.table, root, Some(m), 0, "chunkbak")?;
    Ok(w.extra)
}

struct Walker<'a> {
    profile: &'a Profile,
    levels: Vec<&'a ArgMatches>,
    extra: Extra,
}

impl Walker<'_> {
    fn error(&self, what: String) -> String {
        format!(
            "configuration file {}, profile `{}`: {what}",
            self.profile.file.display(),
            self.profile.name
        )
    }

    /// Whether the command line or the environment gave option `id` at any of `levels`.
    fn given(levels: &[&ArgMatches], id: &str) -> bool {
        levels.iter().any(|m| {
            matches!(
                m.try_get_raw(id)
                    .ok()
                    .flatten()
                    .and_then(|_| m.value_source(id)),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
    }

    /// One table of the profile against one command (`matches` when it is the command that
    /// runs): its keys are that command's options (or positional arguments by name), its
    /// subtables that command's subcommands.
    fn table(
        &mut self,
        table: &toml::Table,
        cmd: &Command,
        matches: Option<&ArgMatches>,
        depth: usize,
        path: &str,
    ) -> Result<(), String> {
        for (key, value) in table {
            if let Some(sub) = cmd.find_subcommand(key) {
                let toml::Value::Table(t) = value else {
                    return Err(self.error(format!(
                        "`{key}` is a command of `{path}`: its options go in a table ([...{key}])"
                    )));
                };
                let sub_matches = matches.and_then(|m| m.subcommand_matches(sub.get_name()));
                self.table(
                    t,
                    sub,
                    sub_matches,
                    depth + 1,
                    &format!("{path} {}", sub.get_name()),
                )?;
                continue;
            }
            let arg = cmd
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .find(|a| {
                    a.get_long() == Some(key.as_str())
                        || (a.is_positional() && a.get_id().as_str() == key.as_str())
                })
                .filter(|_| !NOT_IN_PROFILES.contains(&key.as_str()));
            let Some(arg) = arg else {
                // Global flags are defined on the root command only.
                let hint = if depth > 0 {
                    " (options of every command go directly under [profiles.NAME])"
                } else {
                    ""
                };
                return Err(self.error(format!(
                    "`{key}` is not an option of `{path}`{hint}; see `{path} --help`"
                )));
            };
            let values = to_strings(value).map_err(|e| self.error(format!("`{key}`: {e}")))?;
            let action = arg.get_action();
            let multiple = matches!(action, ArgAction::Append)
                || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
            let flag = matches!(
                action,
                ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
            );
            if !flag && !multiple && values.len() != 1 {
                return Err(self.error(format!("`{key}` takes one value, not a list")));
            }
            // Only for the command that runs, and only where neither the command line nor the
            // environment set the option (a global option may follow the subcommand: every
            // level that runs is looked at).
            if matches.is_none() {
                continue;
            }
            let levels = if depth == 0 {
                &self.levels[..]
            } else {
                &self.levels[depth..=depth]
            };
            if Self::given(levels, arg.get_id().as_str()) {
                continue;
            }
            let long = arg.get_long().unwrap_or(key);
            let args: Vec<OsString> = match action {
                ArgAction::SetTrue | ArgAction::SetFalse => {
                    let toml::Value::Boolean(on) = value else {
                        return Err(self.error(format!("`{key}` is true or false")));
                    };
                    if *on == matches!(action, ArgAction::SetTrue) {
                        vec![format!("--{long}").into()]
                    } else {
                        Vec::new()
                    }
                }
                ArgAction::Count => {
                    let n = match value {
                        toml::Value::Integer(n) if *n >= 0 => *n as usize,
                        toml::Value::Boolean(b) => usize::from(*b),
                        _ => return Err(self.error(format!("`{key}` is a count (0, 1, 2)"))),
                    };
                    vec![format!("--{long}").into(); n]
                }
                _ if arg.is_positional() => values.into_iter().map(OsString::from).collect(),
                _ => values
                    .into_iter()
                    .map(|v| format!("--{long}={v}").into())
                    .collect(),
            };
            if depth == 0 {
                self.extra.global.extend(args);
            } else {
                self.extra.command.extend(args);
            }
        }
        Ok(())
    }
}

fn to_strings(v: &toml::Value) -> Result<Vec<String>, String> {
    Ok(match v {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(n) => vec![n.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Datetime(d) => vec![d.to_string()],
        toml::Value::Array(a) => {
            let mut out = Vec::new();
            for x in a {
                match x {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        return Err("a list of plain values".into())
                    }
                    _ => out.extend(to_strings(x)?),
                }
            }
            out
        }
        toml::Value::Table(_) => return Err("a value, not a table".into()),
    })
}

/// The command line with a profile's arguments added: global options right after the
/// program name, the subcommand's before a `--` (what follows it is taken as it is) or at the
/// end.
pub fn merged_argv(argv: &[OsString], extra: Extra) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len() + extra.global.len() + extra.command.len());
    out.extend(argv.first().cloned());
    out.extend(extra.global);
    let rest = argv.get(1..).unwrap_or_default();
    let dashdash = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
    out.extend(rest[..dashdash].iter().cloned());
    out.extend(extra.command);
    out.extend(rest[dashdash..].iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn profile(text: &str) -> Profile {
        let mut doc: toml::Table = text.parse().unwrap();
        let Some(toml::Value::Table(mut ps)) = doc.remove("profiles") else {
            panic!("no profiles")
        };
        let Some(toml::Value::Table(table)) = ps.remove("p") else {
            panic!("no profile p")
        };
        Profile {
            file: "/etc/chunkbak/config.toml".into(),
            name: "p".into(),
            table,
        }
    }

    fn run(text: &str, args: &[&str]) -> Result<Vec<String>, String> {
        let cmd = crate::args::Cli::command();
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let m = cmd
            .clone()
            .ignore_errors(true)
            .try_get_matches_from(&argv)
            .unwrap();
        let extra = extra_args(&profile(text), &cmd, &m)?;
        Ok(merged_argv(&argv, extra)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect())
    }

    #[test]
    fn profile_fills_what_the_command_line_left_at_its_default() {
        let text = r#"
            [profiles.p]
            repo = "/srv/repo"
            no-progress = true
            [profiles.p.backup]
            paths = ["/srv", "/etc"]
            exclude = ["*.tmp"]
            one-file-system = true
            [profiles.p.forget]
            keep-daily = 7
            [profiles.p.lifecycle.apply]
            transition-after = "30d"
            to = "GLACIER"
        "#;
        assert_eq!(
            run(text, &["chunkbak", "backup"]).unwrap(),
            [
                "chunkbak",
                "--no-progress",
                "--repo=/srv/repo",
                "backup",
                "--exclude=*.tmp",
                "--one-file-system",
                "/srv",
                "/etc"
            ]
        );
        // Given on the command line: the profile's value is not added.
        assert_eq!(
            run(
                text,
                &["chunkbak", "-r", "/other", "backup", "/x", "-e", "a"]
            )
            .unwrap(),
            [
                "chunkbak",
                "--no-progress",
                "-r",
                "/other",
                "backup",
                "/x",
                "-e",
                "a",
                "--one-file-system"
            ]
        );
        // A global option given after the subcommand counts as given.
        let v = run(text, &["chunkbak", "snapshots", "--repo", "/r2"]).unwrap();
        assert!(!v.iter().any(|a| a.starts_with("--repo=")), "{v:?}");
        // Subcommands of subcommands, and options after `--` left alone.
        let v = run(text, &["chunkbak", "lifecycle", "apply"]).unwrap();
        assert_eq!(
            v[3..],
            [
                "lifecycle",
                "apply",
                "--to=GLACIER",
                "--transition-after=30d"
            ]
        );
        let v = run(
            text,
            &[
                "chunkbak",
                "backup",
                "--stdin-from-command",
                "--",
                "pg_dump",
            ],
        )
        .unwrap();
        assert_eq!(v.last().unwrap(), "pg_dump");
        assert_eq!(v[v.len() - 2], "--");
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_are_named() {
        let e = run("[profiles.p]\nrepository = 'x'", &["chunkbak", "snapshots"]).unwrap_err();
        assert!(
            e.contains("`repository` is not an option of `chunkbak`"),
            "{e}"
        );
        // A typo in another command's section is caught on any run.
        let e = run(
            "[profiles.p.forget]\nkeep-dayly = 7",
            &["chunkbak", "snapshots"],
        )
        .unwrap_err();
        assert!(
            e.contains("`keep-dayly` is not an option of `chunkbak forget`"),
            "{e}"
        );
        let e = run("[profiles.p.backup]\nrepo = 'x'", &["chunkbak", "backup"]).unwrap_err();
        assert!(e.contains("directly under [profiles.NAME]"), "{e}");
        let e = run(
            "[profiles.p.backup]\nhost = ['a', 'b']",
            &["chunkbak", "backup"],
        )
        .unwrap_err();
        assert!(e.contains("`host` takes one value"), "{e}");
        let e = run("[profiles.p]\nbackup = 3", &["chunkbak", "backup"]).unwrap_err();
        assert!(e.contains("`backup` is a command"), "{e}");
        let e = run("[profiles.p]\nconfig = 'x'", &["chunkbak", "backup"]).unwrap_err();
        assert!(e.contains("`config` is not an option"), "{e}");
    }
}

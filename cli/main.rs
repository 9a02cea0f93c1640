//! The `chunkbak` command: parses arguments, turns them into engine options, shows progress
//! and results, and maps errors to exit codes. All logic lives in `chunkbak-engine`.
//!
//! Here: parsing (with the configuration file's profiles), the run of one command, exit codes.
//! A module per command group: `open` (where the repository is, its password and cache;
//! `init`), `backup`, `snapshots` (choosing snapshots; `snapshots`, `ls`, `dump`), `restore`
//! (and `warmup`), `inspect` (`find`, `diff`, `mount`), `check`, `maint` (`forget`, `prune`,
//! `lock`, `repair`), `cold` (archived packs, `lifecycle`), `repos` (`key`, `copy`), `aws`,
//! `stats`, `cat`, `benchmark`; `args`, `config`, `output` and `progress` serve them all.

mod args;
mod aws;
mod backup;
mod benchmark;
mod cat;
mod check;
mod cold;
mod config;
mod inspect;
mod maint;
mod open;
mod output;
mod progress;
mod repos;
mod restore;
mod snapshots;
mod stats;

use std::io::Write;

use anyhow::Context;
use serde_json::json;

use chunkbak_engine::ops::select::{self, Clock};
use chunkbak_engine::{timeparse, Error};

use args::{Cli, Command, FilterArgs, Global};
use open::repo_spec;
use output::Out;
use snapshots::set_this_host;

/// Exit codes (a documented API: docs/usage.md and docs/scripting.md, "Exit codes").
mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PARTIAL: i32 = 3;
    pub const NO_REPO: i32 = 10;
    pub const LOCKED: i32 = 11;
    pub const WRONG_PASSWORD: i32 = 12;
    pub const COLD: i32 = 13;
    pub const INTERRUPTED: i32 = 130;
}

extern "C" fn on_sigint(_: libc::c_int) {
    chunkbak_engine::ops::interrupt();
}

fn install_sigint() {
    // SAFETY: the handler only stores an atomic flag, which is async-signal-safe; SA_RESETHAND
    // makes a second Ctrl-C kill the process at once.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as usize;
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// glibc's allocator, tuned for a backup's allocations: buffers of a few MiB allocated and
/// freed by several threads. By default glibc raises its mmap threshold to the largest block
/// freed and gives every thread its own arena, so freed chunk buffers pile up in up to 8 arenas
/// per core (a backup of a 4.6 GB tree peaked at 105 MB). Blocks over one maximum chunk
/// (4 MiB) are mapped and returned when freed, up to 8 MiB of freed memory stays in each
/// arena, and threads share one arena per core: the same backup peaks at 73-83 MB, little
/// more than the key derivation's 64 MiB. Keeping 32 MiB per arena peaked at 84-96 MB for the
/// same speed; 2 MiB at 73 MB, but compression of random data fell from 2.9 to 1.3 GB/s
/// (freed buffers faulted in again), so 8 MiB.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        // SAFETY: mallopt only changes allocator parameters; it is called before any other
        // thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, (4 << 20) + 1);
            // Fixing the mmap threshold also fixes the trim threshold (128 KiB by default):
            // freed buffers would go back to the kernel at once and fault in again.
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
            libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
        }
    }
}

/// Parses the command line; a usage error is one line on stderr (a JSON `error` line too with
/// `--json`) and exit code 2. Help and version print as clap prints them.
fn parse_args() -> (Cli, String) {
    use clap::error::ErrorKind;
    let e = match parse_with_profile(std::env::args_os().collect()) {
        Ok(parsed) => return parsed,
        Err(Parse::Config(msg)) => usage_error(msg),
        Err(Parse::Clap(e)) => e,
    };
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    usage_error(format!(
        "{} (see `{}`)",
        first_paragraph(&e),
        help_of(&std::env::args_os().collect::<Vec<_>>())
    ))
}

/// The help that covers a mistaken command line: `chunkbak forget --help` when it names a
/// command (`chunkbak lifecycle apply --help` for a subcommand of one), else `chunkbak --help`.
fn help_of(argv: &[std::ffi::OsString]) -> String {
    use clap::CommandFactory;
    let root = Cli::command();
    let mut cmd = root.clone();
    let mut path = vec!["chunkbak".to_string()];
    // Whether option `a` (no `=VALUE` in it) takes the next argument as its value: an option
    // value is never read as a command name (`-r backup snapshots`).
    let takes_value = |cmd: &clap::Command, a: &str| {
        let found = |c: &clap::Command| {
            c.get_arguments()
                .find(|x| match a.strip_prefix("--") {
                    Some(long) => x.get_long() == Some(long),
                    None => a.len() == 2 && x.get_short() == a.chars().nth(1),
                })
                .map(|x| x.get_action().takes_values())
        };
        found(cmd).or_else(|| found(&root)).unwrap_or(false)
    };
    let mut args = argv.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(a) = args.next() {
        if a == "--" {
            break;
        }
        if a.starts_with('-') {
            if !a.contains('=') && takes_value(&cmd, a) {
                args.next();
            }
            continue;
        }
        let Some(sub) = cmd.find_subcommand(a).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_string());
        cmd = sub;
    }
    format!("{} --help", path.join(" "))
}

/// The first paragraph of clap's message, on one line ("... not provided: --target <DIR>"),
/// with its suggestion when it has one ("tip: a similar argument exists: '--keep-daily'").
fn first_paragraph(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or("invalid arguments");
    let first: Vec<&str> = first.lines().map(str::trim).collect();
    let mut line = first.join(" ").trim_start_matches("error: ").to_string();
    if let Some(tip) = text.lines().map(str::trim).find(|l| l.starts_with("tip: ")) {
        line.push_str("; ");
        line.push_str(tip.trim_start_matches("tip: "));
    }
    line
}

enum Parse {
    Clap(clap::Error),
    Config(String),
}

/// Parses the command line, then adds what the configuration file's profile sets for options
/// the command line and the environment left at their defaults, and parses again. Returns the
/// arguments and the name of the command that runs.
fn parse_with_profile(argv: Vec<std::ffi::OsString>) -> Result<(Cli, String), Parse> {
    use clap::error::ErrorKind;
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Cli::command();
    let parsed = |m: clap::ArgMatches| -> Result<(Cli, String), Parse> {
        let name = m.subcommand_name().unwrap_or_default().to_string();
        Ok((Cli::from_arg_matches(&m).map_err(Parse::Clap)?, name))
    };
    // The command line alone. Its own mistakes are reported as they are; only an argument it
    // lacks may still come from a profile, so that case is looked at again tolerantly, to find
    // the configuration file, the profile and the subcommand.
    let (m, strict) = match cmd.clone().try_get_matches_from(&argv) {
        Ok(m) => (m.clone(), Ok(m)),
        Err(e) if e.kind() != ErrorKind::MissingRequiredArgument => return Err(Parse::Clap(e)),
        Err(e) => (
            cmd.clone()
                .ignore_errors(true)
                .try_get_matches_from(&argv)
                .map_err(Parse::Clap)?,
            Err(e),
        ),
    };
    let file = m.get_one::<std::path::PathBuf>("config");
    let name = m.get_one::<String>("profile");
    let profile =
        config::load(file.map(|p| p.as_path()), name.map(|s| s.as_str())).map_err(Parse::Config)?;
    let Some(profile) = profile else {
        return parsed(strict.map_err(Parse::Clap)?);
    };
    let extra = config::extra_args(&profile, &cmd, &m).map_err(Parse::Config)?;
    let merged = config::merged_argv(&argv, extra);
    // The command line was fine but for what a profile may supply: a refusal now concerns a
    // value from the profile, so say where it came from.
    let m = cmd.try_get_matches_from(&merged).map_err(|e| {
        Parse::Config(format!(
            "{} (from profile `{}` of {})",
            first_paragraph(&e),
            profile.name,
            profile.file.display()
        ))
    })?;
    parsed(m)
}

/// A usage error: one line on stderr (and a JSON `error` line with `--json`), exit code 2.
fn usage_error(msg: String) -> ! {
    if std::env::args_os().any(|a| a == "--json") {
        let out = Out {
            json: true,
            quiet: false,
            verbose: 0,
        };
        out.json_line("error", json!({"message": msg, "exit_code": exit::USAGE}));
    }
    crate::elog!("chunkbak: {msg}");
    std::process::exit(exit::USAGE);
}

fn main() {
    tune_allocator();
    let (cli, name) = parse_args();
    set_this_host(&cli.global);
    install_sigint();
    let out = Out {
        json: cli.global.json,
        quiet: cli.global.quiet,
        verbose: cli.global.verbose,
    };
    let started = std::time::Instant::now();
    if let Some(f) = &cli.global.log_file {
        if let Err(e) = output::open_log(f) {
            usage_error(format!("log file {}: {e}", f.display()));
        }
        let args: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        output::log_line(&format!("start: {}", output::redact_args(&args).join(" ")));
    }
    let code = match run(&cli, &out) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            let message = disk_full_message(&cli.global, &e).unwrap_or_else(|| format!("{e:#}"));
            if out.json {
                out.json_line("error", json!({"message": message, "exit_code": code}));
            }
            crate::elog!("chunkbak: {message}");
            code
        }
    };
    final_summary(&name, &out, code, started.elapsed());
    chunkbak_engine::tmp::remove();
    std::process::exit(code);
}

/// The run's last line, for a cron mail or a journal reader: what the command did (snapshot,
/// files, bytes), how long it took, and its S3 requests and bytes. On stderr for commands that
/// report a summary (backup, restore, forget, prune, check, copy), unless --quiet or --json;
/// always in the --log-file.
fn final_summary(name: &str, out: &Out, code: i32, took: std::time::Duration) {
    let detail = output::take_summary();
    let mut line = format!("chunkbak {name}: ");
    let what = match (&detail, code) {
        (Some(d), exit::OK) => d.clone(),
        (Some(d), c) => format!("{d}; exit {c}"),
        (None, exit::OK) => "ok".to_string(),
        (None, c) => format!("failed, exit {c}"),
    };
    let mut cost = format!("{:.1} s", took.as_secs_f64());
    let requests = cold::requests_line();
    if let Some(r) = &requests {
        cost.push_str("; ");
        cost.push_str(r);
    }
    line.push_str(&format!("{what}; {cost}"));
    if (detail.is_some() || requests.is_some()) && !out.json && !out.quiet {
        // On one terminal the report above already says what was done: only the time and
        // the requests are new there. A journal, a cron mail and a log get the whole line.
        if code == exit::OK && detail.is_some() && output::one_terminal() {
            eprintln!("chunkbak {name}: {cost}");
        } else {
            eprintln!("{line}");
        }
    }
    output::log_line(&line);
}

/// A mistake in how chunkbak was called (exit code 2), found after the command line was
/// parsed: options that exclude each other, a value of the wrong form.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns a [`Usage`] error (exit code 2).
#[macro_export]
macro_rules! usage {
    ($($t:tt)*) => {
        return Err($crate::Usage(format!($($t)*)).into())
    };
}

/// A write refused for lack of space in a local repository, said as that first: the cause
/// (the disk), where (the repository), then what to do.
fn disk_full_message(g: &Global, e: &anyhow::Error) -> Option<String> {
    let Some(Error::Io { path, cause }) = e.downcast_ref::<Error>() else {
        return None;
    };
    if !chunkbak_engine::stop::is_disk_full(cause) {
        return None;
    }
    let repo = repo_spec(g).ok().filter(|s| s.s3.is_none())?.location;
    let inside = path.strip_prefix(&repo).ok()?;
    Some(format!(
        "disk full at the repository {}: writing {}: {cause}; nothing was committed: free space \
         there and run the command again (what it stored is reused)",
        repo.display(),
        inside.display()
    ))
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<Usage>().is_some() {
        return exit::USAGE;
    }
    match e.downcast_ref::<Error>() {
        // A value of the wrong form (a time, a duration, a pattern, a path), however deep.
        Some(Error::Invalid(_)) => exit::USAGE,
        Some(Error::NoRepository(_)) => exit::NO_REPO,
        Some(Error::WrongPassword(..)) => exit::WRONG_PASSWORD,
        Some(Error::Interrupted) => exit::INTERRUPTED,
        Some(Error::Archived { .. }) => exit::COLD,
        _ => {
            let _ = exit::LOCKED;
            exit::ERROR
        }
    }
}

/// `--skip-damaged`, for the snapshot choice of every command.
static SKIP_DAMAGED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `--clock-skew` in seconds, set once at the start of a run.
static CLOCK_SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// This host's clock, with the tolerance of `--clock-skew`.
pub fn clock_now() -> Clock {
    Clock::system(
        CLOCK_SKEW
            .get()
            .copied()
            .unwrap_or(select::DEFAULT_CLOCK_SKEW_SECS),
    )
}

fn run(cli: &Cli, out: &Out) -> anyhow::Result<i32> {
    let g = &cli.global;
    let skew = timeparse::parse_duration(&g.clock_skew).context("--clock-skew")?;
    let _ = CLOCK_SKEW.set(skew.as_secs() as i64);
    let _ = SKIP_DAMAGED.set(g.skip_damaged);
    let r = match &cli.command {
        Command::Init(a) => open::cmd_init(g, out, a),
        Command::Backup(a) => backup::cmd_backup(g, out, a),
        Command::Snapshots(f) => snapshots::cmd_snapshots(g, out, f),
        Command::Ls(a) => snapshots::cmd_ls(g, out, a),
        Command::Dump(a) => snapshots::cmd_dump(g, out, a),
        Command::Find(a) => inspect::cmd_find(g, out, a),
        Command::Diff(a) => inspect::cmd_diff(g, out, a),
        Command::Mount(a) => inspect::cmd_mount(g, out, a),
        Command::Restore(a) => restore::cmd_restore(g, out, a),
        Command::Warmup(a) => restore::cmd_warmup(g, out, a),
        Command::Check(a) => check::cmd_check(g, out, a),
        Command::Forget(a) => maint::cmd_forget(g, out, a),
        Command::Prune(a) => maint::cmd_prune(g, out, a),
        Command::Repair(c) => maint::cmd_repair(g, out, c),
        Command::Lifecycle(c) => cold::cmd_lifecycle(g, out, c),
        Command::Lock(c) => maint::cmd_lock(g, out, c),
        Command::Copy(a) => repos::cmd_copy(g, out, a),
        Command::AwsApply(c) => aws::cmd_aws_apply(g, out, c),
        Command::Key(c) => repos::cmd_key(g, out, c),
        Command::Benchmark(a) => benchmark::cmd_benchmark(g, out, a),
        Command::Cat(a) => cat::cmd_cat(g, out, a),
        Command::Stats(a) => stats::cmd_stats(g, out, a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "chunkbak", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { dir: Some(dir) } => {
            use clap::CommandFactory;
            // One page per command, as the main page's SEE ALSO names them (`help` included:
            // clap adds it when the command is built).
            let mut cmd = Cli::command();
            cmd.build();
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut pages = vec![("chunkbak.1".to_string(), cmd.clone())];
            for sub in cmd.get_subcommands() {
                // clap names are &'static str (without its `string` feature); this runs once.
                let name: &'static str =
                    Box::leak(format!("chunkbak-{}", sub.get_name()).into_boxed_str());
                pages.push((format!("{name}.1"), sub.clone().name(name)));
            }
            for (file, page) in pages {
                let mut buf = Vec::new();
                clap_mangen::Man::new(page).render(&mut buf)?;
                let p = dir.join(&file);
                std::fs::write(&p, buf).with_context(|| format!("writing {}", p.display()))?;
                out.line(p.display().to_string());
            }
            Ok(exit::OK)
        }
        Command::Man { dir: None } => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            let cmd = Cli::command();
            clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                // Each command's options as a section of the one page.
                buf.extend_from_slice(
                    format!(".SH \"COMMAND: {}\"\n", sub.get_name().to_uppercase()).as_bytes(),
                );
                clap_mangen::Man::new(sub.clone()).render_options_section(&mut buf)?;
            }
            std::io::stdout().write_all(&buf)?;
            Ok(exit::OK)
        }
    };
    // What the run cost in S3 requests, also after a failure.
    cold::report_requests(out);
    r
}

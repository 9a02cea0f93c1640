//! The `chunkbak` command: parses arguments, turns them into engine options, shows progress
//! and results, and maps errors to exit codes. All logic lives in `chunkbak-engine`.

mod args;
mod aws;
mod cold;
mod config;
mod inspect;
mod maint;
mod output;
mod progress;
mod repos;
mod stats;

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::backend::s3::{S3Backend, S3Config};
use chunkbak_engine::backend::{Backend, FileKind, StorageClass};
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::format::tree::{Node, NodeKind};
use chunkbak_engine::format::ObjectKind;
use chunkbak_engine::ops::backup::{self, BackupOptions, ParentMode, StdinSource};
use chunkbak_engine::ops::restore::{self, Overwrite, PackGate, RestoreOptions};
use chunkbak_engine::ops::select::{self, timestamp_of, Clock, Filter, Selector};
use chunkbak_engine::ops::thaw::{self, Thaw};
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::state::LocalState;
use chunkbak_engine::{chunker::ChunkerParams, timeparse, Error, Id, Repository};

use args::{Cli, Command, FilterArgs, Global};
use output::{human_bytes, path_json, Out};

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
        Command::Init(a) => cmd_init(g, out, a),
        Command::Backup(a) => cmd_backup(g, out, a),
        Command::Snapshots(f) => cmd_snapshots(g, out, f),
        Command::Ls(a) => cmd_ls(g, out, a),
        Command::Dump(a) => cmd_dump(g, out, a),
        Command::Find(a) => inspect::cmd_find(g, out, a),
        Command::Diff(a) => inspect::cmd_diff(g, out, a),
        Command::Mount(a) => inspect::cmd_mount(g, out, a),
        Command::Restore(a) => cmd_restore(g, out, a),
        Command::Warmup(a) => cmd_warmup(g, out, a),
        Command::Check(a) => cmd_check(g, out, a),
        Command::Forget(a) => maint::cmd_forget(g, out, a),
        Command::Prune(a) => maint::cmd_prune(g, out, a),
        Command::Repair(c) => maint::cmd_repair(g, out, c),
        Command::Lifecycle(c) => cmd_lifecycle(g, out, c),
        Command::Lock(c) => maint::cmd_lock(g, out, c),
        Command::Copy(a) => repos::cmd_copy(g, out, a),
        Command::AwsApply(c) => aws::cmd_aws_apply(g, out, c),
        Command::Key(c) => repos::cmd_key(g, out, c),
        Command::Benchmark(a) => cmd_benchmark(g, out, a),
        Command::Cat(a) => cmd_cat(g, out, a),
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

// ---------------------------------------------------------------------------------------------
// Repository location and password

struct RepoSpec {
    /// A local directory (None for S3).
    location: PathBuf,
    s3: Option<S3Config>,
    /// No repository was configured: the documented default is used.
    default: bool,
}

impl RepoSpec {
    fn display(&self) -> String {
        match &self.s3 {
            Some(c) if c.prefix.is_empty() => format!("s3:{}", c.bucket),
            Some(c) => format!("s3:{}/{}", c.bucket, c.prefix),
            None => self.location.display().to_string(),
        }
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

/// `$XDG_DATA_HOME/chunkbak/repo` (default `~/.local/share/chunkbak/repo`).
fn default_repo() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("chunkbak/repo")
}

/// `$XDG_CONFIG_HOME/chunkbak/password` (default `~/.config/chunkbak/password`).
pub fn default_password_file() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("chunkbak/password")
}

fn repo_spec(g: &Global) -> anyhow::Result<RepoSpec> {
    match &g.repo {
        Some(r) => {
            let mut spec = spec_of(g, r, &Other::default())?;
            // `-r` naming the default repository: its default password file serves it too.
            spec.default = spec.s3.is_none() && same_place(&spec.location, &default_repo());
            Ok(spec)
        }
        None => Ok(RepoSpec {
            location: default_repo(),
            s3: None,
            default: true,
        }),
    }
}

/// Whether two local paths name one place: compared resolved where they exist, as absolute
/// paths otherwise.
fn same_place(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    resolve(a) == resolve(b)
}

/// What sets a second repository (`copy --to`, `init --from`) apart from the first: its
/// bucket's region and the AWS profile whose credentials reach it.
#[derive(Default)]
pub struct Other<'a> {
    pub region: Option<&'a str>,
    pub profile: Option<&'a str>,
}

/// A repository named on the command line (the S3 settings are the global ones, but for what
/// `other` gives).
fn spec_of(g: &Global, r: impl AsRef<std::ffi::OsStr>, other: &Other) -> anyhow::Result<RepoSpec> {
    let region = other.region;
    let r = r.as_ref();
    if r.as_bytes()
        .get(..3)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"s3:"))
    {
        let r = r
            .to_str()
            .ok_or_else(|| anyhow!("S3 repository {:?}: not UTF-8", r.to_string_lossy()))?;
        let mut c = S3Config::parse(r)?;
        // An endpoint or region in the repository string is that repository's own.
        if c.endpoint.is_none() {
            c.endpoint = g.s3_endpoint.clone();
        }
        c.connections = g.s3_connections.max(1);
        c.max_attempts = g.s3_max_attempts.max(1);
        c.archive = g.s3_archive;
        c.addressing = g.s3_addressing;
        c.profile = other
            .profile
            .map(str::to_string)
            .or_else(|| g.s3_profile.clone());
        c.timeout = timeparse::parse_duration(&g.s3_timeout).context("--s3-timeout")?;
        if let Some(r) = region {
            c.region = Some(r.to_string());
        } else if c.region.is_none() {
            c.region = g.s3_region.clone();
        }
        Ok(RepoSpec {
            location: PathBuf::new(),
            s3: Some(c),
            default: false,
        })
    } else {
        Ok(RepoSpec {
            location: PathBuf::from(std::ffi::OsStr::from_bytes(
                r.as_bytes().strip_prefix(b"local:").unwrap_or(r.as_bytes()),
            )),
            s3: None,
            default: false,
        })
    }
}

fn backend(spec: &RepoSpec) -> anyhow::Result<Arc<dyn Backend>> {
    let b: Arc<dyn Backend> = match &spec.s3 {
        Some(c) => Arc::new(S3Backend::new(c.clone())?),
        None => Arc::new(LocalBackend::new(&spec.location)),
    };
    cold::track(b.as_ref());
    Ok(b)
}

fn first_line(bytes: &[u8]) -> Vec<u8> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let mut l = bytes[..end].to_vec();
    if l.last() == Some(&b'\r') {
        l.pop();
    }
    l
}

/// The password from, in order: --password-command, --password-file, CHUNKBAK_PASSWORD, and for
/// the default repository its default password file (created with a random password when
/// `create` is set).
fn password(g: &Global, spec: &RepoSpec, create: bool, out: &Out) -> anyhow::Result<Vec<u8>> {
    let given = PasswordSource {
        command: g.password_command.as_deref(),
        file: g.password_file.as_deref(),
        env: "CHUNKBAK_PASSWORD",
        flags: "--password-file, --password-command or the CHUNKBAK_PASSWORD environment variable",
    };
    if let Some(pw) = given.read()? {
        return Ok(pw);
    }
    if spec.default {
        let f = default_password_file();
        match std::fs::read(&f) {
            Ok(b) => return Ok(first_line(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let pw = hex_random();
                if let Some(d) = f.parent() {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("creating {}", d.display()))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&f)
                    .with_context(|| format!("creating password file {}", f.display()))?;
                file.write_all(format!("{pw}\n").as_bytes())
                    .and_then(|_| file.sync_all())
                    .with_context(|| format!("writing password file {}", f.display()))?;
                crate::elog!(
                    "chunkbak: created the password file {} (mode 0600). Keep a copy of it somewhere \
                     safe, away from this machine: without it the backups cannot be read.",
                    f.display()
                );
                let _ = out;
                return Ok(pw.into_bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading password file {}", f.display()))
            }
        }
    }
    // A prompt only for a repository that may be there: a local one without its config gets
    // "no repository" from opening it, not a question first.
    let may_exist = create || spec.s3.is_some() || spec.location.join("config").exists();
    if may_exist && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        return prompt_password(&spec.display(), create);
    }
    bail!(
        "no password given for the repository at {}: use {}",
        spec.display(),
        given.flags
    )
}

/// Asks on the terminal, without echo; twice for a new repository.
fn prompt_password(repo: &str, create: bool) -> anyhow::Result<Vec<u8>> {
    let ask =
        |q: &str| rpassword::prompt_password(q).context("reading the password from the terminal");
    if !create {
        return Ok(ask(&format!("password for {repo}: "))?.into_bytes());
    }
    let pw = ask(&format!("new password for {repo}: "))?;
    if pw.is_empty() {
        usage!("an empty password: nothing was created");
    }
    if ask("the same password again: ")? != pw {
        usage!("the two passwords differ: nothing was created");
    }
    Ok(pw.into_bytes())
}

/// Where one password comes from: a command, a file, or an environment variable, in order.
pub struct PasswordSource<'a> {
    pub command: Option<&'a str>,
    pub file: Option<&'a Path>,
    pub env: &'a str,
    /// The flags that give it, for the error when none does.
    pub flags: &'a str,
}

impl PasswordSource<'_> {
    /// The password, or None when no source is set.
    pub fn read(&self) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(cmd) = self.command {
            // The command is not repeated in messages (they reach the log file), and the
            // child sees no password variable.
            let what = self
                .flags
                .split([',', ' '])
                .find(|f| f.ends_with("-command"))
                .unwrap_or("the password command");
            let o = chunkbak_engine::child::without_secrets(
                std::process::Command::new("sh").arg("-c").arg(cmd),
            )
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running the password command ({what})"))?;
            if !o.status.success() {
                bail!("the password command ({what}) failed ({})", o.status);
            }
            let pw = first_line(&o.stdout);
            if pw.is_empty() {
                bail!("the password command ({what}) printed an empty password");
            }
            return Ok(Some(pw));
        }
        if let Some(f) = self.file {
            let b = std::fs::read(f)
                .with_context(|| format!("reading password file {}", f.display()))?;
            let pw = first_line(&b);
            if pw.is_empty() {
                bail!(
                    "password file {} is empty: its first line is the password",
                    f.display()
                );
            }
            return Ok(Some(pw));
        }
        match std::env::var_os(self.env) {
            Some(p) if p.is_empty() => bail!("{} is set but empty", self.env),
            p => Ok(p.map(|p| p.as_bytes().to_vec())),
        }
    }

    /// The password; an error naming `what` when no source is set.
    pub fn require(&self, what: &str) -> anyhow::Result<Vec<u8>> {
        match self.read()? {
            Some(pw) => Ok(pw),
            None => bail!("no password given for {what}: use {}", self.flags),
        }
    }
}

/// Opens a repository named by a command's own flags (copy --to, init --from).
pub fn open_other(
    g: &Global,
    out: &Out,
    repo: &std::ffi::OsStr,
    other: &Other,
    pw: &PasswordSource,
) -> anyhow::Result<Repository> {
    let spec = spec_of(g, repo, other)?;
    let pw = pw.require(&format!("the repository at {}", spec.display()))?;
    let r = open_keyed(g, out, backend(&spec)?, &pw)
        .with_context(|| format!("opening {}", spec.display()))?;
    enable_cache(g, out, &r);
    Ok(r)
}

/// Uses the metadata cache for remote repositories, unless --no-cache.
fn enable_cache(g: &Global, out: &Out, repo: &Repository) {
    enable_cache_with(g, out, repo, false)
}

fn enable_cache_with(g: &Global, out: &Out, repo: &Repository, trees_only: bool) {
    // A third of the memory budget for the index; beyond that, a run file on disk: kept in
    // the cache folder for the next run, or with --no-cache in a private folder of this run.
    let above = (g.memory / 3 / chunkbak_engine::index::BYTES_PER_BLOB as u64) as usize;
    repo.set_memory(g.memory);
    if g.no_cache {
        if let Err(e) = repo.index_on_disk_for_this_run(&std::env::temp_dir(), above) {
            warn(out, &format!("{e}: a large index stays in memory"));
        }
    } else {
        let root = g
            .cache_dir
            .clone()
            .unwrap_or_else(|| xdg("XDG_CACHE_HOME", ".cache").join("chunkbak"));
        repo.keep_index_on_disk(&root.join("index"), above);
    }
    if !g.no_cache {
        let root = g
            .cache_dir
            .clone()
            .unwrap_or_else(|| xdg("XDG_CACHE_HOME", ".cache").join("chunkbak"));
        // Cached index files and trees are as private as the repository.
        if let Ok(true) = chunkbak_engine::fsperm::tighten(&root) {
            warn(
                out,
                &format!(
                    "cache folder {} was readable by other users: made private (0700)",
                    root.display()
                ),
            );
        }
        if trees_only {
            repo.use_cache_for_trees(&root);
        } else {
            repo.use_cache(&root);
        }
    }
}

/// This host's local state (`--state-dir`, default `$XDG_STATE_HOME/chunkbak`).
pub fn local_state(g: &Global) -> LocalState {
    LocalState::new(
        &g.state_dir
            .clone()
            .unwrap_or_else(|| xdg("XDG_STATE_HOME", ".local/state").join("chunkbak")),
    )
}

/// Opens a repository, trying first the key file that opened it last time on this host, and
/// warns about key files that were refused (parameters too costly to run).
pub fn open_keyed(
    g: &Global,
    out: &Out,
    backend: Arc<dyn Backend>,
    pw: &[u8],
) -> anyhow::Result<Repository> {
    let st = local_state(g);
    let location = backend.location();
    let last = st.last_key(&location);
    let repo = Repository::open_preferring(backend, pw, last.as_deref())?;
    st.set_last_key(&location, &repo.key_id());
    for msg in repo.refused_keys() {
        warn(out, &msg);
    }
    for msg in repo.backend().tighten() {
        warn(out, &msg);
    }
    Ok(repo)
}

/// A warning on stderr (and as a JSON message with --json).
pub fn warn(out: &Out, msg: &str) {
    if out.json {
        out.json_line("warning", json!({ "message": msg }));
    }
    crate::elog!("chunkbak: warning: {msg}");
}

/// Asks the store what it does with uploads (`init`, and the first write of a run on a host
/// that has not asked this store before: the answers are kept in the local state) and reports
/// each missing capability in one line with its consequence. A storage class the store
/// refuses stops the command. (Conditional writes are checked by [`ensure_append_only`] at
/// every write: a store that starts to ignore them must be caught at once.)
pub fn probe_store(
    g: &Global,
    out: &Out,
    b: &dyn Backend,
    classes: &[StorageClass],
    again: bool,
) -> anyhow::Result<()> {
    if !b.is_remote() {
        return Ok(());
    }
    let state = local_state(g);
    let location = b.location();
    if !again && state.store_capabilities(&location).is_some() {
        return Ok(());
    }
    let caps = b.probe(classes)?;
    let word = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    if out.json {
        out.json_line(
            "store_capabilities",
            json!({"repository": location, "checks_checksums": caps.checks_checksums,
                   "lifecycle": caps.lifecycle,
                   "refused_classes": caps.refused_classes.iter().map(|(c, _)| c.name()).collect::<Vec<_>>()}),
        );
    }
    if let Some((c, why)) = caps.refused_classes.first() {
        bail!(
            "the store at {location} refuses uploads in storage class {} ({why}): nothing was \
             written; choose a class it accepts (--data-storage-class, \
             --metadata-storage-class; STANDARD always works)",
            c.name()
        );
    }
    if caps.checks_checksums == Some(false) {
        warn(
            out,
            &format!(
                "the store at {location} keeps uploads whose CRC32C does not match (it checks no \
                 checksums): data damaged on the way is stored as is; chunkbak compares each \
                 pack's stored size and checksum with what it sent, and `check --read-data` \
                 finds damage later"
            ),
        );
    }
    if caps.lifecycle == Some(false) {
        warn(
            out,
            &format!(
                "the store at {location} has no lifecycle rules (not implemented): `chunkbak \
                 lifecycle apply` cannot move packs to an archive class or abort stale \
                 multipart uploads; give --data-storage-class at init instead"
            ),
        );
    }
    state.set_store_capabilities(
        &location,
        &format!(
            "checked={}\nchecksums={}\nlifecycle={}\n",
            jiff::Timestamp::now().as_second(),
            word(caps.checks_checksums),
            word(caps.lifecycle)
        ),
    );
    Ok(())
}

/// Before a command writes: checks once that the store refuses to overwrite an object
/// (format-spec 12, "Trust"); a store that does not makes the command stop unless
/// --accept-overwriting-store.
pub fn ensure_append_only(g: &Global, out: &Out, repo: &Repository) -> anyhow::Result<()> {
    static PROBED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let location = repo.backend().location();
    if PROBED.lock().expect("probed").contains(&location) {
        return Ok(());
    }
    let c = repo.config();
    probe_store(
        g,
        out,
        repo.backend().as_ref(),
        &[c.data_class(), c.meta_class()],
        false,
    )?;
    if repo.store_refuses_overwrites()? {
        PROBED.lock().expect("probed").push(location);
        return Ok(());
    }
    let what = format!(
        "the store at {} accepted a conditional write (If-None-Match: *) over an existing object \
         instead of refusing it (412): it can silently overwrite objects, so concurrent writers \
         may replace each other's objects and a compromised host's overwrite of keys/ or config \
         is not refused",
        repo.backend().location()
    );
    if g.accept_overwriting_store {
        warn(
            out,
            &format!("{what} (accepted with --accept-overwriting-store)"),
        );
        Ok(())
    } else {
        bail!(
            "{what}. Use a store that honours If-None-Match (AWS S3 does), or accept the risk \
             with --accept-overwriting-store (docs/s3.md)"
        )
    }
}

fn hex_random() -> String {
    let b: [u8; 24] = chunkbak_engine::crypter::random_bytes();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn open_repo(g: &Global, out: &Out) -> anyhow::Result<Arc<Repository>> {
    let spec = repo_spec(g)?;
    let pw = password(g, &spec, false, out)?;
    let repo = open_keyed(g, out, backend(&spec)?, &pw)?;
    enable_cache(g, out, &repo);
    Ok(Arc::new(repo))
}

// ---------------------------------------------------------------------------------------------
// init

fn init_repo(
    g: &Global,
    spec: &RepoSpec,
    pw: &[u8],
    opts: &InitOptions,
    out: &Out,
) -> anyhow::Result<Repository> {
    // What the store does with uploads, before anything is written: a storage class it
    // refuses stops here, not at the first backup's first pack.
    let repo = Repository::init_with(backend(spec)?, pw, opts, |b| {
        probe_store(g, out, b, &[opts.data_class, opts.meta_class], true)
            .map_err(|e| chunkbak_engine::Error::Other(format!("{e:#}")))
    })?;
    let id = Id(repo.config().repo_id);
    if out.json {
        out.json_line(
            "init",
            json!({"repository": spec.display(), "id": id.to_hex()}),
        );
    } else {
        crate::elog!(
            "chunkbak: created repository {} at {}",
            id.short(),
            spec.display()
        );
    }
    Ok(repo)
}

fn cmd_init(g: &Global, out: &Out, a: &args::InitArgs) -> anyhow::Result<i32> {
    let spec = repo_spec(g)?;
    // The chunker of another repository (its parameters and dedup secret), so the same data
    // becomes the same blobs in both.
    let (chunker, dedup_secret, keyed_gear) = match (&a.from, a.copy_chunker_params) {
        (Some(from), true) => {
            let pw = PasswordSource {
                command: a.from_password_command.as_deref(),
                file: a.from_password_file.as_deref(),
                env: "CHUNKBAK_FROM_PASSWORD",
                flags: "--from-password-file, --from-password-command or CHUNKBAK_FROM_PASSWORD",
            };
            let other = Other {
                region: a.from_region.as_deref(),
                profile: a.from_s3_profile.as_deref(),
            };
            let src = open_other(g, out, from, &other, &pw)?;
            let c = src.config();
            (c.chunker_params(), Some(c.dedup_secret), c.keyed_gear)
        }
        _ => (
            ChunkerParams {
                min_size: a.chunk_min,
                avg_size: a.chunk_avg,
                max_size: a.chunk_max,
                normalization: 1,
            },
            None,
            true,
        ),
    };
    let kdf = KdfParams {
        m_cost_kib: a.kdf_memory_kib,
        t_cost: a.kdf_iterations,
        p_cost: 1,
    };
    kdf.validate_new(a.allow_weak_kdf)?;
    let pw = password(g, &spec, true, out)?;
    let opts = InitOptions {
        chunker,
        dedup_secret,
        data_pack_size: a.data_pack_size,
        tree_pack_size: a.tree_pack_size,
        compression_level: a.compression,
        data_class: StorageClass::parse(&a.data_storage_class).context("--data-storage-class")?,
        meta_class: match StorageClass::parse(&a.metadata_storage_class)
            .context("--metadata-storage-class")?
        {
            c if c.is_archive() => usage!(
                "--metadata-storage-class {}: metadata must stay readable at once (STANDARD, \
                 STANDARD_IA, INTELLIGENT_TIERING or GLACIER_IR); only data packs may be archived",
                c.name()
            ),
            c => c,
        },
        kdf,
        keyed_gear,
        object_lock: match a.object_lock_days {
            Some(days) => Some(chunkbak_engine::backend::ObjectLock {
                mode: chunkbak_engine::backend::LockMode::parse(&a.object_lock_mode)?,
                days,
            }),
            None => None,
        },
    };
    let repo = init_repo(g, &spec, &pw, &opts, out)?;
    if let Some(l) = opts.object_lock {
        let who = match l.mode {
            chunkbak_engine::backend::LockMode::Governance => {
                "only users granted s3:BypassGovernanceRetention can delete an object before"
            }
            chunkbak_engine::backend::LockMode::Compliance => {
                "nobody, the account's root user included, can delete an object or shorten \
                 its lock before"
            }
        };
        if out.json {
            out.json_line(
                "object_lock",
                json!({"mode": l.mode.name(), "days": l.days}),
            );
        } else if !out.quiet {
            crate::elog!(
                "chunkbak: S3 Object Lock {} for {} days: {who} {} days after its upload (or \
                 its last renewal by prune / lock extend)",
                l.mode.name(),
                l.days,
                l.days
            );
        }
    }
    ensure_append_only(g, out, &repo)?;
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// backup

fn cmd_backup(g: &Global, out: &Out, a: &args::BackupArgs) -> anyhow::Result<i32> {
    // A source that is not there is a mistake in the command: said before anything (the
    // default repository included) is created.
    if !a.stdin && !a.stdin_from_command {
        // A path with `..` is resolved by the backup as written (lexically): not judged here.
        let plain = |p: &&std::ffi::OsString| {
            !Path::new(p)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        };
        for p in a.paths.iter().filter(plain) {
            if let Err(e) = std::fs::symlink_metadata(p) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    usage!(
                        "backup source {}: no such file or directory; nothing was backed up",
                        Path::new(p).display()
                    );
                }
            }
        }
    }
    let spec = repo_spec(g)?;
    let repo = if spec.default && !spec.location.join("config").exists() {
        // First use without any configuration: create the default repository.
        let pw = password(g, &spec, true, out)?;
        init_repo(g, &spec, &pw, &InitOptions::default(), out)?
    } else {
        let pw = password(g, &spec, false, out)?;
        open_keyed(g, out, backend(&spec)?, &pw)?
    };
    enable_cache(g, out, &repo);
    ensure_append_only(g, out, &repo)?;
    let repo = Arc::new(repo);
    repo.load_index()?;
    let stdin = if a.stdin_from_command {
        if a.paths.is_empty() {
            usage!("--stdin-from-command needs the command after `--`, e.g. `-- pg_dump mydb`");
        }
        Some(StdinSource::Command(a.paths.clone()))
    } else if a.stdin {
        Some(StdinSource::Stdin)
    } else {
        None
    };
    #[cfg(feature = "aws-sources")]
    let ebs_client = match &a.ebs_snapshot {
        Some(_) => Some(Arc::new(chunkbak_engine::ebs::Ebs::new(
            &chunkbak_engine::ebs::EbsConfig {
                region: a.aws_region.clone(),
                ..Default::default()
            },
        )?)),
        None => None,
    };
    #[cfg(not(feature = "aws-sources"))]
    if a.ebs_snapshot.is_some() || !a.aws_config.is_empty() {
        usage!("this chunkbak was built without the aws-sources feature: no EBS or AWS configuration sources");
    }
    #[cfg(feature = "aws-sources")]
    let aws_config = if a.aws_config.is_empty() {
        None
    } else {
        let mut src = backup::awsconfig::AwsConfigSource {
            route53: None,
            elb: None,
            elbv2: None,
        };
        let aws = chunkbak_engine::aws::AwsConfig {
            region: a.aws_region.clone(),
            ..Default::default()
        };
        let mut elb = None;
        let mut elb_client = || -> anyhow::Result<Arc<chunkbak_engine::elb::Elb>> {
            if elb.is_none() {
                elb = Some(Arc::new(chunkbak_engine::elb::Elb::new(&aws)?));
            }
            Ok(elb.clone().expect("made"))
        };
        for s in &a.aws_config {
            match s.as_str() {
                "elb" => src.elb = Some(elb_client()?),
                "elbv2" => src.elbv2 = Some(elb_client()?),
                "route53" => {
                    src.route53 = Some(Arc::new(chunkbak_engine::route53::Route53::new(
                        &chunkbak_engine::aws::AwsConfig {
                            region: a.aws_region.clone(),
                            ..Default::default()
                        },
                    )?))
                }
                other => usage!(
                    "--aws-config {other}: not a source chunkbak reads (route53, elb, elbv2)"
                ),
            }
        }
        Some(src)
    };
    let mut opts = BackupOptions {
        #[cfg(feature = "aws-sources")]
        aws_config,
        #[cfg(feature = "aws-sources")]
        ebs: match (&a.ebs_snapshot, &a.ebs_volume, &ebs_client) {
            (Some(snap), Some(vol), Some(c)) => Some(backup::ebs::EbsSource {
                client: c.clone(),
                snapshot: snap.clone(),
                parent: a.ebs_parent_snapshot.clone(),
                volume: vol.clone(),
            }),
            _ => None,
        },
        paths: if stdin.is_some() {
            Vec::new()
        } else {
            a.paths.iter().map(PathBuf::from).collect()
        },
        tags: a.tags.clone(),
        excludes: a.excludes.clone(),
        one_file_system: a.one_file_system,
        stdin_filename: a.stdin_filename.clone(),
        stdin,
        threads: a.threads,
        ..BackupOptions::default()
    };
    if let Some(h) = &a.host {
        opts.host = h.clone();
    }
    if let Some(t) = &a.time {
        opts.time = Some(timeparse::parse_time_now(t)?);
    }
    opts.parent = match (&a.parent, a.force) {
        (_, true) => ParentMode::None,
        (Some(p), false) => ParentMode::Id(p.clone()),
        (None, false) => ParentMode::Auto,
    };
    // Only a snapshot this host wrote is trusted as the parent (format-spec 12, "Trust").
    let state = local_state(g);
    let repo_id = repo.config().repo_id;
    opts.own_snapshots = Some(state.own_snapshots(&repo_id));
    opts.clock_skew_secs = clock_now().skew_secs;
    let bar =
        Arc::new(progress::Bar::new(out, !g.no_progress, "backup").with_changes(out.verbose >= 1));
    let r = backup::backup(&repo, opts, bar.clone());
    bar.finish();
    let r = r?;
    if let Err(e) = state.add_own_snapshot(&repo_id, &r.snapshot_id) {
        warn(
            out,
            &format!(
                "snapshot {} is saved, but recording it in this host's state under {} failed \
                 ({e}): the next backup will read every file again",
                r.snapshot_id.short(),
                state.dir().display()
            ),
        );
    }
    for m in &r.claims_refuted {
        warn(out, m);
    }
    if let Some(u) = r.untrusted_parent {
        warn(
            out,
            &format!(
                "snapshot {} has this host's name and paths but this host did not write it (it \
                 is not in {}): not trusted as the parent, every file was read{}",
                u.short(),
                state.dir().display(),
                match r.parent {
                    Some(p) =>
                        format!(" unless unchanged since this host's snapshot {}", p.short()),
                    None => String::new(),
                }
            ),
        );
    }
    let s = &r.snapshot.summary;
    #[cfg(feature = "aws-sources")]
    if let Some(c) = &ebs_client {
        let (list, get, _, _, read, _) = c.counts.snapshot();
        if out.json {
            out.json_line(
                "ebs_requests",
                json!({"list": list, "GetSnapshotBlock": get, "bytes_read": read}),
            );
        } else {
            out.line(format!(
                "EBS direct APIs: {list} list requests, {get} GetSnapshotBlock requests ({})",
                human_bytes(read)
            ));
        }
    }
    if out.json {
        out.json_line(
            "summary",
            json!({
                "snapshot_id": r.snapshot_id.to_hex(),
                "parent": r.parent.map(|p| p.to_hex()),
                "untrusted_parent": r.untrusted_parent.map(|p| p.to_hex()),
                "files_new": s.files_new, "files_changed": s.files_changed,
                "files_unchanged": s.files_unchanged, "dirs_new": s.dirs_new,
                "dirs_changed": s.dirs_changed, "dirs_unchanged": s.dirs_unchanged,
                "bytes_read": s.bytes_read, "bytes_total": s.bytes_total,
                "bytes_added": s.bytes_added, "blobs_added": s.blobs_added,
                "packs_written": r.packs_written, "blobs_copied": r.blobs_copied,
                "deltas": r.deltas, "delta_raw_bytes": r.delta_raw_bytes,
                "delta_stored_bytes": r.delta_stored_bytes,
                "errors": s.errors, "duration_ms": s.duration_ms,
            }),
        );
    } else {
        out.line(format!(
            "Files: {} new, {} changed, {} unchanged; dirs: {} new, {} changed, {} unchanged",
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.dirs_new,
            s.dirs_changed,
            s.dirs_unchanged
        ));
        out.line(format!(
            "Read {} of {}, added {} to the repository in {}, {:.1}s",
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_total),
            human_bytes(s.bytes_added),
            output::count(r.packs_written, "pack"),
            s.duration_ms as f64 / 1000.0
        ));
        if r.deltas > 0 {
            out.line(format!(
                "Deltas: {} chunks ({}) stored as {} against their previous versions",
                r.deltas,
                human_bytes(r.delta_raw_bytes),
                human_bytes(r.delta_stored_bytes)
            ));
        }
        out.line(format!("snapshot {} saved", r.snapshot_id.short()));
    }
    output::set_summary(format!(
        "snapshot {} saved ({}), {} ({} new, {} changed), {} added, {} read",
        r.snapshot_id.short(),
        r.snapshot.host,
        output::count(s.files_new + s.files_changed + s.files_unchanged, "file"),
        s.files_new,
        s.files_changed,
        human_bytes(s.bytes_added),
        human_bytes(s.bytes_read),
    ));
    if s.errors > 0 {
        crate::elog!(
            "chunkbak: {} entries could not be read and are missing from snapshot {} (see the warnings above)",
            s.errors,
            r.snapshot_id.short()
        );
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// snapshots, ls, restore

/// The name this host's backups are recorded under: the profile's `[backup] host` when it sets
/// one (hosts with random machine names), else the machine's host name.
fn this_host() -> String {
    THIS_HOST
        .get()
        .cloned()
        .unwrap_or_else(chunkbak_engine::ops::fsmeta::hostname)
}

/// See [`this_host`]; set once the command line is parsed.
static THIS_HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn set_this_host(g: &Global) {
    let profile_host = config::load(g.config.as_deref(), g.profile.as_deref())
        .ok()
        .flatten()
        .and_then(|p| p.string(&["backup", "host"]));
    if let Some(h) = profile_host {
        let _ = THIS_HOST.set(h);
    }
}

/// The hosts `latest` and `--at` choose among, when no --host is given: all of them when the
/// repository's snapshots are of one host; this host's own when several hosts share the repository
/// and it has snapshots there; otherwise a usage error listing the hosts (a fleet repository's
/// `latest` is never another host's by accident).
pub(crate) fn this_hosts_by_default(
    snaps: &[(Id, Snapshot)],
    f: &Filter,
) -> anyhow::Result<Vec<String>> {
    if !f.hosts.is_empty() {
        return Ok(f.hosts.clone());
    }
    // Over every snapshot, not only those the other filters match: a --path or --tag that
    // only another host's snapshots match must not quietly choose that host's.
    let hosts: std::collections::BTreeSet<&str> =
        snaps.iter().map(|(_, s)| s.host.as_str()).collect();
    if hosts.len() <= 1 {
        return Ok(Vec::new());
    }
    let me = this_host();
    if hosts.contains(me.as_str()) {
        return Ok(vec![me]);
    }
    usage!(
        "the repository holds snapshots of {} hosts ({}) and none of this host ({me}): name \
         the one meant with --host HOST, or give a snapshot id",
        hosts.len(),
        hosts.iter().copied().collect::<Vec<_>>().join(", ")
    )
}

fn filter_of(f: &FilterArgs) -> Filter {
    Filter {
        hosts: f.hosts.clone(),
        paths: f.paths.clone(),
        tags: f.tags.clone(),
    }
}

fn local_time(s: &Snapshot) -> String {
    timestamp_of(s.time)
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn snapshot_json(id: &Id, s: &Snapshot) -> Value {
    json!({
        "id": id.to_hex(),
        "short_id": id.short(),
        "time": timestamp_of(s.time).to_string(),
        "host": s.host,
        "username": s.username,
        "paths": s.paths_lossy(),
        "tags": s.tags,
        "tree": s.tree.to_hex(),
        "parent": s.parent.map(|p| p.to_hex()),
        "program_version": s.program_version,
        "from_future": clock_now().is_future(s),
        "summary": {
            "files_new": s.summary.files_new, "files_changed": s.summary.files_changed,
            "files_unchanged": s.summary.files_unchanged, "bytes_read": s.summary.bytes_read,
            "bytes_total": s.summary.bytes_total, "bytes_added": s.summary.bytes_added,
            "errors": s.summary.errors, "duration_ms": s.summary.duration_ms,
        },
    })
}

/// The snapshots that can be read; a warning for each one that cannot (the run goes on
/// without it). The second value is whether any was unreadable.
/// Snapshots that could be read, with their ids; names (under `snapshots/`) of those that not.
type Readable = (Vec<(Id, Snapshot)>, Vec<String>);

/// The snapshots that can be read, and the names (under `snapshots/`) of those that cannot.
fn readable_snapshots(repo: &Repository, out: &Out) -> anyhow::Result<Readable> {
    let (snaps, damaged) = repo.snapshots_and_damaged()?;
    for (path, e) in &damaged {
        let msg = format!(
            "{path} cannot be read, skipped: {e} (`chunkbak check` reports it, `chunkbak repair \
             snapshots` removes it)"
        );
        warn(out, &msg);
    }
    let names = damaged
        .into_iter()
        .map(|(p, _)| p.trim_start_matches("snapshots/").to_string())
        .collect();
    Ok((snaps, names))
}

fn cmd_snapshots(g: &Global, out: &Out, f: &FilterArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    let filter = filter_of(f);
    let (all, damaged) = readable_snapshots(&repo, out)?;
    let done = if damaged.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    };
    let snaps: Vec<(Id, Snapshot)> = all.into_iter().filter(|(_, s)| filter.matches(s)).collect();
    if out.json {
        for (id, s) in &snaps {
            out.json_line("snapshot", snapshot_json(id, s));
        }
        return Ok(done);
    }
    out.line(format!(
        "{:<10} {:<20} {:<16} {:<12} {:>10}  Paths",
        "ID", "Time", "Host", "Tags", "Size"
    ));
    out.line("-".repeat(90));
    let clock = clock_now();
    let mut future = 0;
    for (id, s) in &snaps {
        let f = clock.is_future(s);
        future += usize::from(f);
        out.line(format!(
            "{:<10} {:<20} {:<16} {:<12} {:>10}  {}",
            id.short(),
            if f {
                format!("{}!", local_time(s))
            } else {
                local_time(s)
            },
            s.host,
            s.tags.join(","),
            human_bytes(s.summary.bytes_total),
            s.paths_lossy().join(" ")
        ));
    }
    out.line("-".repeat(90));
    out.line(format!("{} snapshots", snaps.len()));
    if future > 0 {
        warn(
            out,
            &format!(
                "{future} snapshot(s) marked ! are dated later than now + --clock-skew {}: \
                 written by a host with a wrong clock, or forged; they are never taken as \
                 latest, by --at, as a parent or by --keep-within (`chunkbak forget ID` removes one)",
                timeparse::format_secs(clock.skew_secs)
            ),
        );
    }
    Ok(done)
}

/// Resolves `SNAPSHOT[:PATH]` or `--at TIME` (with filters) to one snapshot and an inner path.
fn choose(
    repo: &Repository,
    arg: Option<&std::ffi::OsStr>,
    at: Option<&str>,
    filter: &FilterArgs,
    out: &Out,
) -> anyhow::Result<(Id, Snapshot, Vec<u8>)> {
    choose_for(repo, arg, at, filter, out, None)
}

/// Whether snapshot `s` was taken of `path`, of a folder above it or of one below it.
fn covers(s: &Snapshot, path: &[u8]) -> bool {
    let path = path.strip_suffix(b"/").unwrap_or(path);
    let under =
        |a: &[u8], b: &[u8]| a.starts_with(b) && (b == b"/" || a.get(b.len()) == Some(&b'/'));
    s.paths
        .iter()
        .map(|p| p.strip_suffix(b"/").filter(|q| !q.is_empty()).unwrap_or(p))
        .any(|p| p == path || under(path, p) || under(p, path))
}

/// As [`choose`]; `latest` and `--at` prefer the snapshots taken of `path` (the PATH of `ls
/// latest PATH`; a `:PATH` counts too), so `latest` after a database dump still lists a
/// folder backed up before it.
fn choose_for(
    repo: &Repository,
    arg: Option<&std::ffi::OsStr>,
    at: Option<&str>,
    filter: &FilterArgs,
    out: &Out,
    path: Option<&[u8]>,
) -> anyhow::Result<(Id, Snapshot, Vec<u8>)> {
    let (sel, sub) = match (arg, at) {
        (Some(_), Some(_)) => usage!("give either a SNAPSHOT or --at TIME, not both"),
        (None, Some(t)) => (Selector::At(timeparse::parse_time_now(t)?), Vec::new()),
        (Some(a), None) => {
            // ID:PATH; the path may be any bytes, as file names are.
            let b = a.as_bytes();
            let (id, p) = match b.iter().position(|&c| c == b':') {
                Some(i) => (&b[..i], b[i + 1..].to_vec()),
                None => (b, Vec::new()),
            };
            let id = std::str::from_utf8(id).map_err(|_| {
                anyhow!(
                    "snapshot {:?}: an id prefix or 'latest' is ASCII",
                    String::from_utf8_lossy(id)
                )
            })?;
            (Selector::parse(id), p)
        }
        (None, None) => (Selector::Latest, Vec::new()),
    };
    let (snaps, damaged) = readable_snapshots(repo, out)?;
    if let Selector::Id(p) = &sel {
        if let Some(n) = damaged.iter().find(|n| n.starts_with(p.as_str())) {
            bail!(
                "snapshot {p:?} is snapshots/{n}, which cannot be read (`chunkbak check` says \
                 why; `chunkbak repair snapshots` removes it)"
            );
        }
    }
    let mut f = filter_of(filter);
    if !matches!(sel, Selector::Id(_)) {
        f.hosts = this_hosts_by_default(&snaps, &f)?;
    }
    let hint = path.or((!sub.is_empty()).then_some(sub.as_slice()));
    let of_path: Vec<(Id, Snapshot)> = match hint {
        Some(p) if !matches!(sel, Selector::Id(_)) => snaps
            .iter()
            .filter(|(_, s)| covers(s, p))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let (id, s) = match select::select(&of_path, &sel, &f, &clock_now()) {
        Ok(i) => of_path[i].clone(),
        Err(_) => snaps[select::select(&snaps, &sel, &f, &clock_now())?].clone(),
    };
    refuse_damaged_choice(repo, &damaged, &sel, &s, out)?;
    if out.json {
        out.json_line("selected", snapshot_json(&id, &s));
    } else if !out.quiet {
        crate::elog!(
            "snapshot {} of [{}] at {} on {}",
            id.short(),
            s.paths_lossy().join(" "),
            local_time(&s),
            s.host
        );
    }
    Ok((id, s, sub))
}

/// For `latest` and `--at`: a damaged snapshot uploaded after the readable one chosen (and,
/// for `--at`, not after that time) may be the one asked for. Then nothing is substituted
/// silently: an error names it, unless `--skip-damaged`. (An id matching a damaged snapshot is
/// refused before the choice.)
fn refuse_damaged_choice(
    repo: &Repository,
    names: &[String],
    sel: &Selector,
    chosen: &Snapshot,
    out: &Out,
) -> anyhow::Result<()> {
    let until = match sel {
        _ if names.is_empty() => return Ok(()),
        Selector::Id(_) => return Ok(()),
        Selector::Latest => i64::MAX,
        Selector::At(t) => t.as_second(),
    };
    let uploaded: std::collections::HashMap<String, Option<i64>> = repo
        .backend()
        .list_info(FileKind::Snapshot)?
        .into_iter()
        .map(|o| (o.name, o.modified))
        .collect();
    // An unknown upload time may be any.
    let Some(first) = names.iter().find(|n| {
        uploaded
            .get(*n)
            .copied()
            .flatten()
            .is_none_or(|t| t >= chosen.time.secs && t <= until)
    }) else {
        return Ok(());
    };
    let what =
        format!("snapshots/{first} (written after the one chosen) may be the one asked for; it");
    if crate::SKIP_DAMAGED.get().copied().unwrap_or(false) {
        warn(
            out,
            &format!("{what} cannot be read: --skip-damaged takes the newest readable one"),
        );
        return Ok(());
    }
    bail!(
        "{what} cannot be read (`chunkbak check` says why; `chunkbak repair snapshots` removes it); \
         nothing is restored in its place: give --skip-damaged to take the newest readable \
         snapshot before it, or name one by id"
    )
}

fn mode_string(n: &Node) -> String {
    let t = match n.kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
        NodeKind::File => '-',
    };
    let mut s = String::from(t);
    for shift in [6u32, 3, 0] {
        let b = (n.mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn kind_name(k: NodeKind) -> &'static str {
    match k {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
        NodeKind::CharDevice => "chardev",
        NodeKind::BlockDevice => "blockdev",
    }
}

fn cmd_dump(g: &Global, out: &Out, a: &args::DumpArgs) -> anyhow::Result<i32> {
    if out.json {
        usage!("dump writes the file itself to standard output: --json does not apply");
    }
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (s, sub) = choose_path(&repo, &a.snapshot, &a.path, &a.at, &a.filter, out)?;
    let stdout = std::io::stdout();
    if a.archive.is_some() && stdout.is_terminal() {
        usage!("refusing to write a tar archive to a terminal: redirect it (> backup.tar) or pipe it (| tar -x)");
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    match a.archive {
        Some(args::ArchiveFormat::Tar) => {
            let st = chunkbak_engine::ops::dump::dump_tar(&repo, s.tree, &sub, &mut w)?;
            if !out.quiet {
                crate::elog!(
                    "wrote {} entries, {} of file data",
                    st.entries,
                    human_bytes(st.bytes)
                );
            }
        }
        None => {
            chunkbak_engine::ops::dump::dump_file(&repo, s.tree, &sub, &mut w)?;
        }
    }
    Ok(exit::OK)
}

/// The snapshot and the path inside it that `[SNAPSHOT] [PATH]` and --at name: PATH wins over
/// ID:PATH, and with --at a lone positional is the path.
fn choose_path(
    repo: &Repository,
    snapshot: &Option<std::ffi::OsString>,
    path: &Option<std::ffi::OsString>,
    at: &Option<String>,
    filter: &FilterArgs,
    out: &Out,
) -> anyhow::Result<(Snapshot, Vec<u8>)> {
    let (snap, path) = match (snapshot, path, at) {
        (Some(p), None, Some(_)) => (None, Some(p)),
        _ => (snapshot.as_deref(), path.as_ref()),
    };
    let wanted = path.map(|p| p.as_bytes());
    let (_, s, sub) = choose_for(repo, snap, at.as_deref(), filter, out, wanted)?;
    Ok((s, path.map_or(sub, |p| p.as_bytes().to_vec())))
}

fn cmd_ls(g: &Global, out: &Out, a: &args::LsArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (s, sub) = choose_path(&repo, &a.snapshot, &a.path, &a.at, &a.filter, out)?;
    use chunkbak_engine::ops::ls;
    let print = |path: &[u8], n: &Node| {
        if out.json {
            let mut d = serde_json::Map::new();
            path_json(&mut d, "path", path);
            path_json(&mut d, "name", &n.name);
            d.insert("type".into(), kind_name(n.kind).into());
            d.insert("mode".into(), n.mode.into());
            d.insert("uid".into(), n.uid.into());
            d.insert("gid".into(), n.gid.into());
            d.insert("user".into(), json!(n.user));
            d.insert("group".into(), json!(n.group));
            d.insert("size".into(), n.size.into());
            d.insert("mtime".into(), timestamp_of(n.mtime).to_string().into());
            if n.kind == NodeKind::Symlink {
                path_json(&mut d, "link_target", &n.link_target);
            }
            out.json_line("node", Value::Object(d));
        } else if a.long {
            let mut line = format!(
                "{} {:>8} {:>8} {:>12} {} ",
                mode_string(n),
                n.user.clone().unwrap_or_else(|| n.uid.to_string()),
                n.group.clone().unwrap_or_else(|| n.gid.to_string()),
                n.size,
                timestamp_of(n.mtime)
                    .to_zoned(jiff::tz::TimeZone::system())
                    .strftime("%Y-%m-%d %H:%M:%S")
            )
            .into_bytes();
            line.extend_from_slice(path);
            if n.kind == NodeKind::Symlink {
                line.extend_from_slice(b" -> ");
                line.extend_from_slice(&n.link_target);
            }
            out.raw_line(&line);
        } else {
            out.raw_line(path);
        }
    };
    let start = ls::find(&repo, s.tree, &sub)?;
    match start {
        Some(n) if n.kind != NodeKind::Dir => {
            print(&sub, &n);
        }
        Some(n) => {
            print(&sub, &n);
            if let Some(t) = n.subtree {
                ls::walk(&repo, t, &sub, &mut |p, n| {
                    print(p, n);
                    Ok(true)
                })?;
            }
        }
        None => ls::walk(&repo, s.tree, b"", &mut |p, n| {
            print(p, n);
            Ok(true)
        })?,
    }
    Ok(exit::OK)
}

/// Snapshot paths given on the command line, as the engine takes them.
fn path_bytes(paths: &[std::ffi::OsString]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| p.as_bytes().to_vec()).collect()
}

fn cmd_restore(g: &Global, out: &Out, a: &args::RestoreArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (id, s, sub) = choose(
        &repo,
        a.snapshot.as_deref(),
        a.at.as_deref(),
        &a.filter,
        out,
    )?;
    if a.to_ebs_snapshot {
        return aws::restore_to_ebs(out, &repo, &id, &s, &sub, a);
    }
    let Some(target) = a.target.clone() else {
        usage!("give the directory to restore into with --target DIR");
    };
    let s3 = repo.backend().has_archive_classes();
    // --delete works within the paths the snapshot was taken of (a :PATH at or below one of
    // them included), never in the folders above them, which hold what it never saw.
    let delete_within = s.paths.clone();
    let opts = RestoreOptions {
        target,
        subpath: sub,
        delete_within,
        delete_keeps: s.excludes.clone(),
        includes: path_bytes(&a.includes),
        excludes: a.excludes.clone(),
        numeric_owner: a.numeric_owner,
        // Pack ranges are fetched whole, so more writers than cores only contend on the file
        // system (measured: 8 writers on 2 cores restore 5x slower than 2).
        threads: a.threads,
        overwrite: match a.overwrite {
            args::OverwriteArg::Always => Overwrite::Always,
            args::OverwriteArg::IfChanged => Overwrite::IfChanged,
            args::OverwriteArg::Never => Overwrite::Never,
        },
        delete: a.delete,
        dry_run: a.dry_run,
        verify: a.verify,
        no_xattrs: a.no_xattrs,
        no_special: a.no_special,
    };
    let poll = a.thaw.poll()?;
    let max_wait = a.thaw.max_wait()?;
    // Plan first where packs may be archived: what is needed, what is cold, what it costs.
    let mut plan = None;
    if (a.plan || s3) && !a.dry_run {
        let p = thaw::plan(&repo, s.tree, &opts)?;
        cold::print_plan(out, &p, &a.thaw);
        if a.plan {
            return Ok(exit::OK);
        }
        plan = Some(p);
    }
    let mut pending = 0;
    if let Some(p) = plan.as_mut() {
        pending = cold::request_thaws(&repo, p, &a.thaw, out)?;
        if pending > 0 && a.no_wait {
            if !out.quiet && !out.json {
                crate::elog!(
                    "chunkbak: {pending} archived packs are thawing; run the same command again \
                     later (thaws already requested are not requested again)"
                );
            }
            return Ok(exit::COLD);
        }
    }
    if !out.quiet && !out.json {
        crate::elog!(
            "{} snapshot {} to {}",
            if a.dry_run {
                "dry run: nothing is changed; restoring"
            } else {
                "restoring"
            },
            id.short(),
            opts.target.display()
        );
    }
    // A dry run lists every change; a restore with -v too.
    let bar = progress::Bar::new(out, !g.no_progress && !a.dry_run, "restore")
        .with_changes(a.dry_run || out.verbose >= 1);
    let report = cold::wait_reporter(out, &bar);
    let gate = match &plan {
        Some(p) if pending > 0 => Some(Thaw::new(&repo, p, poll, max_wait, &report)),
        _ => None,
    };
    let r = restore::restore_gated(
        &repo,
        s.tree,
        &opts,
        &bar,
        gate.as_ref().map(|g| g as &dyn PackGate),
    );
    bar.finish();
    let r = r?;
    if out.json {
        out.json_line(
            "summary",
            json!({
                "snapshot_id": id.to_hex(), "dry_run": a.dry_run, "files": r.files,
                "dirs": r.dirs, "links": r.links, "hardlinks": r.hardlinks,
                "symlinks": r.links - r.hardlinks, "specials": r.specials, "bytes": r.bytes,
                "files_unchanged": r.files_unchanged, "files_skipped": r.files_skipped,
                "bytes_reused": r.bytes_reused, "deleted": r.deleted, "verified": r.verified,
                "deletions": r.deletions.iter().map(|d| {
                    let mut m = serde_json::Map::new();
                    output::path_json(&mut m, "path", d.path.as_os_str().as_bytes());
                    m.insert("entries".into(), d.entries.into());
                    m.insert("bytes".into(), d.bytes.into());
                    Value::Object(m)
                }).collect::<Vec<_>>(),
                "errors": r.errors,
            }),
        );
    } else {
        // Files as a backup counts them: every name of a hard-linked file is one.
        let mut line = format!(
            "{} {} ({}{}), {}, {}, {}",
            if a.dry_run { "Would write" } else { "Restored" },
            output::count(r.files + r.hardlinks, "file"),
            human_bytes(r.bytes),
            match r.hardlinks {
                0 => String::new(),
                1 => "; 1 of them a hard link".to_string(),
                n => format!("; {n} of them hard links"),
            },
            output::count(r.dirs, "dir"),
            output::count(r.links - r.hardlinks, "symlink"),
            output::count(r.specials, "special file"),
        );
        if r.files_unchanged > 0 || r.bytes_reused > 0 {
            line += &format!(
                "; {} files already right, {} already in place",
                r.files_unchanged,
                human_bytes(r.bytes_reused)
            );
        }
        if r.files_skipped > 0 {
            line += &format!(
                "; {} entries left as they were (--overwrite never)",
                r.files_skipped
            );
        }
        if a.delete {
            line += &format!(
                "; {} {}",
                r.deleted,
                if a.dry_run { "to delete" } else { "deleted" }
            );
        }
        if a.verify && !a.dry_run {
            line += &format!("; {} files read back and verified", r.verified);
        }
        out.line(line);
        if a.delete && a.dry_run && !r.deletions.is_empty() {
            // What --delete would remove, by entry with what it holds, largest first.
            let mut d = r.deletions.clone();
            d.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.path.cmp(&b.path)));
            let n: u64 = d.iter().map(|d| d.entries).sum();
            out.line(format!(
                "--delete would remove {n} {} (entries, file bytes, path):",
                if n == 1 { "entry" } else { "entries" }
            ));
            for x in &d {
                let mut l =
                    format!("  {:>8}  {:>10}  ", x.entries, human_bytes(x.bytes)).into_bytes();
                l.extend_from_slice(x.path.as_os_str().as_bytes());
                out.raw_line(&l);
            }
            if r.deleted > d.len() as u64 {
                out.line(format!("  … and {} more", r.deleted - d.len() as u64));
            }
        }
    }
    output::set_summary(format!(
        "snapshot {} {} {}, {} ({} written, {} already right), {}",
        id.short(),
        if a.dry_run {
            "would restore to"
        } else {
            "restored to"
        },
        opts.target.display(),
        output::count(r.files + r.hardlinks, "file"),
        human_bytes(r.bytes),
        r.files_unchanged,
        output::count(r.errors, "error")
    ));
    if r.errors > 0 {
        crate::elog!(
            "chunkbak: {} entries could not be restored (see the warnings above)",
            r.errors
        );
        return Ok(exit::PARTIAL);
    }
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// warmup, check, lifecycle

fn cmd_warmup(g: &Global, out: &Out, a: &args::WarmupArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let (_, s, sub) = choose(
        &repo,
        a.snapshot.as_deref(),
        a.at.as_deref(),
        &a.filter,
        out,
    )?;
    let opts = RestoreOptions {
        subpath: sub,
        includes: path_bytes(&a.include_paths),
        ..RestoreOptions::default()
    };
    let poll = a.thaw.poll()?;
    let max_wait = a.thaw.max_wait()?;
    let mut plan = thaw::plan(&repo, s.tree, &opts)?;
    cold::print_plan(out, &plan, &a.thaw);
    let pending = cold::request_thaws(&repo, &mut plan, &a.thaw, out)?;
    if pending == 0 {
        out.line("every pack needed is readable");
        return Ok(exit::OK);
    }
    if !a.wait {
        return Ok(exit::COLD);
    }
    let bar = progress::Bar::new(out, false, "warmup");
    let report = cold::wait_reporter(out, &bar);
    let gate = Thaw::new(&repo, &plan, poll, max_wait, &report);
    while gate.pending() > 0 {
        gate.wait()?;
    }
    out.line("every pack needed is readable");
    Ok(exit::OK)
}

fn cmd_check(g: &Global, out: &Out, a: &args::CheckArgs) -> anyhow::Result<i32> {
    // Index files and snapshots come from the repository (what it holds, not local copies);
    // tree packs through the cache, verified against their names like every cached object.
    let spec = repo_spec(g)?;
    let pw = password(g, &spec, false, out)?;
    let repo = open_keyed(g, out, backend(&spec)?, &pw)?;
    enable_cache_with(g, out, &repo, true);
    let files = repo.load_index()?;
    let r = chunkbak_engine::ops::check::check_with(&repo, &clock_now())?;
    if out.json {
        out.json_line(
            "check",
            json!({"index_files": files, "snapshots": r.snapshots, "trees": r.trees,
                   "packs": r.packs, "blobs": r.blobs, "unindexed_packs": r.unindexed_packs,
                   "claim_reads": r.claim_reads, "unverified_claims": r.unverified_claims,
                   "problems": r.problems}),
        );
    } else {
        for p in &r.problems {
            crate::elog!("problem: {p}");
        }
        out.line(format!(
            "checked {} snapshots, {} trees, {} blobs, {} packs from {files} index files: {} problems",
            r.snapshots,
            r.trees,
            r.blobs,
            r.packs,
            r.problems.len()
        ));
        for m in &r.unverified_claims {
            out.line(format!("note: {m}"));
        }
        if r.claim_reads > 0 {
            out.line(format!(
                "checked the claims of packs that claim the same blobs against their headers \
                 ({} ranged GETs)",
                r.claim_reads
            ));
        }
        if r.unindexed_packs > 0 {
            out.line(format!(
                "{} packs are in no index (left by interrupted backups; harmless)",
                r.unindexed_packs
            ));
        }
    }
    let subset = match (&a.read_data_subset, a.read_data) {
        (Some(s), _) => Some(
            s.parse::<chunkbak_engine::ops::check::Subset>()
                .map_err(|e| Usage(format!("--read-data-subset {e}")))?,
        ),
        (None, true) => Some(chunkbak_engine::ops::check::Subset::All),
        (None, false) => None,
    };
    let mut problems = r.problems.len();
    if a.s3_checksums {
        let before = repo.backend().requests();
        let bar = progress::Bar::new(out, !g.no_progress, "s3-checksums").unit("objects");
        let c = chunkbak_engine::ops::check::s3_checksums(&repo, &bar)?;
        bar.finish();
        let heads = match (before, repo.backend().requests()) {
            (Some(b), Some(a)) => a.head - b.head,
            _ => 0,
        };
        problems += c.problems.len();
        let nothing = c.packs > 0 && c.matched == 0;
        if nothing {
            problems += 1;
        }
        if out.json {
            out.json_line(
                "check_s3_checksums",
                json!({"packs": c.packs, "matched": c.matched, "unverified": c.unverified,
                       "head_requests": heads, "problems": c.problems}),
            );
        } else {
            for p in &c.problems {
                crate::elog!("problem: {p}");
            }
            out.line(format!(
                "compared the store's CRC32C of {} packs with the index ({heads} HEAD requests, \
                 no pack read): {} match, {} problems",
                c.packs,
                c.matched,
                c.problems.len()
            ));
            if c.unverified > 0 {
                out.line(format!(
                    "{} packs not verified: the store reports no CRC32C for them (uploaded in \
                     parts without a whole-object checksum, or by a store that keeps none)",
                    c.unverified
                ));
            }
        }
        if nothing {
            crate::elog!(
                "problem: the store reported no CRC32C for any of the {} packs: nothing was \
                 verified (this store does not keep checksums; use --read-data)",
                c.packs
            );
        }
    }
    let reads = subset.is_some();
    if let Some(subset) = subset {
        let bar = progress::Bar::new(out, !g.no_progress, "read").unit("packs");
        let d = chunkbak_engine::ops::check::read_data(&repo, subset, &bar)?;
        bar.finish();
        problems += d.problems.len();
        if out.json {
            out.json_line(
                "check_data",
                json!({"packs_read": d.packs_read, "bytes_read": d.bytes_read,
                       "blobs_verified": d.blobs_verified,
                       "archived_skipped": d.archived_skipped, "problems": d.problems}),
            );
        } else {
            for p in &d.problems {
                crate::elog!("problem: {p}");
            }
            out.line(format!(
                "read {} packs ({}), verified {} blobs: {} problems",
                d.packs_read,
                human_bytes(d.bytes_read),
                d.blobs_verified,
                d.problems.len()
            ));
            if d.archived_skipped > 0 {
                out.line(format!(
                    "{} archived packs not read (thaw them with `chunkbak warmup` first)",
                    d.archived_skipped
                ));
            }
        }
    }
    if problems > 0 && !out.json {
        crate::elog!(
            "the repository has problems: `chunkbak repair index` rebuilds the index from the \
             packs, `chunkbak repair snapshots` marks files whose data is lost"
        );
    }
    output::set_summary(format!(
        "{} snapshots, {} packs checked{}: {problems} problems",
        r.snapshots,
        r.packs,
        if reads { " (data read)" } else { "" }
    ));
    Ok(if problems == 0 { exit::OK } else { exit::ERROR })
}

fn cmd_lifecycle(g: &Global, out: &Out, c: &args::LifecycleCommand) -> anyhow::Result<i32> {
    let spec = repo_spec(g)?;
    let Some(cfg) = &spec.s3 else {
        usage!("lifecycle rules are a setting of S3 buckets: use -r s3:BUCKET/PREFIX");
    };
    let s3 = Arc::new(S3Backend::new(cfg.clone())?);
    cold::track(s3.as_ref());
    let code = match c {
        args::LifecycleCommand::Show => {
            cold::lifecycle_show(&s3, out)?;
            exit::OK
        }
        args::LifecycleCommand::Apply(a) => {
            cold::lifecycle_apply(&s3, out, &a.transition_after, &a.to)?;
            if cold::lifecycle_check(&s3, out)? {
                exit::ERROR
            } else {
                exit::OK
            }
        }
        args::LifecycleCommand::Check => {
            if cold::lifecycle_check(&s3, out)? {
                exit::ERROR
            } else {
                exit::OK
            }
        }
    };
    Ok(code)
}

// ---------------------------------------------------------------------------------------------
// cat

/// The config as JSON; the dedup secret (which lets its holder test whether a known file is
/// stored) only with `--show-secrets`.
fn config_json(c: &chunkbak_engine::format::config::Config, secrets: bool) -> serde_json::Value {
    json!({
        "version": c.version,
        "id": Id(c.repo_id).to_hex(),
        "created": jiff::Timestamp::from_second(c.created).map(|t| t.to_string()).ok(),
        "chunker": {"min": c.chunk_min, "avg": c.chunk_avg, "max": c.chunk_max,
                    "normalization": c.chunk_normalization,
                    "gear": if c.keyed_gear { "keyed table" } else { "v1 seed" }},
        "data_pack_size": c.data_pack_size,
        "tree_pack_size": c.tree_pack_size,
        "compression_level": c.compression_level,
        "data_storage_class": c.data_class().name(),
        "metadata_storage_class": c.meta_class().name(),
        "object_lock": c.object_lock.map(|l| json!({"mode": l.mode.name(), "days": l.days})),
        "dedup_secret": if secrets {
            json!(Id(c.dedup_secret).to_hex())
        } else {
            json!("<redacted: --show-secrets>")
        },
    })
}

fn cmd_cat(g: &Global, out: &Out, a: &args::CatArgs) -> anyhow::Result<i32> {
    let repo = open_repo(g, out)?;
    let need_id = || {
        a.id.clone()
            .ok_or_else(|| anyhow!("`cat {}` needs an ID", a.what))
    };
    let text = match a.what.as_str() {
        "config" => {
            let v = config_json(repo.config(), a.show_secrets);
            if out.json {
                out.json_line("config", v);
                return Ok(exit::OK);
            }
            serde_json::to_string_pretty(&v)?
        }
        "snapshot" => {
            let snaps = repo.snapshots()?;
            let sel = Selector::parse(&need_id()?);
            let mut f = filter_of(&a.filter);
            if !matches!(sel, Selector::Id(_)) {
                f.hosts = this_hosts_by_default(&snaps, &f)?;
            }
            let i = select::select(&snaps, &sel, &f, &clock_now())?;
            if out.json {
                out.json_line("snapshot", snapshot_json(&snaps[i].0, &snaps[i].1));
                return Ok(exit::OK);
            }
            format!("{} {:#?}", snaps[i].0, snaps[i].1)
        }
        "index" => {
            let id = need_id()?;
            let plain = repo.read_object(FileKind::Index, ObjectKind::Index, &id)?;
            format!(
                "{:#?}",
                chunkbak_engine::format::index::IndexFile::decode(&plain, &id)?
            )
        }
        "key" => {
            let id = need_id()?;
            let b = repo.backend().get(FileKind::Key, &id)?;
            let k = chunkbak_engine::format::key::KeyFile::decode(&b, &id)?;
            format!("key {id}: argon2id {:?}", k.params)
        }
        "tree" | "blob" => {
            repo.load_index()?;
            let id = Id::from_hex(&need_id()?).ok_or_else(|| anyhow!("not a 64-digit hex id"))?;
            if a.what == "tree" {
                format!("{:#?}", repo.load_tree(&id)?)
            } else {
                let b = repo.read_blob(&id)?;
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&b);
                return Ok(exit::OK);
            }
        }
        "pack" => {
            let id = need_id()?;
            let mut found = None;
            for fk in [FileKind::Data, FileKind::Tree] {
                if repo.backend().exists(fk, &id)? {
                    found = Some(fk);
                }
            }
            let fk = found.ok_or_else(|| anyhow!("no pack {id} under data/ or tree/"))?;
            let (bytes, recs) = repo.read_pack(fk, &id)?;
            format!(
                "{} ({} bytes, {} blobs)\n{:#?}",
                fk.path_of(&id),
                bytes.len(),
                recs.len(),
                recs
            )
        }
        other => {
            usage!("cannot cat {other:?}: use config, key, snapshot, index, tree, blob or pack")
        }
    };
    out.line(text);
    Ok(exit::OK)
}

// ---------------------------------------------------------------------------------------------
// benchmark

fn cmd_benchmark(g: &Global, out: &Out, a: &args::BenchmarkArgs) -> anyhow::Result<i32> {
    use chunkbak_engine::ops::benchmark::{self, BenchOptions, SAMPLES};
    let samples: Vec<String> = a.samples.split(',').map(|s| s.trim().to_string()).collect();
    if let Some(bad) = samples.iter().find(|s| !SAMPLES.contains(&s.as_str())) {
        usage!("--samples: unknown sample {bad:?} (random, text, zeros, mixed)");
    }
    let size = timeparse::parse_size(&a.size).context("--size")?;
    if !(1 << 20..=4 << 30).contains(&size) {
        usage!("--size {}: between 1MiB and 4GiB", a.size);
    }
    let opts = BenchOptions {
        size: size as usize,
        threads: a.threads,
        level: a.compression,
        samples,
        rounds: a.rounds,
        ..BenchOptions::default()
    };
    let show = !out.json && !out.quiet && !g.no_progress && std::io::stderr().is_terminal();
    let r = benchmark::run(&opts, &|what| {
        if show {
            eprint!("\rmeasuring {what}...                    ");
        }
    })?;
    if show {
        eprint!("\r{:60}\r", "");
    }
    let mbs = |b: f64| b / 1e6;
    if out.json {
        for f in &r.figures {
            out.json_line(
                "benchmark",
                json!({"stage": f.stage, "sample": f.sample, "threads": f.threads,
                       "bytes_per_sec": f.bytes_per_sec.round()}),
            );
        }
        for (s, e, serial) in &r.efficiency {
            out.json_line(
                "benchmark_efficiency",
                json!({"sample": s, "pipeline_over_slowest_stage": (e * 1000.0).round() / 1000.0,
                       "pipeline_over_stages_in_sequence": (serial * 1000.0).round() / 1000.0}),
            );
        }
        return Ok(exit::OK);
    }
    out.line(format!(
        "chunk pipeline on this host, MB/s of input (best of {}; {} MiB samples; zstd level {}):",
        opts.rounds,
        opts.size >> 20,
        opts.level
    ));
    out.line(format!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>14} {:>9} {:>9}",
        "sample",
        "chunk",
        "hash",
        "compress",
        "encrypt",
        "pipeline",
        format!("on {} threads", r.threads),
        "/slowest",
        "/serial"
    ));
    for (s, e, serial) in &r.efficiency {
        let get = |stage: &str| {
            r.figures
                .iter()
                .find(|f| f.stage == stage && &f.sample == s)
                .map_or(0.0, |f| mbs(f.bytes_per_sec))
        };
        out.line(format!(
            "{:<8} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>14.0} {:>8.0}% {:>8.0}%",
            s,
            get("chunk"),
            get("hash"),
            get("compress"),
            get("encrypt"),
            get("pipeline"),
            get("pipeline-all"),
            e * 100.0,
            serial * 100.0
        ));
    }
    out.line(
        "pipeline: all four stages on one core; /slowest: its speed over the slowest stage's \
         alone; /serial: over the four stages timed alone, one after the other (100% = no time \
         lost between stages). A backup of new data runs at about the all-threads figure until \
         the disk or the network is slower. Encryption is timed on compressed chunks, as the \
         pipeline runs it.",
    );
    Ok(exit::OK)
}

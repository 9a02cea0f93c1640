//! Command-line definitions (clap). Every global flag has a `CHUNKBAK_*` variable.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chunkbak",
    version,
    about = "Deduplicating, encrypted backups to a local directory or S3",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 partial (some files skipped), 10 no repository, \
                  12 wrong password, 13 archived data not readable yet (thaw requested), 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Configuration file (TOML) with named profiles. Default: $XDG_CONFIG_HOME/chunkbak/config.toml,
    /// else /etc/chunkbak/config.toml
    #[arg(long, env = "CHUNKBAK_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Profile of the configuration file to use (default: `default`, when the file has one)
    #[arg(long, env = "CHUNKBAK_PROFILE", global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Repository: a directory, or s3:BUCKET/PREFIX. Default: $XDG_DATA_HOME/chunkbak/repo
    #[arg(short = 'r', long = "repo", env = "CHUNKBAK_REPOSITORY", global = true)]
    pub repo: Option<OsString>,
    /// Endpoint of an S3-compatible store for s3: repositories (AWS_ENDPOINT_URL works too)
    #[arg(long, env = "CHUNKBAK_S3_ENDPOINT", global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// AWS region of the repository's bucket (default: the AWS chain's, AWS_REGION or the
    /// profile; a region in the repository string wins); `init` creates a missing bucket there
    #[arg(long, env = "CHUNKBAK_S3_REGION", global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// How an archived pack is recognised: auto (ask the store: a GLACIER-labelled object it
    /// serves is read directly, one it refuses is thawed), aws (the storage class decides:
    /// always thaw), never (ignore storage classes, never thaw)
    #[arg(
        long,
        env = "CHUNKBAK_S3_ARCHIVE",
        global = true,
        default_value = "auto",
        value_name = "MODE"
    )]
    pub s3_archive: chunkbak_engine::backend::s3::ArchiveMode,
    /// AWS profile whose credentials and settings reach the repository's bucket (default:
    /// the AWS chain's: AWS_PROFILE, the environment, the instance role)
    #[arg(
        long,
        env = "CHUNKBAK_S3_PROFILE",
        global = true,
        value_name = "PROFILE"
    )]
    pub s3_profile: Option<String>,
    /// How requests name the bucket: auto (path style for a store of its own, however its
    /// endpoint is given; virtual-hosted for AWS), path (HOST/BUCKET/KEY) or virtual
    /// (BUCKET.HOST/KEY)
    #[arg(
        long,
        env = "CHUNKBAK_S3_ADDRESSING",
        global = true,
        default_value = "auto",
        value_name = "STYLE"
    )]
    pub s3_addressing: chunkbak_engine::backend::s3::Addressing,
    /// How long an S3 request waits for the first byte of its answer (after sending its body).
    /// When the store answers nothing for this long (at most 10 s) while requests fail
    /// (refused, reset, timed out), the run stops with one error and a rerun goes on from
    /// there. Raise it for large packs on slow links
    #[arg(
        long,
        env = "CHUNKBAK_S3_TIMEOUT",
        global = true,
        default_value = "120s",
        value_name = "DURATION"
    )]
    pub s3_timeout: String,
    /// S3 requests in flight at once (uploads of packs; each holds one pack file in $TMPDIR)
    #[arg(
        long,
        env = "CHUNKBAK_S3_CONNECTIONS",
        global = true,
        default_value_t = 8,
        value_name = "N"
    )]
    pub s3_connections: usize,
    /// Attempts per S3 request before giving up (retries back off exponentially with jitter)
    #[arg(
        long,
        env = "CHUNKBAK_S3_MAX_ATTEMPTS",
        global = true,
        default_value_t = 10,
        value_name = "N"
    )]
    pub s3_max_attempts: u32,
    /// Local cache of a remote repository's metadata (index, snapshots, trees).
    /// Default: $XDG_CACHE_HOME/chunkbak
    #[arg(long, env = "CHUNKBAK_CACHE_DIR", global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not use or write the local cache (every read goes to the repository)
    #[arg(long, env = "CHUNKBAK_NO_CACHE", global = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub no_cache: bool,
    /// Memory budget. An index larger than a third of it (48 bytes a blob: about a million
    /// blobs at the default) is kept in a sorted file in the cache folder ($TMPDIR with
    /// --no-cache), read a block at a time, so memory does not grow with the repository. A
    /// file stored as deltas (a database dump) is read ahead by a sixteenth of it (4-32 MiB):
    /// more is faster. Directory trees are cached up to a fifth of it
    #[arg(long, env = "CHUNKBAK_MEMORY", global = true, value_name = "SIZE", default_value = "150MiB", value_parser = memory_size)]
    pub memory: u64,
    /// What this host remembers about repositories: the key file that opened each last, the
    /// ids of the snapshots it wrote (only those are taken as a backup's parent).
    /// Default: $XDG_STATE_HOME/chunkbak (~/.local/state/chunkbak)
    #[arg(long, env = "CHUNKBAK_STATE_DIR", global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How far ahead of this host's clock a snapshot may be dated; later ones are flagged as
    /// from the future and never taken as latest, by --at, as a parent or by --keep-within
    #[arg(
        long,
        env = "CHUNKBAK_CLOCK_SKEW",
        global = true,
        default_value = "1h",
        value_name = "DURATION"
    )]
    pub clock_skew: String,
    /// When the snapshot `latest`, `--at` or an id would choose cannot be read, choose the
    /// newest readable one before it instead of stopping (the damaged one is named either way)
    #[arg(long, env = "CHUNKBAK_SKIP_DAMAGED", global = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub skip_damaged: bool,
    /// Write even to a store that does not refuse overwrites (If-None-Match): then two hosts
    /// may replace each other's objects, and a compromised host's overwrite of keys/ or config
    /// is not refused by the store (docs/s3.md)
    #[arg(long, env = "CHUNKBAK_ACCEPT_OVERWRITING_STORE", global = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub accept_overwriting_store: bool,
    /// File whose first line is the repository password
    #[arg(long, env = "CHUNKBAK_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Shell command that prints the password (e.g. a secrets manager)
    #[arg(long, env = "CHUNKBAK_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Print JSON Lines ({"type": ..., "data": ...}) instead of text
    #[arg(long, env = "CHUNKBAK_JSON", global = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub json: bool,
    /// Print only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More detail (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Also append every message of the run, and its one-line summary, to FILE (with times)
    #[arg(long, env = "CHUNKBAK_LOG_FILE", global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// No progress bars
    #[arg(long, env = "CHUNKBAK_NO_PROGRESS", global = true, value_parser = clap::builder::FalseyValueParser::new())]
    pub no_progress: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up files, directories or standard input
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(FilterArgs),
    /// List the files of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot (or part of it) into a directory
    Restore(RestoreArgs),
    /// Write one file of a snapshot to standard output (e.g. a database dump into psql), or a
    /// directory as a tar stream (--archive tar)
    Dump(DumpArgs),
    /// Find which snapshots hold paths matching a pattern, with sizes and times
    Find(FindArgs),
    /// Show what changed between two snapshots: added, removed and modified paths
    Diff(DiffArgs),
    /// Browse the snapshots as a read-only file system (FUSE) until Ctrl-C or umount
    Mount(MountArgs),
    /// Thaw the archived (Glacier) packs a restore will need, ahead of the restore
    Warmup(WarmupArgs),
    /// Check the repository: structure from metadata; with --read-data, pack contents too
    Check(CheckArgs),
    /// Remove snapshots by a retention policy (the data goes with `prune`)
    Forget(ForgetArgs),
    /// Delete data no snapshot uses; safe while backups run (two-phase deletion)
    Prune(PruneArgs),
    /// Rebuild the index from the packs, or rewrite snapshots that reference lost data
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Show, apply or check the S3 bucket lifecycle rule that archives data packs
    #[command(subcommand)]
    Lifecycle(LifecycleCommand),
    /// S3 Object Lock: extend the retention of everything the snapshots still reference
    #[command(subcommand)]
    Lock(LockCommand),
    /// Copy snapshots to another repository, uploading only the data it lacks
    Copy(CopyArgs),
    /// Bring AWS configuration back to what a snapshot holds (a plan first: route53 --dry-run,
    /// elb without --apply)
    #[command(subcommand, name = "aws-apply")]
    AwsApply(AwsApplyCommand),
    /// Manage the passwords (key files) that open the repository
    #[command(subcommand)]
    Key(KeyCommand),
    /// Measure the chunk pipeline (chunk, hash, compress, encrypt) on this host; no repository
    Benchmark(BenchmarkArgs),
    /// Print a decrypted repository object (for debugging)
    Cat(CatArgs),
    /// Repository size, dedup and compression ratios, bytes per storage class and the monthly
    /// bill at a price table (of all snapshots, or of one)
    Stats(StatsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), made from the same definitions as --help:
    /// `chunkbak man | man -l -`; with --dir, write chunkbak.1 and a chunkbak-COMMAND.1 per
    /// command there (`chunkbak man --dir /usr/local/share/man/man1`)
    Man {
        /// Folder to write the pages into (one per command) instead of one page to stdout
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// One snapshot (id prefix or 'latest'; default: every snapshot the filters select)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: Option<std::ffi::OsString>,
    /// The newest snapshot taken at or before TIME
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Storage price in USD per GiB-month of a class, overriding the built-in AWS us-east-1
    /// list price (e.g. GLACIER=0.0036; repeatable)
    #[arg(long = "price", value_name = "CLASS=USD")]
    pub prices: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct BenchmarkArgs {
    /// Bytes of each sample (e.g. 64MiB)
    #[arg(long, default_value = "64MiB", value_name = "SIZE")]
    pub size: String,
    /// Threads for the all-cores figure (0: one per core)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// zstd level to measure
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// Samples: random, text, zeros, mixed (comma-separated)
    #[arg(long, default_value = "random,text", value_name = "LIST")]
    pub samples: String,
    /// Each figure is the best of this many runs
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rounds: usize,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Target repository: a directory, or s3:BUCKET/PREFIX (same --s3-endpoint as the source)
    #[arg(long, env = "CHUNKBAK_TO_REPOSITORY", value_name = "REPO")]
    pub to: OsString,
    /// File whose first line is the target's password (or CHUNKBAK_TO_PASSWORD)
    #[arg(long, env = "CHUNKBAK_TO_PASSWORD_FILE", value_name = "FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Shell command that prints the target's password
    #[arg(long, env = "CHUNKBAK_TO_PASSWORD_COMMAND", value_name = "COMMAND")]
    pub to_password_command: Option<String>,
    /// AWS region of the target bucket (default: the region of the AWS configuration)
    #[arg(long, env = "CHUNKBAK_TO_REGION", value_name = "REGION")]
    pub to_region: Option<String>,
    /// AWS profile (credentials, config) that reaches the target bucket, when it is not the
    /// source's (another account or provider; its endpoint goes in the repository string)
    #[arg(long, env = "CHUNKBAK_TO_S3_PROFILE", value_name = "PROFILE")]
    pub to_s3_profile: Option<String>,
    /// Snapshots to copy: id prefixes or 'latest' (default: every snapshot the filters select)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Show what would be copied and what it would transfer, and stop
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Archived (Glacier) source packs the copy reads are thawed first, and waited for
    #[command(flatten)]
    pub thaw: ThawArgs,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key files (one per password); '*' marks the one that opened the repository
    List,
    /// Add a password: a new key file for the same repository key
    Add(NewPasswordArgs),
    /// Remove a key file (never the one that opened the repository)
    Remove {
        /// Key file id (or a unique prefix)
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Change the password in use: add a key file for the new one, then remove the old one
    Passwd(NewPasswordArgs),
}

#[derive(Args, Debug)]
pub struct NewPasswordArgs {
    /// File whose first line is the new password
    #[arg(long, value_name = "FILE", conflicts_with = "new_password_command")]
    pub new_password_file: Option<PathBuf>,
    /// Shell command that prints the new password
    #[arg(long, value_name = "COMMAND")]
    pub new_password_command: Option<String>,
    /// argon2id memory cost in KiB for the new key file
    #[arg(long, default_value_t = 64 * 1024)]
    pub kdf_memory_kib: u32,
    /// argon2id iterations for the new key file
    #[arg(long, default_value_t = 3)]
    pub kdf_iterations: u32,
    /// Allow argon2id parameters below OWASP's minimum (19 MiB, 2 iterations)
    #[arg(long, env = "CHUNKBAK_ALLOW_WEAK_KDF", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_weak_kdf: bool,
}

/// How archived packs are thawed (restore, warmup).
#[derive(Args, Debug, Clone)]
pub struct ThawArgs {
    /// Retrieval tier for archived packs: bulk (cheapest, slowest), standard, expedited
    /// (GLACIER only)
    #[arg(long, value_enum, default_value_t = TierArg::Standard)]
    pub tier: TierArg,
    /// Days the thawed copies stay readable (billed as STANDARD meanwhile)
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub restore_days: u32,
    /// How often to check whether thawing packs are readable
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub poll_interval: String,
    /// Give up waiting after this long (default: wait as long as it takes)
    #[arg(long, value_name = "DURATION")]
    pub max_wait: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierArg {
    Bulk,
    Standard,
    Expedited,
}

#[derive(Args, Debug)]
pub struct WarmupArgs {
    /// Snapshot: id prefix or 'latest', optionally ID:PATH (default: latest, or --at)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: Option<OsString>,
    /// Only the packs of these paths of the snapshot (default: all)
    #[arg(value_name = "PATH")]
    pub include_paths: Vec<OsString>,
    /// Use the newest snapshot taken at or before TIME
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Wait until every needed pack is readable (default: request and exit; 13 while thawing)
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub thaw: ThawArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also download every pack and verify every blob (decrypt, decompress, re-hash)
    #[arg(long)]
    pub read_data: bool,
    /// Verify only part of the packs: n/m (1/10: the first of ten parts), a percentage (5%,
    /// random) or a size (2GiB, random)
    #[arg(long, value_name = "SUBSET", conflicts_with = "read_data")]
    pub read_data_subset: Option<String>,
    /// Also compare the CRC32C the S3 store keeps for every pack with the one recorded at
    /// upload (one HEAD a pack, no pack bytes read): finds packs replaced in the bucket
    #[arg(long)]
    pub s3_checksums: bool,
}

/// A count for a keep rule: a number, or `unlimited`.
fn keep_count(s: &str) -> Result<i64, String> {
    if s == "unlimited" {
        return Ok(-1);
    }
    match s.parse::<i64>() {
        Ok(n) if n >= -1 => Ok(n),
        _ => Err(format!("{s:?}: a count, or `unlimited`")),
    }
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove (ids or prefixes), besides those the policy removes
    #[arg(value_name = "SNAPSHOT")]
    pub ids: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N", value_parser = keep_count)]
    pub keep_last: Option<i64>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N", value_parser = keep_count)]
    pub keep_hourly: Option<i64>,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(long, value_name = "N", value_parser = keep_count)]
    pub keep_daily: Option<i64>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N", value_parser = keep_count)]
    pub keep_weekly: Option<i64>,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, value_name = "N", value_parser = keep_count)]
    pub keep_monthly: Option<i64>,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, value_name = "N", value_parser = keep_count)]
    pub keep_yearly: Option<i64>,
    /// Keep every snapshot newer than the group's latest minus DURATION (e.g. 90d)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep snapshots carrying these tags (comma-separated: all of them; repeatable)
    #[arg(long, value_name = "TAGS")]
    pub keep_tag: Vec<String>,
    /// Apply the policy to each group of snapshots with the same ... (host, paths, tags;
    /// empty: all snapshots in one group)
    #[arg(long, default_value = "host,paths", value_name = "FIELDS")]
    pub group_by: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print what would be kept and removed, and why; change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Run `prune` afterwards
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_opts: PruneOpts,
}

#[derive(Args, Debug, Clone)]
pub struct PruneOpts {
    /// Time from marking an unused pack (at once, by the first prune that finds it unused) to
    /// deleting it (by the first prune after that); at least twice the time any backup takes
    /// from its last look at the index to its snapshot
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub grace: String,
    /// Delete unused packs in this run, without a grace period: only when no backup, copy or
    /// other prune writes to the repository meanwhile (a backup running now may commit a
    /// snapshot whose data this deletes); --grace does not apply. Never taken from a profile
    #[arg(long)]
    pub now: bool,
    /// Unused space allowed to stay in partly used packs: a percentage of all pack bytes, or
    /// a size
    #[arg(long, default_value = "5%", value_name = "LIMIT")]
    pub max_unused: String,
    /// Repack at most this many bytes of packs in one run (e.g. 10GiB)
    #[arg(long, value_name = "SIZE")]
    pub max_repack: Option<String>,
    /// Delete unused archived packs before their storage class's minimum duration (S3 bills
    /// the rest of it)
    #[arg(long)]
    pub ignore_min_duration: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub opts: PruneOpts,
    /// Print the plan and its cost; change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the packs in the repository (salvaging damaged packs)
    Index {
        /// Download and verify every pack, not only those the index gets wrong
        #[arg(long)]
        read_all_packs: bool,
    },
    /// Rewrite snapshots that reference lost data: damaged files keep their readable start
    /// and are renamed NAME.damaged
    Snapshots {
        /// Print what would change; change nothing
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LockCommand {
    /// Renew, to now + the repository's retention, the lock of every object the snapshots
    /// reference (config, keys, snapshots, index, used packs) whose lock ends within half of
    /// it; unreferenced packs run out. `prune` does the same after it has deleted.
    Extend {
        /// Retain for this many days from now instead of the repository's retention
        #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AwsApplyCommand {
    /// UPSERT a hosted zone's record sets to those of a snapshot (records the snapshot does
    /// not hold, and the zone's SOA and apex NS, are left as they are)
    Route53(Route53ApplyArgs),
    /// Re-create classic ELBs and ALB/NLB/GWLB (target groups, load balancers, listeners,
    /// rules) from a snapshot's documents, here or in another region: prints the plan, and
    /// creates what is missing only with --apply
    Elb(ElbApplyArgs),
}

#[derive(Args, Debug)]
pub struct ElbApplyArgs {
    /// The snapshot and its region's folder (default: latest, the one region it holds;
    /// else latest:/aws/elbv2/REGION)
    #[arg(long, value_name = "SNAPSHOT[:PATH]", default_value = "latest")]
    pub from: std::ffi::OsString,
    /// The region to create them in (default: the AWS configuration's)
    #[arg(long, value_name = "REGION")]
    pub aws_region: Option<String>,
    /// A JSON object {"OLD_ID": "NEW_ID", ...} giving the target region's subnets, security
    /// groups, VPCs, certificates (and zones of classic ELBs); required in another region
    #[arg(long, value_name = "FILE")]
    pub map: Option<std::path::PathBuf>,
    /// Create what the plan shows is missing (without it, nothing changes)
    #[arg(long)]
    pub apply: bool,
}

#[derive(Args, Debug)]
pub struct Route53ApplyArgs {
    /// The hosted zone to change (its id, Z…)
    #[arg(long, value_name = "ZONE_ID")]
    pub zone: String,
    /// The snapshot and its zone folder (default: latest, /aws/route53/ZONE_ID)
    #[arg(long, value_name = "SNAPSHOT[:PATH]", default_value = "latest")]
    pub from: std::ffi::OsString,
    /// Print the plan; change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// AWS region (Route53 is global; signing uses us-east-1 by default)
    #[arg(long, value_name = "REGION")]
    pub aws_region: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum LifecycleCommand {
    /// Print the bucket's lifecycle rules, marking this repository's
    Show,
    /// Add (or update) this repository's rules, keeping the bucket's other rules
    Apply(LifecycleApplyArgs),
    /// Warn about rules that would archive metadata or delete backup data
    Check,
}

#[derive(Args, Debug)]
pub struct LifecycleApplyArgs {
    /// Age at which data packs move to the archive class (e.g. 30d)
    #[arg(long, value_name = "DURATION")]
    pub transition_after: String,
    /// Archive class: GLACIER or DEEP_ARCHIVE (also STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR)
    #[arg(long, value_name = "CLASS")]
    pub to: String,
}

#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots of this host (repeatable)
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots containing this path (repeatable: all must match)
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Only snapshots with this tag (repeatable: any may match)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Minimum chunk size in bytes
    #[arg(long, default_value_t = 256 * 1024, conflicts_with = "copy_chunker_params")]
    pub chunk_min: u32,
    /// Average chunk size in bytes
    #[arg(long, default_value_t = 1024 * 1024, conflicts_with = "copy_chunker_params")]
    pub chunk_avg: u32,
    /// Maximum chunk size in bytes
    #[arg(long, default_value_t = 4 * 1024 * 1024, conflicts_with = "copy_chunker_params")]
    pub chunk_max: u32,
    /// Target size of data packs in bytes
    #[arg(long, default_value_t = 32 << 20)]
    pub data_pack_size: u32,
    /// Target size of tree (metadata) packs in bytes
    #[arg(long, default_value_t = 4 << 20)]
    pub tree_pack_size: u32,
    /// zstd level for stored blobs (0 = no compression)
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// S3 storage class of data packs: STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR,
    /// GLACIER or DEEP_ARCHIVE (archive classes need a thaw before a restore)
    #[arg(long, default_value = "STANDARD", value_name = "CLASS")]
    pub data_storage_class: String,
    /// S3 storage class of tree packs, index files and snapshots (a class readable at once:
    /// STANDARD, STANDARD_IA, INTELLIGENT_TIERING or GLACIER_IR)
    #[arg(long, default_value = "STANDARD", value_name = "CLASS")]
    pub metadata_storage_class: String,
    /// Lock every object written (config, keys, snapshots, index, packs) with S3 Object Lock
    /// for this many days from its upload; prune and `lock extend` renew what the snapshots
    /// still reference. Needs a bucket with Object Lock enabled (created so if missing)
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub object_lock_days: Option<u32>,
    /// Object Lock mode: governance (users granted s3:BypassGovernanceRetention may still
    /// delete) or compliance (nobody can delete before the date, the account's root included)
    #[arg(
        long,
        value_name = "MODE",
        default_value = "governance",
        requires = "object_lock_days"
    )]
    pub object_lock_mode: String,
    /// argon2id memory cost in KiB for the key file
    #[arg(long, default_value_t = 64 * 1024)]
    pub kdf_memory_kib: u32,
    /// argon2id iterations for the key file
    #[arg(long, default_value_t = 3)]
    pub kdf_iterations: u32,
    /// Allow argon2id parameters below OWASP's minimum (19 MiB, 2 iterations): tests and
    /// throwaway repositories
    #[arg(long, env = "CHUNKBAK_ALLOW_WEAK_KDF", value_parser = clap::builder::FalseyValueParser::new())]
    pub allow_weak_kdf: bool,
    /// Use the chunker parameters and dedup secret of the repository given with --from, so
    /// the same data becomes the same blobs in both and `copy` between them moves only what
    /// the target lacks
    #[arg(long, requires = "from")]
    pub copy_chunker_params: bool,
    /// The repository whose chunker parameters to use (a directory or s3:BUCKET/PREFIX)
    #[arg(
        long,
        env = "CHUNKBAK_FROM_REPOSITORY",
        value_name = "REPO",
        requires = "copy_chunker_params"
    )]
    pub from: Option<OsString>,
    /// File whose first line is the password of --from (or CHUNKBAK_FROM_PASSWORD)
    #[arg(long, env = "CHUNKBAK_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Shell command that prints the password of --from
    #[arg(long, env = "CHUNKBAK_FROM_PASSWORD_COMMAND", value_name = "COMMAND")]
    pub from_password_command: Option<String>,
    /// AWS region of the --from bucket
    #[arg(long, env = "CHUNKBAK_FROM_REGION", value_name = "REGION")]
    pub from_region: Option<String>,
    /// AWS profile (credentials, config) that reaches the --from bucket
    #[arg(long, env = "CHUNKBAK_FROM_S3_PROFILE", value_name = "PROFILE")]
    pub from_s3_profile: Option<String>,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up (with --stdin-from-command: the command and its arguments)
    #[arg(value_name = "PATH")]
    pub paths: Vec<OsString>,
    /// Host name to record (default: this machine's)
    #[arg(long)]
    pub host: Option<String>,
    /// Tag for the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Time to record instead of now (same forms as --at)
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Exclude paths matching a glob (repeatable; without '/' it matches a name at any depth)
    #[arg(short = 'e', long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Stay on the file system of each source path
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Compare with this snapshot to skip unchanged files (default: the latest with the same
    /// host and paths)
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent snapshot
    #[arg(long)]
    pub force: bool,
    /// Back up standard input as one file
    #[arg(long, conflicts_with = "paths")]
    pub stdin: bool,
    /// Name of the file holding standard input in the snapshot
    #[arg(long, default_value = "stdin", value_name = "NAME")]
    pub stdin_filename: String,
    /// Back up the standard output of the command given after `--` (e.g. `-- pg_dump mydb`);
    /// no snapshot is written if it exits non-zero
    #[arg(long, conflicts_with = "stdin")]
    pub stdin_from_command: bool,
    /// Worker threads (default: one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Back up this EBS snapshot (snap-…) through the EBS direct APIs, as one image file
    /// /ebs/VOLUME/SNAPSHOT.img (with SNAPSHOT.json beside it); needs --ebs-volume
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["paths", "stdin", "stdin_from_command"], requires = "ebs_volume", help_heading = "AWS sources")]
    pub ebs_snapshot: Option<String>,
    /// The volume the EBS snapshot is of (vol-…, or any name): the folder under /ebs, and the
    /// snapshots whose image the next backup of it compares with
    #[arg(
        long,
        value_name = "NAME",
        requires = "ebs_snapshot",
        help_heading = "AWS sources"
    )]
    pub ebs_volume: Option<String>,
    /// Fetch only the blocks that changed since this EBS snapshot (default: the one the
    /// previous backup of the volume read)
    #[arg(
        long,
        value_name = "SNAPSHOT",
        requires = "ebs_snapshot",
        help_heading = "AWS sources"
    )]
    pub ebs_parent_snapshot: Option<String>,
    /// AWS region of the EBS snapshot (default: the AWS configuration's)
    #[arg(long, value_name = "REGION", help_heading = "AWS sources")]
    pub aws_region: Option<String>,
    /// Back up AWS configuration as documents under /aws: route53 (every hosted zone and its
    /// record sets, and a BIND zone file each), elb (classic load balancers), elbv2 (ALB/NLB
    /// with listeners, rules and target groups) of --aws-region
    #[arg(long, value_name = "SERVICES", value_delimiter = ',', conflicts_with_all = ["paths", "stdin", "stdin_from_command", "ebs_snapshot"], help_heading = "AWS sources")]
    pub aws_config: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot: id prefix or 'latest', optionally ID:PATH (default: latest, or --at)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: Option<OsString>,
    /// The file inside the snapshot (absolute, as `chunkbak ls` shows it), unless given as ID:PATH
    #[arg(value_name = "PATH")]
    pub path: Option<OsString>,
    /// Use the newest snapshot taken at or before TIME
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Write PATH (a directory and everything below it, or the whole snapshot) as an archive
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub archive: Option<ArchiveFormat>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveFormat {
    /// GNU tar, with owners, times, links, devices and extended attributes (PAX headers)
    Tar,
}

#[derive(Args, Debug)]
pub struct FindArgs {
    /// A name ('*.sql', 'my.cnf') or a path pattern ('/srv/*/db.sql'); '*' stays within a
    /// name, '**' crosses folders (repeatable: any may match)
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,
    /// Only the newest snapshot taken at or before TIME
    #[arg(long, value_name = "TIME", conflicts_with = "snapshots")]
    pub at: Option<String>,
    /// Only this snapshot (id prefix or 'latest'; repeatable)
    #[arg(long = "snapshot", short = 's', value_name = "ID")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An empty folder to mount on
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Only the newest snapshot taken at or before TIME
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The snapshots to compare, older first (id prefix or 'latest'); --at TIME stands for one
    #[arg(value_name = "SNAPSHOT", num_args = 0..=2)]
    pub snapshots: Vec<String>,
    /// The newest snapshot taken at or before TIME (give twice for both; once with one SNAPSHOT
    /// or none, to compare it with that one or with the latest)
    #[arg(long, value_name = "TIME")]
    pub at: Vec<String>,
    /// Also list entries whose metadata alone changed (mode, owner, times, xattrs)
    #[arg(long)]
    pub metadata: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot: id prefix or 'latest', optionally ID:PATH (default: latest, or --at)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: Option<OsString>,
    /// Only list this path (and below) inside the snapshot
    #[arg(value_name = "PATH")]
    pub path: Option<OsString>,
    /// Use the newest snapshot taken at or before TIME
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Long listing: mode, owner, size, time
    #[arg(short, long)]
    pub long: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot: id prefix or 'latest', optionally ID:PATH (default: latest, or --at)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: Option<OsString>,
    /// Use the newest snapshot taken at or before TIME (RFC 3339, 'YYYY-MM-DD HH:MM', '3 days ago')
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Directory to restore into
    #[arg(
        short,
        long,
        value_name = "DIR",
        required_unless_present = "to_ebs_snapshot"
    )]
    pub target: Option<PathBuf>,
    /// Write the image file SNAPSHOT:PATH names as a new EBS snapshot (EBS direct APIs;
    /// blocks of zeros are not written) instead of restoring into a directory
    #[arg(long, conflicts_with = "target", help_heading = "AWS sources")]
    pub to_ebs_snapshot: bool,
    /// AWS region of the EBS snapshot written (default: the AWS configuration's)
    #[arg(
        long,
        value_name = "REGION",
        requires = "to_ebs_snapshot",
        help_heading = "AWS sources"
    )]
    pub aws_region: Option<String>,
    /// Encrypt the EBS snapshot written with this KMS key (ARN, id or alias; EBS encryption)
    #[arg(
        long,
        value_name = "KEY",
        requires = "to_ebs_snapshot",
        help_heading = "AWS sources"
    )]
    pub ebs_kms_key: Option<String>,
    /// Encrypt the EBS snapshot written with the account's default EBS key
    #[arg(long, requires = "to_ebs_snapshot", help_heading = "AWS sources")]
    pub ebs_encrypted: bool,
    /// A tag of the EBS snapshot written (repeatable)
    #[arg(
        long,
        value_name = "KEY=VALUE",
        requires = "to_ebs_snapshot",
        value_parser = key_value,
        help_heading = "AWS sources"
    )]
    pub ebs_tag: Vec<(String, String)>,
    /// Restore only this path of the snapshot and what is below it: an absolute path, or a
    /// pattern ('*.sql', '/srv/*/conf') (repeatable)
    #[arg(short = 'i', long = "include", value_name = "PATH")]
    pub includes: Vec<OsString>,
    /// Leave out entries matching PATTERN and what is below them: a pattern without '/' matches
    /// a name at any depth ('*.log'), one starting with '/' the whole path (repeatable)
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    pub excludes: Vec<String>,
    /// Files already in the target: bring them to the snapshot's content, keeping the chunks
    /// that are already right (always); leave them when size and time match (if-changed); or
    /// leave them as they are (never)
    #[arg(long, value_enum, default_value_t = OverwriteArg::Always)]
    pub overwrite: OverwriteArg,
    /// Remove from the target what the snapshot does not hold, within the paths the snapshot
    /// was taken of (or :PATH) and never in the folders above them; entries matching
    /// --exclude are kept. The target then matches the snapshot exactly there
    #[arg(long)]
    pub delete: bool,
    /// Change nothing: list what would be created (new), updated and deleted
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// After writing each file, read it back from the disk and compare it with the chunk ids
    /// (every chunk is always verified before it is written)
    #[arg(long)]
    pub verify: bool,
    /// Restore no extended attributes (ACLs, file capabilities, SELinux labels included)
    #[arg(long)]
    pub no_xattrs: bool,
    /// For a snapshot you do not trust, restored as root: no device nodes or FIFOs, no
    /// set-user-id, set-group-id or sticky bits, no file capabilities
    #[arg(long)]
    pub no_special: bool,
    /// Set owners by numeric uid/gid instead of by user and group name
    #[arg(long)]
    pub numeric_owner: bool,
    /// Worker threads (default: one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print what the restore needs (packs, bytes, archived packs, thaw time and cost), then stop
    #[arg(long)]
    pub plan: bool,
    /// Request thaws of archived packs and exit (13) instead of waiting for them
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub thaw: ThawArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OverwriteArg {
    Always,
    IfChanged,
    Never,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// config | key | snapshot | index | tree | blob | pack
    #[arg(value_name = "WHAT")]
    pub what: String,
    /// Id (or prefix, for snapshots) of the object
    #[arg(value_name = "ID")]
    pub id: Option<String>,
    /// `cat config`: print the dedup secret too (anyone holding it can test whether a known
    /// file is stored)
    #[arg(long)]
    pub show_secrets: bool,
    /// For `cat snapshot latest`: which snapshots `latest` is the newest of
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// A memory size: 150MiB, 1GiB, 2000000 (bytes); at least 64 KiB.
fn memory_size(s: &str) -> Result<u64, String> {
    let n = chunkbak_engine::timeparse::parse_size(s).map_err(|e| e.to_string())?;
    if n < 64 << 10 {
        return Err(format!("{s}: at least 64KiB"));
    }
    Ok(n)
}

/// KEY=VALUE (the value may hold '=' and be empty; the key may not).
fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: give KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

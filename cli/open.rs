//! Opening a repository: where it is (`-r`, profiles, the default), its password, its
//! cache and local state, the store's probe and append-only check; and `init`.

use anyhow::{anyhow, bail, Context};
use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::backend::s3::{S3Backend, S3Config};
use chunkbak_engine::backend::{Backend, StorageClass};
use chunkbak_engine::format::key::KdfParams;
use chunkbak_engine::repo::InitOptions;
use chunkbak_engine::state::LocalState;
use chunkbak_engine::{chunker::ChunkerParams, timeparse, Id, Repository};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::args::{self, Global};
use crate::cold;
use crate::output::Out;
use crate::{exit, usage};

pub struct RepoSpec {
    /// A local directory (None for S3).
    pub location: PathBuf,
    pub s3: Option<S3Config>,
    /// No repository was configured: the documented default is used.
    pub default: bool,
}

impl RepoSpec {
    pub fn display(&self) -> String {
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

pub fn repo_spec(g: &Global) -> anyhow::Result<RepoSpec> {
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

pub fn backend(spec: &RepoSpec) -> anyhow::Result<Arc<dyn Backend>> {
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
pub fn password(g: &Global, spec: &RepoSpec, create: bool, out: &Out) -> anyhow::Result<Vec<u8>> {
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
pub fn enable_cache(g: &Global, out: &Out, repo: &Repository) {
    enable_cache_with(g, out, repo, false)
}

pub fn enable_cache_with(g: &Global, out: &Out, repo: &Repository, trees_only: bool) {
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
fn probe_store(
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

pub fn open_repo(g: &Global, out: &Out) -> anyhow::Result<Arc<Repository>> {
    let spec = repo_spec(g)?;
    let pw = password(g, &spec, false, out)?;
    let repo = open_keyed(g, out, backend(&spec)?, &pw)?;
    enable_cache(g, out, &repo);
    Ok(Arc::new(repo))
}

// ---------------------------------------------------------------------------------------------
// init

pub fn init_repo(
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

pub fn cmd_init(g: &Global, out: &Out, a: &args::InitArgs) -> anyhow::Result<i32> {
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

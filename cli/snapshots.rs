//! Choosing snapshots (by id, `latest`, `--at`, host and filters) and showing them:
//! `snapshots`, `ls`, `dump`.

use anyhow::{anyhow, bail};
use chunkbak_engine::backend::FileKind;
use chunkbak_engine::format::snapshot::Snapshot;
use chunkbak_engine::format::tree::{Node, NodeKind};
use chunkbak_engine::ops::select::{self, timestamp_of, Filter, Selector};
use chunkbak_engine::{timeparse, Id, Repository};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;

use crate::args::{self, FilterArgs, Global};
use crate::config;
use crate::open::{open_repo, warn};
use crate::output::{human_bytes, path_json, Out};
use crate::{clock_now, exit, usage};

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

pub fn set_this_host(g: &Global) {
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

pub fn filter_of(f: &FilterArgs) -> Filter {
    Filter {
        hosts: f.hosts.clone(),
        paths: f.paths.clone(),
        tags: f.tags.clone(),
    }
}

pub fn local_time(s: &Snapshot) -> String {
    timestamp_of(s.time)
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub fn snapshot_json(id: &Id, s: &Snapshot) -> Value {
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
pub type Readable = (Vec<(Id, Snapshot)>, Vec<String>);

/// The snapshots that can be read, and the names (under `snapshots/`) of those that cannot.
pub fn readable_snapshots(repo: &Repository, out: &Out) -> anyhow::Result<Readable> {
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

pub fn cmd_snapshots(g: &Global, out: &Out, f: &FilterArgs) -> anyhow::Result<i32> {
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
pub fn choose(
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
pub fn choose_for(
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

pub fn kind_name(k: NodeKind) -> &'static str {
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

pub fn cmd_dump(g: &Global, out: &Out, a: &args::DumpArgs) -> anyhow::Result<i32> {
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

pub fn cmd_ls(g: &Global, out: &Out, a: &args::LsArgs) -> anyhow::Result<i32> {
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

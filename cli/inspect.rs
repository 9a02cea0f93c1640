//! `find` and `diff`: looking into snapshots during recovery.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use chunkbak_engine::format::tree::{Node, NodeKind};
use chunkbak_engine::ops::diff::{self, Diff};
use chunkbak_engine::ops::find::Finder;
use chunkbak_engine::ops::pattern::pattern_set;
use chunkbak_engine::ops::select::timestamp_of;
use chunkbak_engine::{Id, Repository};

use crate::args::{DiffArgs, FindArgs, Global, MountArgs};
use crate::exit;
use crate::open::open_repo;
use crate::output::{human_bytes, path_json, Out};
use crate::snapshots::{choose, filter_of, kind_name, local_time, readable_snapshots};

fn mtime_local(n: &Node) -> String {
    timestamp_of(n.mtime)
        .to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub fn cmd_find(g: &Global, out: &Out, a: &FindArgs) -> anyhow::Result<i32> {
    let set = pattern_set(&a.patterns, "find")?;
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let snaps = if let Some(at) = &a.at {
        let (id, s, _) = choose(&repo, None, Some(at), &a.filter, out)?;
        vec![(id, s)]
    } else if !a.snapshots.is_empty() {
        let mut v = Vec::new();
        for s in &a.snapshots {
            let (id, s, _) = choose(&repo, Some(s.as_ref()), None, &a.filter, out)?;
            v.push((id, s));
        }
        v
    } else {
        let filter = filter_of(&a.filter);
        let (all, _) = readable_snapshots(&repo, out)?;
        all.into_iter().filter(|(_, s)| filter.matches(s)).collect()
    };
    let mut finder = Finder::new(&repo, set);
    // Path → (snapshot, entry), snapshots oldest first: how each path looked over time.
    let mut by_path: BTreeMap<Vec<u8>, Vec<(usize, Node)>> = BTreeMap::new();
    for (i, (_, s)) in snaps.iter().enumerate() {
        for (path, n) in finder.search(s.tree)? {
            by_path.entry(path).or_default().push((i, n));
        }
    }
    let mut hits = 0usize;
    for (path, seen) in &by_path {
        if !out.json {
            out.raw_line(path);
        }
        for (i, n) in seen {
            hits += 1;
            let (id, s) = &snaps[*i];
            if out.json {
                let mut d = serde_json::Map::new();
                d.insert("snapshot_id".into(), id.to_hex().into());
                d.insert(
                    "snapshot_time".into(),
                    timestamp_of(s.time).to_string().into(),
                );
                d.insert("host".into(), s.host.clone().into());
                path_json(&mut d, "path", path);
                d.insert("type".into(), kind_name(n.kind).into());
                d.insert("size".into(), n.size.into());
                d.insert("mtime".into(), timestamp_of(n.mtime).to_string().into());
                out.json_line("match", Value::Object(d));
            } else {
                let size = if n.kind == NodeKind::File {
                    human_bytes(n.size)
                } else {
                    kind_name(n.kind).to_string()
                };
                out.line(format!(
                    "  {}  {}  {:<16} {:>11}  modified {}",
                    id.short(),
                    local_time(s),
                    s.host,
                    size,
                    mtime_local(n)
                ));
            }
        }
    }
    if !out.json && !out.quiet {
        crate::elog!(
            "{} matched, {} in all, {} searched",
            crate::output::count(by_path.len() as u64, "path"),
            crate::output::count(hits as u64, "time"),
            crate::output::count(snaps.len() as u64, "snapshot")
        );
    }
    Ok(exit::OK)
}

/// The tree of `ID[:PATH]` in a snapshot (PATH must be a directory).
fn tree_at(
    repo: &Repository,
    s: &chunkbak_engine::format::snapshot::Snapshot,
    sub: &[u8],
) -> anyhow::Result<chunkbak_engine::id::BlobId> {
    match chunkbak_engine::ops::ls::find(repo, s.tree, sub)? {
        None => Ok(s.tree),
        Some(n) => match (n.kind, n.subtree) {
            (NodeKind::Dir, Some(t)) => Ok(t),
            _ => crate::usage!(
                "{} is not a directory: diff compares snapshots or folders in them",
                String::from_utf8_lossy(sub)
            ),
        },
    }
}

pub fn cmd_diff(g: &Global, out: &Out, a: &DiffArgs) -> anyhow::Result<i32> {
    if a.snapshots.len() + a.at.len() > 2 {
        crate::usage!("diff compares two snapshots: give two of SNAPSHOT and --at TIME");
    }
    if a.snapshots.len() + a.at.len() == 0 {
        crate::usage!("give the snapshots to compare: diff OLD NEW, diff --at TIME [NEW], or diff OLD (with the latest)");
    }
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let mut chosen: Vec<(Id, chunkbak_engine::format::snapshot::Snapshot, Vec<u8>)> = Vec::new();
    for t in &a.at {
        chosen.push(choose(&repo, None, Some(t), &a.filter, out)?);
    }
    for s in &a.snapshots {
        chosen.push(choose(&repo, Some(s.as_ref()), None, &a.filter, out)?);
    }
    if chosen.len() == 1 {
        // The latest of OLD's own host (not this host's, on a repository several share).
        let mut f = a.filter.clone();
        if f.hosts.is_empty() {
            f.hosts.push(chosen[0].1.host.clone());
        }
        chosen.push(choose(&repo, None, None, &f, out)?);
    }
    let (ta, tb) = (
        tree_at(&repo, &chosen[0].1, &chosen[0].2)?,
        tree_at(&repo, &chosen[1].1, &chosen[1].2)?,
    );
    // Paths are shown as in the snapshots (below the compared folders when ID:PATH was given).
    let shown = |p: &[u8]| -> Vec<u8> {
        let mut v = chosen[1].2.clone();
        while v.last() == Some(&b'/') {
            v.pop();
        }
        v.extend_from_slice(p);
        v
    };
    let stats = diff::diff(&repo, ta, tb, a.metadata, &mut |p, d, old, new| {
        let path = shown(p);
        let n = new.or(old).expect("one side");
        if out.json {
            let mut m = serde_json::Map::new();
            m.insert("change".into(), d.code().to_string().into());
            m.insert(
                "kind".into(),
                match d {
                    Diff::Added => "added",
                    Diff::Removed => "removed",
                    Diff::Modified => "modified",
                    Diff::TypeChanged => "type_changed",
                    Diff::Metadata => "metadata",
                }
                .into(),
            );
            path_json(&mut m, "path", &path);
            m.insert("type".into(), kind_name(n.kind).into());
            m.insert(
                "old_size".into(),
                json!(old.filter(|o| o.kind == NodeKind::File).map(|o| o.size)),
            );
            m.insert(
                "new_size".into(),
                json!(new.filter(|o| o.kind == NodeKind::File).map(|o| o.size)),
            );
            out.json_line("diff", Value::Object(m));
        } else {
            let mut line = format!("{}  ", d.code()).into_bytes();
            line.extend_from_slice(&path);
            if n.kind == NodeKind::Dir {
                line.push(b'/');
            }
            let size = |o: Option<&Node>| {
                o.filter(|o| o.kind == NodeKind::File)
                    .map(|o| human_bytes(o.size))
            };
            let sizes = match (size(old), size(new)) {
                (Some(a), Some(b)) if d == Diff::Modified => format!("  ({a} -> {b})"),
                (None, Some(b)) => format!("  ({b})"),
                (Some(a), None) => format!("  ({a})"),
                _ => String::new(),
            };
            line.extend_from_slice(sizes.as_bytes());
            out.raw_line(&line);
        }
    })?;
    if out.json {
        out.json_line(
            "summary",
            json!({
                "from": chosen[0].0.to_hex(), "to": chosen[1].0.to_hex(),
                "added": stats.added, "removed": stats.removed, "modified": stats.modified,
                "type_changed": stats.type_changed, "metadata": stats.metadata,
                "bytes_added": stats.bytes_added, "bytes_removed": stats.bytes_removed,
            }),
        );
    } else {
        out.line(format!(
            "{} -> {}: {} added, {} removed, {} modified{}{}; files {} added, {} removed",
            chosen[0].0.short(),
            chosen[1].0.short(),
            stats.added,
            stats.removed,
            stats.modified,
            if stats.type_changed > 0 {
                format!(", {} changed type", stats.type_changed)
            } else {
                String::new()
            },
            if a.metadata {
                format!(", {} metadata only", stats.metadata)
            } else {
                String::new()
            },
            human_bytes(stats.bytes_added),
            human_bytes(stats.bytes_removed),
        ));
    }
    Ok(exit::OK)
}

pub fn cmd_mount(g: &Global, out: &Out, a: &MountArgs) -> anyhow::Result<i32> {
    use chunkbak_engine::ops::mount;
    // A mount lives for hours: a store gone for a while fails the reads of the moment, not
    // the whole mount.
    chunkbak_engine::stop::never_stop_on_silence();
    let mp = &a.mountpoint;
    if !mp.is_dir() {
        crate::usage!(
            "mount point {} is not a folder (create an empty one)",
            mp.display()
        );
    }
    let repo = open_repo(g, out)?;
    repo.load_index()?;
    let snaps = match &a.at {
        Some(at) => {
            let (id, s, _) = choose(&repo, None, Some(at), &a.filter, out)?;
            vec![(id, s)]
        }
        None => {
            let filter = filter_of(&a.filter);
            let (all, _) = readable_snapshots(&repo, out)?;
            all.into_iter().filter(|(_, s)| filter.matches(s)).collect()
        }
    };
    let n = snaps.len();
    let fs = mount::SnapshotFs::new(repo, &snaps);
    let session = mount::mount(fs, mp).map_err(|e| {
        anyhow::anyhow!(
            "cannot mount on {}: {e} (FUSE needs /dev/fuse, and fusermount when not root)",
            mp.display()
        )
    })?;
    if out.json {
        out.json_line(
            "mounted",
            json!({"mountpoint": mp.display().to_string(), "snapshots": n}),
        );
    } else if !out.quiet {
        crate::elog!(
            "mounted {n} snapshots at {} (snapshots/, hosts/, ids/); Ctrl-C or `umount {}` ends it",
            mp.display(),
            mp.display()
        );
    }
    while mount::serving(&session) && !chunkbak_engine::ops::interrupted() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Dropping the session unmounts (when it is still mounted).
    drop(session);
    Ok(exit::OK)
}

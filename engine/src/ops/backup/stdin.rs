//! `backup --stdin` and `--stdin-from-command`.

use super::*;

/// Backs up a stream as the file `name`; `prev` is the same name's content in the parent
/// snapshot (candidate delta bases).
pub(super) fn backup_stdin(
    ctx: &Ctx,
    src: &StdinSource,
    name: &str,
    prev: Option<Content>,
) -> Result<Node> {
    let bases = || {
        let c = ctx.repo.file_chunks(prev.as_ref()?).ok()?;
        super::delta::Bases::new(&ctx.repo, c)
    };
    let now = timespec_of(jiff::Timestamp::now());
    let (uid, gid) = fsmeta::current_ids();
    let owners = Owners::default();
    let ids = match src {
        StdinSource::Stdin => {
            ctx.store_stream(std::io::stdin().lock(), None, bases())
                .map_err(|e| e.into_error("standard input"))?
                .0
        }
        StdinSource::Command(argv) => {
            let (prog, args) = argv
                .split_first()
                .ok_or_else(|| Error::Invalid("--stdin-from-command needs a command".into()))?;
            let shown = argv
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ");
            let mut child = crate::child::without_secrets(Command::new(prog).args(args))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| Error::Other(format!("cannot start `{shown}`: {e}")))?;
            let out = child.stdout.take().expect("piped");
            let r = ctx.store_stream(out, None, bases());
            let status = child
                .wait()
                .map_err(|e| Error::Other(format!("waiting for `{shown}`: {e}")))?;
            let ids = r
                .map_err(|e| e.into_error(&format!("the output of `{shown}`")))?
                .0;
            if !status.success() {
                return Err(Error::Other(format!(
                    "`{shown}` failed ({status}); no snapshot was written (the data read so far is \
                     stored and will be reused by the next run)"
                )));
            }
            ids
        }
    };
    let size = ctx.counters.bytes_read.load(Ordering::Relaxed);
    ctx.counters.bytes_total.store(size, Ordering::Relaxed);
    ctx.counters.files_new.fetch_add(1, Ordering::Relaxed);
    let content = ctx.repo.save_content(&ctx.w.saver, ids)?;
    Ok(Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o100600,
        uid,
        gid,
        user: owners.user(uid),
        group: owners.group(gid),
        mtime: now,
        ctime: now,
        size,
        nlink: 1,
        content,
        ..Node::default()
    })
}

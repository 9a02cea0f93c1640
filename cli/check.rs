//! `chunkbak check`: the repository's structure, and with `--read-data` its packs.

use serde_json::json;

use crate::args::{self, Global};
use crate::open::{backend, enable_cache_with, open_keyed, password, repo_spec};
use crate::output::{human_bytes, Out};
use crate::{clock_now, exit, output, progress, Usage};

pub fn cmd_check(g: &Global, out: &Out, a: &args::CheckArgs) -> anyhow::Result<i32> {
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

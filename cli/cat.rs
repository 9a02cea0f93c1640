//! `chunkbak cat`: one repository object, decrypted, for inspection.

use anyhow::anyhow;
use chunkbak_engine::backend::FileKind;
use chunkbak_engine::format::ObjectKind;
use chunkbak_engine::ops::select::{self, Selector};
use chunkbak_engine::Id;
use serde_json::json;
use std::io::Write;

use crate::args::{self, Global};
use crate::open::open_repo;
use crate::output::Out;
use crate::snapshots::{filter_of, snapshot_json, this_hosts_by_default};
use crate::{clock_now, exit, usage};

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

pub fn cmd_cat(g: &Global, out: &Out, a: &args::CatArgs) -> anyhow::Result<i32> {
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

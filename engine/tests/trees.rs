//! Huge directories and huge files do not need one giant tree blob: directories above 8192
//! entries split into parts, long chunk lists move to ChunkList blobs, and both read back whole.

use std::sync::Arc;

use chunkbak_engine::backend::local::LocalBackend;
use chunkbak_engine::format::tree::{Content, Node, TreeBlob};
use chunkbak_engine::{Id, Repository};

mod common;

use common::repo;

#[test]
fn huge_directory_and_chunk_list_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let saver = r.blob_saver().unwrap();
    let nodes: Vec<Node> = (0..20_000)
        .map(|i| Node {
            name: format!("file-{i:06}").into_bytes(),
            size: i,
            ..Node::default()
        })
        .collect();
    let dir_id = r.save_dir(&saver, nodes.clone()).unwrap();
    let ids: Vec<Id> = (0..20_000u32)
        .map(|i| r.hasher().id(&i.to_le_bytes()))
        .collect();
    let content = r.save_content(&saver, ids.clone()).unwrap();
    assert!(
        matches!(&content, Content::Indirect(l) if l.len() == 3),
        "{content:?}"
    );
    r.write_index(saver.finish().unwrap()).unwrap();

    // A fresh open sees only what is stored.
    let r2 = Repository::open(Arc::new(LocalBackend::new(d.path().join("repo"))), b"pw").unwrap();
    r2.load_index().unwrap();
    let top = r2.load_tree(&dir_id).unwrap();
    let parts = match &*top {
        TreeBlob::Split(p) => p.clone(),
        other => panic!("expected a split directory, got {other:?}"),
    };
    assert!(parts.len() >= 3, "{} parts", parts.len());
    for p in &parts {
        match &*r2.load_tree(p).unwrap() {
            TreeBlob::Dir(n) => assert!(n.len() <= 8192),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(r2.load_dir(&dir_id).unwrap(), nodes);
    assert_eq!(r2.file_chunks(&content).unwrap(), ids);

    // One more entry changes one part only (content-defined split points).
    let saver = r2.blob_saver().unwrap();
    let mut more = nodes.clone();
    more.insert(
        12_345,
        Node {
            name: b"file-012344a".to_vec(),
            ..Node::default()
        },
    );
    let id2 = r2.save_dir(&saver, more).unwrap();
    r2.write_index(saver.finish().unwrap()).unwrap();
    let parts2 = match &*r2.load_tree(&id2).unwrap() {
        TreeBlob::Split(p) => p.clone(),
        _ => unreachable!(),
    };
    let shared = parts2.iter().filter(|p| parts.contains(p)).count();
    assert_eq!(
        shared,
        parts.len() - 1,
        "{shared} of {} parts unchanged",
        parts.len()
    );
}

#[test]
fn restore_refuses_names_that_escape_the_target() {
    use chunkbak_engine::format::tree::NodeKind;
    use chunkbak_engine::ops::restore::{restore, RestoreOptions};
    use chunkbak_engine::progress::NoProgress;
    let d = tempfile::tempdir().unwrap();
    let r = repo(d.path());
    let saver = r.blob_saver().unwrap();
    let bad = |name: &[u8]| Node {
        name: name.to_vec(),
        kind: NodeKind::File,
        mode: 0o100644,
        ..Node::default()
    };
    let mut nodes = vec![bad(b"../escaped"), bad(b".."), bad(b"a/b"), bad(b"ok")];
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let root = r.save_dir(&saver, nodes).unwrap();
    r.write_index(saver.finish().unwrap()).unwrap();
    let target = d.path().join("t/inner");
    let opts = RestoreOptions {
        target: target.clone(),
        ..Default::default()
    };
    let res = restore(&r, root, &opts, &NoProgress).unwrap();
    assert_eq!(res.errors, 3);
    assert_eq!(res.files, 1);
    assert!(target.join("ok").exists());
    assert!(!d.path().join("t/escaped").exists());
}

//! The EBS client against a small protocol-true stub of the EBS direct APIs on 127.0.0.1: what
//! moto does not do (it ignores MaxResults and NextToken, and sends back whatever checksum it
//! was given). The stub pages every listing by the MaxResults asked for (capped at 2, so a
//! small snapshot takes several pages), and can damage one block in transit.
#![cfg(feature = "aws-sources")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use chunkbak_engine::ebs::{checksum, Ebs, EbsConfig, NewSnapshot, BLOCK_SIZE};

/// Blocks per page, whatever MaxResults asks for.
const PAGE: usize = 2;

#[derive(Default)]
struct Stub {
    /// Snapshot id → block index → data.
    snapshots: HashMap<String, Vec<(u32, Vec<u8>)>>,
    /// Block index whose data is damaged after its checksum was computed.
    damage: Option<u32>,
    /// Every request line seen.
    log: Vec<String>,
    /// The bodies of StartSnapshot requests.
    started: Vec<serde_json::Value>,
}

fn block(seed: u8) -> Vec<u8> {
    (0..BLOCK_SIZE)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn query(target: &str) -> (String, HashMap<String, String>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let params = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/").replace("%3D", "=")))
        .collect();
    (path.to_string(), params)
}

/// One page of `items` from the `pageToken` (an index into them) on.
fn page<T: Clone>(items: &[T], params: &HashMap<String, String>) -> (Vec<T>, Option<String>) {
    let start: usize = params
        .get("pageToken")
        .and_then(|t| t.strip_prefix("p"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let max: usize = params
        .get("maxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(PAGE)
        .min(PAGE);
    let end = (start + max).min(items.len());
    let next = (end < items.len()).then(|| format!("p{end}"));
    (items[start..end].to_vec(), next)
}

fn respond(
    stub: &Mutex<Stub>,
    method: &str,
    target: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut st = stub.lock().unwrap();
    st.log.push(format!("{method} {target}"));
    let (path, params) = query(target);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let json = |v: serde_json::Value| {
        (
            200,
            vec![("content-type".to_string(), "application/json".to_string())],
            serde_json::to_vec(&v).unwrap(),
        )
    };
    match (method, parts.as_slice()) {
        ("POST", ["snapshots"]) => {
            st.started.push(serde_json::from_slice(body).unwrap());
            let mut r = json(
                serde_json::json!({"SnapshotId": "snap-new", "Status": "pending",
                                                "BlockSize": BLOCK_SIZE, "VolumeSize": 1}),
            );
            r.0 = 201;
            r
        }
        ("GET", ["snapshots", id, "blocks"]) => {
            let blocks = &st.snapshots[*id];
            let (items, next) = page(blocks, &params);
            json(serde_json::json!({
                "Blocks": items.iter().map(|(i, _)| serde_json::json!({"BlockIndex": i, "BlockToken": format!("t-{id}-{i}")})).collect::<Vec<_>>(),
                "VolumeSize": 1, "BlockSize": BLOCK_SIZE, "NextToken": next,
            }))
        }
        ("GET", ["snapshots", second, "changedblocks"]) => {
            let first = &st.snapshots[params["firstSnapshotId"].as_str()];
            let second_blocks = &st.snapshots[*second];
            let a: HashMap<u32, &Vec<u8>> = first.iter().map(|(i, d)| (*i, d)).collect();
            let b: HashMap<u32, &Vec<u8>> = second_blocks.iter().map(|(i, d)| (*i, d)).collect();
            let mut idx: Vec<u32> = a.keys().chain(b.keys()).copied().collect();
            idx.sort();
            idx.dedup();
            let changed: Vec<u32> = idx.into_iter().filter(|i| a.get(i) != b.get(i)).collect();
            let (items, next) = page(&changed, &params);
            json(serde_json::json!({
                "ChangedBlocks": items.iter().map(|i| serde_json::json!({
                    "BlockIndex": i,
                    "FirstBlockToken": a.contains_key(i).then(|| format!("t-first-{i}")),
                    "SecondBlockToken": b.contains_key(i).then(|| format!("t-{second}-{i}")),
                })).collect::<Vec<_>>(),
                "VolumeSize": 1, "BlockSize": BLOCK_SIZE, "NextToken": next,
            }))
        }
        ("GET", ["snapshots", id, "blocks", index]) => {
            let index: u32 = index.parse().unwrap();
            let data = st.snapshots[*id]
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, d)| d.clone())
                .unwrap();
            let sum = checksum(&data);
            let mut data = data;
            if st.damage == Some(index) {
                data[1000] ^= 1;
            }
            (
                200,
                vec![
                    ("x-amz-Data-Length".into(), data.len().to_string()),
                    ("x-amz-Checksum".into(), sum),
                    ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
                    ("content-type".into(), "application/octet-stream".into()),
                ],
                data,
            )
        }
        _ => (404, vec![], b"{\"message\":\"not in the stub\"}".to_vec()),
    }
}

fn serve(conn: TcpStream, stub: Arc<Mutex<Stub>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut it = line.split_whitespace();
        let (method, target) = (
            it.next().unwrap_or("").to_string(),
            it.next().unwrap_or("").to_string(),
        );
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        let (code, headers, body) = respond(&stub, &method, &target, &body);
        let mut out = format!("HTTP/1.1 {code} X\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if w.write_all(out.as_bytes())
            .and_then(|_| w.write_all(&body))
            .is_err()
        {
            return;
        }
    }
}

fn start(stub: Stub) -> (Ebs, Arc<Mutex<Stub>>) {
    let stub = Arc::new(Mutex::new(stub));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s = stub.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || serve(c, s));
        }
    });
    let ebs = Ebs::new(&EbsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        static_credentials: Some(("test".into(), "test".into())),
        ..Default::default()
    })
    .unwrap();
    (ebs, stub)
}

#[test]
fn listings_are_paged_and_a_damaged_block_is_refused() {
    let a: Vec<(u32, Vec<u8>)> = [0u32, 2, 5, 6, 9, 11, 12, 20]
        .iter()
        .map(|&i| (i, block(i as u8)))
        .collect();
    // The second snapshot: block 5 changed, block 9 gone, block 30 new.
    let mut b: Vec<(u32, Vec<u8>)> = a
        .iter()
        .filter(|(i, _)| *i != 9)
        .map(|(i, d)| {
            if *i == 5 {
                (5, block(99))
            } else {
                (*i, d.clone())
            }
        })
        .collect();
    b.push((30, block(30)));
    let mut stub = Stub::default();
    stub.snapshots.insert("snap-a".into(), a.clone());
    stub.snapshots.insert("snap-b".into(), b);
    let (ebs, stub) = start(stub);

    // Eight blocks at two a page: four list requests, every block once, in order.
    let listed = ebs.list_blocks("snap-a").unwrap();
    let idx: Vec<u32> = listed.blocks.iter().map(|b| b.0).collect();
    assert_eq!(idx, vec![0, 2, 5, 6, 9, 11, 12, 20]);
    assert_eq!(listed.volume_gib, 1);
    assert_eq!(ebs.counts.snapshot().0, 4);
    // The changed blocks over pages too, the new block and the gone one included.
    let (_, changed) = ebs.changed_blocks("snap-a", "snap-b").unwrap();
    let got: Vec<(u32, bool)> = changed.iter().map(|(i, t)| (*i, t.is_some())).collect();
    assert_eq!(got, vec![(5, true), (9, false), (30, true)]);
    let log = stub.lock().unwrap().log.clone();
    assert!(
        log.iter()
            .any(|l| l.contains("changedblocks") && l.contains("pageToken=p2")),
        "{log:?}"
    );

    // Blocks read back whole and checked; a block damaged in transit is refused by name.
    let data = ebs.get_blocks("snap-a", &listed.blocks[..4]).unwrap();
    for (d, (i, _)) in data.iter().zip(&a[..4]) {
        assert!(*d == block(*i as u8), "block {i}");
    }
    stub.lock().unwrap().damage = Some(6);
    let err = ebs
        .get_blocks("snap-a", &listed.blocks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("block 6 of snap-a") && err.contains("SHA-256"),
        "{err}"
    );
}

/// A snapshot written back is started encrypted with the KMS key asked for, with its tags and
/// description (moto ignores Encrypted and KmsKeyArn; the request is what AWS acts on).
#[test]
fn a_written_snapshot_is_started_encrypted_and_tagged() {
    let (ebs, stub) = start(Stub::default());
    let key = "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let id = ebs
        .start_snapshot(
            8,
            &NewSnapshot {
                description: "chunkbak restore of 3f6250af".into(),
                encrypted: false,
                kms_key_arn: Some(key.into()),
                tags: vec![
                    ("team".into(), "dr".into()),
                    ("source".into(), "vol-1".into()),
                ],
            },
        )
        .unwrap();
    assert_eq!(id, "snap-new");
    let plain = ebs
        .start_snapshot(
            8,
            &NewSnapshot {
                description: "plain".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(plain, "snap-new");
    let started = stub.lock().unwrap().started.clone();
    let b = &started[0];
    assert_eq!(b["Encrypted"], true, "{b}");
    assert_eq!(b["KmsKeyArn"], key, "{b}");
    assert_eq!(b["VolumeSize"], 8, "{b}");
    assert_eq!(b["Description"], "chunkbak restore of 3f6250af", "{b}");
    assert_eq!(
        b["Tags"],
        serde_json::json!([{"Key": "team", "Value": "dr"}, {"Key": "source", "Value": "vol-1"}]),
        "{b}"
    );
    // Nothing asked: no encryption fields (the account's default decides), no tags.
    let p = &started[1];
    assert!(
        p.get("Encrypted").is_none() && p.get("KmsKeyArn").is_none() && p.get("Tags").is_none(),
        "{p}"
    );
}

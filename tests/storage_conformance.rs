//! One conformance suite that every storage backend must pass, run against the local
//! filesystem and the real S3 server (moto) — WAL-G's RunFolderTest, in spirit.

mod common;

use bytes::Bytes;
use common::*;
use pgdr::config::RepositoryConfig;
use pgdr::storage::{self, DynStorage, ObjectKey, PutMode, StorageError, body_channel};

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

fn repo_config(url: String, endpoint: Option<String>) -> RepositoryConfig {
    let toml = format!(
        "url = {url:?}\n{}force_path_style = true\nregion = \"us-east-1\"\ns3_part_size = 5242880\n",
        endpoint.map(|e| format!("endpoint = {e:?}\n")).unwrap_or_default()
    );
    toml::from_str(&toml).unwrap()
}

/// A fresh bucket on the test's S3 server, its credentials in the environment.
fn s3_repo_config() -> RepositoryConfig {
    let server = s3();
    let bucket = server.bucket();
    // SAFETY: set before any thread of this test reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", TEST_AWS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET);
    }
    repo_config(format!("s3://{bucket}/prefix"), Some(server.endpoint()))
}

/// Deterministic, incompressible-ish bytes.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = seed as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn stream_put(
    s: &DynStorage,
    k: &ObjectKey,
    payload: &[u8],
    piece: usize,
    mode: PutMode,
) -> Result<u64, StorageError> {
    let (tx, rx) = body_channel();
    let pieces: Vec<Bytes> = payload.chunks(piece).map(Bytes::copy_from_slice).collect();
    let producer = tokio::spawn(async move {
        for p in pieces {
            if tx.send(p).await.is_err() {
                return;
            }
        }
        tx.finish().await;
    });
    let r = s.put_stream(k, rx, mode).await;
    producer.await.unwrap();
    r
}

async fn get_all(s: &DynStorage, k: &ObjectKey) -> Vec<u8> {
    let mut rx = s.get_stream(k).await.unwrap();
    let mut out = Vec::new();
    while let Some(piece) = rx.recv().await {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

async fn conformance(s: DynStorage) {
    // Absent things.
    assert!(matches!(s.get(&key("nope/x")).await, Err(StorageError::NotFound(_))));
    assert!(matches!(
        s.get_stream(&key("nope/x")).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(s.head(&key("nope/x")).await.unwrap().is_none());
    assert!(
        s.list("nope/").await.unwrap().is_empty(),
        "a missing prefix lists as empty"
    );
    s.delete(&[key("nope/x")])
        .await
        .expect("deleting what is gone is not an error");

    // Small put, get, head, overwrite, create-new.
    let a = key("dir/sub/a.bin");
    s.put(&a, Bytes::from_static(b"hello"), PutMode::CreateNew)
        .await
        .unwrap();
    assert_eq!(s.get(&a).await.unwrap(), Bytes::from_static(b"hello"));
    assert_eq!(s.head(&a).await.unwrap().unwrap().size, 5);
    assert!(matches!(
        s.put(&a, Bytes::from_static(b"other"), PutMode::CreateNew).await,
        Err(StorageError::AlreadyExists(_))
    ));
    assert_eq!(
        s.get(&a).await.unwrap(),
        Bytes::from_static(b"hello"),
        "create-new must not overwrite"
    );
    s.put(&a, Bytes::from_static(b"replaced"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get(&a).await.unwrap(), Bytes::from_static(b"replaced"));

    // Streamed: empty, small (single PUT) and large (multipart, several parts).
    let empty = key("dir/empty");
    assert_eq!(stream_put(&s, &empty, b"", 10, PutMode::CreateNew).await.unwrap(), 0);
    assert_eq!(get_all(&s, &empty).await, b"");
    let small = data(100_000, 1);
    let sk = key("dir/small");
    stream_put(&s, &sk, &small, 7000, PutMode::CreateNew).await.unwrap();
    assert_eq!(get_all(&s, &sk).await, small);
    let large = data(17 * 1024 * 1024 + 123, 2);
    let lk = key("dir/large");
    assert_eq!(
        stream_put(&s, &lk, &large, 1 << 20, PutMode::CreateNew).await.unwrap(),
        large.len() as u64
    );
    assert_eq!(get_all(&s, &lk).await, large);
    assert_eq!(s.head(&lk).await.unwrap().unwrap().size, large.len() as u64);
    assert!(matches!(
        stream_put(&s, &lk, &small, 1 << 20, PutMode::CreateNew).await,
        Err(StorageError::AlreadyExists(_))
    ));

    // A producer that fails (or vanishes) leaves nothing visible, small or large.
    for (name, len) in [("dir/failed-small", 1000usize), ("dir/failed-large", 12 << 20)] {
        let k = key(name);
        let (tx, rx) = body_channel();
        let payload = data(len, 3);
        let producer = tokio::task::spawn_blocking(move || {
            for p in payload.chunks(1 << 20) {
                tx.send_blocking(Bytes::copy_from_slice(p)).unwrap();
            }
            tx.fail_blocking("source broke".into());
        });
        let r = s.put_stream(&k, rx, PutMode::CreateNew).await;
        producer.await.unwrap();
        assert!(matches!(r, Err(StorageError::Source(_))), "{r:?}");
        assert!(s.head(&k).await.unwrap().is_none(), "{name} became visible");
        let (tx, rx) = body_channel();
        drop(tx);
        assert!(s.put_stream(&k, rx, PutMode::CreateNew).await.is_err());
        assert!(s.head(&k).await.unwrap().is_none());
    }

    // Listing: recursive, sorted, prefix-scoped.
    s.put(&key("dir2/x"), Bytes::from_static(b"1"), PutMode::Overwrite)
        .await
        .unwrap();
    let listed: Vec<String> = s
        .list("dir/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    assert_eq!(listed, vec!["dir/empty", "dir/large", "dir/small", "dir/sub/a.bin"]);
    let all = s.list("").await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|m| m.modified.is_some()));

    // Batch delete.
    let keys: Vec<ObjectKey> = all.iter().map(|m| m.key.clone()).collect();
    s.delete(&keys).await.unwrap();
    assert!(s.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_conforms() {
    let dir = TestDir::new();
    let config = repo_config(format!("file://{}", dir.path().display()), None);
    let s = storage::open(&config, "conformance").await.unwrap();
    conformance(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms() {
    let config = s3_repo_config();
    let s = storage::open(&config, "conformance").await.unwrap();
    conformance(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_round_trip_on_both_backends() {
    use pgdr::pipeline::{self, Compression, Keyring, RepoKey};
    let server = s3();
    let bucket = server.bucket();
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", TEST_AWS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET);
    }
    let dir = TestDir::new();
    let backends = vec![
        storage::open(&repo_config(format!("file://{}", dir.path().display()), None), "p")
            .await
            .unwrap(),
        storage::open(&repo_config(format!("s3://{bucket}"), Some(server.endpoint())), "p")
            .await
            .unwrap(),
    ];
    let keys = Keyring::new(RepoKey::from_hex(&RepoKey::generate_hex(), "test").unwrap());
    let payload = data(9 << 20, 9);
    for s in backends {
        let k = key("objects/blob");
        let store = pipeline::Store {
            storage: &s,
            keys: &keys,
            compression: Compression { level: 3, threads: 2 },
            digests: pipeline::Digests::Both,
        };
        let record = store
            .reader(
                &k,
                "blob",
                std::io::Cursor::new(payload.clone()),
                PutMode::CreateNew,
                None,
            )
            .await
            .unwrap();
        assert_eq!(record.plain.size, payload.len() as u64);
        assert_eq!(s.head(&k).await.unwrap().unwrap().size, record.stored.size);
        let (back, plain, stored) =
            pipeline::load_to_writer(&s, &k, Vec::new(), &keys, pipeline::Verify::Record(&record), None)
                .await
                .unwrap();
        assert_eq!(back, payload);
        assert_eq!((plain, stored), (record.plain.clone(), record.stored.clone()));
    }
}

/// Item 11 of issue 8: the never-overwrite rules (WAL and history files, manifests,
/// leases) hold on a store that ignores If-None-Match, as Garage does.
async fn never_overwrite_rules(inner: DynStorage) {
    use pgdr::pipeline::{Compression, Keyring, RepoKey};
    use pgdr::storage::ignore_conditions::IgnoreConditions;
    // The probe `init` and `check` use tells the two apart.
    assert!(pgdr::repo::info::probe_conditional_put(&inner).await.unwrap());
    let storage: DynStorage = std::sync::Arc::new(IgnoreConditions(inner));
    assert!(!pgdr::repo::info::probe_conditional_put(&storage).await.unwrap());
    // The wrapper really does overwrite: otherwise this tests nothing.
    let probe = key("probe");
    storage
        .put(&probe, Bytes::from_static(b"a"), PutMode::CreateNew)
        .await
        .unwrap();
    storage
        .put(&probe, Bytes::from_static(b"b"), PutMode::CreateNew)
        .await
        .unwrap();
    assert_eq!(&storage.get(&probe).await.unwrap()[..], b"b");
    // The guard a repository on such a store is opened with refuses instead.
    let guarded = pgdr::storage::no_overwrite::guard(storage.clone(), true);
    let refused = guarded.put(&probe, Bytes::from_static(b"c"), PutMode::CreateNew).await;
    assert!(
        matches!(refused, Err(pgdr::storage::StorageError::AlreadyExists(_))),
        "{refused:?}"
    );
    guarded
        .put(&probe, Bytes::from_static(b"d"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(&storage.get(&probe).await.unwrap()[..], b"d");

    let repo_key = RepoKey::from_bytes(&[7u8; 32]);
    // As `Repo::open` opens a repository whose repo.json records the store ignoring
    // If-None-Match.
    let repo = pgdr::repo::Repo {
        storage: pgdr::storage::no_overwrite::guard(storage.clone(), true),
        info: pgdr::repo::RepoInfo {
            format: 1,
            cluster: "c".into(),
            system_identifier: "1".into(),
            pg_major: 15,
            key_id: repo_key.id().to_hex(),
            created: chrono::Utc::now(),
            retired_keys: Vec::new(),
            ignores_if_none_match: Some(true),
        },
        keys: Keyring::new(repo_key),
        compression: Compression { level: 3, threads: 1 },
    };

    // Leases: a second holder is refused, the first still holds.
    use pgdr::repo::lock::Lease;
    let ttl = std::time::Duration::from_secs(60);
    let first = Lease::acquire(&repo, "rule", "host:1:a", ttl)
        .await
        .unwrap()
        .expect("first holder");
    let second = Lease::acquire(&repo, "rule", "host:2:b", ttl).await.unwrap();
    assert_eq!(
        second.err().as_deref(),
        Some("host:1:a"),
        "the second holder took a live lease"
    );
    assert!(first.renew().await.unwrap(), "the first holder lost its lease");

    // A history file: the same bytes again are fine, different bytes are refused and
    // the archived one stays.
    let dir = tempfile::tempdir().unwrap();
    let file = pgdr::postgres::WalFile::parse("00000002.history").unwrap();
    let path = dir.path().join("00000002.history");
    std::fs::write(&path, "1\t0/3000000\tno recovery target specified\n").unwrap();
    pgdr::archive::push::push_one(&repo, &file, &path).await.unwrap();
    pgdr::archive::push::push_one(&repo, &file, &path).await.unwrap();
    std::fs::write(&path, "1\t0/5000000\tanother cluster\n").unwrap();
    let err = pgdr::archive::push::push_one(&repo, &file, &path).await.unwrap_err();
    assert!(format!("{err:#}").contains("different content"), "{err:#}");
    let stored = pgdr::pipeline::load_bytes(&storage, &pgdr::repo::layout::wal_file(&file), &repo.keys)
        .await
        .unwrap();
    assert_eq!(stored, b"1\t0/3000000\tno recovery target specified\n");

    // Manifests: a second one under the same label is refused.
    let label: pgdr::repo::BackupLabel = "20261201T000000Z-L".parse().unwrap();
    let mut manifest: pgdr::repo::Manifest = serde_json::from_value(serde_json::json!({
        "format": 1, "label": label, "kind": "logical", "tags": [], "start_time": "2026-12-01T00:00:00Z",
        "stop_time": "2026-12-01T00:00:01Z", "pg_version": "15", "pg_version_num": 150000,
        "system_identifier": "1", "key_id": repo.keys.primary().id().to_hex(),
        "compression": {"algorithm": "zstd", "level": 3}, "databases": [], "objects": []
    }))
    .unwrap();
    pgdr::repo::catalog::write_manifest(&repo, &manifest).await.unwrap();
    manifest.tags = vec!["impostor".into()];
    assert!(pgdr::repo::catalog::write_manifest(&repo, &manifest).await.is_err());
    let kept = pgdr::repo::catalog::load_manifest(&storage, &repo.keys, &label)
        .await
        .unwrap();
    assert!(kept.tags.is_empty(), "the manifest was overwritten");
}

#[tokio::test]
async fn never_overwrite_rules_hold_when_the_store_ignores_if_none_match_local() {
    let dir = tempfile::tempdir().unwrap();
    let config = repo_config(format!("file://{}", dir.path().display()), None);
    never_overwrite_rules(storage::open(&config, "rules").await.unwrap()).await;
}

#[tokio::test]
async fn never_overwrite_rules_hold_when_the_store_ignores_if_none_match_s3() {
    let config = s3_repo_config();
    never_overwrite_rules(storage::open(&config, "rules").await.unwrap()).await;
}

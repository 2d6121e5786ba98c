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
    let server = s3();
    let bucket = server.bucket();
    // SAFETY: set before any thread of this test reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", TEST_AWS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET);
    }
    let config = repo_config(format!("s3://{bucket}/prefix"), Some(server.endpoint()));
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

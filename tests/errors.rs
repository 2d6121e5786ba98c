//! Every failure gives one clear line, the documented exit code, no panic, and leaves
//! nothing half-written visible; a retry after a failure succeeds.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn dump_object(pgdr: &Pgdr, db: &str) -> PathBuf {
    let label = pgdr.list_json()[0]["label"].as_str().unwrap().to_string();
    pgdr.repo_dir
        .as_ref()
        .unwrap()
        .join(format!("test/backups/{label}/databases/{db}.dump"))
}

#[test]
fn wrong_key_is_refused_before_anything() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    let mut pgdr = Pgdr::new(&cluster, RepoKind::Local);
    pgdr.ok(&["backup", "--database", "shop"]);
    pgdr.set_env("PGDR_KEY", &"ab".repeat(32));
    let line = assert_fails(&pgdr.run(&["restore", "--to-database", "x"]), 2, "key");
    assert!(
        !line.contains(&"ab".repeat(32)),
        "the key leaked into the error: {line}"
    );
    assert_fails(&pgdr.run(&["list"]), 2, "key");
    assert_fails(&pgdr.run(&["backup"]), 2, "key");
    assert_eq!(
        cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'x'"),
        "0"
    );
    // A malformed key is a configuration error too.
    pgdr.set_env("PGDR_KEY", "not-hex");
    assert_fails(&pgdr.run(&["list"]), 2, "PGDR_KEY");
}

#[test]
fn damaged_objects_are_detected_and_nothing_is_restored() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    pgdr.ok(&["backup", "--database", "shop"]);
    let path = dump_object(&pgdr, "shop");
    let original = std::fs::read(&path).unwrap();
    let len = original.len();

    // A flipped byte anywhere: header, early, middle, last byte.
    for pos in [5, 40, 200, len / 2, len - 1] {
        let mut bad = original.clone();
        bad[pos] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        let out = pgdr.run(&["restore", "--database", "shop", "--to-database", "damaged"]);
        assert_fails(&out, 1, "shop.dump");
        assert_eq!(
            cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'damaged'"),
            "0",
            "a damaged restore left its database behind (flip at {pos})"
        );
    }
    // Truncated: mid-chunk and down to the header.
    for cut in [len - 10, len / 2, 60] {
        std::fs::write(&path, &original[..cut]).unwrap();
        let out = pgdr.run(&["restore", "--database", "shop", "--to-database", "damaged"]);
        assert_fails(&out, 1, "shop.dump");
        let out = pgdr.run(&["cat", path.to_string_lossy().split("/test/").nth(1).unwrap()]);
        assert_eq!(out.status.code(), Some(1), "cat of a truncated object must fail");
    }
    // Another backup's valid object swapped in under this name fails too.
    std::fs::write(&path, &original).unwrap();
    pgdr.ok(&["restore", "--database", "shop", "--to-database", "intact"]);
    assert_eq!(cluster.content_hashes("intact"), cluster.content_hashes("shop"));
}

#[test]
fn unknown_label_and_bad_config() {
    let cluster = Cluster::start();
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    assert_fails(
        &pgdr.run(&["restore", "--backup", "20991231T000000Z-L"]),
        2,
        "does not exist",
    );
    assert_fails(&pgdr.run(&["restore"]), 2, "no logical backup");
    assert_fails(
        &pgdr.run(&["cat", "backups/20991231T000000Z-L/globals.sql"]),
        2,
        "does not exist",
    );

    let text = std::fs::read_to_string(&pgdr.config).unwrap();
    std::fs::write(&pgdr.config, format!("{text}colour = \"blue\"\n")).unwrap();
    let line = assert_fails(&pgdr.run(&["list"]), 2, "colour");
    assert!(
        line.contains("pgdr.toml") && line.contains("repository.colour"),
        "{line}"
    );
    std::fs::write(
        &pgdr.config,
        text.replace("compress_threads = 2", "compress_threads = \"many\""),
    )
    .unwrap();
    assert_fails(&pgdr.run(&["list"]), 2, "repository.compress_threads");
    std::fs::write(&pgdr.config, text.replace("file://", "ftp://")).unwrap();
    assert_fails(&pgdr.run(&["list"]), 2, "repository.url");
    std::fs::write(&pgdr.config, &text).unwrap();
    assert_fails(
        &pgdr
            .command(&["list"])
            .env("PGDR_CONFIG", "/nonexistent.toml")
            .output()
            .unwrap(),
        2,
        "/nonexistent.toml",
    );
    assert_fails(&pgdr.run(&["backup", "--tag", "bad tag!"]), 2, "--tag");
    assert_fails(&pgdr.run(&["backup", "--database", "nope"]), 2, "does not exist");
    let out = pgdr.run(&["restore", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn repository_of_another_cluster_is_refused() {
    let a = Cluster::start();
    let b = Cluster::start();
    let mut pgdr = Pgdr::new(&a, RepoKind::Local);
    pgdr.ok(&["backup", "--database", "postgres"]);
    pgdr.set_env("PGDR_POSTGRES_URL", &b.url("postgres"));
    assert_fails(&pgdr.run(&["backup"]), 2, "system identifier");
    assert_fails(&pgdr.run(&["init"]), 2, "system identifier");
    let out = pgdr.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("✗ identity"));
}

#[test]
fn postgres_down() {
    let mut cluster = Cluster::start();
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    cluster.stop();
    assert_fails(&pgdr.run(&["backup"]), 1, "cannot connect to PostgreSQL");
    assert!(pgdr.list_json().is_empty());
}

#[test]
fn s3_unreachable_or_bucket_missing() {
    let cluster = Cluster::start();
    let pgdr = Pgdr::new(&cluster, RepoKind::S3);
    let text = std::fs::read_to_string(&pgdr.config).unwrap();
    // Nothing listens on this port.
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(
        &pgdr.config,
        text.replace(&s3().endpoint(), &dead)
            .replace("[repository]", "[repository]\ns3_max_attempts = 2"),
    )
    .unwrap();
    let started = Instant::now();
    assert_fails(&pgdr.run(&["backup"]), 1, "cannot reach the S3 endpoint");
    assert!(started.elapsed() < Duration::from_secs(60), "giving up took too long");
    // A bucket that does not exist.
    let url_line = text.lines().find(|l| l.starts_with("url = \"s3://")).unwrap();
    std::fs::write(
        &pgdr.config,
        text.replace(url_line, "url = \"s3://no-such-bucket-pgdr/x\""),
    )
    .unwrap();
    assert_fails(&pgdr.run(&["list"]), 1, "no-such-bucket-pgdr");
    // Missing credentials: configuration error.
    std::fs::write(&pgdr.config, &text).unwrap();
    let out = pgdr
        .command(&["list"])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_fails(&out, 2, "AWS_SECRET_ACCESS_KEY");
}

/// pg_dump dies mid-dump (its database is dropped under it): the backup fails with
/// pg_dump's reason, nothing new is listed, and a retry succeeds.
#[test]
fn pg_dump_failing_midway() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "CREATE DATABASE victim; CREATE DATABASE keep");
    // Enough data that the dump takes a moment.
    cluster.psql(
        "victim",
        "CREATE TABLE big AS SELECT i, md5(i::text) || md5((i * 7)::text) AS pad FROM generate_series(1, 1500000) i",
    );
    cluster.psql("keep", "CREATE TABLE k AS SELECT 1 AS x");
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let mut child = pgdr
        .command(&["backup", "--database", "victim"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until pg_dump is copying, then drop the database under it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'victim' AND query LIKE 'COPY%'",
        );
        if n != "0" {
            break;
        }
        assert!(Instant::now() < deadline, "pg_dump never started copying");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be disturbed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.psql("postgres", "DROP DATABASE victim WITH (FORCE)");
    let out = child.wait_with_output().unwrap();
    assert_fails(&out, 1, "pg_dump");
    assert!(pgdr.list_json().is_empty(), "a failed backup became visible");
    let leftovers = repo_files(&pgdr.repo_dir.as_ref().unwrap().join("test/backups"));
    assert!(leftovers.is_empty(), "a failed backup left files: {leftovers:?}");
    pgdr.ok(&["backup", "--database", "keep"]);
    assert_eq!(pgdr.list_json().len(), 1);
}

/// kill -9 in the middle of a backup: nothing is listed; a retry succeeds; check
/// reports the debris as an orphan.
#[test]
fn killed_backup_leaves_nothing_visible() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "CREATE DATABASE big");
    cluster.psql(
        "big",
        "CREATE TABLE big AS SELECT i, md5(i::text) || md5((i * 7)::text) AS pad FROM generate_series(1, 1500000) i",
    );
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let mut child = pgdr
        .command(&["backup", "--database", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let backups = pgdr.repo_dir.as_ref().unwrap().join("test/backups");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until the dump object is being written.
    while !repo_files(&backups)
        .iter()
        .any(|f| f.to_string_lossy().contains("big.dump"))
    {
        assert!(Instant::now() < deadline, "the dump never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(pgdr.list_json().is_empty(), "a killed backup became visible");
    let check = pgdr.ok(&["check"]);
    assert!(check.contains("⚠ orphans") || check.contains("⚠ temp files"), "{check}");
    pgdr.ok(&["backup", "--database", "big"]);
    let list = pgdr.list_json();
    assert_eq!(list.len(), 1);
    pgdr.ok(&["restore", "--database", "big", "--to-database", "big_back"]);
    assert_eq!(cluster.content_hashes("big_back"), cluster.content_hashes("big"));
}

/// A full local repository: clear error, no partial object, nothing listed.
#[test]
fn full_disk_on_local_repository() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "CREATE DATABASE noise");
    // Incompressible data: random bytes as hex would compress 2x; use bytea of random.
    cluster.psql(
        "noise",
        "CREATE TABLE r AS SELECT i, decode(string_agg(lpad(to_hex((random() * 4294967295)::bigint), 8, '0'), ''), 'hex') AS b \
         FROM generate_series(1, 400) i, generate_series(1, 2048) j GROUP BY i",
    );
    let mut pgdr = Pgdr::new(&cluster, RepoKind::Local);
    // A 2 MiB filesystem as the repository.
    let small = pgdr.dir.join("small");
    std::fs::create_dir(&small).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount is needed for the full-disk test");
    assert!(
        status.success(),
        "cannot mount a small tmpfs for the full-disk test (needs root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    // Move the initialised repository onto it.
    let repo = pgdr.repo_dir.clone().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo.join("test"))
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success());
    pgdr.set_env("PGDR_REPOSITORY_URL", &format!("file://{}", small.display()));
    let line = assert_fails(&pgdr.run(&["backup", "--database", "noise"]), 1, "out of space");
    assert!(line.contains(&small.display().to_string()), "{line}");
    assert!(pgdr.list_json().is_empty());
    let files: Vec<_> = repo_files(&small.join("test"))
        .into_iter()
        .filter(|f| !f.ends_with("repo.json"))
        .collect();
    assert!(files.is_empty(), "partial files left on the full disk: {files:?}");
}

/// Secrets never reach a child's argv, stdout/stderr or the repository.
#[test]
fn secrets_stay_secret() {
    let cluster = Cluster::start();
    let password = "Pw-7e1d-not-for-argv";
    cluster.psql(
        "postgres",
        &format!("CREATE ROLE backup_user SUPERUSER LOGIN PASSWORD '{password}'"),
    );
    // Require the password from now on (scram over TCP).
    let hba = cluster.data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf()");
    let mut pgdr = Pgdr::new(&cluster, RepoKind::Local);

    // Wrap pg_dump and pg_dumpall so we can see their argv.
    let wrap = pgdr.dir.join("bin");
    std::fs::create_dir(&wrap).unwrap();
    let argv_log = pgdr.dir.join("argv.log");
    for entry in std::fs::read_dir(pg_bin()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = wrap.join(&name);
        if name == "pg_dump" || name == "pg_dumpall" {
            std::fs::write(
                &target,
                format!(
                    "#!/bin/sh\necho \"$0 $*\" >> {}\nexec {} \"$@\"\n",
                    argv_log.display(),
                    entry.path().display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        } else {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        }
    }
    pgdr.set_env("PGDR_POSTGRES_BIN_DIR", wrap.to_str().unwrap());
    pgdr.set_env(
        "PGDR_POSTGRES_URL",
        &format!(
            "postgresql://backup_user:{password}@127.0.0.1:{}/postgres",
            cluster.port
        ),
    );
    let key = std::fs::read_to_string(&pgdr.key_file).unwrap().trim().to_string();
    let backup = pgdr.run(&["backup", "--all"]);
    assert_success(&backup, "backup with a password");
    let argv = std::fs::read_to_string(&argv_log).unwrap();
    assert!(
        argv.contains("pg_dump ") && argv.contains("pg_dumpall "),
        "wrappers not used: {argv}"
    );
    for (what, text) in [
        ("argv", argv.clone()),
        ("stdout", String::from_utf8_lossy(&backup.stdout).into_owned()),
        ("stderr", String::from_utf8_lossy(&backup.stderr).into_owned()),
    ] {
        assert!(!text.contains(password), "the password appears in {what}: {text}");
        assert!(!text.contains(&key), "the key appears in {what}");
        assert!(!text.contains(TEST_AWS_SECRET), "the S3 secret appears in {what}");
    }
    // A wrong password: the error must not echo the URL with the password.
    pgdr.set_env(
        "PGDR_POSTGRES_URL",
        &format!(
            "postgresql://backup_user:wrong-{password}@127.0.0.1:{}/postgres",
            cluster.port
        ),
    );
    let line = assert_fails(&pgdr.run(&["backup"]), 1, "cannot connect");
    assert!(!line.contains(password), "{line}");
    for f in repo_files(pgdr.repo_dir.as_ref().unwrap()) {
        let data = std::fs::read(&f).unwrap();
        assert!(!data.windows(password.len()).any(|w| w == password.as_bytes()));
        assert!(!data.windows(key.len()).any(|w| w == key.as_bytes()));
    }
}

/// A server that accepts only TLS: pgdr's own connection and the tools it drives both
/// encrypt; sslmode=disable is refused by the server with a clear line.
#[test]
fn tls_only_server() {
    let mut cluster = Cluster::init();
    let out = std::process::Command::new("openssl")
        .args(["req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1"])
        .arg("-out")
        .arg(cluster.data.join("server.crt"))
        .arg("-keyout")
        .arg(cluster.data.join("server.key"))
        .output()
        .expect("openssl is needed to make a test certificate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["server.crt", "server.key"] {
        let p = cluster.data.join(f);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        chown_postgres(&p);
    }
    std::fs::write(
        cluster.data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    cluster.configure(&["ssl = on".to_string()]);
    cluster.launch(&[]);
    cluster.psql("postgres", "CREATE DATABASE shop; SELECT 1");
    let mut pgdr = Pgdr::new(&cluster, RepoKind::Local);
    pgdr.set_env(
        "PGDR_POSTGRES_URL",
        &format!("{}?sslmode=require", cluster.url("postgres")),
    );
    pgdr.ok(&["backup", "--database", "shop"]);
    pgdr.ok(&["restore", "--database", "shop", "--to-database", "shop_copy"]);
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'shop_copy'"
        ),
        "1"
    );
    pgdr.set_env(
        "PGDR_POSTGRES_URL",
        &format!("{}?sslmode=disable", cluster.url("postgres")),
    );
    assert_fails(&pgdr.run(&["backup"]), 1, "cannot connect");
}

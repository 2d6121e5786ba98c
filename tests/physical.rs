//! Physical backups, WAL archiving and point-in-time restore, against a real cluster
//! that archives with `pgdr wal-push` under pgbench load; every restore is started and
//! its data compared.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn markers(r: &Restored) -> String {
    r.psql(
        "postgres",
        "SELECT coalesce(string_agg(m, ',' ORDER BY m), '') FROM markers",
    )
}

fn pgbench_load(cluster: &Cluster, seconds: u32) -> std::process::Child {
    Command::new(pg_bin().join("pgbench"))
        .args([
            "-n",
            "-c",
            "2",
            "-T",
            &seconds.to_string(),
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &cluster.port.to_string(), "bench"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The heart of it: a backup under load, markers at t1 < t2 < t3, and restores that
/// land exactly on time, xid, LSN and restore-point targets, and at the latest.
#[test]
fn point_in_time_restores_land_exactly() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE bench");
    c.pgbench_init("bench", 2);
    c.psql(
        "postgres",
        "CREATE TABLE markers (m text PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    );

    let mut load = pgbench_load(c, 4);
    let out = a.pgdr.ok(&["backup", "--kind", "physical", "--tag", "base", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["files"].as_u64().unwrap() > 500, "{report}");
    load.wait().unwrap();

    c.psql("postgres", "INSERT INTO markers (m) VALUES ('t1')");
    a.switch_and_wait();
    sleep(1100);
    let between_1_2 = c.psql("postgres", "SELECT now()");
    sleep(1100);
    let xid2 = c.psql(
        "postgres",
        "BEGIN; INSERT INTO markers (m) VALUES ('t2'); SELECT txid_current(); COMMIT;",
    );
    let lsn2 = c.psql("postgres", "SELECT pg_current_wal_insert_lsn()");
    c.psql("postgres", "SELECT pg_create_restore_point('after_t2')");
    a.switch_and_wait();
    sleep(1100);
    let between_2_3 = c.psql("postgres", "SELECT now()");
    sleep(1100);
    c.psql("postgres", "INSERT INTO markers (m) VALUES ('t3')");
    a.switch_and_wait();

    let r = a.pgdr.restore_started(&["--target-time", &between_2_3]);
    assert_eq!(markers(&r), "t1,t2", "time between t2 and t3");
    assert!(r.output.contains("promoted"), "{}", r.output);
    // Issue 25: the copy listens on 127.0.0.1 with production's pg_hba.conf, which
    // (initdb's default) trusts TCP logins: the DBA is told, with the way out.
    assert!(
        r.output.contains("lets TCP clients in without a password") && r.output.contains("--listen ''"),
        "{}",
        r.output
    );
    drop(r);
    let r = a
        .pgdr
        .restore_started(&["--target-time", &between_1_2, "--backup", "tag:base"]);
    assert_eq!(markers(&r), "t1", "time between t1 and t2");
    drop(r);
    let r = a.pgdr.restore_started(&["--target-xid", &xid2]);
    assert_eq!(markers(&r), "t1,t2", "xid of t2, inclusive");
    drop(r);
    let r = a.pgdr.restore_started(&["--target-xid", &xid2, "--target-exclusive"]);
    assert_eq!(markers(&r), "t1", "xid of t2, exclusive");
    drop(r);
    let r = a.pgdr.restore_started(&["--target-lsn", &lsn2]);
    assert_eq!(markers(&r), "t1,t2", "LSN after t2");
    drop(r);
    let r = a.pgdr.restore_started(&["--target-name", "after_t2"]);
    assert_eq!(markers(&r), "t1,t2", "restore point after t2");
    drop(r);

    // Latest: everything, and the whole cluster equals the source.
    let r = a.pgdr.restore_started(&["--target", "latest", "--jobs", "2"]);
    assert_eq!(markers(&r), "t1,t2,t3");
    let dump = |port: u16| {
        let out = Command::new(pg_bin().join("pg_dumpall"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &port.to_string(),
                "--no-role-passwords",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        // \restrict lines carry a random key per run (PostgreSQL 15.14+).
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (restored, source) = (dump(r.port), dump(c.port));
    if restored != source {
        let diff: Vec<String> = restored
            .lines()
            .zip(source.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .map(|(a, b)| format!("restored: {a}\nsource:   {b}"))
            .collect();
        panic!(
            "pg_dumpall of the restored copy differs from the source:\n{}",
            diff.join("\n")
        );
    }
    let amcheck = Command::new(pg_bin().join("pg_amcheck"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &r.port.to_string(),
            "--all",
            "--install-missing",
        ])
        .output()
        .unwrap();
    assert!(
        amcheck.status.success(),
        "amcheck on the restored copy: {}",
        String::from_utf8_lossy(&amcheck.stdout)
    );

    // check: archiving configured, a segment round trip, an unbroken chain.
    let check = a.pgdr.ok(&["check"]);
    for line in ["✓ archiving:", "✓ archive round trip:", "✓ wal chain:"] {
        assert!(check.contains(line), "no {line} in:\n{check}");
    }

    // No backup precedes a target before the first backup: a clear refusal.
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        "/tmp/pgdr-never",
        "--target-time",
        "2000-01-01 00:00:00+00",
    ]);
    assert_fails(&out, 2, "no physical backup finished before");
    assert!(!std::path::Path::new("/tmp/pgdr-never").exists());
}

/// Timelines: a PITR promotes to timeline 2, which archives on; a second restore
/// follows timeline 2 and promotes to 3.
#[test]
fn restores_follow_new_timelines() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE markers (m text PRIMARY KEY)");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("postgres", "INSERT INTO markers VALUES ('t1')");
    a.switch_and_wait();
    sleep(1100);
    let before_t2 = c.psql("postgres", "SELECT now()");
    sleep(1100);
    c.psql("postgres", "INSERT INTO markers VALUES ('t2')");
    a.switch_and_wait();

    let first = a.pgdr.restore_started_archiving(&["--target-time", &before_t2]);
    assert_eq!(markers(&first), "t1");
    assert!(first.output.contains("timeline 2"), "{}", first.output);
    first.psql("postgres", "INSERT INTO markers VALUES ('on-timeline-2')");
    let seg = first.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    first.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while first.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < seg
    {
        assert!(
            Instant::now() < deadline,
            "timeline 2 did not archive {seg}: {}",
            std::fs::read_to_string(first.data.join("pgdr-recovery.log")).unwrap_or_default()
        );
        sleep(100);
    }
    first.stop();

    let second = a.pgdr.restore_started(&["--target", "latest"]);
    assert_eq!(markers(&second), "on-timeline-2,t1", "latest follows timeline 2");
    assert!(second.output.contains("timeline 3"), "{}", second.output);
}

/// A standby restore keeps following the primary through the archive.
#[test]
fn standby_follows_the_primary() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE markers (m text PRIMARY KEY)");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let standby = a.pgdr.restore_started(&["--standby"]);
    assert!(standby.output.contains("standby"), "{}", standby.output);
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    c.psql("postgres", "INSERT INTO markers VALUES ('later')");
    a.switch_and_wait();
    let deadline = Instant::now() + Duration::from_secs(60);
    while markers(&standby) != "later" {
        assert!(Instant::now() < deadline, "the standby never replayed the new segment");
        sleep(200);
    }
}

/// A missing segment in the middle of the archive is named before anything is written.
#[test]
fn wal_gap_is_reported_by_name() {
    let a = Archiving::start();
    let c = &a.cluster;
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let mut segments = Vec::new();
    c.psql("postgres", "CREATE TABLE t (x int)");
    for i in 0..3 {
        c.psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        segments.push(a.switch_and_wait());
    }
    let victim = &segments[1];
    let repo = a.pgdr.repo_dir.as_ref().unwrap();
    let path = repo.join(format!("test/wal/{}/{victim}", &victim[..16]));
    std::fs::remove_file(&path).unwrap();
    let target = a.pgdr.dir.join("gap-restore");
    let out = a
        .pgdr
        .run(&["restore", "--kind", "physical", "--to", target.to_str().unwrap()]);
    let line = assert_fails(&out, 1, "WAL gap");
    assert!(line.contains(victim.as_str()), "{line}");
    assert!(!target.exists(), "the target directory was touched");
    let check = a.pgdr.run(&["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stdout).contains(victim.as_str()));
}

/// Pushing the same segment again succeeds; different bytes under its name fail and
/// never overwrite; a `kill -9` mid-push leaves nothing that wal-fetch accepts.
#[test]
fn wal_push_is_idempotent_and_never_overwrites() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g",
    );
    let seg = a.switch_and_wait();
    let copy_dir = a.pgdr.dir.join("copies");
    std::fs::create_dir_all(copy_dir.join("archive_status")).unwrap();
    chmod_all(&copy_dir);
    let original = std::fs::read(c.data.join("pg_wal").join(&seg));
    // The segment may already be recycled; fetch it back from the archive instead.
    let fetched = copy_dir.join("fetched");
    a.pgdr.ok(&["wal-fetch", &seg, fetched.to_str().unwrap()]);
    let bytes = std::fs::read(&fetched).unwrap();
    if let Ok(original) = original {
        assert_eq!(original, bytes, "wal-fetch returned different bytes");
    }
    let same = copy_dir.join(&seg);
    std::fs::write(&same, &bytes).unwrap();
    chmod_all(&copy_dir);
    a.pgdr.ok(&["wal-push", same.to_str().unwrap()]);

    let mut different = bytes.clone();
    let n = different.len() - 100;
    different[n] ^= 0xff;
    std::fs::write(&same, &different).unwrap();
    let line = assert_fails(
        &a.pgdr.run(&["wal-push", same.to_str().unwrap()]),
        1,
        "different content",
    );
    assert!(line.contains(&seg));
    let again = copy_dir.join("again");
    a.pgdr.ok(&["wal-fetch", &seg, again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        bytes,
        "the archived segment was overwritten"
    );

    // Not in the archive: exit 1, quietly.
    let out = a.pgdr.run(&[
        "wal-fetch",
        "0000000100000000000000FF",
        copy_dir.join("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // kill -9 at various moments of a push of a fresh name: the object is either
    // absent or whole, never something wal-fetch would hand to PostgreSQL.
    let fresh_name = format!("{}{}", &seg[..16], "000000F0");
    let fresh = copy_dir.join(&fresh_name);
    std::fs::write(&fresh, &bytes).unwrap();
    chmod_all(&copy_dir);
    let key_path = a
        .pgdr
        .repo_dir
        .as_ref()
        .unwrap()
        .join(format!("test/wal/{}/{fresh_name}", &seg[..16]));
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80] {
        let _ = std::fs::remove_file(&key_path);
        let mut child = a.pgdr.command(&["wal-push", fresh.to_str().unwrap()]).spawn().unwrap();
        sleep(delay_ms);
        let _ = child.kill();
        let _ = child.wait();
        let out_path = copy_dir.join("after-kill");
        let _ = std::fs::remove_file(&out_path);
        let out = a.pgdr.run(&["wal-fetch", &fresh_name, out_path.to_str().unwrap()]);
        match out.status.code() {
            Some(0) => assert_eq!(
                std::fs::read(&out_path).unwrap(),
                bytes,
                "a killed push left a damaged segment"
            ),
            Some(1) => assert!(!out_path.exists(), "wal-fetch left a file behind after failing"),
            other => panic!("unexpected wal-fetch exit {other:?}"),
        }
    }
}

/// Hand a directory and its entries to the `postgres` user.
fn chmod_all(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        chown_postgres(&entry.path());
    }
    chown_postgres(dir);
}

/// The wrong key is refused before the target directory is created.
#[test]
fn wrong_key_restore_touches_nothing() {
    let a = Archiving::start();
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let mut wrong = a.pgdr.clone_setup();
    wrong.set_env("PGDR_KEY", &"42".repeat(32));
    let target = wrong.dir.join("never");
    let out = wrong.run(&["restore", "--kind", "physical", "--to", target.to_str().unwrap()]);
    assert_fails(&out, 2, "key");
    assert!(!target.exists());
    // And a delta restore into an existing copy rewrites only what differs.
    let r = a.pgdr.restore_started(&["--target", "immediate"]);
    r.stop();
    let pg_control = r.data.join("global/pg_control");
    let before = std::fs::read(&pg_control).unwrap();
    let out = a.pgdr.ok(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        r.data.to_str().unwrap(),
        "--delta",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["files_unchanged"].as_u64().unwrap() > 100, "{report}");
    assert!(
        report["files_written"].as_u64().unwrap() < report["files_unchanged"].as_u64().unwrap(),
        "{report}"
    );
    assert_ne!(
        std::fs::read(&pg_control).unwrap(),
        before,
        "pg_control changed by the run must be restored"
    );
}

/// A burst: segments pile up while archiving fails, then wal-push drains them through
/// its parallel pusher; every one is archived intact (a latest restore has all rows).
#[test]
fn archive_burst_drains_through_the_pusher() {
    archive_burst(RepoKind::Local);
}

/// The same burst, physical backup and latest restore against the S3 server.
#[test]
fn archive_burst_drains_through_the_pusher_s3() {
    archive_burst(RepoKind::S3);
}

fn archive_burst(kind: RepoKind) {
    let a = Archiving::start_with(kind);
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE burst (id int, pad text)");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let command = c.psql("postgres", "SHOW archive_command");
    c.psql("postgres", "ALTER SYSTEM SET archive_command = 'false'");
    c.psql("postgres", "SELECT pg_reload_conf()");
    for i in 0..12 {
        c.psql(
            "postgres",
            &format!(
                "INSERT INTO burst SELECT g, md5(g::text) FROM generate_series({0} * 20000, {0} * 20000 + 19999) g",
                i
            ),
        );
        c.psql("postgres", "SELECT pg_switch_wal()");
    }
    let before = c
        .psql("postgres", "SELECT archived_count FROM pg_stat_archiver")
        .parse::<i64>()
        .unwrap();
    c.psql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_command = '{}'", command.replace('\'', "''")),
    );
    c.psql("postgres", "SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(120);
    while c
        .psql("postgres", "SELECT archived_count FROM pg_stat_archiver")
        .parse::<i64>()
        .unwrap()
        < before + 12
    {
        assert!(Instant::now() < deadline, "the burst was not archived: {}", c.log());
        sleep(100);
    }
    assert!(
        a.pgdr.dir.join("spool/pusher.log").exists(),
        "the parallel pusher was not used for the burst"
    );
    a.switch_and_wait();
    let r = a.pgdr.restore_started(&["--target", "latest"]);
    assert_eq!(
        r.psql("postgres", "SELECT count(*), count(DISTINCT id) FROM burst"),
        "240000|240000"
    );
}

/// Tablespaces are backed up and restored, remapped to a new place.
#[test]
fn tablespaces_are_included_and_can_be_remapped() {
    let a = Archiving::start();
    let c = &a.cluster;
    let ts_dir = pg_owned_dir(&a.pgdr.dir.join("ts"));
    c.psql(
        "postgres",
        &format!("CREATE TABLESPACE elsewhere LOCATION '{}'", ts_dir.display()),
    );
    c.psql(
        "postgres",
        "CREATE TABLE far (x int) TABLESPACE elsewhere; INSERT INTO far SELECT generate_series(1, 5000)",
    );
    let oid = c.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'elsewhere'");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    // The original location is in use: a restore there is refused, with the way out.
    let target = a.pgdr.dir.join("refused");
    let out = a
        .pgdr
        .run(&["restore", "--kind", "physical", "--to", target.to_str().unwrap()]);
    assert_fails(&out, 2, "--tablespace-map");
    let new_ts = a.pgdr.dir.join("ts-restored");
    pg_owned_dir(&new_ts);
    let r = a.pgdr.restore_started(&[
        "--target",
        "immediate",
        "--tablespace-map",
        &format!("{oid}={}", new_ts.display()),
    ]);
    assert_eq!(r.psql("postgres", "SELECT count(*), sum(x) FROM far"), "5000|12502500");
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'elsewhere'"
        ),
        new_ts.display().to_string()
    );
}

/// `--method basebackup`: pg_basebackup streams the cluster (as from another host);
/// the restore unpacks it, pg_verifybackup checks every file, and PITR works the same.
#[test]
fn basebackup_method_round_trip() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE bench");
    c.pgbench_init("bench", 1);
    c.psql("postgres", "CREATE TABLE markers (m text PRIMARY KEY)");
    let out = a
        .pgdr
        .ok(&["backup", "--kind", "physical", "--method", "basebackup", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["method"], "basebackup");
    assert!(report["files"].as_u64().unwrap() > 500, "{report}");
    c.psql("postgres", "INSERT INTO markers VALUES ('after')");
    a.switch_and_wait();
    let r = a.pgdr.restore_started(&["--target", "latest"]);
    assert_eq!(markers(&r), "after");
    assert_eq!(
        r.psql("bench", "SELECT count(*), sum(abalance) FROM pgbench_accounts"),
        c.psql("bench", "SELECT count(*), sum(abalance) FROM pgbench_accounts")
    );
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        r.data.to_str().unwrap(),
        "--delta",
    ]);
    assert_fails(&out, 2, "--method basebackup");
}

/// A damaged archived segment stops recovery (wal-fetch exits above 125) instead of
/// passing for the end of the archive and promoting early.
#[test]
fn damaged_segment_stops_recovery() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE markers (m text PRIMARY KEY)");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("postgres", "INSERT INTO markers VALUES ('lost if skipped')");
    let seg = a.switch_and_wait();
    c.psql("postgres", "INSERT INTO markers VALUES ('later')");
    a.switch_and_wait();
    let path = a
        .pgdr
        .repo_dir
        .as_ref()
        .unwrap()
        .join(format!("test/wal/{}/{seg}", &seg[..16]));
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let out_dir = TestDir::new();
    let data = out_dir.join("data");
    chown_postgres(out_dir.path());
    let sock = pg_owned_dir(&out_dir.join("sock"));
    let port = free_port().to_string();
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--no-archive",
        "--to",
        data.to_str().unwrap(),
        "--start",
        "--port",
        &port,
        "--socket-dir",
        sock.to_str().unwrap(),
    ]);
    let said = assert_fails(&out, 1, "stopped during recovery");
    // Issue 26: it says what it left, and how to clean it up.
    assert!(said.contains("pgdr-recovery.log") && said.contains("rm -rf"), "{said}");
    let log = std::fs::read_to_string(data.join("pgdr-recovery.log")).unwrap();
    assert!(log.contains(&seg) && log.contains("stopping recovery"), "{log}");
    assert!(
        !log.contains("selected new timeline"),
        "the server promoted past a damaged segment: {log}"
    );
}

/// Issue 25: a restored copy of a cluster with a subscription does not run it. Before,
/// the copy's apply worker started, took production's slot on the publisher when it
/// could, and applied production's changes into the copy.
#[test]
fn a_restored_copy_runs_no_subscription() {
    let publisher = Cluster::start_with(&["wal_level=logical"]);
    publisher.psql(
        "postgres",
        "CREATE TABLE feed (n int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE feed",
    );
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE feed (n int PRIMARY KEY)");
    c.psql(
        "postgres",
        &format!(
            "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres' PUBLICATION pub",
            publisher.port
        ),
    );
    publisher.psql("postgres", "INSERT INTO feed VALUES (1)");
    let wait_for = |port: u16, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = psql_at(port, "postgres", "SELECT count(*) FROM feed");
            if String::from_utf8_lossy(&out.stdout).trim() == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "feed never reached {want} rows on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for(c.port, "1");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    let copy = a.pgdr.restore_started(&[]);
    assert_eq!(copy.psql("postgres", "SHOW max_logical_replication_workers"), "0");
    // Production's subscription goes on; the copy applies nothing.
    publisher.psql("postgres", "INSERT INTO feed VALUES (2)");
    wait_for(c.port, "2");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM feed"), "1");
    assert_eq!(
        copy.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL"
        ),
        "0"
    );
    let log = std::fs::read_to_string(copy.data.join("pgdr-recovery.log")).unwrap_or_default();
    assert!(
        !log.contains("apply worker"),
        "the copy started an apply worker:\n{log}"
    );
}

/// Issue 25: paths in `pg_ctl -o` are quoted. A data directory and a socket directory
/// with a space in their names start (before, `-k /x/my sock` split in two and the
/// server did not start).
#[test]
fn a_restore_into_a_path_with_a_space_starts() {
    let a = Archiving::start();
    a.cluster
        .psql("postgres", "CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let data = dir.join("my data");
    let sock = pg_owned_dir(&dir.join("my sock"));
    let port = free_port();
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        data.to_str().unwrap(),
        "--start",
        "--port",
        &port.to_string(),
        "--socket-dir",
        sock.to_str().unwrap(),
    ]);
    let copy = Restored {
        dir,
        data,
        port,
        output: String::new(),
    };
    assert_success(&out, "pgdr restore into 'my data'");
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM t"), "500");
    assert!(
        sock.join(format!(".s.PGSQL.{port}")).exists(),
        "no socket in {}",
        sock.display()
    );
}

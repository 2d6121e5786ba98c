//! Regression tests for the paths to silent data loss closed by issue 8 (see
//! docs/TESTING.md for the table: defect, test, fix). Each runs the real binary
//! against real clusters, the real S3 server where storage is involved.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn markers_at(port: u16) -> String {
    let out = psql_at(
        port,
        "postgres",
        "SELECT coalesce(string_agg(m, ',' ORDER BY m), '') FROM markers",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Production with a backup and markers t1, t2 in separate segments; returns the
/// times between t1 and t2 and after t2.
fn production(kind: RepoKind) -> (Archiving, String, String) {
    let a = Archiving::start_with(kind);
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE markers (m text PRIMARY KEY)");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("postgres", "INSERT INTO markers VALUES ('t1')");
    a.switch_and_wait();
    sleep(1100);
    let between_1_2 = c.psql("postgres", "SELECT now()");
    sleep(1100);
    c.psql("postgres", "INSERT INTO markers VALUES ('t2')");
    a.switch_and_wait();
    sleep(1100);
    let after_2 = c.psql("postgres", "SELECT now()");
    (a, between_1_2, after_2)
}

/// Item 1: two PITR test restores, started and used, then `--target latest` must
/// return every committed row: a restored copy does not archive by default.
fn test_restores_leave_latest_alone(kind: RepoKind) {
    let (a, between_1_2, after_2) = production(kind);
    let _ = after_2;
    for target in [["--target-time", between_1_2.as_str()], ["--target", "immediate"]] {
        let r = a.pgdr.restore_started(&target);
        assert!(
            r.output.contains("archiving is off in the restored copy"),
            "{}",
            r.output
        );
        assert_eq!(r.psql("postgres", "SHOW archive_mode"), "off");
        // The copy is used like a real test copy: writes, a segment switch.
        r.psql("postgres", "INSERT INTO markers VALUES ('written in the test copy')");
        r.psql("postgres", "SELECT pg_switch_wal()");
        r.psql("postgres", "CHECKPOINT");
        sleep(500);
        r.stop();
    }
    a.cluster.psql("postgres", "INSERT INTO markers VALUES ('t3')");
    a.switch_and_wait();
    let r = a.pgdr.restore_started(&["--target", "latest"]);
    assert_eq!(markers_at(r.port), "t1,t2,t3", "latest lost production's rows");
    assert!(r.output.contains("following timeline 1"), "{}", r.output);
}

#[test]
fn item1_test_restores_leave_latest_alone_local() {
    test_restores_leave_latest_alone(RepoKind::Local);
}

#[test]
fn item1_test_restores_leave_latest_alone_s3() {
    test_restores_leave_latest_alone(RepoKind::S3);
}

/// Item 1: a copy that did archive its timeline (pgdr before this fix, or a DBA who
/// turned archiving back on) forked off an older point; `latest` names that fork
/// and follows production's timeline, and `check` warns about it.
#[test]
fn item1_latest_is_not_led_astray_by_a_forked_timeline() {
    let (a, between_1_2, _) = production(RepoKind::Local);
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let data = dir.join("data");
    let sock = pg_owned_dir(&dir.join("sock"));
    a.pgdr.ok(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        data.to_str().unwrap(),
        "--target-time",
        &between_1_2,
    ]);
    // What the copy looked like before the fix: the source's archiving left on.
    let auto = data.join("postgresql.auto.conf");
    let conf = std::fs::read_to_string(&auto).unwrap();
    assert!(conf.contains("archive_mode = 'off'"), "{conf}");
    std::fs::write(&auto, conf.replace("archive_mode = 'off'", "archive_mode = 'on'")).unwrap();
    chown_postgres(&auto);
    let port = free_port();
    let log = dir.join("copy.log");
    assert!(
        pg_ctl_start(&data, port, &sock, &log, &[]),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    wait_promoted(port, &log);
    assert_eq!(markers_at(port), "t1");
    psql_at(port, "postgres", "INSERT INTO markers VALUES ('copy')");
    let seg =
        String::from_utf8_lossy(&psql_at(port, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())").stdout)
            .trim()
            .to_string();
    psql_at(port, "postgres", "SELECT pg_switch_wal()");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = psql_at(
            port,
            "postgres",
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        );
        if String::from_utf8_lossy(&out.stdout).trim() >= seg.as_str() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy did not archive {seg}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        sleep(100);
    }
    pg_ctl_stop(&data);
    assert!(
        a.pgdr
            .repo_dir
            .as_ref()
            .unwrap()
            .join("test/wal/00000002.history")
            .exists(),
        "the copy's timeline is not in the archive, so this test tests nothing"
    );

    a.cluster.psql("postgres", "INSERT INTO markers VALUES ('t3')");
    a.switch_and_wait();
    let check = a.pgdr.run(&["check"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("timelines:") && stdout.contains("not following timeline 2"),
        "{stdout}"
    );
    let r = a.pgdr.restore_started(&["--target", "latest"]);
    assert_eq!(markers_at(r.port), "t1,t2,t3", "latest followed the copy's timeline");
    assert!(r.output.contains("not following timeline 2"), "{}", r.output);
    assert!(r.output.contains("timeline 3"), "{}", r.output);
    drop(r);
    // Asked for by name, the fork is still there to follow.
    let r = a
        .pgdr
        .restore_started(&["--target", "latest", "--target-timeline", "2"]);
    assert_eq!(markers_at(r.port), "copy,t1");
}

/// Item 1: a copy restored with `--archive` is the new primary: it archives its new
/// timeline and `latest` follows it, even though the old timeline went on.
#[test]
fn item1_archive_declares_a_new_primary() {
    let (a, between_1_2, _) = production(RepoKind::Local);
    let first = a.pgdr.restore_started_archiving(&["--target-time", &between_1_2]);
    assert!(first.output.contains("archiving stays on"), "{}", first.output);
    first.psql("postgres", "INSERT INTO markers VALUES ('new-primary')");
    let seg = first.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    first.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < seg
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new primary did not archive {seg}"
        );
        sleep(100);
    }
    // The marker is single use: declared once, it is gone, so a backup of this
    // server (or a later promotion of it) carries no declaration along.
    assert!(
        !first.data.join("pgdr-new-primary").exists(),
        "the new-primary marker outlived its declaration"
    );
    first.stop();
    let r = a.pgdr.restore_started(&["--target", "latest"]);
    assert_eq!(markers_at(r.port), "new-primary,t1");
    assert!(r.output.contains("declared the new primary"), "{}", r.output);
    drop(r);

    // The old primary went on (a split brain) and was backed up after the branch.
    // From that backup the declared timeline cannot be reached (it branched before
    // the backup), and following timeline 1 would replay what was abandoned: the
    // restore refuses and names both ways out, instead of either silently.
    let first_backup = a.pgdr.list_json()[0]["label"].as_str().unwrap().to_string();
    a.cluster.psql("postgres", "INSERT INTO markers VALUES ('t3')");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.cluster.psql("postgres", "INSERT INTO markers VALUES ('t4')");
    a.switch_and_wait();
    let dir = TestDir::new();
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        dir.join("data").to_str().unwrap(),
    ]);
    let err = assert_fails(&out, 2, "declared the new primary");
    assert!(err.contains("--backup") && err.contains("--target-timeline 1"), "{err}");
    assert!(!dir.join("data").exists());
    let r = a
        .pgdr
        .restore_started(&["--target", "latest", "--target-timeline", "1"]);
    assert_eq!(markers_at(r.port), "t1,t2,t3,t4");
    drop(r);
    let r = a
        .pgdr
        .restore_started(&["--target", "latest", "--backup", &first_backup]);
    assert_eq!(markers_at(r.port), "new-primary,t1");
}

/// Review of item 1: a timeline history that cannot be read is not skipped (which
/// would silently follow its parent past a real promotion): the restore fails and
/// names it, and naming the timeline still restores.
#[test]
fn item1_damaged_history_fails_loudly() {
    let (a, _, _) = production(RepoKind::Local);
    let wal = a.pgdr.repo_dir.as_ref().unwrap().join("test/wal");
    std::fs::write(wal.join("00000003.history"), b"not a sealed object").unwrap();
    let dir = TestDir::new();
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        dir.join("data").to_str().unwrap(),
    ]);
    let err = assert_fails(&out, 1, "00000003.history");
    assert!(err.contains("timeline 3") && err.contains("--target-timeline"), "{err}");
    assert!(!dir.join("data").exists(), "a refused restore wrote files");
    let out = a.pgdr.run(&["check"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("00000003.history"),
        "check did not report the damaged history: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = a
        .pgdr
        .restore_started(&["--target", "latest", "--target-timeline", "1"]);
    assert_eq!(markers_at(r.port), "t1,t2");
}

/// Review of item 3: `PGDR_*` overrides that point the restore at another archive
/// than the configuration file are refused (the server's wal-fetch reads only the
/// file); a wal-fetch whose repository belongs to another system stops recovery.
#[test]
fn item3_overrides_and_foreign_repositories_stop_recovery() {
    let (a, _, _) = production(RepoKind::Local);
    let dir = TestDir::new();
    let out = a
        .pgdr
        .command(&[
            "restore",
            "--kind",
            "physical",
            "--to",
            dir.join("data").to_str().unwrap(),
        ])
        .env("PGDR_CLUSTER", "elsewhere")
        .output()
        .unwrap();
    let err = assert_fails(&out, 2, "cluster");
    assert!(err.contains("PGDR_"), "{err}");
    assert!(!dir.join("data").exists());

    // A data directory of another cluster asks this repository for WAL.
    let other = Cluster::init();
    let data = a.pgdr.dir.join("foreign");
    std::fs::create_dir_all(data.join("global")).unwrap();
    std::fs::create_dir_all(data.join("pg_wal")).unwrap();
    std::fs::copy(other.data.join("global/pg_control"), data.join("global/pg_control")).unwrap();
    for p in ["", "global", "global/pg_control", "pg_wal"] {
        chown_postgres(&data.join(p));
    }
    let dest = data.join("pg_wal/RECOVERYXLOG");
    let out = a
        .pgdr
        .run(&["wal-fetch", "0000000100000000000000F0", dest.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(126),
        "another system's repository read as the end of the archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to system"));
}

/// Review of item 3: a standby started with `--start` is caught up by replay, not
/// stopped: "recovery stopped short" is for recoveries that end.
#[test]
fn item3_started_standby_is_not_stopped_short() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE markers (m text PRIMARY KEY)");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    for i in 0..30 {
        c.psql("postgres", &format!("INSERT INTO markers VALUES ('m{i:02}')"));
        c.psql("postgres", "SELECT pg_switch_wal()");
    }
    a.switch_and_wait();
    let r = a.pgdr.restore_started(&["--standby"]);
    assert!(r.output.contains("running as a standby"), "{}", r.output);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while r.psql("postgres", "SELECT count(*) FROM markers") != "30" {
        assert!(std::time::Instant::now() < deadline, "the standby did not catch up");
        sleep(200);
    }
}

/// Rewrite a key of the config file's [wal] section (append under the header).
fn set_wal_setting(config: &Path, line: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, text.replacen("[wal]\n", &format!("[wal]\n{line}\n"), 1)).unwrap();
}

/// Item 3: an archive that does not answer mid-recovery must stop the recovery, not
/// read as the end of the archive: before the fix the copy promoted at the end of the
/// backup, forking a timeline without t1 and t2.
#[test]
fn item3_unreachable_archive_stops_recovery_instead_of_promoting() {
    let (a, _, _) = production(RepoKind::S3);
    let copy = a.pgdr.clone_setup();
    chown_postgres(copy.dir.path());
    chown_postgres(&copy.config);
    set_wal_setting(&copy.config, "fetch_retry_seconds = 2\nprefetch = 0");
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let data = dir.join("data");
    let sock = pg_owned_dir(&dir.join("sock"));
    copy.ok(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        data.to_str().unwrap(),
        "--target",
        "latest",
    ]);
    // Now the archive goes away: nothing listens at the endpoint any more.
    let good = std::fs::read_to_string(&copy.config).unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&copy.config, good.replace(&s3().endpoint(), &dead)).unwrap();
    let port = free_port();
    let log = dir.join("copy.log");
    // The server needs the S3 credentials for wal-fetch, as production has them.
    let creds = [
        ("AWS_ACCESS_KEY_ID", TEST_AWS_KEY),
        ("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET),
    ];
    let started = pg_ctl_start(&data, port, &sock, &log, &creds);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if started {
        pg_ctl_stop(&data);
    }
    assert!(!started, "the server came up without its archive: {text}");
    assert!(
        !text.contains("selected new timeline"),
        "recovery promoted with the archive unreachable: {text}"
    );
    assert!(text.contains("stopping recovery"), "{text}");

    // The archive is back: the same directory recovers everything.
    std::fs::write(&copy.config, &good).unwrap();
    assert!(
        pg_ctl_start(&data, port, &sock, &log, &creds),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    wait_promoted(port, &log);
    assert_eq!(markers_at(port), "t1,t2");
    pg_ctl_stop(&data);
}

/// Item 3, the contract itself: absent → 1; unreachable → 126, or 1 on a standby;
/// a local repository whose directory is gone is unreachable, not empty.
#[test]
fn item3_wal_fetch_exit_codes() {
    let a = Archiving::start();
    let wal_dir = a.pgdr.dir.join("data/pg_wal");
    std::fs::create_dir_all(&wal_dir).unwrap();
    chown_postgres(&a.pgdr.dir.join("data"));
    chown_postgres(&wal_dir);
    set_wal_setting(&a.pgdr.config, "fetch_retry_seconds = 1");
    let dest = wal_dir.join("RECOVERYXLOG");
    let fetch = |pgdr: &Pgdr| pgdr.run(&["wal-fetch", "0000000100000000000000F0", dest.to_str().unwrap()]);
    let out = fetch(&a.pgdr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "absent: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let repo = a.pgdr.repo_dir.clone().unwrap();
    let moved = repo.with_extension("unmounted");
    std::fs::rename(&repo, &moved).unwrap();
    let out = fetch(&a.pgdr);
    assert_clean_stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(126),
        "a missing repository read as the end of the archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopping recovery"));
    std::fs::write(a.pgdr.dir.join("data/standby.signal"), b"").unwrap();
    let out = fetch(&a.pgdr);
    assert_eq!(out.status.code(), Some(1), "a standby asks again later");
    assert!(String::from_utf8_lossy(&out.stderr).contains("standby will ask again"));
    std::fs::rename(&moved, &repo).unwrap();
    assert!(!dest.exists());

    // Failures before wal-fetch's own code runs (a configuration that does not load,
    // arguments it does not know) must stop recovery too, not end it as complete.
    std::fs::remove_file(a.pgdr.dir.join("data/standby.signal")).unwrap();
    let broken = a.pgdr.dir.join("broken.toml");
    std::fs::write(&broken, "[repository\n").unwrap();
    let out = a
        .pgdr
        .command(&["wal-fetch", "0000000100000000000000F0", dest.to_str().unwrap()])
        .env("PGDR_CONFIG", &broken)
        .output()
        .unwrap();
    assert_clean_stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(126),
        "a broken configuration read as the end of the archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.pgdr.run(&[
        "wal-fetch",
        "--no-such-flag",
        "0000000100000000000000F0",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(a.pgdr.dir.join("data/standby.signal"), b"").unwrap();
    let out = a
        .pgdr
        .command(&["wal-fetch", "0000000100000000000000F0", dest.to_str().unwrap()])
        .env("PGDR_CONFIG", &broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a standby asks again later");
    // Only the wal-fetch command gets that contract, not any argument spelled so.
    let out = a.pgdr.run(&["cat", "wal-fetch"]);
    assert_fails(&out, 2, "wal-fetch");
}

/// Item 2: hostile or damaged names and objects never panic, and one damaged
/// manifest does not hide the other backups.
#[test]
fn item2_hostile_keys_and_damaged_manifests_do_not_panic() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.pgdr.ok(&["backup", "--kind", "logical"]);
    sleep(1100);
    a.pgdr.ok(&["backup", "--kind", "logical"]);
    let list = a.pgdr.list_json();
    let labels: Vec<String> = list.iter().map(|b| b["label"].as_str().unwrap().to_string()).collect();
    assert_eq!(labels.len(), 3);
    let (newest, good) = (&labels[0], &labels[1]);

    // On the command line: trailing slashes, non-ASCII labels.
    for key in [
        format!("{newest}/"),
        format!("backups/{newest}/"),
        "backups/".into(),
        "/".into(),
    ] {
        let out = a.pgdr.run(&["cat", &key]);
        assert_fails(&out, 2, "");
    }
    for label in ["2026112€T0200Z-L", "20261126T020000ü-L", "€"] {
        let out = a.pgdr.run(&["restore", "--backup", label, "--to-database", "x"]);
        assert_fails(&out, 2, "not a backup label");
        let out = a.pgdr.run(&["cat", &format!("{label}/manifest.json")]);
        assert_clean_stderr(&out);
        assert_eq!(out.status.code(), Some(2));
    }

    // In the bucket: a non-ASCII label, a stray far-away segment, a damaged manifest.
    let area = a.pgdr.repo_dir.as_ref().unwrap().join("test");
    std::fs::create_dir_all(area.join("backups/2026112€T0200Z-L")).unwrap();
    std::fs::write(area.join("backups/2026112€T0200Z-L/manifest.json"), b"junk").unwrap();
    std::fs::create_dir_all(area.join("wal/00000001FFFFFFFF")).unwrap();
    std::fs::write(area.join("wal/00000001FFFFFFFF/00000001FFFFFFFF000000FF"), b"junk").unwrap();
    std::fs::create_dir_all(area.join("wal/ünknown")).unwrap();
    std::fs::write(area.join("wal/ünknown/x"), b"junk").unwrap();
    let manifest = area.join(format!("backups/{newest}/manifest.json"));
    let mut bytes = std::fs::read(&manifest).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x01;
    std::fs::write(&manifest, &bytes).unwrap();

    let out = a.pgdr.run(&["list"]);
    assert_clean_stderr(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("DAMAGED {newest}")), "{stdout}");
    assert!(stdout.contains(good.as_str()), "{stdout}");
    for args in [vec!["expire", "--dry-run"], vec!["metrics"], vec!["check"]] {
        let out = a.pgdr.run(&args);
        assert_clean_stderr(&out);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "pgdr {args:?}: {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The far-away segment is a gap past the real ones, reported by name.
    let check = String::from_utf8_lossy(&a.pgdr.run(&["check"]).stdout).into_owned();
    assert!(check.contains("00000001FFFFFFFF000000FE"), "{check}");
    // The good backup still restores, its rows all there.
    a.pgdr.ok(&[
        "restore",
        "--backup",
        good,
        "--database",
        "postgres",
        "--to-database",
        "back",
    ]);
    assert_eq!(c.psql("back", "SELECT count(*), sum(g) FROM t"), "1000|500500");
    let out = a.pgdr.run(&[
        "restore",
        "--backup",
        newest,
        "--database",
        "postgres",
        "--to-database",
        "never",
    ]);
    assert_clean_stderr(&out);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is damaged") && stderr.contains(newest.as_str()),
        "{stderr}"
    );
}

/// Item 8: a target database name that looks like a connection string is a name.
/// Before the fix `dbname=victim` with --clean restored over the database `victim`.
#[test]
fn item8_database_names_are_never_connection_strings() {
    let c = Cluster::start();
    c.psql("postgres", "CREATE DATABASE app");
    c.psql("app", "CREATE TABLE t (x text); INSERT INTO t VALUES ('from app')");
    c.psql("postgres", "CREATE DATABASE victim");
    c.psql(
        "victim",
        "CREATE TABLE t (x text); INSERT INTO t VALUES ('victim data')",
    );
    let before = c.content_hashes("victim");
    let pgdr = Pgdr::new(&c, RepoKind::Local);
    pgdr.ok(&["backup", "--kind", "logical", "-d", "app"]);
    for name in ["dbname=victim", "host=localhost port=1 dbname=victim"] {
        pgdr.ok(&["restore", "--database", "app", "--to-database", name, "--clean"]);
        let exists = c.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                name.replace('\'', "''")
            ),
        );
        assert_eq!(exists, "1", "no database literally named {name:?}");
        assert_eq!(c.psql(&format!("dbname='{name}'"), "SELECT x FROM t"), "from app");
    }
    assert_eq!(c.content_hashes("victim"), before, "the database victim was replaced");
}

/// Item 9: the spool is private to the cluster (inside its pg_wal, 0700), a planted
/// pusher lock naming another process does not stall wal-push, and a spool directory
/// others may write to is refused.
#[test]
fn item9_spool_is_private_and_planted_locks_are_ignored() {
    let a = Archiving::start();
    let seg = a.switch_and_wait();
    // No spool_dir: the default.
    let text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("spool_dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&a.pgdr.config, &without).unwrap();
    let fake = a.pgdr.dir.join("fake");
    let wal = fake.join("pg_wal");
    std::fs::create_dir_all(wal.join("archive_status")).unwrap();
    for d in [&fake, &wal, &wal.join("archive_status")] {
        chown_postgres(d);
    }
    let file = wal.join(&seg);
    a.pgdr.ok(&["wal-fetch", &seg, file.to_str().unwrap()]);
    // A live process of the postgres user that is not pgdr's pusher (the postmaster,
    // whose pid anyone can read), named in a planted lock.
    let postmaster = std::fs::read_to_string(a.cluster.data.join("postmaster.pid")).unwrap();
    let postmaster = postmaster.lines().next().unwrap().trim().to_string();
    let spool = wal.join(".pgdr-spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("pusher.pid"), &postmaster).unwrap();
    chown_postgres(&spool);
    chown_postgres(&spool.join("pusher.pid"));
    let out = a.pgdr.run(&["wal-push", file.to_str().unwrap()]);
    assert_success(&out, "wal-push with a planted pusher lock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not pgdr's pusher"), "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::remove_dir_all(&spool).unwrap();
    a.pgdr.ok(&["wal-push", file.to_str().unwrap()]);
    let mode = std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the spool pgdr made has mode {mode:o}");

    // A configured spool that others may write to is refused, one line.
    let open_spool = a.pgdr.dir.join("open-spool");
    std::fs::create_dir(&open_spool).unwrap();
    chown_postgres(&open_spool);
    std::fs::set_permissions(&open_spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(
        &a.pgdr.config,
        without.replacen(
            "[wal]\n",
            &format!("[wal]\nspool_dir = \"{}\"\n", open_spool.display()),
            1,
        ),
    )
    .unwrap();
    // ... but archiving goes on: the file is stored by this call itself, without the
    // spool (review of item 9: refusing made every archive_command fail).
    let stored = repo_files(&a.pgdr.repo_dir.clone().unwrap())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == seg.as_str()))
        .expect("the segment is archived");
    std::fs::remove_file(&stored).unwrap();
    let out = a.pgdr.run(&["wal-push", file.to_str().unwrap()]);
    assert_success(&out, "wal-push with a spool others may write to");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("chmod 700") && stderr.contains("without the spool"),
        "{stderr}"
    );
    assert!(stored.exists(), "the segment was not stored again");
    assert!(
        std::fs::read_dir(&open_spool).unwrap().next().is_none(),
        "pgdr wrote into a spool others may write to"
    );
}

/// Item 4: backups started at the same moment each get their own label and all
/// of them restore; before the fix they collided on a one-second label and the
/// loser's clean-up deleted the winner's manifest.
#[test]
fn item4_concurrent_backups_do_not_collide() {
    let c = Cluster::start();
    c.psql("postgres", "CREATE DATABASE app");
    c.psql("app", "CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g");
    let pgdr = Pgdr::new(&c, RepoKind::Local);
    let children: Vec<_> = (0..3)
        .map(|_| {
            pgdr.command(&["backup", "--kind", "logical", "-d", "app"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_success(&out, "a concurrent backup");
    }
    let list = pgdr.list_json();
    assert_eq!(list.len(), 3, "{list:?}");
    for (i, b) in list.iter().enumerate() {
        let to = format!("copy{i}");
        pgdr.ok(&[
            "restore",
            "--backup",
            b["label"].as_str().unwrap(),
            "--to-database",
            &to,
        ]);
        assert_eq!(c.psql(&to, "SELECT count(*), sum(g) FROM t"), "5000|12502500");
    }
}

/// Item 5: `check --clean-orphans` leaves a running backup alone however old its
/// objects look (before the fix: anything over an hour old went), and removes the
/// objects of one that died.
/// Stall pg_dump behind a table lock on app.t (after globals.sql is stored); the
/// lock is held until the returned psql gets COMMIT.
fn hold_table_lock(c: &Cluster) -> std::process::Child {
    use std::io::Write;
    let mut psql = std::process::Command::new(pg_bin().join("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &c.port.to_string(),
            "-d",
            "app",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    psql.stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;\n")
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c.psql(
        "app",
        "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 't'::regclass",
    ) != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the table lock was not taken");
        sleep(50);
    }
    psql
}

fn release_table_lock(mut psql: std::process::Child) {
    use std::io::Write;
    psql.stdin.as_mut().unwrap().write_all(b"COMMIT;\n").unwrap();
    drop(psql.stdin.take());
    let _ = psql.wait();
}

/// Wait until `n` sessions wait for a lock (backups stalled behind the table lock).
fn wait_lock_waiters(c: &Cluster, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while c
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .parse::<usize>()
        .unwrap()
        < n
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} backups did not reach the table lock: {}",
            c.psql(
                "postgres",
                "SELECT string_agg(format('%s %s %s', application_name, wait_event_type, query), '; ') FROM pg_stat_activity"
            )
        );
        sleep(50);
    }
}

/// Review of item 4: a backup whose lease lapsed and was taken by another backup
/// must not commit (its label is no longer its own); the other one does.
#[test]
fn item4_a_backup_that_lost_its_lock_does_not_commit() {
    let c = Cluster::start();
    c.psql("postgres", "CREATE DATABASE app");
    c.psql("app", "CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g");
    let pgdr = Pgdr::new(&c, RepoKind::Local);
    let lease = pgdr.repo_dir.clone().unwrap().join("test/locks/backup");
    let lock = hold_table_lock(&c);
    let spawn = || {
        pgdr.command(&["backup", "--kind", "logical", "-d", "app", "--lock-wait", "5"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    wait_lock_waiters(&c, 1);
    assert!(
        lease.exists(),
        "the running backup holds no lease at {}",
        lease.display()
    );
    // The first backup's lease lapses (the repository was unreachable for minutes,
    // say) and a second backup takes the lock.
    std::fs::remove_file(&lease).unwrap();
    let second = spawn();
    wait_lock_waiters(&c, 2);
    release_table_lock(lock);
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert_success(&second, "the backup that holds the lock");
    let err = assert_fails(&first, 1, "not committing");
    assert!(err.contains("backup lock"), "{err}");
    let list = pgdr.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    pgdr.ok(&["restore", "--backup", "latest", "--to-database", "back"]);
    assert_eq!(c.psql("back", "SELECT count(*), sum(g) FROM t"), "5000|12502500");
}

#[test]
fn item5_orphan_cleanup_honours_the_backup_lock() {
    let c = Cluster::start();
    c.psql("postgres", "CREATE DATABASE app");
    c.psql("app", "CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g");
    let pgdr = Pgdr::new(&c, RepoKind::Local);
    let repo = pgdr.repo_dir.clone().unwrap().join("test/backups");
    let hold_lock = || hold_table_lock(&c);
    let wait_stalled = || wait_lock_waiters(&c, 1);
    let lock = hold_lock();
    let backup = pgdr
        .command(&["backup", "--kind", "logical", "-d", "app"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_stalled();
    // Make the running backup's objects look two hours old.
    for f in repo_files(&repo) {
        let status = std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(&f)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let before = repo_files(&repo);
    assert!(!before.is_empty());
    let out = pgdr.run(&["check", "--clean-orphans"]);
    assert_clean_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("left alone") && stdout.contains("a backup is running"),
        "{stdout}"
    );
    assert_eq!(repo_files(&repo), before, "check removed a running backup's objects");
    release_table_lock(lock);
    let out = backup.wait_with_output().unwrap();
    assert_success(&out, "the stalled backup");
    pgdr.ok(&["restore", "--backup", "latest", "--to-database", "back"]);
    assert_eq!(c.psql("back", "SELECT count(*), sum(g) FROM t"), "5000|12502500");

    // A backup killed mid-way leaves an orphan and a lease of a dead process: the
    // orphan is removed at once, without waiting an hour or for the lease to expire.
    let lock = hold_lock();
    let mut backup = pgdr
        .command(&["backup", "--kind", "logical", "-d", "app"])
        .spawn()
        .unwrap();
    wait_stalled();
    backup.kill().unwrap();
    let _ = backup.wait();
    release_table_lock(lock);
    let out = pgdr.run(&["check", "--clean-orphans"]);
    assert_clean_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("removed 1 orphaned backup"), "{stdout}");
    assert_eq!(pgdr.list_json().len(), 1);
    let labels: std::collections::BTreeSet<_> = repo_files(&repo)
        .iter()
        .filter_map(|p| {
            p.strip_prefix(&repo)
                .ok()?
                .components()
                .next()
                .map(|c| c.as_os_str().to_owned())
        })
        .collect();
    assert_eq!(labels.len(), 1, "{labels:?}");
}

/// Rewrite a backup's manifest in a local repository, sealed with the repository key
/// as pgdr itself would (the repository is untrusted input: this is what an attacker
/// with the key, or a damaged writer, could leave there).
fn rewrite_manifest(pgdr: &Pgdr, label: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut manifest: serde_json::Value =
        serde_json::from_str(&pgdr.ok(&["cat", &format!("{label}/manifest.json")])).unwrap();
    edit(&mut manifest);
    let data = serde_json::to_vec(&manifest).unwrap();
    let config = pgdr::config::Config::load(Some(&pgdr.config)).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = pgdr::storage::open(&config.repository, &config.cluster).await.unwrap();
        let keys = pgdr::repo::bound_keyring(&config, &storage).await.unwrap();
        let store = pgdr::pipeline::Store {
            storage: &storage,
            keys: &keys,
            compression: pgdr::pipeline::Compression { level: 3, threads: 1 },
            digests: pgdr::pipeline::Digests::Both,
        };
        let key = pgdr::storage::ObjectKey::new(format!("backups/{label}/manifest.json")).unwrap();
        store
            .bytes(&key, "manifest.json", data, pgdr::storage::PutMode::Overwrite)
            .await
            .unwrap();
    });
}

/// Item 6: a delta restore never writes into a running server's directory, nor into
/// an unmapped (live) tablespace; manifest paths outside the target are refused before
/// anything is written; restored modes carry no setuid bits.
#[test]
fn item6_restores_stay_inside_their_target() {
    let a = Archiving::start();
    let c = &a.cluster;
    let ts_dir = pg_owned_dir(&a.pgdr.dir.join("ts"));
    c.psql(
        "postgres",
        &format!("CREATE TABLESPACE live LOCATION '{}'", ts_dir.display()),
    );
    c.psql(
        "postgres",
        "CREATE TABLE far (x int) TABLESPACE live; INSERT INTO far SELECT generate_series(1, 1000)",
    );
    let oid = c.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'live'");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let label = a.pgdr.list_json()[0]["label"].as_str().unwrap().to_string();
    let live_before = repo_files(&ts_dir);

    // Delta into a new directory, tablespace not mapped: the live one is refused.
    let target = a.pgdr.dir.join("delta-target");
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        target.to_str().unwrap(),
        "--delta",
    ]);
    assert_fails(&out, 2, "--tablespace-map");
    assert_eq!(repo_files(&ts_dir), live_before, "the live tablespace was written");

    // A running copy: delta over it is refused.
    let mapped = pg_owned_dir(&a.pgdr.dir.join("ts-copy"));
    let map = format!("{oid}={}", mapped.display());
    let r = a
        .pgdr
        .restore_started(&["--target", "immediate", "--tablespace-map", &map]);
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        r.data.to_str().unwrap(),
        "--delta",
        "--tablespace-map",
        &map,
    ]);
    assert_fails(&out, 2, "running server");
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM far"), "1000");
    drop(r);

    // A manifest naming a path outside the target: refused, nothing written.
    let escape = a.pgdr.dir.join("escaped");
    rewrite_manifest(&a.pgdr, &label, |m| {
        let files = m["physical"]["files"].as_array_mut().unwrap();
        let mut evil = files[0].clone();
        evil["path"] = serde_json::json!("../escaped");
        files.push(evil);
    });
    let target = a.pgdr.dir.join("hostile");
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--to",
        target.to_str().unwrap(),
        "--tablespace-map",
        &format!("{oid}={}", a.pgdr.dir.join("ts-hostile").display()),
    ]);
    assert_fails(&out, 1, "outside the data directory");
    assert!(!target.exists() && !escape.exists(), "a hostile manifest wrote files");

    // setuid asked for by the manifest is not granted.
    rewrite_manifest(&a.pgdr, &label, |m| {
        let files = m["physical"]["files"].as_array_mut().unwrap();
        files.retain(|f| f["path"] != "../escaped");
        for f in files.iter_mut().filter(|f| f["path"] == "PG_VERSION") {
            f["mode"] = serde_json::json!(0o4755);
        }
    });
    let ts3 = pg_owned_dir(&a.pgdr.dir.join("ts-3"));
    let r = a.pgdr.restore_started(&[
        "--target",
        "immediate",
        "--tablespace-map",
        &format!("{oid}={}", ts3.display()),
    ]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(r.data.join("PG_VERSION"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "PG_VERSION restored with mode {mode:o}");
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM far"), "1000");
}

/// Item 7: secrets in the environment do not reach a restored server's
/// configuration or argv, and verify's scratch cluster listens on no TCP address and
/// was started without the repository key or a password in its environment.
#[test]
fn item7_secrets_stay_out_of_restored_and_scratch_servers() {
    let mut a = Archiving::start();
    a.cluster
        .psql("postgres", "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    let key_hex = std::fs::read_to_string(&a.pgdr.key_file).unwrap().trim().to_string();
    let secret_url = format!(
        "postgresql://postgres:hunter2-secret@127.0.0.1:{}/postgres",
        a.cluster.port
    );
    a.pgdr.set_env("PGDR_POSTGRES_URL", &secret_url);
    a.pgdr.set_env(
        "PGDR_NOTIFY_WEBHOOK_URL",
        "https://hooks.example.invalid/T000/secret-hook",
    );
    a.pgdr.set_env("PGDR_KEY", &key_hex);
    let r = a.pgdr.restore_started(&["--target", "immediate"]);
    let auto = std::fs::read_to_string(r.data.join("postgresql.auto.conf")).unwrap();
    for secret in ["hunter2-secret", "secret-hook", key_hex.as_str(), "PGDR_"] {
        assert!(!auto.contains(secret), "{secret:?} in postgresql.auto.conf:\n{auto}");
    }
    assert_eq!(r.psql("postgres", "SHOW listen_addresses"), "127.0.0.1");
    // The restored server's own environment (a backend inherits the postmaster's).
    let environ = r.psql(
        "postgres",
        "SELECT encode(pg_read_binary_file('/proc/self/environ'), 'escape')",
    );
    for secret in ["hunter2-secret", "secret-hook", key_hex.as_str(), TEST_AWS_SECRET] {
        assert!(
            !environ.contains(secret),
            "{secret:?} in the restored server's environment"
        );
    }
    drop(r);

    // verify: the checks run inside the scratch cluster and look at it from within.
    let config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    std::fs::write(
        &a.pgdr.config,
        format!(
            "{config}\n[[verify.check]]\nname = \"no tcp\"\nsql = \"SELECT current_setting('listen_addresses')\"\nexpect = \"\"\n\
             [[verify.check]]\nname = \"no key\"\nsql = \"SELECT position(convert_to('PGDR_KEY=', 'UTF8') in pg_read_binary_file('/proc/self/environ')) = 0 AND position(convert_to('hunter2', 'UTF8') in pg_read_binary_file('/proc/self/environ')) = 0 AND position(convert_to('{TEST_AWS_SECRET}', 'UTF8') in pg_read_binary_file('/proc/self/environ')) = 0\"\nexpect = \"t\"\n"
        ),
    )
    .unwrap();
    let out = a.pgdr.ok(&["verify", "--kind", "physical", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    let steps = report["steps"].to_string();
    assert!(steps.contains("no tcp") && steps.contains("no key"), "{report:#}");
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Item 10: objects are bound to the repository's identity (cluster name and system
/// identifier, formats 2 and 3): a backup copied into another cluster's area that shares the
/// key no longer authenticates there. Repositories written before (format 1) still
/// read: a fixture made by the pgdr of 2026-12-01 lists and restores.
#[test]
fn item10_objects_are_bound_to_their_repository() {
    let c1 = Cluster::start();
    c1.psql("postgres", "CREATE TABLE t AS SELECT g FROM generate_series(1, 300) g");
    let a = Pgdr::new(&c1, RepoKind::Local);
    a.ok(&["backup", "--kind", "logical", "-d", "postgres"]);
    let label = a.list_json()[0]["label"].as_str().unwrap().to_string();
    let root = a.repo_dir.clone().unwrap();
    let manifest = std::fs::read(root.join(format!("test/backups/{label}/manifest.json"))).unwrap();
    assert_eq!(&manifest[..5], b"PGDR\x03", "new objects are format 3");

    // A second cluster, its own area in the same repository, the same key.
    let c2 = Cluster::start();
    let b = a.clone_setup();
    let text = std::fs::read_to_string(&b.config).unwrap();
    std::fs::write(
        &b.config,
        text.replace("cluster = \"test\"", "cluster = \"other\"")
            .replace(&c1.url("postgres"), &c2.url("postgres")),
    )
    .unwrap();
    b.ok(&["init"]);
    copy_tree(
        &root.join(format!("test/backups/{label}")),
        &root.join(format!("other/backups/{label}")),
    );
    let out = b.run(&["list"]);
    assert_clean_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("DAMAGED {label}")),
        "a copied-in backup authenticated:\n{stdout}"
    );
    let out = b.run(&[
        "restore",
        "--backup",
        &label,
        "--database",
        "postgres",
        "--to-database",
        "copied",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        c2.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'copied'"),
        "0"
    );

    // The format-1 fixture.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    let dir = TestDir::new();
    copy_tree(&fixture.join("repo"), &dir.join("repo"));
    let key = dir.join("repo.key");
    std::fs::copy(fixture.join("repo.key"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("pgdr.toml");
    std::fs::write(
        &config,
        format!(
            "cluster = \"fixture\"\n[postgres]\nurl = \"{}\"\nbin_dir = \"{}\"\n[repository]\nurl = \"file://{}\"\nkey_file = \"{}\"\n",
            c2.url("postgres"),
            pg_bin().display(),
            dir.join("repo").display(),
            key.display()
        ),
    )
    .unwrap();
    let mut old = b.clone_setup();
    old.config = config;
    let list = old.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    old.ok(&["restore", "--database", "app", "--to-database", "app_back"]);
    let want = std::fs::read_to_string(fixture.join("app.t.hash")).unwrap();
    assert_eq!(c2.content_hashes("app_back")[0], format!("public.t={}", want.trim()));
}

/// Review of item 7: `restore --start` watches the server where it listens (not always
/// 127.0.0.1, which would wait 24 h for a copy on another address), and a server that
/// refuses pgdr's login ends the wait at once with one line, not a 24-hour loop.
#[test]
fn item7_started_copies_are_watched_where_they_listen() {
    let (a, _, _) = production(RepoKind::Local);
    let start = |extra: &[&str], env: &[(&str, String)]| {
        let dir = TestDir::new();
        chown_postgres(dir.path());
        let data = dir.join("data");
        let port = free_port();
        let mut args = vec![
            "restore".to_string(),
            "--kind".into(),
            "physical".into(),
            "--to".into(),
            data.display().to_string(),
            "--start".into(),
            "--port".into(),
            port.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = a.pgdr.command(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        (output_within(&mut cmd, 180), dir, data, port)
    };
    let (out, _dir, data, port) = start(&["--listen", "127.0.0.2"], &[]);
    assert_success(&out, "restore --start --listen 127.0.0.2");
    let psql = std::process::Command::new(pg_bin().join("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.2", "-U", "postgres", "-p"])
        .arg(port.to_string())
        .args(["-d", "postgres", "-c", "SELECT count(*) FROM markers"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "2");
    assert!(
        !psql_at(port, "postgres", "SELECT 1").status.success(),
        "the copy also listens on 127.0.0.1"
    );
    pg_ctl_stop(&data);

    let url = format!("postgresql://no_such_role@127.0.0.1:{}/postgres", a.cluster.port);
    let (out, _dir, data, _) = start(&[], &[("PGDR_POSTGRES_URL", url)]);
    let err = assert_fails(&out, 1, "refuses pgdr's login");
    assert!(err.contains("no_such_role"), "{err}");
    pg_ctl_stop(&data);
}

/// Review of item 7: verify's physical scratch copy carries the source's pg_hba.conf,
/// which may not let pgdr in over the socket (peer or password for local logins, as
/// many packages install it). The copy gets an hba_file of its own that trusts only
/// its private socket, so verification works whatever the source allows.
#[test]
fn item7_verify_does_not_depend_on_the_sources_pg_hba() {
    let a = Archiving::start();
    let hba = a.cluster.data.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all all reject\n{text}")).unwrap();
    a.cluster.psql("postgres", "SELECT pg_reload_conf()");
    a.cluster
        .psql("postgres", "CREATE TABLE markers AS SELECT 'x'::text AS m");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    let out = a.pgdr.run(&["verify", "--kind", "physical", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        report["ok"],
        true,
        "{report:#} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The source's pg_hba.conf is restored as it was; only the scratch server used
    // another file.
    let r = a.pgdr.restore_started(&[]);
    assert!(
        std::fs::read_to_string(r.data.join("pg_hba.conf"))
            .unwrap()
            .starts_with("local all all reject"),
    );
    assert!(!r.data.join("pgdr-scratch-hba.conf").exists());
}

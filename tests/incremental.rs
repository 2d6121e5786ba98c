//! Incremental physical backups (`--type incr|diff`): chains of a full backup and
//! incrementals with real traffic in between, restored to each backup and to a time
//! between two, compared by content hash and checked with pg_amcheck; a full and an
//! incremental of the same moment compared file by file; a broken chain, a WAL gap,
//! a killed incremental and retention beside a chain.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// Content hashes of every database but the templates, by database.
fn all_hashes(port: u16) -> BTreeMap<String, Vec<String>> {
    let out = psql_at(
        port,
        "postgres",
        "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1",
    );
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|db| (db.to_string(), content_hashes_at(port, db)))
        .collect()
}

fn amcheck(port: u16) {
    let out = Command::new(pg_bin().join("pg_amcheck"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
        .args(["--all", "--install-missing", "--heapallindexed"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_amcheck on the restored copy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn backup(a: &Archiving, kind: &str) -> serde_json::Value {
    let out = a.pgdr.ok(&["backup", "--kind", "physical", "--type", kind, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Restore `label` (to its own end, or to `time`) and start it; the data compared
/// against `expected` and checked with pg_amcheck.
fn restore_and_compare(
    a: &Archiving,
    label: &str,
    target: &[&str],
    ts_oid: &str,
    expected: &BTreeMap<String, Vec<String>>,
) {
    let ts = a
        .pgdr
        .dir
        .join(format!("ts-{label}-{}", target.join("-").replace([':', '.'], "")));
    pg_owned_dir(&ts);
    let mut args = vec!["--backup", label, "--tablespace-map"];
    let map = format!("{ts_oid}={}", ts.display());
    args.push(&map);
    args.extend_from_slice(target);
    let r = a.pgdr.restore_started(&args);
    let got = all_hashes(r.port);
    // An unlogged table comes back empty from any physical restore.
    let mut expected = expected.clone();
    for hashes in expected.values_mut() {
        for h in hashes.iter_mut() {
            if h.starts_with("public.scratch=") {
                *h = "public.scratch=0:-".to_string();
            }
        }
    }
    assert_eq!(
        got, expected,
        "restore of {label} {target:?} differs from the source at that moment"
    );
    amcheck(r.port);
}

fn traffic(c: &Cluster, round: u32) {
    // Updates across the big table, a table that grows and then shrinks, an unlogged
    // table, a truncate, a drop, a VACUUM FULL, a table in a tablespace.
    c.psql(
        "app",
        &format!(
            "UPDATE accounts SET balance = balance + {round} WHERE id % 97 = {round};
             INSERT INTO accounts SELECT g, {round}, repeat('n', 80) FROM generate_series({s}, {e}) g;
             INSERT INTO grows SELECT g, repeat('g', 200) FROM generate_series(1000 * {round}, 1000 * {round} + 20000) g;
             DELETE FROM grows WHERE id > 1000 * {round} + 100; VACUUM grows;
             INSERT INTO scratch SELECT g FROM generate_series(1, 1000) g;
             TRUNCATE trunc; INSERT INTO trunc SELECT g, 'round {round}' FROM generate_series(1, 300) g;
             DROP TABLE IF EXISTS dropme; CREATE TABLE dropme AS SELECT g AS id FROM generate_series(1, 500 * {round}) g;
             VACUUM FULL vf; UPDATE vf SET v = v || '{round}' WHERE id % 10 = 0;
             INSERT INTO far SELECT g + 10000 * {round} FROM generate_series(1, 2000) g;",
            s = 100_000 * round + 1,
            e = 100_000 * round + 3000
        ),
    );
}

/// A full backup and three incrementals with traffic in between (CREATE DATABASE with
/// both strategies, TRUNCATE, DROP TABLE, VACUUM FULL, a tablespace, an unlogged
/// table, a table that grows and shrinks); every backup restores to exactly the data
/// of its moment, and so does a time between two of them.
#[test]
fn a_chain_restores_to_each_backup_and_between() {
    let a = Archiving::start();
    let c = &a.cluster;
    let ts_dir = pg_owned_dir(&a.pgdr.dir.join("ts"));
    c.psql(
        "postgres",
        &format!("CREATE TABLESPACE far LOCATION '{}'", ts_dir.display()),
    );
    let ts_oid = c.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'far'");
    c.psql("postgres", "CREATE DATABASE app");
    c.psql(
        "app",
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int, filler text);
         INSERT INTO accounts SELECT g, 0, repeat('x', 80) FROM generate_series(1, 60000) g;
         CREATE TABLE grows (id int PRIMARY KEY, pad text);
         CREATE UNLOGGED TABLE scratch (x int);
         CREATE TABLE trunc (id int, note text);
         CREATE TABLE vf (id int PRIMARY KEY, v text);
         INSERT INTO vf SELECT g, 'v' FROM generate_series(1, 5000) g;
         CREATE TABLE far (x int) TABLESPACE far; INSERT INTO far SELECT generate_series(1, 1000);",
    );
    let full = backup(&a, "full");
    assert_eq!(full["backup_type"], "full");
    let mut expected = vec![(full["label"].as_str().unwrap().to_string(), all_hashes(c.port))];

    traffic(c, 1);
    c.psql("postgres", "CREATE DATABASE copied TEMPLATE app STRATEGY FILE_COPY");
    let i1 = backup(&a, "incr");
    assert_eq!(i1["backup_type"], "incr", "{i1}");
    assert_eq!(i1["incremental"]["parent"], full["label"]);
    let whole = &i1["incremental"]["whole_files"];
    assert!(
        whole["database copied with FILE_COPY"].as_u64().unwrap_or(0) > 0
            || whole["new since the parent"].as_u64().unwrap() > 0,
        "{i1}"
    );
    assert!(i1["incremental"]["changed_blocks"].as_u64().unwrap() > 0, "{i1}");
    assert!(
        i1["incremental"]["referenced_bytes"].as_u64().unwrap() > 1 << 20,
        "{i1}"
    );
    expected.push((i1["label"].as_str().unwrap().to_string(), all_hashes(c.port)));

    traffic(c, 2);
    c.psql("postgres", "CREATE DATABASE logged TEMPLATE app STRATEGY WAL_LOG");
    // A quiet moment between two backups, to restore to by time.
    let between_hashes = all_hashes(c.port);
    std::thread::sleep(Duration::from_millis(1100));
    let between = c.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(
        "app",
        "UPDATE accounts SET balance = -1 WHERE id < 50; DROP DATABASE copied;",
    );
    let i2 = backup(&a, "incr");
    assert_eq!(i2["incremental"]["parent"], i1["label"]);
    expected.push((i2["label"].as_str().unwrap().to_string(), all_hashes(c.port)));

    traffic(c, 3);
    let d3 = backup(&a, "diff");
    assert_eq!(
        d3["incremental"]["parent"], full["label"],
        "a diff is taken against the last full"
    );
    expected.push((d3["label"].as_str().unwrap().to_string(), all_hashes(c.port)));
    let i4 = backup(&a, "incr");
    assert_eq!(i4["incremental"]["parent"], d3["label"]);
    expected.push((i4["label"].as_str().unwrap().to_string(), all_hashes(c.port)));

    // list --json carries the type, the parent and the chain.
    let list = a.pgdr.list_json();
    let entry = list.iter().find(|e| e["label"] == i2["label"]).unwrap();
    assert_eq!(entry["backup_type"], "incr");
    assert_eq!(entry["parent"], i1["label"]);
    assert!(
        entry["chain"].as_array().unwrap().iter().any(|l| *l == full["label"]),
        "{entry}"
    );
    let check = a.pgdr.ok(&["check"]);
    assert!(check.contains("every chain whole"), "{check}");

    for (label, hashes) in &expected {
        restore_and_compare(&a, label, &["--target", "immediate"], &ts_oid, hashes);
    }
    restore_and_compare(
        &a,
        i1["label"].as_str().unwrap(),
        &["--target-time", &between],
        &ts_oid,
        &between_hashes,
    );
}

/// Main-fork relation files under `data`, by path relative to it (tablespaces
/// followed through their links).
fn relation_files(data: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(data.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            let relp = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                if rel.is_empty() && !["base", "global", "pg_tblspc"].contains(&name.as_str()) {
                    continue;
                }
                stack.push((path, relp));
            } else if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                out.insert(relp, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A full backup and an incremental taken at the same moment of a quiet cluster lay
/// down byte-identical relation files.
#[test]
fn a_full_and_an_incremental_of_the_same_moment_are_identical() {
    let a = Archiving::start();
    let c = &a.cluster;
    // Nothing but the test writes: no autovacuum between the two backups.
    c.psql("postgres", "ALTER SYSTEM SET autovacuum = off");
    c.psql("postgres", "SELECT pg_reload_conf()");
    c.psql("postgres", "CREATE DATABASE app");
    c.pgbench_init("app", 2);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0;
         CREATE TABLE fresh AS SELECT g FROM generate_series(1, 10000) g;
         DELETE FROM pgbench_history;",
    );
    // Settle every page: frozen tuples need no hint bits, and freezing is WAL-logged
    // (ANALYZE first: the statistics it writes are frozen too).
    for db in ["app", "postgres", "template1"] {
        c.psql(db, "ANALYZE");
        c.psql(db, "VACUUM FREEZE");
    }
    c.psql("postgres", "CHECKPOINT");
    let incr = backup(&a, "incr");
    let full = backup(&a, "full");
    let lay = |label: &str| {
        let dir = TestDir::new();
        chown_postgres(dir.path());
        let data = dir.join("data");
        a.pgdr.ok(&[
            "restore",
            "--kind",
            "physical",
            "--backup",
            label,
            "--to",
            data.to_str().unwrap(),
        ]);
        (dir, relation_files(&data))
    };
    let (_d1, from_incr) = lay(incr["label"].as_str().unwrap());
    let (_d2, from_full) = lay(full["label"].as_str().unwrap());
    assert!(from_full.len() > 100);
    let differ: Vec<&String> = from_full
        .iter()
        .filter(|(p, bytes)| from_incr.get(*p) != Some(bytes))
        .map(|(p, _)| p)
        .collect();
    assert!(
        differ.is_empty(),
        "relation files differ between the full and the incremental: {differ:?}"
    );
    assert_eq!(from_full.len(), from_incr.len());
}

/// An `app` database, a full backup, a change, an incremental on it: the two labels
/// and the full backup's largest bundle (the incremental takes most of its bytes
/// from it).
fn full_and_incremental(a: &Archiving) -> (String, String, PathBuf) {
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE app");
    c.pgbench_init("app", 2);
    let full = backup(a, "full");
    c.psql("app", "UPDATE pgbench_accounts SET abalance = 7 WHERE aid % 13 = 0");
    let incr = backup(a, "incr");
    let label = |v: &serde_json::Value| v["label"].as_str().unwrap().to_string();
    let full = label(&full);
    let bundle = repo_files(a.pgdr.repo_dir.as_ref().unwrap())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(full.as_str()) && p.to_string_lossy().contains("bundle"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a bundle of the full backup");
    (full, label(&incr), bundle)
}

/// A parent's bundle missing: restore and verify name it before writing anything;
/// `check` and `list` name the broken chain when the parent's manifest is gone.
#[test]
fn a_broken_chain_is_named_and_nothing_is_written() {
    let a = Archiving::start();
    let (full_label, incr_label, bundle) = full_and_incremental(&a);
    let (full_label, incr_label) = (full_label.as_str(), incr_label.as_str());
    let repo = a.pgdr.repo_dir.clone().unwrap();
    std::fs::remove_file(&bundle).unwrap();

    let target = a.pgdr.dir.join("restore");
    let restore = || {
        let to = target.to_str().unwrap();
        a.pgdr
            .run(&["restore", "--kind", "physical", "--backup", incr_label, "--to", to])
    };
    let err = assert_fails(&restore(), 1, full_label);
    assert!(err.contains("bundle"), "{err}");
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
        "the restore wrote into {}",
        target.display()
    );

    let manifest = repo_files(&repo)
        .into_iter()
        .find(|p| p.to_string_lossy().contains(full_label) && p.to_string_lossy().ends_with("manifest.json"))
        .expect("the full backup's manifest");
    std::fs::remove_file(&manifest).unwrap();
    let out = a.pgdr.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("broken chain") && text.contains(full_label), "{text}");
    assert_fails(&restore(), 2, "chain is broken");
}

/// A parent's bundle damaged in place (one byte flipped, the size unchanged, so the
/// checks before writing pass): a restore of the incremental stops naming the parent's
/// bundle and leaves its restore marker (the directory never looks whole, and the
/// server is not started); `verify` of the incremental fails naming it too.
#[test]
fn a_damaged_parent_is_named_and_the_restore_is_not_taken_for_whole() {
    let a = Archiving::start();
    let (full_label, incr_label, bundle) = full_and_incremental(&a);
    let (full_label, incr_label) = (full_label.as_str(), incr_label.as_str());
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&bundle, &bytes).unwrap();
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();

    let target = a.pgdr.dir.join("restore");
    let sock = pg_owned_dir(&a.pgdr.dir.join("restore-sock"));
    let port = free_port().to_string();
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--backup",
        incr_label,
        "--to",
        target.to_str().unwrap(),
        "--start",
        "--port",
        &port,
        "--socket-dir",
        sock.to_str().unwrap(),
    ]);
    let err = assert_fails(&out, 1, &name);
    assert!(err.contains(full_label), "{err}");
    let marker = std::fs::read_to_string(target.join("pgdr-restore-in-progress")).unwrap_or_default();
    assert_eq!(
        marker.lines().next(),
        Some(incr_label),
        "the half-done restore is not marked: {marker:?}"
    );
    assert!(
        !target.join("postmaster.pid").exists(),
        "a half-written restore was started"
    );

    let out = a.pgdr.run(&["verify", "--backup", incr_label, "--kind", "physical"]);
    assert_eq!(out.status.code(), Some(1), "verify of a damaged parent");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&name) && said.contains(full_label), "{said}");
}

/// An incremental across a gap in the archived WAL refuses, and says to take a full.
#[test]
fn an_incremental_across_a_wal_gap_refuses() {
    let a = Archiving::start();
    let c = &a.cluster;
    let config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    std::fs::write(
        &a.pgdr.config,
        config.replace("archive_timeout = 60", "archive_timeout = 5"),
    )
    .unwrap();
    c.psql("postgres", "CREATE TABLE t AS SELECT generate_series(1, 1000) g");
    // Nothing to start from: an incremental is taken full, and says so.
    let out = a
        .pgdr
        .run(&["backup", "--kind", "physical", "--type", "incr", "--json"]);
    assert_success(&out, "the first --type incr");
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["backup_type"], "full", "{first}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("taking a full backup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.psql("postgres", "INSERT INTO t SELECT generate_series(1, 1000)");
    let gone = a.switch_and_wait();
    c.psql("postgres", "INSERT INTO t SELECT generate_series(1, 1000)");
    a.switch_and_wait();
    let repo = a.pgdr.repo_dir.clone().unwrap();
    let file = repo_files(&repo)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&gone))
        .expect("the archived segment");
    std::fs::remove_file(file).unwrap();
    let before = a.pgdr.list_json().len();
    let out = a.pgdr.run(&["backup", "--kind", "physical", "--type", "incr"]);
    let err = assert_fails(&out, 2, "--type full");
    assert!(err.contains(&gone), "{err}");
    assert_eq!(
        a.pgdr.list_json().len(),
        before,
        "a refused incremental left a backup behind"
    );
}

/// `kill -9` in the middle of an incremental: the next one is whole and restores.
#[test]
fn an_incremental_killed_midway_leaves_the_next_one_whole() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE app");
    c.pgbench_init("app", 5);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("app", "UPDATE pgbench_accounts SET abalance = 3 WHERE aid % 3 = 0");
    let repo = a.pgdr.repo_dir.clone().unwrap();
    let bundles = || {
        repo_files(&repo)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/data/bundle-"))
            .count()
    };
    let before = bundles();
    let mut child = a
        .pgdr
        .command(&["backup", "--kind", "physical", "--type", "incr", "--jobs", "1"])
        .spawn()
        .unwrap();
    // Killed once its copy has stored something: mid-copy, not before nor after.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bundles() == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the incremental ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the incremental stored nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(a.pgdr.list_json().len(), 1, "the killed incremental was committed");
    c.psql("app", "UPDATE pgbench_accounts SET abalance = 4 WHERE aid % 5 = 0");
    let out = a.pgdr.ok(&[
        "backup",
        "--kind",
        "physical",
        "--type",
        "incr",
        "--json",
        "--lock-wait",
        "30",
    ]);
    let incr: serde_json::Value = serde_json::from_str(&out).unwrap();
    let expected = all_hashes(c.port);
    let r = a
        .pgdr
        .restore_started(&["--backup", incr["label"].as_str().unwrap(), "--target", "immediate"]);
    assert_eq!(all_hashes(r.port), expected);
    amcheck(r.port);
}

/// Retention counts chains: with `full_count = 1`, an older full backup that a kept
/// incremental refers to stays, and the incremental still restores after expire.
#[test]
fn expire_keeps_what_a_kept_incremental_needs() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql(
        "postgres",
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 10000)",
    );
    let f0 = backup(&a, "full");
    c.psql("postgres", "INSERT INTO t SELECT generate_series(1, 100)");
    let i1 = backup(&a, "incr");
    let i1_hashes = all_hashes(c.port);
    c.psql("postgres", "INSERT INTO t SELECT generate_series(1, 100)");
    let f1 = backup(&a, "full");
    c.psql("postgres", "INSERT INTO t SELECT generate_series(1, 100)");
    let i2 = backup(&a, "incr");
    let mut config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    config.push_str("\n[retention]\nfull_count = 1\n");
    std::fs::write(&a.pgdr.config, config).unwrap();
    let i1_label = i1["label"].as_str().unwrap();
    a.pgdr.ok(&["expire", "--keep", i1_label]);
    let out = a.pgdr.ok(&["expire"]);
    assert!(out.contains("needs it"), "{out}");
    let left: Vec<String> = a
        .pgdr
        .list_json()
        .iter()
        .map(|e| e["label"].as_str().unwrap().to_string())
        .collect();
    for kept in [&f0, &i1, &f1, &i2] {
        assert!(
            left.iter().any(|l| kept["label"] == *l),
            "{} was removed: {left:?}",
            kept["label"]
        );
    }
    let r = a.pgdr.restore_started(&["--backup", i1_label, "--target", "immediate"]);
    assert_eq!(all_hashes(r.port), i1_hashes);
}

/// Wait until the standby on `port` has replayed everything the primary wrote so far.
fn wait_replayed(c: &Cluster, port: u16) {
    let target = c.psql("postgres", "SELECT pg_current_wal_lsn()");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = psql_at(
            port,
            "postgres",
            &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "t" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby did not replay up to {target}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `backup --from-standby`: the files are read on a streaming standby (the backup
/// label says so), full and incremental backups from it restore to the primary's
/// data; a standby that lags too far, or a "standby" that is the primary, is refused.
#[test]
fn backups_from_a_standby_restore_the_primarys_data() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE app");
    c.pgbench_init("app", 2);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let conninfo = format!("host=127.0.0.1 port={} user=postgres", c.port);
    let standby = a.pgdr.restore_started(&["--standby", "--primary-conninfo", &conninfo]);
    let config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    let with_standby = |url: &str, lag: u64| {
        config.replacen(
            "[postgres]\n",
            &format!(
                "[postgres]\nstandby_url = \"{url}\"\nstandby_data_dir = \"{}\"\nstandby_max_lag_mb = {lag}\n",
                standby.data.display()
            ),
            1,
        )
    };
    let standby_url = format!("postgresql://postgres@127.0.0.1:{}/postgres", standby.port);
    std::fs::write(&a.pgdr.config, with_standby(&standby_url, 64)).unwrap();

    c.psql("app", "UPDATE pgbench_accounts SET abalance = 11 WHERE aid % 7 = 0");
    wait_replayed(c, standby.port);
    let out = a.pgdr.ok(&["backup", "--kind", "physical", "--from-standby", "--json"]);
    let full: serde_json::Value = serde_json::from_str(&out).unwrap();
    let full_hashes = all_hashes(c.port);
    let label = full["label"].as_str().unwrap();
    let manifest = a.pgdr.ok(&["cat", &format!("{label}/manifest.json")]);
    assert!(
        manifest.contains("BACKUP FROM: standby"),
        "the backup was not taken on the standby"
    );

    c.psql("app", "UPDATE pgbench_accounts SET abalance = 12 WHERE aid % 11 = 0");
    wait_replayed(c, standby.port);
    let out = a.pgdr.ok(&[
        "backup",
        "--kind",
        "physical",
        "--from-standby",
        "--type",
        "incr",
        "--json",
    ]);
    let incr: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(incr["incremental"]["parent"], full["label"], "{incr}");
    let incr_hashes = all_hashes(c.port);

    for (backup, expected) in [(&full, &full_hashes), (&incr, &incr_hashes)] {
        let r = a
            .pgdr
            .restore_started(&["--backup", backup["label"].as_str().unwrap(), "--target", "immediate"]);
        assert_eq!(&all_hashes(r.port), expected, "restore of {}", backup["label"]);
        amcheck(r.port);
    }

    // Too far behind: replay paused while the primary writes.
    assert_eq!(standby.psql("postgres", "SELECT pg_wal_replay_pause()"), "");
    c.psql("app", "UPDATE pgbench_accounts SET abalance = 13");
    std::fs::write(&a.pgdr.config, with_standby(&standby_url, 1)).unwrap();
    let before = a.pgdr.list_json().len();
    let out = a.pgdr.run(&["backup", "--kind", "physical", "--from-standby"]);
    assert_fails(&out, 2, "behind the primary");
    standby.psql("postgres", "SELECT pg_wal_replay_resume()");
    // A "standby" that is the primary.
    std::fs::write(&a.pgdr.config, with_standby(&c.url("postgres"), 64)).unwrap();
    let out = a.pgdr.run(&["backup", "--kind", "physical", "--from-standby"]);
    assert_fails(&out, 2, "not in recovery");
    // The standby's connection with the primary's directory (same host, same system
    // identifier): reading it would make a torn backup.
    let wrong_dir = config.replacen(
        "[postgres]\n",
        &format!(
            "[postgres]\nstandby_url = \"{standby_url}\"\nstandby_data_dir = \"{}\"\n",
            c.data.display()
        ),
        1,
    );
    std::fs::write(&a.pgdr.config, wrong_dir).unwrap();
    let out = a.pgdr.run(&["backup", "--kind", "physical", "--from-standby"]);
    let said = assert_fails(&out, 2, "set standby_data_dir to the standby's data directory");
    assert!(said.contains(&standby.data.display().to_string()), "{said}");
    assert_eq!(
        a.pgdr.list_json().len(),
        before,
        "a refused backup left something behind"
    );
}

/// A chain on the S3 server: `verify` restores the newest incremental in a scratch
/// cluster; `copy --backup` takes its parents along and the copy alone restores it;
/// after `key rotate` and `key rewrap` the chain still restores, with `--delta` over a
/// restore of an older backup of the chain.
#[test]
fn a_chain_on_s3_verifies_copies_with_its_parents_and_survives_rewrap() {
    let a = Archiving::start_with(RepoKind::S3);
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE app");
    c.pgbench_init("app", 2);
    let full = backup(&a, "full");
    c.psql("app", "UPDATE pgbench_accounts SET abalance = 5 WHERE aid % 13 = 0");
    let i1 = backup(&a, "incr");
    c.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = 6 WHERE aid % 17 = 0; CREATE TABLE later AS SELECT 1 AS x",
    );
    let i2 = backup(&a, "incr");
    let expected = all_hashes(c.port);
    let (i1, i2) = (i1["label"].as_str().unwrap(), i2["label"].as_str().unwrap());
    assert_eq!(
        a.pgdr.list_json().iter().find(|e| e["label"] == i2).unwrap()["chain"],
        serde_json::json!([full["label"], i1])
    );

    let out = a.pgdr.ok(&["verify", "--backup", i2]);
    assert!(out.contains(i2), "{out}");

    let copy_dir = a.pgdr.dir.join("copy-region2");
    pg_owned_dir(&copy_dir);
    let mut config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    config.push_str(&format!(
        "\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\n",
        copy_dir.display()
    ));
    std::fs::write(&a.pgdr.config, &config).unwrap();
    a.pgdr.ok(&["copy", "--backup", i2]);
    let out = a.pgdr.ok(&["list", "--json", "--repository", "dr"]);
    let copied: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["label"].as_str().unwrap().to_string())
        .collect();
    for label in [full["label"].as_str().unwrap(), i1, i2] {
        assert!(
            copied.iter().any(|l| l == label),
            "{label} is not in the copy: {copied:?}"
        );
    }
    let r = a
        .pgdr
        .restore_started(&["--repository", "dr", "--backup", i2, "--target", "immediate"]);
    assert_eq!(all_hashes(r.port), expected, "the copy's restore of {i2}");
    drop(r);

    a.pgdr.ok(&["key", "rotate"]);
    let report: serde_json::Value = serde_json::from_str(&a.pgdr.ok(&["key", "rewrap", "--json"])).unwrap();
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");

    // An older backup of the chain laid down, then the newest over it with --delta.
    let r = delta_restore_started(&a, i1, i2);
    assert_eq!(all_hashes(r.port), expected, "--delta across the chain");
    amcheck(r.port);
}

/// `older` restored into a new directory, then `newer` over it with `--delta`, started.
fn delta_restore_started(a: &Archiving, older: &str, newer: &str) -> Restored {
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let data = dir.join("data");
    let sock = pg_owned_dir(&dir.join("sock"));
    let to = data.to_str().unwrap().to_string();
    a.pgdr
        .ok(&["restore", "--kind", "physical", "--backup", older, "--to", to.as_str()]);
    let port = free_port();
    let port_text = port.to_string();
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--backup",
        newer,
        "--to",
        to.as_str(),
        "--delta",
        "--target",
        "immediate",
        "--start",
        "--port",
        port_text.as_str(),
        "--socket-dir",
        sock.to_str().unwrap(),
    ]);
    let r = Restored {
        dir,
        data,
        port,
        output: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    assert_success(&out, &format!("restore --delta of {newer} over {older}"));
    r
}

/// A chain begun by an older build (pieces hashed with SHA-256, manifest formats 1 and
/// 2) still restores, is continued by this build (BLAKE3, format 3), and the mixed
/// chain restores, whole and with `--delta` over a restore of the old full backup.
#[test]
fn a_chain_begun_with_sha256_pieces_is_continued_and_restores() {
    let mut a = Archiving::start();
    a.pgdr.set_env("PGDR_TEST_PIECE_DIGEST", "sha256");
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE app");
    c.pgbench_init("app", 2);
    let full = backup(&a, "full");
    let full_hashes = all_hashes(c.port);
    c.psql("app", "UPDATE pgbench_accounts SET abalance = 3 WHERE aid % 11 = 0");
    let old_incr = backup(&a, "incr");
    a.pgdr.extra_env.retain(|(k, _)| k != "PGDR_TEST_PIECE_DIGEST");
    let c = &a.cluster;
    c.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = 4 WHERE aid % 19 = 0; CREATE TABLE later AS SELECT g FROM generate_series(1, 5000) g",
    );
    let new_incr = backup(&a, "incr");
    let expected = all_hashes(c.port);
    let label = |v: &serde_json::Value| v["label"].as_str().unwrap().to_string();
    let (full, old_incr, new_incr) = (label(&full), label(&old_incr), label(&new_incr));

    let manifest = |l: &str| -> serde_json::Value {
        serde_json::from_str(&a.pgdr.ok(&["cat", &format!("{l}/manifest.json")])).unwrap()
    };
    for (l, format, digest) in [(&full, 1, "sha256"), (&old_incr, 2, "sha256"), (&new_incr, 3, "blake3")] {
        let m = manifest(l);
        assert_eq!(m["format"], format, "{l}");
        let files = m["physical"]["files"].as_array().unwrap();
        let own: Vec<_> = files.iter().filter(|f| f["backup"].is_null()).collect();
        assert!(!own.is_empty(), "{l} stores nothing of its own");
        for f in own {
            assert_eq!(f[digest].as_str().map(str::len), Some(64), "{l}: {f}");
        }
    }
    // The new incremental refers to pieces of the old backups by their SHA-256.
    let m = manifest(&new_incr);
    assert!(
        m["physical"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["backup"].is_string() && f["sha256"].as_str().map(str::len) == Some(64)),
        "no reference to an old piece: {m}"
    );

    let r = a.pgdr.restore_started(&["--backup", &full, "--target", "immediate"]);
    assert_eq!(all_hashes(r.port), full_hashes, "restore of the old full {full}");
    drop(r);
    let r = a
        .pgdr
        .restore_started(&["--backup", &new_incr, "--target", "immediate"]);
    assert_eq!(all_hashes(r.port), expected, "restore of the mixed chain");
    amcheck(r.port);
    drop(r);
    let r = delta_restore_started(&a, &full, &new_incr);
    assert_eq!(
        all_hashes(r.port),
        expected,
        "--delta of the mixed chain over the old full"
    );
    amcheck(r.port);
}

//! Concurrency (issue 14): expire running while a backup, a restore, a copy or a drill
//! runs never removes what it needs; a second cluster's WAL pushed into the repository
//! is refused and leaves the first cluster's archive as it was. (Two pushers racing on
//! a store that ignores If-None-Match: `faults::two_pushers_racing_…`.)

mod common;

use std::time::Duration;

use common::*;

#[test]
fn expire_during_a_backup_keeps_what_it_needs() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 8);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    std::thread::sleep(Duration::from_millis(1100));
    let text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    std::fs::write(&a.pgdr.config, format!("{text}\n[retention]\nfull_count = 1\n")).unwrap();
    // A backup runs while expire runs again and again beside it.
    let mut backup = a.pgdr.command(&["backup", "--kind", "physical"]).spawn().unwrap();
    let mut rounds = 0;
    while backup.try_wait().unwrap().is_none() {
        let out = a.pgdr.run(&["expire"]);
        assert_success(&out, "expire during a backup");
        rounds += 1;
        c.psql("postgres", "UPDATE pgbench_branches SET bbalance = bbalance + 1");
    }
    assert!(backup.wait().unwrap().success(), "the backup failed beside expire");
    assert!(rounds >= 1, "expire never ran during the backup");
    a.pgdr.ok(&["expire"]);
    let listed = a.pgdr.list_json();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let label = listed[0]["label"].as_str().unwrap().to_string();
    a.switch_and_wait();
    let want = c.content_hashes("postgres");
    let out = a.pgdr.run(&["verify", "--backup", &label]);
    assert_success(&out, "verify of the backup taken beside expire");
    let r = a.pgdr.restore_started(&["--backup", &label]);
    assert_eq!(content_hashes_at(r.port, "postgres"), want);
}

#[test]
fn wal_of_another_cluster_is_refused() {
    let a = Archiving::start();
    let seg = a.switch_and_wait();
    let key = format!("wal/{}/{seg}", &seg[..16]);
    let before = a.pgdr.run(&["cat", &key]);
    assert_success(&before, "cat");
    // Another cluster, the same segment name, pushed with this cluster's setup.
    let mut other = Cluster::init();
    other.launch(&[]);
    other.psql("postgres", "CREATE TABLE x AS SELECT 1");
    other.psql("postgres", "SELECT pg_switch_wal()");
    let path = other.data.join("pg_wal").join(&seg);
    assert!(path.exists(), "the other cluster has {seg} too");
    let out = a.pgdr.run(&["wal-push", path.to_str().unwrap()]);
    assert_fails(&out, 2, "system identifier");
    let after = a.pgdr.run(&["cat", &key]);
    assert!(after.stdout == before.stdout, "the archived segment changed");
}

/// expire run again and again while the oldest backup is being restored: the restore
/// holds a use lease, so expire keeps that backup and the WAL from its start (its
/// report says why) until the restore ends; the copy holds all the data; after it,
/// expire lets the backup go. Before use leases, expire removed the backup's bundles
/// from under the restore.
#[test]
fn expire_during_a_restore_keeps_what_it_reads() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 10);
    let old = a.pgdr.ok(&["backup", "--kind", "physical", "--json"]);
    let old: serde_json::Value = serde_json::from_str(&old).unwrap();
    let old = old["label"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("postgres", "UPDATE pgbench_branches SET bbalance = bbalance + 7");
    a.switch_and_wait();
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("postgres", "UPDATE pgbench_tellers SET tbalance = tbalance + 3");
    a.switch_and_wait();
    let want = c.content_hashes("postgres");
    let text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    std::fs::write(&a.pgdr.config, format!("{text}\n[retention]\nfull_count = 1\n")).unwrap();

    let dir = TestDir::new();
    chown_postgres(dir.path());
    let (data, sock) = (dir.join("data"), dir.join("sock"));
    pg_owned_dir(&sock);
    let port = free_port().to_string();
    let mut restore = a
        .pgdr
        .command(&[
            "restore",
            "--kind",
            "physical",
            "--backup",
            &old,
            "--to",
            data.to_str().unwrap(),
            "--start",
            "--port",
            &port,
            "--socket-dir",
            sock.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the restore has announced itself (its use lease), expire runs beside it.
    let locks = a.pgdr.repo_dir.clone().unwrap().join("test/locks");
    let leased = || {
        std::fs::read_dir(&locks)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("use-")))
            .unwrap_or(false)
    };
    while !leased() && restore.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut kept_in_use = 0;
    while restore.try_wait().unwrap().is_none() {
        let out = a.pgdr.run(&["expire", "--json"]);
        assert_success(&out, "expire during a restore");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let decision = report["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["label"] == old.as_str())
            .cloned();
        let decision = decision.unwrap_or_else(|| panic!("expire removed {old} during its restore: {report}"));
        if decision["reason"].as_str().unwrap().contains("in use by a restore") {
            assert_eq!(decision["keep"], true, "{report}");
            kept_in_use += 1;
        }
    }
    let out = restore.wait_with_output().unwrap();
    assert_success(&out, "the restore beside expire");
    assert!(kept_in_use >= 1, "expire never ran while the restore held its lease");
    assert_eq!(content_hashes_at(port.parse().unwrap(), "postgres"), want);
    let mut stop = std::process::Command::new(pg_bin().join("pg_ctl"));
    stop.arg("-D").arg(&data).args(["-m", "immediate", "stop"]);
    let _ = as_postgres(&mut stop).output();

    // The restore is over: the lease is gone and expire lets the old backup go.
    let out = a.pgdr.ok(&["expire", "--json"]);
    assert!(out.contains("\"wal_removed\""), "{out}");
    assert!(a.pgdr.list_json().iter().all(|b| b["label"] != old.as_str()));
}

/// Two physical backups, the older about to go (`full_count = 1`), and a second
/// repository `dr` (local) configured as a copy. Returns the older backup's label.
fn two_backups_and_a_copy(a: &Archiving) -> String {
    let c = &a.cluster;
    c.pgbench_init("postgres", 10);
    let old = a.pgdr.ok(&["backup", "--kind", "physical", "--json"]);
    let old: serde_json::Value = serde_json::from_str(&old).unwrap();
    let old = old["label"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("postgres", "UPDATE pgbench_branches SET bbalance = bbalance + 7");
    a.switch_and_wait();
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("postgres", "UPDATE pgbench_tellers SET tbalance = tbalance + 3");
    a.switch_and_wait();
    let dr = a.pgdr.dir.join("dr");
    pg_owned_dir(&dr);
    let text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    std::fs::write(
        &a.pgdr.config,
        format!(
            "{text}\n[retention]\nfull_count = 1\n\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\n",
            dr.display()
        ),
    )
    .unwrap();
    old
}

/// expire run again and again while `copy` carries both backups to the second
/// repository: the copy holds a use lease, so expire keeps the older backup (and its
/// WAL) until the copy is done; the copy succeeds and the older backup verifies from
/// the copy alone; afterwards expire lets it go from the primary.
#[test]
fn expire_during_a_copy_keeps_what_it_copies() {
    let a = Archiving::start();
    let old = two_backups_and_a_copy(&a);
    let mut copy = a
        .pgdr
        .command(&["copy", "--jobs", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let locks = a.pgdr.repo_dir.clone().unwrap().join("test/locks");
    let leased = || {
        std::fs::read_dir(&locks)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("use-")))
            .unwrap_or(false)
    };
    while !leased() && copy.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut kept_in_use = 0;
    while copy.try_wait().unwrap().is_none() {
        let out = a.pgdr.run(&["expire", "--json"]);
        assert_success(&out, "expire during a copy");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let Some(decision) = report["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["label"] == old.as_str())
            .cloned()
        else {
            // Removed: allowed only once the copy has let go of it (its lease gone;
            // the process may still be exiting). The copy must then succeed.
            assert!(!leased(), "expire removed {old} while the copy held it: {report}");
            break;
        };
        if decision["reason"].as_str().unwrap().contains("in use by a copy") {
            assert_eq!(decision["keep"], true, "{report}");
            kept_in_use += 1;
        }
    }
    let out = copy.wait_with_output().unwrap();
    assert_success(&out, "the copy beside expire");
    assert!(kept_in_use >= 1, "expire never ran while the copy held its lease");
    let out = a
        .pgdr
        .run(&["--repository", "dr", "verify", "--backup", &old, "--kind", "physical"]);
    assert_success(&out, "verify of the older backup from the copy");

    // The copy is over: expire lets the older backup go from the primary.
    a.pgdr.ok(&["expire"]);
    assert!(a.pgdr.list_json().iter().all(|b| b["label"] != old.as_str()));
}

/// A drill beside expire: the drill works in an area of its own (`<cluster>-drill-…`),
/// which the production expire never touches; the drill passes and its report is
/// listed; production's retention is applied as configured, and what it keeps verifies.
#[test]
fn expire_during_a_drill_leaves_the_drill_alone() {
    let a = Archiving::start();
    let old = two_backups_and_a_copy(&a);
    let work = TestDir::new();
    chown_postgres(work.path());
    let mut drill = a
        .pgdr
        .command(&[
            "drill",
            "--scenario",
            "data-loss",
            "--work-dir",
            work.path().to_str().unwrap(),
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut rounds = 0;
    while drill.try_wait().unwrap().is_none() {
        let out = a.pgdr.run(&["expire", "--json"]);
        assert_success(&out, "expire during a drill");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = drill.wait_with_output().unwrap();
    assert_success(&out, "the drill beside expire");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert!(rounds >= 3, "expire ran only {rounds} times during the drill");
    let history = a.pgdr.ok(&["list", "--verifications", "--json"]);
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert!(
        history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "drill" && e["ok"] == true),
        "{history}"
    );
    let listed = a.pgdr.list_json();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0]["label"] != old.as_str());
    let label = listed[0]["label"].as_str().unwrap().to_string();
    assert_success(
        &a.pgdr.run(&["verify", "--backup", &label]),
        "verify of the kept backup",
    );
    let root = a.pgdr.repo_dir.clone().unwrap();
    let areas: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-drill-"))
        .collect();
    let ls = std::process::Command::new("find").arg(&root).output().unwrap();
    assert!(
        areas.is_empty(),
        "drill areas left: {areas:?}\n{}",
        String::from_utf8_lossy(&ls.stdout)
    );
}

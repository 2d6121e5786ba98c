//! Concurrency (issue 14): expire running while a backup is being taken never removes
//! what that backup needs; a second cluster's WAL pushed into the repository is
//! refused and leaves the first cluster's archive as it was.

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

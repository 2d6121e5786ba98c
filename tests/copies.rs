//! A second region (issue 10): `pgdr copy` into a repository copy, and restores from
//! the copy alone while the primary region's S3 server is gone. Two moto servers on two
//! 127.0.0.1 ports stand in for the two regions; pgdr finds each one's credentials
//! through its own AWS profile in a temporary `$HOME/.aws`, never in `AWS_*`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn labels(list: &[serde_json::Value]) -> Vec<String> {
    let mut l: Vec<String> = list.iter().map(|b| b["label"].as_str().unwrap().to_string()).collect();
    l.sort();
    l
}

/// Two regions, each an S3 server with credentials of its own, named by profile.
fn aws_profiles(home: &std::path::Path) {
    let aws = home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[primary]\naws_access_key_id = AKIAPRIMARYREGION\naws_secret_access_key = primary-secret-never-logged\n\n\
         [dr]\naws_access_key_id = AKIADRREGION\naws_secret_access_key = dr-secret-never-logged\n",
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        "[profile primary]\nregion = us-east-1\n\n[profile dr]\nregion = eu-west-1\n",
    )
    .unwrap();
    chown_postgres(&aws);
    chown_postgres(&aws.join("credentials"));
    chown_postgres(&aws.join("config"));
}

/// A cluster archiving into the primary region's bucket, with a copy in the second
/// region; pgdr runs as `postgres` and knows no `AWS_*` credentials.
struct TwoRegions {
    cluster: Cluster,
    pgdr: Pgdr,
    primary: OwnS3,
    _dr: OwnS3,
}

fn two_regions() -> TwoRegions {
    let primary = OwnS3::start();
    let dr = OwnS3::start();
    let (bucket_a, bucket_b) = (primary.server.bucket(), dr.server.bucket());
    let dir = TestDir::new();
    chown_postgres(dir.path());
    aws_profiles(dir.path());
    let config = dir.join("pgdr.toml");
    let key_file = dir.join("repo.key");
    let spool = dir.join("spool");
    pg_owned_dir(&spool);
    let mut cluster = Cluster::init();
    // The archive_command finds its credentials through the profile in this HOME.
    cluster.configure(&[
        "archive_mode = on".to_string(),
        format!(
            "archive_command = 'HOME={} {PGDR} --config {} wal-push %p'",
            dir.path().display(),
            config.display()
        ),
        "wal_level = replica".to_string(),
    ]);
    cluster.launch(&[]);
    std::fs::write(
        &config,
        format!(
            "cluster = \"test\"\n\n[postgres]\nurl = \"{}\"\nbin_dir = \"{}\"\ndata_dir = \"{}\"\n\n\
             [repository]\nurl = \"s3://{bucket_a}/region1\"\nendpoint = \"{}\"\nforce_path_style = true\nprofile = \"primary\"\nkey_file = \"{}\"\ns3_max_attempts = 2\n\n\
             [[repository.copies]]\nname = \"dr\"\nurl = \"s3://{bucket_b}/region2\"\nendpoint = \"{}\"\nforce_path_style = true\nprofile = \"dr\"\n\n\
             [wal]\nspool_dir = \"{}\"\narchive_timeout = 60\nfetch_retry_seconds = 5\n",
            cluster.url("postgres"),
            pg_bin().display(),
            cluster.data.display(),
            primary.server.endpoint(),
            key_file.display(),
            dr.server.endpoint(),
            spool.display()
        ),
    )
    .unwrap();
    let pgdr = Pgdr::initialised_with(dir, config, key_file, None, is_root(), false);
    TwoRegions {
        cluster,
        pgdr,
        primary,
        _dr: dr,
    }
}

fn switch_and_wait(c: &Cluster) {
    let seg = c.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.psql("postgres", "SELECT pg_switch_wal()");
    for _ in 0..600 {
        let archived = c.psql(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        );
        if !archived.is_empty() && archived.as_str() >= seg.as_str() {
            return;
        }
        sleep(100);
    }
    panic!("segment {seg} was not archived: {}", c.log());
}

fn pgbench_run(c: &Cluster, db: &str, transactions: u32) {
    let out = Command::new(pg_bin().join("pgbench"))
        .args([
            "-n",
            "-c",
            "2",
            "-t",
            &transactions.to_string(),
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &c.port.to_string(), db])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The whole primary region is lost, bucket and all: a point-in-time restore and a
/// logical restore run from the copy alone, and their data is the source's.
#[test]
fn the_copy_alone_restores_when_the_primary_region_is_gone() {
    let mut r = two_regions();
    let c = &r.cluster;
    c.psql("postgres", "CREATE DATABASE bench");
    c.pgbench_init("bench", 1);
    c.psql(
        "postgres",
        "CREATE TABLE markers (m text PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    );
    r.pgdr.ok(&["backup", "--kind", "logical", "--database", "bench"]);
    let at_logical = c.content_hashes("bench");
    r.pgdr.ok(&["backup", "--kind", "physical"]);
    pgbench_run(c, "bench", 300);
    c.psql("postgres", "INSERT INTO markers (m) VALUES ('t1')");
    switch_and_wait(c);
    sleep(1100);
    let between = c.psql("postgres", "SELECT now()");
    let at_target = c.content_hashes("bench");
    sleep(1100);
    c.psql("postgres", "INSERT INTO markers (m) VALUES ('t2')");
    pgbench_run(c, "bench", 100);
    switch_and_wait(c);

    // What the copy lacks: everything. A dry run copies nothing.
    let dry = json(&r.pgdr.ok(&["copy", "--dry-run", "--json"]));
    let planned = dry["copies"][0]["objects_copied"].as_u64().unwrap();
    assert!(planned > 5, "{dry}");
    assert_fails(
        &r.pgdr.run(&["--repository", "dr", "list"]),
        2,
        "run `pgdr copy --to dr` first",
    );
    let report = json(&r.pgdr.ok(&["copy", "--json"]));
    let copy = &report["copies"][0];
    assert_eq!(copy["name"], "dr");
    assert_eq!(copy["objects_copied"].as_u64().unwrap(), planned, "{report}");
    assert_eq!(copy["backups_copied"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(copy["lag"]["segments"], 0, "{report}");
    // A second run finds nothing to do.
    let again = json(&r.pgdr.ok(&["copy", "--json"]));
    assert_eq!(again["copies"][0]["objects_copied"], 0, "{again}");
    assert_eq!(
        again["copies"][0]["objects_present"].as_u64().unwrap(),
        planned,
        "{again}"
    );
    let primary_list = labels(&r.pgdr.list_json());

    // Region 1 goes away entirely.
    r.primary.stop();
    let out = r.pgdr.run(&["list"]);
    assert!(!out.status.success(), "the primary region still answers");

    let dr_list: Vec<serde_json::Value> =
        serde_json::from_str(&r.pgdr.ok(&["--repository", "dr", "list", "--json"])).unwrap();
    assert_eq!(labels(&dr_list), primary_list);

    // Point in time, from the copy: the restored server fetches its WAL from the copy.
    let restored = r
        .pgdr
        .restore_started(&["--repository", "dr", "--target-time", &between]);
    assert_eq!(
        restored.psql("postgres", "SELECT string_agg(m, ',' ORDER BY m) FROM markers"),
        "t1"
    );
    assert_eq!(content_hashes_at(restored.port, "bench"), at_target);
    let auto = std::fs::read_to_string(restored.data.join("postgresql.auto.conf")).unwrap();
    // (quotes doubled inside the setting's own quotes)
    assert!(auto.contains("--repository ''dr'' wal-fetch"), "{auto}");
    assert!(!auto.contains("secret"), "{auto}");
    drop(restored);

    // Logical, from the copy.
    r.pgdr.ok(&[
        "--repository",
        "dr",
        "restore",
        "--database",
        "bench",
        "--to-database",
        "bench_from_dr",
    ]);
    assert_eq!(c.content_hashes("bench_from_dr"), at_logical);
}

fn local_with_copy(cluster: &Cluster) -> (Pgdr, std::path::PathBuf) {
    let pgdr = Pgdr::new(cluster, RepoKind::Local);
    let copy_dir = pgdr.dir.join("copy-region2");
    let mut text = std::fs::read_to_string(&pgdr.config).unwrap();
    text.push_str(&format!(
        "\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\n",
        copy_dir.display()
    ));
    std::fs::write(&pgdr.config, text).unwrap();
    (pgdr, copy_dir)
}

/// `kill -9` in the middle of a copy: the half-copied backup is never listed in the
/// copy, the next run completes it without sending again what is there, and the copy
/// restores.
#[test]
fn a_killed_copy_resumes_and_never_shows_half_a_backup() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    cluster.psql("postgres", "CREATE DATABASE small; ");
    cluster.psql("small", "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i");
    let (pgdr, _copy_dir) = local_with_copy(&cluster);
    pgdr.ok(&["backup", "--kind", "logical"]);
    pgdr.ok(&["backup", "--kind", "logical", "--database", "shop"]);
    let planned = json(&pgdr.ok(&["copy", "--dry-run", "--json"]))["copies"][0]["objects_copied"]
        .as_u64()
        .unwrap();
    assert!(planned >= 6, "{planned}");

    // Killed after two objects of the first backup: its manifest never got there.
    let out = pgdr
        .command(&["copy", "--jobs", "1"])
        .env("PGDR_TEST_COPY_KILL_AFTER", "2")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "the copy was not killed: {out:?}");
    assert_eq!(pgdr.ok(&["--repository", "dr", "list", "--json"]).trim(), "[]");

    let report = json(&pgdr.ok(&["copy", "--json"]));
    let copy = &report["copies"][0];
    assert_eq!(copy["objects_present"], 2, "{report}");
    assert_eq!(copy["objects_copied"].as_u64().unwrap(), planned - 2, "{report}");
    let primary: Vec<serde_json::Value> = pgdr.list_json();
    let dr: Vec<serde_json::Value> = serde_json::from_str(&pgdr.ok(&["--repository", "dr", "list", "--json"])).unwrap();
    assert_eq!(labels(&dr), labels(&primary));

    // The copy restores on its own (the primary's directory moved away).
    let primary_dir = pgdr.repo_dir.clone().unwrap();
    let aside = primary_dir.with_extension("gone");
    std::fs::rename(&primary_dir, &aside).unwrap();
    pgdr.ok(&[
        "--repository",
        "dr",
        "restore",
        "--database",
        "shop",
        "--to-database",
        "shop_from_dr",
    ]);
    assert_eq!(cluster.content_hashes("shop_from_dr"), cluster.content_hashes("shop"));
    // So does the weekly restore test, its report stored in the copy.
    let verified = json(&pgdr.ok(&["--repository", "dr", "verify", "--kind", "logical", "--json"]));
    assert_eq!(verified["ok"], true, "{verified}");
    std::fs::rename(&aside, &primary_dir).unwrap();
}

/// A damaged object in the primary repository is not carried into the copy: the copy
/// fails naming it, and the backup it belongs to is not listed there.
#[test]
fn copy_refuses_to_propagate_a_damaged_object() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "CREATE DATABASE app");
    cluster.psql(
        "app",
        "CREATE TABLE t AS SELECT i, md5(i::text) FROM generate_series(1, 20000) i",
    );
    let (pgdr, _copy_dir) = local_with_copy(&cluster);
    let out = json(&pgdr.ok(&["backup", "--kind", "logical", "--database", "app", "--json"]));
    let label = out["label"].as_str().unwrap().to_string();
    let root = pgdr.repo_dir.clone().unwrap();
    let dump = repo_files(&root)
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&label) && p.to_string_lossy().ends_with("app.dump"))
        .expect("the dump object");
    let mut bytes = std::fs::read(&dump).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&dump, bytes).unwrap();

    let err = assert_fails(&pgdr.run(&["copy"]), 1, "databases/app.dump");
    assert!(err.contains(&label) && err.contains("not copied"), "{err}");
    assert_eq!(pgdr.ok(&["--repository", "dr", "list", "--json"]).trim(), "[]");
}

/// Configuration mistakes about copies are one line and exit 2.
#[test]
fn copies_are_named_and_checked() {
    let cluster = Cluster::start();
    let (pgdr, _copy_dir) = local_with_copy(&cluster);
    assert_fails(
        &pgdr.run(&["--repository", "nowhere", "list"]),
        2,
        "no repository copy named \"nowhere\"",
    );
    assert_fails(
        &pgdr.run(&["copy", "--to", "nowhere"]),
        2,
        "the configured copies are dr",
    );
    let out = pgdr
        .command(&["list"])
        .env("PGDR_REPOSITORY", "nowhere")
        .output()
        .unwrap();
    assert_fails(&out, 2, "nowhere");
    // The primary by name is the primary.
    pgdr.ok(&["--repository", "primary", "list"]);
}

/// A TCP port that accepts connections and never answers: a copy whose region hangs.
struct Blackhole {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Blackhole {
    fn start() -> Blackhole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    held.push(c);
                }
            }
        });
        Blackhole {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Close the port (connections are refused from now on).
    fn close(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.close();
    }
}

fn check_line(pgdr: &Pgdr, name: &str) -> serde_json::Value {
    let out = pgdr.run(&["check", "--json"]);
    let report = json(&String::from_utf8_lossy(&out.stdout));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name:?} line: {report}"))
        .clone()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `wal = "sync"` with the copy's region hanging: archive_command still succeeds within
/// the bounded wait; once the region answers again, check and metrics show the
/// backlog, `pgdr copy` drains it, and new WAL reaches the copy as it is archived.
#[test]
fn sync_wal_does_not_stall_on_a_dead_copy_and_the_backlog_drains() {
    let mut hole = Blackhole::start();
    let port = hole.port;
    let a = Archiving::start();
    aws_profiles(a.pgdr.dir.path());
    let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    text = text.replace("[wal]\n", "[wal]\ncopy_timeout_seconds = 2\n");
    text.push_str(&format!(
        "\n[[repository.copies]]\nname = \"dr\"\nurl = \"s3://dr-bucket/region2\"\nendpoint = \"http://127.0.0.1:{port}\"\nforce_path_style = true\nprofile = \"dr\"\nwal = \"sync\"\n"
    ));
    std::fs::write(&a.pgdr.config, text).unwrap();
    // The server's archive_command finds the dr profile through HOME.
    a.cluster.configure(&[format!(
        "archive_command = 'HOME={} {PGDR} --config {} wal-push %p'",
        a.pgdr.dir.path().display(),
        a.pgdr.config.display()
    )]);
    a.cluster.psql("postgres", "SELECT pg_reload_conf()");
    a.cluster
        .psql("postgres", "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i");

    // Archiving goes on while the copy hangs: each file waits at most the bound.
    let started = std::time::Instant::now();
    for i in 0..3 {
        a.cluster.psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        a.switch_and_wait();
    }
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "archiving stalled on the hanging copy: {:?}",
        started.elapsed()
    );
    let log = a.cluster.log();
    assert!(
        log.contains("acknowledged on the primary repository's strength"),
        "no warning in the server log:\n{log}"
    );

    // The region answers again (empty: moto keeps nothing across restarts).
    hole.close();
    let dr = OwnS3::start_on(port);
    dr.server.create_bucket("dr-bucket");
    a.pgdr.ok(&["copy", "--to", "dr", "--dry-run"]);
    // Before the first copy: nothing there, so check says what to run.
    let line = check_line(&a.pgdr, "copy dr");
    assert_eq!(line["status"], "warning", "{line}");
    assert!(
        line["detail"].as_str().unwrap().contains("behind the primary"),
        "{line}"
    );
    let metrics = a.pgdr.ok(&["metrics"]);
    assert!(
        metric(&metrics, "pgdr_copy_lag_segments{copy=\"dr\"}") >= 3.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "pgdr_copy_up{copy=\"dr\"}"), 1.0);

    let report = json(&a.pgdr.ok(&["copy", "--json"]));
    assert!(report["copies"][0]["wal_copied"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["copies"][0]["lag"]["segments"], 0, "{report}");
    assert_eq!(check_line(&a.pgdr, "copy dr")["status"], "ok");

    // Synchronous again: a new segment is in the copy as soon as it is archived.
    a.cluster
        .psql("postgres", "INSERT INTO t SELECT generate_series(1, 1000)");
    a.switch_and_wait();
    assert_eq!(check_line(&a.pgdr, "copy dr")["status"], "ok");
    let metrics = a.pgdr.ok(&["metrics"]);
    assert_eq!(
        metric(&metrics, "pgdr_copy_lag_segments{copy=\"dr\"}"),
        0.0,
        "{metrics}"
    );
}

/// `[wal] fetch_fallback`: with the primary repository gone, wal-fetch serves a
/// segment from the copy (the same bytes); without the fallback it stops recovery.
#[test]
fn wal_fetch_falls_back_to_a_copy() {
    let a = Archiving::start();
    let copy_dir = a.pgdr.dir.join("copy-region2");
    pg_owned_dir(&copy_dir);
    let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    text = text.replace("[wal]\n", "[wal]\nfetch_retry_seconds = 2\n");
    text.push_str(&format!(
        "\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\n",
        copy_dir.display()
    ));
    std::fs::write(&a.pgdr.config, &text).unwrap();
    a.cluster
        .psql("postgres", "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i");
    let seg = a.switch_and_wait();
    a.pgdr.ok(&["copy"]);
    let scratch = TestDir::new();
    let wal = scratch.join("pg_wal");
    pg_owned_dir(&wal);
    chown_postgres(scratch.path());
    let fetch = |name: &str| {
        let dest = wal.join(name);
        a.pgdr.run(&["wal-fetch", &seg, dest.to_str().unwrap()])
    };
    let out = fetch("from-primary");
    assert_success(&out, "wal-fetch from the primary");
    let want = std::fs::read(wal.join("from-primary")).unwrap();

    // The primary region's repository disappears.
    let primary = a.pgdr.repo_dir.clone().unwrap();
    let aside = primary.with_extension("gone");
    std::fs::rename(&primary, &aside).unwrap();
    let out = fetch("no-fallback");
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(!wal.join("no-fallback").exists());

    std::fs::write(
        &a.pgdr.config,
        text.replace("[wal]\n", "[wal]\nfetch_fallback = [\"dr\"]\n"),
    )
    .unwrap();
    let out = fetch("from-copy");
    assert_success(&out, "wal-fetch falling back to the copy");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("from copy \"dr\""),
        "{out:?}"
    );
    assert_eq!(std::fs::read(wal.join("from-copy")).unwrap(), want);
    std::fs::rename(&aside, &primary).unwrap();
}

/// Retention runs per repository: `expire --repository dr` removes the copy's old
/// backup and the WAL before the kept one, never WAL the kept backup needs, and leaves
/// the primary alone; the copy still restores to the latest point.
#[test]
fn expire_on_a_copy_keeps_what_its_backups_need() {
    let a = Archiving::start();
    let c = &a.cluster;
    let copy_dir = a.pgdr.dir.join("copy-region2");
    pg_owned_dir(&copy_dir);
    let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    text = text.replace("[wal]\n", "[retention]\nfull_count = 1\n\n[wal]\n");
    text.push_str(&format!(
        "\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\n",
        copy_dir.display()
    ));
    std::fs::write(&a.pgdr.config, &text).unwrap();
    c.psql("postgres", "CREATE TABLE markers (m text)");
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("postgres", "INSERT INTO markers VALUES ('after-first')");
    a.switch_and_wait();
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("postgres", "INSERT INTO markers VALUES ('after-second')");
    a.switch_and_wait();
    a.pgdr.ok(&["copy"]);

    let report = json(&a.pgdr.ok(&["--repository", "dr", "expire", "--json"]));
    let removed: Vec<_> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["keep"] == false)
        .collect();
    assert_eq!(removed.len(), 1, "{report}");
    let dr: Vec<serde_json::Value> =
        serde_json::from_str(&a.pgdr.ok(&["--repository", "dr", "list", "--json"])).unwrap();
    assert_eq!(dr.iter().filter(|b| b["kind"] == "physical").count(), 1);
    assert_eq!(a.pgdr.list_json().iter().filter(|b| b["kind"] == "physical").count(), 2);

    let r = a.pgdr.restore_started(&["--repository", "dr", "--target", "latest"]);
    assert_eq!(
        r.psql("postgres", "SELECT string_agg(m, ',' ORDER BY m) FROM markers"),
        "after-first,after-second"
    );
}

/// A copy with a key of its own: every object is re-sealed for it (the primary's key
/// cannot open the copy, the copy's key cannot open the primary), and the copy alone
/// restores to the latest point, its restored server fetching WAL with the copy's key.
#[test]
fn a_copy_with_its_own_key_is_resealed_and_restores() {
    let a = Archiving::start();
    let c = &a.cluster;
    let copy_dir = a.pgdr.dir.join("copy-region2");
    pg_owned_dir(&copy_dir);
    let copy_key = a.pgdr.dir.join("dr.key");
    let hex: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    std::fs::write(&copy_key, &hex).unwrap();
    chown_postgres(&copy_key);
    let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    text.push_str(&format!(
        "\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\nkey_file = \"{}\"\n",
        copy_dir.display(),
        copy_key.display()
    ));
    std::fs::write(&a.pgdr.config, &text).unwrap();
    c.psql("postgres", "CREATE TABLE markers (m text)");
    c.psql(
        "postgres",
        "CREATE TABLE big AS SELECT i, md5(i::text) FROM generate_series(1, 50000) i",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.pgdr.ok(&["backup", "--kind", "logical", "--database", "postgres"]);
    c.psql("postgres", "INSERT INTO markers VALUES ('after-backup')");
    a.switch_and_wait();
    let report = json(&a.pgdr.ok(&["copy", "--json"]));
    assert_eq!(
        report["copies"][0]["backups_copied"].as_array().unwrap().len(),
        2,
        "{report}"
    );

    // Nothing of the copy is the primary's bytes, and each key opens only its own.
    let primary_root = a.pgdr.repo_dir.clone().unwrap().join("test");
    let copy_root = copy_dir.join("test");
    let wal = repo_files(&primary_root.join("wal"))
        .into_iter()
        .find(|p| {
            p.to_string_lossy().ends_with(
                &a.cluster
                    .psql("postgres", "SELECT last_archived_wal FROM pg_stat_archiver"),
            )
        })
        .expect("the last archived segment");
    let relative = wal.strip_prefix(&primary_root).unwrap();
    let theirs = std::fs::read(copy_root.join(relative)).unwrap();
    assert_ne!(std::fs::read(&wal).unwrap(), theirs);
    let cat = |repo: &str| a.pgdr.run(&["--repository", repo, "cat", relative.to_str().unwrap()]);
    let from_copy = cat("dr");
    assert_success(&from_copy, "cat from the copy");
    assert_eq!(from_copy.stdout, cat("primary").stdout, "the same WAL plaintext");
    let repo_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy_root.join("repo.json")).unwrap()).unwrap();
    let primary_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(primary_root.join("repo.json")).unwrap()).unwrap();
    assert_ne!(repo_json["key_id"], primary_json["key_id"]);
    // The primary's key does not open the copy.
    std::fs::copy(&a.pgdr.key_file, &copy_key).unwrap();
    assert_fails(&a.pgdr.run(&["--repository", "dr", "list"]), 2, "key");
    std::fs::write(&copy_key, &hex).unwrap();

    // The copy alone, with its own key, restores to the latest point.
    let primary = a.pgdr.repo_dir.clone().unwrap();
    let aside = primary.with_extension("gone");
    std::fs::rename(&primary, &aside).unwrap();
    let r = a.pgdr.restore_started(&["--repository", "dr", "--target", "latest"]);
    assert_eq!(
        r.psql("postgres", "SELECT string_agg(m, ',') FROM markers"),
        "after-backup"
    );
    assert_eq!(content_hashes_at(r.port, "postgres"), c.content_hashes("postgres"));
    drop(r);
    let verified = json(
        &a.pgdr
            .ok(&["--repository", "dr", "verify", "--kind", "physical", "--json"]),
    );
    assert_eq!(verified["ok"], true, "{verified}");
    std::fs::rename(&aside, &primary).unwrap();
}

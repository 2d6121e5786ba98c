//! `pgdr switch` (issue 11, first part): application connections move between two
//! real clusters through a real PgBouncer while a client keeps writing; a pause that
//! cannot complete, a failing hook and a dry run leave PgBouncer running.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn app_cluster() -> Cluster {
    let c = Cluster::start();
    c.psql("postgres", "CREATE DATABASE app");
    c.psql(
        "app",
        "CREATE TABLE t (n int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    );
    c
}

/// pgdr set up on `cluster`, with a `[switch]` section for `bouncer` (and a hook).
fn with_switch(cluster: &Cluster, bouncer: &PgBouncer, extra: &str) -> Pgdr {
    let pgdr = Pgdr::new(cluster, RepoKind::Local);
    let mut text = std::fs::read_to_string(&pgdr.config).unwrap();
    text.push_str(&format!(
        "\n[switch]\npgbouncer_admin_url = \"{}\"\npgbouncer_ini = \"{}\"\npgbouncer_databases = [\"app\"]\npause_timeout_seconds = 3\n{extra}",
        bouncer.admin_url(),
        bouncer.ini.display()
    ));
    std::fs::write(&pgdr.config, text).unwrap();
    pgdr
}

/// A client writing numbered rows through PgBouncer, one connection per row, until
/// stopped; it records every row acknowledged and every error.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u32>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(port: u16) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, a, e) = (stop.clone(), acked.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u32;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let out = psql_at(port, "app", &format!("INSERT INTO t (n) VALUES ({n})"));
                if out.status.success() {
                    a.lock().unwrap().push(n);
                } else {
                    e.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
        });
        Writer {
            stop,
            acked,
            errors,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<u32>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        (self.acked.lock().unwrap().clone(), self.errors.lock().unwrap().clone())
    }
}

fn rows(c: &Cluster) -> BTreeSet<u32> {
    c.psql("app", "SELECT n FROM t ORDER BY n")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Transaction pooling, a client writing the whole time: after the switch every
/// acknowledged row is on exactly one server, the later ones on the new server, the
/// client saw no error (only waits), and pgbouncer.ini changed in one line only.
#[test]
fn switch_moves_writes_without_errors() {
    let (a, b) = (app_cluster(), app_cluster());
    let bouncer = PgBouncer::start(&[("app", a.port)], "transaction");
    let before = std::fs::read_to_string(&bouncer.ini).unwrap();
    let marker = bouncer.dir.join("hook-env");
    let pgdr = with_switch(
        &a,
        &bouncer,
        &format!("hook = \"env | grep ^PGDR_SWITCH_ | sort > {}\"\n", marker.display()),
    );
    let writer = Writer::start(bouncer.port);
    std::thread::sleep(Duration::from_millis(800));
    let out = pgdr.run(&["switch", "--to", &format!("127.0.0.1:{}", b.port), "--yes", "--json"]);
    assert_success(&out, "pgdr switch");
    std::thread::sleep(Duration::from_millis(800));
    let (acked, errors) = writer.finish();
    assert!(errors.is_empty(), "the client saw errors during the switch: {errors:?}");
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "connect",
            "pause app",
            "rewrite pgbouncer.ini",
            "reload",
            "resume app",
            "hook"
        ]
    );

    let (on_a, on_b) = (rows(&a), rows(&b));
    assert!(on_a.is_disjoint(&on_b), "a row landed on both servers");
    let all: BTreeSet<u32> = on_a.union(&on_b).copied().collect();
    let acked: BTreeSet<u32> = acked.into_iter().collect();
    assert!(
        acked.is_subset(&all),
        "acknowledged rows are missing: {:?}",
        acked.difference(&all).collect::<Vec<_>>()
    );
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "a: {} rows, b: {} rows",
        on_a.len(),
        on_b.len()
    );
    assert!(
        on_a.iter().max() < on_b.iter().min(),
        "writes went back to the old server"
    );

    // New writes land on the new server.
    let out = bouncer.psql("app", "INSERT INTO t (n) VALUES (1000000)");
    assert!(out.status.success());
    assert!(rows(&b).contains(&1000000));

    // pgbouncer.ini: the app line changed, nothing else.
    let after = std::fs::read_to_string(&bouncer.ini).unwrap();
    let changed: Vec<(&str, &str)> = before.lines().zip(after.lines()).filter(|(x, y)| x != y).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].1, format!("app = host=127.0.0.1 port={} dbname=app", b.port));
    assert_eq!(before.lines().count(), after.lines().count());

    // The switch is a metric (its report is in the repository).
    let metrics = pgdr.ok(&["metrics"]);
    assert!(
        metrics.contains("pgdr_switch_last_timestamp_seconds{event=\"switch\"}")
            && metrics.contains("pgdr_switch_last_duration_seconds{event=\"switch\"}"),
        "{metrics}"
    );

    // The hook got both ends.
    let env = std::fs::read_to_string(&marker).unwrap();
    assert!(env.contains(&format!("PGDR_SWITCH_NEW_PORT={}", b.port)), "{env}");
    assert!(env.contains(&format!("PGDR_SWITCH_OLD_PORT={}", a.port)), "{env}");
    assert!(env.contains("PGDR_SWITCH_NEW_HOST=127.0.0.1"), "{env}");
}

/// Session pooling with a client that never leaves: PAUSE cannot complete, the
/// time-out fires, PgBouncer is resumed on the old settings, and the error says who
/// held the pause.
#[test]
fn a_pause_that_cannot_complete_is_abandoned_and_resumed() {
    let (a, b) = (app_cluster(), app_cluster());
    let bouncer = PgBouncer::start(&[("app", a.port)], "session");
    let before = std::fs::read(&bouncer.ini).unwrap();
    let pgdr = with_switch(&a, &bouncer, "");
    // A session that stays connected (psql waiting on its input).
    let mut holder = Command::new(pg_bin().join("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &bouncer.port.to_string(),
            "-d",
            "app",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    holder.stdin.as_mut().unwrap().write_all(b"SELECT 1;\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Ctrl-C while PgBouncer is paused does not cut the switch off half-way.
    let child = pgdr
        .command(&["switch", "--to", &format!("127.0.0.1:{}", b.port), "--yes", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the switch is finishing first"),
        "{out:?}"
    );
    let report = json(&out);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("PAUSE app did not complete within 3 s"), "{error}");
    assert!(
        error.contains("still hold server connections: postgres@127.0.0.1"),
        "{error}"
    );
    assert!(error.contains("resumed on the old settings"), "{error}");
    assert_eq!(std::fs::read(&bouncer.ini).unwrap(), before, "pgbouncer.ini changed");
    // Not paused: a new client gets through, to the old server.
    let out = bouncer.psql("app", "INSERT INTO t (n) VALUES (7) RETURNING n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(rows(&a).contains(&7));
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A hook that fails: the switch reports it and exits 1, and PgBouncer (switched
/// first) is running, not paused.
#[test]
fn a_failing_hook_is_reported_and_pgbouncer_is_not_left_paused() {
    let (a, b) = (app_cluster(), app_cluster());
    let bouncer = PgBouncer::start(&[("app", a.port)], "transaction");
    let pgdr = with_switch(&a, &bouncer, "hook = \"echo 'dns update refused' >&2; exit 1\"\n");
    let out = pgdr.run(&["switch", "--to", &format!("127.0.0.1:{}", b.port), "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the switch hook exited with exit status: 1: dns update refused"),
        "{stdout}"
    );
    let out = bouncer.psql("app", "INSERT INTO t (n) VALUES (9)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(rows(&b).contains(&9));
}

/// `--dry-run` prints the plan and changes nothing; without a terminal and without
/// `--yes`, nothing happens either.
#[test]
fn dry_run_and_missing_confirmation_change_nothing() {
    let (a, b) = (app_cluster(), app_cluster());
    let bouncer = PgBouncer::start(&[("app", a.port)], "transaction");
    let before = std::fs::read(&bouncer.ini).unwrap();
    let pgdr = with_switch(&a, &bouncer, "");
    let to = format!("127.0.0.1:{}", b.port);
    let out = pgdr.run(&["switch", "--to", &to, "--dry-run"]);
    assert_success(&out, "switch --dry-run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("point 127.0.0.1:{} → {to}", a.port)), "{text}");
    assert!(text.contains("dry run: nothing was changed"), "{text}");
    assert_fails(&pgdr.run(&["switch", "--to", &to]), 2, "pass --yes");
    assert_fails(&pgdr.run(&["switch", "--to", "nowhere"]), 2, "HOST:PORT");
    assert_eq!(std::fs::read(&bouncer.ini).unwrap(), before);
    let out = bouncer.psql("app", "INSERT INTO t (n) VALUES (3)");
    assert!(out.status.success());
    assert!(rows(&a).contains(&3) && !rows(&b).contains(&3));
}

/// `pgdr standby create` of `a`'s cluster into a new directory (plus `extra` flags);
/// the standby (stopped when dropped) and pgdr's output.
fn create_standby(a: &Archiving, extra: &[&str]) -> (Restored, std::process::Output) {
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let data = dir.join("data");
    let sock = dir.join("sock");
    pg_owned_dir(&sock);
    let port = free_port();
    let (primary, port_s) = (format!("127.0.0.1:{}", a.cluster.port), port.to_string());
    let mut args = vec![
        "standby",
        "create",
        "--to",
        data.to_str().unwrap(),
        "--primary",
        &primary,
        "--port",
        &port_s,
        "--socket-dir",
        sock.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = a.pgdr.run(&args);
    assert_success(&out, "pgdr standby create");
    let standby = Restored {
        dir,
        data,
        port,
        output: String::new(),
    };
    (standby, out)
}

/// The whole of it: a standby built by `pgdr standby create` streams from an archiving
/// primary; a client writes through PgBouncer; `pgdr failover` fences the old primary
/// (fast stop), promotes the standby, switches PgBouncer. The old primary takes no
/// writes, every acknowledged row is on the new primary, the client saw no error, and
/// the report names an RPO of zero.
#[test]
fn failover_to_a_standby_built_from_backup() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE app");
    c.psql(
        "app",
        "CREATE TABLE t (n int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    c.psql("app", "INSERT INTO t (n) SELECT -g FROM generate_series(1, 100) g");

    let (standby, out) = create_standby(&a, &["--slot", "pgdr_standby", "--json"]);
    let port = standby.port;
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(created["streaming_from"].as_str().unwrap().contains('/'), "{created}");
    let slot = c.psql(
        "postgres",
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgdr_standby'",
    );
    assert_eq!(slot, "t", "the slot is not in use");

    let bouncer = PgBouncer::start(&[("app", c.port)], "transaction");
    let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    text.push_str(&format!(
        "\n[switch]\npgbouncer_admin_url = \"{}\"\npgbouncer_ini = \"{}\"\npgbouncer_databases = [\"app\"]\npause_timeout_seconds = 10\n",
        bouncer.admin_url(),
        bouncer.ini.display()
    ));
    std::fs::write(&a.pgdr.config, text).unwrap();

    // A dry run changes nothing: the file, the standby, the old primary.
    let ini_before = std::fs::read(&bouncer.ini).unwrap();
    let to = format!("127.0.0.1:{port}");
    let old = format!("127.0.0.1:{}", c.port);
    let out = a.pgdr.run(&[
        "failover",
        "--to",
        &to,
        "--old",
        &old,
        "--old-data-dir",
        c.data.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_success(&out, "pgdr failover --dry-run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("fast stop of"), "{out:?}");
    assert_eq!(std::fs::read(&bouncer.ini).unwrap(), ini_before);
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    assert!(psql_at(c.port, "app", "SELECT 1").status.success());
    // Not a standby: refused before anything happens.
    assert_fails(&a.pgdr.run(&["failover", "--to", &old, "--yes"]), 2, "is not a standby");

    let writer = Writer::start(bouncer.port);
    std::thread::sleep(Duration::from_millis(1000));
    let out = a.pgdr.run(&[
        "failover",
        "--to",
        &format!("127.0.0.1:{port}"),
        "--old",
        &format!("127.0.0.1:{}", c.port),
        "--old-data-dir",
        c.data.to_str().unwrap(),
        "--yes",
        "--json",
    ]);
    std::thread::sleep(Duration::from_millis(800));
    let (acked, errors) = writer.finish();
    assert_success(&out, "pgdr failover");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["rpo_bytes"], 0, "{report}");
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");

    // The old primary takes no writes (it is stopped).
    assert!(
        !psql_at(c.port, "app", "INSERT INTO t (n) VALUES (-1000)")
            .status
            .success()
    );
    // Every acknowledged row is on the new primary, and new writes land there.
    let on_new: BTreeSet<u32> = standby
        .psql("app", "SELECT n FROM t WHERE n > 0 ORDER BY n")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect();
    let acked: BTreeSet<u32> = acked.into_iter().collect();
    assert!(!acked.is_empty());
    assert!(
        acked.is_subset(&on_new),
        "acknowledged rows missing on the new primary: {:?}",
        acked.difference(&on_new).collect::<Vec<_>>()
    );
    assert_eq!(standby.psql("app", "SELECT count(*) FROM t WHERE n < 0"), "100");
    assert!(
        bouncer
            .psql("app", "INSERT INTO t (n) VALUES (5000000)")
            .status
            .success()
    );
    assert_eq!(standby.psql("app", "SELECT count(*) FROM t WHERE n = 5000000"), "1");
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
}

/// The old primary is elsewhere (no data directory here) but answers: it is made
/// read-only and its sessions ended before the standby is promoted, and the RPO is
/// measured against where it stood after the fence.
#[test]
fn failover_fences_a_reachable_old_primary_read_only() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 1000) g",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let (standby, _) = create_standby(&a, &[]);
    let port = standby.port;
    c.psql("postgres", "INSERT INTO t SELECT generate_series(1001, 2000)");
    let out = a.pgdr.run(&[
        "failover",
        "--to",
        &format!("127.0.0.1:{port}"),
        "--old",
        &format!("127.0.0.1:{}", c.port),
        "--yes",
        "--json",
    ]);
    assert_success(&out, "pgdr failover (remote fence)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["fenced"].as_str().unwrap().contains("read-only"), "{report}");
    assert_eq!(report["rpo_bytes"], 0, "{report}");
    assert_eq!(c.psql("postgres", "SHOW default_transaction_read_only"), "on");
    let refused = c.psql_output("postgres", "INSERT INTO t VALUES (-1)");
    assert!(!refused.status.success(), "the old primary still takes writes");
    assert_eq!(standby.psql("postgres", "SELECT count(*) FROM t"), "2000");
    assert!(standby.psql("postgres", "INSERT INTO t VALUES (-1) RETURNING n") == "-1");
}

/// A hook that hangs is killed at its time-out with everything it started, and the
/// switch reports it (PgBouncer already moved and running).
#[test]
fn a_hanging_hook_is_killed_with_its_children() {
    let (a, b) = (app_cluster(), app_cluster());
    let bouncer = PgBouncer::start(&[("app", a.port)], "transaction");
    let pgdr = with_switch(&a, &bouncer, "hook = \"sleep 4217 & wait\"\nhook_timeout_seconds = 1\n");
    let out = pgdr.run(&["switch", "--to", &format!("127.0.0.1:{}", b.port), "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("did not finish within 1 s"),
        "{out:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let left = Command::new("pgrep").args(["-f", "sleep 4217"]).output().unwrap();
    assert!(
        !left.status.success(),
        "the hook's child is still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert!(bouncer.psql("app", "SELECT 1").status.success());
}

/// An archiving primary with an `app` database, a physical backup, a standby made by
/// `pgdr standby create`, and a PgBouncer in `layout` whose `app` points at the
/// primary; pgdr's config switches through it.
struct FailoverSetup {
    a: Archiving,
    standby: Restored,
    bouncer: PgBouncer,
}

impl FailoverSetup {
    fn new(layout: BouncerLayout) -> FailoverSetup {
        let a = Archiving::start();
        let c = &a.cluster;
        c.psql("postgres", "CREATE DATABASE app");
        c.psql("app", "CREATE TABLE t (n int PRIMARY KEY)");
        c.psql("app", "INSERT INTO t SELECT -g FROM generate_series(1, 100) g");
        a.pgdr.ok(&["backup", "--kind", "physical"]);
        let (standby, _) = create_standby(&a, &[]);
        let bouncer = PgBouncer::start_in(&[("app", c.port)], "transaction", layout);
        let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
        text.push_str(&format!(
            "\n[switch]\npgbouncer_admin_url = \"{}\"\npgbouncer_ini = \"{}\"\npgbouncer_databases = [\"app\"]\npause_timeout_seconds = 10\ncatch_up_seconds = 20\n",
            bouncer.admin_url(),
            bouncer.databases_file().display()
        ));
        std::fs::write(&a.pgdr.config, text).unwrap();
        FailoverSetup { a, standby, bouncer }
    }

    fn to(&self) -> String {
        format!("127.0.0.1:{}", self.standby.port)
    }

    /// `pgdr failover --to <the standby>` plus `args`.
    fn failover(&self, args: &[&str]) -> std::process::Output {
        let to = self.to();
        let mut all = vec!["failover", "--to", &to];
        all.extend_from_slice(args);
        self.a.pgdr.run(&all)
    }

    /// Cut the standby off its primary (plus `more` SQL run with it) and wait until
    /// it no longer streams.
    fn stop_streaming(&self, more: &str) {
        self.standby.psql(
            "postgres",
            &format!("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'; {more} SELECT pg_reload_conf()"),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let streaming = "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'";
        while self.standby.psql("postgres", streaming) != "0" {
            assert!(std::time::Instant::now() < deadline, "the standby still streams");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn old(&self) -> String {
        format!("127.0.0.1:{}", self.a.cluster.port)
    }

    /// Nothing changed: the standby is one, the old primary takes writes, PgBouncer
    /// sends `app` to it with the same file.
    fn assert_untouched(&self, ini_before: &[u8]) {
        assert_eq!(self.standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
        assert!(
            psql_at(self.a.cluster.port, "app", "INSERT INTO t VALUES (-1000007)")
                .status
                .success()
        );
        assert_eq!(std::fs::read(self.bouncer.databases_file()).unwrap(), ini_before);
        let through = self.bouncer.psql("app", "SELECT count(*) FROM t WHERE n = -1000007");
        assert!(through.status.success(), "PgBouncer does not serve app: {through:?}");
        assert_eq!(String::from_utf8_lossy(&through.stdout).trim(), "1");
        self.a.cluster.psql("app", "DELETE FROM t WHERE n = -1000007");
    }
}

/// Issue 25's split brain: the old primary is alive, but pg_hba rejects pgdr's
/// logins (as a network split, a wrong password or a full server would look). Before,
/// failover took it to be down, promoted the standby and exited 0: two primaries. Now
/// it refuses before anything changes and names the ways forward; with the DBA's
/// word (`--old-primary-is-down`) it goes ahead and the report says whose word it was.
#[test]
fn an_old_primary_pgdr_cannot_log_into_is_not_down() {
    let f = FailoverSetup::new(BouncerLayout::Owned);
    let c = &f.a.cluster;
    // pgdr logs into database postgres over TCP; the application uses app.
    let hba = c.data.join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host postgres all 127.0.0.1/32 reject\n{text}")).unwrap();
    c.psql("app", "SELECT pg_reload_conf()");
    let ini_before = std::fs::read(f.bouncer.databases_file()).unwrap();
    let out = f.failover(&["--old", &f.old(), "--yes"]);
    let said = assert_fails(&out, 2, "does not prove it is down");
    assert!(said.contains("--old-primary-is-down"), "{said}");
    f.assert_untouched(&ini_before);

    // The DBA's word: it goes ahead, and the report records it (RPO unknown).
    let out = f.failover(&["--old", &f.old(), "--old-primary-is-down", "--yes", "--json"]);
    assert_success(&out, "pgdr failover --old-primary-is-down");
    let report = json(&out);
    assert_eq!(report["fence"]["proof"], "declared-by-dba", "{report}");
    assert_eq!(report["fence_weak"], true, "{report}");
    assert_eq!(report["rpo"]["rpo"], "unknown", "{report}");
    assert!(report["rpo_bytes"].is_null(), "{report}");
    assert_eq!(f.standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(f.standby.psql("app", "SELECT count(*) FROM t WHERE n < 0"), "100");
}

/// An old primary whose port accepts connections and never answers is not down
/// either: refused, nothing changed.
#[test]
fn an_old_primary_that_never_answers_is_not_down() {
    let f = FailoverSetup::new(BouncerLayout::Owned);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in silent.incoming().flatten() {
            keep.lock().unwrap().push(conn);
        }
    });
    let ini_before = std::fs::read(f.bouncer.databases_file()).unwrap();
    let out = f.failover(&["--old", &format!("127.0.0.1:{silent_port}"), "--yes"]);
    let said = assert_fails(&out, 2, "did not answer within");
    assert!(said.contains("--old-primary-is-down"), "{said}");
    assert!(!held.lock().unwrap().is_empty(), "pgdr never tried the old primary");
    f.assert_untouched(&ini_before);
}

/// Issue 25's outage: PgBouncer as Debian installs it (/etc/pgbouncer root's,
/// pgbouncer.ini postgres:postgres 0640) and pgdr running as postgres. Before, the
/// old primary was stopped and the standby promoted before pgdr found it could not
/// create its temporary file, and PgBouncer went back to the stopped server. Now the
/// file is rewritten in place (owner and mode kept) and the failover completes; a
/// file pgdr cannot write at all is refused before the fence.
#[test]
fn failover_through_pgbouncer_as_distributions_install_it() {
    let f = FailoverSetup::new(BouncerLayout::Debian);
    assert!(f.a.pgdr.as_postgres || !is_root(), "pgdr must run as postgres here");
    let ini = f.bouncer.ini.clone();
    let etc = ini.parent().unwrap().to_path_buf();
    let listing = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let files_before = listing(&etc);

    if is_root() {
        // A file pgdr cannot write either way: refused before anything is fenced.
        std::os::unix::fs::chown(&ini, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&ini, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let ini_before = std::fs::read(&ini).unwrap();
        let out = f.a.pgdr.run(&[
            "failover",
            "--to",
            &f.to(),
            "--old-data-dir",
            f.a.cluster.data.to_str().unwrap(),
            "--yes",
        ]);
        let said = assert_fails(&out, 2, "refused before changing anything");
        assert!(said.contains("pgbouncer.ini"), "{said}");
        f.assert_untouched(&ini_before);
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&ini, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&ini, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    }

    let writer = Writer::start(f.bouncer.port);
    std::thread::sleep(Duration::from_millis(500));
    let out = f.failover(&[
        "--old",
        &f.old(),
        "--old-data-dir",
        f.a.cluster.data.to_str().unwrap(),
        "--yes",
        "--json",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let (acked, errors) = writer.finish();
    assert_success(&out, "pgdr failover (Debian layout, as postgres)");
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["fence"]["proof"], "stopped", "{report}");
    assert_eq!(report["rpo"]["rpo"], "none-lost", "{report}");
    assert!(report["timeline"].as_u64().unwrap() >= 2, "{report}");
    assert!(errors.is_empty(), "the client saw errors: {errors:?}");
    let on_new: BTreeSet<u32> = f
        .standby
        .psql("app", "SELECT n FROM t WHERE n > 0")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().unwrap())
        .collect();
    let acked: BTreeSet<u32> = acked.into_iter().collect();
    assert!(!acked.is_empty());
    assert!(
        acked.is_subset(&on_new),
        "acknowledged rows lost: {:?}",
        acked.difference(&on_new)
    );
    // Rewritten in place: same owner, group and mode; nothing left in /etc/pgbouncer.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&ini).unwrap();
    if is_root() {
        assert_eq!((meta.uid(), meta.gid()), postgres_ids());
    }
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(listing(&etc), files_before);
    assert!(
        std::fs::read_to_string(&ini)
            .unwrap()
            .contains(&format!("port={}", f.standby.port))
    );
    assert!(
        f.bouncer
            .psql("app", "INSERT INTO t VALUES (-5000000)")
            .status
            .success()
    );
    assert_eq!(f.standby.psql("app", "SELECT count(*) FROM t WHERE n = -5000000"), "1");
    // The promoted timeline is the one `latest` follows.
    let tli = report["timeline"].as_u64().unwrap();
    let declared =
        f.a.pgdr
            .repo_dir
            .as_ref()
            .unwrap()
            .join(format!("test/timelines/{tli:08X}.primary"));
    assert!(declared.is_file(), "{} was not declared", declared.display());
}

/// The better layout: pgbouncer.ini stays root's, and `%include`s a `[databases]`
/// file in a directory pgdr owns; pgdr rewrites only that file.
#[test]
fn switch_through_a_databases_include_file() {
    let (a, b) = (app_cluster(), app_cluster());
    let bouncer = PgBouncer::start_in(&[("app", a.port)], "transaction", BouncerLayout::DebianWithInclude);
    let pgdr = Pgdr::new(&a, RepoKind::Local);
    let mut text = std::fs::read_to_string(&pgdr.config).unwrap();
    text.push_str(&format!(
        "\n[switch]\npgbouncer_admin_url = \"{}\"\npgbouncer_ini = \"{}\"\npgbouncer_databases = [\"app\"]\n",
        bouncer.admin_url(),
        bouncer.databases_file().display()
    ));
    std::fs::write(&pgdr.config, text).unwrap();
    let main_before = std::fs::read(&bouncer.ini).unwrap();
    let out = pgdr.run(&["switch", "--to", &format!("127.0.0.1:{}", b.port), "--yes"]);
    assert_success(&out, "pgdr switch (include file)");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("✓ pgbouncer.ini writable"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(&bouncer.ini).unwrap(), main_before);
    assert!(bouncer.psql("app", "INSERT INTO t (n) VALUES (1)").status.success());
    assert_eq!(b.psql("app", "SELECT count(*) FROM t"), "1");
    assert_eq!(a.psql("app", "SELECT count(*) FROM t"), "0");
}

/// A standby whose replay is paused (and so behind), with the WAL it lacks in the
/// archive: failover resumes it and waits until it has replayed everything the old
/// primary wrote. Before, it promoted after pause_timeout_seconds — which ends a
/// paused recovery where it stood — and lost the rows.
#[test]
fn a_standby_behind_catches_up_before_promotion() {
    let f = FailoverSetup::new(BouncerLayout::Owned);
    f.standby.psql("postgres", "SELECT pg_wal_replay_pause()");
    f.a.cluster
        .psql("app", "INSERT INTO t SELECT g FROM generate_series(101, 5000) g");
    f.a.switch_and_wait();
    let out = f.failover(&["--old-data-dir", f.a.cluster.data.to_str().unwrap(), "--yes", "--json"]);
    assert_success(&out, "pgdr failover (paused standby)");
    let report = json(&out);
    assert_eq!(report["rpo_bytes"], 0, "{report}");
    assert_eq!(f.standby.psql("app", "SELECT count(*) FROM t"), "5000");
}

/// A standby that can neither stream nor restore from the archive cannot catch up:
/// refused before the fence; with `--accept-data-loss` it is promoted and the report
/// gives the bytes lost.
#[test]
fn a_standby_that_cannot_catch_up_needs_accept_data_loss() {
    let f = FailoverSetup::new(BouncerLayout::Owned);
    f.stop_streaming("ALTER SYSTEM SET restore_command = '';");
    f.a.cluster
        .psql("app", "INSERT INTO t SELECT g FROM generate_series(101, 2000) g");
    let ini_before = std::fs::read(f.bouncer.databases_file()).unwrap();
    let data = f.a.cluster.data.to_str().unwrap().to_string();
    let out = f.failover(&["--old-data-dir", &data, "--yes"]);
    let said = assert_fails(&out, 2, "cannot catch up");
    assert!(said.contains("--accept-data-loss"), "{said}");
    f.assert_untouched(&ini_before);
    let out = f.failover(&["--old-data-dir", &data, "--accept-data-loss", "--yes", "--json"]);
    assert_success(&out, "pgdr failover --accept-data-loss");
    let report = json(&out);
    assert_eq!(report["data_loss_accepted"], true, "{report}");
    assert!(report["rpo_bytes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["rpo"]["rpo"], "lost", "{report}");
    assert_eq!(f.standby.psql("app", "SELECT count(*) FROM t"), "100");
}

/// The standby streams no more and the old primary's last WAL was never archived:
/// the checks pass (it has a restore_command), the old primary is stopped, and only
/// then does catch-up fall short. Nothing is promoted: the fence is taken back (the
/// old primary started again with the options it ran with) and PgBouncer resumes
/// there, so the application keeps writing to it.
#[test]
fn a_catch_up_that_falls_short_takes_the_fence_back() {
    let f = FailoverSetup::new(BouncerLayout::Owned);
    f.stop_streaming("");
    // Written on the old primary only, in a segment not yet archived.
    f.a.cluster
        .psql("app", "INSERT INTO t SELECT g FROM generate_series(1, 500) g");
    let ini_before = std::fs::read(f.bouncer.databases_file()).unwrap();
    let data = f.a.cluster.data.to_str().unwrap().to_string();
    let out = f.failover(&["--old-data-dir", &data, "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = json(&out);
    assert_eq!(report["ok"], false, "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("the fence was taken back") && error.contains("--accept-data-loss"),
        "{report}"
    );
    assert_eq!(report["rpo"]["rpo"], "lost", "{report}");
    // The old primary serves again, through PgBouncer too; the standby is one still.
    f.assert_untouched(&ini_before);
    let through = f.bouncer.psql("app", "SELECT count(*) FROM t");
    assert_eq!(String::from_utf8_lossy(&through.stdout).trim(), "600", "{through:?}");
    pg_ctl_stop(&f.a.cluster.data);
}

/// The same cut-off standby, this time on the same host as the old primary, with
/// neither a stream nor a restore_command: the rows written last exist only in the
/// old primary's pg_wal (a segment the archiver never ships). Before, failover could
/// only refuse or lose them. With `--standby-data-dir` the segments are copied into
/// the standby's pg_wal after the fence, it replays them, and nothing is lost.
#[test]
fn a_standby_on_this_host_is_given_the_old_primarys_pg_wal() {
    let f = FailoverSetup::new(BouncerLayout::Owned);
    f.stop_streaming("ALTER SYSTEM SET restore_command = '';");
    f.a.cluster
        .psql("app", "INSERT INTO t SELECT g FROM generate_series(1, 700) g");
    let data = f.a.cluster.data.to_str().unwrap().to_string();
    // A directory that is not the standby's is refused before anything changes.
    let ini_before = std::fs::read(f.bouncer.databases_file()).unwrap();
    let out = f.failover(&["--old-data-dir", &data, "--standby-data-dir", &data, "--yes"]);
    let said = assert_fails(&out, 2, "is not the standby's data directory");
    assert!(said.contains("refused before changing anything"), "{said}");
    f.assert_untouched(&ini_before);
    let standby_dir = f.standby.data.to_str().unwrap().to_string();
    let out = f.failover(&[
        "--old-data-dir",
        &data,
        "--standby-data-dir",
        &standby_dir,
        "--yes",
        "--json",
    ]);
    assert_success(&out, "pgdr failover --standby-data-dir");
    let report = json(&out);
    assert_eq!(report["rpo_bytes"], 0, "{report}");
    assert_eq!(report["rpo"]["rpo"], "none-lost", "{report}");
    let steps = report["steps"].to_string();
    assert!(steps.contains("given from the old primary's pg_wal"), "{report}");
    // Every acknowledged row, on the new primary and through PgBouncer.
    assert_eq!(f.standby.psql("app", "SELECT count(*) FROM t"), "800");
    let through = f.bouncer.psql("app", "SELECT count(*) FROM t WHERE n > 0");
    assert_eq!(String::from_utf8_lossy(&through.stdout).trim(), "700", "{through:?}");
}

/// Debian's layout with pgdr run as root: the file is replaced whole (root may write
/// the directory), and keeps its owner (postgres) and mode (0640).
#[test]
fn switch_as_root_in_the_debian_layout_keeps_owner_and_mode() {
    let (a, b) = (app_cluster(), app_cluster());
    let bouncer = PgBouncer::start_in(&[("app", a.port)], "transaction", BouncerLayout::Debian);
    let pgdr = with_switch(&a, &bouncer, "");
    let out = pgdr.run(&["switch", "--to", &format!("127.0.0.1:{}", b.port), "--yes"]);
    assert_success(&out, "pgdr switch (Debian layout)");
    let said = String::from_utf8_lossy(&out.stdout);
    if is_root() {
        assert!(said.contains("can be replaced, owner and mode kept"), "{said}");
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&bouncer.ini).unwrap();
    if is_root() {
        assert_eq!((meta.uid(), meta.gid()), postgres_ids());
    }
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert!(bouncer.psql("app", "INSERT INTO t (n) VALUES (1)").status.success());
    assert_eq!(b.psql("app", "SELECT count(*) FROM t"), "1");
    assert_eq!(a.psql("app", "SELECT count(*) FROM t"), "0");
}

//! Running unattended: the weekly restore test, retention, the scheduler (history,
//! metrics, overlap, SIGTERM, catch-up), alert rules and notifications — against real
//! clusters, the real S3 server and real HTTP listeners.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

fn sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Rewrite an object of the repository through pgdr's own pipeline (same key, so the
/// object stays authentic): how a test fakes a manifest that lies.
fn rewrite_object(pgdr: &Pgdr, key: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let config = pgdr::config::Config::load(Some(&pgdr.config)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = pgdr::storage::open(&config.repository, &config.cluster).await.unwrap();
        let keys = pgdr::repo::bound_keyring(&config, &storage).await.unwrap();
        let key = pgdr::storage::ObjectKey::new(key).unwrap();
        let data = pgdr::pipeline::load_bytes(&storage, &key, &keys).await.unwrap();
        let store = pgdr::pipeline::Store {
            storage: &storage,
            keys: &keys,
            compression: pgdr::pipeline::Compression { level: 3, threads: 0 },
            digests: pgdr::pipeline::Digests::Both,
        };
        store
            .bytes(&key, "manifest.json", edit(data), pgdr::storage::PutMode::Overwrite)
            .await
            .unwrap();
    });
}

fn verification_of(pgdr: &Pgdr, label: &str) -> serde_json::Value {
    pgdr.list_json().into_iter().find(|b| b["label"] == label).unwrap()["verification"].clone()
}

#[test]
fn verify_physical_passes_then_catches_damage_and_heap_corruption() {
    let mut a = Archiving::start();
    // A private TMPDIR: the scratch cluster's directory must be gone afterwards.
    let tmp = a.pgdr.dir.join("tmp");
    pg_owned_dir(&tmp);
    a.pgdr.set_env("TMPDIR", tmp.to_str().unwrap());
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE shop");
    c.pgbench_init("shop", 1);
    let label = json(&a.pgdr.ok(&["backup", "--kind", "physical", "--json"]))["label"]
        .as_str()
        .unwrap()
        .to_string();
    let out = a.pgdr.ok(&["verify", "--kind", "physical", "--json"]);
    let report = json(&out);
    assert_eq!(report["ok"], true, "{out}");
    let names: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["restore", "amcheck"]);
    assert_eq!(verification_of(&a.pgdr, &label)["ok"], true);
    // The scratch cluster is gone.
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pgdr-verify-"))
        .collect();
    assert!(leftovers.is_empty(), "scratch directories left behind: {leftovers:?}");

    // A flipped byte in a stored object: the restore step fails, the report says so.
    let bundle = a
        .pgdr
        .repo_dir
        .as_ref()
        .unwrap()
        .join(format!("test/backups/{label}/data/bundle-00000"));
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&bundle, &bytes).unwrap();
    let out = a.pgdr.run(&["verify", "--kind", "physical"]);
    assert_fails(&out, 1, "restore test of");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("✗ restore"), "{text}");
    assert_eq!(verification_of(&a.pgdr, &label)["ok"], false);
    bytes[mid] ^= 0x40;
    std::fs::write(&bundle, &bytes).unwrap();

    // A heap page corrupted on disk in the source: the next backup carries it, and the
    // restore test's amcheck reports it.
    let file = c.psql("shop", "SELECT pg_relation_filepath('pgbench_accounts')");
    c.psql("shop", "CHECKPOINT");
    let mut cluster = a.cluster;
    cluster.stop();
    let path = cluster.data.join(&file);
    let mut heap = std::fs::read(&path).unwrap();
    // Page 3's line pointers: make them point far outside the page.
    let page = 3 * 8192;
    for lp in 0..20 {
        let at = page + 24 + lp * 4;
        heap[at..at + 4].copy_from_slice(&0xffff_7fffu32.to_le_bytes());
    }
    std::fs::write(&path, &heap).unwrap();
    // No autovacuum: nothing may touch the damaged page before the backup copies it.
    cluster.launch(&["autovacuum=off"]);
    let a = Archiving { cluster, pgdr: a.pgdr };
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let out = a.pgdr.run(&["verify", "--kind", "physical", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let amcheck = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "amcheck")
        .unwrap()
        .clone();
    assert_eq!(amcheck["ok"], false, "{report}");
    assert!(
        amcheck["detail"].as_str().unwrap().contains("pgbench_accounts"),
        "{amcheck}"
    );
}

#[test]
fn verify_logical_compares_row_counts_with_the_manifest() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let config = std::fs::read_to_string(&pgdr.config).unwrap();
    std::fs::write(
        &pgdr.config,
        format!("{config}\n[[verify.check]]\nname = \"branches\"\ndatabase = \"shop\"\nsql = \"SELECT count(*) FROM pgbench_branches\"\nexpect = \"1\"\n"),
    )
    .unwrap();
    let label = json(&pgdr.ok(&["backup", "--database", "shop", "--json"]))["label"]
        .as_str()
        .unwrap()
        .to_string();
    let out = pgdr.ok(&["verify", "--kind", "logical", "--json"]);
    let report = json(&out);
    assert_eq!(report["ok"], true, "{out}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        vec!["scratch cluster", "globals", "restore shop", "amcheck", "sql: branches"]
    );

    // A manifest whose row count does not match the dump.
    rewrite_object(&pgdr, &format!("backups/{label}/manifest.json"), |data| {
        let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
        let tables = m["databases"][0]["tables"].as_array_mut().unwrap();
        let t = tables.iter_mut().find(|t| t["name"] == "pgbench_accounts").unwrap();
        t["rows"] = serde_json::json!(99_999);
        serde_json::to_vec(&m).unwrap()
    });
    let out = pgdr.run(&["verify", "--kind", "logical"]);
    let line = assert_fails(&out, 1, "row counts differ");
    assert!(
        line.contains("pgbench_accounts has 100000 rows, expected 99999"),
        "{line}"
    );

    // A user check that fails.
    let config = std::fs::read_to_string(&pgdr.config)
        .unwrap()
        .replace("expect = \"1\"", "expect = \"2\"");
    std::fs::write(&pgdr.config, config).unwrap();
    pgdr.ok(&["backup", "--database", "shop"]);
    let out = pgdr.run(&["verify", "--kind", "logical"]);
    assert_fails(&out, 1, "sql: branches");
}

#[test]
fn expire_keeps_what_is_needed() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE TABLE t (x int)");
    let mut labels = Vec::new();
    let mut walls = Vec::new();
    for i in 0..3 {
        c.psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        walls.push(a.switch_and_wait());
        labels.push(
            json(&a.pgdr.ok(&["backup", "--kind", "physical", "--json"]))["label"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        sleep(1100);
    }
    a.pgdr.ok(&["expire", "--keep", &labels[0]]);
    let mut p = a.pgdr.clone_setup();
    p.set_env("PGDR_RETENTION_FULL_COUNT", "1");
    p.set_env("PGDR_RETENTION_WAL_DAYS", "0");
    let dry = json(&p.ok(&["expire", "--dry-run", "--json"]));
    assert!(dry["wal_to_remove"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(p.list_json().len(), 3, "a dry run removed something");
    let report = json(&p.ok(&["expire", "--json"]));
    let decisions: Vec<(String, bool, String)> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["label"].as_str().unwrap().to_string(),
                d["keep"].as_bool().unwrap(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        decisions.contains(&(
            labels[2].clone(),
            true,
            "the newest backup of its kind is always kept".into()
        )),
        "{decisions:?}"
    );
    assert!(
        decisions.contains(&(labels[0].clone(), true, "marked keep".into())),
        "{decisions:?}"
    );
    assert!(
        decisions.iter().any(|(l, keep, _)| l == &labels[1] && !keep),
        "{decisions:?}"
    );
    let left: Vec<String> = p
        .list_json()
        .iter()
        .map(|b| b["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![labels[2].clone(), labels[0].clone()]);
    let list_text = p.ok(&["list"]);
    assert!(list_text.contains("[keep]"), "{list_text}");
    // The kept old backup still restores (its consistency WAL stayed) …
    let r = p.restore_started(&["--backup", &labels[0], "--target", "immediate"]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "1");
    drop(r);
    // … and so does the newest to the end of the archive; WAL between went.
    let r = p.restore_started(&["--target", "latest"]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "3");
    let repo = a.pgdr.repo_dir.as_ref().unwrap();
    let gone = &walls[1];
    assert!(
        !repo.join(format!("test/wal/{}/{gone}", &gone[..16])).exists(),
        "{gone} should have been expired"
    );
}

/// A `pgdr schedule run` child, stopped (SIGTERM) on drop.
struct Daemon {
    child: Child,
    history: std::path::PathBuf,
    port: u16,
}

impl Daemon {
    fn start(pgdr: &Pgdr, schedule: &str, grace: u64) -> Daemon {
        let file = pgdr.dir.join(format!("schedule-{}.toml", rand::random::<u32>()));
        std::fs::write(&file, schedule).unwrap();
        let history = pgdr.dir.join(format!("history-{}.jsonl", rand::random::<u32>()));
        Daemon::start_with(pgdr, &file, &history, grace)
    }

    fn start_with(pgdr: &Pgdr, file: &std::path::Path, history: &std::path::Path, grace: u64) -> Daemon {
        let port = free_port();
        let child = pgdr
            .command(&[
                "schedule",
                "run",
                "--file",
                file.to_str().unwrap(),
                "--history",
                history.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--grace",
                &grace.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Daemon {
            child,
            history: history.to_path_buf(),
            port,
        }
    }

    fn entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.history)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_for(&self, what: &str, secs: u64, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let e = self.entries();
            if done(&e) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; history: {e:#?}"
            );
            sleep(200);
        }
    }

    fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    }

    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status, err)
    }
}

fn count(entries: &[serde_json::Value], job: &str, outcome: &str) -> usize {
    entries
        .iter()
        .filter(|e| e["job"] == job && e["outcome"] == outcome)
        .count()
}

#[test]
fn scheduler_runs_backup_and_verify_with_history_and_metrics_on_s3() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    let pgdr = Pgdr::new(&cluster, RepoKind::S3);
    let d = Daemon::start(
        &pgdr,
        "[[job]]\nname = \"backup\"\ncron = \"*/3 * * * * *\"\ncommand = \"backup\"\nargs = [\"--database\", \"shop\"]\ntimeout = \"2m\"\n\n\
         [[job]]\nname = \"verify\"\ncron = \"*/4 * * * * *\"\ncommand = \"verify\"\nargs = [\"--kind\", \"logical\"]\ntimeout = \"2m\"\n",
        10,
    );
    let entries = d.wait_for("two backups and a verification", 90, |e| {
        count(e, "backup", "success") >= 2 && count(e, "verify", "success") >= 1
    });
    let backup = entries
        .iter()
        .find(|e| e["job"] == "backup" && e["outcome"] == "success")
        .unwrap();
    assert!(backup["bytes"].as_u64().unwrap() > 10_000, "{backup}");
    assert!(backup["seconds"].as_f64().unwrap() > 0.0);
    let metrics = d.get("/metrics");
    for needle in [
        "pgdr_job_last_success{job=\"backup\"} 1",
        "pgdr_job_last_success_timestamp_seconds{job=\"verify\"}",
        "pgdr_backup_last_size_bytes{kind=\"logical\"}",
        "pgdr_backup_last_age_seconds{kind=\"logical\"}",
        "pgdr_verify_last_success 1",
        "pgdr_repository_size_bytes",
        "pgdr_postgres_up 1",
    ] {
        assert!(metrics.contains(needle), "/metrics lacks {needle}:\n{metrics}");
    }
    assert!(d.get("/health").contains("\"status\":\"ok\""));
    assert!(d.get("/nope").starts_with("HTTP/1.1 404"));
    let history = d.history.clone();
    let (status, log) = d.terminate();
    assert!(status.success(), "the scheduler did not stop cleanly: {log}");
    assert!(!log.contains("panicked"), "{log}");
    let list = pgdr.list_json();
    assert!(list.len() >= 2);
    assert!(list.iter().any(|b| b["verification"]["ok"] == true));
    // `pgdr metrics` prints the same once.
    let once = pgdr.ok(&["metrics", "--history", history.to_str().unwrap()]);
    assert!(once.contains("pgdr_backup_last_size_bytes{kind=\"logical\"}"), "{once}");
    assert!(
        once.contains("pgdr_job_consecutive_failures{job=\"backup\"} 0"),
        "{once}"
    );
}

#[test]
fn two_schedulers_never_overlap() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "CREATE DATABASE shop");
    cluster.pgbench_init("shop", 5);
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let schedule = "[[job]]\nname = \"backup\"\ncron = \"*/2 * * * * *\"\ncommand = \"backup\"\nargs = [\"--database\", \"shop\"]\n";
    let a = Daemon::start(&pgdr, schedule, 30);
    let b = Daemon::start(&pgdr, schedule, 30);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ea, eb) = (a.entries(), b.entries());
        let runs = count(&ea, "backup", "success") + count(&eb, "backup", "success");
        let skipped = count(&ea, "backup", "skipped") + count(&eb, "backup", "skipped");
        if runs >= 4 && skipped >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no contention seen: {ea:#?} {eb:#?}");
        sleep(200);
    }
    let (ea, eb) = (a.entries(), b.entries());
    a.terminate();
    b.terminate();
    let mut runs: Vec<(String, String)> = ea
        .iter()
        .chain(eb.iter())
        .filter(|e| e["outcome"] == "success")
        .map(|e| {
            (
                e["start"].as_str().unwrap().to_string(),
                e["end"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    runs.sort();
    for w in runs.windows(2) {
        assert!(w[0].1 <= w[1].0, "two runs overlapped: {w:?}");
    }
    assert!(
        ea.iter()
            .chain(eb.iter())
            .any(|e| e["detail"].as_str().unwrap_or("").starts_with("running on"))
    );
}

/// SIGTERM to the scheduler while a backup runs: the backup is stopped cleanly and
/// nothing of it becomes visible.
#[test]
fn sigterm_during_a_backup_leaves_nothing_visible() {
    let cluster = Cluster::start();
    cluster.psql("postgres", "CREATE DATABASE big");
    cluster.psql(
        "big",
        "CREATE TABLE big AS SELECT i, md5(i::text) || md5((i * 7)::text) AS pad FROM generate_series(1, 2000000) i",
    );
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let d = Daemon::start(
        &pgdr,
        "[[job]]\nname = \"backup\"\ncron = \"* * * * * *\"\ncommand = \"backup\"\nargs = [\"--database\", \"big\"]\n",
        0,
    );
    let backups = pgdr.repo_dir.as_ref().unwrap().join("test/backups");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !repo_files(&backups)
        .iter()
        .any(|f| f.to_string_lossy().contains("big.dump"))
    {
        assert!(Instant::now() < deadline, "the backup never started");
        sleep(10);
    }
    let history = d.history.clone();
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    assert!(pgdr.list_json().is_empty(), "a stopped backup became visible");
    assert!(
        repo_files(&backups).is_empty(),
        "a stopped backup left files: {:?}",
        repo_files(&backups)
    );
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(history)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = entries.last().unwrap();
    assert_eq!(last["outcome"], "aborted", "{entries:#?}");
    assert!(last["detail"].as_str().unwrap().contains("SIGTERM"), "{last}");
}

#[test]
fn missed_runs_are_caught_up_or_reported() {
    let cluster = Cluster::start();
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let file = pgdr.dir.join("schedule.toml");
    std::fs::write(
        &file,
        "[[job]]\nname = \"minutely\"\ncron = \"0 * * * * *\"\ncommand = \"check\"\ncatch_up = \"2m\"\n\n\
         [[job]]\nname = \"yearly\"\ncron = \"0 0 0 1 1 *\"\ncommand = \"check\"\ncatch_up = \"1h\"\n",
    )
    .unwrap();
    // The scheduler was last up long ago.
    let history = pgdr.dir.join("history.jsonl");
    let long_ago = "2020-06-01T00:00:00Z";
    let mut lines = String::new();
    for job in ["minutely", "yearly"] {
        lines.push_str(&format!(
            "{{\"job\":\"{job}\",\"scheduled\":\"{long_ago}\",\"start\":\"{long_ago}\",\"end\":\"{long_ago}\",\"outcome\":\"success\",\"attempts\":1,\"seconds\":1.0}}\n"
        ));
    }
    std::fs::write(&history, lines).unwrap();
    let started = chrono::Utc::now();
    let d = Daemon::start_with(&pgdr, &file, &history, 10);
    let entries = d.wait_for("the catch-up run", 30, |e| count(e, "minutely", "success") >= 2);
    let caught_up = entries.iter().filter(|e| e["job"] == "minutely").nth(1).unwrap();
    let scheduled: chrono::DateTime<chrono::Utc> = caught_up["scheduled"].as_str().unwrap().parse().unwrap();
    assert!(
        scheduled < started,
        "the first run after start should be the missed one: {caught_up}"
    );
    assert!((started - scheduled) <= chrono::Duration::seconds(60));
    let missed = entries
        .iter()
        .find(|e| e["job"] == "yearly" && e["outcome"] == "missed")
        .expect("yearly miss reported");
    assert!(missed["detail"].as_str().unwrap().contains("catch_up"), "{missed}");
    d.terminate();
}

#[test]
fn schedule_check_and_crontab() {
    let out = std::process::Command::new(PGDR)
        .args(["schedule", "check", "--file"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/schedules/production.toml"))
        .env_clear()
        .output()
        .unwrap();
    assert_success(&out, "schedule check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("weekly-full")
            && text.contains("daily-incremental")
            && text.contains("weekly-verify")
            && text.contains("copy-to-dr")
            && text.contains("monthly-drill-region-failure"),
        "{text}"
    );
    // Issue 26: one row per job under labelled columns, each time once.
    assert!(text.contains("NEXT RUN (UTC)") && text.contains("COMMAND"), "{text}");
    let daily = text
        .lines()
        .filter(|l| l.starts_with("daily-incremental "))
        .collect::<Vec<_>>();
    assert_eq!(daily.len(), 1, "{text}");
    assert!(
        daily[0].contains("pgdr backup --kind physical --type incr") && daily[0].contains(" 02:00 "),
        "{text}"
    );
    assert_eq!(
        daily[0].matches(" 02:00").count(),
        2,
        "next run and the one after: {}",
        daily[0]
    );
    let cluster = Cluster::start();
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    // Against a configuration without copies, copy-to-dr cannot run: the check fails
    // and says so on that job's row.
    let out = pgdr.run(&[
        "schedule",
        "check",
        "--file",
        concat!(env!("CARGO_MANIFEST_DIR"), "/schedules/production.toml"),
    ]);
    let said = assert_fails(&out, 2, "copy-to-dr: this configuration has no [[repository.copies]]");
    assert!(said.contains("1 job(s) of"), "{said}");
    let rows = String::from_utf8_lossy(&out.stdout);
    let copy_row = rows
        .lines()
        .find(|l| l.starts_with("copy-to-dr "))
        .unwrap_or_else(|| panic!("{rows}"));
    assert!(copy_row.contains("CANNOT RUN"), "{rows}");
    assert!(
        rows.lines()
            .filter(|l| l.starts_with("daily-incremental ") || l.starts_with("weekly-full "))
            .all(|l| l.ends_with("ok")),
        "{rows}"
    );
    let cron = pgdr.ok(&[
        "schedule",
        "crontab",
        "--file",
        concat!(env!("CARGO_MANIFEST_DIR"), "/schedules/production.toml"),
    ]);
    assert!(
        cron.contains("0 2 * * Mon-Sat flock -n /run/lock/pgdr-daily-incremental.lock"),
        "{cron}"
    );
    assert!(cron.contains("0 3 * * Sun"), "{cron}");
    let bad = pgdr.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[job]]\nname = \"x\"\ncron = \"61 * * * *\"\ncommand = \"backup\"\n",
    )
    .unwrap();
    assert_fails(
        &pgdr.run(&["schedule", "check", "--file", bad.to_str().unwrap()]),
        2,
        "cron",
    );
}

#[test]
fn alert_rules_validate_with_promtool() {
    let promtool =
        which("promtool").expect("promtool not found — run scripts/install-deps.sh (Debian package prometheus)");
    let out = std::process::Command::new(promtool)
        .args([
            "check",
            "rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/prometheus/pgdr-alerts.yml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every rule in the file was read (none silently dropped).
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/prometheus/pgdr-alerts.yml"
    ))
    .unwrap()
    .matches("- alert:")
    .count();
    assert!(rules >= 10, "{rules} rules");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("SUCCESS: {rules} rules found")), "{stdout}");
}

/// A local HTTP listener that collects request bodies.
fn webhook_listener() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        let body = String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + len]).into_owned();
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                        let _ = tx.send(body);
                        break;
                    }
                }
            }
        }
    });
    (port, rx)
}

#[test]
fn webhook_announces_failure_and_recovery_without_leaking_its_secret() {
    let cluster = Cluster::start();
    let mut pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let (port, rx) = webhook_listener();
    let secret = "T000/B000/XXXXsecretXXXX";
    pgdr.set_env(
        "PGDR_NOTIFY_WEBHOOK_URL",
        &format!("http://127.0.0.1:{port}/services/{secret}"),
    );
    // A job that fails until its database exists, then recovers.
    let d = Daemon::start(
        &pgdr,
        "[[job]]\nname = \"flaky\"\ncron = \"*/2 * * * * *\"\ncommand = \"backup\"\nargs = [\"--database\", \"later\"]\n",
        10,
    );
    let failure = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no failure notification");
    let v: serde_json::Value = serde_json::from_str(&failure).unwrap();
    assert!(v["text"].as_str().unwrap().contains("flaky FAILED"), "{v}");
    cluster.psql("postgres", "CREATE DATABASE later");
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        let body = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no recovery notification");
        if body.contains("recovered") {
            break body;
        }
        assert!(Instant::now() < deadline);
    };
    assert!(recovered.contains("flaky recovered"), "{recovered}");
    let (_, log) = d.terminate();
    assert!(!log.contains(secret), "the webhook secret leaked into the log: {log}");
    assert!(log.contains("127.0.0.1"), "the log should name the webhook host: {log}");
}

/// Ctrl-C during a restore test: the scratch cluster is stopped and removed, and the
/// report says it was interrupted.
#[test]
fn verify_cleans_up_on_ctrl_c() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    let mut pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let tmp = pgdr.dir.join("tmp");
    pg_owned_dir(&tmp);
    pgdr.set_env("TMPDIR", tmp.to_str().unwrap());
    pgdr.ok(&["backup", "--database", "shop"]);
    let mut child = pgdr
        .command(&["verify", "--kind", "logical"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the scratch cluster is up, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .any(|e| e.path().join("data/postmaster.pid").exists());
        if running {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "verify ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the scratch cluster never started");
        sleep(20);
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped by SIGINT"));
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "the scratch cluster was left behind: {left:?}");
    // And no postgres still runs from it.
    let strays: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(tmp.to_str().unwrap()))
        .collect();
    assert!(strays.is_empty(), "a scratch server still runs: {strays:?}");
}

/// Issue 30: the report page that `schedule run` serves at `/`, beside /metrics, on
/// the same listener. It is HTML with no-cache and a policy that forbids loading
/// anything; it shows a backup taken while the scheduler runs (no restart); and
/// headless Chromium (Debian's package) renders it with no console message and no
/// request beyond the page itself. The screenshot is kept for a person to look at.
#[test]
fn the_report_page_renders_in_chromium_and_loads_nothing_else() {
    let chromium = ["chromium-headless-shell", "chromium"]
        .iter()
        .find_map(|name| which(name))
        .expect("headless Chromium is missing: run scripts/install-deps.sh (Debian's chromium-headless-shell)");
    let a = Archiving::start();
    let first = serde_json::from_str::<serde_json::Value>(&a.pgdr.ok(&["backup", "--kind", "physical", "--json"]))
        .unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    a.switch_and_wait();
    // A job that never comes due: the daemon only serves.
    let d = Daemon::start(
        &a.pgdr,
        "[[job]]\nname = \"check\"\ncron = \"0 0 3 1 1 *\"\ncommand = \"check\"\n",
        5,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // Probe with a real request (a bare connection would count as a stray one).
    while TcpStream::connect(("127.0.0.1", d.port))
        .and_then(|mut s| s.write_all(b"GET /health HTTP/1.1\r\n\r\n"))
        .is_err()
    {
        assert!(Instant::now() < deadline, "the scheduler did not listen");
        sleep(100);
    }
    let reply = d.get("/");
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{reply}"));
    for needle in [
        "HTTP/1.1 200 OK",
        "Content-Type: text/html; charset=utf-8",
        "Cache-Control: no-cache",
        "Content-Security-Policy: default-src 'none'",
    ] {
        assert!(head.contains(needle), "{needle:?} not in {head}");
    }
    assert!(body.contains(&first) && body.contains("<svg"), "{body}");
    // HEAD: the same headers, no body.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    write!(s, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head_only, rest) = reply.split_once("\r\n\r\n").unwrap();
    assert!(
        head_only.contains("Content-Type: text/html") && rest.is_empty(),
        "{reply}"
    );
    let json: serde_json::Value =
        serde_json::from_str(d.get("/report.json").split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["repositories"][0]["backups"][0]["label"], first.as_str());

    // A new backup shows without a restart, once the page's few seconds are up.
    let second = serde_json::from_str::<serde_json::Value>(&a.pgdr.ok(&["backup", "--kind", "physical", "--json"]))
        .unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.get("/").contains(&second) {
        assert!(Instant::now() < deadline, "the page never showed {second}");
        sleep(500);
    }

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = TestDir::new();
    let out = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://127.0.0.1:{}/", d.port))
        .env("HOME", profile.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {err}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot ({size} bytes): {err}");
    println!("screenshot of the report page: {}", shot.display());
    for bad in ["CONSOLE", "Refused to", "Uncaught", "net::ERR"] {
        assert!(!err.contains(bad), "the browser said {bad:?}:\n{err}");
    }
    let (_, log) = d.terminate();
    // Our gets (at least 2 + 1 + polls) and the browser's one: every request was for
    // the page or its data, none for anything else (no favicon, no asset).
    assert!(log.matches("Report requested").count() >= 3, "{log}");
    assert!(
        !log.contains("NotFound requested"),
        "the browser asked for more than the page:\n{log}"
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|p| p.is_file())
}

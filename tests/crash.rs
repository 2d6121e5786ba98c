//! Crash consistency (issue 14): `kill -9` of pgdr at seeded random moments during
//! `backup`, `expire`, `wal-push`, `restore` and `copy`, over several iterations. After each kill the
//! repository must hold no backup that is listed but incomplete, `check` must name
//! what a killed run left and clean it on request, the same command run again must
//! succeed, and every backup that was valid before must still restore.
//! `PGDR_CRASH_SEED` replays a run (the seed is printed).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("PGDR_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20261205);
        println!("PGDR_CRASH_SEED={seed}");
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D) % n.max(1)
    }
}

/// Run `cmd` and SIGKILL it after `ms` milliseconds: whether it was killed, and how it
/// ended if it was not.
fn kill_after_status(mut cmd: Command, ms: u64) -> (bool, Option<std::process::ExitStatus>) {
    let mut child = cmd.spawn().expect("spawn pgdr");
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (false, Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (true, None);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Run `cmd` and SIGKILL it after `ms` milliseconds; whether it was killed.
fn kill_after(cmd: Command, ms: u64) -> bool {
    kill_after_status(cmd, ms).0
}

fn timed(pgdr: &Pgdr, args: &[&str]) -> u64 {
    let start = Instant::now();
    pgdr.ok(args);
    start.elapsed().as_millis() as u64
}

fn labels(pgdr: &Pgdr) -> Vec<String> {
    pgdr.list_json()
        .iter()
        .map(|b| b["label"].as_str().unwrap().to_string())
        .collect()
}

/// Every listed backup verifies (restored into a scratch cluster, checksums, row
/// counts, amcheck).
fn all_verify(pgdr: &Pgdr) {
    for b in pgdr.list_json() {
        let label = b["label"].as_str().unwrap();
        let kind = b["kind"].as_str().unwrap();
        let out = pgdr.run(&["verify", "--backup", label, "--kind", kind]);
        assert_success(&out, &format!("verify {label} after the kills"));
    }
}

#[test]
fn backups_killed_at_random_moments() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 5);
    let mut rng = Rng::seeded();
    let took = [
        timed(&a.pgdr, &["backup", "--kind", "physical"]),
        timed(&a.pgdr, &["backup", "--kind", "logical"]),
    ];
    let before = labels(&a.pgdr);
    let mut finished = 0;
    for i in 0..8 {
        let (kind, ms) = if i % 2 == 0 {
            ("physical", took[0])
        } else {
            ("logical", took[1])
        };
        let at = rng.below(ms);
        let killed = kill_after(a.pgdr.command(&["backup", "--kind", kind]), at);
        println!("backup --kind {kind} killed after {at} ms: {killed}");
        finished += usize::from(!killed);
        c.psql("postgres", "UPDATE pgbench_branches SET bbalance = bbalance + 1");
        // The next backup takes over the dead one's lock at once and succeeds.
        let start = Instant::now();
        a.pgdr.ok(&["backup", "--kind", kind]);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the next backup waited on a dead lock"
        );
    }
    let check = a.pgdr.run(&["check"]);
    assert!(
        check.status.success(),
        "check after the kills: {}\n{}\n{}",
        check.status,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    a.pgdr.ok(&["check", "--clean-orphans"]);
    let text = String::from_utf8_lossy(&a.pgdr.run(&["check"]).stdout).to_string();
    assert!(text.contains("no orphans"), "{text}");
    assert!(!text.contains("leftover temporary"), "{text}");
    let after = labels(&a.pgdr);
    assert!(before.iter().all(|l| after.contains(l)), "a valid backup disappeared");
    // Each round's second backup always commits; a killed one may have committed
    // just before the kill (its manifest written, the process not yet gone).
    let new = after.len() - before.len();
    assert!((8 + finished..=16).contains(&new), "{new} new backups: {after:?}");
    all_verify(&a.pgdr);
}

#[test]
fn expire_killed_at_random_moments() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 1);
    for _ in 0..9 {
        a.pgdr.ok(&["backup", "--kind", "physical"]);
        c.psql("postgres", "UPDATE pgbench_branches SET bbalance = bbalance + 1");
        std::thread::sleep(Duration::from_millis(1100));
    }
    a.switch_and_wait();
    let config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    let mut rng = Rng::seeded();
    // Each round lets two more backups (and their WAL) go, and is killed somewhere
    // in its run (the dry run of the same plan says how long that is).
    for keep in [7, 5, 3] {
        std::fs::write(&a.pgdr.config, format!("{config}\n[retention]\nfull_count = {keep}\n")).unwrap();
        let span = timed(&a.pgdr, &["expire", "--dry-run"]);
        let at = rng.below(span + span / 2);
        let killed = kill_after(a.pgdr.command(&["expire"]), at);
        println!("expire (keep {keep}) killed after {at} of ~{span} ms: {killed}");
        // Whatever is listed is whole.
        all_verify(&a.pgdr);
    }
    std::fs::write(&a.pgdr.config, format!("{config}\n[retention]\nfull_count = 2\n")).unwrap();
    a.pgdr.ok(&["expire"]);
    a.pgdr.ok(&["check", "--clean-orphans"]);
    assert_eq!(labels(&a.pgdr).len(), 2);
    all_verify(&a.pgdr);
    let r = a.pgdr.restore_started(&[]);
    assert_eq!(content_hashes_at(r.port, "postgres"), c.content_hashes("postgres"));
}

/// `copy` to a second repository killed at random moments, once per round, each round
/// after a new backup and more WAL: the copy never lists a backup that is not whole
/// there (the newest it lists verifies from the copy alone), the next copy finishes
/// what the killed one began, and the copy alone restores to the live content.
#[test]
fn copies_killed_at_random_moments() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 4);
    let dr = a.pgdr.dir.join("dr");
    pg_owned_dir(&dr);
    let config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    std::fs::write(
        &a.pgdr.config,
        format!(
            "{config}\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\n",
            dr.display()
        ),
    )
    .unwrap();
    let dr_labels = || -> Vec<String> {
        let out = a.pgdr.ok(&["--repository", "dr", "list", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        list.iter().map(|b| b["label"].as_str().unwrap().to_string()).collect()
    };
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    // A whole copy of one backup and its WAL says how long a run takes.
    let span = timed(&a.pgdr, &["copy"]);
    let mut rng = Rng::seeded();
    for round in 0..4 {
        c.psql(
            "postgres",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0",
        );
        std::thread::sleep(Duration::from_millis(1100));
        a.pgdr.ok(&["backup", "--kind", "physical"]);
        a.switch_and_wait();
        let at = rng.below(span + span / 2);
        let killed = kill_after(a.pgdr.command(&["copy", "--jobs", "2"]), at);
        println!("copy (round {round}) killed after {at} of ~{span} ms: {killed}");
        let listed = dr_labels();
        let primary = labels(&a.pgdr);
        assert!(
            listed.iter().all(|l| primary.contains(l)),
            "the copy lists {listed:?}, the primary {primary:?}"
        );
        if let Some(newest) = listed.first() {
            let out = a
                .pgdr
                .run(&["--repository", "dr", "verify", "--backup", newest, "--kind", "physical"]);
            assert_success(&out, &format!("verify {newest} from the copy after a killed copy"));
        }
    }
    a.pgdr.ok(&["copy"]);
    let mut listed = dr_labels();
    let mut primary = labels(&a.pgdr);
    listed.sort();
    primary.sort();
    assert_eq!(listed, primary, "the copy did not catch up");
    let want = c.content_hashes("postgres");
    let r = a.pgdr.restore_started(&["--repository", "dr"]);
    assert_eq!(content_hashes_at(r.port, "postgres"), want);
}

/// `wal-push` killed at random moments on segments PostgreSQL has not archived yet
/// (its archive_command is failing meanwhile); run again it succeeds, PostgreSQL's own
/// archiving then finds each segment stored and whole, and the archive restores.
#[test]
fn wal_push_killed_at_random_moments() {
    let mut a = Archiving::start();
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let good_command = a.cluster.psql("postgres", "SHOW archive_command");
    a.cluster
        .psql("postgres", "ALTER SYSTEM SET archive_command = '/bin/false'");
    a.cluster.psql("postgres", "SELECT pg_reload_conf()");
    let mut segments = Vec::new();
    for i in 0..5 {
        a.cluster.psql(
            "postgres",
            &format!("CREATE TABLE t{i} AS SELECT g FROM generate_series(1, 20000) g"),
        );
        segments.push(
            a.cluster
                .psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())"),
        );
        a.cluster.psql("postgres", "SELECT pg_switch_wal()");
    }
    let mut rng = Rng::seeded();
    let wal = a.cluster.data.join("pg_wal");
    // The first push, whole, says how long one takes; the others are killed within that.
    let span = timed(&a.pgdr, &["wal-push", wal.join(&segments[0]).to_str().unwrap()]);
    for seg in &segments[1..] {
        let path = wal.join(seg);
        let at = rng.below(span);
        let killed = kill_after(a.pgdr.command(&["wal-push", path.to_str().unwrap()]), at);
        println!("wal-push {seg} killed after {at} ms: {killed}");
        a.pgdr.ok(&["wal-push", path.to_str().unwrap()]);
        let out = a.pgdr.run(&["cat", &format!("wal/{}/{seg}", &seg[..16])]);
        assert_success(&out, "cat");
        assert!(
            out.stdout == std::fs::read(&path).unwrap(),
            "{seg} differs after a killed push"
        );
    }
    a.cluster.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            good_command.replace('\'', "''")
        ),
    );
    a.cluster.psql("postgres", "SELECT pg_reload_conf()");
    a.switch_and_wait();
    let want = a.cluster.content_hashes("postgres");
    a.cluster.stop();
    let r = a.pgdr.restore_started(&[]);
    assert_eq!(content_hashes_at(r.port, "postgres"), want);
}

/// A physical restore killed at random moments: the same command run again finishes
/// the directory (it carries a marker while incomplete) and the copy holds the data.
#[test]
fn restores_killed_at_random_moments() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 5);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.switch_and_wait();
    let want = c.content_hashes("postgres");
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let mut rng = Rng::seeded();
    let probe = dir.join("probe");
    let span = timed(
        &a.pgdr,
        &["restore", "--kind", "physical", "--to", probe.to_str().unwrap()],
    );
    for i in 0..4 {
        let to = dir.join(format!("copy{i}"));
        let args = ["restore", "--kind", "physical", "--to", to.to_str().unwrap()];
        let at = rng.below(span * 4 / 5);
        let killed = kill_after(a.pgdr.command(&args), at);
        println!("restore killed after {at} of ~{span} ms: {killed}");
        // Killed while incomplete, the directory carries the marker (or holds
        // nothing yet) and the same command finishes it; without the marker it is
        // complete, and is not redone (its directory is not empty).
        let empty = std::fs::read_dir(&to).map(|mut d| d.next().is_none()).unwrap_or(true);
        if killed && (empty || to.join(pgdr_marker()).exists()) {
            let out = a.pgdr.run(&args);
            assert_success(&out, "the same restore, run again");
        }
        assert!(!to.join(pgdr_marker()).exists());
        let port = free_port();
        let sock = dir.join(format!("sock{i}"));
        pg_owned_dir(&sock);
        assert!(
            pg_ctl_start(&to, port, &sock, &dir.join(format!("log{i}")), &[]),
            "the finished copy starts"
        );
        wait_promoted(port, &dir.join(format!("log{i}")));
        assert_eq!(content_hashes_at(port, "postgres"), want);
        pg_ctl_stop(&to);
    }
}

fn pgdr_marker() -> &'static str {
    "pgdr-restore-in-progress"
}

/// `recover --scenario database-failure` (restore a new primary from the archive,
/// promote it, build a standby, switch PgBouncer) killed with SIGKILL at seeded random
/// moments, again and again: each run resumes what the killed one left (a half-laid
/// directory, a started server, a half-built standby) and the last one finishes. The
/// new primary then holds exactly the old one's data (content hashes), PgBouncer serves
/// it and it takes writes, the standby replicates, and a further run refuses to
/// restore over the running server. Found: a run killed while laying down the files of
/// a retried restore made the next one forget the timeline the first attempt followed
/// and follow the half-made primary's timeline into a WAL gap; a resumed validation
/// took pg_amcheck's "extension amcheck already exists" notice for corruption.
#[test]
fn recoveries_killed_at_random_moments() {
    let a = Archiving::start();
    a.cluster.pgbench_init("postgres", 4);
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.cluster.psql(
        "postgres",
        "CREATE TABLE kept AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
    );
    // Many DBAs install amcheck themselves: validation must not take pg_amcheck's
    // notice that it is there already for corruption (it did).
    a.cluster.psql("postgres", "CREATE EXTENSION amcheck");
    a.switch_and_wait();
    let bouncer = PgBouncer::start(&[("postgres", a.cluster.port)], "transaction");
    let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    text.push_str(&format!(
        "\n[switch]\npgbouncer_admin_url = \"{}\"\npgbouncer_ini = \"{}\"\npgbouncer_databases = [\"postgres\"]\n",
        bouncer.admin_url(),
        bouncer.ini.display()
    ));
    std::fs::write(&a.pgdr.config, text).unwrap();
    let hashes = a.cluster.content_hashes("postgres");
    let out_dir = TestDir::new();
    chown_postgres(out_dir.path());
    let (new, standby, state) = (out_dir.join("new"), out_dir.join("standby"), out_dir.join("state.json"));
    let (port, standby_port) = (free_port(), free_port());
    let args = [
        "recover",
        "--scenario",
        "database-failure",
        "--old-primary-is-down",
        "--data-dir",
        new.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--listen",
        "127.0.0.1",
        "--standby-data-dir",
        standby.to_str().unwrap(),
        "--standby-port",
        &standby_port.to_string(),
        "--state",
        state.to_str().unwrap(),
        "--yes",
    ];
    // The old primary is gone.
    let mut cluster = a.cluster;
    cluster.stop();
    let mut rng = Rng::seeded();
    let mut kills = 0;
    let mut finished = false;
    // A whole recovery here takes about 3 s; each round may get further than the last.
    for round in 0..8 {
        let at = 100 + rng.below(500 * (round + 1));
        let log = out_dir.join(format!("round-{round}.log"));
        let mut cmd = a.pgdr.command(&args);
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let (killed, status) = kill_after_status(cmd, at);
        let st = std::fs::read_to_string(&state).unwrap_or_default();
        let steps: Vec<String> = serde_json::from_str::<serde_json::Value>(&st)
            .ok()
            .and_then(|s| s["steps"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|s| {
                format!(
                    "{}={}",
                    s["name"].as_str().unwrap_or("?"),
                    s["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!("recover (round {round}) killed after {at} ms: {killed}; steps {steps:?}");
        if !killed {
            let log = std::fs::read_to_string(&log).unwrap();
            assert!(
                status.is_some_and(|s| s.success()),
                "recover (round {round}) failed:\n{log}"
            );
            finished = true;
            break;
        }
        kills += 1;
    }
    assert!(kills >= 3, "only {kills} runs were killed part-way");
    if !finished {
        let out = a.pgdr.run(&args);
        assert_success(&out, "the recovery after the kills");
    }
    let st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(st["finished"].is_string(), "{st}");
    assert_eq!(content_hashes_at(port, "postgres"), hashes);
    let served = bouncer.psql("postgres", "SELECT current_setting('port'), pg_is_in_recovery()");
    assert!(served.status.success(), "{served:?}");
    assert_eq!(String::from_utf8_lossy(&served.stdout).trim(), format!("{port}|f"));
    let wrote = bouncer.psql("postgres", "CREATE TABLE after_recovery AS SELECT 1 AS x");
    assert!(wrote.status.success(), "{wrote:?}");
    let replicating = psql_at(standby_port, "postgres", "SELECT pg_is_in_recovery()");
    assert_eq!(String::from_utf8_lossy(&replicating.stdout).trim(), "t");
    let again = a.pgdr.run(&args);
    assert_fails(&again, 2, "running server");
    for dir in [&new, &standby] {
        let mut stop = Command::new(pg_bin().join("pg_ctl"));
        stop.args(["-D", dir.to_str().unwrap(), "-m", "immediate", "stop"]);
        as_postgres(&mut stop);
        let _ = stop.output();
    }
}

/// A copy killed while it stores WAL leaves an unbroken prefix of the archive in the
/// copy, whatever `--jobs` says: the copy's archive is never a hole followed by later
/// segments (CI once caught a verify from the copy stopping at such a hole, after a
/// parallel copy was killed with the later segment stored and the earlier not).
#[test]
fn a_killed_copy_leaves_a_prefix_of_the_archive() {
    let a = Archiving::start();
    for _ in 0..6 {
        a.cluster.psql(
            "postgres",
            "CREATE TABLE IF NOT EXISTS w (x int); INSERT INTO w VALUES (1)",
        );
        a.switch_and_wait();
    }
    let dr = a.pgdr.dir.join("dr");
    pg_owned_dir(&dr);
    let config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    std::fs::write(
        &a.pgdr.config,
        format!(
            "{config}\n[[repository.copies]]\nname = \"dr\"\nurl = \"file://{}\"\n",
            dr.display()
        ),
    )
    .unwrap();
    let segments = |root: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = repo_files(root)
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        names.sort();
        names
    };
    let primary = segments(a.pgdr.repo_dir.as_ref().unwrap());
    assert!(primary.len() >= 6, "{primary:?}");
    for kill_after in [2, 4] {
        let out = a
            .pgdr
            .command(&["copy", "--jobs", "4"])
            .env("PGDR_TEST_COPY_KILL_AFTER", kill_after.to_string())
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "the copy was not killed: {out:?}");
        let copied = segments(&dr);
        assert!(!copied.is_empty());
        assert_eq!(
            copied[..],
            primary[..copied.len()],
            "the killed copy left a hole: {copied:?} of {primary:?}"
        );
    }
    a.pgdr.ok(&["copy"]);
    assert_eq!(segments(&dr), primary);
}

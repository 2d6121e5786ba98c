//! Disaster-recovery runbooks (issue 12): `pgdr drill` for each of the four scenarios
//! against real PostgreSQL, a real PgBouncer and two S3 servers standing in for two
//! regions; `pgdr recover` for real: its dry run changes nothing, an invalid runbook
//! is refused with line and field, and a recovery killed mid-restore resumes.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Two regions, each an S3 server with credentials of its own, named by profile.
fn aws_profiles(home: &Path) {
    let aws = home.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[primary]\naws_access_key_id = AKIAPRIMARYREGION\naws_secret_access_key = primary-secret\n\n\
         [dr]\naws_access_key_id = AKIADRREGION\naws_secret_access_key = dr-secret\n",
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        "[profile primary]\nregion = us-east-1\n\n[profile dr]\nregion = eu-west-1\n",
    )
    .unwrap();
    for p in [aws.clone(), aws.join("credentials"), aws.join("config")] {
        chown_postgres(&p);
    }
}

struct Regions {
    _cluster: Cluster,
    pgdr: Pgdr,
    primary: OwnS3,
    dr: OwnS3,
    buckets: (String, String),
}

/// The DBA's setup: a repository in one region with a copy in another (`wal = "sync"`),
/// and a production cluster (only `pgdr init` needs it: drills build their own).
fn regions() -> Regions {
    let primary = OwnS3::start();
    let dr = OwnS3::start();
    let (a, b) = (primary.server.bucket(), dr.server.bucket());
    let dir = TestDir::new();
    chown_postgres(dir.path());
    aws_profiles(dir.path());
    let config = dir.join("pgdr.toml");
    let key_file = dir.join("repo.key");
    let cluster = Cluster::start();
    std::fs::write(
        &config,
        format!(
            "cluster = \"prod\"\n\n[postgres]\nurl = \"{}\"\nbin_dir = \"{}\"\n\n\
             [repository]\nurl = \"s3://{a}/region1\"\nendpoint = \"{}\"\nforce_path_style = true\nprofile = \"primary\"\nkey_file = \"{}\"\n\n\
             [[repository.copies]]\nname = \"dr\"\nurl = \"s3://{b}/region2\"\nendpoint = \"{}\"\nforce_path_style = true\nprofile = \"dr\"\nwal = \"sync\"\n",
            cluster.url("postgres"),
            pg_bin().display(),
            primary.server.endpoint(),
            key_file.display(),
            dr.server.endpoint(),
        ),
    )
    .unwrap();
    let pgdr = Pgdr::initialised_with(dir, config, key_file.clone(), None, false, false);
    // The drill's servers (as postgres) read the key.
    chown_postgres(&key_file);
    Regions {
        _cluster: cluster,
        pgdr,
        primary,
        dr,
        buckets: (a, b),
    }
}

/// Nothing the drill made is left: no scratch directory, no process running from it,
/// no object in its repository areas.
fn assert_torn_down(r: &Regions, work: &Path) {
    let left: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pgdr-drill-"))
        .collect();
    assert!(left.is_empty(), "scratch directories left behind: {left:?}");
    let ps = Command::new("pgrep")
        .args(["-af", &work.display().to_string()])
        .output()
        .unwrap();
    let procs = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(procs.trim().is_empty(), "processes left behind:\n{procs}");
    for (server, bucket, prefix) in [
        (&r.primary.server, &r.buckets.0, "region1/prod-drill-"),
        (&r.dr.server, &r.buckets.1, "region2/prod-drill-"),
    ] {
        let keys = server.keys(bucket, prefix);
        assert!(keys.is_empty(), "drill objects left in {bucket}: {keys:?}");
    }
}

fn drill(r: &Regions, work: &Path, scenario: &str) -> serde_json::Value {
    let out = r.pgdr.run(&[
        "drill",
        "--scenario",
        scenario,
        "--work-dir",
        work.to_str().unwrap(),
        "--archive-timeout",
        "3",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "drill {scenario} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean_stderr(&out);
    let report = json(&stdout);
    eprintln!(
        "drill {scenario}: RTO {} s, RPO {}",
        report["rto_seconds"], report["rpo"]
    );
    report
}

fn port_of(report: &serde_json::Value, server: &str) -> u64 {
    report["recover"]["servers"][server]["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("no server {server} in {report}"))
}

/// The data checks the drill made (before the failure against after the recovery):
/// present, non-empty, all equal.
fn assert_data_checks(report: &serde_json::Value, at_least: usize) {
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= at_least, "{report}");
    for c in checks {
        assert!(!c["expected"].as_str().unwrap().is_empty(), "{c}");
        assert_eq!(c["expected"], c["found"], "{c}");
        assert_eq!(c["ok"], true, "{c}");
    }
}

#[test]
fn the_four_drills_recover_and_measure() {
    let r = regions();
    let work = TestDir::new();

    // 1. Corruption: a new primary as of the failure point; nothing acknowledged
    // before it is lost; PgBouncer serves from the new primary.
    let d = drill(&r, work.path(), "database-corruption");
    assert_eq!(d["ok"], true, "{d}");
    assert!(d["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(d["rpo"]["acknowledged"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["rpo"]["lost"], 0, "{d}");
    // The commits acknowledged after the target, until the switch, are gone by design
    // and counted, not hidden behind "0 lost".
    assert!(d["rpo"]["discarded_by_design"].as_u64().unwrap() > 0, "{d}");
    // Issue 26: the report says how the target was chosen.
    assert!(
        d["target_chosen"]
            .as_str()
            .unwrap()
            .ends_with("s before the failure, chosen by the drill"),
        "{d}"
    );
    assert!(
        d["target_time"].as_str().unwrap() < d["failure_at"].as_str().unwrap(),
        "{d}"
    );
    assert!(
        d["recover"]["discarded"].as_str().unwrap().contains("committed after"),
        "{d}"
    );
    assert_eq!(d["served_by"], format!("127.0.0.1:{}", port_of(&d, "new")));
    assert_data_checks(&d, 1);
    let steps: Vec<&str> = d["recover"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "restore to the failure point",
            "validate integrity",
            "fence the old primary",
            "switch application connections"
        ]
    );
    // Issue 29: production takes a full and incrementals, and so does the drill; the
    // new primary was laid down from the chain (the ledger's hash above holds rows
    // changed after the full backup, so the incremental's blocks are in it).
    let setup = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "data and backup")
        .unwrap_or_else(|| panic!("{d}"));
    let detail = setup["detail"].as_str().unwrap();
    let full = detail
        .split("physical backup ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{detail}"));
    assert!(detail.contains(" and incremental "), "{detail}");
    let restored = d["recover"]["steps"][0]["detail"].as_str().unwrap();
    assert!(
        restored.contains(&format!("(an incremental, with blocks from {full})")),
        "{restored}"
    );
    assert_torn_down(&r, work.path());

    // 2. Data loss: the live database keeps what was written after the loss and gets
    // back the dropped table and the deleted rows exactly.
    let d = drill(&r, work.path(), "data-loss");
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["rpo"]["lost"], 0, "{d}");
    assert_data_checks(&d, 3);
    let restored = d["recover"]["restored"].as_array().unwrap();
    let by_table = |t: &str| {
        restored
            .iter()
            .find(|x| x["table"] == t)
            .unwrap_or_else(|| panic!("{t}: {d}"))
    };
    assert_eq!(by_table("public.drill_archive")["rows"], 1000);
    assert_eq!(
        by_table("public.drill_ledger")["rows"],
        1000,
        "a third of 3000 rows was deleted"
    );
    assert!(
        d["recover"]["servers"].as_object().unwrap().is_empty(),
        "the scratch cluster is gone"
    );
    assert_torn_down(&r, work.path());

    // 3. The primary is gone: every commit the archive held is back (archive_timeout
    // bounds the rest), a standby streams, PgBouncer serves from the new primary.
    let d = drill(&r, work.path(), "database-failure");
    assert_eq!(d["ok"], true, "{d}");
    let rpo = &d["rpo"];
    assert_eq!(rpo["lost_archived"], 0, "{d}");
    assert!(
        rpo["acknowledged"].as_u64().unwrap() > rpo["lost"].as_u64().unwrap(),
        "some acknowledged commits were archived and must be back: {d}"
    );
    assert!(rpo["archived_until"].is_string(), "{d}");
    assert_eq!(d["served_by"], format!("127.0.0.1:{}", port_of(&d, "new")));
    assert!(port_of(&d, "standby") > 0);
    assert_data_checks(&d, 1);
    assert_torn_down(&r, work.path());

    // 4. The region is gone: recovered from the copy alone.
    let d = drill(&r, work.path(), "region-failure");
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["recover"]["repository"], "dr");
    let rpo = &d["rpo"];
    assert_eq!(rpo["lost_archived"], 0, "{d}");
    assert!(
        rpo["acknowledged"].as_u64().unwrap() > rpo["lost"].as_u64().unwrap(),
        "{d}"
    );
    assert_eq!(d["served_by"], format!("127.0.0.1:{}", port_of(&d, "new")));
    assert_data_checks(&d, 1);
    assert_torn_down(&r, work.path());

    // Every drill's report is in the real repository's verifications/.
    let stored = r.primary.server.keys(&r.buckets.0, "region1/prod/verifications/");
    for scenario in ["database-corruption", "data-loss", "database-failure", "region-failure"] {
        assert!(
            stored.iter().any(|k| k.ends_with(&format!("-drill-{scenario}.json"))),
            "no stored report of {scenario}: {stored:?}"
        );
    }
    // The history lists them with their RTO; the metrics carry the last success.
    let h = json(&r.pgdr.ok(&["list", "--verifications", "--json"]));
    let drills: Vec<&serde_json::Value> = h["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "drill")
        .collect();
    assert_eq!(drills.len(), 4, "{h}");
    for e in &drills {
        assert_eq!(e["ok"], true, "{e}");
        assert!(e["rto_seconds"].as_f64().unwrap() > 0.0, "{e}");
    }
    // Issue 30: the report carries each scenario's newest drill, its targets and
    // where its time went (the recovery's steps among the drill's own), for the
    // primary repository and its copy; the page draws one bar chart per scenario.
    let report = json(&r.pgdr.ok(&["report", "--json"]));
    let repos = report["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2, "{report}");
    assert_eq!(repos[1]["name"], "dr");
    assert!(repos[1]["copy_lag"]["segments_behind"].is_u64(), "{report}");
    let drills = repos[0]["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 4, "{report}");
    for d in drills {
        assert_eq!(d["ok"], true, "{d}");
        assert!(d["rto_target_seconds"].as_u64().unwrap() > 0, "{d}");
        assert_eq!(d["rto_met"], true, "{d}");
        let steps = d["steps"].as_array().unwrap();
        assert!(steps.iter().any(|s| s["recovery"] == true), "{d}");
        assert!(steps.iter().any(|s| s["recovery"] == false), "{d}");
        assert!(steps.iter().all(|s| s["seconds"].as_f64().unwrap() >= 0.0), "{d}");
        assert!(d["last_passed"].is_string(), "{d}");
    }
    let page = r.pgdr.ok(&["report", "--html", "-"]);
    assert_eq!(page.matches("where the time went").count(), 4, "one chart per scenario");
    std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-drills.html"), &page).unwrap();
    let text = r.pgdr.ok(&["list", "--verifications"]);
    assert!(text.contains("drill RTO per scenario"), "{text}");
    let metrics = r.pgdr.ok(&["metrics"]);
    for scenario in ["database-corruption", "data-loss", "database-failure", "region-failure"] {
        assert!(
            metrics.contains(&format!("pgdr_drill_last_success{{scenario=\"{scenario}\"}} 1")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "pgdr_drill_last_success_timestamp_seconds{{scenario=\"{scenario}\"}}"
            )),
            "{metrics}"
        );
    }
}

/// A drill stopped with Ctrl-C (SIGINT) in the middle leaves no process, directory
/// or repository object behind.
#[test]
fn an_interrupted_drill_leaves_nothing_behind() {
    let r = regions();
    let work = TestDir::new();
    let mut cmd = r.pgdr.command(&[
        "drill",
        "--scenario",
        "database-failure",
        "--work-dir",
        work.path().to_str().unwrap(),
    ]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until PgBouncer runs in the scratch directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = Command::new("pgrep")
            .args(["-f", &format!("{}.*pgbouncer.ini", work.path().display())])
            .output()
            .unwrap();
        if !ps.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the drill did not start PgBouncer");
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = output_within_child(&mut child, 60);
    assert!(!out.0.success(), "an interrupted drill does not pass");
    assert!(out.1.contains("interrupted by SIGINT"), "{}", out.1);
    assert_torn_down(&r, work.path());
}

fn output_within_child(child: &mut std::process::Child, secs: u64) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            use std::io::Read;
            child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
            return (status, out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the drill did not stop within {secs} s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An archiving production with a backup and PgBouncer in front, `[switch]` set.
fn production() -> (Archiving, PgBouncer) {
    let a = Archiving::start();
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let bouncer = PgBouncer::start(&[("postgres", a.cluster.port)], "transaction");
    let mut text = std::fs::read_to_string(&a.pgdr.config).unwrap();
    text.push_str(&format!(
        "\n[switch]\npgbouncer_admin_url = \"{}\"\npgbouncer_ini = \"{}\"\npgbouncer_databases = [\"postgres\"]\n",
        bouncer.admin_url(),
        bouncer.ini.display()
    ));
    std::fs::write(&a.pgdr.config, text).unwrap();
    (a, bouncer)
}

#[test]
fn recover_dry_run_changes_nothing_and_bad_runbooks_are_refused() {
    let (a, bouncer) = production();
    let out_dir = TestDir::new();
    let new = out_dir.join("new");
    let standby = out_dir.join("standby");
    let state = out_dir.join("state.json");
    let ini_before = std::fs::read_to_string(&bouncer.ini).unwrap();
    let repo_before = repo_files(a.pgdr.repo_dir.as_ref().unwrap());
    let hashes_before = a.cluster.content_hashes("postgres");
    let out = a.pgdr.ok(&[
        "recover",
        "--scenario",
        "database-failure",
        "--old-primary-is-down",
        "--data-dir",
        new.to_str().unwrap(),
        "--port",
        &free_port().to_string(),
        "--standby-data-dir",
        standby.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        out.contains("backup ") && out.contains("to lay down") && out.contains("switch application connections"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert!(!new.exists() && !standby.exists() && !state.exists());
    assert_eq!(std::fs::read_to_string(&bouncer.ini).unwrap(), ini_before);
    assert_eq!(repo_files(a.pgdr.repo_dir.as_ref().unwrap()), repo_before);
    assert_eq!(a.cluster.content_hashes("postgres"), hashes_before);

    // A runbook copied and adapted with a typo: refused with file, line and field,
    // before anything runs.
    let bad = out_dir.join("my-failure.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/database-failure.toml"))
        .unwrap()
        .replace("target = \"latest\"", "taget = \"latest\"");
    let line = text.lines().position(|l| l.starts_with("taget")).unwrap() + 1;
    std::fs::write(&bad, &text).unwrap();
    let out = a
        .pgdr
        .run(&["recover", "--scenario", bad.to_str().unwrap(), "--dry-run"]);
    let err = assert_fails(&out, 2, "unknown field `taget`");
    assert!(err.contains(&format!("my-failure.toml:{line}:")), "{err}");
    // Missing inputs name their flag.
    let out = a
        .pgdr
        .run(&["recover", "--scenario", "database-corruption", "--dry-run"]);
    assert_fails(&out, 2, "--target-time");
    // Scenario 4 refuses the primary repository.
    let out = a.pgdr.run(&[
        "recover",
        "--scenario",
        "region-failure",
        "--old-primary-is-down",
        "--data-dir",
        new.to_str().unwrap(),
        "--standby-data-dir",
        standby.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_fails(&out, 2, "--repository NAME");
}

/// A recovery killed (kill -9) after its restore laid the files down and started the
/// server resumes on the next run: the half-done step is undone and run again, and
/// the recovered primary has the data, served through PgBouncer.
#[test]
fn a_recovery_killed_mid_restore_resumes() {
    killed_mid_restore_resumes(false);
}

/// The same, but the host went down with pgdr: the attempt's server had promoted
/// and never archived its timeline's history (a detached pusher may store it at any
/// later moment). The redo must still take a new timeline, not the abandoned one, and
/// its standby must stream from it. Before the fix (62955b3) the redo promoted onto
/// timeline 2 again, recorded as abandoned and declared production's at once, and in
/// CI the standby followed timeline 1 without streaming.
#[test]
fn a_recovery_killed_mid_restore_with_its_host_resumes_on_a_new_timeline() {
    killed_mid_restore_resumes(true);
}

fn killed_mid_restore_resumes(host_crashed: bool) {
    let (a, bouncer) = production();
    a.cluster.psql(
        "postgres",
        "CREATE TABLE kept AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
    );
    a.switch_and_wait();
    let hashes = a.cluster.content_hashes("postgres");
    let out_dir = TestDir::new();
    chown_postgres(out_dir.path());
    let new = out_dir.join("new");
    let standby = out_dir.join("standby");
    let state = out_dir.join("state.json");
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
    let mut killed = a.pgdr.command(&args);
    killed.env("PGDR_TEST_RECOVER_KILL_IN_RESTORE", "1");
    let out = killed.output().unwrap();
    assert_eq!(out.status.code(), None, "killed by a signal: {out:?}");
    let st: serde_json::Value = json(&std::fs::read_to_string(&state).unwrap());
    assert_eq!(st["steps"][0]["status"], "done", "{st}"); // the fence: declared down
    assert_eq!(st["steps"][1]["status"], "started", "{st}");
    assert!(
        new.join("PG_VERSION").exists(),
        "the interrupted restore left its files"
    );
    // The half-done new primary promoted and archives its timeline's history file: a
    // rerun must not follow that timeline (its WAL never reached the archive).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !repo_files(a.pgdr.repo_dir.as_ref().unwrap())
        .iter()
        .any(|f| f.file_name().is_some_and(|n| n == "00000002.history"))
    {
        assert!(
            Instant::now() < deadline,
            "the killed attempt's timeline was not archived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if host_crashed {
        // The host went down with pgdr: the attempt's server stops where it is, and
        // the archive is as it was before its history was stored (the history is
        // still in its pg_wal).
        let mut stop = Command::new(pg_bin().join("pg_ctl"));
        stop.args(["-D", new.to_str().unwrap(), "-m", "immediate", "stop"]);
        as_postgres(&mut stop);
        assert!(stop.output().unwrap().status.success());
        for f in repo_files(a.pgdr.repo_dir.as_ref().unwrap()) {
            if f.file_name().is_some_and(|n| n == "00000002.history") {
                std::fs::remove_file(&f).unwrap();
            }
        }
        assert!(new.join("pg_wal/00000002.history").is_file());
    }

    let out = a.pgdr.ok(&args);
    assert!(out.contains("removed") && out.contains("left half done"), "{out}");
    assert!(
        out.contains("following timeline 1, as the interrupted attempt did"),
        "{out}"
    );
    assert!(out.contains("recovery database-failure done"), "{out}");
    // The killed attempt's timeline is recorded as given up; the one the recovery
    // switched to is declared production's, at the switch.
    let timelines = a.pgdr.repo_dir.as_ref().unwrap().join("test/timelines");
    assert!(timelines.join("00000002.abandoned").is_file(), "{out}");
    assert!(!timelines.join("00000002.primary").exists(), "{out}");
    assert!(timelines.join("00000003.primary").is_file(), "{out}");
    // A later restore to `latest` follows timeline 3, not the abandoned 2.
    let later = a.pgdr.restore_started(&[]);
    assert!(later.output.contains("following timeline 3"), "{}", later.output);
    drop(later);
    let st: serde_json::Value = json(&std::fs::read_to_string(&state).unwrap());
    assert!(st["finished"].is_string(), "{st}");
    assert_eq!(content_hashes_at(port, "postgres"), hashes);
    // Through PgBouncer, the new primary answers and takes writes.
    let served = bouncer.psql("postgres", "SELECT current_setting('port'), pg_is_in_recovery()");
    assert!(served.status.success(), "{served:?}");
    assert_eq!(String::from_utf8_lossy(&served.stdout).trim(), format!("{port}|f"));
    // The standby streams from the new primary, on its timeline.
    let streaming = "SELECT status || '|' || received_tli FROM pg_stat_wal_receiver";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = psql_at(standby_port, "postgres", streaming);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if got == "streaming|3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby does not stream timeline 3: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Run once more: a finished recovery is not redone into the same directories.
    let again = a.pgdr.run(&args);
    assert_fails(&again, 2, "running server");
    for dir in [&new, &standby] {
        let mut stop = Command::new(pg_bin().join("pg_ctl"));
        stop.args(["-D", dir.to_str().unwrap(), "-m", "immediate", "stop"]);
        as_postgres(&mut stop);
        let _ = stop.output();
    }
}

/// The `key = N` setting in a config file, where it is set last.
fn setting_in(file: &Path, key: &str) -> Option<u16> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().rev().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Issue 25: a drill's servers and its PgBouncer take no TCP login without the
/// drill's password. Before, both trusted 127.0.0.1: any local user was superuser of
/// a server whose postgres user can read the repository key.
#[test]
fn a_drills_servers_refuse_tcp_logins_without_its_password() {
    let r = regions();
    let work = TestDir::new();
    let mut drill = r.pgdr.command(&[
        "drill",
        "--scenario",
        "database-failure",
        "--work-dir",
        work.path().to_str().unwrap(),
        "--archive-timeout",
        "3",
        "--json",
    ]);
    let mut child = drill.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Probe production and PgBouncer as soon as they listen, as another local user
    // would: no password, no password file.
    let mut refused: Vec<&str> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while refused.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the drill's servers never answered: refused {refused:?}"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the drill ended ({status}) before both were probed: refused {refused:?}");
        }
        let envs: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("pgdr-drill-"))
            .collect();
        for env in envs {
            for (what, port) in [
                (
                    "production",
                    setting_in(&env.join("production/postgresql.conf"), "port"),
                ),
                (
                    "pgbouncer",
                    setting_in(&env.join("pgbouncer/pgbouncer.ini"), "listen_port"),
                ),
            ] {
                let Some(port) = port else { continue };
                if refused.contains(&what) {
                    continue;
                }
                let out = Command::new(pg_bin().join("psql"))
                    .args([
                        "-X",
                        "-w",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                        "-c",
                        "SELECT 1",
                    ])
                    .arg("-p")
                    .arg(port.to_string())
                    .env_remove("PGPASSWORD")
                    .env("PGPASSFILE", "/nonexistent")
                    .output()
                    .unwrap();
                let said = String::from_utf8_lossy(&out.stderr).into_owned();
                assert!(
                    !out.status.success(),
                    "{what} took a TCP login as postgres without a password"
                );
                if said.contains("password") {
                    refused.push(what);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the drill failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["ok"], true, "{report}");
    assert_torn_down(&r, work.path());
}

/// Issue 25: a re-run resumes only over what the recovery itself made. A run killed
/// mid-restore, then a DBA who removed the half-made directory and put their own in
/// its place: before, the re-run deleted it ("left half done"); now it is refused and
/// the directory is untouched. A database-failure runbook also refuses to run with
/// neither a data directory to fence nor the DBA's word that the old primary is down.
#[test]
fn a_rerun_never_removes_a_directory_the_recovery_did_not_make() {
    let (a, _bouncer) = production();
    let out_dir = TestDir::new();
    chown_postgres(out_dir.path());
    let (new, standby, state) = (out_dir.join("new"), out_dir.join("standby"), out_dir.join("state.json"));
    let (port, standby_port) = (free_port().to_string(), free_port().to_string());
    let mut args = vec![
        "recover",
        "--scenario",
        "database-failure",
        "--data-dir",
        new.to_str().unwrap(),
        "--port",
        &port,
        "--listen",
        "127.0.0.1",
        "--standby-data-dir",
        standby.to_str().unwrap(),
        "--standby-port",
        &standby_port,
        "--state",
        state.to_str().unwrap(),
        "--yes",
    ];
    let mut cluster = a.cluster;
    cluster.stop();
    // Nothing proves the old primary is down: refused before any step.
    let out = a.pgdr.run(&args);
    let said = assert_fails(&out, 2, "--old-primary-is-down");
    assert!(said.contains("--old-data-dir"), "{said}");
    assert!(!new.exists() && !state.exists());
    // A fence path that is not a data directory is an error, not "nothing to fence".
    let not_pg = out_dir.join("not-a-data-dir");
    std::fs::create_dir(&not_pg).unwrap();
    let mut with_bad_fence = args.clone();
    with_bad_fence.extend(["--old-data-dir", not_pg.to_str().unwrap()]);
    assert_fails(&a.pgdr.run(&with_bad_fence), 2, "is not a PostgreSQL data directory");
    assert!(!new.exists() && !state.exists());

    args.push("--old-primary-is-down");
    let mut killed = a.pgdr.command(&args);
    killed.env("PGDR_TEST_RECOVER_KILL_IN_RESTORE", "1");
    let out = killed.output().unwrap();
    assert_eq!(out.status.code(), None, "killed by a signal: {out:?}");
    // Stop what the killed run started, and put the DBA's own directory there.
    let mut stop = Command::new(pg_bin().join("pg_ctl"));
    stop.args(["-D", new.to_str().unwrap(), "-m", "immediate", "stop"]);
    as_postgres(&mut stop);
    let _ = stop.output();
    // Hours later, the same command: an old unfinished state is not resumed silently.
    let touched = Command::new("touch")
        .args(["-d", "8 hours ago"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(touched.success());
    let out = a.pgdr.run(&args);
    assert_fails(&out, 2, "--resume");
    assert!(new.join("PG_VERSION").exists(), "nothing was undone");
    args.push("--resume");
    std::fs::remove_dir_all(&new).unwrap();
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("notes.txt"), "the DBA's own notes\n").unwrap();
    let out = a.pgdr.run(&args);
    assert_fails(&out, 2, "was not created by this recovery");
    assert_eq!(
        std::fs::read_to_string(new.join("notes.txt")).unwrap(),
        "the DBA's own notes\n",
        "the re-run touched a directory it did not make"
    );
}

/// `recover --scenario data-loss` for real, on a live database that keeps writing: the
/// deleted rows of a table with a GENERATED ALWAYS identity key come back by primary
/// key, rows written after the loss stay; a truncated table asked back under another
/// name arrives whole beside the live one, which is left as it is.
#[test]
fn data_loss_recovery_puts_rows_back_and_restores_beside() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql(
        "postgres",
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         INSERT INTO orders (v) SELECT md5(g::text) FROM generate_series(1, 300) g;
         CREATE TABLE notes (id serial PRIMARY KEY, t text UNIQUE);
         INSERT INTO notes (t) SELECT 'note ' || g FROM generate_series(1, 100) g;",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let orders = "SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o WHERE id <= 300";
    let notes = |t: &str| format!("SELECT md5(string_agg(n::text, ',' ORDER BY id)) FROM {t} n");
    let orders_before = c.psql("postgres", orders);
    let notes_before = c.psql("postgres", &notes("notes"));
    let target = c.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(Duration::from_millis(1200));
    c.psql(
        "postgres",
        "DELETE FROM orders WHERE id % 3 = 0; TRUNCATE notes;
         INSERT INTO orders (v) SELECT 'after the loss ' || g FROM generate_series(1, 10) g;",
    );
    let after = c.psql(
        "postgres",
        "SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o WHERE id > 300",
    );
    a.switch_and_wait();
    let out_dir = TestDir::new();
    chown_postgres(out_dir.path());
    let scratch = out_dir.join("scratch");
    let state = out_dir.join("state.json");
    let args = [
        "recover",
        "--scenario",
        "data-loss",
        "--target-time",
        &target,
        "--tables",
        "public.orders,public.notes",
        "--restore-as",
        "public.notes=public.notes_restored",
        "--scratch-dir",
        scratch.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--yes",
    ];
    // Killed right after the scratch copy's table was renamed for --restore-as: the
    // re-run goes on from the renamed table (before: "public.notes does not exist").
    let mut killed = a.pgdr.command(&args);
    killed.env("PGDR_TEST_CRASH_AT", "copy-back-renamed");
    let out = killed.output().unwrap();
    assert_eq!(out.status.code(), None, "killed by a signal: {out:?}");
    let out = a.pgdr.ok(&args);
    assert!(out.contains("recovery data-loss done"), "{out}");
    assert_eq!(
        c.psql("postgres", orders),
        orders_before,
        "deleted rows are back exactly"
    );
    assert_eq!(c.psql("postgres", "SELECT count(*) FROM orders WHERE id > 300"), "10");
    assert_eq!(
        c.psql(
            "postgres",
            "SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o WHERE id > 300"
        ),
        after,
        "rows written after the loss are untouched"
    );
    assert_eq!(
        c.psql("postgres", "SELECT count(*) FROM notes"),
        "0",
        "the live table is left as it is"
    );
    assert_eq!(c.psql("postgres", &notes("notes_restored")), notes_before);
    assert!(!scratch.exists(), "the scratch cluster is removed");
}

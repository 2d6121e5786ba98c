//! `pgdr wal-search` against real WAL: a cluster archiving with `pgdr wal-push` under
//! a pgbench workload loses data four ways (DROP, TRUNCATE after VACUUM FULL, DELETE,
//! bulk UPDATE); the search must name exactly the transaction that did it, and a
//! point-in-time restore to the target it proposes must hold the table as it was
//! just before (content hash), with the commit before present and the one after absent.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

/// pgbench at a low steady rate for the whole test; killed on drop.
struct Workload(Child);

impl Workload {
    fn start(port: u16) -> Workload {
        let child = Command::new(pg_bin().join("pgbench"))
            .args(["-n", "-c", "2", "-j", "1", "-R", "40", "-T", "900"])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string(), "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbench");
        Workload(child)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The table's content, in key order, as one hash ("absent" when it does not exist).
fn table_hash(query: impl Fn(&str) -> String, table: &str) -> String {
    let exists = query(&format!("SELECT to_regclass('{table}') IS NOT NULL"));
    if exists != "t" {
        return "absent".into();
    }
    query(&format!(
        "SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM {table} t"
    ))
}

/// One loss: a marker committed before, the loss in a transaction that records its
/// own xid, a marker committed after. Returns (hash before, xid).
fn lose(c: &Cluster, name: &str, table: &str, sql: &str) -> (String, u64) {
    c.psql("postgres", &format!("INSERT INTO markers VALUES ('before-{name}')"));
    // pgbench commits between the marker, the loss and the next marker.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = table_hash(|q| c.psql("postgres", q), table);
    c.psql(
        "postgres",
        &format!("BEGIN; INSERT INTO loss_xids VALUES ('{name}', txid_current()); {sql}; COMMIT;"),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.psql("postgres", &format!("INSERT INTO markers VALUES ('after-{name}')"));
    let xid: u64 = c
        .psql("postgres", &format!("SELECT xid FROM loss_xids WHERE name = '{name}'"))
        .parse()
        .unwrap();
    (before, xid)
}

fn search(pgdr: &Pgdr, args: &[&str]) -> Value {
    let mut all = vec!["--json", "wal-search"];
    all.extend_from_slice(args);
    let out = pgdr.run(&all);
    assert_success(&out, &format!("pgdr {}", all.join(" ")));
    assert_clean_stderr(&out);
    serde_json::from_slice(&out.stdout).expect("wal-search --json prints JSON")
}

fn matches(report: &Value) -> Vec<Value> {
    report["matches"].as_array().expect("matches").clone()
}

/// Restore to the match's target and check the table and the markers around it.
fn check_restore(pgdr: &Pgdr, m: &Value, name: &str, table: &str, want: &str) {
    let target = &m["target"];
    let lsn = target["lsn"].as_str().unwrap();
    assert_eq!(target["exclusive"], Value::Bool(true));
    let tli = target["timeline"].to_string();
    let restored = pgdr.restore_started(&["--target-lsn", lsn, "--target-exclusive", "--target-timeline", &tli]);
    let got = table_hash(|q| restored.psql("postgres", q), table);
    assert_eq!(got, want, "{table} as restored to just before the {name} ({lsn})");
    let markers = restored.psql(
        "postgres",
        &format!("SELECT string_agg(m, ',' ORDER BY m) FROM markers WHERE m LIKE '%-{name}'"),
    );
    assert_eq!(
        markers,
        format!("before-{name}"),
        "the commit before the {name} is in, the one after is not"
    );
    restored.stop();
}

#[test]
fn finds_each_loss_and_restores_to_just_before_it() {
    let mut a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 1);
    c.psql(
        "postgres",
        "CREATE TABLE markers (m text PRIMARY KEY);
         CREATE TABLE loss_xids (name text PRIMARY KEY, xid bigint);",
    );
    for t in ["t_drop", "t_trunc", "t_del", "t_upd"] {
        c.psql(
            "postgres",
            &format!(
                "CREATE TABLE public.{t} (id int PRIMARY KEY, v text, n int);
                 INSERT INTO public.{t} SELECT g, md5(g::text), g FROM generate_series(1, 3000) g;
                 CREATE INDEX ON public.{t} (n);"
            ),
        );
    }
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let _load = Workload::start(c.port);
    // The TRUNCATE's table gets a new file between the backup and the loss.
    c.psql("postgres", "DELETE FROM t_trunc WHERE id > 2000");
    c.psql("postgres", "VACUUM FULL t_trunc");
    let (drop_hash, drop_xid) = lose(c, "drop", "public.t_drop", "DROP TABLE public.t_drop");
    let (trunc_hash, trunc_xid) = lose(c, "trunc", "public.t_trunc", "TRUNCATE public.t_trunc");
    let (del_hash, del_xid) = lose(c, "del", "public.t_del", "DELETE FROM public.t_del WHERE id % 3 = 0");
    let (upd_hash, upd_xid) = lose(
        c,
        "upd",
        "public.t_upd",
        "UPDATE public.t_upd SET v = 'x' WHERE id <= 2500",
    );
    let after_all = c.psql(
        "postgres",
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A second delete from t_del: both are listed.
    c.psql("postgres", "DELETE FROM public.t_del WHERE id <= 10");
    a.switch_and_wait();

    let history: u64 = c
        .psql("postgres", "SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    assert!(
        history > 20,
        "the workload ran alongside ({history} pgbench transactions)"
    );

    let human = a.pgdr.ok(&["wal-search", "--table", "public.t_drop", "--dropped"]);
    println!("{human}");
    assert!(human.contains(&format!("xid {drop_xid} ")), "{human}");
    assert!(
        human.contains("public.t_drop in database \"postgres\": dropped"),
        "{human}"
    );
    assert!(human.contains("--target-exclusive"), "{human}");
    let dropped = matches(&search(&a.pgdr, &["--table", "public.t_drop", "--dropped"]));
    assert_eq!(dropped.len(), 1, "{dropped:#?}");
    assert_eq!(dropped[0]["xid"], drop_xid);
    assert_eq!(dropped[0]["change"], "dropped");
    assert_eq!(dropped[0]["timeline"], 1);

    // The VACUUM FULL rewrote t_trunc: only the TRUNCATE is a truncate.
    let truncated = matches(&search(&a.pgdr, &["--table", "public.t_trunc", "--truncated"]));
    assert_eq!(truncated.len(), 1, "{truncated:#?}");
    assert_eq!(truncated[0]["xid"], trunc_xid);
    let any = matches(&search(&a.pgdr, &["--table", "t_trunc", "--any"]));
    let changes: Vec<&str> = any.iter().map(|m| m["change"].as_str().unwrap()).collect();
    assert_eq!(changes, ["truncated", "rewritten", "deleted"], "{any:#?}");

    let deleted = matches(&search(&a.pgdr, &["--table", "public.t_del", "--deleted"]));
    assert_eq!(deleted.len(), 2, "two deletes, newest first: {deleted:#?}");
    assert_eq!(deleted[1]["xid"], del_xid);
    assert_eq!(deleted[1]["rows"], 1000);
    assert_eq!(deleted[0]["rows"], 7, "ids 1..10 less the three already gone");
    let big = matches(&search(
        &a.pgdr,
        &["--table", "public.t_del", "--deleted", "--min-rows", "100"],
    ));
    assert_eq!(big.len(), 1);
    assert_eq!(big[0]["xid"], del_xid);

    let updated = matches(&search(&a.pgdr, &["--table", "public.t_upd", "--updated"]));
    assert_eq!(updated.len(), 1, "{updated:#?}");
    assert_eq!(updated[0]["xid"], upd_xid);
    assert_eq!(updated[0]["rows"], 2500);

    // Nothing in a window after the losses: an empty list, exit 0.
    let none = search(
        &a.pgdr,
        &["--table", "public.t_upd", "--updated", "--since", &after_all],
    );
    assert!(matches(&none).is_empty(), "{none:#}");
    let out = a
        .pgdr
        .run(&["wal-search", "--table", "public.t_upd", "--since", &after_all]);
    assert_success(&out, "wal-search with nothing to find");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no transaction in the window matches"));

    // Each proposed target restores the table as it was just before its loss.
    check_restore(&a.pgdr, &dropped[0], "drop", "public.t_drop", &drop_hash);
    check_restore(&a.pgdr, &truncated[0], "trunc", "public.t_trunc", &trunc_hash);
    check_restore(&a.pgdr, &deleted[1], "del", "public.t_del", &del_hash);
    check_restore(&a.pgdr, &updated[0], "upd", "public.t_upd", &upd_hash);

    // Across a promotion: the old primary stops, a restored copy takes over on
    // timeline 2 and archives there; a DROP on timeline 2 is found, and so is the
    // DELETE on timeline 1 before it.
    drop(_load);
    a.cluster.stop();
    let promoted = a.pgdr.restore_started_archiving(&[]);
    let upd_now = table_hash(|q| promoted.psql("postgres", q), "public.t_upd");
    promoted.psql("postgres", "INSERT INTO markers VALUES ('before-tl2drop')");
    promoted.psql(
        "postgres",
        "BEGIN; INSERT INTO loss_xids VALUES ('tl2drop', txid_current()); DROP TABLE public.t_upd; COMMIT;",
    );
    promoted.psql("postgres", "INSERT INTO markers VALUES ('after-tl2drop')");
    let tl2_xid: u64 = promoted
        .psql("postgres", "SELECT xid FROM loss_xids WHERE name = 'tl2drop'")
        .parse()
        .unwrap();
    let seg = promoted.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    promoted.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while promoted.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < seg
    {
        assert!(std::time::Instant::now() < deadline, "timeline 2 was not archived");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let across = matches(&search(&a.pgdr, &["--table", "public.t_upd"]));
    let seen: Vec<(u64, &str, u64)> = across
        .iter()
        .map(|m| {
            (
                m["xid"].as_u64().unwrap(),
                m["change"].as_str().unwrap(),
                m["timeline"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(tl2_xid, "dropped", 2), (upd_xid, "updated", 1)], "{across:#?}");
    promoted.stop();
    check_restore(&a.pgdr, &across[0], "tl2drop", "public.t_upd", &upd_now);
}

#[test]
fn restore_points_are_listed_with_time_and_lsn() {
    let a = Archiving::start();
    let c = &a.cluster;
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let before = c.psql("postgres", "SELECT extract(epoch FROM now())::float8");
    let lsn = c.psql("postgres", "SELECT pg_create_restore_point('before-upgrade')");
    let after = c.psql("postgres", "SELECT extract(epoch FROM now())::float8");
    c.psql("postgres", "CREATE TABLE after_point (id int)");
    a.switch_and_wait();
    let out = a.pgdr.run(&["--json", "list", "--restore-points"]);
    assert_success(&out, "list --restore-points");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = report["restore_points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{report:#}");
    assert_eq!(points[0]["name"], "before-upgrade");
    assert_eq!(points[0]["timeline"], 1);
    let found = points[0]["lsn"].as_str().unwrap();
    // pg_create_restore_point returns where its record ends; the listing gives its start.
    let ends_at = c.psql("postgres", &format!("SELECT '{lsn}'::pg_lsn - '{found}'::pg_lsn"));
    assert!(
        ends_at.parse::<i64>().unwrap() > 0 && ends_at.parse::<i64>().unwrap() < 200,
        "{found} vs {lsn}"
    );
    let time = chrono::DateTime::parse_from_rfc3339(points[0]["time"].as_str().unwrap()).unwrap();
    let epoch = time.timestamp_micros() as f64 / 1e6;
    assert!(epoch >= before.parse::<f64>().unwrap() - 0.001 && epoch <= after.parse::<f64>().unwrap() + 0.001);
    // The name restores.
    let restored = a.pgdr.restore_started(&["--target-name", "before-upgrade"]);
    assert_eq!(
        restored.psql("postgres", "SELECT to_regclass('after_point') IS NULL"),
        "t"
    );
}

/// `recover --scenario data-loss --table … --deleted` with no moment given: wal-search
/// finds the DELETE, the plan names it, and the rows come back while the rows written
/// since stay. Two matching transactions are not chosen between silently.
#[test]
fn data_loss_recovery_finds_the_moment_itself() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql(
        "postgres",
        "CREATE TABLE orders (id int PRIMARY KEY, v text);
         INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 600) g;",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let all = "SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o WHERE id BETWEEN 3 AND 600";
    let before = c.psql("postgres", all);
    let xid = c.psql(
        "postgres",
        "BEGIN; DELETE FROM orders WHERE id % 3 = 0; SELECT txid_current(); COMMIT;",
    );
    c.psql(
        "postgres",
        "INSERT INTO orders SELECT g, 'after' FROM generate_series(601, 610) g",
    );
    c.psql("postgres", "DELETE FROM orders WHERE id IN (1, 2)");
    a.switch_and_wait();
    let out_dir = TestDir::new();
    chown_postgres(out_dir.path());
    let scratch = out_dir.join("scratch");
    let state = out_dir.join("state.json");
    let recover = |extra: &[&str]| {
        let mut args = vec![
            "recover",
            "--scenario",
            "data-loss",
            "--table",
            "public.orders",
            "--deleted",
            "--scratch-dir",
            scratch.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--yes",
        ];
        args.extend_from_slice(extra);
        a.pgdr.run(&args)
    };
    let two = recover(&[]);
    let err = assert_fails(&two, 2, "2 transactions match");
    assert!(err.contains("--before-xid"), "{err}");
    assert_eq!(
        c.psql("postgres", "SELECT count(*) FROM orders"),
        "408",
        "nothing changed"
    );

    let out = recover(&["--min-rows", "100"]);
    assert_success(&out, "recover --deleted --min-rows 100");
    let text = String::from_utf8_lossy(&out.stdout);
    // psql prints the xid among the transaction's other results.
    let xid = xid
        .lines()
        .find(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
        .unwrap();
    assert!(
        text.contains(&format!("wal-search found the loss: xid {xid} ")),
        "{text}"
    );
    assert!(text.contains("200 row(s) deleted"), "{text}");
    assert!(text.contains("recovery data-loss done"), "{text}");
    // Rows 1 and 2 were deleted later, by the transaction recovery stopped after;
    // everything the big DELETE took is back.
    assert_eq!(
        c.psql("postgres", "SELECT count(*) FROM orders WHERE id <= 600 AND id % 3 = 0"),
        "200"
    );
    assert_eq!(c.psql("postgres", all), before, "the deleted rows are back exactly");
    assert_eq!(c.psql("postgres", "SELECT count(*) FROM orders WHERE id > 600"), "10");
    assert!(!scratch.exists());
}

//! Logical backups end to end: the real binary against real PostgreSQL clusters, a
//! local repository and the real S3 server; data compared table by table.

mod common;

use common::*;

/// Back up a cluster with pgbench data, every common type, a large object and roles;
/// restore everything into a second, empty cluster (globals first), and compare the
/// ordered content hash of every table and the roles.
fn round_trip(kind: RepoKind) {
    let source = Cluster::start();
    load_sample(&source, "shop");
    source.psql(
        "postgres",
        "CREATE ROLE app_reader LOGIN CONNECTION LIMIT 7; CREATE ROLE app_owner CREATEDB",
    );
    source.psql(
        "shop",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_reader; ALTER TABLE pgbench_accounts OWNER TO app_owner",
    );
    let pgdr = Pgdr::new(&source, kind);
    let out = pgdr.ok(&["backup", "--kind", "logical", "--all", "--tag", "first"]);
    assert!(out.contains("backup ") && out.contains("database(s)"), "{out}");

    let list = pgdr.list_json();
    assert_eq!(list.len(), 1);
    let dbs: Vec<&str> = list[0]["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(dbs, vec!["postgres", "shop"]);
    assert_eq!(list[0]["tags"][0], "first");

    // Restore into a different, empty cluster: roles first, then the database.
    let target = Cluster::start();
    let mut restorer = Pgdr {
        extra_env: vec![],
        ..pgdr.clone_setup()
    };
    restorer.set_env("PGDR_POSTGRES_URL", &target.url("postgres"));
    restorer.ok(&["restore", "--globals-only"]);
    assert_eq!(target.roles(), source.roles(), "roles differ after restoring globals");
    let out = restorer.ok(&["restore", "--backup", "tag:first", "--database", "shop", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["rows"].as_i64().unwrap() > 100_000, "{report}");
    assert_eq!(target.content_hashes("shop"), source.content_hashes("shop"));
    assert_eq!(
        target.psql(
            "shop",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'pgbench_accounts'"
        ),
        "app_owner"
    );

    // And alongside the original on the same cluster, under a new name.
    pgdr.ok(&["restore", "--database", "shop", "--to-database", "shop_copy"]);
    assert_eq!(source.content_hashes("shop_copy"), source.content_hashes("shop"));
}

#[test]
fn round_trip_local() {
    round_trip(RepoKind::Local);
}

#[test]
fn round_trip_s3() {
    round_trip(RepoKind::S3);
}

#[test]
fn stored_bytes_never_contain_plaintext() {
    let cluster = Cluster::start();
    let marker = "PGDR-PLAINTEXT-MARKER-7f3a9c";
    cluster.psql("postgres", "CREATE DATABASE secrets");
    cluster.psql(
        "secrets",
        &format!("CREATE TABLE s (v text); INSERT INTO s SELECT '{marker}' || i FROM generate_series(1, 1000) i"),
    );
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    pgdr.ok(&["backup", "--database", "secrets"]);
    let files = repo_files(pgdr.repo_dir.as_ref().unwrap());
    assert!(files.len() >= 3, "expected globals, dump and manifest: {files:?}");
    for f in files {
        let data = std::fs::read(&f).unwrap();
        for needle in [marker.as_bytes(), b"secrets", b"CREATE TABLE"] {
            let is_repo_json = f.ends_with("repo.json");
            if is_repo_json {
                continue;
            }
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{} contains plaintext {:?}",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    // And yet `cat` gets the dump back, good for pg_restore.
    let label = pgdr.list_json()[0]["label"].as_str().unwrap().to_string();
    let dump = pgdr
        .command(&["cat", &format!("{label}/databases/secrets.dump")])
        .output()
        .unwrap();
    assert_success(&dump, "pgdr cat");
    assert!(dump.stdout.starts_with(b"PGDMP"), "not a custom-format dump");
    let globals = pgdr.ok(&["cat", &format!("backups/{label}/globals.sql")]);
    assert!(globals.contains("CREATE ROLE postgres"), "{globals}");
    let mut restore = std::process::Command::new(pg_bin().join("pg_restore"))
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    restore.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    let sql = restore.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&sql.stdout).contains(&format!("{marker}1000")));
}

#[test]
fn restore_options_and_refusals() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    pgdr.ok(&["backup", "--database", "shop"]);
    let first = pgdr.list_json()[0]["label"].as_str().unwrap().to_string();
    cluster.psql("shop", "DELETE FROM pgbench_accounts WHERE aid <= 500");
    pgdr.ok(&["backup", "--database", "shop", "--tag", "after-delete"]);

    // Newest first, and selectors pick the right one.
    let list = pgdr.list_json();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["label"], first.as_str());
    assert_eq!(list[0]["tags"][0], "after-delete");

    // Refuses a non-empty existing database.
    let out = pgdr.run(&["restore", "--backup", &first, "--database", "shop"]);
    assert_fails(&out, 2, "not empty");
    // An empty existing database is fine; --jobs 2 stages and restores in parallel.
    cluster.psql("postgres", "CREATE DATABASE empty_target");
    pgdr.ok(&[
        "restore",
        "--backup",
        &first,
        "--database",
        "shop",
        "--to-database",
        "empty_target",
        "--jobs",
        "2",
    ]);
    assert_eq!(
        cluster.psql("empty_target", "SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );

    // --clean replaces the objects of a non-empty database.
    pgdr.ok(&["restore", "--backup", &first, "--database", "shop", "--clean"]);
    assert_eq!(cluster.psql("shop", "SELECT count(*) FROM pgbench_accounts"), "100000");

    // One table only.
    let out = pgdr.ok(&[
        "restore",
        "--backup",
        "tag:after-delete",
        "--database",
        "shop",
        "--to-database",
        "one_table",
        "--table",
        "public.pgbench_accounts",
        "--json",
    ]);
    assert_eq!(
        cluster.psql("one_table", "SELECT count(*) FROM pgbench_accounts"),
        "99500"
    );
    // Issue 26: the size reported is the table's, not the whole dump's.
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // (Autovacuum may add a visibility map afterwards: between the heap and the total.)
    let size = |f: &str| -> u64 {
        cluster
            .psql("one_table", &format!("SELECT {f}('public.pgbench_accounts')"))
            .parse()
            .unwrap()
    };
    let bytes = report["bytes"].as_u64().unwrap();
    assert!(
        bytes >= size("pg_relation_size") && bytes <= size("pg_total_relation_size"),
        "{report}"
    );
    assert!(report["dump_bytes"].as_u64().is_some_and(|d| d > 0), "{report}");
    assert_eq!(
        cluster.psql(
            "one_table",
            "SELECT count(*) FROM pg_tables WHERE schemaname IN ('public', 'app')"
        ),
        "1"
    );

    // Unknown label, unknown tag, unknown database, bad table syntax: exit 2, one line.
    assert_fails(
        &pgdr.run(&["restore", "--backup", "20200101T000000Z-L"]),
        2,
        "does not exist",
    );
    assert_fails(&pgdr.run(&["restore", "--backup", "tag:nope"]), 2, "tagged");
    assert_fails(
        &pgdr.run(&["restore", "--backup", "yesterday"]),
        2,
        "not a backup label",
    );
    assert_fails(
        &pgdr.run(&["restore", "--database", "nope", "--to-database", "x"]),
        2,
        "no database",
    );
    assert_fails(
        &pgdr.run(&["restore", "--table", "nodot", "--to-database", "x"]),
        2,
        "schema.name",
    );
}

#[test]
fn check_reports_every_part() {
    let cluster = Cluster::start();
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    let out = pgdr.run(&["check"]);
    assert_success(&out, "pgdr check");
    let text = String::from_utf8_lossy(&out.stdout);
    for part in [
        "postgres",
        "versions",
        "repository",
        "identity",
        "key",
        "writable",
        "temp",
        "orphans",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with('✓') && l.contains(&format!("{part}:"))),
            "no ✓ {part} in:\n{text}"
        );
    }
    // An orphan: objects under a label without a manifest.
    let orphan = pgdr
        .repo_dir
        .as_ref()
        .unwrap()
        .join("test/backups/20200101T000000Z-L/databases");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("x.dump"), b"partial").unwrap();
    let text = pgdr.ok(&["check"]);
    assert!(
        text.contains("⚠ orphans") && text.contains("20200101T000000Z-L"),
        "{text}"
    );
    assert!(pgdr.list_json().is_empty(), "an orphan must not be listed");
    // A wrong key fails the key check (exit 1), naming the key.
    let mut wrong = pgdr.clone_setup();
    wrong.set_env("PGDR_KEY", &"11".repeat(32));
    let out = wrong.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "key")
        .unwrap();
    assert_eq!(key["status"], "failed");
    // PostgreSQL down: ✗ postgres, exit 1.
    drop(cluster);
    let out = pgdr.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("✗ postgres"));
}

/// Issue 25: roles and tablespaces restored into another cluster on the same host.
/// The backup's tablespace directory is the source's own, so CREATE TABLESPACE
/// fails there. Before, `restore --globals-only` exited 0 and the database restore
/// then failed on the missing tablespace. Now it is an error naming the tablespace
/// and the ways forward; `--tablespace-map NAME=DIR` puts it elsewhere and
/// `--no-tablespaces` leaves it out, and the data comes back either way.
#[test]
fn tablespaces_into_another_cluster_are_mapped_or_left_out() {
    let source = Cluster::start();
    let ts_dir = pg_owned_dir(&source.dir.join("ts_fast"));
    source.psql(
        "postgres",
        &format!("CREATE TABLESPACE fast LOCATION '{}'", ts_dir.display()),
    );
    source.psql("postgres", "CREATE DATABASE shop");
    source.psql(
        "shop",
        "CREATE TABLE hot (id int PRIMARY KEY, v text) TABLESPACE fast; INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(1, 2000) g",
    );
    let pgdr = Pgdr::new(&source, RepoKind::Local);
    pgdr.ok(&["backup", "--kind", "logical", "--all"]);
    let want = source.content_hashes("shop");

    let target = Cluster::start();
    let mut restorer = Pgdr {
        extra_env: vec![],
        ..pgdr.clone_setup()
    };
    restorer.set_env("PGDR_POSTGRES_URL", &target.url("postgres"));
    let out = restorer.run(&["restore", "--globals-only"]);
    let said = assert_fails(&out, 1, "tablespace fast could not be created");
    assert!(
        said.contains("--tablespace-map fast=DIR") && said.contains("--no-tablespaces"),
        "{said}"
    );
    assert_eq!(
        target.psql("postgres", "SELECT count(*) FROM pg_tablespace WHERE spcname = 'fast'"),
        "0"
    );

    // A typo in the map is refused before anything runs.
    let out = restorer.run(&["restore", "--globals-only", "--tablespace-map", "fsat=/tmp/x"]);
    assert_fails(&out, 2, "creates no tablespace \"fsat\"");

    // Mapped: the tablespace is made where asked, the table lands in it.
    let new_dir = pg_owned_dir(&target.dir.join("ts_fast_here"));
    let map = format!("fast={}", new_dir.display());
    let out = restorer.ok(&["restore", "--globals-only", "--tablespace-map", &map]);
    assert!(out.contains("restored roles and tablespaces"), "{out}");
    assert_eq!(
        target.psql(
            "postgres",
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'fast'"
        ),
        new_dir.display().to_string()
    );
    restorer.ok(&["restore", "--database", "shop"]);
    assert_eq!(target.content_hashes("shop"), want);
    assert_eq!(
        target.psql("shop", "SELECT tablespace FROM pg_tables WHERE tablename = 'hot'"),
        "fast"
    );

    // Left out: into a third cluster, everything in the default tablespace.
    let third = Cluster::start();
    restorer.set_env("PGDR_POSTGRES_URL", &third.url("postgres"));
    restorer.ok(&["restore", "--globals-only", "--no-tablespaces"]);
    assert_eq!(
        third.psql("postgres", "SELECT count(*) FROM pg_tablespace WHERE spcname = 'fast'"),
        "0"
    );
    restorer.ok(&["restore", "--database", "shop", "--no-tablespaces"]);
    assert_eq!(third.content_hashes("shop"), want);
    assert_eq!(
        third.psql(
            "shop",
            "SELECT coalesce(tablespace, '') FROM pg_tables WHERE tablename = 'hot'"
        ),
        ""
    );
}

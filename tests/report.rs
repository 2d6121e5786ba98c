//! `pgdr report` (issue 30): the recoverability window, gaps, timelines, backups,
//! verifications and what expire would remove, against a repository built here by
//! real backups, a real timeline switch, a segment removed from the archive and a
//! real restore test; and the page for an empty repository and for a damaged one.

mod common;

use common::*;

fn report_json(pgdr: &Pgdr) -> serde_json::Value {
    let out = pgdr.ok(&["report", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn report_html(pgdr: &Pgdr) -> String {
    let file = pgdr.dir.join(format!("report-{}.html", rand::random::<u32>()));
    let out = pgdr.ok(&["report", "--html", file.to_str().unwrap()]);
    assert!(out.contains("wrote"), "{out}");
    std::fs::read_to_string(&file).unwrap()
}

/// The page loads nothing from anywhere: no script, no external URL in any
/// attribute, and the policy that forbids the browser to fetch anything.
fn assert_self_contained(html: &str) {
    assert!(html.contains("default-src 'none'"), "no Content-Security-Policy");
    for needle in ["<script", "src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(needle), "the page loads something: {needle}");
    }
}

fn label(v: &serde_json::Value) -> String {
    v["label"].as_str().unwrap().to_string()
}

/// A full backup and an incremental, a restore test of the incremental, a copy
/// promoted onto timeline 2 (archiving), more WAL on timeline 1 and a segment of it
/// removed: the report shows both timelines with the right bounds, the gap by name,
/// the verified backup, and the page draws it all without loading anything.
#[test]
fn the_report_shows_timelines_gaps_backups_and_verifications() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.psql("postgres", "CREATE DATABASE app");
    c.pgbench_init("app", 1);
    let full =
        serde_json::from_str::<serde_json::Value>(&a.pgdr.ok(&["backup", "--kind", "physical", "--json"])).unwrap();
    c.psql("app", "UPDATE pgbench_accounts SET abalance = 1 WHERE aid % 10 = 0");
    a.switch_and_wait();
    let incr = serde_json::from_str::<serde_json::Value>(
        &a.pgdr.ok(&["backup", "--kind", "physical", "--type", "incr", "--json"]),
    )
    .unwrap();
    let (full, incr) = (label(&full), label(&incr));
    assert!(incr.ends_with("-I"), "an incremental's label: {incr}");
    a.pgdr.ok(&["verify", "--backup", &incr]);

    // Timeline 2: a copy of the incremental, promoted and archiving.
    let promoted = a
        .pgdr
        .restore_started_archiving(&["--backup", &incr, "--target", "immediate"]);
    promoted.switch_and_wait();
    promoted.switch_and_wait();
    drop(promoted);

    // Timeline 1 goes on; one of its segments goes missing from the archive.
    let segs: Vec<String> = (0..3)
        .map(|_| {
            c.psql(
                "postgres",
                "CREATE TABLE IF NOT EXISTS w (x int); INSERT INTO w VALUES (1)",
            );
            a.switch_and_wait()
        })
        .collect();
    let repo = a.pgdr.repo_dir.clone().unwrap();
    let lost = repo.join(format!("test/wal/{}/{}", &segs[1][..16], segs[1]));
    std::fs::remove_file(&lost).unwrap_or_else(|e| panic!("{}: {e}", lost.display()));

    let r = report_json(&a.pgdr);
    let primary = &r["repositories"][0];
    assert_eq!(primary["name"], "primary", "{r}");
    assert!(primary["error"].is_null(), "{r}");
    let timelines = primary["timelines"].as_array().unwrap();
    let tl = |n: u64| {
        timelines
            .iter()
            .find(|t| t["timeline"] == n)
            .unwrap_or_else(|| panic!("timeline {n}: {r}"))
    };
    // Timeline 1: the gap is the removed segment, named; restorable from the full
    // backup up to the segment before the gap (the later ones follow no backup).
    let one = tl(1);
    let gaps = one["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{one}");
    assert_eq!(gaps[0]["first_missing"], segs[1].as_str());
    assert_eq!(gaps[0]["last_missing"], segs[1].as_str());
    assert_eq!(gaps[0]["missing"], 1);
    let spans = one["restorable"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "{one}");
    assert_eq!(spans[0]["from_backup"], full.as_str());
    assert_eq!(spans[0]["until_segment"], segs[0].as_str(), "{one}");
    assert!(one["parent"].is_null());
    // Timeline 2: branched off timeline 1, reachable across the switch.
    let two = tl(2);
    assert_eq!(two["parent"], 1, "{two}");
    assert!(two["switch_lsn"].is_string(), "{two}");
    assert!(two["gaps"].as_array().unwrap().is_empty(), "{two}");
    let spans = two["restorable"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "{two}");
    assert_eq!(spans[0]["from_backup"], "switch from timeline 1");
    let time = |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(time(&primary["earliest"]) <= time(&spans[0]["from"]), "{r}");
    assert!(time(&primary["latest"]) >= time(&spans[0]["to"]), "{r}");

    // Backups: the incremental is verified and names its parent; the full is not.
    let backups = primary["backups"].as_array().unwrap();
    let row = |l: &str| {
        backups
            .iter()
            .find(|b| b["label"] == l)
            .unwrap_or_else(|| panic!("{l}: {r}"))
    };
    assert_eq!(row(&incr)["status"], "verified");
    assert_eq!(row(&incr)["backup_type"], "incr");
    assert_eq!(row(&incr)["parent"], full.as_str());
    assert_eq!(row(&full)["status"], "not verified");
    assert!(row(&full)["stored_bytes"].as_u64().unwrap() > 0);
    let history = primary["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|e| e["kind"] == "restore-test" && e["subject"] == incr.as_str() && e["ok"] == true),
        "{r}"
    );
    assert_eq!(primary["archive"]["gaps"], 1, "{r}");
    assert!(primary["archive"]["age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(primary["expire"]["backups"].is_array(), "{r}");
    // The server answers: its archiver statistics are there.
    assert!(r["server"]["archived_count"].as_i64().unwrap() > 0, "{r}");

    // The text says the same in a few lines.
    let text = a.pgdr.ok(&["report"]);
    assert!(
        text.contains(&format!("GAP: 1 missing, {} … {}", segs[1], segs[1])),
        "{text}"
    );
    assert!(text.contains("timeline 2"), "{text}");

    // The page: the gap by name, both timelines drawn, the backups, self-contained.
    let html = report_html(&a.pgdr);
    assert_self_contained(&html);
    for needle in [
        segs[1].as_str(),
        "timeline 1",
        "timeline 2",
        full.as_str(),
        incr.as_str(),
        "<svg",
        "verified",
        "A restore can reach",
    ] {
        assert!(html.contains(needle), "the page lacks {needle:?}");
    }
    // Kept for a person to look at (docs/report.png is a screenshot of such a page).
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-gap.html"),
        &html,
    )
    .unwrap();
    // `-` writes the same page to stdout.
    let out = a.pgdr.ok(&["report", "--html", "-"]);
    assert!(out.starts_with("<!DOCTYPE html>") && out.contains(segs[1].as_str()));
}

/// An empty repository's page says there is nothing to restore; a damaged manifest
/// is named on the page and in the JSON, and the report still comes out whole.
#[test]
fn the_report_of_an_empty_or_damaged_repository_says_so() {
    let a = Archiving::start();
    let r = report_json(&a.pgdr);
    let primary = &r["repositories"][0];
    assert_eq!(primary["backups"].as_array().unwrap().len(), 0, "{r}");
    assert!(primary["earliest"].is_null(), "{r}");
    let html = report_html(&a.pgdr);
    assert_self_contained(&html);
    assert!(html.contains("holds no backups yet"), "{html}");
    assert!(html.contains("no point-in-time restore is possible"), "{html}");

    a.pgdr.ok(&["backup", "--kind", "physical"]);
    let second = a.pgdr.ok(&["backup", "--kind", "physical", "--json"]);
    let damaged = label(&serde_json::from_str(&second).unwrap());
    let repo = a.pgdr.repo_dir.clone().unwrap();
    let manifest = repo.join(format!("test/backups/{damaged}/manifest.json"));
    let mut bytes = std::fs::read(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&manifest, bytes).unwrap();

    let r = report_json(&a.pgdr);
    let primary = &r["repositories"][0];
    let listed = primary["damaged"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{r}");
    assert_eq!(listed[0]["label"], damaged.as_str());
    assert_eq!(primary["backups"].as_array().unwrap().len(), 1, "{r}");
    let html = report_html(&a.pgdr);
    assert!(html.contains("Damaged manifests") && html.contains(&damaged), "{html}");

    // A repository that cannot be opened at all (its key is wrong): said, not failed.
    let wrong_key = a.pgdr.dir.join("wrong.key");
    std::fs::write(&wrong_key, format!("{}\n", "ab".repeat(32))).unwrap();
    let config = std::fs::read_to_string(&a.pgdr.config).unwrap();
    let key = a.pgdr.key_file.display().to_string();
    std::fs::write(&a.pgdr.config, config.replace(&key, wrong_key.to_str().unwrap())).unwrap();
    let r = report_json(&a.pgdr);
    assert!(r["repositories"][0]["error"].is_string(), "{r}");
    let html = report_html(&a.pgdr);
    assert!(html.contains("cannot be read in full"), "{html}");
}

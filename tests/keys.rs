//! Key rotation (issue 14): `pgdr key rotate` gives the repository a new key while the
//! retired one still decrypts what it encrypted; `pgdr key rewrap` moves every stored
//! object onto the new key by rewriting headers only; without the retired key, an old
//! backup's refusal names the missing key id; a rotation or rewrap killed half-way is
//! finished by the next run.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;

/// Every pgdr object under `root` with the key id in its header (hex).
fn object_keys(root: &Path) -> Vec<(PathBuf, String, u8)> {
    repo_files(root)
        .into_iter()
        .filter_map(|path| {
            let data = std::fs::read(&path).ok()?;
            (data.len() >= 92 && &data[..4] == b"PGDR").then(|| {
                let id: String = data[5..21].iter().map(|b| format!("{b:02x}")).collect();
                (path, id, data[4])
            })
        })
        .collect()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn retired_dir(key_file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.retired", key_file.display()))
}

/// Back up, rotate, back up: both restore (the first through WAL archived under both
/// keys); without the retired key the first is refused by key id; after a rewrap every
/// object is under the new key and the first restores with the retired key gone.
#[test]
fn rotate_then_rewrap_keeps_every_backup_restorable() {
    let a = Archiving::start();
    let c = &a.cluster;
    c.pgbench_init("postgres", 4);
    c.psql("postgres", "CREATE TABLE markers (m text)");
    c.psql("postgres", "INSERT INTO markers VALUES ('before')");
    let first = a.pgdr.ok(&["backup", "--kind", "physical", "--json"]);
    let first = json(&first)["label"].as_str().unwrap().to_string();
    c.psql("postgres", "INSERT INTO markers VALUES ('old key WAL')");
    a.switch_and_wait();
    let repo = a.pgdr.repo_dir.clone().unwrap();
    let old_id = object_keys(&repo)[0].1.clone();

    let rotated = json(&a.pgdr.ok(&["key", "rotate", "--json"]));
    assert_eq!(rotated["old_key_id"], old_id.as_str());
    let new_id = rotated["new_key_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    // The key file now holds the new key, as its owner had it; the old one is kept.
    let retired = retired_dir(&a.pgdr.key_file).join(format!("{old_id}.key"));
    let (key_meta, retired_meta) = (
        std::fs::metadata(&a.pgdr.key_file).unwrap(),
        std::fs::metadata(&retired).unwrap(),
    );
    assert_eq!(key_meta.mode() & 0o777, 0o600);
    assert_eq!(retired_meta.mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(retired.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(
        (retired_meta.uid(), retired_meta.gid()),
        (key_meta.uid(), key_meta.gid())
    );
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(repo.join("test/repo.json")).unwrap()).unwrap();
    assert_eq!(info["key_id"], new_id.as_str());
    assert_eq!(info["retired_keys"][0]["key_id"], old_id.as_str());

    // WAL archived from now on (archive_command reads the key file) and the next
    // backup use the new key.
    c.psql("postgres", "INSERT INTO markers VALUES ('new key WAL')");
    a.switch_and_wait();
    let second = json(&a.pgdr.ok(&["backup", "--kind", "physical", "--json"]));
    let second = second["label"].as_str().unwrap().to_string();
    c.psql("postgres", "INSERT INTO markers VALUES ('after second')");
    a.switch_and_wait();
    let objects = object_keys(&repo);
    let under = |id: &str| objects.iter().filter(|(_, k, _)| k == id).count();
    assert!(under(&old_id) > 0 && under(&new_id) > 0, "{objects:?}");
    assert!(objects.iter().filter(|(_, k, _)| k == &new_id).all(|(_, _, f)| *f == 3));
    let live = c.content_hashes("postgres");

    // The old backup, replayed through WAL under both keys, and the new one.
    for label in [&first, &second] {
        let r = a.pgdr.restore_started(&["--backup", label]);
        assert_eq!(
            r.psql("postgres", "SELECT string_agg(m, ',' ORDER BY m) FROM markers"),
            "after second,before,new key WAL,old key WAL"
        );
        assert_eq!(content_hashes_at(r.port, "postgres"), live, "restore of {label}");
    }

    // Without the retired key: the old backup is refused, naming the key it needs.
    let aside = a.pgdr.dir.join("retired-aside");
    std::fs::rename(retired_dir(&a.pgdr.key_file), &aside).unwrap();
    let target = a.pgdr.dir.join("refused");
    let out = a.pgdr.run(&[
        "restore",
        "--kind",
        "physical",
        "--backup",
        &first,
        "--to",
        target.to_str().unwrap(),
    ]);
    let line = assert_fails(&out, 2, &old_id);
    assert!(line.contains("retired"), "{line}");
    let check = a.pgdr.run(&["check"]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(&old_id),
        "check names the missing retired key"
    );
    let listed = json(&a.pgdr.ok(&["key", "list", "--json"]));
    assert_eq!(listed["keys"][1]["key_id"], old_id.as_str());
    assert_eq!(listed["keys"][1]["loaded"], false);
    std::fs::rename(&aside, retired_dir(&a.pgdr.key_file)).unwrap();

    // Rewrap: headers only (every object is format 3), manifests carry the new hashes.
    let before: Vec<(PathBuf, Vec<u8>)> = objects
        .iter()
        .filter(|(_, k, _)| k == &old_id)
        .map(|(p, _, _)| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    let report = json(&a.pgdr.ok(&["key", "rewrap", "--json"]));
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["reencrypted"], 0, "{report}");
    assert!(
        report["rewrapped"].as_u64().unwrap() >= before.len() as u64 - 1,
        "{report}"
    );
    assert!(report["manifests"].as_u64().unwrap() >= 1, "{report}");
    for (path, old) in &before {
        let new = std::fs::read(path).unwrap();
        if path.ends_with("manifest.json") {
            continue; // re-sealed whole, with the new stored hashes
        }
        assert_eq!(new.len(), old.len(), "{}", path.display());
        assert_eq!(&new[92..], &old[92..], "{}: the body was rewritten", path.display());
        assert_ne!(&new[..92], &old[..92]);
    }
    let objects = object_keys(&repo);
    assert!(
        objects.iter().all(|(_, k, _)| k == &new_id),
        "still under the old key: {objects:?}"
    );
    // A second run has nothing left to do.
    let again = json(&a.pgdr.ok(&["key", "rewrap", "--json"]));
    assert_eq!(
        (again["rewrapped"].as_u64(), again["manifests"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );

    // The retired key is no longer needed: remove it, verify and restore the old backup.
    std::fs::remove_dir_all(retired_dir(&a.pgdr.key_file)).unwrap();
    a.pgdr.ok(&["verify", "--backup", &first]);
    let r = a.pgdr.restore_started(&["--backup", &first]);
    assert_eq!(content_hashes_at(r.port, "postgres"), live);
}

/// A rotation killed after repo.json names the new key, before the key file is
/// replaced: pgdr refuses the retired key with a clear line, and the next `key rotate`
/// finishes the job. A rewrap killed before a manifest is rewritten: the next run
/// finishes that backup. Every backup restores with the same content.
#[test]
fn killed_rotation_and_rewrap_are_finished_by_the_next_run() {
    let source = Cluster::start();
    load_sample(&source, "shop");
    let pgdr = Pgdr::new(&source, RepoKind::Local);
    let repo = pgdr.repo_dir.clone().unwrap();
    let first = json(&pgdr.ok(&["backup", "--database", "shop", "--json"]));
    let first = first["label"].as_str().unwrap().to_string();
    let old_key = std::fs::read_to_string(&pgdr.key_file).unwrap();

    let mut killed = pgdr.command(&["key", "rotate"]);
    killed.env("PGDR_TEST_CRASH_AT", "rotate-before-rename");
    let out = killed.output().unwrap();
    assert!(
        out.status.code().is_none(),
        "not killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&pgdr.key_file).unwrap(),
        old_key,
        "key file replaced too early"
    );
    let line = assert_fails(
        &pgdr.run(&["backup", "--database", "shop"]),
        2,
        "retired by `pgdr key rotate`",
    );
    assert!(line.contains("install that key"), "{line}");

    let finished = json(&pgdr.ok(&["key", "rotate", "--json"]));
    assert_eq!(finished["resumed"], true);
    let new_id = finished["new_key_id"].as_str().unwrap().to_string();
    assert!(!PathBuf::from(format!("{}.new", pgdr.key_file.display())).exists());
    let second = json(&pgdr.ok(&["backup", "--database", "shop", "--json"]));
    let second = second["label"].as_str().unwrap().to_string();

    let mut killed = pgdr.command(&["key", "rewrap"]);
    killed.env("PGDR_TEST_CRASH_AT", "rewrap-before-manifest");
    let out = killed.output().unwrap();
    assert!(
        out.status.code().is_none(),
        "not killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&pgdr.ok(&["key", "rewrap", "--json"]));
    assert_eq!(report["failed"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["manifests"], 1, "{report}");
    assert!(object_keys(&repo).iter().all(|(_, k, _)| k == &new_id));
    std::fs::remove_dir_all(retired_dir(&pgdr.key_file)).unwrap();

    let want = source.content_hashes("shop");
    for (label, name) in [(&first, "shop_first"), (&second, "shop_second")] {
        pgdr.ok(&[
            "restore",
            "--backup",
            label,
            "--database",
            "shop",
            "--to-database",
            name,
        ]);
        assert_eq!(source.content_hashes(name), want, "restore of {label}");
    }
}

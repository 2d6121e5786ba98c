//! S3 Object Lock (issue 14): `pgdr init --object-lock DAYS` turns on versioning and a
//! default retention; `expire` then only hides removed objects (delete markers) and
//! removes their versions for good once the retention has ended. A stolen credential
//! cannot destroy a version inside the window; what it deletes comes back by removing
//! its delete marker, and `expire` names such deletions instead of purging them.
//!
//! The "stolen credential" and the passing of time are played by boto3 (installed with
//! moto) against the same moto server.

mod common;

use std::process::Command;

use common::*;

/// Run a boto3 snippet against the test's S3 server; `s3` and `bucket` are defined.
fn boto(bucket: &str, code: &str) -> String {
    let script = [
        "import boto3, datetime".to_string(),
        format!(
            "s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='{TEST_AWS_KEY}', aws_secret_access_key='{TEST_AWS_SECRET}')",
            s3().endpoint()
        ),
        format!("bucket = '{bucket}'"),
        "def versions(prefix=''):".to_string(),
        "    out = s3.list_object_versions(Bucket=bucket, Prefix=prefix)".to_string(),
        "    return out.get('Versions', []), out.get('DeleteMarkers', [])".to_string(),
        code.to_string(),
    ]
    .join("\n");
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with boto3 (installed with moto) is needed");
    assert!(
        out.status.success(),
        "boto3 script failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn object_lock_keeps_what_a_stolen_credential_deletes_and_expire_purges_after_the_lock() {
    let cluster = Cluster::start();
    load_sample(&cluster, "shop");
    let bucket = s3().bucket();
    let dir = TestDir::new();
    let key_file = dir.join("repo.key");
    let config = dir.join("pgdr.toml");
    std::fs::write(
        &config,
        format!(
            "cluster = \"test\"\n\n[postgres]\nurl = \"{}\"\nbin_dir = \"{}\"\n\n[repository]\nurl = \"s3://{bucket}/backups\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\nkey_file = \"{}\"\n\n[retention]\nlogical_count = 1\n",
            cluster.url("postgres"),
            pg_bin().display(),
            s3().endpoint(),
            key_file.display()
        ),
    )
    .unwrap();
    let pgdr = Pgdr {
        dir,
        config,
        key_file: key_file.clone(),
        repo_dir: None,
        extra_env: Vec::new(),
        as_postgres: false,
        aws_env: true,
    };
    let init = json(&pgdr.ok(&[
        "init",
        "--generate-key",
        key_file.to_str().unwrap(),
        "--object-lock",
        "1",
        "--object-lock-mode",
        "governance",
        "--json",
    ]));
    assert_eq!(init["object_lock"]["days"], 1, "{init}");
    assert_eq!(init["object_lock"]["mode"], "governance", "{init}");
    // The same lock again is fine; weakening a lock is not pgdr's to do.
    pgdr.ok(&["init", "--object-lock", "1", "--object-lock-mode", "governance"]);

    let mut labels = Vec::new();
    for _ in 0..3 {
        let out = json(&pgdr.ok(&["backup", "--database", "shop", "--json"]));
        labels.push(out["label"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let kept = labels[2].clone();

    // expire hides the two old backups; every version stays (1 day of retention).
    let report = json(&pgdr.ok(&["expire", "--json"]));
    let v = &report["versions"];
    assert_eq!(v["removed"], 0, "{report}");
    assert!(v["locked"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(v["deleted_outside_pgdr"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(pgdr.list_json().len(), 1);
    let old_prefix = format!("backups/test/backups/{}/", labels[0]);
    let counts = boto(
        &bucket,
        &format!("v, m = versions('{old_prefix}'); print(len(v), len(m))"),
    );
    let (data, markers) = counts.split_once(' ').unwrap();
    assert!(
        data.parse::<u32>().unwrap() >= 2 && markers.parse::<u32>().unwrap() >= 2,
        "{counts}"
    );

    // A stolen credential: deleting a version of the kept backup is refused; deleting
    // its manifest only hides it behind a marker.
    let manifest = format!("backups/test/backups/{kept}/manifest.json");
    let refused = boto(
        &bucket,
        &format!(
            "v, _ = versions('{manifest}')\ntry:\n    s3.delete_object(Bucket=bucket, Key='{manifest}', VersionId=v[0]['VersionId'])\n    print('deleted')\nexcept Exception as e:\n    print('refused', e)"
        ),
    );
    assert!(refused.starts_with("refused"), "{refused}");
    boto(&bucket, &format!("s3.delete_object(Bucket=bucket, Key='{manifest}')"));
    assert_eq!(pgdr.list_json().len(), 0, "the hidden backup is not listed");
    let report = json(&pgdr.ok(&["expire", "--json"]));
    let outside: Vec<String> = report["versions"]["deleted_outside_pgdr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(outside, vec![format!("backups/{kept}/manifest.json")], "{report}");
    let text = pgdr.ok(&["expire"]);
    assert!(text.contains("deleted by something other than pgdr"), "{text}");

    // The DBA brings it back by removing the delete marker; it restores whole.
    boto(
        &bucket,
        &format!(
            "_, m = versions('{manifest}')\n[s3.delete_object(Bucket=bucket, Key='{manifest}', VersionId=x['VersionId']) for x in m]"
        ),
    );
    assert_eq!(pgdr.list_json()[0]["label"], kept.as_str());
    pgdr.ok(&["restore", "--database", "shop", "--to-database", "shop_back"]);
    assert_eq!(cluster.content_hashes("shop_back"), cluster.content_hashes("shop"));

    // Time passes: every retention ends (shortened with the governance bypass, as an
    // administrator could). expire now removes the versions of what it removed —
    // and nothing of the kept backup.
    boto(
        &bucket,
        "until = (datetime.datetime.utcnow() + datetime.timedelta(seconds=2)).replace(microsecond=0)\nv, _ = versions()\n[s3.put_object_retention(Bucket=bucket, Key=x['Key'], VersionId=x['VersionId'], BypassGovernanceRetention=True, Retention={'Mode': 'GOVERNANCE', 'RetainUntilDate': until}) for x in v]",
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let report = json(&pgdr.ok(&["expire", "--json"]));
    let v = &report["versions"];
    assert!(v["removed"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(v["locked"], 0, "{report}");
    for old in &labels[..2] {
        let left = boto(
            &bucket,
            &format!("v, m = versions('backups/test/backups/{old}/'); print(len(v) + len(m))"),
        );
        assert_eq!(left, "0", "versions of expired backup {old} remain");
    }
    let kept_left = boto(
        &bucket,
        &format!("v, m = versions('backups/test/backups/{kept}/'); print(len(v), len(m))"),
    );
    assert!(kept_left.ends_with(" 0") && !kept_left.starts_with("0 "), "{kept_left}");
    pgdr.ok(&["restore", "--database", "shop", "--to-database", "shop_after"]);
    assert_eq!(cluster.content_hashes("shop_after"), cluster.content_hashes("shop"));

    // A local repository cannot lock its files: a clear refusal.
    let local = Pgdr::new(&cluster, RepoKind::Local);
    assert_fails(&local.run(&["init", "--object-lock", "7"]), 2, "needs an S3 repository");
}

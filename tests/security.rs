//! Claims of docs/SECURITY.md, tested: no secret in any process's command line or in
//! pgdr's output at any log level while it backs up and restores; a key file others
//! can read draws a warning.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Every command line seen on the machine while `work` runs (polled every 2 ms).
fn command_lines_during(work: impl FnOnce()) -> BTreeSet<String> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(procs) = std::fs::read_dir("/proc") {
                    for p in procs.flatten() {
                        if let Ok(raw) = std::fs::read(p.path().join("cmdline"))
                            && !raw.is_empty()
                        {
                            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                            seen.lock().unwrap().insert(line);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    work();
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

#[test]
fn no_secret_in_any_command_line_or_log() {
    let a = Archiving::start_with(RepoKind::S3);
    let c = &a.cluster;
    c.pgbench_init("postgres", 2);
    let key = std::fs::read_to_string(&a.pgdr.key_file).unwrap().trim().to_string();
    let password = format!("pw-{:016x}", rand::random::<u64>());
    let webhook = format!("http://127.0.0.1:9/hook-{:016x}", rand::random::<u64>());
    let mut outputs = Vec::new();
    let lines = command_lines_during(|| {
        for args in [
            vec!["backup", "--kind", "logical"],
            vec!["backup", "--kind", "physical"],
            vec!["verify", "--kind", "logical"],
        ] {
            let out = a
                .pgdr
                .command(&args)
                .env("PGPASSWORD", &password)
                .env("PGDR_NOTIFY_WEBHOOK_URL", &webhook)
                .env("PGDR_LOG", "debug")
                .output()
                .unwrap();
            assert_success(&out, &args.join(" "));
            outputs.push(out);
        }
        let restored = a.pgdr.restore_started(&[]);
        restored.stop();
    });
    assert!(
        lines.iter().any(|l| l.contains("pg_dump")) && lines.iter().any(|l| l.contains("wal-fetch")),
        "the watcher saw pgdr's children ({} lines)",
        lines.len()
    );
    for secret in [key.as_str(), password.as_str(), TEST_AWS_SECRET, webhook.as_str()] {
        for l in &lines {
            assert!(!l.contains(secret), "a secret in a command line: {l}");
        }
        for out in &outputs {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!text.contains(secret), "a secret in pgdr's output at debug level");
        }
    }
    // Nor in the server's configuration that restore wrote, nor in its log.
    let config = std::fs::read_to_string(a.cluster.data.join("postgresql.auto.conf")).unwrap_or_default();
    for secret in [key.as_str(), password.as_str(), TEST_AWS_SECRET] {
        assert!(!config.contains(secret));
    }
}

#[test]
fn a_key_file_others_can_read_draws_a_warning() {
    let c = Cluster::start();
    let pgdr = Pgdr::new(&c, RepoKind::Local);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgdr.key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let quiet = pgdr.run(&["list"]);
    assert_success(&quiet, "list");
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("can be read by others"));
    std::fs::set_permissions(&pgdr.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = pgdr.run(&["list"]);
    assert_success(&out, "list");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can be read by others (mode 644)") && err.contains("chmod 600"),
        "{err}"
    );
}

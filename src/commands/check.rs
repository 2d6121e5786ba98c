//! `pgdr check`: the pre-flight checks of the user's plan, for pgdr's part — one line
//! per check, ✓ or ✗ (⚠ for things to look at that are not failures); exit 1 if any
//! check failed.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use serde_json::json;

use super::Ctx;
use crate::cli::CheckArgs;
use crate::config::RepoUrl;
use crate::exit::Exit;
use crate::postgres::{PgTarget, PgTools, server};
use crate::progress::human_bytes;
use crate::repo::{self, catalog, info, layout};
use crate::storage::{self, DynStorage, PutMode, local};

/// Below this, free space is reported as a failure.
const MIN_FREE: u64 = 1 << 30;
/// Orphans untouched for this long are stale, not a backup in progress.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Status, String, String)>,
}

impl Report {
    fn add(&mut self, status: Status, name: &str, detail: impl Into<String>) {
        self.lines.push((status, name.to_string(), detail.into()));
    }

    fn result<T>(&mut self, name: &str, r: Result<T>, ok: impl FnOnce(&T) -> String) -> Option<T> {
        match r {
            Ok(v) => {
                self.add(Status::Ok, name, ok(&v));
                Some(v)
            }
            Err(e) => {
                self.add(Status::Fail, name, format!("{e:#}"));
                None
            }
        }
    }
}

pub async fn run(ctx: &Ctx, args: CheckArgs) -> Result<Exit> {
    let config = &ctx.config;
    let mut report = Report { lines: Vec::new() };
    report.add(Status::Ok, "configuration", format!("loaded from {}", config.source));

    // PostgreSQL and its tools.
    let target = PgTarget::from_config(config.postgres.url.as_deref());
    let server_info = match target {
        Ok(target) => {
            let connected = async {
                let client = target.connect(None).await?;
                server::server_info(&client).await
            }
            .await;
            report.result("postgres", connected, |s| {
                format!("PostgreSQL {} reachable at {}", s.version, target.describe())
            })
        }
        Err(e) => {
            report.add(Status::Fail, "postgres", format!("{e:#}"));
            None
        }
    };
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref()).and_then(|t| Ok((t.major_version()?, t)));
    if let Some((major, _)) = report.result("tools", tools, |(m, _)| format!("pg_dump {m}"))
        && let Some(s) = &server_info
    {
        {
            if major == s.major() {
                report.add(
                    Status::Ok,
                    "versions",
                    format!("server and client tools are both PostgreSQL {major}"),
                );
            } else if major > s.major() {
                report.add(
                    Status::Warn,
                    "versions",
                    format!(
                        "client tools {major} are newer than server {}; dumps work, but prefer matching versions",
                        s.major()
                    ),
                );
            } else {
                report.add(
                    Status::Fail,
                    "versions",
                    format!(
                        "client tools {major} are older than server {} — set [postgres] bin_dir to version {} tools",
                        s.major(),
                        s.major()
                    ),
                );
            }
        }
    }

    // Repository: reachable, ours, writable; key.
    let storage = storage::open(&config.repository, &config.cluster).await;
    let storage: Option<DynStorage> = report.result("repository", storage, |s| format!("{} opened", s.describe()));
    if let Some(storage) = &storage {
        let found = info::read(storage).await;
        match found {
            Ok(Some(info)) => {
                report.add(
                    Status::Ok,
                    "repository",
                    format!(
                        "repo.json found (cluster {:?}, PostgreSQL {})",
                        info.cluster, info.pg_major
                    ),
                );
                if let Some(s) = &server_info {
                    if s.system_identifier == info.system_identifier {
                        report.add(
                            Status::Ok,
                            "identity",
                            format!("repository belongs to this cluster ({})", info.system_identifier),
                        );
                    } else {
                        report.add(
                            Status::Fail,
                            "identity",
                            format!(
                                "repository belongs to system identifier {}, the server is {} — wrong repository or cluster name",
                                info.system_identifier, s.system_identifier
                            ),
                        );
                    }
                }
                match repo::load_keyring(config) {
                    Ok(keys) => {
                        if keys.primary().id().to_hex() == info.key_id {
                            report.add(
                                Status::Ok,
                                "key",
                                format!("repository key present and matching (id {})", info.key_id),
                            );
                        } else {
                            report.add(
                                Status::Fail,
                                "key",
                                format!(
                                    "the configured key (id {}) is not this repository's key (id {}) — check key_file / PGDR_KEY",
                                    keys.primary().id().to_hex(),
                                    info.key_id
                                ),
                            );
                        }
                    }
                    Err(e) => report.add(Status::Fail, "key", format!("{e:#}")),
                }
            }
            Ok(None) => report.add(Status::Fail, "repository", "no repo.json — run `pgdr init`"),
            Err(e) => report.add(Status::Fail, "repository", format!("{e:#}")),
        }
        let probe = layout::write_probe();
        let written = async {
            storage
                .put(&probe, Bytes::from_static(b"pgdr write probe"), PutMode::CreateNew)
                .await?;
            storage.delete(std::slice::from_ref(&probe)).await?;
            anyhow::Ok(())
        }
        .await;
        report.result("writable", written, |_| {
            "repository accepts writes and deletes".to_string()
        });
    }

    disk_checks(config, &mut report);
    if let Some(storage) = &storage {
        orphan_checks(config, storage, args.clean_orphans, &mut report).await;
    }

    if server_info.is_some() {
        wal_checks(config, &mut report).await;
    }

    let failed = report.lines.iter().any(|(s, _, _)| *s == Status::Fail);
    if ctx.json {
        let checks: Vec<_> = report
            .lines
            .iter()
            .map(|(s, name, detail)| {
                json!({
                    "check": name,
                    "status": match s { Status::Ok => "ok", Status::Warn => "warning", Status::Fail => "failed" },
                    "detail": detail,
                })
            })
            .collect();
        ctx.print_json(&json!({"ok": !failed, "checks": checks}));
    } else {
        for (status, name, detail) in &report.lines {
            let mark = match status {
                Status::Ok => "✓",
                Status::Warn => "⚠",
                Status::Fail => "✗",
            };
            println!("{mark} {name}: {detail}");
        }
    }
    Ok(if failed { Exit::Failure } else { Exit::Success })
}

/// Disk space where pgdr writes locally.
fn disk_checks(config: &crate::config::Config, report: &mut Report) {
    let mut places = vec![("temp", std::env::temp_dir())];
    if let Ok(RepoUrl::Local(path)) = config.repository.parsed_url() {
        places.push(("repository disk", path));
    }
    for (name, path) in places {
        match crate::disk::free_bytes(&path) {
            Some(free) if free >= MIN_FREE => report.add(
                Status::Ok,
                name,
                format!("{} free at {}", human_bytes(free), path.display()),
            ),
            Some(free) => report.add(
                Status::Fail,
                name,
                format!(
                    "only {} free at {} (want at least {})",
                    human_bytes(free),
                    path.display(),
                    human_bytes(MIN_FREE)
                ),
            ),
            None => report.add(
                Status::Fail,
                name,
                format!("cannot read free space at {}", path.display()),
            ),
        }
    }
}

/// Orphans: objects of backups that never got a manifest; removed with
/// `--clean-orphans`, only under the backup lock.
async fn orphan_checks(config: &crate::config::Config, storage: &DynStorage, clean: bool, report: &mut Report) {
    match catalog::scan(storage).await {
        Ok(scan) => {
            // A backup in progress has no manifest yet: only the backup lock tells
            // a running backup from a dead one (an age would not: a dump may run
            // for hours).
            let lock = if clean && !scan.orphans.is_empty() {
                match crate::repo::Repo::open(config).await {
                    Ok(repo) => Some(crate::repo::lock::BackupLock::acquire(&repo, Duration::ZERO).await),
                    Err(e) => Some(Err(e)),
                }
            } else {
                None
            };
            let locked = matches!(lock, Some(Ok(Ok(_))));
            if scan.orphans.is_empty() {
                report.add(
                    Status::Ok,
                    "orphans",
                    format!("{} complete backup(s), no orphans", scan.complete.len()),
                );
            } else if clean && !locked {
                let why = match &lock {
                    Some(Ok(Err(holder))) => format!("a backup is running ({holder}) and holds the backup lock"),
                    Some(Err(e)) => format!("the backup lock cannot be taken: {e:#}"),
                    _ => "the backup lock is held".to_string(),
                };
                report.add(
                    Status::Warn,
                    "orphans",
                    format!(
                        "{} backup(s) without a manifest left alone: {why} — run --clean-orphans again when no backup runs",
                        scan.orphans.len()
                    ),
                );
            } else if clean {
                // No backup runs (this process holds the lock): every orphan is dead.
                // Listed again under the lock: one that committed since the first
                // listing is complete now, not an orphan.
                let removed = async {
                    let now = catalog::scan(storage).await?;
                    let keys: Vec<_> = now.orphans.iter().flat_map(|o| o.objects.iter().cloned()).collect();
                    storage.delete(&keys).await?;
                    // A killed backup's half-written object is a temporary file,
                    // invisible to listings; with no backup running it is dead too.
                    if let Ok(RepoUrl::Local(path)) = config.repository.parsed_url() {
                        let backups = path.join(&config.cluster).join(crate::repo::layout::BACKUPS);
                        for temp in local::stale_temp_files(&backups) {
                            let _ = std::fs::remove_file(temp);
                        }
                    }
                    anyhow::Ok(now.orphans.len())
                }
                .await;
                match removed {
                    Ok(n) => report.add(Status::Ok, "orphans", format!("removed {n} orphaned backup(s)")),
                    Err(e) => report.add(Status::Fail, "orphans", format!("removing orphans: {e:#}")),
                }
            } else {
                let names: Vec<String> = scan
                    .orphans
                    .iter()
                    .map(|o| format!("{} ({})", o.label, human_bytes(o.bytes)))
                    .collect();
                report.add(
                    Status::Warn,
                    "orphans",
                    format!(
                        "{} backup(s) without a manifest (failed or running): {} — remove stale ones with `pgdr check --clean-orphans`",
                        names.len(),
                        names.join(", ")
                    ),
                );
            }
            if let Some(Ok(Ok(lock))) = lock {
                lock.release().await;
            }
        }
        Err(e) => report.add(Status::Fail, "orphans", format!("{e:#}")),
    }
    if let Ok(RepoUrl::Local(path)) = config.repository.parsed_url() {
        let temps = local::stale_temp_files(&path.join(&config.cluster));
        if !temps.is_empty() {
            report.add(
                Status::Warn,
                "temp files",
                format!(
                    "{} leftover temporary file(s) from interrupted writes, e.g. {}",
                    temps.len(),
                    temps[0].display()
                ),
            );
        }
    }
}

/// Archiving configured, a segment round trip, and WAL continuity from the oldest
/// physical backup to now.
async fn wal_checks(config: &crate::config::Config, report: &mut Report) {
    let Ok(target) = PgTarget::from_config(config.postgres.url.as_deref()) else {
        return;
    };
    let Ok(client) = target.connect(None).await else { return };
    let mode = server::setting(&client, "archive_mode").await.unwrap_or_default();
    let command = server::setting(&client, "archive_command").await.unwrap_or_default();
    if mode == "off" || command.trim().is_empty() {
        report.add(
            Status::Warn,
            "archiving",
            format!("WAL archiving is off (archive_mode = {mode}): only logical backups are possible; for point-in-time recovery set archive_mode = on and archive_command = 'pgdr wal-push %p'"),
        );
        return;
    }
    if command.contains("wal-push") {
        report.add(
            Status::Ok,
            "archiving",
            format!("archive_mode = {mode}, archive_command = {command}"),
        );
    } else {
        report.add(
            Status::Fail,
            "archiving",
            format!("archive_command = {command:?} does not call `pgdr wal-push %p`"),
        );
    }
    let Ok(repo) = crate::repo::Repo::open(config).await else {
        return;
    };

    // Round trip: write a record, switch, wait for that segment in the archive.
    let round_trip = async {
        let row = client
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_insert_lsn()) FROM (SELECT pg_logical_emit_message(false, 'pgdr', 'check')) m",
                &[],
            )
            .await?;
        let seg: String = row.get(0);
        client.query_one("SELECT pg_switch_wal()", &[]).await?;
        let file = crate::postgres::WalFile::Segment(seg.clone());
        let key = layout::wal_file(&file);
        let deadline = std::time::Instant::now() + Duration::from_secs(config.wal.archive_timeout.min(60));
        while repo.storage.head(&key).await?.is_none() {
            if std::time::Instant::now() > deadline {
                return Err(anyhow::anyhow!("segment {seg} did not reach the archive in time — archiving is broken; see the server log"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(seg)
    }
    .await;
    report.result("archive round trip", round_trip, |seg| {
        format!("segment {seg} reached the archive")
    });

    // Continuity from the oldest physical backup, along the timeline a recovery
    // would follow.
    let chain = async {
        let manifests = repo.manifests().await?;
        let Some(oldest) = manifests.iter().rev().find_map(|m| m.physical.as_ref().map(|p| (m, p))) else {
            return anyhow::Ok(None);
        };
        let listing = crate::repo::archive::list(&repo.storage).await?;
        let (m, info) = oldest;
        let choice = crate::physical::timeline_choice(&repo, &listing, info).await?;
        let path = listing.path_to(&repo.storage, &repo.keys, choice.followed).await?;
        let start = crate::postgres::Segment::parse(&info.wal_start, info.segment_size)
            .ok_or_else(|| anyhow::anyhow!("malformed wal_start in {}", m.label))?;
        let ranges = listing.required_ranges(start, &path, info.segment_size, crate::repo::archive::Until::Newest)?;
        let gaps: Vec<String> = listing
            .gap_runs(&ranges, info.segment_size, 10)
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.name(info.segment_size)
                } else {
                    format!("{}..{}", a.name(info.segment_size), b.name(info.segment_size))
                }
            })
            .collect();
        let switches: Vec<String> = path
            .windows(2)
            .filter_map(|w| w[0].end.map(|e| format!("{}→{} at {e}", w[0].tli, w[1].tli)))
            .collect();
        Ok(Some((
            m.label.clone(),
            crate::repo::archive::ArchiveListing::count(&ranges),
            gaps,
            switches,
            choice,
        )))
    }
    .await;
    if let Ok(Some((.., choice))) = &chain {
        report.add(
            if choice.forks.is_empty() {
                Status::Ok
            } else {
                Status::Warn
            },
            "timelines",
            format!(
                "seen {}; recovery follows {}{}",
                choice.seen.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
                choice.why,
                choice
                    .forks
                    .iter()
                    .map(|f| format!("; not following {f}"))
                    .collect::<String>()
            ),
        );
    }
    match chain {
        Ok(None) => report.add(Status::Ok, "wal chain", "no physical backup yet"),
        Ok(Some((label, count, gaps, switches, _))) if gaps.is_empty() => report.add(
            Status::Ok,
            "wal chain",
            format!(
                "{count} segments from {label} to now, no gaps{}",
                if switches.is_empty() {
                    String::new()
                } else {
                    format!("; timeline switches: {}", switches.join(", "))
                }
            ),
        ),
        Ok(Some((label, _, gaps, _, _))) => report.add(
            Status::Fail,
            "wal chain",
            format!(
                "missing segment(s) after {label}: {} — recovery past them is impossible; take a new physical backup",
                gaps.join(", ")
            ),
        ),
        Err(e) => report.add(Status::Fail, "wal chain", format!("{e:#}")),
    }
}

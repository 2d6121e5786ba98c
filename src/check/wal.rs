//! WAL archiving: configured to call `pgdr wal-push`, a segment's round trip into the
//! archive, the timelines a recovery would follow, and continuity from the oldest
//! physical backup to now.

use std::time::Duration;

use super::{CheckReport, Status};
use crate::config::Config;
use crate::postgres::{PgTarget, server};
use crate::repo::layout;

/// Archiving configured, a segment round trip, and WAL continuity from the oldest
/// physical backup to now.
pub(super) async fn checks(config: &Config, report: &mut CheckReport) {
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

//! The incremental half of a physical backup: choose the parent, read the WAL archived
//! since the parent started for the blocks it names, and plan what to copy and what
//! to refer to (`physical::incremental` decides; this module gathers its inputs).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::BackupType;
use crate::config::Config;
use crate::physical::incremental::{self, Changes, Geometry};
use crate::postgres::datadir::Listing;
use crate::postgres::{Lsn, PgTools, Segment, ServerInfo, TimelineId};
use crate::repo::manifest::{Incremental, PhysicalMethod};
use crate::repo::{Manifest, Repo};
use crate::usage;

/// The backup an incremental (`incr`: the newest physical one; `diff`: the newest
/// full one) is taken against. Only pgdr's own copies qualify (a pg_basebackup tar
/// cannot be referred to block by block), of this cluster and this major version.
/// `None`: there is none, and the backup is taken full (as pgBackRest does), saying so.
pub async fn choose_parent(repo: &Repo, server: &ServerInfo, backup_type: BackupType) -> Result<Option<Manifest>> {
    let manifests = repo.manifests().await?;
    let parent = manifests.into_iter().find(|m| {
        let Some(info) = &m.physical else { return false };
        info.method == PhysicalMethod::Local
            && m.system_identifier == server.system_identifier
            && (backup_type == BackupType::Incr || info.incremental.is_none())
    });
    let Some(parent) = parent else {
        let (flag, wanted) = match backup_type {
            BackupType::Incr => ("incr", "physical"),
            _ => ("diff", "full physical"),
        };
        tracing::warn!(
            "--type {flag}: the repository has no earlier {wanted} backup (--method local) of this cluster to start from — taking a full backup"
        );
        return Ok(None);
    };
    // The parent's records are read from the repository: checked as a restore checks
    // them before any of their offsets and ranges are used.
    if let Some(info) = &parent.physical {
        crate::physical::validate_paths(info).map_err(|e| {
            usage!(
                "the parent backup {} cannot be built on: {e:#} — take a full backup (--type full)",
                parent.label
            )
        })?;
    }
    if parent.pg_version_num / 10000 != server.version_num / 10000 {
        return Err(usage!(
            "the newest physical backup, {}, is of PostgreSQL {} and this server runs {} — an incremental cannot span a major upgrade: take a full backup (--type full)",
            parent.label,
            parent.pg_version,
            server.version
        ));
    }
    Ok(Some(parent))
}

/// Block size and blocks per relation segment file, as the server was built.
pub async fn geometry(client: &tokio_postgres::Client) -> Result<Geometry> {
    let row = client
        .query_one(
            "SELECT (SELECT setting FROM pg_settings WHERE name = 'block_size'),
                    (SELECT setting FROM pg_settings WHERE name = 'segment_size')",
            &[],
        )
        .await
        .context("reading block_size and segment_size")?;
    let block_size: u64 = row.get::<_, String>(0).parse().context("reading block_size")?;
    let blocks_per_segment: u64 = row.get::<_, String>(1).parse().context("reading segment_size")?;
    if block_size == 0 || blocks_per_segment == 0 {
        return Err(anyhow!("the server reports a block size of 0"));
    }
    Ok(Geometry {
        block_size,
        blocks_per_segment,
    })
}

/// Everything [`changes_since`] needs to know about this backup.
pub struct Window<'a> {
    pub parent: &'a Manifest,
    pub start_lsn: Lsn,
    pub timeline: TimelineId,
    pub segment_size: u64,
}

/// The blocks the WAL names from the parent's start to this backup's start. The WAL
/// up to here is switched out and waited for: every segment of the window must be in
/// the archive, and a missing one refuses the incremental (it would miss blocks).
pub async fn changes_since(
    config: &Config,
    repo: &Repo,
    client: &tokio_postgres::Client,
    window: &Window<'_>,
) -> Result<Changes> {
    let parent = window.parent;
    let info = parent.physical.as_ref().expect("a physical parent");
    if info.timeline != window.timeline {
        return Err(usage!(
            "the parent backup {} is on timeline {} and the server is now on timeline {} — an incremental cannot follow a promotion: take a full backup (--type full)",
            parent.label,
            info.timeline,
            window.timeline
        ));
    }
    let seg = window.segment_size;
    let first = Segment::containing(window.timeline, info.start_lsn, seg);
    // The segment holding this backup's start goes to the archive now. The window is
    // read to the end of the segment that holds the switch: a few records past this
    // backup's start add blocks it did not need, never miss one. (Stopping pg_waldump
    // exactly at the start LSN trips over the next record's header.)
    let switched: Lsn = client
        .query_one("SELECT pg_switch_wal()::text", &[])
        .await
        .context("switching WAL (pg_switch_wal) so the window's last segment is archived")?
        .get::<_, String>(0)
        .parse()
        .map_err(|e: String| anyhow!("pg_switch_wal returned {e}"))?;
    let last = Segment::containing(
        window.timeline,
        Lsn(switched.0.max(window.start_lsn.0).saturating_sub(1)),
        seg,
    );
    if last.number < first.number {
        return Err(anyhow!(
            "the WAL window of this incremental is empty ({} .. {}): nothing can say which blocks changed",
            info.start_lsn,
            window.start_lsn
        ));
    }
    crate::physical::wait_for_wal(
        repo,
        first,
        last,
        seg,
        Duration::from_secs(config.wal.archive_timeout),
    )
    .await
    .map_err(|e| {
        usage!(
            "an incremental reads the WAL from its parent {} on, and it is not all in the archive: {e:#} — take a full backup (--type full); pgdr check names the gap",
            parent.label
        )
    })?;
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("pgdr-incremental-")
        .tempdir()
        .context("making a private directory for WAL segments")?;
    let files = (first.number..=last.number)
        .map(|number| {
            let s = Segment {
                timeline: window.timeline,
                number,
            };
            (s.name(seg), number)
        })
        .collect();
    let plan = crate::walsearch::stream::Plan {
        files,
        timeline: window.timeline,
        start: info.start_lsn,
        segment_size: seg,
    };
    let reader = crate::walsearch::stream::Reader {
        storage: &repo.storage,
        keys: &repo.keys,
        pg_waldump: tools.path("pg_waldump")?,
        work: work.path(),
        rmgrs: &[],
    };
    let mut changes = Changes::default();
    reader
        .scan_lines(&plan, |_, line| changes.feed(line))
        .await
        .with_context(|| format!("reading the WAL since {} for changed blocks", parent.label))?;
    changes.settle();
    Ok(changes)
}

/// What the incremental stores, and the manifest section that says so.
pub fn plan(
    listing: &Listing,
    window: &Window<'_>,
    changes: &Changes,
    geometry: Geometry,
) -> (incremental::Plan, Incremental) {
    let parent = window.parent;
    let info = parent.physical.as_ref().expect("a physical parent");
    let plan = incremental::plan(listing, parent.label.as_str(), info, changes, geometry);
    let section = Incremental {
        parent: parent.label.to_string(),
        chain: plan.chain.clone(),
        wal_from: info.start_lsn,
        wal_to: window.start_lsn,
        changed_blocks: plan.changed_blocks,
        whole_files: plan.whole.clone(),
        referenced_bytes: plan.referenced_bytes,
    };
    if let Some(line) = &changes.unreadable {
        tracing::warn!(
            "a WAL record pgdr cannot read for changed blocks ({line}): every file of this incremental is stored whole"
        );
    }
    (plan, section)
}

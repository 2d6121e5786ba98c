//! A physical backup: pgdr's own parallel copy of the data directory between
//! `pg_backup_start` and `pg_backup_stop` (`--method local`), or pg_basebackup's tar
//! streamed into one object (`--method basebackup`); either way the backup waits for
//! its WAL to be archived before the manifest commits it.

use anyhow::{Context, Result};
use chrono::Utc;

use super::commit::{commit, discard, fresh_label, new_manifest};
use super::{BackupOptions, BackupType, PhysicalBackupReport, interruptible};
use crate::config::Config;
use crate::pipeline::ObjectRecord;
use crate::postgres::server::{self, BackupSession, BackupStop};
use crate::postgres::tools::ChildReader;
use crate::postgres::{Lsn, PgTarget, PgTools, ServerInfo};
use crate::progress::Progress;
use crate::repo::lock::BackupLock;
use crate::repo::manifest::{BASE_TAR, FileRecord, PhysicalInfo, PhysicalMethod};
use crate::repo::{BackupKind, BackupLabel, Manifest, Repo, layout};
use crate::storage::PutMode;
use crate::usage;

pub(super) async fn run(
    config: &Config,
    opts: &BackupOptions,
    repo: &Repo,
    lock: &BackupLock,
) -> Result<PhysicalBackupReport> {
    let target = PgTarget::from_config(config.postgres.url.as_deref())?;
    let client = target.connect(None).await?;
    let server = server::server_info(&client).await?;
    repo.check_system_identifier(&server.system_identifier)?;
    if server.major() < 15 {
        return Err(usage!(
            "physical backups need PostgreSQL 15 or newer (pg_backup_start); this server is {} — use --kind logical",
            server.version
        ));
    }
    let archive_mode = server::setting(&client, "archive_mode").await?;
    let archive_command = server::setting(&client, "archive_command").await?;
    if archive_mode == "off" || archive_command.trim().is_empty() || archive_command == "(disabled)" {
        return Err(usage!(
            "WAL archiving is off (archive_mode = {archive_mode}): a physical backup is useless without it — set archive_mode = on and archive_command = 'pgdr wal-push %p', then restart PostgreSQL"
        ));
    }
    let segment_size: u64 = server::setting(&client, "wal_segment_size")
        .await?
        .trim_end_matches("MB")
        .parse::<u64>()
        .map(|mb| mb << 20)
        .map_err(|_| anyhow::anyhow!("cannot read wal_segment_size"))?;
    if opts.method == PhysicalMethod::Basebackup {
        drop(client);
        return basebackup(config, opts, repo, &target, &server, segment_size, lock).await;
    }
    let standby = match opts.from_standby {
        true => Some(super::standby::check(config, &client, &server).await?),
        false => None,
    };
    let data_dir = match &standby {
        Some(standby) => standby.data_dir.clone(),
        None => primary_data_dir(config, &client, &server).await?,
    };

    let parent = match opts.backup_type {
        BackupType::Full => None,
        other => super::incremental::choose_parent(repo, &server, other).await?,
    };
    // An expire that runs meanwhile leaves the parent and its chain alone.
    let parent_lease = match &parent {
        Some(parent) => {
            let mut labels = vec![parent.label.clone()];
            for older in parent.physical.as_ref().map(|p| p.chain()).unwrap_or_default() {
                labels.push(older.parse().map_err(|e: String| anyhow::anyhow!(e))?);
            }
            Some(crate::repo::lock::UseLease::acquire(repo, &labels, "incremental backup").await?)
        }
        None => None,
    };
    let geometry = match parent {
        Some(_) => Some(super::incremental::geometry(&client).await?),
        None => None,
    };
    let jobs = opts.jobs;
    let label = fresh_label(repo, BackupKind::Physical, parent.is_some()).await?;
    let start_time = Utc::now();
    let xmin_before = xmin_now(&client).await;
    // From a standby, the standby runs the backup and the primary only switches WAL.
    let (session_client, primary, standby_timeline) = match standby {
        Some(standby) => {
            tracing::info!(
                "reading the files on the standby {} ({} KiB of WAL behind the primary)",
                standby.describe,
                standby.lag >> 10
            );
            (standby.client, Some(client), Some(standby.timeline))
        }
        None => (client, None, None),
    };
    let (session, start_lsn) = BackupSession::start(session_client, label.as_str(), !opts.spread_checkpoint).await?;
    let timeline = match standby_timeline {
        Some(tli) => tli,
        None => session.timeline().await?,
    };
    let databases = server::databases(session.client()).await?;
    let catalog = super::read_catalogs(&target, &databases, Some(timeline)).await;
    let listing = crate::physical::listing_for(&data_dir)?;
    let (to_copy, refs, incremental) = match (&parent, geometry) {
        (Some(parent), Some(geometry)) => {
            let start: Lsn = start_lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let window = super::incremental::Window {
                parent,
                start_lsn: start,
                timeline,
                segment_size,
            };
            let changes = interruptible(super::incremental::changes_since(
                config,
                repo,
                primary.as_ref().unwrap_or_else(|| session.client()),
                &window,
            ))
            .await;
            let changes = match changes {
                Ok(c) => c,
                Err(e) => return Err(abandon(repo, session, &label, e).await),
            };
            let (plan, section) = super::incremental::plan(&listing, &window, &changes, geometry);
            (plan.copy, plan.refs, Some(section))
        }
        _ => (listing.files.clone(), Vec::new(), None),
    };
    let total: u64 = to_copy.iter().map(|f| f.len.unwrap_or(f.size)).sum();
    let progress = Progress::start(Some(total));
    progress.set_message(format!("{label} ({jobs} workers)"));
    let copied = interruptible(crate::physical::copy_files(
        repo,
        &label,
        &to_copy,
        jobs,
        progress.counter(),
    ))
    .await;
    let outcome = match copied {
        Ok((mut files, objects)) => {
            files.extend(refs);
            files.sort_by(|a, b| a.path.cmp(&b.path).then(a.file_offset.cmp(&b.file_offset)));
            let parts = (files, objects);
            progress.set_message("waiting for WAL");
            finish_copy(
                repo,
                session,
                primary.as_ref(),
                parts,
                timeline,
                segment_size,
                config.wal.archive_timeout,
            )
            .await
            .with_context(|| format!("backup {label}"))
        }
        Err(e) => Err(e),
    };
    progress.finish();
    let (files, objects, stop, wal_start, wal_stop) = match outcome {
        Ok(parts) => parts,
        Err(e) => {
            return Err(discard(repo, &label, e).await);
        }
    };
    // The pages taken from the parent may hold changes up to its stop: a restore of
    // this backup is consistent only past both (a standby's backup can end behind a
    // parent taken on the primary).
    if let Some(parent_info) = parent.as_ref().and_then(|p| p.physical.as_ref()) {
        let stop_lsn: Lsn = stop.lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        if stop_lsn < parent_info.stop_lsn {
            let e = usage!(
                "this backup ends at {stop_lsn} in the WAL, before its parent ends ({}) — the standby is behind the parent: wait for it to replay past {}, or take a full backup (--type full)",
                parent_info.stop_lsn,
                parent_info.stop_lsn
            );
            return Err(discard(repo, &label, e).await);
        }
    }
    let info = PhysicalInfo {
        method: PhysicalMethod::Local,
        start_lsn: start_lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        stop_lsn: stop.lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        timeline,
        segment_size,
        wal_start,
        wal_stop,
        xmin_before,
        backup_label: stop.label_file,
        tablespace_map: stop.tablespace_map,
        dirs: listing.dirs.clone(),
        tablespaces: listing.tablespaces.clone(),
        files,
        incremental,
    };
    let format = match (crate::physical::digest::legacy_sha256(), info.incremental.is_some()) {
        // Pieces hashed with BLAKE3, and perhaps incremental.
        (false, _) => crate::repo::manifest::MANIFEST_FORMAT_BLAKE3,
        // Tests: what older builds wrote.
        (true, true) => crate::repo::manifest::MANIFEST_FORMAT_INCREMENTAL,
        (true, false) => crate::repo::manifest::MANIFEST_FORMAT,
    };
    let manifest = Manifest {
        format,
        databases: Vec::new(),
        globals: None,
        objects,
        physical: Some(info),
        catalog,
        ..new_manifest(repo, &label, BackupKind::Physical, &opts.tags, start_time, &server)
    };
    commit(repo, &manifest, opts.keep, lock).await?;
    if let Some(lease) = parent_lease {
        lease.release().await;
    }
    Ok(PhysicalBackupReport::of(&manifest))
}

/// The primary's data directory on this host, checked to be the connected server's.
async fn primary_data_dir(
    config: &Config,
    client: &tokio_postgres::Client,
    server: &ServerInfo,
) -> Result<std::path::PathBuf> {
    let data_dir = match &config.postgres.data_dir {
        Some(dir) => dir.clone(),
        None => server::setting(client, "data_directory").await?.into(),
    };
    let local = crate::postgres::datadir::control_system_identifier(&data_dir).map_err(|e| {
        use std::io::ErrorKind;
        // Not there or not ours: the setup. Anything else (no file descriptors, an I/O
        // error) is a failure of this run, with its own cause.
        if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) {
            usage!(
                "cannot read {}/global/pg_control ({e}) — physical backups run on the database host; set [postgres] data_dir",
                data_dir.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot read {}/global/pg_control", data_dir.display()))
        }
    })?;
    if local != server.system_identifier {
        return Err(usage!(
            "{} belongs to another cluster (system identifier {local}) than the server pgdr is connected to ({}) — check [postgres] data_dir and url",
            data_dir.display(),
            server.system_identifier
        ));
    }
    Ok(data_dir)
}

/// A backup that fails before its copy: the server's backup is stopped (best effort)
/// and what was stored of it removed.
async fn abandon(repo: &Repo, session: BackupSession, label: &BackupLabel, e: anyhow::Error) -> anyhow::Error {
    if let Err(stop) = session.stop().await {
        tracing::warn!("stopping the abandoned backup on the server: {stop:#}");
    }
    discard(repo, label, e).await
}

type CopyParts = (Vec<FileRecord>, Vec<ObjectRecord>, BackupStop, String, String);

/// `pg_backup_stop`, then wait until the WAL the backup needs is archived.
async fn finish_copy(
    repo: &Repo,
    session: BackupSession,
    primary: Option<&tokio_postgres::Client>,
    (files, objects): (Vec<FileRecord>, Vec<ObjectRecord>),
    timeline: u32,
    segment_size: u64,
    timeout: u64,
) -> Result<CopyParts> {
    let stop = session.stop().await?;
    if let Some(primary) = primary {
        // A standby's backup ends at a position the primary has passed: its segment
        // goes to the archive now rather than at archive_timeout.
        primary
            .query_one("SELECT pg_switch_wal()::text", &[])
            .await
            .context("switching WAL on the primary (pg_switch_wal) after the standby's backup")?;
    }
    let stop_lsn: Lsn = stop.lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let (wal_start, wal_stop) = crate::physical::wait_for_backup_wal(
        repo,
        &stop.label_file,
        stop_lsn,
        timeline,
        segment_size,
        std::time::Duration::from_secs(timeout),
    )
    .await?;
    Ok((files, objects, stop, wal_start, wal_stop))
}

/// `--method basebackup`: pg_basebackup streams the cluster as a tar into one object;
/// PostgreSQL's own backup_manifest (SHA-256 per file) rides along and becomes the file
/// list of pgdr's manifest.
async fn basebackup(
    config: &Config,
    opts: &BackupOptions,
    repo: &Repo,
    target: &PgTarget,
    server: &ServerInfo,
    segment_size: u64,
    lock: &BackupLock,
) -> Result<PhysicalBackupReport> {
    use crate::physical::basebackup::{PgManifest, TarObserver};
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let label = fresh_label(repo, BackupKind::Physical, false).await?;
    let start_time = Utc::now();
    let xmin_before = match target.connect(None).await {
        Ok(client) => xmin_now(&client).await,
        Err(_) => None,
    };
    let mut cmd = tools.command("pg_basebackup", target, None)?;
    cmd.args([
        "-D",
        "-",
        "-Ft",
        "-X",
        "none",
        "--no-password",
        "--manifest-checksums=SHA256",
    ])
    .arg(format!(
        "--checkpoint={}",
        if opts.spread_checkpoint { "spread" } else { "fast" }
    ))
    .arg(format!("--label={label}"));
    let reader = ChildReader::spawn("pg_basebackup", cmd)?;
    let (observer, captured) = TarObserver::new(reader);
    let progress = Progress::start(None);
    progress.set_message(format!("{label} (pg_basebackup)"));
    let key = layout::backup_object(&label, BASE_TAR)?;
    let store = crate::pipeline::Store {
        digests: crate::pipeline::Digests::StoredOnly,
        ..repo.store()
    };
    let stored =
        interruptible(store.reader(&key, BASE_TAR, observer, PutMode::CreateNew, Some(progress.counter()))).await;
    progress.finish();
    let record = match stored {
        Ok(r) => r,
        Err(e) => return Err(discard(repo, &label, e.context("pg_basebackup")).await),
    };
    let captured = captured.lock().expect("capture lock").clone();
    let parts = async {
        let label_file = captured
            .backup_label
            .ok_or_else(|| anyhow::anyhow!("pg_basebackup sent no backup_label"))?;
        let manifest_text = captured
            .backup_manifest
            .ok_or_else(|| anyhow::anyhow!("pg_basebackup sent no backup_manifest"))?;
        let pg: PgManifest = serde_json::from_str(&manifest_text).context("reading PostgreSQL's backup_manifest")?;
        let range = pg
            .wal_ranges
            .last()
            .ok_or_else(|| anyhow::anyhow!("backup_manifest has no WAL range"))?;
        let start_lsn: Lsn = range.start_lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let stop_lsn: Lsn = range.end_lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let (wal_start, wal_stop) = crate::physical::wait_for_backup_wal(
            repo,
            &label_file,
            stop_lsn,
            range.timeline,
            segment_size,
            std::time::Duration::from_secs(config.wal.archive_timeout),
        )
        .await?;
        let files = pg
            .files
            .iter()
            .map(|f| FileRecord {
                path: f.path.clone(),
                size: f.size,
                sha256: f.checksum.clone(),
                blake3: None,
                mode: 0o600,
                bundle: BASE_TAR.to_string(),
                offset: 0,
                file_offset: 0,
                backup: None,
                ranges: None,
                extents: None,
            })
            .collect();
        anyhow::Ok(PhysicalInfo {
            method: PhysicalMethod::Basebackup,
            start_lsn,
            stop_lsn,
            timeline: range.timeline,
            segment_size,
            wal_start,
            wal_stop,
            backup_label: label_file,
            tablespace_map: None,
            dirs: Vec::new(),
            tablespaces: Vec::new(),
            files,
            xmin_before,
            incremental: None,
        })
    }
    .await;
    let info = match parts {
        Ok(info) => info,
        Err(e) => return Err(discard(repo, &label, e).await),
    };
    // Read after the copy: the backup's WAL from its start is searched with a
    // catalog at least that new (see postgres/catalog.rs).
    let databases = match target.connect(None).await {
        Ok(client) => server::databases(&client).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let catalog = super::read_catalogs(target, &databases, Some(info.timeline)).await;
    let manifest = Manifest {
        databases: Vec::new(),
        globals: None,
        objects: vec![record.clone()],
        physical: Some(info),
        catalog,
        ..new_manifest(repo, &label, BackupKind::Physical, &opts.tags, start_time, server)
    };
    commit(repo, &manifest, opts.keep, lock).await?;
    Ok(PhysicalBackupReport::of(&manifest))
}

/// The oldest running transaction now (64-bit), read before the backup starts: every
/// older one has ended, its commit before the backup's first WAL.
async fn xmin_now(client: &tokio_postgres::Client) -> Option<u64> {
    let row = client
        .query_one("SELECT txid_snapshot_xmin(txid_current_snapshot())::text", &[])
        .await
        .ok()?;
    row.get::<_, String>(0).parse().ok()
}

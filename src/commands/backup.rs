//! `pgdr backup --kind logical`: `pg_dumpall --globals-only`, then one `pg_dump -Fc`
//! per database, each streamed straight through the pipeline into the repository,
//! with exact row counts taken in the dump's own snapshot; the manifest goes last.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use serde_json::json;

use super::Ctx;
use crate::backup::report::PhysicalBackupReport;
use crate::cli::BackupArgs;
use crate::exit::Exit;
use crate::pipeline::ObjectRecord;
use crate::postgres::server::{self, BackupSession, BackupStop, ExportedSnapshot};
use crate::postgres::tools::ChildReader;
use crate::postgres::{Lsn, PgTarget, PgTools, ServerInfo};
use crate::progress::{Progress, human_bytes, human_rate};
use crate::repo::lock::BackupLock;
use crate::repo::manifest::{
    BASE_TAR, CompressionInfo, DatabaseEntry, FileRecord, MANIFEST_FORMAT, PhysicalInfo, PhysicalMethod,
};
use crate::repo::{BackupKind, BackupLabel, Manifest, Repo, layout};
use crate::storage::PutMode;
use crate::usage;

/// Every backup of a cluster holds the repository's backup lock (a lease under
/// `locks/`), so two backups started in the same second cannot pick the same label,
/// and `check --clean-orphans` never removes a running backup's objects.
pub async fn run(ctx: &Ctx, args: BackupArgs) -> Result<Exit> {
    let repo = Repo::open(&ctx.config).await?;
    let wait = Duration::from_secs(args.lock_wait);
    let lock = match BackupLock::acquire(&repo, wait).await? {
        Ok(lock) => lock,
        Err(holder) => {
            return Err(anyhow::anyhow!(
                "another backup of cluster {:?} is running ({holder}) and holds the backup lock; waited {} s — try again when it is done, or raise --lock-wait",
                ctx.config.cluster,
                args.lock_wait
            ));
        }
    };
    let outcome = match args.kind {
        BackupKind::Logical => logical(ctx, args, &lock).await,
        BackupKind::Physical => physical(ctx, args, &lock).await,
    };
    let held = lock.still_held();
    lock.release().await;
    if !held && outcome.is_ok() {
        tracing::warn!("the backup lock expired while the backup ran (repository unreachable for minutes?)");
    }
    outcome
}

/// Run the copy until it ends or SIGTERM/SIGINT arrives; a signal becomes an error, so
/// the caller's cleanup runs (no manifest is written: nothing becomes visible).
async fn interruptible<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        r = work => r,
        s = crate::process::shutdown_signal() => Err(anyhow::anyhow!("interrupted by {s}")),
    }
}

/// A manifest with everything but the backup's contents filled in.
fn new_manifest(
    repo: &Repo,
    label: &BackupLabel,
    kind: BackupKind,
    tags: &[String],
    start_time: chrono::DateTime<Utc>,
    server: &ServerInfo,
) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        label: label.clone(),
        kind,
        tags: tags.to_vec(),
        start_time,
        stop_time: Utc::now(),
        pg_version: server.version.clone(),
        pg_version_num: server.version_num,
        system_identifier: server.system_identifier.clone(),
        key_id: repo.keys.primary().id().to_hex(),
        compression: CompressionInfo {
            algorithm: "zstd".into(),
            level: repo.compression.level,
        },
        databases: Vec::new(),
        globals: None,
        objects: Vec::new(),
        physical: None,
    }
}

/// The commit point: the manifest, written last and never over another, and only
/// while this run still holds the backup lock (renewed right here: a lease that
/// lapsed while the repository was unreachable may be another backup's by now);
/// then the keep mark if asked for.
async fn commit(repo: &Repo, manifest: &Manifest, keep: bool, lock: &BackupLock) -> Result<()> {
    let label = &manifest.label;
    lock.confirm()
        .await
        .with_context(|| format!("not committing backup {label}"))?;
    // A manifest is a promise that every object it names can be read back: check
    // they are all there, at their recorded size, before making it.
    for object in &manifest.objects {
        let key = layout::backup_object(label, &object.name)?;
        match repo.storage.head(&key).await? {
            Some(meta) if meta.size == object.stored.size => {}
            Some(meta) => {
                return Err(anyhow::anyhow!(
                    "{key} holds {} bytes, but {} were written — not committing backup {label}",
                    meta.size,
                    object.stored.size
                ));
            }
            None => {
                return Err(anyhow::anyhow!(
                    "{key} is missing from the repository after it was written — not committing backup {label}"
                ));
            }
        }
    }
    crate::repo::catalog::write_manifest(repo, manifest)
        .await
        .with_context(|| format!("writing the manifest of {label}"))?;
    if keep {
        crate::repo::retention::set_keep(repo, label).await?;
    }
    Ok(())
}

/// After a failure: without a manifest nothing is visible anyway; removing the pieces
/// is tidiness. Returns the error to report.
/// Objects are removed only while the label is this run's own: under the backup
/// lock, and never when a manifest is there (that backup is somebody else's).
async fn discard(repo: &Repo, label: &BackupLabel, e: anyhow::Error) -> anyhow::Error {
    if let Ok(objects) = repo.storage.list(&layout::backup_prefix(label)).await {
        if objects
            .iter()
            .any(|o| layout::parse_backup_key(&o.key).is_some_and(|(_, n)| layout::is_manifest(n)))
        {
            return e.context(format!(
                "backup {label} failed; a complete backup under the same label was left untouched"
            ));
        }
        let keys: Vec<_> = objects.into_iter().map(|o| o.key).collect();
        let _ = repo.storage.delete(&keys).await;
    }
    e.context(format!("backup {label} failed; nothing was kept"))
}

/// A label no other backup (complete or not) uses yet.
async fn fresh_label(repo: &Repo, kind: BackupKind) -> Result<BackupLabel> {
    for _ in 0..5 {
        let label = BackupLabel::new(Utc::now(), kind);
        if repo.storage.list(&layout::backup_prefix(&label)).await?.is_empty() {
            return Ok(label);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    Err(anyhow::anyhow!(
        "could not find a free backup label — is another backup starting right now?"
    ))
}

fn validate_tag(tag: &str) -> Result<()> {
    let ok =
        !tag.is_empty() && tag.len() <= 100 && tag.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !ok {
        return Err(usage!(
            "--tag {tag:?}: use letters, digits, '-', '_', '.' or ':' (at most 100)"
        ));
    }
    Ok(())
}

struct Source {
    target: PgTarget,
    tools: PgTools,
    server: ServerInfo,
}

async fn logical(ctx: &Ctx, args: BackupArgs, lock: &BackupLock) -> Result<Exit> {
    for tag in &args.tags {
        validate_tag(tag)?;
    }
    let config = &ctx.config;
    let repo = Repo::open(config).await?;
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let target = PgTarget::from_config(config.postgres.url.as_deref())?;
    let client = target.connect(None).await?;
    let server = server::server_info(&client).await?;
    repo.check_system_identifier(&server.system_identifier)?;
    let tools_major = tools.major_version()?;
    if tools_major < server.major() {
        return Err(usage!(
            "pg_dump is version {tools_major} but the server is {} — pg_dump must be at least the server's major version; set [postgres] bin_dir",
            server.major()
        ));
    }
    let all = server::databases(&client).await?;
    let databases = if args.databases.is_empty() {
        all
    } else {
        for db in &args.databases {
            if !all.contains(db) {
                return Err(usage!(
                    "database {db:?} does not exist on {} — see `psql -l`",
                    target.describe()
                ));
            }
        }
        args.databases.clone()
    };
    drop(client);

    let label = fresh_label(&repo, BackupKind::Logical).await?;
    let start_time = Utc::now();
    let source = Source { target, tools, server };
    let progress = Progress::start(None);
    let result = interruptible(dump_all(&repo, &source, &label, &databases, &progress)).await;
    let (globals, entries, objects) = match result {
        Ok(parts) => parts,
        Err(e) => {
            progress.finish();
            return Err(discard(&repo, &label, e).await);
        }
    };

    let manifest = Manifest {
        databases: entries,
        globals: Some(globals),
        objects,
        physical: None,
        ..new_manifest(
            &repo,
            &label,
            BackupKind::Logical,
            &args.tags,
            start_time,
            &source.server,
        )
    };
    commit(&repo, &manifest, args.keep, lock).await?;
    let elapsed = progress.elapsed();
    progress.finish();

    let plain = manifest.plain_size();
    let stored = manifest.stored_size();
    if ctx.json {
        ctx.print_json(&json!({
            "label": label,
            "kind": "logical",
            "tags": manifest.tags,
            "databases": manifest.databases.iter().map(|d| &d.name).collect::<Vec<_>>(),
            "plain_bytes": plain,
            "stored_bytes": stored,
            "seconds": elapsed.as_secs_f64(),
            "repository": repo.storage.describe(),
        }));
    } else {
        println!(
            "backup {label}: {} database(s), {} dumped → {} stored ({:.1}x) in {:.1} s ({})",
            manifest.databases.len(),
            human_bytes(plain),
            human_bytes(stored),
            plain as f64 / stored.max(1) as f64,
            elapsed.as_secs_f64(),
            human_rate(plain, elapsed)
        );
    }
    Ok(Exit::Success)
}

/// Dump globals and every database; returns the globals object name, the database
/// entries and all object records.
async fn dump_all(
    repo: &Repo,
    source: &Source,
    label: &BackupLabel,
    databases: &[String],
    progress: &Progress,
) -> Result<(String, Vec<DatabaseEntry>, Vec<ObjectRecord>)> {
    let mut objects = Vec::new();

    progress.set_message("globals");
    let globals = layout::globals_name().to_string();
    let mut cmd = source.tools.command("pg_dumpall", &source.target, None)?;
    cmd.args(["--globals-only", "--no-password"]);
    let reader = ChildReader::spawn("pg_dumpall", cmd)?;
    let record = repo
        .store()
        .reader(
            &layout::backup_object(label, &globals)?,
            &globals,
            reader,
            PutMode::CreateNew,
            Some(progress.counter()),
        )
        .await
        .context("backing up roles and tablespaces (pg_dumpall --globals-only)")?;
    objects.push(record);

    let mut entries = Vec::new();
    for db in databases {
        progress.set_message(db.clone());
        let (entry, record) = dump_database(repo, source, label, db, progress)
            .await
            .with_context(|| format!("dumping database {db:?}"))?;
        entries.push(entry);
        objects.push(record);
    }
    Ok((globals, entries, objects))
}

async fn dump_database(
    repo: &Repo,
    source: &Source,
    label: &BackupLabel,
    db: &str,
    progress: &Progress,
) -> Result<(DatabaseEntry, ObjectRecord)> {
    let snapshot = ExportedSnapshot::start(&source.target, db).await?;
    let (encoding, collate, ctype) = server::database_locale(&snapshot.client, db).await?;
    let name = layout::database_dump_name(db);
    let mut cmd = source.tools.command("pg_dump", &source.target, Some(db))?;
    // Uncompressed custom format: pgdr compresses. The snapshot makes the dump and
    // the row counts below see exactly the same data.
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={}", snapshot.id));
    let reader = ChildReader::spawn("pg_dump", cmd)?;
    let key = layout::backup_object(label, &name)?;
    let store = repo.store();
    let store = store.reader(&key, &name, reader, PutMode::CreateNew, Some(progress.counter()));
    let (stored, counted) = tokio::join!(store, snapshot.count_rows());
    // pg_dump's own failure explains more than a count that failed alongside it.
    let record = stored?;
    let tables = counted?;
    snapshot.finish().await?;
    Ok((
        DatabaseEntry {
            name: db.to_string(),
            object: name,
            tables,
            encoding: Some(encoding),
            collate: Some(collate),
            ctype: Some(ctype),
        },
        record,
    ))
}

async fn physical(ctx: &Ctx, args: BackupArgs, lock: &BackupLock) -> Result<Exit> {
    for tag in &args.tags {
        validate_tag(tag)?;
    }
    if !args.databases.is_empty() {
        return Err(usage!(
            "--database is for logical backups; a physical backup copies the whole cluster"
        ));
    }
    let config = &ctx.config;
    let repo = Repo::open(config).await?;
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
    if args.method == PhysicalMethod::Basebackup {
        drop(client);
        return basebackup(ctx, &args, &repo, &target, &server, segment_size, lock).await;
    }
    let data_dir = match &config.postgres.data_dir {
        Some(dir) => dir.clone(),
        None => server::setting(&client, "data_directory").await?.into(),
    };
    let local = crate::postgres::datadir::control_system_identifier(&data_dir).map_err(|e| {
        usage!(
            "cannot read {}/global/pg_control ({e}) — physical backups run on the database host; set [postgres] data_dir",
            data_dir.display()
        )
    })?;
    if local != server.system_identifier {
        return Err(usage!(
            "{} belongs to another cluster (system identifier {local}) than the server pgdr is connected to ({}) — check [postgres] data_dir and url",
            data_dir.display(),
            server.system_identifier
        ));
    }

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
        .max(1);

    let label = fresh_label(&repo, BackupKind::Physical).await?;
    let start_time = Utc::now();
    let (session, start_lsn) = BackupSession::start(client, label.as_str(), !args.spread_checkpoint).await?;
    let timeline = session.timeline().await?;
    let listing = crate::physical::listing_for(&data_dir)?;
    let total: u64 = listing.files.iter().map(|f| f.size).sum();
    let progress = Progress::start(Some(total));
    progress.set_message(format!("{label} ({jobs} workers)"));
    let copied = interruptible(crate::physical::copy_files(
        &repo,
        &label,
        &listing,
        jobs,
        progress.counter(),
    ))
    .await;
    let outcome = match copied {
        Ok(parts) => {
            progress.set_message("waiting for WAL");
            finish_physical(
                &repo,
                session,
                parts,
                &label,
                timeline,
                segment_size,
                config.wal.archive_timeout,
            )
            .await
        }
        Err(e) => Err(e),
    };
    progress.finish();
    let (files, objects, stop, wal_start, wal_stop) = match outcome {
        Ok(parts) => parts,
        Err(e) => {
            return Err(discard(&repo, &label, e).await);
        }
    };
    let info = PhysicalInfo {
        method: PhysicalMethod::Local,
        start_lsn: start_lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        stop_lsn: stop.lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        timeline,
        segment_size,
        wal_start,
        wal_stop,
        backup_label: stop.label_file,
        tablespace_map: stop.tablespace_map,
        dirs: listing.dirs.clone(),
        tablespaces: listing.tablespaces.clone(),
        files,
    };
    let manifest = Manifest {
        databases: Vec::new(),
        globals: None,
        objects,
        physical: Some(info),
        ..new_manifest(&repo, &label, BackupKind::Physical, &args.tags, start_time, &server)
    };
    commit(&repo, &manifest, args.keep, lock).await?;
    print_physical(ctx, &PhysicalBackupReport::of(&manifest));
    Ok(Exit::Success)
}

fn print_physical(ctx: &Ctx, report: &PhysicalBackupReport) {
    if ctx.json {
        ctx.print_json(&serde_json::to_value(report).expect("report serialises"));
    } else {
        println!("{report}");
    }
}

type PhysicalParts = (
    Vec<crate::repo::manifest::FileRecord>,
    Vec<ObjectRecord>,
    BackupStop,
    String,
    String,
);

async fn finish_physical(
    repo: &Repo,
    session: BackupSession,
    (files, objects): (Vec<crate::repo::manifest::FileRecord>, Vec<ObjectRecord>),
    label: &BackupLabel,
    timeline: u32,
    segment_size: u64,
    timeout: u64,
) -> Result<PhysicalParts> {
    let stop = session.stop().await?;
    let stop_lsn: Lsn = stop.lsn.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let (wal_start, wal_stop) = crate::physical::wait_for_backup_wal(
        repo,
        &stop.label_file,
        stop_lsn,
        timeline,
        segment_size,
        std::time::Duration::from_secs(timeout),
    )
    .await
    .with_context(|| format!("backup {label}"))?;
    Ok((files, objects, stop, wal_start, wal_stop))
}

/// `--method basebackup`: pg_basebackup streams the cluster as a tar into one object;
/// PostgreSQL's own backup_manifest (SHA-256 per file) rides along and becomes the file
/// list of pgdr's manifest.
async fn basebackup(
    ctx: &Ctx,
    args: &BackupArgs,
    repo: &Repo,
    target: &PgTarget,
    server: &ServerInfo,
    segment_size: u64,
    lock: &BackupLock,
) -> Result<Exit> {
    use crate::physical::basebackup::{PgManifest, TarObserver};
    let tools = PgTools::locate(ctx.config.postgres.bin_dir.as_deref())?;
    let label = fresh_label(repo, BackupKind::Physical).await?;
    let start_time = Utc::now();
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
        if args.spread_checkpoint { "spread" } else { "fast" }
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
            std::time::Duration::from_secs(ctx.config.wal.archive_timeout),
        )
        .await?;
        let files = pg
            .files
            .iter()
            .map(|f| FileRecord {
                path: f.path.clone(),
                size: f.size,
                sha256: f.checksum.clone(),
                mode: 0o600,
                bundle: BASE_TAR.to_string(),
                offset: 0,
                file_offset: 0,
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
        })
    }
    .await;
    let info = match parts {
        Ok(info) => info,
        Err(e) => return Err(discard(repo, &label, e).await),
    };
    let manifest = Manifest {
        databases: Vec::new(),
        globals: None,
        objects: vec![record.clone()],
        physical: Some(info),
        ..new_manifest(repo, &label, BackupKind::Physical, &args.tags, start_time, server)
    };
    commit(repo, &manifest, args.keep, lock).await?;
    print_physical(ctx, &PhysicalBackupReport::of(&manifest));
    Ok(Exit::Success)
}

//! A logical backup: `pg_dumpall --globals-only`, then one `pg_dump -Fc` per database,
//! each streamed straight through the pipeline into the repository, with exact row
//! counts taken in the dump's own snapshot; the manifest goes last.

use anyhow::{Context, Result};
use chrono::Utc;

use super::commit::{commit, discard, fresh_label, new_manifest};
use super::{BackupOptions, LogicalBackupReport, interruptible};
use crate::config::Config;
use crate::pipeline::ObjectRecord;
use crate::postgres::catalog::DatabaseCatalog;
use crate::postgres::server::{self, ExportedSnapshot};
use crate::postgres::tools::ChildReader;
use crate::postgres::{PgTarget, PgTools, ServerInfo};
use crate::progress::Progress;
use crate::repo::lock::BackupLock;
use crate::repo::manifest::DatabaseEntry;
use crate::repo::{BackupKind, BackupLabel, Manifest, Repo, layout};
use crate::storage::PutMode;
use crate::usage;

struct Source {
    target: PgTarget,
    tools: PgTools,
    server: ServerInfo,
}

pub(super) async fn run(
    config: &Config,
    opts: &BackupOptions,
    repo: &Repo,
    lock: &BackupLock,
) -> Result<LogicalBackupReport> {
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
    let databases = if opts.databases.is_empty() {
        all
    } else {
        for db in &opts.databases {
            if !all.contains(db) {
                return Err(usage!(
                    "database {db:?} does not exist on {} — see `psql -l`",
                    target.describe()
                ));
            }
        }
        opts.databases.clone()
    };
    drop(client);

    let label = fresh_label(repo, BackupKind::Logical, false).await?;
    let start_time = Utc::now();
    let source = Source { target, tools, server };
    let progress = Progress::start(None);
    let result = interruptible(dump_all(repo, &source, &label, &databases, &progress)).await;
    let (globals, entries, objects, catalog) = match result {
        Ok(parts) => parts,
        Err(e) => {
            progress.finish();
            return Err(discard(repo, &label, e).await);
        }
    };

    let manifest = Manifest {
        databases: entries,
        globals: Some(globals),
        objects,
        physical: None,
        catalog,
        ..new_manifest(
            repo,
            &label,
            BackupKind::Logical,
            &opts.tags,
            start_time,
            &source.server,
        )
    };
    commit(repo, &manifest, opts.keep, lock).await?;
    let elapsed = progress.elapsed();
    progress.finish();
    Ok(LogicalBackupReport::of(&manifest, elapsed, repo.storage.describe()))
}

/// Dump globals and every database; returns the globals object name, the database
/// entries and all object records.
async fn dump_all(
    repo: &Repo,
    source: &Source,
    label: &BackupLabel,
    databases: &[String],
    progress: &Progress,
) -> Result<(String, Vec<DatabaseEntry>, Vec<ObjectRecord>, Vec<DatabaseCatalog>)> {
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
    let mut catalogs = Vec::new();
    for db in databases {
        progress.set_message(db.clone());
        let (entry, record, catalog) = dump_database(repo, source, label, db, progress)
            .await
            .with_context(|| format!("dumping database {db:?}"))?;
        entries.push(entry);
        catalogs.extend(catalog);
        objects.push(record);
    }
    Ok((globals, entries, objects, catalogs))
}

async fn dump_database(
    repo: &Repo,
    source: &Source,
    label: &BackupLabel,
    db: &str,
    progress: &Progress,
) -> Result<(DatabaseEntry, ObjectRecord, Option<DatabaseCatalog>)> {
    let snapshot = ExportedSnapshot::start(&source.target, db).await?;
    // Inside the dump's snapshot: the catalog is exactly the dump's.
    let catalog = match crate::postgres::catalog::read(&snapshot.client, db).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("database {db:?}: its relation catalog is not recorded ({e:#})");
            None
        }
    };
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
        catalog,
    ))
}

//! What pgdr asks a running server in SQL: its identity, version, settings and
//! timeline; its databases; exact row counts of every table inside an exported
//! snapshot (the one `pg_dump --snapshot` then dumps), so a restore can be checked
//! row for row; the backup session (`pg_backup_start` / `pg_backup_stop`); a WAL
//! switch. Starting and stopping servers is `crate::server`'s.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, GenericClient, IsolationLevel};

use super::conn::db_err;
use super::{PgTarget, quote_ident};

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub version: String,
    pub version_num: u32,
    pub system_identifier: String,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    pub rows: i64,
}

pub async fn server_info(client: &Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int4, \
             (SELECT system_identifier FROM pg_control_system())::text",
            &[],
        )
        .await
        .map_err(db_err("reading the server version and system identifier"))?;
    let version: String = row.get(0);
    Ok(ServerInfo {
        version: version.split_whitespace().next().unwrap_or(&version).to_string(),
        version_num: row.get::<_, i32>(1) as u32,
        system_identifier: row.get(2),
    })
}

/// A server setting's current value (`current_setting`).
pub async fn setting(client: &Client, name: &str) -> Result<String> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(db_err(format!("reading the setting {name}")))?;
    Ok(row.get(0))
}

/// The timeline the server writes on now (a primary's, just promoted or not).
pub async fn current_timeline(client: &Client) -> Result<u32> {
    let hex: String = client
        .query_one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", &[])
        .await?
        .get(0);
    u32::from_str_radix(&hex, 16).map_err(|e| anyhow::anyhow!("timeline {hex:?}: {e}"))
}

/// Databases a full logical backup covers: every one that accepts connections,
/// templates excluded.
pub async fn databases(client: &Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
            &[],
        )
        .await
        .map_err(db_err("listing databases"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Encoding, collation and ctype of a database, to create its restore alike.
pub async fn database_locale(client: &Client, name: &str) -> Result<(String, String, String)> {
    let row = client
        .query_one(
            "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(db_err(format!("reading the settings of database {name:?}")))?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

pub async fn database_exists(client: &Client, name: &str) -> Result<bool> {
    let row = client
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(db_err("looking up a database"))?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Number of user relations (tables, views, sequences…) in the connected database.
pub async fn user_relation_count(client: &Client) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'",
            &[],
        )
        .await
        .map_err(db_err("inspecting the target database"))?;
    Ok(row.get(0))
}

/// User tables whose rows a dump carries: ordinary tables (partitions included) outside
/// the system schemas and not owned by an extension.
const USER_TABLES: &str = "SELECT n.nspname::text, c.relname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                       AND d.objid = c.oid AND d.deptype = 'e') \
     ORDER BY 1, 2";

/// Exact row counts of every user table, as seen by `client`'s snapshot.
pub async fn count_rows<C: GenericClient>(client: &C) -> Result<Vec<TableRows>> {
    let tables = client.query(USER_TABLES, &[]).await.map_err(db_err("listing tables"))?;
    let mut out = Vec::with_capacity(tables.len());
    for row in tables {
        let schema: String = row.get(0);
        let name: String = row.get(1);
        let sql = format!(
            "SELECT count(*) FROM ONLY {}.{}",
            quote_ident(&schema),
            quote_ident(&name)
        );
        let count = client
            .query_one(&sql, &[])
            .await
            .map_err(db_err(format!("counting rows of {schema}.{name}")))?;
        out.push(TableRows {
            schema,
            name,
            rows: count.get(0),
        });
    }
    Ok(out)
}

/// Exact row counts of every user table in `dbname`, now.
pub async fn count_rows_now(target: &PgTarget, dbname: &str) -> Result<Vec<TableRows>> {
    let mut client = target.connect(Some(dbname)).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_err("starting a transaction"))?;
    let counts = count_rows(&tx).await?;
    tx.commit().await.map_err(db_err("ending a transaction"))?;
    Ok(counts)
}

/// A repeatable-read transaction that exported its snapshot for `pg_dump --snapshot`.
/// It must stay open until pg_dump has finished importing it; dropping it ends it.
pub struct ExportedSnapshot {
    pub client: Client,
    pub id: String,
}

impl ExportedSnapshot {
    pub async fn start(target: &PgTarget, dbname: &str) -> Result<ExportedSnapshot> {
        let client = target.connect(Some(dbname)).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db_err("starting the snapshot transaction"))?;
        let row = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(db_err("exporting a snapshot"))?;
        Ok(ExportedSnapshot { id: row.get(0), client })
    }

    /// Row counts inside the exported snapshot: exactly what the dump contains.
    pub async fn count_rows(&self) -> Result<Vec<TableRows>> {
        count_rows(&self.client).await
    }

    pub async fn finish(self) -> Result<()> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(db_err("ending the snapshot transaction"))
    }
}

/// The non-exclusive low-level backup API, over one session held open throughout
/// (closing the session aborts the backup, so a crash never leaves backup mode on).
pub struct BackupSession {
    client: Client,
}

pub struct BackupStop {
    pub lsn: String,
    pub label_file: String,
    pub tablespace_map: Option<String>,
}

impl BackupSession {
    /// `pg_backup_start(label, fast)`; returns the session and the start LSN.
    pub async fn start(client: Client, label: &str, fast: bool) -> Result<(BackupSession, String)> {
        let row = client
            .query_one("SELECT pg_backup_start($1, $2)::text", &[&label, &fast])
            .await
            .map_err(db_err("starting the backup (pg_backup_start)"))?;
        Ok((BackupSession { client }, row.get(0)))
    }

    /// The session's connection, for queries while the backup runs.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn timeline(&self) -> Result<u32> {
        let row = self
            .client
            .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
            .await
            .map_err(db_err("reading the timeline"))?;
        Ok(row.get::<_, i32>(0) as u32)
    }

    /// `pg_backup_stop(false)`: pgdr waits for the WAL itself, with a timeout.
    pub async fn stop(self) -> Result<BackupStop> {
        let row = self
            .client
            .query_one(
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
                &[],
            )
            .await
            .map_err(db_err("ending the backup (pg_backup_stop)"))?;
        let map: Option<String> = row.get(2);
        Ok(BackupStop {
            lsn: row.get(0),
            label_file: row.get(1),
            tablespace_map: map.filter(|m| !m.trim().is_empty()),
        })
    }
}

/// Close the current WAL segment (`pg_switch_wal()`) and wait until the server has
/// archived it: everything written so far is then in the archive.
pub async fn archive_current_wal(client: &Client) -> Result<()> {
    let segment: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(db_err("pg_switch_wal()"))?
        .get(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(db_err("reading pg_stat_archiver"))?;
        let (last, failed): (String, String) = (row.get(0), row.get(1));
        // Names of one timeline order as their positions; a later timeline's too.
        if last.get(..24).is_some_and(|l| l >= segment.as_str()) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "WAL segment {segment} was not archived within 60 s (last archived {last:?}, last failed {failed:?}) — check archive_command and the server log"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// pg_stat_archiver's last archived time, archived and failed counts, last failure
/// time, and the number of .ready files.
pub async fn archiver_stats(target: &PgTarget) -> Result<(Option<f64>, i64, i64, Option<f64>, i64)> {
    let client = target.connect(None).await?;
    let row = client
        .query_one(
            "SELECT extract(epoch FROM last_archived_time)::float8, archived_count, failed_count, \
             extract(epoch FROM last_failed_time)::float8, \
             (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')::int8 \
             FROM pg_stat_archiver",
            &[],
        )
        .await?;
    Ok((
        row.get::<_, Option<f64>>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2),
        row.get::<_, Option<f64>>(3),
        row.get::<_, i64>(4),
    ))
}

//! Logical restore: stream a database's dump from the repository through open →
//! unzstd into `pg_restore`, into a new (or explicitly cleaned) database, then compare
//! every table's row count with the manifest. Roles and tablespaces go through psql.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use super::globals;
use crate::config::Config;
use crate::pipeline;
use crate::postgres::conn::db_err;
use crate::postgres::server;
use crate::postgres::tools::ChildWriter;
use crate::postgres::{PgTarget, PgTools, TableRows, quote_ident, quote_literal};
use crate::progress::{Progress, human_bytes, human_rate};
use crate::repo::catalog;
use crate::repo::manifest::DatabaseEntry;
use crate::repo::{BackupKind, BackupLabel, Manifest, Repo, layout};
use crate::usage;

/// What to restore from a logical backup, and into what, validated.
#[derive(Debug, Clone)]
pub struct LogicalRestoreOptions {
    /// `LABEL`, `latest` or `tag:TAG`.
    pub backup: String,
    /// The database in the backup (may be left out when it holds only one).
    pub database: Option<String>,
    /// The database to restore into (default: the same name).
    pub to_database: Option<String>,
    /// `--table` filters, as (schema, name).
    pub tables: Vec<(String, String)>,
    /// pg_restore jobs; 1 streams in a single transaction.
    pub jobs: u32,
    /// Replace the objects of a non-empty target database.
    pub clean: bool,
    pub no_owner: bool,
    /// Roles and tablespaces first.
    pub globals: bool,
    /// Roles and tablespaces only.
    pub globals_only: bool,
    /// Tablespaces created elsewhere than the backup's cluster had them: (name, dir).
    pub tablespace_map: Vec<(String, String)>,
    /// Leave tablespaces out: none created, every object in the default one.
    pub no_tablespaces: bool,
}

impl LogicalRestoreOptions {
    pub fn check(&self) -> Result<()> {
        if self.jobs == 0 {
            return Err(usage!("--jobs must be at least 1"));
        }
        if !self.tablespace_map.is_empty() && self.no_tablespaces {
            return Err(usage!("--tablespace-map and --no-tablespaces: give one"));
        }
        for (_, dir) in &self.tablespace_map {
            if !dir.starts_with('/') {
                return Err(usage!("--tablespace-map: {dir:?} is not an absolute path"));
            }
        }
        Ok(())
    }
}

/// What a logical restore did. `verify` runs restores as children and reads this
/// back from their `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogicalRestoreReport {
    pub backup: BackupLabel,
    /// Statements of the roles/tablespaces script that failed (roles that exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals_statements_failed: Option<usize>,
    /// Each of them: the statement and PostgreSQL's error, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub globals_failures: Vec<String>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRestored>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseRestored {
    pub database: String,
    pub to_database: String,
    pub created: bool,
    pub tables_checked: usize,
    pub rows: i64,
    /// What was restored: the dump's size, or with --table those tables' size on disk.
    pub bytes: u64,
    /// With --table: the size of the whole dump read to find them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_bytes: Option<u64>,
    pub seconds: f64,
}

impl fmt::Display for LogicalRestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        match self.globals_statements_failed {
            Some(0) => lines.push(format!("restored roles and tablespaces from {}", self.backup)),
            Some(failed) => {
                lines.push(format!(
                    "restored roles and tablespaces from {} ({failed} statement(s) failed, usually roles that already exist):",
                    self.backup
                ));
                lines.extend(self.globals_failures.iter().map(|f| format!("  {f}")));
            }
            None => {}
        }
        if let Some(d) = &self.database {
            let elapsed = std::time::Duration::from_secs_f64(d.seconds);
            let size = match d.dump_bytes {
                // Only some tables: their size, and the dump that was read for them.
                Some(dump) => format!(
                    "{} table(s), {} on disk, in {:.1} s (read from a {} dump at {})",
                    d.tables_checked,
                    human_bytes(d.bytes),
                    d.seconds,
                    human_bytes(dump),
                    human_rate(dump, elapsed)
                ),
                None => format!(
                    "{} in {:.1} s ({}); {} table(s)",
                    human_bytes(d.bytes),
                    d.seconds,
                    human_rate(d.bytes, elapsed),
                    d.tables_checked
                ),
            };
            lines.push(format!(
                "restored {} database {:?} into {:?}: {size}, {} rows match the manifest",
                self.backup, d.database, d.to_database, d.rows
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// Restore roles and tablespaces and/or one database of a logical backup into the
/// server of `[postgres] url`.
pub async fn run(config: &Config, opts: &LogicalRestoreOptions) -> Result<LogicalRestoreReport> {
    opts.check()?;
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    let manifest = match catalog::resolve(&manifests, &opts.backup, Some(BackupKind::Logical)) {
        Ok(m) => m,
        Err(e) => return Err(repo.explain_missing(&opts.backup, e).await),
    };
    repo.check_manifest_identity(manifest)?;
    // expire leaves the backup while this runs.
    let lease = crate::repo::lock::UseLease::acquire(&repo, std::slice::from_ref(&manifest.label), "restore").await?;
    let result = restore_leased(config, opts, &repo, manifest).await;
    lease.release().await;
    result
}

async fn restore_leased(
    config: &Config,
    opts: &LogicalRestoreOptions,
    repo: &Repo,
    manifest: &crate::repo::Manifest,
) -> Result<LogicalRestoreReport> {
    let repo = repo.clone();
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let target = PgTarget::from_config(config.postgres.url.as_deref())?;
    let client = target.connect(None).await?;

    let mut report = LogicalRestoreReport {
        backup: manifest.label.clone(),
        globals_statements_failed: None,
        globals_failures: Vec::new(),
        database: None,
    };
    if opts.globals || opts.globals_only {
        let failed = restore_globals(&repo, manifest, &tools, &target, opts).await?;
        report.globals_statements_failed = Some(failed.len());
        report.globals_failures = failed;
        if opts.globals_only {
            return Ok(report);
        }
    }

    let jobs = opts.jobs;
    let tables = &opts.tables;
    let entry = pick_database(manifest, opts.database.as_deref())?;
    let to = opts.to_database.clone().unwrap_or_else(|| entry.name.clone());
    let record = manifest
        .object(&entry.object)
        .ok_or_else(|| anyhow!("the manifest of {} lists no object {}", manifest.label, entry.object))?;

    // Never write into a database that holds something, unless told to.
    let created = if server::database_exists(&client, &to).await? {
        let existing = target.connect(Some(&to)).await?;
        let relations = server::user_relation_count(&existing).await?;
        if relations > 0 && !opts.clean {
            return Err(usage!(
                "database {to:?} already exists and is not empty ({relations} relations) — restore with --to-database NEW, or pass --clean to replace its objects"
            ));
        }
        false
    } else {
        create_database(&client, &to, entry).await?;
        true
    };

    let started = Instant::now();
    let progress = Progress::start(Some(record.plain.size));
    progress.set_message(format!("{} → {to}", entry.name));
    let job = DumpRestore {
        entry,
        to: &to,
        clean: opts.clean,
        no_owner: opts.no_owner,
        no_tablespaces: opts.no_tablespaces,
        jobs,
        tables,
    };
    let outcome = restore_dump(&repo, manifest, &tools, &target, &job, &progress).await;
    progress.finish();
    if let Err(e) = outcome {
        if created {
            // Leave nothing half-restored behind.
            let dropped = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&to)))
                .await
                .is_ok();
            let note = if dropped {
                format!("; the new database {to:?} was dropped")
            } else {
                format!("; drop the partly restored database {to:?} by hand")
            };
            return Err(e.context(format!("restore of {} into {to:?} failed{note}", manifest.label)));
        }
        return Err(e.context(format!(
            "restore of {} into {to:?} failed{}",
            manifest.label,
            if jobs == 1 {
                "; its single transaction was rolled back"
            } else {
                ""
            }
        )));
    }
    let elapsed = started.elapsed();

    // Check the result row for row against the counts taken at dump time.
    let restored = server::count_rows_now(&target, &to).await?;
    let expected: Vec<&TableRows> = entry
        .tables
        .iter()
        .filter(|t| tables.is_empty() || tables.iter().any(|(s, n)| s == &t.schema && n == &t.name))
        .collect();
    let mismatches = compare_counts(&expected, &restored);
    let rows: i64 = expected.iter().map(|t| t.rows).sum();
    if !mismatches.is_empty() {
        return Err(anyhow!(
            "restored {to:?}, but row counts differ from the manifest: {}",
            mismatches.join("; ")
        ));
    }
    // With --table, what was restored is those tables, not the whole dump read.
    let bytes = if tables.is_empty() {
        record.plain.size
    } else {
        tables_size(&target, &to, tables).await.unwrap_or(record.plain.size)
    };
    report.database = Some(DatabaseRestored {
        database: entry.name.clone(),
        to_database: to,
        created,
        tables_checked: expected.len(),
        rows,
        bytes,
        dump_bytes: (!tables.is_empty()).then_some(record.plain.size),
        seconds: elapsed.as_secs_f64(),
    });
    Ok(report)
}

/// The size on disk of the restored tables (their indexes and TOAST included).
async fn tables_size(target: &PgTarget, db: &str, tables: &[(String, String)]) -> Result<u64> {
    let client = target.connect(Some(db)).await?;
    let mut total = 0i64;
    for (schema, name) in tables {
        let row = client
            .query_one(
                "SELECT coalesce(pg_total_relation_size(to_regclass(format('%I.%I', $1::text, $2::text))), 0)",
                &[schema, name],
            )
            .await?;
        total += row.get::<_, i64>(0);
    }
    Ok(total.max(0) as u64)
}

/// `--table schema.name`.
pub fn parse_table(raw: &str) -> Result<(String, String)> {
    match raw.split_once('.') {
        Some((schema, name)) if !schema.is_empty() && !name.is_empty() => Ok((schema.to_string(), name.to_string())),
        _ => Err(usage!("--table {raw:?}: expected schema.name, e.g. public.orders")),
    }
}

fn pick_database<'a>(manifest: &'a Manifest, wanted: Option<&str>) -> Result<&'a DatabaseEntry> {
    let names = || {
        manifest
            .databases
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(name) => manifest.database(name).ok_or_else(|| {
            usage!(
                "backup {} has no database {name:?}; it has: {}",
                manifest.label,
                names()
            )
        }),
        None if manifest.databases.len() == 1 => Ok(&manifest.databases[0]),
        None => Err(usage!(
            "backup {} holds several databases ({}) — choose one with --database NAME",
            manifest.label,
            names()
        )),
    }
}

async fn create_database(client: &tokio_postgres::Client, name: &str, entry: &DatabaseEntry) -> Result<()> {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(encoding) = &entry.encoding {
        sql.push_str(&format!(" ENCODING {}", quote_literal(encoding)));
    }
    if let (Some(collate), Some(ctype)) = (&entry.collate, &entry.ctype) {
        sql.push_str(&format!(
            " LC_COLLATE {} LC_CTYPE {}",
            quote_literal(collate),
            quote_literal(ctype)
        ));
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(db_err(format!("creating database {name:?}")))
}

/// One database dump to restore, with the options parsed from the command line.
#[derive(Clone, Copy)]
struct DumpRestore<'a> {
    entry: &'a DatabaseEntry,
    /// The database to restore into.
    to: &'a str,
    clean: bool,
    no_owner: bool,
    no_tablespaces: bool,
    jobs: u32,
    /// `--table` filters, as (schema, name).
    tables: &'a [(String, String)],
}

/// `pg_restore` fed from the repository. One job streams (and runs in a single
/// transaction, so a failure leaves nothing behind); several jobs need a seekable
/// file, so the dump is first staged, fully verified, in a private temporary file.
async fn restore_dump(
    repo: &Repo,
    manifest: &Manifest,
    tools: &PgTools,
    target: &PgTarget,
    job: &DumpRestore<'_>,
    progress: &Progress,
) -> Result<()> {
    let DumpRestore {
        entry,
        to,
        clean,
        no_owner,
        no_tablespaces,
        jobs,
        tables,
    } = *job;
    let key = layout::backup_object(&manifest.label, &entry.object)?;
    let record = manifest.object(&entry.object).expect("checked by caller");
    let mut cmd = tools.command("pg_restore", target, Some(to))?;
    cmd.args(["--no-password", "--exit-on-error"])
        .arg(format!("--dbname={}", crate::postgres::conninfo_dbname(to)));
    if clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if no_owner {
        cmd.arg("--no-owner");
    }
    if no_tablespaces {
        cmd.arg("--no-tablespaces");
    }
    for (schema, name) in tables {
        cmd.arg(format!("--schema={schema}")).arg(format!("--table={name}"));
    }
    if jobs == 1 {
        cmd.arg("--single-transaction");
        let sink = ChildWriter::spawn("pg_restore", cmd)?;
        feed_tool(repo, &key, record, sink, Some(progress)).await
    } else {
        let dir = tempfile::Builder::new()
            .prefix("pgdr-restore-")
            .tempdir()
            .context("creating a staging directory")?;
        let path = dir.path().join("dump");
        let free = crate::disk::free_bytes(dir.path()).unwrap_or(u64::MAX);
        if free < record.plain.size {
            return Err(anyhow!(
                "--jobs {} stages the dump in {} but only {} are free there and the dump is {} — set TMPDIR to a larger place or use --jobs 1",
                jobs,
                dir.path().display(),
                human_bytes(free),
                human_bytes(record.plain.size)
            ));
        }
        let file = std::fs::File::create(&path)?;
        pipeline::load_to_writer(
            &repo.storage,
            &key,
            file,
            &repo.keys,
            pipeline::Verify::Record(record),
            Some(progress.counter()),
        )
        .await?;
        cmd.arg(format!("--jobs={jobs}")).arg(&path);
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| anyhow!("cannot start pg_restore: {e}"))?;
        let stderr = child.stderr.take();
        let status = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            if let Some(mut s) = stderr {
                use std::io::Read;
                let _ = s.read_to_string(&mut text);
            }
            (child.wait(), text)
        })
        .await?;
        let (status, text) = status;
        let status = status?;
        if !status.success() {
            let line = text
                .lines()
                .find(|l| l.contains("error"))
                .or(text.lines().last())
                .unwrap_or("");
            return Err(anyhow!("pg_restore failed ({status}): {}", line.trim()));
        }
        Ok(())
    }
}

/// Stream an object into a tool's stdin and wait for the tool. A tool may stop
/// reading early on purpose (pg_restore --table has what it needs): then its own exit
/// status decides. Every byte it did read had been authenticated.
async fn feed_tool(
    repo: &Repo,
    key: &crate::storage::ObjectKey,
    record: &pipeline::ObjectRecord,
    sink: ChildWriter,
    progress: Option<&Progress>,
) -> Result<()> {
    let waiter = sink.waiter();
    let loaded = pipeline::load_to_writer(
        &repo.storage,
        key,
        sink,
        &repo.keys,
        pipeline::Verify::Record(record),
        progress.map(|p| p.counter()),
    )
    .await;
    match loaded {
        Ok((sink, _, _)) => sink.finish(),
        Err(e) => {
            let broken_pipe = crate::os_error::is_broken_pipe(&e);
            // The tool has seen the end of its input by now; learn how it ended.
            let ended = waiter.wait();
            match (broken_pipe, ended) {
                (true, Ok(())) => Ok(()),
                (true, Err(tool)) => Err(tool),
                (false, _) => Err(e),
            }
        }
    }
}

/// Roles and tablespaces through psql, with tablespaces moved (`--tablespace-map`)
/// or left out (`--no-tablespaces`). Statements that fail (typically roles that
/// already exist) are named, one line each, and are not fatal; a tablespace that
/// could not be created is: the database restore would fail on it.
async fn restore_globals(
    repo: &Repo,
    manifest: &Manifest,
    tools: &PgTools,
    target: &PgTarget,
    opts: &LogicalRestoreOptions,
) -> Result<Vec<String>> {
    let name = manifest
        .globals
        .as_ref()
        .ok_or_else(|| usage!("backup {} has no roles/tablespaces object", manifest.label))?;
    let record = manifest
        .object(name)
        .ok_or_else(|| anyhow!("the manifest lists no object {name}"))?;
    let key = layout::backup_object(&manifest.label, name)?;
    let (script, _, _) = pipeline::load_whole_to_writer(
        &repo.storage,
        &key,
        Vec::new(),
        &repo.keys,
        pipeline::Verify::Record(record),
    )
    .await
    .context("reading the roles and tablespaces script")?;
    let script = String::from_utf8_lossy(&script);
    let script = globals::place_tablespaces(&script, &opts.tablespace_map, opts.no_tablespaces)?;
    let mut cmd = tools.command("psql", target, None)?;
    // -b: psql names each failed statement after its error.
    cmd.args(["-X", "-q", "-b", "--no-password", "-v", "ON_ERROR_STOP=0", "-f", "-"]);
    // Every line of stderr is read (not a tail): each failed statement is named.
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| anyhow!("cannot start psql: {e}"))?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("psql has no stdin"))?;
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(script.as_bytes())
    });
    let out = child.wait_with_output().context("running psql")?;
    let fed = feeder.join().map_err(|_| anyhow!("feeding psql panicked"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(anyhow!(
            "psql failed ({}) restoring roles and tablespaces: {}",
            out.status,
            stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim()
        ));
    }
    fed.context("feeding the roles and tablespaces script to psql")?;
    let lines: Vec<String> = stderr.lines().map(str::to_string).collect();
    let failures = globals::failures(&lines);
    if let Some(bad) = failures.iter().find(|f| f.is_tablespace && !f.already_exists()) {
        return Err(anyhow!(
            "tablespace {} could not be created: {} — create its directory (empty, owned by the server's user) on this host, put it elsewhere with --tablespace-map {}=DIR, or leave tablespaces out with --no-tablespaces",
            bad.tablespace.as_deref().unwrap_or("?"),
            bad.error,
            bad.tablespace.as_deref().unwrap_or("NAME")
        ));
    }
    Ok(failures.iter().map(|f| f.to_string()).collect())
}

/// Differences between expected and actual row counts, one phrase each.
fn compare_counts(expected: &[&TableRows], actual: &[TableRows]) -> Vec<String> {
    let actual: BTreeMap<(&str, &str), i64> = actual
        .iter()
        .map(|t| ((t.schema.as_str(), t.name.as_str()), t.rows))
        .collect();
    expected
        .iter()
        .filter_map(|t| match actual.get(&(t.schema.as_str(), t.name.as_str())) {
            Some(&rows) if rows == t.rows => None,
            Some(&rows) => Some(format!("{}.{} has {rows} rows, expected {}", t.schema, t.name, t.rows)),
            None => Some(format!("{}.{} is missing", t.schema, t.name)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_schema_dot_name() {
        assert_eq!(
            parse_table("public.orders").unwrap(),
            ("public".into(), "orders".into())
        );
        for bad in ["orders", ".orders", "public.", ""] {
            assert!(parse_table(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reports_read_back_with_and_without_a_database() {
        let label: BackupLabel = "20261126T020000Z-L".parse().unwrap();
        let globals_only = LogicalRestoreReport {
            backup: label.clone(),
            globals_statements_failed: Some(2),
            globals_failures: Vec::new(),
            database: None,
        };
        let text = serde_json::to_string(&globals_only).unwrap();
        assert_eq!(text, r#"{"backup":"20261126T020000Z-L","globals_statements_failed":2}"#);
        let back: LogicalRestoreReport = serde_json::from_str(&text).unwrap();
        assert!(back.database.is_none());

        let full = LogicalRestoreReport {
            backup: label,
            globals_statements_failed: None,
            globals_failures: Vec::new(),
            database: Some(DatabaseRestored {
                database: "app".into(),
                to_database: "app2".into(),
                created: true,
                tables_checked: 3,
                rows: 42,
                bytes: 1000,
                dump_bytes: None,
                seconds: 0.5,
            }),
        };
        let text = serde_json::to_string(&full).unwrap();
        assert!(
            text.contains(r#""tables_checked":3"#) && text.contains(r#""rows":42"#),
            "{text}"
        );
        let back: LogicalRestoreReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back.database.unwrap().to_database, "app2");
    }
}

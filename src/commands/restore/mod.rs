//! `pgdr restore` (logical): stream a database's dump from the repository through
//! open → unzstd into `pg_restore`, into a new (or explicitly `--clean`ed) database,
//! then compare every table's row count with the manifest.

mod physical;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde_json::json;

use crate::cli::RestoreArgs;
use crate::commands::Ctx;
use crate::exit::Exit;
use crate::pipeline;
use crate::postgres::conn::db_err;
use crate::postgres::server;
use crate::postgres::tools::ChildWriter;
use crate::postgres::{PgTarget, PgTools, TableRows, quote_ident, quote_literal};
use crate::progress::{Progress, human_bytes, human_rate};
use crate::repo::catalog;
use crate::repo::manifest::DatabaseEntry;
use crate::repo::{BackupKind, Manifest, Repo, layout};
use crate::usage;

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Result<Exit> {
    if args.kind == BackupKind::Physical || args.to.is_some() {
        return physical::run(ctx, args).await;
    }
    let jobs = args.jobs.unwrap_or(1);
    if jobs == 0 {
        return Err(usage!("--jobs must be at least 1"));
    }
    let tables = args.tables.iter().map(|t| parse_table(t)).collect::<Result<Vec<_>>>()?;
    let config = &ctx.config;
    let repo = Repo::open(config).await?;
    let manifests = repo.manifests().await?;
    let manifest = catalog::resolve(&manifests, &args.backup, Some(BackupKind::Logical))?;
    repo.check_manifest_identity(manifest)?;
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let target = PgTarget::from_config(config.postgres.url.as_deref())?;
    let client = target.connect(None).await?;

    let mut report = json!({"backup": manifest.label});
    if args.globals || args.globals_only {
        let failed = restore_globals(&repo, manifest, &tools, &target).await?;
        report["globals_statements_failed"] = json!(failed);
        if !ctx.json {
            if failed == 0 {
                println!("restored roles and tablespaces from {}", manifest.label);
            } else {
                println!(
                    "restored roles and tablespaces from {} ({failed} statement(s) failed, usually roles that already exist; see PGDR_LOG=debug)",
                    manifest.label
                );
            }
        }
        if args.globals_only {
            if ctx.json {
                ctx.print_json(&report);
            }
            return Ok(Exit::Success);
        }
    }

    let entry = pick_database(manifest, args.database.as_deref())?;
    let to = args.to_database.clone().unwrap_or_else(|| entry.name.clone());
    let record = manifest
        .object(&entry.object)
        .ok_or_else(|| anyhow!("the manifest of {} lists no object {}", manifest.label, entry.object))?;

    // Never write into a database that holds something, unless told to.
    let created = if server::database_exists(&client, &to).await? {
        let existing = target.connect(Some(&to)).await?;
        let relations = server::user_relation_count(&existing).await?;
        if relations > 0 && !args.clean {
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
        clean: args.clean,
        no_owner: args.no_owner,
        jobs,
        tables: &tables,
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
    if ctx.json {
        report["database"] = json!(entry.name);
        report["to_database"] = json!(to);
        report["created"] = json!(created);
        report["tables_checked"] = json!(expected.len());
        report["rows"] = json!(rows);
        report["bytes"] = json!(record.plain.size);
        report["seconds"] = json!(elapsed.as_secs_f64());
        ctx.print_json(&report);
    } else {
        println!(
            "restored {} database {:?} into {to:?}: {} in {:.1} s ({}); {} table(s), {rows} rows match the manifest",
            manifest.label,
            entry.name,
            human_bytes(record.plain.size),
            elapsed.as_secs_f64(),
            human_rate(record.plain.size, elapsed),
            expected.len()
        );
    }
    Ok(Exit::Success)
}

fn parse_table(raw: &str) -> Result<(String, String)> {
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
            let broken_pipe = crate::exit::is_broken_pipe(&e);
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

/// Roles and tablespaces through psql. Statements that fail (typically roles that
/// already exist) are counted, not fatal.
async fn restore_globals(repo: &Repo, manifest: &Manifest, tools: &PgTools, target: &PgTarget) -> Result<usize> {
    let name = manifest
        .globals
        .as_ref()
        .ok_or_else(|| usage!("backup {} has no roles/tablespaces object", manifest.label))?;
    let record = manifest
        .object(name)
        .ok_or_else(|| anyhow!("the manifest lists no object {name}"))?;
    let mut cmd = tools.command("psql", target, None)?;
    cmd.args(["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0", "-f", "-"]);
    let sink = ChildWriter::spawn("psql", cmd)?;
    let waiter = sink.waiter();
    let key = layout::backup_object(&manifest.label, name)?;
    feed_tool(repo, &key, record, sink, None)
        .await
        .context("restoring roles and tablespaces")?;
    Ok(waiter.stderr().wait().iter().filter(|l| l.contains("ERROR:")).count())
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

//! Bringing lost tables back from a scratch copy (a server restored to a moment before
//! the loss) into the live database: a table absent there whole, under a new name if
//! asked (pg_dump | pg_restore, in one transaction); a present one the rows it lacks,
//! matched by primary key. A copy-back cut short can be run again.

use std::process::Stdio;

use anyhow::{Context, Result, anyhow};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::{PgTarget, PgTools, quote_ident};

/// A table as (schema, name).
pub type Table = (String, String);

/// What one table got back (`copy-back`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRestore {
    pub table: String,
    /// "copied whole" (it was absent) or "missing rows put back".
    pub action: String,
    /// Rows the live table gained.
    pub rows: u64,
    /// Rows in the table as it was at the target.
    pub rows_at_target: u64,
}

/// Bring one table back from the scratch copy into the live database: whole if it is
/// absent there (pg_dump | pg_restore, in one transaction), else the rows it lacks,
/// matched by primary key (rows that exist now are not touched).
pub async fn copy_back(
    config: &Config,
    scratch: &PgTarget,
    live: &PgTarget,
    db: &str,
    table: &Table,
    rename: Option<&Table>,
) -> Result<TableRestore> {
    let mut qualified = qualified_name(table);
    let shown = format!("{}.{}", table.0, table.1);
    let mut from = scratch
        .connect(Some(db))
        .await
        .context("connecting to the scratch copy")?;
    // An earlier, interrupted run of this step may have renamed it in the scratch
    // copy already: it goes on from there.
    let renamed_before = match rename {
        Some(new) if !table_exists(&from, table).await? && table_exists(&from, new).await? => {
            qualified = qualified_name(new);
            true
        }
        _ => false,
    };
    if !renamed_before && !table_exists(&from, table).await? {
        return Err(crate::usage!(
            "{shown} does not exist in the database as it was at the target time — check the table name and --target-time"
        ));
    }
    let at_target = count_rows(&from, &qualified).await?;
    let mut to = live
        .connect(Some(db))
        .await
        .context("connecting to the live database")?;
    let mut whole_as = None;
    if let Some(new) = rename {
        let new_shown = format!("{}.{}", new.0, new.1);
        let new_qualified = qualified_name(new);
        if table_exists(&to, new).await? {
            // Copied by an earlier run of this step, or a name already taken: never
            // written into.
            let rows = count_rows(&to, &new_qualified).await?;
            if rows == at_target {
                return Ok(TableRestore {
                    table: shown,
                    action: format!("already copied whole as {new_shown}"),
                    rows: 0,
                    rows_at_target: at_target as u64,
                });
            }
            return Err(crate::usage!(
                "{new_shown} already exists in the live database — choose another name in --restore-as"
            ));
        }
        if !renamed_before {
            rename_in_scratch(&mut from, table, new).await?;
            crate::process::crash_point("copy-back-renamed");
        }
        qualified = new_qualified;
        whole_as = Some(new_shown);
    }
    if whole_as.is_some() || !table_exists(&to, table).await? {
        copy_whole(config, scratch, live, db, &qualified).await?;
        let now = count_rows(&to, &qualified).await?;
        return Ok(TableRestore {
            table: shown,
            action: match whole_as {
                Some(n) => format!("copied whole as {n}"),
                None => "copied whole (it was absent)".into(),
            },
            rows: now as u64,
            rows_at_target: at_target as u64,
        });
    }
    let inserted = put_back_missing_rows(&from, &mut to, &qualified, &shown).await?;
    Ok(TableRestore {
        table: shown,
        action: "missing rows put back".into(),
        rows: inserted,
        rows_at_target: at_target as u64,
    })
}

/// `"schema"."name"`, quoted for SQL.
fn qualified_name((schema, name): &Table) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

async fn count_rows(client: &tokio_postgres::Client, qualified: &str) -> Result<i64> {
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {qualified}"), &[])
        .await?
        .get(0))
}

async fn table_exists(client: &tokio_postgres::Client, (schema, name): &Table) -> Result<bool> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[schema, name],
        )
        .await?
        .is_some())
}

/// A name derived from `object` for the renamed copy: the old table's name at its
/// start replaced by the new one, within PostgreSQL's 63 bytes.
fn renamed(object: &str, old_table: &str, new_table: &str) -> String {
    let mut name = match object.strip_prefix(old_table) {
        Some(rest) => format!("{new_table}{rest}"),
        None => format!("{new_table}_{object}"),
    };
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// In the scratch copy (thrown away afterwards): give the table, its indexes (and so
/// the constraints they back) and its owned sequences the new names, so that its dump
/// restores beside the live table without a clash.
async fn rename_in_scratch(
    client: &mut tokio_postgres::Client,
    table: &Table,
    (new_schema, new_name): &Table,
) -> Result<()> {
    let (schema, name) = table;
    let qualified = qualified_name(table);
    let tx = client.transaction().await?;
    let names = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    let indexes = names(
        tx.query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = $1::text::regclass",
            &[&qualified],
        )
        .await?,
    );
    let sequences = names(
        tx.query(
            "SELECT s.relname::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid \
             WHERE d.refobjid = $1::text::regclass AND d.classid = 'pg_class'::regclass \
             AND s.relkind = 'S' AND d.deptype IN ('a', 'i')",
            &[&qualified],
        )
        .await?,
    );
    let sch = quote_ident(schema);
    // Indexes first, then sequences.
    for (kind, objects) in [("INDEX", &indexes), ("SEQUENCE", &sequences)] {
        for o in objects {
            tx.batch_execute(&format!(
                "ALTER {kind} {sch}.{} RENAME TO {}",
                quote_ident(o),
                quote_ident(&renamed(o, name, new_name))
            ))
            .await?;
        }
    }
    tx.batch_execute(&format!("ALTER TABLE {qualified} RENAME TO {}", quote_ident(new_name)))
        .await?;
    if new_schema != schema {
        tx.batch_execute(&format!(
            "ALTER TABLE {sch}.{} SET SCHEMA {}",
            quote_ident(new_name),
            quote_ident(new_schema)
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The table `qualified` of the scratch copy, dumped and restored into the live
/// database in one transaction: a failure changes nothing there.
async fn copy_whole(config: &Config, scratch: &PgTarget, live: &PgTarget, db: &str, qualified: &str) -> Result<()> {
    let tools = PgTools::locate(config.postgres.bin_dir.as_deref())?;
    let mut dump = tokio::process::Command::new(tools.path("pg_dump")?);
    dump.args(["--format=custom", "--no-password"])
        .arg(format!("--table={qualified}"))
        .envs(scratch.child_env(Some(db)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut dump = dump.spawn().context("running pg_dump")?;
    let out: Stdio = dump
        .stdout
        .take()
        .ok_or_else(|| anyhow!("pg_dump has no stdout"))?
        .try_into()
        .context("piping pg_dump into pg_restore")?;
    let mut restore = tokio::process::Command::new(tools.path("pg_restore")?);
    restore
        .args(["--single-transaction", "--exit-on-error", "--no-password"])
        .arg(format!("--dbname={}", crate::postgres::conninfo_dbname(db)))
        .envs(live.child_env(Some(db)))
        .stdin(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let restored = restore.output().await.context("running pg_restore")?;
    let dumped = dump.wait_with_output().await?;
    if !dumped.status.success() {
        return Err(anyhow!(
            "pg_dump of the scratch copy failed: {}",
            String::from_utf8_lossy(&dumped.stderr).trim()
        ));
    }
    if !restored.status.success() {
        return Err(anyhow!(
            "pg_restore into the live database failed (nothing was changed): {}",
            String::from_utf8_lossy(&restored.stderr).trim()
        ));
    }
    Ok(())
}

/// The table is present in the live database: put back the rows it lacks, by primary
/// key, in one transaction. How many were inserted.
async fn put_back_missing_rows(
    from: &tokio_postgres::Client,
    to: &mut tokio_postgres::Client,
    qualified: &str,
    shown: &str,
) -> Result<u64> {
    let pk: Vec<String> = to
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if pk.is_empty() {
        return Err(crate::usage!(
            "{shown} exists in the live database and has no primary key, so missing rows cannot be told from present ones — rename or drop the live table and run again to copy it back whole"
        ));
    }
    let columns: Vec<String> = to
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Identity columns GENERATED ALWAYS take the rows' own values back.
    let always_identity: bool = to
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped AND attidentity = 'a')",
            &[&qualified],
        )
        .await?
        .get(0);
    let overriding = if always_identity {
        "OVERRIDING SYSTEM VALUE "
    } else {
        ""
    };
    let cols = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let tx = to.transaction().await?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE pgdr_copy_back ON COMMIT DROP AS SELECT {cols} FROM {qualified} WITH NO DATA"
    ))
    .await?;
    let source = from
        .copy_out(&format!(
            "COPY (SELECT {cols} FROM {qualified}) TO STDOUT (FORMAT binary)"
        ))
        .await
        .context("reading the table from the scratch copy")?;
    let sink = tx
        .copy_in(&format!("COPY pgdr_copy_back ({cols}) FROM STDIN (FORMAT binary)"))
        .await?;
    futures::pin_mut!(source);
    futures::pin_mut!(sink);
    while let Some(chunk) = source.next().await {
        sink.send(chunk?).await?;
    }
    sink.finish().await?;
    let conflict = pk.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO {qualified} ({cols}) {overriding}SELECT {cols} FROM pgdr_copy_back ON CONFLICT ({conflict}) DO NOTHING"
            ),
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_objects_keep_their_suffix_within_63_bytes() {
        assert_eq!(renamed("orders_pkey", "orders", "orders_back"), "orders_back_pkey");
        assert_eq!(renamed("idx_x", "orders", "o2"), "o2_idx_x");
        assert_eq!(renamed(&"t".repeat(60), "t", &"n".repeat(10)).len(), 63);
    }
}

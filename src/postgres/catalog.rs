//! The relation catalog a backup records: per database, the oid, file node,
//! tablespace, kind and name of every user table, index, TOAST table and sequence.
//! WAL records name relations by file node only (`spc/db/relfilenode`); this is what
//! lets `wal-search` say "public.orders" for a table that no longer exists.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use super::Lsn;
use super::conn::db_err;

/// One database's relations, read at `lsn` on `timeline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseCatalog {
    pub name: String,
    pub oid: u32,
    /// The WAL position when the catalog was read (inside the backup).
    pub lsn: Lsn,
    pub timeline: u32,
    pub relations: Vec<RelationEntry>,
}

/// A relation with storage: `kind` is pg_class.relkind (r table, t TOAST, i index,
/// S sequence, m materialised view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationEntry {
    pub oid: u32,
    pub filenode: u32,
    /// The tablespace oid as WAL names it (never 0: the database's default resolved).
    pub tablespace: u32,
    pub kind: String,
    pub schema: String,
    pub name: String,
    /// For an index, its table; for a TOAST table, the table it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
}

impl RelationEntry {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

const QUERY: &str = "
SELECT c.oid::int8,
       pg_relation_filenode(c.oid)::int8,
       (CASE WHEN c.reltablespace = 0
             THEN (SELECT dattablespace FROM pg_database WHERE datname = current_database())
             ELSE c.reltablespace END)::int8,
       c.relkind::text,
       n.nspname::text,
       c.relname::text,
       COALESCE(i.indrelid, t.oid)::int8,
       (SELECT oid FROM pg_database WHERE datname = current_database())::int8,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text,
       (SELECT timeline_id FROM pg_control_checkpoint())::int8
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_index i ON i.indexrelid = c.oid
  LEFT JOIN pg_class t ON t.reltoastrelid = c.oid
 WHERE c.oid >= 16384
   AND c.relkind IN ('r', 't', 'i', 'S', 'm')
   AND c.relpersistence <> 't'
   AND pg_relation_filenode(c.oid) IS NOT NULL
 ORDER BY c.oid";

/// Read the catalog of the database `client` is connected to.
pub async fn read<C: GenericClient>(client: &C, name: &str) -> Result<DatabaseCatalog> {
    let what = format!("reading the relation catalog of database {name:?}");
    let rows = client.query(QUERY, &[]).await.map_err(db_err(what.clone()))?;
    let mut relations = Vec::with_capacity(rows.len());
    let mut oid = None;
    let mut lsn = None;
    let mut timeline = None;
    for row in &rows {
        let num = |i: usize| -> u32 { row.get::<_, Option<i64>>(i).unwrap_or(0) as u32 };
        oid.get_or_insert(num(7));
        timeline.get_or_insert(num(9));
        if lsn.is_none() {
            let text: Option<String> = row.get(8);
            lsn = text.and_then(|t| t.parse::<Lsn>().ok());
        }
        relations.push(RelationEntry {
            oid: num(0),
            filenode: num(1),
            tablespace: num(2),
            kind: row.get(3),
            schema: row.get(4),
            name: row.get(5),
            owner: row.get::<_, Option<i64>>(6).map(|o| o as u32),
        });
    }
    // A database without user relations still needs its oid and position.
    if rows.is_empty() {
        let row = client
            .query_one(
                "SELECT (SELECT oid FROM pg_database WHERE datname = current_database())::int8,
                        (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                              ELSE pg_current_wal_lsn() END)::text,
                        (SELECT timeline_id FROM pg_control_checkpoint())::int8",
                &[],
            )
            .await
            .map_err(db_err(what))?;
        oid = Some(row.get::<_, i64>(0) as u32);
        lsn = row.get::<_, Option<String>>(1).and_then(|t| t.parse().ok());
        timeline = Some(row.get::<_, i64>(2) as u32);
    }
    Ok(DatabaseCatalog {
        name: name.to_string(),
        oid: oid.unwrap_or(0),
        lsn: lsn.unwrap_or(Lsn(0)),
        timeline: timeline.unwrap_or(0),
        relations,
    })
}

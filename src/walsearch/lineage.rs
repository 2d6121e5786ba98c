//! Following tables through WAL: which file each table lives in (from a backup's
//! catalog, then through every TRUNCATE, VACUUM FULL, CLUSTER and rewrite since), and
//! what each committed transaction did to them.
//!
//! A transaction that gives a table new storage drops the old files at commit (the
//! commit record lists them) and creates the new ones first (Storage CREATE records
//! with its xid). PostgreSQL creates a table's new heap before its TOAST table and
//! indexes, and tables in statement order, while the commit lists each table's
//! dropped files together, the last-scheduled table first. That pairs a table's old
//! files with its new ones exactly when the counts agree; when they do not (a DROP and
//! a TRUNCATE in one transaction, files this catalog never saw), the change is
//! reported as ambiguous and the table is no longer followed, never guessed.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::waldump::{HeapOp, Record, RelFile};
use crate::postgres::Lsn;
use crate::postgres::catalog::DatabaseCatalog;

/// A table followed through WAL.
#[derive(Debug, Clone)]
pub struct Table {
    pub database: String,
    pub schema: String,
    pub name: String,
    pub oid: u32,
    /// Its heap file now; `None` once dropped or lost track of.
    heap: Option<RelFile>,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Dropped,
    Truncated,
    /// New storage filled with the old rows (VACUUM FULL, CLUSTER): nothing lost.
    Rewritten,
    Deleted,
    Updated,
}

impl Change {
    pub fn as_str(&self) -> &'static str {
        match self {
            Change::Dropped => "dropped",
            Change::Truncated => "truncated",
            Change::Rewritten => "rewritten",
            Change::Deleted => "deleted",
            Change::Updated => "updated",
        }
    }
}

/// What one committed transaction did to one table.
#[derive(Debug, Clone)]
pub struct Event {
    pub table: usize,
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub time: DateTime<Utc>,
    /// The commit before this one (any transaction): a target that keeps it.
    pub previous_commit: Option<Lsn>,
    pub change: Change,
    /// Rows deleted or updated (for those changes).
    pub rows: u64,
    /// Rows written into the new file in the same transaction (a TRUNCATE followed by
    /// INSERT, or a rewriting ALTER TABLE).
    pub refilled: u64,
    /// Why this is not certain, if it is not.
    pub ambiguous: Option<String>,
}

#[derive(Debug, Default)]
struct Xact {
    creates: Vec<RelFile>,
    new_pages: HashSet<RelFile>,
    /// (deleted, updated, inserted) per file.
    ops: HashMap<RelFile, [u64; 3]>,
}

impl Xact {
    fn absorb(&mut self, other: Xact) {
        self.creates.extend(other.creates);
        self.new_pages.extend(other.new_pages);
        for (f, o) in other.ops {
            let mine = self.ops.entry(f).or_default();
            for i in 0..3 {
                mine[i] += o[i];
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Lineage {
    pub tables: Vec<Table>,
    /// Every current file of a followed table (heap, TOAST, indexes) → the table.
    files: HashMap<RelFile, usize>,
    /// Current heap files → the table.
    heaps: HashMap<RelFile, usize>,
    pending: HashMap<u32, Xact>,
    last_commit: Option<Lsn>,
    /// Tables no longer followed, and why (said once each).
    pub warnings: Vec<String>,
    pub restore_points: Vec<(Lsn, String, Option<DateTime<Utc>>)>,
    last_commit_time: Option<DateTime<Utc>>,
}

impl Lineage {
    /// Start from backups' catalogs (one per database).
    pub fn from_catalogs(catalogs: &[DatabaseCatalog]) -> Lineage {
        let mut lineage = Lineage::default();
        for db in catalogs {
            let by_oid: HashMap<u32, &crate::postgres::catalog::RelationEntry> =
                db.relations.iter().map(|r| (r.oid, r)).collect();
            let mut table_of: HashMap<u32, usize> = HashMap::new();
            for r in db.relations.iter().filter(|r| r.kind == "r" || r.kind == "m") {
                let file = (r.tablespace, db.oid, r.filenode);
                let id = lineage.tables.len();
                lineage.tables.push(Table {
                    database: db.name.clone(),
                    schema: r.schema.clone(),
                    name: r.name.clone(),
                    oid: r.oid,
                    heap: Some(file),
                });
                lineage.heaps.insert(file, id);
                lineage.files.insert(file, id);
                table_of.insert(r.oid, id);
            }
            // TOAST tables, their indexes and the tables' indexes belong to a table:
            // follow owners up (an index's table, a TOAST table's table).
            for r in &db.relations {
                if r.kind == "r" || r.kind == "m" {
                    continue;
                }
                let mut owner = r.owner;
                let mut hops = 0;
                while let Some(o) = owner {
                    if let Some(id) = table_of.get(&o) {
                        lineage.files.insert((r.tablespace, db.oid, r.filenode), *id);
                        break;
                    }
                    owner = by_oid.get(&o).and_then(|p| p.owner);
                    hops += 1;
                    if hops > 3 {
                        break;
                    }
                }
            }
        }
        lineage
    }

    /// Tables named `schema.name` (or `name` in any schema), in `database` if given.
    pub fn find(&self, wanted: &str, database: Option<&str>) -> Vec<usize> {
        let (schema, name) = match wanted.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, wanted),
        };
        (0..self.tables.len())
            .filter(|&i| {
                let t = &self.tables[i];
                t.name == name && schema.is_none_or(|s| t.schema == s) && database.is_none_or(|d| t.database == d)
            })
            .collect()
    }

    /// Feed one record; a commit returns what it did to followed tables.
    pub fn apply(&mut self, record: Record) -> Vec<Event> {
        match record {
            Record::Create { xid, file } => {
                self.pending.entry(xid).or_default().creates.push(file);
            }
            Record::Heap { xid, op, file } => {
                let x = self.pending.entry(xid).or_default();
                if self.heaps.contains_key(&file) || x.creates.contains(&file) {
                    let slot = match op {
                        HeapOp::Delete => 0,
                        HeapOp::Update => 1,
                        HeapOp::Insert => 2,
                    };
                    x.ops.entry(file).or_default()[slot] += 1;
                } else if x.creates.is_empty() && x.ops.is_empty() && x.new_pages.is_empty() {
                    // Nothing to remember about this transaction.
                    self.pending.remove(&xid);
                }
            }
            Record::NewPage { xid, file } => {
                if let Some(x) = self.pending.get_mut(&xid)
                    && x.creates.contains(&file)
                {
                    x.new_pages.insert(file);
                }
            }
            Record::Abort { xid, subxacts } => {
                self.pending.remove(&xid);
                for s in subxacts {
                    self.pending.remove(&s);
                }
            }
            Record::RestorePoint { lsn, name } => {
                self.restore_points.push((lsn, name, None));
            }
            Record::Commit {
                xid,
                lsn,
                time,
                dropped,
                subxacts,
            } => {
                let mut x = self.pending.remove(&xid).unwrap_or_default();
                for s in subxacts {
                    if let Some(sub) = self.pending.remove(&s) {
                        x.absorb(sub);
                    }
                }
                let previous = self.last_commit.replace(lsn);
                self.last_commit_time = Some(time);
                return self.commit(xid, lsn, time, previous, x, dropped);
            }
        }
        Vec::new()
    }

    /// The time of the last commit read (restore points are placed after it).
    pub fn last_commit_time(&self) -> Option<DateTime<Utc>> {
        self.last_commit_time
    }

    fn commit(
        &mut self,
        xid: u32,
        lsn: Lsn,
        time: DateTime<Utc>,
        previous_commit: Option<Lsn>,
        x: Xact,
        dropped: Vec<RelFile>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let event = |table, change, rows| Event {
            table,
            xid,
            commit_lsn: lsn,
            time,
            previous_commit,
            change,
            rows,
            refilled: 0,
            ambiguous: None,
        };
        // Row changes, against the files as they were during the transaction.
        let mut per_table: HashMap<usize, [u64; 3]> = HashMap::new();
        for (file, ops) in &x.ops {
            if let Some(&t) = self.heaps.get(file) {
                let e = per_table.entry(t).or_default();
                e[0] += ops[0];
                e[1] += ops[1];
            }
        }
        let mut ids: Vec<usize> = per_table.keys().copied().collect();
        ids.sort_unstable();
        for t in ids {
            let [deleted, updated, _] = per_table[&t];
            if deleted > 0 {
                events.push(event(t, Change::Deleted, deleted));
            }
            if updated > 0 {
                events.push(event(t, Change::Updated, updated));
            }
        }

        // Files created and dropped within the transaction cancel out.
        let created: HashSet<RelFile> = x.creates.iter().copied().collect();
        let dropped: Vec<RelFile> = dropped.into_iter().filter(|f| !created.contains(f)).collect();
        let dropped_set: HashSet<RelFile> = dropped.iter().copied().collect();
        let creates: Vec<RelFile> = x.creates.iter().copied().filter(|f| !dropped_set.contains(f)).collect();

        // Tables whose heap this commit dropped, in the order their files were
        // scheduled (the reverse of the commit's list), with how many of each
        // table's files went.
        let mut order: Vec<usize> = Vec::new();
        let mut counts: HashMap<usize, usize> = HashMap::new();
        let mut unknown_dropped = 0usize;
        for f in &dropped {
            match self.files.get(f) {
                Some(&t) => {
                    if !order.contains(&t) {
                        order.push(t);
                    }
                    *counts.entry(t).or_default() += 1;
                }
                None => unknown_dropped += 1,
            }
        }
        order.retain(|t| self.tables[*t].heap.is_some_and(|h| dropped_set.contains(&h)));
        order.reverse();
        for f in &dropped {
            self.files.remove(f);
            self.heaps.remove(f);
        }
        if order.is_empty() {
            return events;
        }
        let needed: usize = order.iter().map(|t| counts[t]).sum();
        // A truncation or rewrite gives each of the table's files a new one, and
        // nothing else: exactly as many new files as it dropped. A transaction that
        // also creates other files (DROP TABLE t; CREATE TABLE u) cannot be told from
        // it, and is ambiguous, never "truncated".
        if creates.is_empty() {
            for t in order {
                self.tables[t].heap = None;
                events.push(event(t, Change::Dropped, 0));
            }
        } else if needed == creates.len() && unknown_dropped == 0 {
            let mut next = 0;
            for t in order {
                let start = next.min(creates.len() - 1);
                let end = (start + counts[&t]).min(creates.len());
                next = end;
                let heap = creates[start];
                let refilled = x.ops.get(&heap).map(|o| o[2]).unwrap_or(0);
                let change = if x.new_pages.contains(&heap) {
                    Change::Rewritten
                } else {
                    Change::Truncated
                };
                // The new files are the table's now (the heap first, then the rest).
                for f in &creates[start..end.max(start + 1)] {
                    self.files.insert(*f, t);
                }
                self.heaps.insert(heap, t);
                self.tables[t].heap = Some(heap);
                let mut e = event(t, change, 0);
                e.refilled = refilled;
                events.push(e);
            }
        } else {
            let names: Vec<String> = order.iter().map(|t| self.tables[*t].qualified()).collect();
            let why = format!(
                "transaction {xid} dropped the files of {} and created {} new file(s): which table was dropped and which truncated cannot be told apart",
                names.join(", "),
                creates.len()
            );
            for t in order {
                self.tables[t].heap = None;
                self.warnings.push(format!(
                    "{} is not followed past transaction {xid} ({lsn}): its new file is not known",
                    self.tables[t].qualified()
                ));
                let mut e = event(t, Change::Truncated, 0);
                e.ambiguous = Some(why.clone());
                events.push(e);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::catalog::RelationEntry;
    use crate::walsearch::waldump::parse;

    fn rel(oid: u32, kind: &str, name: &str, owner: Option<u32>) -> RelationEntry {
        RelationEntry {
            oid,
            filenode: oid,
            tablespace: 1663,
            kind: kind.into(),
            schema: "public".into(),
            name: name.into(),
            owner,
        }
    }

    /// The catalog of the session that printed the WAL below: t1 (16384, TOAST
    /// 16387 with index 16388, pkey 16389) and t2 (16391, 16394, 16395, 16396).
    fn lineage() -> Lineage {
        Lineage::from_catalogs(&[DatabaseCatalog {
            name: "postgres".into(),
            oid: 5,
            lsn: Lsn(0),
            timeline: 1,
            relations: vec![
                rel(16384, "r", "t1", None),
                rel(16387, "t", "pg_toast_16384", Some(16384)),
                rel(16388, "i", "pg_toast_16384_index", Some(16387)),
                rel(16389, "i", "t1_pkey", Some(16384)),
                rel(16391, "r", "t2", None),
                rel(16394, "t", "pg_toast_16391", Some(16391)),
                rel(16395, "i", "pg_toast_16391_index", Some(16394)),
                rel(16396, "i", "t2_pkey", Some(16391)),
            ],
        }])
    }

    fn line(rmgr: &str, xid: u32, lsn: u64, desc: &str) -> Record {
        parse(&format!(
            "rmgr: {rmgr} len (rec/tot): 1/1, tx: {xid}, lsn: 0/{lsn:08X}, prev 0/00000000, desc: {desc}"
        ))
        .expect("a record")
    }

    fn commit(xid: u32, lsn: u64, rels: &str) -> Record {
        let rels = if rels.is_empty() {
            String::new()
        } else {
            format!("; rels: {rels}")
        };
        line(
            "Transaction",
            xid,
            lsn,
            &format!("COMMIT 2026-12-05 06:55:20.000000 UTC{rels}"),
        )
    }

    fn create(xid: u32, lsn: u64, node: u32) -> Record {
        line("Storage", xid, lsn, &format!("CREATE base/5/{node}"))
    }

    fn changes(events: &[Event], l: &Lineage) -> Vec<(String, Change, u64)> {
        events
            .iter()
            .map(|e| (l.tables[e.table].name.clone(), e.change, e.rows))
            .collect()
    }

    /// The sequence the pg_waldump session of 2026-12-05 recorded: VACUUM FULL t2,
    /// TRUNCATE t2, DELETE from t1, an UPDATE in a subtransaction, TRUNCATE t1, t2,
    /// DROP TABLE t1.
    #[test]
    fn follows_tables_through_rewrites_truncates_and_drops() {
        let mut l = lineage();
        // VACUUM FULL t2: new heap 16398 filled page by page.
        for (i, node) in [16398, 16401, 16402, 16403].into_iter().enumerate() {
            assert!(l.apply(create(725, 0x100 + i as u64, node)).is_empty());
        }
        l.apply(line("XLOG", 725, 0x200, "FPI , blkref #0: rel 1663/5/16398 blk 0 FPW"));
        let e = l.apply(commit(
            725,
            0x300,
            "base/5/16391 base/5/16394 base/5/16395 base/5/16396",
        ));
        assert_eq!(changes(&e, &l), vec![("t2".into(), Change::Rewritten, 0)]);
        // TRUNCATE t2: drops the files VACUUM FULL made.
        for (i, node) in [16404, 16405, 16406, 16407].into_iter().enumerate() {
            l.apply(create(726, 0x400 + i as u64, node));
        }
        let e = l.apply(commit(
            726,
            0x500,
            "base/5/16402 base/5/16403 base/5/16401 base/5/16398",
        ));
        assert_eq!(changes(&e, &l), vec![("t2".into(), Change::Truncated, 0)]);
        assert_eq!(e[0].previous_commit, Some(Lsn(0x300)));
        // DELETE FROM t1 WHERE id % 3 = 0: three rows here.
        for i in 0..3 {
            l.apply(line(
                "Heap",
                727,
                0x600 + i,
                "DELETE off 3 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/16384 blk 0",
            ));
        }
        // A row of someone else's table, and a transaction that rolls back.
        l.apply(line(
            "Heap",
            740,
            0x640,
            "DELETE off 3 flags 0x00, blkref #0: rel 1663/5/99999 blk 0",
        ));
        l.apply(line(
            "Heap",
            741,
            0x650,
            "DELETE off 3 flags 0x00, blkref #0: rel 1663/5/16384 blk 0",
        ));
        l.apply(line("Transaction", 741, 0x660, "ABORT 2026-12-05 06:55:20.000000 UTC"));
        let e = l.apply(commit(727, 0x700, ""));
        assert_eq!(changes(&e, &l), vec![("t1".into(), Change::Deleted, 3)]);
        // An UPDATE inside a subtransaction counts for its top-level commit.
        l.apply(line(
            "Heap",
            729,
            0x800,
            "HOT_UPDATE off 1 xmax 729 flags 0x20 ; new off 98 xmax 0, blkref #0: rel 1663/5/16384 blk 0",
        ));
        let e = l.apply(line(
            "Transaction",
            728,
            0x900,
            "COMMIT 2026-12-05 06:55:20.635588 UTC; subxacts: 729",
        ));
        assert_eq!(changes(&e, &l), vec![("t1".into(), Change::Updated, 1)]);
        assert_eq!(e[0].xid, 728);
        // TRUNCATE t1, t2: t1's new files first (statement order), listed last.
        for (i, node) in (16408..=16415).enumerate() {
            l.apply(create(730, 0xA00 + i as u64, node));
        }
        l.apply(line("XLOG", 730, 0xB00, "FPI , blkref #0: rel 1663/5/16410 blk 0 FPW"));
        let e = l.apply(commit(
            730,
            0xC00,
            "base/5/16407 base/5/16406 base/5/16405 base/5/16404 base/5/16388 base/5/16389 base/5/16387 base/5/16384",
        ));
        assert_eq!(
            changes(&e, &l),
            vec![("t1".into(), Change::Truncated, 0), ("t2".into(), Change::Truncated, 0)]
        );
        assert_eq!(l.tables[0].heap, Some((1663, 5, 16408)));
        assert_eq!(l.tables[1].heap, Some((1663, 5, 16412)));
        // Rows deleted from t1's new file are found under its name.
        l.apply(line(
            "Heap",
            735,
            0xC50,
            "DELETE off 1 flags 0x00, blkref #0: rel 1663/5/16408 blk 0",
        ));
        let e = l.apply(commit(735, 0xC60, ""));
        assert_eq!(changes(&e, &l), vec![("t1".into(), Change::Deleted, 1)]);
        // DROP TABLE t1: its files go, nothing new.
        let e = l.apply(commit(
            731,
            0xD00,
            "base/5/16408 base/5/16409 base/5/16411 base/5/16410",
        ));
        assert_eq!(changes(&e, &l), vec![("t1".into(), Change::Dropped, 0)]);
        assert_eq!(l.tables[0].heap, None);
        assert!(l.warnings.is_empty());
        assert!(l.pending.is_empty(), "{:?}", l.pending.keys());
    }

    #[test]
    fn a_drop_and_a_truncate_in_one_transaction_are_ambiguous() {
        let mut l = lineage();
        for (i, node) in [16500, 16501, 16502, 16503].into_iter().enumerate() {
            l.apply(create(900, 0x100 + i as u64, node));
        }
        let e = l.apply(commit(
            900,
            0x200,
            "base/5/16391 base/5/16394 base/5/16395 base/5/16396 base/5/16384 base/5/16387 base/5/16388 base/5/16389",
        ));
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.ambiguous.is_some()));
        assert_eq!(l.warnings.len(), 2);
        assert_eq!(l.find("public.t1", None), vec![0]);
        assert_eq!(l.find("t2", Some("postgres")), vec![1]);
        assert!(l.find("t2", Some("other")).is_empty());
    }

    /// Issue 25: DROP TABLE t1 and a CREATE TABLE of something else in one
    /// transaction. Before, the one dropped table took the new file as its heap and
    /// was reported "truncated" (and the other table's later changes under its name).
    #[test]
    fn a_drop_with_other_files_created_is_ambiguous_not_truncated() {
        let mut l = lineage();
        // t1's four files go; two unrelated files (a new table and its key) come.
        l.apply(create(901, 0x100, 16600));
        l.apply(create(901, 0x101, 16601));
        let e = l.apply(commit(
            901,
            0x200,
            "base/5/16384 base/5/16387 base/5/16388 base/5/16389",
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].ambiguous.is_some(), "{e:?}");
        assert_ne!(l.tables[0].heap, Some((1663, 5, 16600)));
        assert_eq!(l.tables[0].heap, None);
    }
}

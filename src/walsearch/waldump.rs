//! Lines of `pg_waldump` output, read into the few record kinds wal-search needs.
//! pgdr does not decode WAL records: PostgreSQL's own `pg_waldump` does, and this
//! reads its text (15 and newer; `TZ=UTC` so commit times print in UTC).

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::postgres::Lsn;

/// A relation's file as WAL names it: tablespace, database, file node.
pub type RelFile = (u32, u32, u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A transaction committed: its time, the files it dropped at commit, its
    /// committed subtransactions.
    Commit {
        xid: u32,
        lsn: Lsn,
        time: DateTime<Utc>,
        dropped: Vec<RelFile>,
        subxacts: Vec<u32>,
    },
    /// A transaction (or subtransaction) rolled back, with its subtransactions.
    Abort { xid: u32, subxacts: Vec<u32> },
    /// New storage for a relation (CREATE TABLE, TRUNCATE, VACUUM FULL, CLUSTER,
    /// a rewriting ALTER TABLE, an index build).
    Create { xid: u32, file: RelFile },
    /// A row change on a heap page.
    Heap { xid: u32, op: HeapOp, file: RelFile },
    /// A page written whole into a file (how VACUUM FULL and CLUSTER fill the new file).
    NewPage { xid: u32, file: RelFile },
    /// `pg_create_restore_point`.
    RestorePoint { lsn: Lsn, name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapOp {
    Delete,
    Update,
    Insert,
}

/// The fixed part of a line: `rmgr: X len (rec/tot): a/b, tx: N, lsn: L, prev P, desc: ...`.
struct Line<'a> {
    rmgr: &'a str,
    xid: u32,
    lsn: Lsn,
    /// The record kind, e.g. `COMMIT`, `DELETE`, `CREATE`.
    kind: &'a str,
    /// Everything after the kind.
    rest: &'a str,
}

fn split_line(line: &str) -> Option<Line<'_>> {
    let rmgr = line.strip_prefix("rmgr: ")?.split_whitespace().next()?;
    let after_tx = &line[line.find(", tx:")? + 5..];
    let xid = after_tx.split(',').next()?.trim().parse().ok()?;
    let after_lsn = &line[line.find(", lsn: ")? + 7..];
    let lsn = after_lsn.split(',').next()?.trim().parse().ok()?;
    let desc = &line[line.find(", desc: ")? + 8..];
    let (kind, rest) = desc.split_once(' ').unwrap_or((desc, ""));
    Some(Line {
        rmgr,
        xid,
        lsn,
        kind: kind.trim_end_matches(','),
        rest,
    })
}

/// The LSN of a record line (every line pg_waldump prints for a record has one).
pub fn lsn_of(line: &str) -> Option<Lsn> {
    let at = line.find(", lsn: ")? + 7;
    line[at..].split(',').next()?.trim().parse().ok()
}

/// Parse one line; `None` for lines of no interest (or not a record line at all).
pub fn parse(line: &str) -> Option<Record> {
    let l = split_line(line)?;
    let kind = l.kind.strip_suffix("+INIT").unwrap_or(l.kind);
    match (l.rmgr, kind) {
        ("Transaction", "COMMIT") => commit(l.xid, l.lsn, l.rest),
        ("Transaction", "COMMIT_PREPARED") => {
            let (xid, rest) = l.rest.split_once(": ")?;
            commit(xid.trim().parse().ok()?, l.lsn, rest)
        }
        ("Transaction", "ABORT") => Some(Record::Abort {
            xid: l.xid,
            subxacts: field(l.rest, "subxacts").map(numbers).unwrap_or_default(),
        }),
        ("Transaction", "ABORT_PREPARED") => {
            let (xid, rest) = l.rest.split_once(": ")?;
            Some(Record::Abort {
                xid: xid.trim().parse().ok()?,
                subxacts: field(rest, "subxacts").map(numbers).unwrap_or_default(),
            })
        }
        ("Storage", "CREATE") => Some(Record::Create {
            xid: l.xid,
            file: rel_path(l.rest.split_whitespace().next()?)?,
        }),
        ("Heap", "DELETE") => heap(&l, HeapOp::Delete),
        ("Heap", "UPDATE" | "HOT_UPDATE") => heap(&l, HeapOp::Update),
        ("Heap", "INSERT") | ("Heap2", "MULTI_INSERT") => heap(&l, HeapOp::Insert),
        ("XLOG", "FPI") => Some(Record::NewPage {
            xid: l.xid,
            file: first_blkref(l.rest)?,
        }),
        ("XLOG", "RESTORE_POINT") => Some(Record::RestorePoint {
            lsn: l.lsn,
            name: l.rest.trim_end().to_string(),
        }),
        _ => None,
    }
}

fn heap(l: &Line<'_>, op: HeapOp) -> Option<Record> {
    Some(Record::Heap {
        xid: l.xid,
        op,
        file: first_blkref(l.rest)?,
    })
}

fn commit(xid: u32, lsn: Lsn, rest: &str) -> Option<Record> {
    let stamp = rest.split(';').next()?.trim();
    let time = NaiveDateTime::parse_from_str(stamp.strip_suffix(" UTC")?, "%Y-%m-%d %H:%M:%S%.f")
        .ok()?
        .and_utc();
    let dropped = field(rest, "rels")
        .map(|r| r.split_whitespace().filter_map(rel_path).collect())
        .unwrap_or_default();
    Some(Record::Commit {
        xid,
        lsn,
        time,
        dropped,
        subxacts: field(rest, "subxacts").map(numbers).unwrap_or_default(),
    })
}

/// The value of `; name: value` in a commit description.
fn field<'a>(rest: &'a str, name: &str) -> Option<&'a str> {
    rest.split("; ")
        .find_map(|part| part.strip_prefix(name)?.strip_prefix(": "))
}

fn numbers(list: &str) -> Vec<u32> {
    list.split_whitespace().filter_map(|n| n.parse().ok()).collect()
}

/// A relation path as `relpathperm` prints it: `base/DB/NODE`, `global/NODE`, or
/// `pg_tblspc/SPC/PG_.../DB/NODE`.
pub fn rel_path(path: &str) -> Option<RelFile> {
    let parts: Vec<&str> = path.split('/').collect();
    let num = |s: &str| s.parse::<u32>().ok();
    match parts.as_slice() {
        ["base", db, node] => Some((1663, num(db)?, num(node)?)),
        ["global", node] => Some((1664, 0, num(node)?)),
        ["pg_tblspc", spc, _, db, node] => Some((num(spc)?, num(db)?, num(node)?)),
        _ => None,
    }
}

/// The main-fork relation of block reference #0: `blkref #0: rel SPC/DB/NODE [fork F] blk N`.
fn first_blkref(rest: &str) -> Option<RelFile> {
    let at = rest.find("blkref #0: rel ")? + "blkref #0: rel ".len();
    let mut words = rest[at..].split_whitespace();
    let rel = words.next()?;
    if words.next() == Some("fork") {
        return None;
    }
    let mut nums = rel.trim_end_matches(',').split('/').map(|n| n.parse::<u32>().ok());
    Some((nums.next()??, nums.next()??, nums.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as pg_waldump 15 prints them.
    const COMMIT: &str = "rmgr: Transaction len (rec/tot):    665/   665, tx:        730, lsn: 0/01593D80, prev 0/01593CF0, desc: COMMIT 2026-12-05 06:55:20.637762 UTC; rels: base/5/16407 base/5/16406 pg_tblspc/16500/PG_15_202209061/5/16501; dropped stats: 2/5/16402; subxacts: 731 732; inval msgs: catcache 55 relcache 16391";

    #[test]
    fn commits_with_dropped_files_and_subtransactions() {
        let Some(Record::Commit {
            xid,
            lsn,
            time,
            dropped,
            subxacts,
        }) = parse(COMMIT)
        else {
            panic!("not a commit")
        };
        assert_eq!(xid, 730);
        assert_eq!(lsn, Lsn(0x1593D80));
        assert_eq!(time, "2026-12-05T06:55:20.637762Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(dropped, vec![(1663, 5, 16407), (1663, 5, 16406), (16500, 5, 16501)]);
        assert_eq!(subxacts, vec![731, 732]);
        let plain = "rmgr: Transaction len (rec/tot):     34/    34, tx:        727, lsn: 0/015928A0, prev 0/01592868, desc: COMMIT 2026-12-05 06:55:20.635052 UTC";
        assert!(matches!(parse(plain), Some(Record::Commit { xid: 727, ref dropped, .. }) if dropped.is_empty()));
        let prepared = "rmgr: Transaction len (rec/tot):     50/    50, tx:          0, lsn: 0/0159DE08, prev 0/0159D928, desc: COMMIT_PREPARED 741: 2026-12-05 06:55:21.000001 UTC; rels: base/5/16420";
        assert!(
            matches!(parse(prepared), Some(Record::Commit { xid: 741, ref dropped, .. }) if dropped == &vec![(1663, 5, 16420)])
        );
    }

    #[test]
    fn row_changes_creates_pages_and_restore_points() {
        let delete = "rmgr: Heap        len (rec/tot):     59/  8231, tx:        727, lsn: 0/01579538, prev 0/015793C8, desc: DELETE off 3 flags 0x00 KEYS_UPDATED , blkref #0: rel 1663/5/16384 blk 0 FPW";
        assert_eq!(
            parse(delete),
            Some(Record::Heap {
                xid: 727,
                op: HeapOp::Delete,
                file: (1663, 5, 16384)
            })
        );
        let hot = "rmgr: Heap        len (rec/tot):     68/    68, tx:        729, lsn: 0/01592940, prev 0/015928C8, desc: HOT_UPDATE off 1 xmax 729 flags 0x20 ; new off 98 xmax 0, blkref #0: rel 1663/5/16384 blk 0";
        assert!(matches!(parse(hot), Some(Record::Heap { op: HeapOp::Update, .. })));
        let init = "rmgr: Heap        len (rec/tot):     59/    59, tx:        800, lsn: 0/01600000, prev 0/015FFF00, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16400 blk 0";
        assert!(matches!(parse(init), Some(Record::Heap { op: HeapOp::Insert, .. })));
        // PostgreSQL 16 prints "key: value" descriptions; the kind still leads.
        let pg16 = "rmgr: Heap        len (rec/tot):     54/    54, tx:        744, lsn: 0/0153F8A8, prev 0/0153F870, desc: DELETE xmax: 744, off: 2, infobits: [KEYS_UPDATED], flags: 0x00, blkref #0: rel 1663/5/16388 blk 0";
        assert!(matches!(
            parse(pg16),
            Some(Record::Heap {
                xid: 744,
                op: HeapOp::Delete,
                file: (1663, 5, 16388)
            })
        ));
        let create = "rmgr: Storage     len (rec/tot):     42/    42, tx:        725, lsn: 0/01558DA8, prev 0/01558D78, desc: CREATE base/5/16398";
        assert_eq!(
            parse(create),
            Some(Record::Create {
                xid: 725,
                file: (1663, 5, 16398)
            })
        );
        let fpi = "rmgr: XLOG        len (rec/tot):     49/  3673, tx:        725, lsn: 0/01573E38, prev 0/01573E08, desc: FPI , blkref #0: rel 1663/5/16398 blk 0 FPW";
        assert!(matches!(
            parse(fpi),
            Some(Record::NewPage {
                xid: 725,
                file: (1663, 5, 16398)
            })
        ));
        let vm = "rmgr: Heap        len (rec/tot):     54/    54, tx:        727, lsn: 0/01579538, prev 0/015793C8, desc: DELETE off 3 flags 0x00, blkref #0: rel 1663/5/16384 fork vm blk 0";
        assert_eq!(parse(vm), None);
        let rp = "rmgr: XLOG        len (rec/tot):     98/    98, tx:          0, lsn: 0/0159DE08, prev 0/0159D928, desc: RESTORE_POINT before-upgrade";
        assert_eq!(
            parse(rp),
            Some(Record::RestorePoint {
                lsn: Lsn(0x159DE08),
                name: "before-upgrade".into()
            })
        );
        assert_eq!(parse("pg_waldump: error: something"), None);
        assert_eq!(parse("rmgr: Heap len"), None);
    }
}

//! Incremental physical backups, driven by the WAL.
//!
//! Every block PostgreSQL changes is named by a WAL record (`blkref`), with the
//! exceptions listed below. So the blocks that changed since a parent backup started
//! are the ones named in the WAL from the parent's start LSN to this backup's: they
//! are read and stored; every other block of a file the parent had is referred to
//! where the chain already holds it. Blocks changed after this backup starts are
//! replayed from WAL on restore, as for a full backup (`pg_backup_start` forces full
//! page writes).
//!
//! What the WAL does not name block by block, and is therefore stored whole:
//! - files the parent did not have;
//! - relations created or truncated in the window (`Storage CREATE`/`TRUNCATE`), and
//!   every file of a database copied with `CREATE DATABASE … STRATEGY FILE_COPY`;
//! - free-space maps (never WAL-logged), visibility maps (bits cleared by heap
//!   records without a block reference), init forks;
//! - everything that is not a relation file (`pg_control`, `pg_xact`, maps, …);
//! - with any record pgdr cannot read, every file.
//!
//! Reading the WAL is `pg_waldump`'s job (PostgreSQL's own decoder); this module reads
//! its lines. PostgreSQL 17's WAL summaries would be a second source of the same
//! [`Changes`]; the planning below does not care where they came from.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::postgres::datadir::{FileToCopy, Listing};
use crate::repo::manifest::{FileRecord, PhysicalInfo};

/// The relation fork a file or a block reference belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fork {
    Main,
    Fsm,
    Vm,
    Init,
}

/// A relation by its file node: tablespace, database, relfilenode.
pub type RelNode = (u32, u32, u32);

/// Block size and blocks per file segment, as the server reports them.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub block_size: u64,
    pub blocks_per_segment: u64,
}

/// What the WAL of the window changed.
#[derive(Debug, Default)]
pub struct Changes {
    blocks: HashMap<(RelNode, Fork), Vec<u32>>,
    /// Relations created or truncated in the window.
    recreated: HashSet<RelNode>,
    /// Databases (tablespace, database) copied at file level.
    copied_dbs: HashSet<(u32, u32)>,
    /// A Storage or Database record pgdr could not read: nothing can be trusted.
    pub unreadable: Option<String>,
    pub records: u64,
}

impl Changes {
    /// Read one line of pg_waldump output.
    pub fn feed(&mut self, line: &str) {
        self.records += 1;
        let desc = line.split_once("desc: ").map(|(_, d)| d).unwrap_or("");
        if line.starts_with("rmgr: Storage ") {
            // CREATE base/5/16384 | TRUNCATE base/5/16384 to 4 blocks flags 7
            let mut words = desc.split_whitespace();
            let (Some(_), Some(path)) = (words.next(), words.next()) else {
                self.unreadable.get_or_insert_with(|| line.to_string());
                return;
            };
            match relation_of_path(path) {
                Some((node, _, _)) => {
                    self.recreated.insert(node);
                }
                None => {
                    self.unreadable.get_or_insert_with(|| line.to_string());
                }
            }
        } else if line.starts_with("rmgr: Database ") && desc.starts_with("CREATE_FILE_COPY") {
            // CREATE_FILE_COPY copy dir 1663/1 to 1663/16398
            let dest = desc.rsplit(' ').next().and_then(|d| {
                let (spc, db) = d.split_once('/')?;
                Some((spc.parse().ok()?, db.parse().ok()?))
            });
            match dest {
                Some(d) => {
                    self.copied_dbs.insert(d);
                }
                None => {
                    self.unreadable.get_or_insert_with(|| line.to_string());
                }
            }
        }
        let mut rest = desc;
        while let Some(at) = rest.find("blkref #") {
            rest = &rest[at + "blkref #".len()..];
            if let Some((node, fork, block)) = blkref(rest) {
                self.blocks.entry((node, fork)).or_default().push(block);
            } else {
                self.unreadable.get_or_insert_with(|| line.to_string());
            }
        }
    }

    /// Sort and de-duplicate the block lists (once, after the last line).
    pub fn settle(&mut self) {
        for list in self.blocks.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
    }
}

/// `N: rel SPC/DB/NODE [fork F] blk B…`, after `blkref #`.
fn blkref(s: &str) -> Option<(RelNode, Fork, u32)> {
    let (_, s) = s.split_once(": rel ")?;
    let mut words = s.split_whitespace();
    let mut nums = words
        .next()?
        .trim_end_matches(',')
        .split('/')
        .map(|n| n.parse::<u32>().ok());
    let node = (nums.next()??, nums.next()??, nums.next()??);
    let mut word = words.next()?;
    let mut fork = Fork::Main;
    if word == "fork" {
        fork = match words.next()? {
            "main" => Fork::Main,
            "fsm" => Fork::Fsm,
            "vm" => Fork::Vm,
            "init" => Fork::Init,
            _ => return None,
        };
        word = words.next()?;
    }
    if word != "blk" {
        return None;
    }
    let block = words.next()?.trim_end_matches(',').parse().ok()?;
    Some((node, fork, block))
}

/// A relation file's node, fork and segment number from its path in the data
/// directory (`base/DB/NODE[_fork][.N]`, `global/…`, `pg_tblspc/SPC/VERSION/DB/…`).
pub fn relation_of_path(path: &str) -> Option<(RelNode, Fork, u32)> {
    let parts: Vec<&str> = path.split('/').collect();
    let num = |s: &str| s.parse::<u32>().ok();
    let (spc, db, name) = match parts.as_slice() {
        ["base", db, name] => (1663, num(db)?, *name),
        ["global", name] => (1664, 0, *name),
        ["pg_tblspc", spc, _, db, name] => (num(spc)?, num(db)?, *name),
        _ => return None,
    };
    let (name, segno) = match name.split_once('.') {
        Some((n, seg)) => (n, num(seg)?),
        None => (name, 0),
    };
    let (node, fork) = match name.split_once('_') {
        Some((n, "fsm")) => (n, Fork::Fsm),
        Some((n, "vm")) => (n, Fork::Vm),
        Some((n, "init")) => (n, Fork::Init),
        Some(_) => return None,
        None => (name, Fork::Main),
    };
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(((spc, db, num(node)?), fork, segno))
}

/// What an incremental backup copies and what it refers to.
#[derive(Debug, Default)]
pub struct Plan {
    /// Read from the data directory and stored in this backup's bundles.
    pub copy: Vec<FileToCopy>,
    /// Entries of older backups that hold the rest.
    pub refs: Vec<FileRecord>,
    /// Files stored whole, counted by reason.
    pub whole: BTreeMap<String, u64>,
    /// Changed blocks stored from files otherwise referred to.
    pub changed_blocks: u64,
    pub referenced_bytes: u64,
    /// Every backup this one descends from, the full one first (`refs` name some).
    pub chain: Vec<String>,
}

/// Why a file is stored whole, or `None` when its blocks can be taken from the WAL.
fn whole_reason(path: &str, parent_size: Option<u64>, changes: &Changes) -> Option<&'static str> {
    if changes.unreadable.is_some() {
        return Some("WAL not fully readable");
    }
    let Some(parent_size) = parent_size else {
        return Some("new since the parent");
    };
    let Some((node, fork, _)) = relation_of_path(path) else {
        return Some("not a relation file");
    };
    if parent_size == 0 {
        return Some("empty in the parent");
    }
    match fork {
        Fork::Fsm => return Some("free-space map"),
        Fork::Vm => return Some("visibility map"),
        Fork::Init => return Some("init fork"),
        Fork::Main => {}
    }
    if changes.recreated.contains(&node) {
        return Some("created or truncated in the WAL");
    }
    if changes.copied_dbs.contains(&(node.0, node.1)) {
        return Some("database copied with FILE_COPY");
    }
    None
}

/// Decide, file by file, what the incremental stores and what it refers to.
/// `parent_label` is the parent backup; its records that already refer further back
/// keep naming where the bytes really are.
pub fn plan(listing: &Listing, parent_label: &str, parent: &PhysicalInfo, changes: &Changes, geo: Geometry) -> Plan {
    let mut by_path: HashMap<&str, Vec<&FileRecord>> = HashMap::new();
    for r in &parent.files {
        by_path.entry(r.path.as_str()).or_default().push(r);
    }
    let mut out = Plan::default();
    // Every backup this one descends from, the full one first: whether or not its
    // bundles are referred to, so the chain's root is always its first.
    let mut chain: Vec<String> = parent.chain().to_vec();
    chain.push(parent_label.to_string());
    for f in &listing.files {
        let records = by_path.get(f.path.as_str());
        let parent_size = records.map(|rs| rs.iter().map(|r| r.end()).max().unwrap_or(0));
        if let Some(reason) = whole_reason(&f.path, parent_size, changes) {
            *out.whole.entry(reason.to_string()).or_default() += 1;
            out.copy.push(f.clone());
            continue;
        }
        let (Some(records), Some(parent_size), Some((node, fork, segno))) =
            (records, parent_size, relation_of_path(&f.path))
        else {
            unreachable!("whole_reason returned None only for relation files the parent had")
        };
        // The byte ranges this backup stores: changed blocks, and any growth.
        let base = segno as u64 * geo.blocks_per_segment;
        let mut changed: Vec<[u64; 2]> = Vec::new();
        if let Some(blocks) = changes.blocks.get(&(node, fork)) {
            let first = blocks.partition_point(|&b| (b as u64) < base);
            for &b in &blocks[first..] {
                let b = b as u64;
                if b >= base + geo.blocks_per_segment {
                    break;
                }
                let start = (b - base) * geo.block_size;
                // Past the parent's end, the growth below takes the whole rest.
                if start >= f.size.min(parent_size) {
                    break;
                }
                out.changed_blocks += 1;
                push_range(&mut changed, [start, (start + geo.block_size).min(f.size)]);
            }
        }
        if f.size > parent_size {
            push_range(&mut changed, [parent_size, f.size]);
        }
        let kept = subtract([0, parent_size.min(f.size)], &changed);
        for r in records {
            let ranges = intersect(&r.writes(), &kept);
            if ranges.is_empty() {
                continue;
            }
            let bytes: u64 = ranges.iter().map(|x| x[1] - x[0]).sum();
            out.referenced_bytes += bytes;
            let whole_entry = r.ranges.is_none() && ranges == r.extents();
            let from = r.backup.clone().unwrap_or_else(|| parent_label.to_string());
            out.refs.push(FileRecord {
                backup: Some(from),
                ranges: (!whole_entry).then_some(ranges),
                ..(*r).clone()
            });
        }
        // The changed parts, one piece for the file (split at PIECE_SIZE by the copy).
        if let Some(first) = changed.first() {
            let bytes = changed.iter().map(|[a, b]| b - a).sum();
            out.copy.push(FileToCopy {
                start: first[0],
                len: Some(bytes),
                size: bytes,
                extents: Some(changed),
                ..f.clone()
            });
        }
    }
    out.chain = chain;
    out
}

/// Append `[start, end)` to sorted, disjoint `ranges`, merging with the last one.
fn push_range(ranges: &mut Vec<[u64; 2]>, r: [u64; 2]) {
    if r[0] >= r[1] {
        return;
    }
    match ranges.last_mut() {
        Some(last) if r[0] <= last[1] => last[1] = last[1].max(r[1]),
        _ => ranges.push(r),
    }
}

/// `whole` minus sorted, disjoint `holes`.
fn subtract(whole: [u64; 2], holes: &[[u64; 2]]) -> Vec<[u64; 2]> {
    let mut out = Vec::new();
    let mut at = whole[0];
    for h in holes {
        if h[1] <= at {
            continue;
        }
        if h[0] >= whole[1] {
            break;
        }
        push_range(&mut out, [at, h[0].min(whole[1])]);
        at = at.max(h[1]);
    }
    push_range(&mut out, [at, whole[1]]);
    out
}

/// The parts of sorted, disjoint `a` that lie in sorted, disjoint `b`.
fn intersect(a: &[[u64; 2]], b: &[[u64; 2]]) -> Vec<[u64; 2]> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let start = a[i][0].max(b[j][0]);
        let end = a[i][1].min(b[j][1]);
        push_range(&mut out, [start, end]);
        if a[i][1] < b[j][1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEO: Geometry = Geometry {
        block_size: 8192,
        blocks_per_segment: 131072,
    };

    #[test]
    fn reads_block_references_and_storage_records_as_pg_waldump_15_prints_them() {
        let mut c = Changes::default();
        for line in [
            "rmgr: Heap2       len (rec/tot):     64/  8296, tx:          0, lsn: 0/0154A2F0, prev 0/0154A2B8, desc: VISIBLE cutoff xid 725 flags 0x01, blkref #0: rel 1663/5/16384 fork vm blk 0 FPW, blkref #1: rel 1663/5/16384 blk 3",
            "rmgr: Heap        len (rec/tot):     59/  7879, tx:        735, lsn: 0/03000028, prev 0/02000110, desc: INSERT off 1 flags 0x00, blkref #0: rel 1663/5/16384 blk 131075 FPW",
            "rmgr: Storage     len (rec/tot):     42/    42, tx:        729, lsn: 0/0154B000, prev 0/0154AF00, desc: CREATE base/5/16395_init",
            "rmgr: Storage     len (rec/tot):     46/    46, tx:          0, lsn: 0/0154C000, prev 0/0154B000, desc: TRUNCATE base/5/16400 to 4 blocks flags 7",
            "rmgr: Database    len (rec/tot):     42/    42, tx:        731, lsn: 0/0154D000, prev 0/0154C000, desc: CREATE_FILE_COPY copy dir 1663/1 to 1663/16398",
        ] {
            c.feed(line);
        }
        c.settle();
        assert!(c.unreadable.is_none());
        assert_eq!(c.blocks[&((1663, 5, 16384), Fork::Main)], vec![3, 131075]);
        assert_eq!(c.blocks[&((1663, 5, 16384), Fork::Vm)], vec![0]);
        assert!(c.recreated.contains(&(1663, 5, 16395)));
        assert!(c.recreated.contains(&(1663, 5, 16400)));
        assert!(c.copied_dbs.contains(&(1663, 16398)));
        c.feed("rmgr: Storage     len (rec/tot):     42/    42, tx: 1, lsn: 0/0154E000, prev 0/0, desc: CREATE somewhere/odd");
        assert!(c.unreadable.is_some());
    }

    #[test]
    fn relation_paths() {
        assert_eq!(
            relation_of_path("base/5/16384"),
            Some(((1663, 5, 16384), Fork::Main, 0))
        );
        assert_eq!(
            relation_of_path("base/5/16384.2"),
            Some(((1663, 5, 16384), Fork::Main, 2))
        );
        assert_eq!(
            relation_of_path("base/5/16384_vm"),
            Some(((1663, 5, 16384), Fork::Vm, 0))
        );
        assert_eq!(relation_of_path("global/1262"), Some(((1664, 0, 1262), Fork::Main, 0)));
        assert_eq!(
            relation_of_path("pg_tblspc/16500/PG_15_202209061/5/16501_fsm"),
            Some(((16500, 5, 16501), Fork::Fsm, 0))
        );
        assert_eq!(relation_of_path("base/5/pg_filenode.map"), None);
        assert_eq!(relation_of_path("global/pg_control"), None);
        assert_eq!(relation_of_path("pg_xact/0000"), None);
    }

    fn file(path: &str, size: u64) -> FileToCopy {
        FileToCopy {
            path: path.into(),
            source: path.into(),
            size,
            mode: 0o600,
            start: 0,
            len: None,
            extents: None,
        }
    }

    fn record(path: &str, file_offset: u64, size: u64, bundle: &str) -> FileRecord {
        FileRecord {
            path: path.into(),
            size,
            sha256: format!("sha-{path}-{file_offset}"),
            blake3: None,
            mode: 0o600,
            bundle: bundle.into(),
            offset: 0,
            file_offset,
            backup: None,
            ranges: None,
            extents: None,
        }
    }

    fn parent(files: Vec<FileRecord>) -> PhysicalInfo {
        let json = serde_json::json!({
            "start_lsn": "0/1000000", "stop_lsn": "0/2000000", "timeline": 1,
            "segment_size": 16777216, "wal_start": "", "wal_stop": "", "backup_label": "",
            "dirs": [], "tablespaces": [], "files": files,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn changed_blocks_are_stored_and_the_rest_is_referred_to_once() {
        let b = GEO.block_size;
        let info = parent(vec![
            record("base/5/100", 0, 10 * b, "bundle-0"),
            record("base/5/200", 0, 4 * b, "bundle-1"),
            record("global/pg_control", 0, 8192, "bundle-1"),
            record("base/5/300_fsm", 0, 3 * b, "bundle-1"),
        ]);
        let listing = Listing {
            files: vec![
                file("base/5/100", 12 * b), // grew by two blocks, blocks 2 and 3 changed
                file("base/5/200", 2 * b),  // shrank, nothing else
                file("global/pg_control", 8192),
                file("base/5/300_fsm", 3 * b),
                file("base/5/400", b), // new
            ],
            ..Listing::default()
        };
        let mut c = Changes::default();
        for blk in [3, 2, 3] {
            c.feed(&format!(
                "rmgr: Heap lsn: 0/1, desc: UPDATE, blkref #0: rel 1663/5/100 blk {blk}"
            ));
        }
        c.settle();
        let p = plan(&listing, "B1", &info, &c, GEO);
        type Copy<'a> = (&'a str, u64, Option<u64>, Option<Vec<[u64; 2]>>);
        let copies: Vec<Copy> = p
            .copy
            .iter()
            .map(|f| (f.path.as_str(), f.start, f.len, f.extents.clone()))
            .collect();
        assert_eq!(
            copies,
            vec![
                (
                    "base/5/100",
                    2 * b,
                    Some(4 * b),
                    Some(vec![[2 * b, 4 * b], [10 * b, 12 * b]])
                ),
                ("global/pg_control", 0, None, None),
                ("base/5/300_fsm", 0, None, None),
                ("base/5/400", 0, None, None),
            ]
        );
        assert_eq!(p.refs.len(), 2);
        assert_eq!(p.refs[0].ranges, Some(vec![[0, 2 * b], [4 * b, 10 * b]]));
        assert_eq!(p.refs[0].backup.as_deref(), Some("B1"));
        assert_eq!(p.refs[1].ranges, Some(vec![[0, 2 * b]]));
        assert_eq!(p.changed_blocks, 2);
        assert_eq!(p.referenced_bytes, 10 * b);
        assert_eq!(p.chain, vec!["B1".to_string()]);
        assert_eq!(p.whole["new since the parent"], 1);

        // The next incremental refers through B2 to B1 where B1 still holds the bytes,
        // and to the part of B2's scattered piece it did not change (the file shrank).
        let mut files = p.refs.clone();
        files.push(FileRecord {
            extents: Some(vec![[2 * b, 4 * b], [10 * b, 12 * b]]),
            ..record("base/5/100", 2 * b, 4 * b, "bundle-0")
        });
        let second = PhysicalInfo {
            incremental: Some(crate::repo::manifest::Incremental {
                parent: "B1".into(),
                chain: vec!["B1".into()],
                wal_from: crate::postgres::Lsn(0),
                wal_to: crate::postgres::Lsn(0),
                changed_blocks: 0,
                whole_files: BTreeMap::new(),
                referenced_bytes: 0,
            }),
            ..parent(files)
        };
        let mut c = Changes::default();
        c.feed("rmgr: Heap lsn: 0/2, desc: UPDATE, blkref #0: rel 1663/5/100 blk 0");
        c.settle();
        let listing = Listing {
            files: vec![file("base/5/100", 10 * b)],
            ..Listing::default()
        };
        let p = plan(&listing, "B2", &second, &c, GEO);
        type From<'a> = (Option<&'a str>, Option<Vec<[u64; 2]>>);
        let from: Vec<From> = p.refs.iter().map(|r| (r.backup.as_deref(), r.ranges.clone())).collect();
        assert_eq!(
            from,
            vec![
                (Some("B1"), Some(vec![[b, 2 * b], [4 * b, 10 * b]])),
                (Some("B2"), Some(vec![[2 * b, 4 * b]])),
            ]
        );
        assert_eq!(p.chain, vec!["B1".to_string(), "B2".to_string()]);
    }

    /// A block the WAL names past the parent's end does not hide the growth before it
    /// (found by review: block 10 was neither copied nor referred to).
    #[test]
    fn growth_is_copied_whole_even_where_the_wal_names_a_block_in_it() {
        let b = GEO.block_size;
        let info = parent(vec![record("base/5/100", 0, 10 * b, "x")]);
        let listing = Listing {
            files: vec![file("base/5/100", 13 * b)],
            ..Listing::default()
        };
        let mut c = Changes::default();
        c.feed("rmgr: Heap lsn: 0/1, desc: INSERT, blkref #0: rel 1663/5/100 blk 11");
        c.settle();
        let p = plan(&listing, "B1", &info, &c, GEO);
        assert_eq!(p.copy[0].extents, Some(vec![[10 * b, 13 * b]]));
        assert_eq!(p.refs[0].ranges, None, "all of the parent's piece is still current");
    }

    #[test]
    fn recreated_relations_and_copied_databases_are_stored_whole() {
        let b = GEO.block_size;
        let info = parent(vec![record("base/5/100", 0, b, "x"), record("base/7/100", 0, b, "x")]);
        let listing = Listing {
            files: vec![file("base/5/100", b), file("base/7/100", b)],
            ..Listing::default()
        };
        let mut c = Changes::default();
        c.feed("rmgr: Storage lsn: 0/1, desc: TRUNCATE base/5/100 to 0 blocks flags 7");
        c.feed("rmgr: Database lsn: 0/2, desc: CREATE_FILE_COPY copy dir 1663/1 to 1663/7");
        c.settle();
        let p = plan(&listing, "B1", &info, &c, GEO);
        assert_eq!(p.copy.len(), 2);
        assert!(p.refs.is_empty());
        assert_eq!(p.whole["created or truncated in the WAL"], 1);
        assert_eq!(p.whole["database copied with FILE_COPY"], 1);
    }

    #[test]
    fn ranges() {
        assert_eq!(subtract([0, 10], &[[2, 3], [5, 7]]), vec![[0, 2], [3, 5], [7, 10]]);
        assert_eq!(subtract([0, 10], &[[0, 10]]), Vec::<[u64; 2]>::new());
        assert_eq!(subtract([0, 4], &[[2, 3], [8, 9]]), vec![[0, 2], [3, 4]]);
        assert_eq!(intersect(&[[0, 5]], &[[1, 2], [4, 9]]), vec![[1, 2], [4, 5]]);
        assert_eq!(intersect(&[[0, 5], [6, 8]], &[[0, 10]]), vec![[0, 5], [6, 8]]);
    }
}

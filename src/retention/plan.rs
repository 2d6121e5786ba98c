//! Which backups and which WAL an `expire` removes, and why everything else stays.
//! Pure decisions over the catalog and the archive listing; `retention::expire`
//! carries them out.
//!
//! Rules:
//! - backups are ordered by their start time, never by name (a timeline reset made
//!   WAL-G delete its newest backups when it sorted by name, wal-g#636);
//! - the newest valid backup of each kind, and backups marked keep, always stay;
//! - a backup stays while it is among the newest `*_count` or younger than `*_days`;
//!   for physical backups `full_count` counts chains (a full backup and the
//!   incrementals taken on it), and whatever a kept incremental refers to stays;
//! - WAL stays from the start of the newest backup that began before the `wal_days`
//!   window (so any point inside the window can be reached), and every retained
//!   backup keeps the WAL it needs to become consistent; timeline history files stay.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use crate::config::RetentionConfig;
use crate::postgres::Segment;
use crate::repo::archive::ArchiveListing;
use crate::repo::label::{BackupKind, BackupLabel};
use crate::repo::manifest::Manifest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub label: BackupLabel,
    pub kind: BackupKind,
    pub keep: bool,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub backups: Vec<Decision>,
    /// WAL segment names to remove.
    pub wal_remove: Vec<String>,
    /// The oldest segment kept for point-in-time recovery, if any.
    pub wal_anchor: Option<String>,
}

fn kind_rules(cfg: &RetentionConfig, kind: BackupKind) -> (Option<u32>, Option<u32>) {
    match kind {
        BackupKind::Physical => (cfg.full_days, cfg.full_count),
        BackupKind::Logical => (cfg.logical_days, cfg.logical_count),
    }
}

/// Decide. `manifests` may be in any order; `keep_marks` are labels marked keep.
pub fn plan(
    cfg: &RetentionConfig,
    manifests: &[Manifest],
    keep_marks: &BTreeSet<BackupLabel>,
    in_use: &BTreeMap<BackupLabel, String>,
    archive: &ArchiveListing,
    now: DateTime<Utc>,
) -> Plan {
    let mut plan = Plan::default();
    let mut by_time: Vec<&Manifest> = manifests.iter().collect();
    by_time.sort_by(|a, b| b.start_time.cmp(&a.start_time).then_with(|| b.label.cmp(&a.label)));
    // Physical `*_count` counts chains: a full backup and the incrementals on it.
    let root_of = |m: &Manifest| -> Option<String> { m.physical.as_ref().and_then(|p| p.chain().first().cloned()) };
    for kind in [BackupKind::Physical, BackupKind::Logical] {
        let (days, count) = kind_rules(cfg, kind);
        let mut chains = 0usize;
        for (newest, m) in by_time.iter().filter(|m| m.kind == kind).enumerate() {
            let age = now - m.start_time;
            let rank = match root_of(m) {
                None => {
                    chains += 1;
                    chains - 1
                }
                // Newer than its full: ranked with it (usize::MAX: its full is gone).
                Some(root) => by_time
                    .iter()
                    .filter(|o| o.kind == kind && root_of(o).is_none())
                    .position(|o| o.label.as_str() == root)
                    .unwrap_or(usize::MAX),
            };
            let (keep, reason) = if newest == 0 {
                (true, "the newest backup of its kind is always kept".to_string())
            } else if keep_marks.contains(&m.label) {
                (true, "marked keep".to_string())
            } else if let Some(why) = in_use.get(&m.label) {
                (true, why.clone())
            } else if days.is_none() && count.is_none() {
                (true, format!("no retention set for {kind} backups"))
            } else if count.is_some_and(|c| (rank as u64) < c as u64) {
                (true, format!("among the newest {}", count.unwrap_or(0)))
            } else if days.is_some_and(|d| age < Duration::days(d as i64)) {
                (true, format!("younger than {} days", days.unwrap_or(0)))
            } else {
                let mut why = Vec::new();
                if let Some(c) = count {
                    why.push(format!("beyond the newest {c}"));
                }
                if let Some(d) = days {
                    why.push(format!("older than {d} days"));
                }
                (false, why.join(" and "))
            };
            plan.backups.push(Decision {
                label: m.label.clone(),
                kind,
                keep,
                reason,
            });
        }
    }
    // Whatever a kept incremental refers to stays with it.
    let needs: Vec<(BackupLabel, Vec<String>)> = manifests
        .iter()
        .filter(|m| plan.backups.iter().any(|d| d.label == m.label && d.keep))
        .filter_map(|m| m.physical.as_ref().map(|p| (m.label.clone(), p.chain().to_vec())))
        .collect();
    for (by, chain) in needs {
        for d in plan
            .backups
            .iter_mut()
            .filter(|d| chain.iter().any(|l| l == d.label.as_str()))
        {
            if !d.keep {
                d.keep = true;
                d.reason = format!("the incremental {by} needs it");
            }
        }
    }

    // WAL: only physical backups need it.
    let kept: Vec<&Manifest> = by_time
        .iter()
        .copied()
        .filter(|m| m.kind == BackupKind::Physical)
        .filter(|m| plan.backups.iter().any(|d| d.label == m.label && d.keep))
        .collect();
    let Some(oldest_kept) = kept.last() else {
        return plan; // no physical backup: WAL is useless for recovery, but leave it be
    };
    let window_start = cfg.wal_days.map(|d| now - Duration::days(d as i64));
    // The newest kept backup that started before the window opens anchors it; without
    // a window, the oldest kept backup does.
    let anchor = match window_start {
        Some(start) => kept
            .iter()
            .find(|m| m.start_time <= start)
            .copied()
            .unwrap_or(oldest_kept),
        None => oldest_kept,
    };
    // A backup being restored or copied needs every segment from its start on (a
    // restore may go to the end of the archive).
    let anchor = match kept.iter().rev().find(|m| in_use.contains_key(&m.label)) {
        Some(used) if used.start_time < anchor.start_time => used,
        _ => anchor,
    };
    let Some(anchor_info) = anchor.physical.as_ref() else {
        return plan;
    };
    let size = anchor_info.segment_size;
    let Some(anchor_seg) = Segment::parse(&anchor_info.wal_start, size) else {
        return plan;
    };
    plan.wal_anchor = Some(anchor_info.wal_start.clone());
    // Segments every kept backup needs to become consistent, by timeline.
    let mut needed: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    for m in &kept {
        if let Some(info) = &m.physical
            && let (Some(a), Some(b)) = (
                Segment::parse(&info.wal_start, size),
                Segment::parse(&info.wal_stop, size),
            )
        {
            needed.entry(a.timeline).or_default().push((a.number, b.number));
        }
    }
    for name in archive.segments.keys() {
        let Some(seg) = Segment::parse(name, size) else {
            continue;
        };
        // Compare positions, not names: a later timeline's name sorts after every
        // earlier one whatever its position.
        if seg.number >= anchor_seg.number {
            continue;
        }
        let for_consistency = needed
            .get(&seg.timeline)
            .is_some_and(|ranges| ranges.iter().any(|(a, b)| seg.number >= *a && seg.number <= *b));
        if !for_consistency {
            plan.wal_remove.push(name.clone());
        }
    }
    // Partial segments before the anchor are history too.
    for name in &archive.partials {
        if let Some(seg) = Segment::parse(&name[..24], size)
            && seg.number < anchor_seg.number
        {
            plan.wal_remove.push(name.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const SZ: u64 = 16 << 20;

    fn physical(label: &str, start: DateTime<Utc>, wal_start: &str, wal_stop: &str) -> Manifest {
        let mut m = crate::repo::manifest::test_support::physical_manifest(label, start, crate::postgres::Lsn(0));
        m.format = 1;
        m.start_time = start;
        let info = m.physical.as_mut().expect("physical");
        info.start_lsn = crate::postgres::Lsn(0);
        info.segment_size = SZ;
        info.wal_start = wal_start.into();
        info.wal_stop = wal_stop.into();
        m
    }

    fn archive(names: &[&str]) -> ArchiveListing {
        ArchiveListing {
            segments: names.iter().map(|n| (n.to_string(), None)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_newest_marked_and_needed_wal() {
        let now: DateTime<Utc> = "2026-11-30T00:00:00Z".parse().unwrap();
        let days = |d: i64| now - Duration::days(d);
        let ms = vec![
            physical(
                "20261101T000000Z-F",
                days(29),
                "000000010000000000000002",
                "000000010000000000000002",
            ),
            physical(
                "20261110T000000Z-F",
                days(20),
                "000000010000000000000005",
                "000000010000000000000005",
            ),
            physical(
                "20261120T000000Z-F",
                days(10),
                "000000010000000000000008",
                "000000010000000000000008",
            ),
            physical(
                "20261128T000000Z-F",
                days(2),
                "00000001000000000000000B",
                "00000001000000000000000B",
            ),
        ];
        let cfg = RetentionConfig {
            full_days: Some(15),
            wal_days: Some(7),
            ..Default::default()
        };
        let marks: BTreeSet<BackupLabel> = ["20261101T000000Z-F".parse().unwrap()].into();
        let names: Vec<String> = (1..=12).map(|n| format!("{:08X}{:08X}{:08X}", 1, 0, n)).collect();
        let arch = archive(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let p = plan(&cfg, &ms, &marks, &BTreeMap::new(), &arch, now);
        let kept: Vec<&str> = p.backups.iter().filter(|d| d.keep).map(|d| d.label.as_str()).collect();
        assert_eq!(
            kept,
            vec!["20261128T000000Z-F", "20261120T000000Z-F", "20261101T000000Z-F"]
        );
        // Anchor: the newest kept backup before the 7-day window = the one 10 days old.
        assert_eq!(p.wal_anchor.as_deref(), Some("000000010000000000000008"));
        // Segment 2 stays for the kept (marked) backup's consistency; 5 goes with its backup.
        assert!(!p.wal_remove.contains(&"000000010000000000000002".to_string()));
        assert!(p.wal_remove.contains(&"000000010000000000000005".to_string()));
        assert!(p.wal_remove.contains(&"000000010000000000000001".to_string()));
        assert!(!p.wal_remove.iter().any(|n| n.as_str() >= "000000010000000000000008"));
    }

    /// An incremental on `chain` (the full first).
    fn incremental(mut m: Manifest, chain: &[&str]) -> Manifest {
        m.physical.as_mut().unwrap().incremental = Some(crate::repo::manifest::Incremental {
            parent: chain.last().unwrap().to_string(),
            chain: chain.iter().map(|l| l.to_string()).collect(),
            wal_from: crate::postgres::Lsn(0),
            wal_to: crate::postgres::Lsn(0),
            changed_blocks: 1,
            whole_files: Default::default(),
            referenced_bytes: 1,
        });
        m
    }

    /// `full_count` counts chains (a full and the incrementals on it rank with the
    /// full); a kept incremental keeps every backup of its chain, and the WAL each of
    /// them needs, whatever their age.
    #[test]
    fn counts_chains_and_keeps_what_a_kept_incremental_needs() {
        let now: DateTime<Utc> = "2026-11-30T00:00:00Z".parse().unwrap();
        let days = |d: i64| now - Duration::days(d);
        let seg = |n: u32| format!("{:08X}{:08X}{:08X}", 1, 0, n);
        let at = |label: &str, d: i64, n: u32| physical(label, days(d), &seg(n), &seg(n));
        let (f1, i1a, i1b) = ("20261101T000000Z-F", "20261103T000000Z-I", "20261127T000000Z-I");
        let (f2, i2a) = ("20261123T000000Z-F", "20261128T000000Z-I");
        let ms = vec![
            at(f1, 29, 2),
            incremental(at(i1a, 27, 3), &[f1]),
            incremental(at(i1b, 3, 9), &[f1, i1a]),
            at(f2, 7, 6),
            incremental(at(i2a, 2, 10), &[f2]),
        ];
        let names: Vec<String> = (1..=12).map(seg).collect();
        let arch = archive(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let run = |cfg: RetentionConfig| {
            let p = plan(&cfg, &ms, &BTreeSet::new(), &BTreeMap::new(), &arch, now);
            let kept: BTreeMap<String, String> = p
                .backups
                .iter()
                .filter(|d| d.keep)
                .map(|d| (d.label.to_string(), d.reason.clone()))
                .collect();
            (kept, p.wal_remove)
        };
        // One chain: the newest full's. i1b is the newer of the two chains' newest
        // backups, but it ranks with its full, the older chain.
        let (kept, _) = run(RetentionConfig {
            full_count: Some(1),
            ..Default::default()
        });
        assert_eq!(kept.keys().collect::<Vec<_>>(), [f2, i2a], "{kept:?}");
        // Two chains: everything.
        let (kept, _) = run(RetentionConfig {
            full_count: Some(2),
            ..Default::default()
        });
        assert_eq!(kept.len(), 5, "{kept:?}");
        // By age (5 days): i1b is young, so its whole chain stays, however old, and
        // so does the WAL each of its backups needs to become consistent.
        let (kept, wal_remove) = run(RetentionConfig {
            full_days: Some(5),
            ..Default::default()
        });
        assert_eq!(kept.keys().collect::<Vec<_>>(), [f1, i1a, f2, i1b, i2a], "{kept:?}");
        assert_eq!(kept[f1], format!("the incremental {i1b} needs it"));
        assert_eq!(kept[i1a], format!("the incremental {i1b} needs it"));
        for needed in [2, 3, 9] {
            assert!(
                !wal_remove.contains(&seg(needed)),
                "{} removed: {wal_remove:?}",
                seg(needed)
            );
        }
    }

    #[test]
    fn orders_by_time_not_name_across_timelines() {
        let now: DateTime<Utc> = "2026-11-30T00:00:00Z".parse().unwrap();
        // After a timeline reset a newer backup can have a "smaller" label position;
        // labels here sort the other way round from their start times.
        let mut newer = physical(
            "20261101T000000Z-F",
            now - Duration::days(1),
            "000000020000000000000009",
            "000000020000000000000009",
        );
        newer.physical.as_mut().unwrap().timeline = 2;
        let older = physical(
            "20261120T000000Z-F",
            now - Duration::days(40),
            "000000010000000000000003",
            "000000010000000000000003",
        );
        let cfg = RetentionConfig {
            full_count: Some(1),
            ..Default::default()
        };
        let arch = archive(&[
            "000000010000000000000003",
            "000000020000000000000009",
            "00000002000000000000000A",
        ]);
        let p = plan(&cfg, &[older, newer], &BTreeSet::new(), &BTreeMap::new(), &arch, now);
        let keep = p
            .backups
            .iter()
            .find(|d| d.label.as_str() == "20261101T000000Z-F")
            .unwrap();
        assert!(keep.keep, "the backup with the newest start time must stay");
        assert_eq!(p.wal_remove, vec!["000000010000000000000003".to_string()]);
    }
}

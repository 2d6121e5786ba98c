//! The WAL archive as a whole: which segments and timeline histories are there, which
//! timeline path leads to a target, and whether the segments a recovery needs form
//! an unbroken chain (a gap is reported by segment name, before any replay starts).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};

use super::layout;
use crate::pipeline::{self, Keyring};
use crate::postgres::{Lsn, Segment, TimelineId, WalFile};
use crate::storage::DynStorage;

#[derive(Debug, Default)]
pub struct ArchiveListing {
    /// Full segments by name, with the time they were archived.
    pub segments: BTreeMap<String, Option<DateTime<Utc>>>,
    /// Timeline history file names, by timeline.
    pub histories: BTreeMap<TimelineId, String>,
    pub partials: BTreeSet<String>,
}

pub async fn list(storage: &DynStorage) -> Result<ArchiveListing> {
    let mut listing = ArchiveListing::default();
    for meta in storage.list(layout::WAL).await? {
        match layout::parse_wal_key(&meta.key) {
            Some(WalFile::Segment(name)) => {
                listing.segments.insert(name, meta.modified);
            }
            Some(WalFile::History(name)) => {
                if let Ok(tli) = u32::from_str_radix(&name[..8], 16) {
                    listing.histories.insert(tli, name);
                }
            }
            Some(WalFile::Partial(name)) => {
                listing.partials.insert(name);
            }
            Some(WalFile::BackupHistory(_)) => {}
            None => tracing::warn!("skipping {}: not a WAL file name pgdr archives", meta.key),
        }
    }
    Ok(listing)
}

/// What was declared about timelines (`timelines/`).
#[derive(Debug, Clone, Default)]
pub struct Declarations {
    /// Declared new primaries (`restore --archive`, a failover, a recovery's
    /// switch): followed even where their parent went on past the branch point.
    pub primary: BTreeSet<TimelineId>,
    /// Made by a recovery attempt that was given up and redone: never followed.
    pub abandoned: BTreeSet<TimelineId>,
}

impl Declarations {
    pub fn primaries(primary: BTreeSet<TimelineId>) -> Declarations {
        Declarations {
            primary,
            abandoned: BTreeSet::new(),
        }
    }
}

pub async fn declarations(storage: &DynStorage) -> Result<Declarations> {
    let mut d = Declarations::default();
    for m in storage.list(layout::TIMELINES).await? {
        if let Some(tli) = layout::parse_timeline_declaration(&m.key) {
            d.primary.insert(tli);
        } else if let Some(tli) = layout::parse_timeline_abandoned(&m.key) {
            d.abandoned.insert(tli);
        }
    }
    Ok(d)
}

/// How far a recovery must be able to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Through the segment holding this LSN.
    Lsn(Lsn),
    /// Through the first segment archived at or after this time (it holds the target).
    Time(DateTime<Utc>),
    /// Through the newest archived segment.
    Newest,
}

/// One timeline's stretch of a recovery path: `tli` until `end` (the switch point to
/// the next timeline), or open-ended for the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stretch {
    pub tli: TimelineId,
    pub end: Option<Lsn>,
}

/// Parse a `.history` file: `parentTLI <tab> switchpoint <tab> reason` lines.
pub fn parse_history(text: &str) -> Result<Vec<(TimelineId, Lsn)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let tli = fields.next().and_then(|t| t.parse().ok());
        let lsn = fields.next().and_then(|l| l.parse().ok());
        match (tli, lsn) {
            (Some(tli), Some(lsn)) => out.push((tli, lsn)),
            _ => return Err(anyhow!("malformed timeline history line {line:?}")),
        }
    }
    Ok(out)
}

/// A timeline that branched off another: its parent and the switch point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub tli: TimelineId,
    pub parent: TimelineId,
    pub switch: Lsn,
}

/// Which timeline a recovery follows, and what it saw on the way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimelineChoice {
    pub followed: TimelineId,
    /// The timelines of the archive at or after the backup's, in order.
    pub seen: Vec<TimelineId>,
    /// Branches not followed, because their parent went on past the branch point.
    pub forks: Vec<String>,
    /// One sentence: which timeline is followed and why.
    pub why: String,
    /// Declared new primaries (timeline, branch point) that branched before this
    /// backup's end: the old timeline was abandoned there, and this backup cannot
    /// reach the new one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_primary: Vec<(TimelineId, Lsn)>,
}

impl ArchiveListing {
    /// The newest full segment archived on `tli`.
    pub fn newest_segment(&self, tli: TimelineId, segment_size: u64) -> Option<Segment> {
        let prefix = format!("{tli:08X}");
        self.segments
            .range(prefix.clone()..)
            .take_while(|(n, _)| n.starts_with(&prefix))
            .filter_map(|(n, _)| Segment::parse(n, segment_size))
            .last()
    }

    /// Read and parse every timeline history file: who branched off whom, where.
    /// Any error is fatal: a history that cannot be read (a storage outage) or is
    /// damaged hides where its timeline branched, and choosing without it could
    /// follow the parent past a real promotion. The error names the timeline, so the
    /// DBA can name the one to follow (`--target-timeline`) instead.
    /// Only timelines above `from` (the backup's) are read: a recovery from it can
    /// follow no other, so a damaged old history does not stand in its way.
    pub async fn branches(&self, storage: &DynStorage, keys: &Keyring, from: TimelineId) -> Result<Vec<Branch>> {
        let mut out = Vec::new();
        for (tli, name) in self.histories.range(from + 1..) {
            let key = layout::wal_file(&WalFile::History(name.clone()));
            let text = pipeline::load_bytes(storage, &key, keys).await.with_context(|| {
                format!(
                    "reading {name}, the history of timeline {tli} (name the timeline to follow with --target-timeline)"
                )
            })?;
            let history = parse_history(&String::from_utf8_lossy(&text))
                .with_context(|| format!("{name}, the history of timeline {tli}, is damaged (name the timeline to follow with --target-timeline)"))?;
            match history.last().copied() {
                Some((parent, switch)) if parent < *tli => out.push(Branch {
                    tli: *tli,
                    parent,
                    switch,
                }),
                _ => {
                    return Err(anyhow!(
                        "{name}, the history of timeline {tli}, names no older parent timeline — it is damaged (name the timeline to follow with --target-timeline)"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The timeline a recovery from a backup on `from` follows when none is named.
    ///
    /// PostgreSQL's `latest` takes the highest-numbered timeline. That is wrong when a
    /// restored copy was promoted at an older point and archived its timeline here
    /// (a test restore, pgdr before 2026-12, or a split brain): its branch point lies
    /// behind WAL that its parent archived afterwards, and following it would replace
    /// production's newest transactions with the copy's. So a branch is followed only
    /// when its parent's archived WAL ends at the branch point (an ordinary promotion:
    /// the old primary stopped), or when pgdr recorded it as a declared new primary
    /// (`restore --archive`); of those, the highest-numbered. A branch off the
    /// backup's timeline before the backup's end (`backup_end`: its WAL must be
    /// replayed to there on `from`) cannot be reached from it and is not followed; if
    /// it was a declared new primary, that is recorded in `unreachable_primary`, and
    /// the restore refuses rather than replay the abandoned timeline.
    pub fn choose_timeline(
        &self,
        from: TimelineId,
        backup_end: Lsn,
        branches: &[Branch],
        declarations: &Declarations,
        segment_size: u64,
    ) -> TimelineChoice {
        let declared = &declarations.primary;
        let mut current = from;
        let mut forks = Vec::new();
        let mut unreachable_primary = Vec::new();
        let mut reasons = Vec::new();
        // Each step moves to a higher timeline, so this ends.
        loop {
            let mut next: Option<(TimelineId, String)> = None;
            for b in branches.iter().filter(|b| b.parent == current) {
                if declarations.abandoned.contains(&b.tli) && !declared.contains(&b.tli) {
                    forks.push(format!(
                        "timeline {} branched off {current} at {} by a recovery attempt that was given up — not followed",
                        b.tli, b.switch
                    ));
                    continue;
                }
                if current == from && b.switch < backup_end {
                    if declared.contains(&b.tli) {
                        unreachable_primary.push((b.tli, b.switch));
                    }
                    forks.push(format!(
                        "timeline {} branched off {current} at {}, before this backup ends at {backup_end} — unreachable from it",
                        b.tli, b.switch
                    ));
                    continue;
                }
                let switch_seg = Segment::containing(current, b.switch, segment_size);
                let went_on = self
                    .newest_segment(current, segment_size)
                    .filter(|s| s.number > switch_seg.number);
                let reason = if declared.contains(&b.tli) {
                    format!("timeline {} was declared the new primary (restore --archive)", b.tli)
                } else if let Some(end) = went_on {
                    forks.push(format!(
                        "timeline {} branched off {current} at {} but {current} went on to {} — a restored copy that archived? follow it with --target-timeline {}",
                        b.tli,
                        b.switch,
                        end.name(segment_size),
                        b.tli
                    ));
                    continue;
                } else {
                    format!("timeline {} took over from {current} at {}", b.tli, b.switch)
                };
                if next.as_ref().is_none_or(|(t, _)| b.tli > *t) {
                    next = Some((b.tli, reason));
                }
            }
            match next {
                Some((tli, reason)) => {
                    reasons.push(reason);
                    current = tli;
                }
                None => break,
            }
        }
        let mut seen: Vec<TimelineId> = std::iter::once(from)
            .chain(branches.iter().map(|b| b.tli).filter(|t| *t > from))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        let why = if reasons.is_empty() {
            format!("timeline {current}: the backup's own, no branch off it to follow")
        } else {
            format!("timeline {current}: {}", reasons.join("; "))
        };
        TimelineChoice {
            followed: current,
            seen,
            forks,
            why,
            unreachable_primary,
        }
    }

    /// The stretches from the start of time to `target`, read from its history file.
    pub async fn path_to(&self, storage: &DynStorage, keys: &Keyring, target: TimelineId) -> Result<Vec<Stretch>> {
        let mut path = Vec::new();
        if target > 1 {
            let name = self.histories.get(&target).ok_or_else(|| {
                anyhow!("timeline {target} has no history file ({target:08X}.history) in the archive — it cannot be followed")
            })?;
            let key = layout::wal_file(&WalFile::History(name.clone()));
            let text = pipeline::load_bytes(storage, &key, keys)
                .await
                .with_context(|| format!("reading {name}"))?;
            for (tli, end) in parse_history(&String::from_utf8_lossy(&text))? {
                path.push(Stretch { tli, end: Some(end) });
            }
        }
        path.push(Stretch { tli: target, end: None });
        Ok(path)
    }

    /// The stretches of segments recovery needs from `start` along `path`, up to
    /// `until` (or the newest archived segment of the last timeline), in replay
    /// order, as `(timeline, first, last)` ranges: a stray name far ahead in the
    /// archive makes a long range, never a long list.
    pub fn required_ranges(
        &self,
        start: Segment,
        path: &[Stretch],
        segment_size: u64,
        until: Until,
    ) -> Result<Vec<(TimelineId, u64, u64)>> {
        let (until_lsn, until_time) = match until {
            Until::Lsn(lsn) => (Some(lsn), None),
            Until::Time(t) => (None, Some(t)),
            Until::Newest => (None, None),
        };
        let Some(first) = path.iter().position(|s| s.tli == start.timeline) else {
            return Err(anyhow!(
                "the backup's timeline {} is not an ancestor of the target timeline {} — choose another backup or --target-timeline",
                start.timeline,
                path.last().map(|s| s.tli).unwrap_or(0)
            ));
        };
        let mut out = Vec::new();
        let mut number = start.number;
        for stretch in &path[first..] {
            let end = match (stretch.end, until_lsn) {
                (Some(switch), Some(u)) if u < switch => Some(Segment::containing(stretch.tli, u, segment_size).number),
                // The switch segment itself is read from the next timeline.
                (Some(switch), _) => Segment::containing(stretch.tli, switch, segment_size)
                    .number
                    .checked_sub(1),
                (None, Some(u)) => Some(Segment::containing(stretch.tli, u, segment_size).number),
                // Open end: up to the newest segment of this timeline.
                (None, None) => Some(
                    self.newest_segment(stretch.tli, segment_size)
                        .map(|s| s.number)
                        .unwrap_or(number)
                        .max(number),
                ),
            };
            if let Some(mut end) = end
                && number <= end
            {
                let mut stop = false;
                // The first segment archived at or after the target time holds it.
                if let Some(t) = until_time {
                    let from = Segment {
                        timeline: stretch.tli,
                        number,
                    }
                    .name(segment_size);
                    let to = Segment {
                        timeline: stretch.tli,
                        number: end,
                    }
                    .name(segment_size);
                    if let Some(seg) = self
                        .segments
                        .range(from..=to)
                        .filter_map(|(n, m)| Some((Segment::parse(n, segment_size)?, m)))
                        .find(|(_, m)| m.is_some_and(|m| m >= t))
                        .map(|(seg, _)| seg)
                    {
                        end = seg.number;
                        stop = true;
                    }
                }
                out.push((stretch.tli, number, end));
                number = end + 1;
                if stop {
                    return Ok(out);
                }
            }
            if until_lsn.is_some_and(|u| stretch.end.is_none_or(|e| u < e)) {
                break;
            }
        }
        Ok(out)
    }

    /// How many segments the ranges hold.
    pub fn count(ranges: &[(TimelineId, u64, u64)]) -> u64 {
        ranges.iter().map(|(_, a, b)| b - a + 1).sum()
    }

    /// The required segments that are not archived, as `(first, last)` missing
    /// runs, at most `limit` runs.
    pub fn gap_runs(
        &self,
        ranges: &[(TimelineId, u64, u64)],
        segment_size: u64,
        limit: usize,
    ) -> Vec<(Segment, Segment)> {
        let mut runs = Vec::new();
        for &(tli, first, last) in ranges {
            let mut expect = first;
            let from = Segment {
                timeline: tli,
                number: first,
            }
            .name(segment_size);
            let to = Segment {
                timeline: tli,
                number: last,
            }
            .name(segment_size);
            for (name, _) in self.segments.range(from..=to) {
                let Some(seg) = Segment::parse(name, segment_size) else {
                    continue;
                };
                if seg.number > expect {
                    runs.push((
                        Segment {
                            timeline: tli,
                            number: expect,
                        },
                        Segment {
                            timeline: tli,
                            number: seg.number - 1,
                        },
                    ));
                }
                expect = seg.number + 1;
                if runs.len() >= limit {
                    return runs;
                }
            }
            if expect <= last {
                runs.push((
                    Segment {
                        timeline: tli,
                        number: expect,
                    },
                    Segment {
                        timeline: tli,
                        number: last,
                    },
                ));
            }
            if runs.len() >= limit {
                break;
            }
        }
        runs.truncate(limit);
        runs
    }

    /// Check that the chain is unbroken; returns its last segment, or names the first gap.
    pub fn check_chain(
        &self,
        start: Segment,
        path: &[Stretch],
        segment_size: u64,
        until: Until,
        repo: &str,
    ) -> Result<Segment> {
        let ranges = self.required_ranges(start, path, segment_size, until)?;
        if let Some((missing, _)) = self.gap_runs(&ranges, segment_size, 1).first() {
            let after = Lsn(missing.start_lsn(segment_size).0.saturating_sub(1));
            return Err(super::RepoError::WalGap {
                segment: missing.name(segment_size),
                place: repo.to_string(),
                consequence: format!(
                    "the archive has a gap after {after}; recovery cannot get past it (run `pgdr check` to list gaps)"
                ),
            }
            .into());
        }
        Ok(ranges
            .last()
            .map(|&(timeline, _, number)| Segment { timeline, number })
            .unwrap_or(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SZ: u64 = 16 << 20;

    fn listing(names: &[&str]) -> ArchiveListing {
        ArchiveListing {
            segments: names.iter().map(|s| (s.to_string(), None)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn finds_gaps_and_follows_timelines() {
        let l = listing(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000005",
        ]);
        let start = Segment::parse("000000010000000000000002", SZ).unwrap();
        let path = vec![Stretch { tli: 1, end: None }];
        let err = l
            .check_chain(start, &path, SZ, Until::Newest, "r")
            .unwrap_err()
            .to_string();
        assert!(err.contains("000000010000000000000004"), "{err}");
        let last = l
            .check_chain(start, &path, SZ, Until::Lsn("0/3FFFFFF".parse().unwrap()), "r")
            .unwrap();
        assert_eq!(last.name(SZ), "000000010000000000000003");

        // Timeline 2 branched off in segment 4.
        let l = listing(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000020000000000000004",
            "000000020000000000000005",
        ]);
        let path = vec![
            Stretch {
                tli: 1,
                end: Some("0/4000100".parse().unwrap()),
            },
            Stretch { tli: 2, end: None },
        ];
        let last = l.check_chain(start, &path, SZ, Until::Newest, "r").unwrap();
        assert_eq!(last.name(SZ), "000000020000000000000005");
    }

    /// A stray key at the very end of the segment space must not make the chain
    /// check walk (or allocate) 10^12 segments.
    #[test]
    fn stray_far_segment_is_a_gap_not_an_allocation() {
        let l = listing(&["000000010000000000000002", "00000001FFFFFFFF000000FF"]);
        let start = Segment::parse("000000010000000000000002", SZ).unwrap();
        let path = vec![Stretch { tli: 1, end: None }];
        let err = l
            .check_chain(start, &path, SZ, Until::Newest, "r")
            .unwrap_err()
            .to_string();
        assert!(err.contains("000000010000000000000003"), "{err}");
        let ranges = l.required_ranges(start, &path, SZ, Until::Newest).unwrap();
        assert!(ArchiveListing::count(&ranges) > 1 << 39);
        let runs = l.gap_runs(&ranges, SZ, 10);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].1.name(SZ), "00000001FFFFFFFF000000FE");
    }

    /// A branch whose parent went on past the branch point is a fork: not followed,
    /// unless declared; one whose parent stopped there is followed.
    #[test]
    fn forks_are_not_followed() {
        let l = listing(&[
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000020000000000000003",
        ]);
        let fork = Branch {
            tli: 2,
            parent: 1,
            switch: "0/3000100".parse().unwrap(),
        };
        let none = Declarations::default();
        let c = l.choose_timeline(1, Lsn(0x2000128), &[fork], &none, SZ);
        assert_eq!(c.followed, 1);
        assert_eq!(c.forks.len(), 1, "{c:?}");
        let declared = Declarations::primaries([2].into());
        assert_eq!(l.choose_timeline(1, Lsn(0x2000128), &[fork], &declared, SZ).followed, 2);
        let takeover = Branch {
            tli: 2,
            parent: 1,
            switch: "0/5000100".parse().unwrap(),
        };
        let c = l.choose_timeline(1, Lsn(0x2000128), &[takeover], &none, SZ);
        assert_eq!(c.followed, 2);
        assert!(c.forks.is_empty());
        // A declared branch off timeline 1 before the backup started is unreachable
        // from it: PostgreSQL would refuse it, so it is not chosen.
        let c = l.choose_timeline(1, Lsn(0x4000028), &[fork], &declared, SZ);
        assert_eq!(c.followed, 1, "{c:?}");
        assert_eq!(c.forks.len(), 1, "{c:?}");
        assert_eq!(c.unreachable_primary, vec![(2, fork.switch)], "{c:?}");
        // A backup that ends exactly at the branch point can still follow it.
        let c = l.choose_timeline(1, fork.switch, &[fork], &declared, SZ);
        assert_eq!(c.followed, 2, "{c:?}");
        // A takeover that an interrupted recovery made and then gave up: not followed.
        let abandoned = Declarations {
            primary: BTreeSet::new(),
            abandoned: [2].into(),
        };
        let c = l.choose_timeline(1, Lsn(0x2000128), &[takeover], &abandoned, SZ);
        assert_eq!(c.followed, 1, "{c:?}");
        assert!(c.forks[0].contains("given up"), "{c:?}");
    }

    /// A name that is not a segment of this size (low part past 0xFF) sorts between
    /// real ones; the time-target search skips it instead of stopping on it.
    #[test]
    fn time_target_skips_unparsable_names() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: DateTime<Utc> = "2026-01-01T01:00:00Z".parse().unwrap();
        let l = ArchiveListing {
            segments: [
                ("000000010000000000000002", t0),
                ("0000000100000000000001AA", t1),
                ("000000010000000100000000", t1),
                ("000000010000000100000001", t1),
            ]
            .into_iter()
            .map(|(n, m)| (n.to_string(), Some(m)))
            .collect(),
            ..Default::default()
        };
        let start = Segment::parse("000000010000000000000002", SZ).unwrap();
        let path = vec![Stretch { tli: 1, end: None }];
        let ranges = l
            .required_ranges(start, &path, SZ, Until::Time(t0 + chrono::Duration::minutes(30)))
            .unwrap();
        let first_after = Segment::parse("000000010000000100000000", SZ).unwrap();
        assert_eq!(ranges, vec![(1, start.number, first_after.number)]);
    }

    #[test]
    fn history_parsing() {
        let h = parse_history("1\t0/4000100\tno recovery target specified\n\n2\t0/6000000\tat restore point \"x\"\n")
            .unwrap();
        assert_eq!(h, vec![(1, Lsn(0x4000100)), (2, Lsn(0x6000000))]);
    }
}

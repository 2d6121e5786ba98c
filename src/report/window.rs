//! The recoverability window, worked out from one listing of the archive: per
//! timeline, the runs of archived segments, the gaps between them, and the spans a
//! restore can reach — from each physical backup's consistent end (or, on a timeline
//! that branched off, from the switch) to the last segment before a gap. Times are
//! the archive's (when each segment was stored), so a span's end is the newest point
//! the archive holds to within `archive_timeout`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::postgres::{Lsn, Segment, TimelineId};

/// A physical backup, as the window needs it.
#[derive(Debug, Clone)]
pub struct BackupMark {
    pub label: String,
    pub timeline: TimelineId,
    pub stop_time: DateTime<Utc>,
    /// The segments from its start to its consistent end.
    pub wal_start: u64,
    pub wal_stop: u64,
}

/// Segments missing between two archived ones of a timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gap {
    pub first_missing: String,
    pub last_missing: String,
    pub missing: u64,
    /// When the segments on either side were archived: where the gap sits in time.
    pub after: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
}

/// A span of time a restore can reach on a timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The backup it starts from, or `switch from timeline N` when inherited.
    pub from_backup: String,
    /// The span's first segment (its backup's start, or the switch).
    pub from_segment: String,
    /// The last segment of the span: a gap or the archive's end follows.
    pub until_segment: String,
}

/// One timeline of the archive.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub timeline: TimelineId,
    /// The timeline it branched off, and where (from its history file).
    pub parent: Option<TimelineId>,
    pub switch_lsn: Option<String>,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub segments: u64,
    pub first_archived: Option<DateTime<Utc>>,
    pub last_archived: Option<DateTime<Utc>>,
    pub gaps: Vec<Gap>,
    /// Where a restore can go on this timeline, oldest first.
    pub restorable: Vec<Span>,
    /// Backups taken on this timeline that cannot become consistent (their own WAL
    /// is not all archived).
    pub unrestorable_backups: Vec<String>,
}

/// An archived segment: its number, name and archive time.
type Archived<'a> = (u64, &'a str, Option<DateTime<Utc>>);

/// A run of consecutive segment numbers, with the archive times of its ends.
struct Run {
    first: u64,
    last: u64,
    last_time: Option<DateTime<Utc>>,
}

/// The timelines of an archive listing (`segments`: names and archive times),
/// their histories (`histories`: each timeline's parent and switch point, parsed from
/// its history file) and the physical `backups`.
pub fn timelines(
    segments: &BTreeMap<String, Option<DateTime<Utc>>>,
    segment_size: u64,
    histories: &BTreeMap<TimelineId, (TimelineId, Lsn)>,
    backups: &[BackupMark],
) -> Vec<Timeline> {
    let mut by_tli: BTreeMap<TimelineId, Vec<Archived>> = BTreeMap::new();
    for (name, at) in segments {
        if let Some(seg) = Segment::parse(name, segment_size) {
            by_tli.entry(seg.timeline).or_default().push((seg.number, name, *at));
        }
    }
    for tli in histories.keys().chain(backups.iter().map(|b| &b.timeline)) {
        by_tli.entry(*tli).or_default();
    }
    let name = |tli: TimelineId, number: u64| Segment { timeline: tli, number }.name(segment_size);
    // Spans by timeline, filled oldest timeline first so that a child finds its parent's.
    let mut out: Vec<Timeline> = Vec::new();
    for (tli, mut segs) in by_tli {
        segs.sort_by_key(|s| s.0);
        let mut runs: Vec<Run> = Vec::new();
        let mut gaps = Vec::new();
        // One name per number (a listing could hold `…0a` beside `…0A`).
        segs.dedup_by_key(|s| s.0);
        for &(number, _, at) in &segs {
            match runs.last_mut() {
                Some(run) if run.last + 1 == number => {
                    run.last = number;
                    run.last_time = at;
                }
                prev => {
                    if let Some(run) = prev {
                        gaps.push(Gap {
                            first_missing: name(tli, run.last + 1),
                            last_missing: name(tli, number - 1),
                            missing: number - run.last - 1,
                            after: run.last_time,
                            before: at,
                        });
                    }
                    runs.push(Run {
                        first: number,
                        last: number,
                        last_time: at,
                    });
                }
            }
        }
        let run_of = |n: u64| runs.iter().find(|r| r.first <= n && n <= r.last);
        let mut spans = Vec::new();
        let mut unrestorable = Vec::new();
        for b in backups.iter().filter(|b| b.timeline == tli) {
            match run_of(b.wal_start) {
                Some(run) if run.last >= b.wal_stop => {
                    if let Some(to) = run.last_time {
                        spans.push(Span {
                            from: b.stop_time,
                            to: to.max(b.stop_time),
                            from_backup: b.label.clone(),
                            from_segment: name(tli, b.wal_start),
                            until_segment: name(tli, run.last),
                        });
                    }
                }
                _ => unrestorable.push(b.label.clone()),
            }
        }
        let (parent, switch) = match histories.get(&tli) {
            Some(&(parent, lsn)) => (Some(parent), Some(lsn)),
            None => (None, None),
        };
        // Inherited: the parent's span reaches the segment before the switch's (the
        // switch's own segment is read from this timeline: after a failover the
        // parent's copy of it is only ever archived as .partial), and this timeline's
        // WAL goes on from there.
        if let (Some(parent), Some(lsn)) = (parent, switch) {
            let at = lsn.0 / segment_size.max(1);
            let number = |n: &str| Segment::parse(n, segment_size).map(|s| s.number);
            let reaches = out.iter().find(|t| t.timeline == parent).is_some_and(|p| {
                p.restorable.iter().any(|s| {
                    number(&s.from_segment).is_some_and(|a| a <= at)
                        && number(&s.until_segment).is_some_and(|b| b.saturating_add(1) >= at)
                })
            });
            if reaches
                && let Some(run) = run_of(at)
                && let (Some(from), Some(to)) =
                    (segs.iter().find(|s| s.0 == run.first).and_then(|s| s.2), run.last_time)
            {
                spans.push(Span {
                    from,
                    to: to.max(from),
                    from_backup: format!("switch from timeline {parent}"),
                    from_segment: name(tli, at),
                    until_segment: name(tli, run.last),
                });
            }
        }
        spans.sort_by_key(|s| s.from);
        // Spans on one run of segments are one span (a later backup adds no reach).
        let number = |n: &str| Segment::parse(n, segment_size).map_or(0, |s| s.number);
        let mut merged: Vec<Span> = Vec::new();
        for s in spans {
            match merged.last_mut() {
                // Only spans on one run: archive times lag (a backlog, a copy's own
                // times), and merging by time could hide a gap.
                Some(m) if number(&s.from_segment) <= number(&m.until_segment) => {
                    if s.to > m.to {
                        m.to = s.to;
                        m.until_segment = s.until_segment;
                    }
                }
                _ => merged.push(s),
            }
        }
        out.push(Timeline {
            timeline: tli,
            parent,
            switch_lsn: switch.map(|l| l.to_string()),
            first_segment: segs.first().map(|s| s.1.to_string()),
            last_segment: segs.last().map(|s| s.1.to_string()),
            segments: segs.len() as u64,
            first_archived: segs.first().and_then(|s| s.2),
            last_archived: segs.last().and_then(|s| s.2),
            gaps,
            restorable: merged,
            unrestorable_backups: unrestorable,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SZ: u64 = 16 << 20;

    fn at(minute: u32) -> DateTime<Utc> {
        format!("2026-12-06T10:{minute:02}:00Z").parse().unwrap()
    }

    fn seg(tli: u32, n: u64) -> String {
        Segment {
            timeline: tli,
            number: n,
        }
        .name(SZ)
    }

    /// Two backups on timeline 1, a gap between them, a branch to timeline 2 after
    /// the second: the spans stop at the gap and go on from the later backup and
    /// across the switch; a backup whose own WAL is missing is named.
    #[test]
    fn spans_stop_at_gaps_and_follow_a_switch() {
        let mut segments = BTreeMap::new();
        for n in 1..=4 {
            segments.insert(seg(1, n), Some(at(n as u32)));
        }
        // 5 and 6 missing.
        for n in 7..=10 {
            segments.insert(seg(1, n), Some(at(n as u32)));
        }
        for n in 9..=12 {
            segments.insert(seg(2, n), Some(at(20 + n as u32)));
        }
        let backups = vec![
            BackupMark {
                label: "B1".into(),
                timeline: 1,
                stop_time: at(1),
                wal_start: 1,
                wal_stop: 1,
            },
            BackupMark {
                label: "B2".into(),
                timeline: 1,
                stop_time: at(7),
                wal_start: 7,
                wal_stop: 7,
            },
            BackupMark {
                label: "B3".into(),
                timeline: 1,
                stop_time: at(4),
                wal_start: 4,
                wal_stop: 5,
            },
        ];
        let histories = BTreeMap::from([(2, (1, Lsn(9 * SZ + 100)))]);
        let t = timelines(&segments, SZ, &histories, &backups);
        assert_eq!(t.len(), 2);
        let one = &t[0];
        assert_eq!(
            one.gaps,
            vec![Gap {
                first_missing: seg(1, 5),
                last_missing: seg(1, 6),
                missing: 2,
                after: Some(at(4)),
                before: Some(at(7)),
            }]
        );
        let spans: Vec<_> = one
            .restorable
            .iter()
            .map(|s| (s.from, s.to, s.from_backup.as_str()))
            .collect();
        assert_eq!(spans, vec![(at(1), at(4), "B1"), (at(7), at(10), "B2")]);
        assert_eq!(one.unrestorable_backups, vec!["B3".to_string()]);
        let two = &t[1];
        assert_eq!((two.parent, two.segments), (Some(1), 4));
        assert_eq!(two.restorable.len(), 1, "{:?}", two.restorable);
        assert_eq!(two.restorable[0].from_backup, "switch from timeline 1");
        assert_eq!((two.restorable[0].from, two.restorable[0].to), (at(29), at(32)));

        // After a failover the parent's copy of the switch's segment is only archived
        // as .partial: timeline 2 is still reached (it holds that segment itself).
        let mut failover = segments.clone();
        failover.remove(&seg(1, 9));
        failover.remove(&seg(1, 10));
        let t = timelines(&failover, SZ, &BTreeMap::from([(2, (1, Lsn(9 * SZ + 100)))]), &backups);
        assert_eq!(t[1].restorable.len(), 1, "{:?}", t[1]);
        // Two names for one number (lower-case hex) count once.
        let mut twice = segments.clone();
        twice.insert(seg(1, 10).to_lowercase(), Some(at(10)));
        let t = timelines(&twice, SZ, &histories, &backups);
        assert_eq!(t[0].segments, 8);

        // A switch in the first missing segment is reached (that segment comes from
        // timeline 2); one in the second is not (the first is missing on timeline 1).
        let mut segments2 = segments.clone();
        segments2.retain(|n, _| !n.starts_with("00000002"));
        for n in 5..=7 {
            segments2.insert(seg(2, n), Some(at(40 + n as u32)));
        }
        let histories = BTreeMap::from([(2, (1, Lsn(5 * SZ + 100)))]);
        let t = timelines(&segments2, SZ, &histories, &backups);
        assert_eq!(t[1].restorable.len(), 1, "{:?}", t[1].restorable);
        let histories = BTreeMap::from([(2, (1, Lsn(6 * SZ + 100)))]);
        let t = timelines(&segments2, SZ, &histories, &backups);
        assert!(t[1].restorable.is_empty(), "{:?}", t[1].restorable);
    }
}

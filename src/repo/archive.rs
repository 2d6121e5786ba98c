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
            _ => {}
        }
    }
    Ok(listing)
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

impl ArchiveListing {
    /// The newest timeline in the archive at or after `from`.
    pub fn latest_timeline(&self, from: TimelineId) -> TimelineId {
        self.histories
            .keys()
            .copied()
            .filter(|t| *t >= from)
            .max()
            .unwrap_or(from)
            .max(from)
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

    /// Every segment recovery needs from `start` along `path`, up to `until` (or the
    /// newest archived segment of the last timeline), in replay order.
    pub fn required(&self, start: Segment, path: &[Stretch], segment_size: u64, until: Until) -> Result<Vec<Segment>> {
        let (until, until_time) = match until {
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
            let end = match (stretch.end, until) {
                (Some(switch), Some(u)) if u < switch => Some(Segment::containing(stretch.tli, u, segment_size).number),
                // The switch segment itself is read from the next timeline.
                (Some(switch), _) => Segment::containing(stretch.tli, switch, segment_size)
                    .number
                    .checked_sub(1),
                (None, Some(u)) => Some(Segment::containing(stretch.tli, u, segment_size).number),
                // Open end: up to the newest segment of this timeline.
                (None, None) => Some(
                    self.segments
                        .keys()
                        .filter_map(|n| Segment::parse(n, segment_size))
                        .filter(|s| s.timeline == stretch.tli)
                        .map(|s| s.number)
                        .max()
                        .unwrap_or(number)
                        .max(number),
                ),
            };
            if let Some(end) = end {
                while number <= end {
                    let seg = Segment {
                        timeline: stretch.tli,
                        number,
                    };
                    out.push(seg);
                    number += 1;
                    // The segment archived after the target time holds the target.
                    if let Some(t) = until_time
                        && self
                            .segments
                            .get(&seg.name(segment_size))
                            .copied()
                            .flatten()
                            .is_some_and(|m| m >= t)
                    {
                        return Ok(out);
                    }
                }
            }
            if until.is_some_and(|u| stretch.end.is_none_or(|e| u < e)) {
                break;
            }
        }
        Ok(out)
    }

    /// The required segments that are not archived.
    pub fn gaps(&self, start: Segment, path: &[Stretch], segment_size: u64, until: Until) -> Result<Vec<Segment>> {
        Ok(self
            .required(start, path, segment_size, until)?
            .into_iter()
            .filter(|s| !self.segments.contains_key(&s.name(segment_size)))
            .collect())
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
        let required = self.required(start, path, segment_size, until)?;
        if let Some(missing) = required
            .iter()
            .find(|s| !self.segments.contains_key(&s.name(segment_size)))
        {
            let after = Lsn(missing.start_lsn(segment_size).0.saturating_sub(1));
            return Err(anyhow!(
                "WAL gap: segment {} is missing from {repo}/wal — the archive has a gap after {after}; recovery cannot get past it (run `pgdr check` to list gaps)",
                missing.name(segment_size)
            ));
        }
        Ok(required.last().copied().unwrap_or(start))
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

    #[test]
    fn history_parsing() {
        let h = parse_history("1\t0/4000100\tno recovery target specified\n\n2\t0/6000000\tat restore point \"x\"\n")
            .unwrap();
        assert_eq!(h, vec![(1, Lsn(0x4000100)), (2, Lsn(0x6000000))]);
    }
}

//! Recovery targets, parsed once at the edge: what the DBA named (`--target-time`,
//! `--target-lsn`, `--target-xid`, `--target-name`, `--target immediate|latest`)
//! becomes the setting PostgreSQL gets plus the typed time or LSN pgdr checks the
//! archive and chooses the backup against.

use anyhow::Result;
use chrono::{DateTime, FixedOffset, Utc};

use crate::postgres::Lsn;
use crate::postgres::recovery::RecoveryTarget;
use crate::usage;

/// The raw target options, as given (at most one of them is set; clap sees to that).
#[derive(Debug, Default, Clone, Copy)]
pub struct TargetSpec<'a> {
    pub time: Option<&'a str>,
    pub lsn: Option<&'a str>,
    pub xid: Option<&'a str>,
    pub name: Option<&'a str>,
    pub immediate: bool,
}

/// A validated recovery target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub recovery: RecoveryTarget,
    pub time: Option<DateTime<Utc>>,
    pub lsn: Option<Lsn>,
    pub xid: Option<u64>,
}

impl Target {
    pub fn parse(spec: &TargetSpec<'_>) -> Result<Target> {
        let plain = |recovery| Target {
            recovery,
            time: None,
            lsn: None,
            xid: None,
        };
        if let Some(t) = spec.time {
            let time = parse_target_time(t)?;
            let pg = time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
            return Ok(Target {
                recovery: RecoveryTarget::Time(pg),
                time: Some(time),
                lsn: None,
                xid: None,
            });
        }
        if let Some(l) = spec.lsn {
            let lsn: Lsn = l.parse().map_err(|e: String| usage!("--target-lsn {e}"))?;
            return Ok(Target {
                recovery: RecoveryTarget::Lsn(lsn.to_string()),
                time: None,
                lsn: Some(lsn),
                xid: None,
            });
        }
        if let Some(x) = spec.xid {
            let Ok(xid) = x.parse::<u64>() else {
                return Err(usage!("--target-xid {x:?} is not a transaction id"));
            };
            return Ok(Target {
                xid: Some(xid),
                ..plain(RecoveryTarget::Xid(x.to_string()))
            });
        }
        if let Some(n) = spec.name {
            return Ok(plain(RecoveryTarget::Name(n.to_string())));
        }
        Ok(plain(if spec.immediate {
            RecoveryTarget::Immediate
        } else {
            RecoveryTarget::Latest
        }))
    }
}

/// Where a runbook's restore step stops: `latest`, a time, or `before-lsn:LSN`
/// (just before the record at LSN: what `wal-search` proposes for a loss). Returns
/// the target and whether it is exclusive.
pub fn parse_step_target(raw: &str) -> Result<(Target, bool)> {
    let raw = raw.trim();
    if raw == "latest" {
        return Ok((Target::parse(&TargetSpec::default())?, false));
    }
    if let Some(lsn) = raw.strip_prefix(BEFORE_LSN) {
        let target = Target::parse(&TargetSpec {
            lsn: Some(lsn),
            ..Default::default()
        })?;
        return Ok((target, true));
    }
    Ok((
        Target::parse(&TargetSpec {
            time: Some(raw),
            ..Default::default()
        })?,
        false,
    ))
}

/// The prefix of a step target that stops just before an LSN.
pub const BEFORE_LSN: &str = "before-lsn:";

/// Parse a recovery target time: RFC 3339, or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f]+TZ`.
/// A time zone is required: a DBA at 3 a.m. must not guess which one was meant.
pub fn parse_target_time(raw: &str) -> Result<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::<FixedOffset>::parse_from_str(raw, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    if let Some(base) = raw.strip_suffix(" UTC").or_else(|| raw.strip_suffix("Z"))
        && let Ok(t) = chrono::NaiveDateTime::parse_from_str(base.trim(), "%Y-%m-%d %H:%M:%S%.f")
    {
        return Ok(t.and_utc());
    }
    Err(usage!(
        "--target-time {raw:?} is not a time with a time zone, e.g. 2026-11-26T02:00:00Z or '2026-11-26 02:00:00+00'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_need_a_zone() {
        let want = "2026-11-26T02:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_target_time("2026-11-26T02:00:00Z").unwrap(), want);
        assert_eq!(parse_target_time("2026-11-26 03:00:00+01").unwrap(), want);
        assert_eq!(parse_target_time("2026-11-26 02:00:00.000+00:00").unwrap(), want);
        assert_eq!(parse_target_time("2026-11-26 02:00:00 UTC").unwrap(), want);
        assert!(parse_target_time("2026-11-26 02:00:00").is_err());
        assert!(parse_target_time("yesterday").is_err());
    }

    #[test]
    fn step_targets() {
        let (t, exclusive) = parse_step_target("before-lsn:0/40B9478").unwrap();
        assert_eq!((t.lsn, exclusive), (Some(Lsn(0x40B9478)), true));
        let (t, exclusive) = parse_step_target("2026-11-26T02:00:00Z").unwrap();
        assert!(t.time.is_some() && !exclusive);
        assert_eq!(parse_step_target("latest").unwrap().0.recovery, RecoveryTarget::Latest);
        assert!(parse_step_target("before-lsn:nonsense").is_err());
        assert!(parse_step_target("soon").is_err());
    }

    #[test]
    fn targets_are_typed_once() {
        let t = Target::parse(&TargetSpec {
            time: Some("2026-11-26 03:00:00+01"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.recovery, RecoveryTarget::Time("2026-11-26 02:00:00.000000+00".into()));
        assert_eq!(t.time, Some("2026-11-26T02:00:00Z".parse().unwrap()));
        let t = Target::parse(&TargetSpec {
            lsn: Some("0/3000028"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.lsn, Some(Lsn(0x3000028)));
        assert!(
            Target::parse(&TargetSpec {
                lsn: Some("3000028"),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Target::parse(&TargetSpec {
                xid: Some("12a"),
                ..Default::default()
            })
            .is_err()
        );
        assert_eq!(
            Target::parse(&TargetSpec::default()).unwrap().recovery,
            RecoveryTarget::Latest
        );
        assert_eq!(
            Target::parse(&TargetSpec {
                immediate: true,
                ..Default::default()
            })
            .unwrap()
            .recovery,
            RecoveryTarget::Immediate
        );
    }
}

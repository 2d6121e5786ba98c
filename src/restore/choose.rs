//! Choosing the physical backup a recovery starts from: the one named, if it can
//! reach the target, else the newest that finished before the target. Never a silent
//! fallback to something else (pgbackrest#1582).

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::postgres::Lsn;
use crate::repo::{BackupKind, Manifest, catalog};
use crate::usage;

/// Without `--backup`: the newest backup that finished before the target. Never fall
/// back silently to something else (pgbackrest#1582).
pub fn backup_for<'a>(
    manifests: &'a [Manifest],
    selector: Option<&str>,
    time: Option<DateTime<Utc>>,
    lsn: Option<Lsn>,
    xid: Option<u64>,
) -> Result<&'a Manifest> {
    let ended_before = |m: &Manifest| xid.is_some_and(|x| m.physical.as_ref().is_some_and(|i| i.ended_before(x)));
    if let Some(selector) = selector {
        let m = catalog::resolve(manifests, selector, Some(BackupKind::Physical))?;
        if ended_before(m) {
            return Err(usage!(
                "transaction {} had ended before backup {} started, so a recovery from it cannot stop there — choose an older backup, or omit --backup",
                xid.unwrap_or_default(),
                m.label
            ));
        }
        if let Some(time) = time
            && m.stop_time > time
        {
            return Err(usage!(
                "backup {} finished at {}, after the target time {} — it cannot be rewound; choose an older backup or omit --backup",
                m.label,
                m.stop_time.to_rfc3339(),
                time.to_rfc3339()
            ));
        }
        return Ok(m);
    }
    let physical: Vec<&Manifest> = manifests.iter().filter(|m| m.kind == BackupKind::Physical).collect();
    if physical.is_empty() {
        return Err(usage!(
            "there is no physical backup in the repository — run `pgdr backup --kind physical` first"
        ));
    }
    let found = physical.iter().find(|m| {
        let info = m.physical.as_ref();
        time.is_none_or(|t| m.stop_time <= t)
            && lsn.is_none_or(|l| info.is_some_and(|i| i.stop_lsn <= l))
            && !ended_before(m)
    });
    found.copied().ok_or_else(|| {
        let oldest = physical.last().expect("not empty");
        usage!(
            "no physical backup finished before the target ({}) — the oldest, {}, finished at {}",
            time.map(|t| t.to_rfc3339())
                .or(lsn.map(|l| format!("LSN {l}")))
                .or(xid.map(|x| format!("transaction {x}, which had ended before every backup started")))
                .unwrap_or_default(),
            oldest.label,
            oldest.stop_time.to_rfc3339()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::test_support::physical_manifest;

    #[test]
    fn newest_before_the_target() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // Newest first, as the catalog sorts them.
        let ms = vec![
            physical_manifest("20261126T030000Z-F", t("2026-11-26T03:10:00Z"), Lsn(0x9000000)),
            physical_manifest("20261126T020000Z-F", t("2026-11-26T02:10:00Z"), Lsn(0x5000000)),
        ];
        let label = |m: &Manifest| m.label.to_string();
        assert_eq!(
            label(backup_for(&ms, None, None, None, None).unwrap()),
            "20261126T030000Z-F"
        );
        assert_eq!(
            label(backup_for(&ms, None, Some(t("2026-11-26T03:00:00Z")), None, None).unwrap()),
            "20261126T020000Z-F"
        );
        assert_eq!(
            label(backup_for(&ms, None, None, Some(Lsn(0x6000000)), None).unwrap()),
            "20261126T020000Z-F"
        );
        // Nothing finished before the target: refused, never the oldest instead.
        let err = backup_for(&ms, None, Some(t("2026-11-26T01:00:00Z")), None, None).unwrap_err();
        assert!(format!("{err:#}").contains("no physical backup finished before the target"));
        // A named backup that finished after the target cannot be rewound.
        let err = backup_for(
            &ms,
            Some("20261126T030000Z-F"),
            Some(t("2026-11-26T03:00:00Z")),
            None,
            None,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("cannot be rewound"));
        assert!(backup_for(&[], None, None, None, None).is_err());
    }

    /// A transaction that ended before a backup started cannot be a target from it:
    /// the newest backup that started before it ended is chosen, or none.
    #[test]
    fn an_xid_target_needs_a_backup_that_started_before_it_ended() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let mut newer = physical_manifest("20261126T030000Z-F", t("2026-11-26T03:10:00Z"), Lsn(0x9000000));
        let mut older = physical_manifest("20261126T020000Z-F", t("2026-11-26T02:10:00Z"), Lsn(0x5000000));
        newer.physical.as_mut().unwrap().xmin_before = Some(5000);
        older.physical.as_mut().unwrap().xmin_before = Some(1000);
        let ms = vec![newer, older];
        let label = |m: &Manifest| m.label.to_string();
        assert_eq!(
            label(backup_for(&ms, None, None, None, Some(6000)).unwrap()),
            "20261126T030000Z-F"
        );
        assert_eq!(
            label(backup_for(&ms, None, None, None, Some(4000)).unwrap()),
            "20261126T020000Z-F"
        );
        let err = backup_for(&ms, None, None, None, Some(10)).unwrap_err();
        assert!(
            format!("{err:#}").contains("had ended before every backup started"),
            "{err:#}"
        );
        let err = backup_for(&ms, Some("20261126T030000Z-F"), None, None, Some(4000)).unwrap_err();
        assert!(format!("{err:#}").contains("had ended before backup"), "{err:#}");
        // Modulo 2^32, as PostgreSQL compares: an xid just past a wraparound is newer.
        let mut wrapped = physical_manifest("20261126T040000Z-F", t("2026-11-26T04:10:00Z"), Lsn(0xA000000));
        wrapped.physical.as_mut().unwrap().xmin_before = Some((1u64 << 32) + u32::MAX as u64 - 10);
        assert!(!wrapped.physical.as_ref().unwrap().ended_before(5));
        assert!(wrapped.physical.as_ref().unwrap().ended_before(u32::MAX as u64 - 20));
    }
}

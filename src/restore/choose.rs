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
) -> Result<&'a Manifest> {
    if let Some(selector) = selector {
        let m = catalog::resolve(manifests, selector, Some(BackupKind::Physical))?;
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
        time.is_none_or(|t| m.stop_time <= t) && lsn.is_none_or(|l| info.is_some_and(|i| i.stop_lsn <= l))
    });
    found.copied().ok_or_else(|| {
        let oldest = physical.last().expect("not empty");
        usage!(
            "no physical backup finished before the target ({}) — the oldest, {}, finished at {}",
            time.map(|t| t.to_rfc3339())
                .or(lsn.map(|l| format!("LSN {l}")))
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
        assert_eq!(label(backup_for(&ms, None, None, None).unwrap()), "20261126T030000Z-F");
        assert_eq!(
            label(backup_for(&ms, None, Some(t("2026-11-26T03:00:00Z")), None).unwrap()),
            "20261126T020000Z-F"
        );
        assert_eq!(
            label(backup_for(&ms, None, None, Some(Lsn(0x6000000))).unwrap()),
            "20261126T020000Z-F"
        );
        // Nothing finished before the target: refused, never the oldest instead.
        let err = backup_for(&ms, None, Some(t("2026-11-26T01:00:00Z")), None).unwrap_err();
        assert!(format!("{err:#}").contains("no physical backup finished before the target"));
        // A named backup that finished after the target cannot be rewound.
        let err = backup_for(&ms, Some("20261126T030000Z-F"), Some(t("2026-11-26T03:00:00Z")), None).unwrap_err();
        assert!(format!("{err:#}").contains("cannot be rewound"));
        assert!(backup_for(&[], None, None, None).is_err());
    }
}

//! Backup labels: `20261126T020000Z-F` (physical full), `-I` (physical incremental)
//! or `-L` (logical). A label
//! sorts by time, but catalogs order by the manifest's times, never by name alone.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Logical,
    Physical,
}

impl BackupKind {
    fn suffix(self) -> char {
        match self {
            BackupKind::Logical => 'L',
            BackupKind::Physical => 'F',
        }
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupKind::Logical => "logical",
            BackupKind::Physical => "physical",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupLabel(String);

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupLabel {
    pub fn new(time: DateTime<Utc>, kind: BackupKind) -> BackupLabel {
        BackupLabel(format!("{}-{}", time.format(TIME_FORMAT), kind.suffix()))
    }

    /// A physical incremental's label: `-I`, so that a listing tells it from a full
    /// backup at a glance (its manifest, not the label, names its chain).
    pub fn incremental(time: DateTime<Utc>) -> BackupLabel {
        BackupLabel(format!("{}-I", time.format(TIME_FORMAT)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> BackupKind {
        if self.0.ends_with('L') {
            BackupKind::Logical
        } else {
            BackupKind::Physical
        }
    }

    pub fn time(&self) -> DateTime<Utc> {
        let stamp = &self.0[..16];
        NaiveDateTime::parse_from_str(stamp, TIME_FORMAT)
            .expect("validated at construction")
            .and_utc()
    }
}

impl FromStr for BackupLabel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Byte-safe: a label comes from the command line or a bucket listing, and
        // slicing a non-ASCII string mid-character would panic.
        let ok = s.len() == 18
            && s.is_ascii()
            && NaiveDateTime::parse_from_str(&s[..16], TIME_FORMAT).is_ok()
            && (s.ends_with("-F") || s.ends_with("-I") || s.ends_with("-L"));
        if ok {
            Ok(BackupLabel(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a backup label (expected e.g. 20261126T020000Z-L)"
            ))
        }
    }
}

impl TryFrom<String> for BackupLabel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<BackupLabel> for String {
    fn from(l: BackupLabel) -> String {
        l.0
    }
}

impl fmt::Display for BackupLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn label_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap();
        let l = BackupLabel::new(t, BackupKind::Logical);
        assert_eq!(l.as_str(), "20261126T020000Z-L");
        assert_eq!(l.time(), t);
        assert_eq!(l.kind(), BackupKind::Logical);
        assert_eq!(
            "20261126T020000Z-F".parse::<BackupLabel>().unwrap().kind(),
            BackupKind::Physical
        );
        let i = BackupLabel::incremental(t);
        assert_eq!((i.as_str(), i.kind()), ("20261126T020000Z-I", BackupKind::Physical));
        assert_eq!(i.as_str().parse::<BackupLabel>().unwrap(), i);
        assert!("latest".parse::<BackupLabel>().is_err());
        assert!("20261126T020000Z-X".parse::<BackupLabel>().is_err());
        // Multi-byte characters where the time ends must not panic.
        assert!("2026112€T0200Z-L".parse::<BackupLabel>().is_err());
        assert!("20261126T020000ü-L".parse::<BackupLabel>().is_err());
        assert!("".parse::<BackupLabel>().is_err());
    }
}

//! WAL arithmetic and naming: LSNs, timelines, segment names, and the other files
//! that live in the archive (`.history`, `.partial`, `.backup`). Parsing happens here,
//! once; the rest of pgdr handles these as typed values.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Default WAL segment size; the real one is read from the server or pg_control.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A WAL segment size PostgreSQL allows: a power of two from 1 MiB to 1 GiB. Sizes
/// read from a manifest or a server are checked with this before any arithmetic.
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

/// A log sequence number, written `X/Y` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN (expected e.g. 0/16B3740)"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;
    fn try_from(s: String) -> Result<Lsn, String> {
        s.parse()
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

pub type TimelineId = u32;

/// A WAL segment: timeline and segment number, with the segment size needed to name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: TimelineId,
    pub number: u64,
}

impl Segment {
    fn per_log(segment_size: u64) -> u64 {
        0x1_0000_0000 / segment_size
    }

    /// The segment holding `lsn`.
    pub fn containing(timeline: TimelineId, lsn: Lsn, segment_size: u64) -> Segment {
        Segment {
            timeline,
            number: lsn.0 / segment_size,
        }
    }

    /// `000000010000000000000042`
    pub fn name(&self, segment_size: u64) -> String {
        let per = Segment::per_log(segment_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per,
            self.number % per
        )
    }

    pub fn parse(name: &str, segment_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per = Segment::per_log(segment_size);
        if seg >= per {
            return None;
        }
        Some(Segment {
            timeline,
            number: log * per + seg,
        })
    }

    pub fn next(&self) -> Segment {
        Segment {
            timeline: self.timeline,
            number: self.number + 1,
        }
    }

    /// The first LSN inside this segment.
    pub fn start_lsn(&self, segment_size: u64) -> Lsn {
        Lsn(self.number * segment_size)
    }
}

/// Any file PostgreSQL hands to `archive_command` or asks of `restore_command`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    /// `000000010000000000000042`
    Segment(String),
    /// `000000010000000000000042.partial`
    Partial(String),
    /// `000000010000000000000042.00000028.backup`
    BackupHistory(String),
    /// `00000002.history`
    History(String),
}

impl WalFile {
    pub fn parse(name: &str) -> Option<WalFile> {
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if hex(name, 24) {
            return Some(WalFile::Segment(name.to_string()));
        }
        if let Some(base) = name.strip_suffix(".partial")
            && hex(base, 24)
        {
            return Some(WalFile::Partial(name.to_string()));
        }
        if let Some(base) = name.strip_suffix(".history")
            && hex(base, 8)
        {
            return Some(WalFile::History(name.to_string()));
        }
        if let Some(base) = name.strip_suffix(".backup")
            && base.len() == 33
            && base.get(..24).is_some_and(|h| hex(h, 24))
            && base.as_bytes()[24] == b'.'
            && base.get(25..).is_some_and(|h| hex(h, 8))
        {
            return Some(WalFile::BackupHistory(name.to_string()));
        }
        None
    }

    pub fn name(&self) -> &str {
        match self {
            WalFile::Segment(n) | WalFile::Partial(n) | WalFile::BackupHistory(n) | WalFile::History(n) => n,
        }
    }

    /// The 16-hex-digit timeline+log directory it is archived under; history files
    /// have none.
    pub fn log_dir(&self) -> Option<&str> {
        match self {
            WalFile::History(_) => None,
            other => Some(&other.name()[..16]),
        }
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The long page header at the start of every WAL segment: which cluster wrote it
/// (system identifier) and the segment size. Read once here, for wal-push (is this
/// file ours?) and wal-fetch (how big are the segments to prefetch?).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub system_identifier: u64,
    pub segment_size: u32,
}

impl LongPageHeader {
    /// Bytes the header takes, as far as pgdr reads it.
    pub const LEN: usize = 36;
    const SYSID_OFFSET: usize = 24;
    const SEG_SIZE_OFFSET: usize = 32;

    pub fn parse(bytes: &[u8]) -> Option<LongPageHeader> {
        let sysid = bytes.get(Self::SYSID_OFFSET..Self::SYSID_OFFSET + 8)?;
        let seg = bytes.get(Self::SEG_SIZE_OFFSET..Self::SEG_SIZE_OFFSET + 4)?;
        Some(LongPageHeader {
            system_identifier: u64::from_le_bytes(sysid.try_into().ok()?),
            segment_size: u32::from_le_bytes(seg.try_into().ok()?),
        })
    }

    /// Read the header of the WAL file at `path`.
    pub fn read(path: &std::path::Path) -> std::io::Result<LongPageHeader> {
        use std::io::Read;
        let mut bytes = [0u8; Self::LEN];
        std::fs::File::open(path)?.read_exact(&mut bytes)?;
        Self::parse(&bytes).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "short WAL header"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!("nope".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names() {
        let size = DEFAULT_SEGMENT_SIZE;
        let s = Segment::containing(1, "0/3000028".parse().unwrap(), size);
        assert_eq!(s.name(size), "000000010000000000000003");
        let s = Segment::containing(2, "1/FF000000".parse().unwrap(), size);
        assert_eq!(s.name(size), "0000000200000001000000FF");
        assert_eq!(s.next().name(size), "000000020000000200000000");
        assert_eq!(Segment::parse("0000000200000001000000FF", size), Some(s));
        assert_eq!(Segment::parse("000000020000000100000100", size), None);
        // 1 GiB segments: four per log file.
        let big = 1 << 30;
        assert_eq!(
            Segment::containing(1, "2/C0000000".parse().unwrap(), big).name(big),
            "000000010000000200000003"
        );
    }

    #[test]
    fn wal_file_kinds() {
        assert!(matches!(
            WalFile::parse("000000010000000000000003"),
            Some(WalFile::Segment(_))
        ));
        assert!(matches!(
            WalFile::parse("000000010000000000000003.partial"),
            Some(WalFile::Partial(_))
        ));
        assert!(matches!(WalFile::parse("00000002.history"), Some(WalFile::History(_))));
        assert!(matches!(
            WalFile::parse("000000010000000000000003.00000028.backup"),
            Some(WalFile::BackupHistory(_))
        ));
        assert_eq!(WalFile::parse("00000002.history").unwrap().log_dir(), None);
        assert_eq!(
            WalFile::parse("000000010000000000000003").unwrap().log_dir(),
            Some("0000000100000000")
        );
        assert!(WalFile::parse("../etc/passwd").is_none());
        assert!(WalFile::parse("RECOVERYHISTORY").is_none());
    }

    #[test]
    fn non_ascii_names_are_not_wal_files() {
        // Found by the `names` fuzz target (a key in the bucket is untrusted input):
        // slicing a 33-byte name at byte 24 panicked inside a multi-byte character.
        let name = String::from_utf8_lossy(b"0000010000000002.000=0\xf7\x00/.backu.backup").into_owned();
        assert_eq!(WalFile::parse(&name), None);
        assert_eq!(WalFile::parse("0000000100000000000000€2.00000028.backup"), None);
        assert!(WalFile::parse("000000010000000000000042.00000028.backup").is_some());
    }

    #[test]
    fn long_page_header() {
        let mut page = vec![0u8; 64];
        page[24..32].copy_from_slice(&7_714_576_642_247_524_585u64.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        let h = LongPageHeader::parse(&page).unwrap();
        assert_eq!(h.system_identifier, 7_714_576_642_247_524_585);
        assert_eq!(h.segment_size, 16 << 20);
        assert_eq!(LongPageHeader::parse(&page[..30]), None);
    }
}

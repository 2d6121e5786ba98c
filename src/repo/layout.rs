//! Every object key pgdr uses is built here, and nowhere else (docs/FORMAT.md, the
//! repository layout). Keys are relative to the cluster's area `<root>/<cluster>/`.

use crate::storage::ObjectKey;

use super::label::BackupLabel;
use crate::postgres::WalFile;

pub const BACKUPS: &str = "backups/";
pub const WAL: &str = "wal/";
const MANIFEST: &str = "manifest.json";
const KEEP: &str = "keep.json";

pub fn repo_info() -> ObjectKey {
    key("repo.json".to_string())
}

fn key(s: String) -> ObjectKey {
    ObjectKey::new(s).expect("layout builds valid keys")
}

pub fn backup_prefix(label: &BackupLabel) -> String {
    format!("{BACKUPS}{label}/")
}

/// The commit point of a backup: written last; a backup without it does not exist.
pub fn manifest(label: &BackupLabel) -> ObjectKey {
    key(format!("{BACKUPS}{label}/{MANIFEST}"))
}

/// A data object of a backup, by its name in the manifest. The name comes from a
/// manifest or the command line, so a name that makes no valid key (empty, `..`,
/// an empty component) is refused, never a panic.
pub fn backup_object(label: &BackupLabel, name: &str) -> anyhow::Result<ObjectKey> {
    ObjectKey::new(format!("{BACKUPS}{label}/{name}"))
        .map_err(|_| anyhow::anyhow!("{name:?} is not a valid object name inside backup {label}"))
}

/// The manifest name of a database's dump. Names are percent-encoded so any database
/// name (spaces, slashes, UTF-8) makes one safe key component.
pub fn database_dump_name(database: &str) -> String {
    let mut out = String::from("databases/");
    for b in database.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(".dump");
    out
}

pub fn globals_name() -> &'static str {
    "globals.sql"
}

/// `(label, object name)` for a key under `backups/`, if it is one.
pub fn parse_backup_key(key: &ObjectKey) -> Option<(BackupLabel, &str)> {
    let rest = key.as_str().strip_prefix(BACKUPS)?;
    let (label, name) = rest.split_once('/')?;
    Some((label.parse().ok()?, name))
}

pub fn is_manifest(name: &str) -> bool {
    name == MANIFEST
}

/// A backup's permanent mark: expire never removes a backup that has one.
pub fn keep_mark(label: &BackupLabel) -> ObjectKey {
    key(format!("{BACKUPS}{label}/{KEEP}"))
}

pub fn is_keep_mark(name: &str) -> bool {
    name == KEEP
}

/// Restore-test and drill reports.
pub const VERIFICATIONS: &str = "verifications/";

/// `verifications/<UTC time>-<label>.json`: names sort by time.
pub fn verification(started: &chrono::DateTime<chrono::Utc>, label: &BackupLabel) -> ObjectKey {
    key(format!(
        "{VERIFICATIONS}{}-{label}.json",
        started.format("%Y%m%dT%H%M%SZ")
    ))
}

/// The backup a verification report is about, from its key.
pub fn parse_verification(key: &ObjectKey) -> Option<BackupLabel> {
    let name = key.as_str().strip_prefix(VERIFICATIONS)?.strip_suffix(".json")?;
    // `YYYYMMDDTHHMMSSZ-` then the label.
    name.get(17..)?.parse().ok()
}

/// `verifications/<UTC time>-<event>.json`: reports of switches and failovers
/// (`event` is `switch` or `failover`), beside the restore tests.
pub fn event_report(started: &chrono::DateTime<chrono::Utc>, event: &str) -> ObjectKey {
    key(format!(
        "{VERIFICATIONS}{}-{event}.json",
        started.format("%Y%m%dT%H%M%SZ")
    ))
}

/// `(time, event)` of an event report's key.
pub fn parse_event_report(key: &ObjectKey) -> Option<(chrono::DateTime<chrono::Utc>, &str)> {
    let name = key.as_str().strip_prefix(VERIFICATIONS)?.strip_suffix(".json")?;
    let (time, event) = name.split_once('-')?;
    if !(matches!(event, "switch" | "failover") || event.starts_with("recover-") || event.starts_with("drill-")) {
        return None;
    }
    let time = chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").ok()?;
    Some((time.and_utc(), event))
}

/// The name of the `n`th data bundle of a physical backup (an object of the backup).
pub fn bundle(n: u64) -> String {
    format!("data/bundle-{n:05}")
}

/// A lock object (scheduler jobs).
pub fn lock(name: &str) -> ObjectKey {
    key(format!("locks/{name}"))
}

/// Claims on WAL file names (stores that ignore `If-None-Match`, `archive::claim`):
/// `locks/wal/<name>.<first 16 hex digits of the plaintext's SHA-256>.<random>`.
pub fn wal_claim(file: &WalFile, sha16: &str) -> ObjectKey {
    key(format!(
        "{}{sha16}.{:08x}",
        wal_claims_prefix(file),
        rand::random::<u32>()
    ))
}

/// The prefix every claim on `file`'s name starts with.
pub fn wal_claims_prefix(file: &WalFile) -> String {
    format!("locks/wal/{}.", file.name())
}

/// The content digest a claim on `file`'s name carries, if `key` is one.
pub fn parse_wal_claim<'k>(key: &'k ObjectKey, file: &WalFile) -> Option<&'k str> {
    let rest = key.as_str().strip_prefix(&wal_claims_prefix(file))?;
    let (sha16, tag) = rest.split_once('.')?;
    (sha16.len() == 16
        && sha16.bytes().all(|b| b.is_ascii_hexdigit())
        && tag.len() == 8
        && tag.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(sha16)
}

/// Where a WAL file is archived: `wal/<TLI+LOG>/<name>`; history files directly in
/// `wal/`.
pub fn wal_file(file: &WalFile) -> ObjectKey {
    match file.log_dir() {
        Some(dir) => key(format!("{WAL}{dir}/{}", file.name())),
        None => key(format!("{WAL}{}", file.name())),
    }
}

/// The archive's WAL file named by a key, if it is one.
pub fn parse_wal_key(key: &ObjectKey) -> Option<WalFile> {
    let rest = key.as_str().strip_prefix(WAL)?;
    let name = rest.rsplit('/').next()?;
    let file = WalFile::parse(name)?;
    (wal_file(&file) == *key).then_some(file)
}

/// Declarations of new primaries: `timelines/<TLI>.primary`, written by `wal-push`
/// when a copy restored with `--archive` archives its new timeline's history.
pub const TIMELINES: &str = "timelines/";

pub fn timeline_declaration(tli: u32) -> ObjectKey {
    key(format!("{TIMELINES}{tli:08X}.primary"))
}

/// A timeline a recovery attempt made and gave up: `timelines/<TLI>.abandoned`.
pub fn timeline_abandoned(tli: u32) -> ObjectKey {
    key(format!("{TIMELINES}{tli:08X}.abandoned"))
}

pub fn parse_timeline_abandoned(key: &ObjectKey) -> Option<u32> {
    let name = key.as_str().strip_prefix(TIMELINES)?.strip_suffix(".abandoned")?;
    (name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(name, 16).ok())
        .flatten()
}

pub fn parse_timeline_declaration(key: &ObjectKey) -> Option<u32> {
    let name = key.as_str().strip_prefix(TIMELINES)?.strip_suffix(".primary")?;
    (name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(name, 16).ok())
        .flatten()
}

/// Lists of keys `expire` removed from a versioned (Object Lock) bucket: the versions
/// of those keys are removed for good once their retention ends. `expired/<time>-<n>.json`.
pub const EXPIRED: &str = "expired/";

pub fn purge_list(at: &chrono::DateTime<chrono::Utc>) -> ObjectKey {
    key(format!(
        "{EXPIRED}{}-{:08x}.json",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    ))
}

/// pgdr's own bookkeeping (leases, probes, purge lists, keep marks): objects whose
/// deletion is routine, so their old versions may go once unlocked.
pub fn is_bookkeeping(key: &ObjectKey) -> bool {
    let k = key.as_str();
    k.starts_with("locks/")
        || k.starts_with(EXPIRED)
        || (k.starts_with(BACKUPS) && k.rsplit('/').next().is_some_and(is_keep_mark))
}

/// A throw-away object used by `check` to prove the repository is writable.
pub fn write_probe() -> ObjectKey {
    key(format!(
        "locks/check-probe-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// A key as a DBA types it for `pgdr cat`: a full key (`wal/…`, `backups/…`), or
/// `LABEL/NAME`, short for `backups/LABEL/NAME`. The error says what to type instead.
pub fn user_key(raw: &str) -> Result<ObjectKey, String> {
    let raw = raw.trim_start_matches('/');
    let labelled = raw
        .split_once('/')
        .and_then(|(first, rest)| first.parse::<BackupLabel>().ok().map(|l| (l, rest)));
    match labelled {
        Some((label, "")) => Err(format!("{raw} is a backup, not an object; try {label}/manifest.json")),
        Some((label, rest)) => backup_object(&label, rest)
            .map_err(|e| format!("{e:#} — see `pgdr cat {label}/manifest.json` for its objects")),
        None if raw.parse::<BackupLabel>().is_ok() => {
            Err(format!("{raw} is a backup, not an object; try {raw}/manifest.json"))
        }
        None => ObjectKey::new(raw).map_err(|e| format!("{e} — keys are like backups/LABEL/manifest.json or wal/…")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable() {
        let l: BackupLabel = "20261126T020000Z-L".parse().unwrap();
        assert_eq!(manifest(&l).as_str(), "backups/20261126T020000Z-L/manifest.json");
        assert_eq!(database_dump_name("app"), "databases/app.dump");
        assert_eq!(database_dump_name("my db/ü"), "databases/my%20db%2F%C3%BC.dump");
        assert_eq!(parse_backup_key(&manifest(&l)), Some((l.clone(), "manifest.json")));
        assert_eq!(
            parse_backup_key(&backup_object(&l, "globals.sql").unwrap()),
            Some((l.clone(), "globals.sql"))
        );
        let seg = WalFile::parse("000000010000000A000000FF").unwrap();
        assert_eq!(wal_file(&seg).as_str(), "wal/000000010000000A/000000010000000A000000FF");
        assert_eq!(parse_wal_key(&wal_file(&seg)), Some(seg));
        let hist = WalFile::parse("00000002.history").unwrap();
        assert_eq!(wal_file(&hist).as_str(), "wal/00000002.history");
        assert_eq!(parse_wal_key(&wal_file(&hist)), Some(hist));
        for bad in ["", "a//b", "../x", "x/", "/x", "."] {
            assert!(backup_object(&l, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_keys_and_report_names() {
        assert_eq!(
            user_key("20261126T020000Z-F/manifest.json").unwrap().as_str(),
            "backups/20261126T020000Z-F/manifest.json"
        );
        assert_eq!(
            user_key("/wal/00000002.history").unwrap().as_str(),
            "wal/00000002.history"
        );
        assert!(
            user_key("20261126T020000Z-F/")
                .unwrap_err()
                .contains("try 20261126T020000Z-F/manifest.json")
        );
        assert!(user_key("20261126T020000Z-F").is_err());
        assert!(user_key("20261126T020000Z-F/../x").is_err());
        let label: BackupLabel = "20261126T020000Z-F".parse().unwrap();
        let started = "2026-11-27T04:05:06Z".parse().unwrap();
        let k = verification(&started, &label);
        assert_eq!(k.as_str(), "verifications/20261127T040506Z-20261126T020000Z-F.json");
        assert_eq!(parse_verification(&k), Some(label));
        assert_eq!(bundle(7), "data/bundle-00007");
    }
}

//! Recovery configuration of a restored data directory: `recovery.signal` or
//! `standby.signal`, and `restore_command` plus the recovery target settings in
//! `postgresql.auto.conf` (earlier recovery settings there are replaced).

use std::fmt;
use std::io;
use std::path::Path;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay the whole archive.
    Latest,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(String),
    Lsn(String),
    Xid(String),
    Name(String),
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => write!(f, "the end of the archive"),
            RecoveryTarget::Immediate => write!(f, "the end of the backup (immediate)"),
            RecoveryTarget::Time(t) => write!(f, "time {t}"),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Xid(x) => write!(f, "transaction {x}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

/// What the server does when it reaches the target (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetAction {
    #[default]
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for TargetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct RecoveryOptions {
    pub restore_command: String,
    pub target: RecoveryTarget,
    pub action: TargetAction,
    pub exclusive: bool,
    /// `latest`, `current` or a timeline id.
    pub timeline: Option<String>,
    pub standby: bool,
    pub primary_conninfo: Option<String>,
    /// A standby's replication slot on its primary.
    pub primary_slot_name: Option<String>,
    /// Keep WAL archiving on: the DBA says the restored server becomes the new
    /// primary. Off by default, so a copy never writes into the repository.
    pub archive: bool,
    /// With `archive`: its first promotion declares its timeline production's (the
    /// marker below). Off when the caller declares it itself, later (a recovery
    /// runbook, at its switch).
    pub declare: bool,
    /// With `archive`: archive with this command instead of the one the backup
    /// carries (a new primary restored from a copy archives into that copy).
    pub archive_command: Option<String>,
}

/// In the data directory of a copy restored with `--archive`: `wal-push` declares the
/// timeline it creates a new primary (see `repo::archive::choose_timeline`).
pub const NEW_PRIMARY_MARKER: &str = "pgdr-new-primary";

/// Settings pgdr owns in postgresql.auto.conf; older values of these are dropped.
const OWNED: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "primary_conninfo",
    "primary_slot_name",
    // A copy's marker (`backup::source`): set again below for a copy, never kept.
    "pgdr.copy",
];

/// Settings a copy gets (never a new primary): no archiving into the repository, no
/// logical-replication workers, no pg_cron jobs.
const COPY_ONLY: &[&str] = &[
    "archive_mode",
    "max_logical_replication_workers",
    "cron.launch_active_jobs",
];

fn setting_name(line: &str) -> Option<String> {
    let name = line.split('=').next()?.trim();
    (!name.is_empty() && !name.starts_with('#')).then(|| name.to_ascii_lowercase())
}

/// A value for postgresql.conf: quoted, with quotes doubled and backslashes doubled
/// (the configuration parser reads backslash escapes inside quotes, unlike SQL with
/// standard_conforming_strings).
pub fn conf_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

pub fn write(data_dir: &Path, opts: &RecoveryOptions, comment: &str) -> io::Result<()> {
    let auto = data_dir.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    let mut out: Vec<String> = existing
        .lines()
        .filter(|l| {
            setting_name(l).is_none_or(|n| {
                !(OWNED.contains(&n.as_str())
                    || !opts.archive && COPY_ONLY.contains(&n.as_str())
                    || opts.archive_command.is_some() && n == "archive_command")
            })
        })
        .filter(|l| !l.starts_with("# pgdr:"))
        .map(str::to_string)
        .collect();
    out.push(format!("# pgdr: {comment}"));
    out.push(format!("restore_command = {}", conf_literal(&opts.restore_command)));
    let marker = data_dir.join(NEW_PRIMARY_MARKER);
    if opts.archive {
        if opts.declare {
            std::fs::write(&marker, format!("{comment}\n"))?;
        } else {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if let Some(command) = &opts.archive_command {
            out.push(format!("archive_command = {}", conf_literal(command)));
        }
    } else {
        // A copy (a test restore, verification, a drill) must not archive into the
        // repository: once promoted, its new timeline would lead later restores astray.
        out.push("archive_mode = 'off'".to_string());
        // Nor run production's work: no subscription's apply worker (it would take
        // production's replication slot and apply into the copy), no pg_cron job.
        out.push("max_logical_replication_workers = 0".to_string());
        out.push("cron.launch_active_jobs = 'off'".to_string());
        // Readable by any login (`current_setting('pgdr.copy', true)`): a backup
        // pointed here by mistake refuses to store the copy as production's.
        out.push(format!("pgdr.copy = {}", conf_literal(comment)));
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match &opts.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Immediate => out.push("recovery_target = 'immediate'".to_string()),
        RecoveryTarget::Time(t) => out.push(format!("recovery_target_time = {}", conf_literal(t))),
        RecoveryTarget::Lsn(l) => out.push(format!("recovery_target_lsn = {}", conf_literal(l))),
        RecoveryTarget::Xid(x) => out.push(format!("recovery_target_xid = {}", conf_literal(x))),
        RecoveryTarget::Name(n) => out.push(format!("recovery_target_name = {}", conf_literal(n))),
    }
    if !matches!(opts.target, RecoveryTarget::Latest) && !opts.standby {
        out.push(format!(
            "recovery_target_action = {}",
            conf_literal(opts.action.as_str())
        ));
        if opts.exclusive && !matches!(opts.target, RecoveryTarget::Immediate) {
            out.push("recovery_target_inclusive = 'false'".to_string());
        }
    }
    out.push(format!(
        "recovery_target_timeline = {}",
        conf_literal(opts.timeline.as_deref().unwrap_or("latest"))
    ));
    if let Some(conninfo) = &opts.primary_conninfo {
        out.push(format!("primary_conninfo = {}", conf_literal(conninfo)));
    }
    if let Some(slot) = &opts.primary_slot_name {
        out.push(format!("primary_slot_name = {}", conf_literal(slot)));
    }
    std::fs::write(&auto, out.join("\n") + "\n")?;
    let (signal, other) = if opts.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    let _ = std::fs::remove_file(data_dir.join(other));
    std::fs::write(data_dir.join(signal), b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_escape_backslashes_and_quotes() {
        // A path with a quote, quoted for sh ('\'') inside restore_command.
        assert_eq!(conf_literal(r"'/srv/o'\''neil'"), r"'''/srv/o''\\''''neil'''");
        assert_eq!(conf_literal("plain"), "'plain'");
    }

    #[test]
    fn replaces_earlier_recovery_settings() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("postgresql.auto.conf"),
            "work_mem = '8MB'\nrestore_command = 'old'\n",
        )
        .unwrap();
        let opts = RecoveryOptions {
            restore_command: "pgdr wal-fetch \"%f\" \"%p\"".into(),
            target: RecoveryTarget::Time("2026-11-26 02:00:00+00".into()),
            action: TargetAction::Promote,
            exclusive: false,
            timeline: None,
            standby: false,
            primary_conninfo: None,
            primary_slot_name: None,
            archive: false,
            declare: true,
            archive_command: None,
        };
        write(d.path(), &opts, "test").unwrap();
        write(d.path(), &opts, "test").unwrap();
        let conf = std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap();
        assert!(conf.contains("work_mem = '8MB'"));
        assert_eq!(conf.matches("restore_command").count(), 1, "{conf}");
        assert!(conf.contains("recovery_target_time = '2026-11-26 02:00:00+00'"));
        assert!(d.path().join("recovery.signal").exists());
        assert!(conf.contains("archive_mode = 'off'"), "{conf}");
        assert_eq!(conf.matches("max_logical_replication_workers = 0").count(), 1, "{conf}");
        assert_eq!(conf.matches("cron.launch_active_jobs = 'off'").count(), 1, "{conf}");
        assert!(!d.path().join(NEW_PRIMARY_MARKER).exists());
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("postgresql.auto.conf"), "archive_mode = 'on'\n").unwrap();
        write(d.path(), &RecoveryOptions { archive: true, ..opts }, "test").unwrap();
        let conf = std::fs::read_to_string(d.path().join("postgresql.auto.conf")).unwrap();
        assert!(
            conf.contains("archive_mode = 'on'") && !conf.contains("'off'") && !conf.contains("max_logical"),
            "{conf}"
        );
        assert!(d.path().join(NEW_PRIMARY_MARKER).exists());
    }
}

//! `backup --from-standby`: the data files are read on a standby of the primary
//! (`[postgres] standby_url`, `standby_data_dir`), so the backup's I/O stays off the
//! primary. The standby runs `pg_backup_start`/`pg_backup_stop` itself (PostgreSQL
//! allows both during recovery); the primary only switches WAL so the segments the
//! backup needs reach the archive, which the primary fills.
//!
//! Refused before anything is written: a standby that is not in recovery, belongs to
//! another cluster, replays another timeline than the primary's, or lags further than
//! `standby_max_lag_mb`.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::Client;

use crate::config::Config;
use crate::postgres::{Lsn, PgTarget, ServerInfo};
use crate::usage;

/// Lag allowed when `standby_max_lag_mb` is not set.
const DEFAULT_MAX_LAG_MB: u64 = 64;

/// A standby checked to be fit to back up from.
pub struct Standby {
    pub client: Client,
    pub data_dir: PathBuf,
    pub describe: String,
    /// Bytes of WAL it was behind the primary when checked.
    pub lag: u64,
    /// The timeline it replays, the primary's (its restartpoint's may be older).
    pub timeline: u32,
}

/// Connect to the configured standby and check it against the primary.
pub async fn check(config: &Config, primary: &Client, server: &ServerInfo) -> Result<Standby> {
    let url = config.postgres.standby_url.as_deref().ok_or_else(|| {
        usage!("--from-standby needs [postgres] standby_url (the standby to read from) and standby_data_dir (its data directory on this host)")
    })?;
    let data_dir = config.postgres.standby_data_dir.clone().ok_or_else(|| {
        usage!("--from-standby needs [postgres] standby_data_dir: the standby's data directory on this host, which the backup reads")
    })?;
    let target = PgTarget::from_config(Some(url))?;
    let describe = target.describe();
    let client = target
        .connect(None)
        .await
        .context("connecting to the standby ([postgres] standby_url)")?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,
                    (SELECT system_identifier FROM pg_control_system())::text,
                    coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                             (SELECT timeline_id FROM pg_control_checkpoint()))::int4,
                    current_setting('data_directory')",
            &[],
        )
        .await
        .context("reading the standby's state")?;
    let (in_recovery, replayed, sysid, standby_tli, its_dir): (bool, Option<String>, String, i32, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if !in_recovery {
        return Err(usage!(
            "{describe} ([postgres] standby_url) is not in recovery: it is a primary, not a standby — point standby_url at a standby, or back up without --from-standby"
        ));
    }
    if sysid != server.system_identifier {
        return Err(usage!(
            "the standby {describe} belongs to another cluster (system identifier {sysid}) than the primary ({}) — check [postgres] standby_url",
            server.system_identifier
        ));
    }
    // The timeline of the WAL the primary writes now (its checkpoint's lags a
    // promotion until the next checkpoint).
    let row = primary
        .query_one(
            "SELECT pg_current_wal_lsn()::text, ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4",
            &[],
        )
        .await
        .context("reading the primary's WAL position")?;
    let (current, primary_tli): (String, i32) = (row.get(0), row.get(1));
    if standby_tli != primary_tli {
        return Err(usage!(
            "the standby {describe} replays timeline {standby_tli} and the primary is on timeline {primary_tli} — it does not follow this primary; back up without --from-standby"
        ));
    }
    let current: Lsn = current.parse().map_err(|e: String| anyhow!(e))?;
    let replayed: Lsn = replayed
        .ok_or_else(|| {
            usage!("the standby {describe} has replayed no WAL yet — wait for it, or back up without --from-standby")
        })?
        .parse()
        .map_err(|e: String| anyhow!(e))?;
    let lag = current.0.saturating_sub(replayed.0);
    let limit = config.postgres.standby_max_lag_mb.unwrap_or(DEFAULT_MAX_LAG_MB);
    if lag > limit << 20 {
        return Err(usage!(
            "the standby {describe} is {} MiB of WAL behind the primary (replayed {replayed}, primary at {current}), more than standby_max_lag_mb = {limit} — wait for it to catch up, or back up without --from-standby",
            lag >> 20
        ));
    }
    // The directory read is the standby's own: a primary on the same host has the
    // same system identifier, and its newer files would make a torn backup.
    let same = match (std::fs::canonicalize(&data_dir), std::fs::canonicalize(&its_dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => data_dir == std::path::Path::new(&its_dir),
    };
    if !same {
        return Err(usage!(
            "[postgres] standby_data_dir is {}, but the standby {describe} runs from {its_dir} — set standby_data_dir to the standby's data directory",
            data_dir.display()
        ));
    }
    let local = crate::postgres::datadir::control_system_identifier(&data_dir).map_err(|e| {
        usage!(
            "cannot read {}/global/pg_control ({e}) — check [postgres] standby_data_dir",
            data_dir.display()
        )
    })?;
    if local != server.system_identifier {
        return Err(usage!(
            "{} belongs to another cluster (system identifier {local}) — check [postgres] standby_data_dir",
            data_dir.display()
        ));
    }
    Ok(Standby {
        client,
        data_dir,
        describe,
        lag,
        timeline: primary_tli as u32,
    })
}

//! Is the server a backup would read the repository's primary? A restored copy of
//! production has the same system identifier, so that check alone lets a backup of
//! the copy become production's newest, and the next `restore --backup latest` brings
//! back the copy's data. Three signs tell a copy from production, each checked before
//! anything is written:
//!
//! - the marker pgdr leaves in every copy it restores (`pgdr.copy` in
//!   postgresql.auto.conf; copies from before it carry only pgdr's comment and
//!   `archive_mode = 'off'`);
//! - the timeline: a server on a timeline the archive has never seen did not archive
//!   here (a primary stores its timeline's history the moment it is promoted);
//! - what it archived last: a server whose last archived WAL file is not in this
//!   repository archives somewhere else.

use anyhow::Result;
use tokio_postgres::Client;

use crate::config::Config;
use crate::postgres::WalFile;
use crate::repo::{Repo, layout};

/// The custom setting pgdr writes into a copy's postgresql.auto.conf.
pub const COPY_SETTING: &str = "pgdr.copy";

/// What the server says about itself.
#[derive(Debug, Default)]
pub struct Looks {
    pub in_recovery: bool,
    pub timeline: Option<u32>,
    /// `pgdr.copy`, when set.
    pub copy_marker: Option<String>,
    /// postgresql.auto.conf, when the server lets pgdr read it.
    pub auto_conf: Option<String>,
    pub last_archived: Option<String>,
    pub last_failed: Option<String>,
    pub archive_mode: String,
}

pub async fn look(client: &Client) -> Result<Looks> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), nullif(current_setting($1, true), ''), \
             (SELECT last_archived_wal FROM pg_stat_archiver), current_setting('archive_mode'), \
             (SELECT last_failed_wal FROM pg_stat_archiver), \
             CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
            &[&COPY_SETTING],
        )
        .await
        .map_err(crate::postgres::conn::db_err("asking the server what it is"))?;
    let timeline: Option<String> = row.get(5);
    // Superusers (and pg_read_server_files) may read it; others leave it unknown.
    let auto_conf = match client
        .query_one("SELECT pg_read_file('postgresql.auto.conf')", &[])
        .await
    {
        Ok(r) => r.get::<_, Option<String>>(0),
        Err(_) => None,
    };
    Ok(Looks {
        in_recovery: row.get(0),
        copy_marker: row.get(1),
        last_archived: row.get(2),
        archive_mode: row.get(3),
        last_failed: row.get(4),
        timeline: timeline.and_then(|t| u32::from_str_radix(&t, 16).ok()),
        auto_conf,
    })
}

/// pgdr's own note that this data directory is a copy it restored: the setting, or
/// (copies restored before it) its comment with archiving turned off by pgdr.
fn copy_note(looks: &Looks) -> Option<String> {
    if let Some(m) = &looks.copy_marker {
        return Some(format!("{COPY_SETTING} = '{m}'"));
    }
    let conf = looks.auto_conf.as_deref()?;
    let note = conf.lines().find(|l| l.starts_with("# pgdr: restored from"))?;
    conf.lines()
        .any(|l| l.replace(' ', "") == "archive_mode='off'")
        .then(|| note.trim_start_matches("# pgdr: ").to_string())
}

/// Why the server is not the repository's primary, or `None` when nothing says so.
pub async fn not_the_primary(config: &Config, repo: &Repo, looks: &Looks, server: &str) -> Result<Option<String>> {
    if let Some(note) = copy_note(looks) {
        return Ok(Some(format!(
            "{server} is a copy pgdr restored ({note}), not production — point [postgres] url at the primary; if this server is production now, remove {COPY_SETTING} and archive_mode from its postgresql.auto.conf and reload"
        )));
    }
    // Only the repository's own archive says where production archives; a copy of
    // the repository lags behind it.
    if looks.in_recovery || config.selected_repository().is_some() {
        return Ok(None);
    }
    let listing = crate::repo::archive::list(&repo.storage).await?;
    if listing.segments.is_empty() && listing.histories.is_empty() {
        return Ok(None); // no WAL archive (logical backups only): nothing to compare
    }
    if let Some(tli) = looks.timeline {
        let prefix = format!("{tli:08X}");
        let known = listing.histories.contains_key(&tli)
            || listing.segments.keys().any(|s| s.starts_with(&prefix))
            || listing.partials.iter().any(|s| s.starts_with(&prefix));
        // Just promoted, it may not have stored the history yet: one that archives
        // gets half a minute to.
        let known = known || (looks.archive_mode != "off" && history_arrives(repo, tli).await);
        if !known {
            let newest = listing
                .segments
                .keys()
                .filter_map(|s| u32::from_str_radix(&s[..8], 16).ok())
                .chain(listing.histories.keys().copied())
                .max()
                .unwrap_or(1);
            let archiving = match (looks.archive_mode.as_str(), &looks.last_failed) {
                ("off", _) => " It does not archive at all (archive_mode = off); if it is production, set archive_mode = on and archive_command = 'pgdr wal-push %p' and restart it.".to_string(),
                (_, Some(failed)) => format!(" Its archiver last failed on {failed}: if it is production, fix its archive_command and run the backup again."),
                _ => String::new(),
            };
            return Ok(Some(format!(
                "{server} writes on timeline {tli}, which this repository's archive has never seen (it holds timelines up to {newest}): a primary that archives here stores its timeline's history when it is promoted — it is a restored copy or another server; point [postgres] url at the primary (`pgdr check` shows both).{archiving}"
            )));
        }
    }
    if let Some(last) = &looks.last_archived
        && let Some(file) = WalFile::parse(last)
        && repo.storage.head(&layout::wal_file(&file)).await?.is_none()
    {
        return Ok(Some(format!(
            "{server} last archived {last}, which is not in this repository: it archives somewhere else (archive_mode = {}) — point [postgres] url at the server that archives here, or this configuration at its repository",
            looks.archive_mode
        )));
    }
    Ok(None)
}

/// Wait up to 30 s for timeline `tli`'s history file to be archived.
async fn history_arrives(repo: &Repo, tli: u32) -> bool {
    let key = layout::wal_file(&WalFile::History(format!("{tli:08X}.history")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if matches!(repo.storage.head(&key).await, Ok(Some(_))) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    false
}

/// Refuse, before anything is written, a backup of a server that is not the
/// repository's primary.
pub async fn require_primary(config: &Config, repo: &Repo) -> Result<()> {
    let target = crate::postgres::PgTarget::from_config(config.postgres.url.as_deref())?;
    let client = target.connect(None).await?;
    let server = crate::postgres::server::server_info(&client).await?;
    repo.check_system_identifier(&server.system_identifier)?;
    let looks = look(&client).await?;
    match not_the_primary(config, repo, &looks, &target.describe()).await? {
        Some(why) => Err(crate::usage!("{why}; nothing was written")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_known_by_its_setting_or_by_pgdrs_old_note() {
        let mut looks = Looks::default();
        assert_eq!(copy_note(&looks), None);
        looks.auto_conf = Some("# pgdr: restored from 20261201T000000Z-F at x\narchive_mode = 'on'\n".into());
        assert_eq!(copy_note(&looks), None, "a new primary keeps archiving");
        looks.auto_conf = Some("# pgdr: restored from 20261201T000000Z-F at x\narchive_mode = 'off'\n".into());
        assert!(
            copy_note(&looks)
                .unwrap()
                .starts_with("restored from 20261201T000000Z-F")
        );
        looks.copy_marker = Some("restored from L".into());
        assert_eq!(copy_note(&looks).unwrap(), "pgdr.copy = 'restored from L'");
    }
}

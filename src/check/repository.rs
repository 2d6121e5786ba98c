//! The repository: reachable, initialised for this cluster, keyed with the configured
//! key, and writable.

use bytes::Bytes;

use super::{CheckReport, Status};
use crate::config::Config;
use crate::postgres::server::ServerInfo;
use crate::repo::{self, info, layout};
use crate::storage::{self, DynStorage, PutMode};

/// The repository checks; the storage, when it could be opened, for the checks after.
pub(super) async fn checks(
    config: &Config,
    server_info: Option<&ServerInfo>,
    report: &mut CheckReport,
) -> Option<DynStorage> {
    let storage = storage::open(&config.repository, &config.cluster).await;
    let storage: Option<DynStorage> = report.result("repository", storage, |s| format!("{} opened", s.describe()));
    ownership(config, report);
    if let Some(storage) = &storage {
        let found = info::read(storage).await;
        match found {
            Ok(Some(info)) => {
                report.add(
                    Status::Ok,
                    "repository",
                    format!(
                        "repo.json found (cluster {:?}, PostgreSQL {})",
                        info.cluster, info.pg_major
                    ),
                );
                if let Some(s) = server_info {
                    if s.system_identifier == info.system_identifier {
                        report.add(
                            Status::Ok,
                            "identity",
                            format!("repository belongs to this cluster ({})", info.system_identifier),
                        );
                    } else {
                        report.add(
                            Status::Fail,
                            "identity",
                            format!(
                                "repository belongs to system identifier {}, the server is {} — wrong repository or cluster name",
                                info.system_identifier, s.system_identifier
                            ),
                        );
                    }
                }
                match repo::load_keyring(config) {
                    Ok(keys) => {
                        if keys.primary().id().to_hex() == info.key_id {
                            report.add(
                                Status::Ok,
                                "key",
                                format!("repository key present and matching (id {})", info.key_id),
                            );
                            let loaded: Vec<String> = keys.ids().iter().map(|id| id.to_hex()).collect();
                            let missing: Vec<&str> = info
                                .retired_keys
                                .iter()
                                .map(|r| r.key_id.as_str())
                                .filter(|id| !loaded.iter().any(|l| l == id))
                                .collect();
                            if !missing.is_empty() {
                                report.add(
                                    Status::Warn,
                                    "retired keys",
                                    format!(
                                        "retired key(s) {} are not in the key file's .retired/ directory: what they encrypted cannot be read until they are put back, or `pgdr key rewrap` has moved it to the current key",
                                        missing.join(", ")
                                    ),
                                );
                            } else if !info.retired_keys.is_empty() {
                                report.add(
                                    Status::Ok,
                                    "retired keys",
                                    format!("{} retired key(s) present", info.retired_keys.len()),
                                );
                            }
                        } else if info
                            .retired_keys
                            .iter()
                            .any(|r| r.key_id == keys.primary().id().to_hex())
                        {
                            report.add(
                                Status::Fail,
                                "key",
                                format!(
                                    "the configured key (id {}) was retired by `pgdr key rotate`; this repository now uses key id {} — install that key as key_file",
                                    keys.primary().id().to_hex(),
                                    info.key_id
                                ),
                            );
                        } else {
                            report.add(
                                Status::Fail,
                                "key",
                                format!(
                                    "the configured key (id {}) is not this repository's key (id {}) — check key_file / PGDR_KEY",
                                    keys.primary().id().to_hex(),
                                    info.key_id
                                ),
                            );
                        }
                    }
                    Err(e) => report.add(Status::Fail, "key", format!("{e:#}")),
                }
            }
            Ok(None) => report.add(Status::Fail, "repository", "no repo.json — run `pgdr init`"),
            Err(e) => report.add(Status::Fail, "repository", format!("{e:#}")),
        }
        let probe = layout::write_probe();
        let written = async {
            storage
                .put(&probe, Bytes::from_static(b"pgdr write probe"), PutMode::CreateNew)
                .await?;
            storage.delete(std::slice::from_ref(&probe)).await?;
            anyhow::Ok(())
        }
        .await;
        let writable = written.is_ok();
        report.result("writable", written, |_| {
            "repository accepts writes and deletes".to_string()
        });
        if writable {
            conditional_put(storage, report).await;
        }
    }

    storage
}

/// Does the store still honour `If-None-Match`? One that ignores it is recorded in
/// `repo.json`, and `wal-push` then claims names before storing (`archive::claim`).
/// The record is never taken back: a store that ignored it once may again.
async fn conditional_put(storage: &DynStorage, report: &mut CheckReport) {
    let honoured = match info::probe_conditional_put(storage).await {
        Ok(honoured) => honoured,
        Err(e) => return report.add(Status::Fail, "conditional writes", format!("{e:#}")),
    };
    // Read right before deciding and writing: a change of the flag alone, never an
    // overwrite of what another process (a key rotation) wrote before.
    let Ok(Some(recorded)) = info::read(storage).await else {
        return;
    };
    let record = |ignores: bool| {
        let mut updated = recorded.clone();
        updated.ignores_if_none_match = Some(ignores);
        async move { info::replace(storage, &updated).await }
    };
    match (honoured, recorded.ignores_if_none_match) {
        (true, Some(false)) => report.add(
            Status::Ok,
            "conditional writes",
            "the store refuses to overwrite a create-only write (If-None-Match)",
        ),
        // A repository from before the probe: record what the store does.
        (true, None) => match record(false).await {
            Ok(()) => report.add(
                Status::Ok,
                "conditional writes",
                "the store refuses to overwrite a create-only write (If-None-Match); recorded in repo.json",
            ),
            Err(e) => report.add(
                Status::Warn,
                "conditional writes",
                format!("the store honours If-None-Match, but recording that in repo.json failed: {e:#}"),
            ),
        },
        (true, Some(true)) => report.add(
            Status::Ok,
            "conditional writes",
            "the store refused to overwrite this time, but repo.json records it ignoring If-None-Match before: wal-push keeps claiming names first",
        ),
        (false, Some(true)) => report.add(
            Status::Warn,
            "conditional writes",
            "the store ignores If-None-Match (recorded in repo.json): wal-push claims each name before storing, a few more requests per segment",
        ),
        (false, None | Some(false)) => match record(true).await {
            Ok(()) => report.add(
                Status::Warn,
                "conditional writes",
                "the store ignores If-None-Match: a create-only write was overwritten. Recorded in repo.json; from now on wal-push claims each name before storing it, so two pushers of different bytes cannot both succeed",
            ),
            Err(e) => report.add(
                Status::Fail,
                "conditional writes",
                format!("the store ignores If-None-Match, and recording that in repo.json failed: {e:#}"),
            ),
        },
    }
}

/// Who the repository belongs to, whether pgdr runs as that user, and (local) every
/// entry inside that belongs to someone else: the owner's jobs cannot change those.
fn ownership(config: &Config, report: &mut CheckReport) {
    use crate::repo::owner;
    let Some(found) = owner::of(config) else { return };
    if let Some(root) = owner::local_root(config) {
        let (count, strays) = owner::strays(&root, found.uid, 3);
        // Root's entries are what stops the owner's jobs; another user's may be a
        // shared group's layout.
        let roots = if found.uid != 0 { owner::strays_of(&root, 0) } else { 0 };
        if count > 0 {
            let named: Vec<String> = strays
                .iter()
                .map(|p| {
                    use std::os::unix::fs::MetadataExt;
                    let whose = p
                        .symlink_metadata()
                        .map(|m| owner::user_name(m.uid()))
                        .unwrap_or_else(|_| "?".into());
                    format!("{} ({whose})", p.display())
                })
                .collect();
            report.add(
                if roots > 0 { Status::Fail } else { Status::Warn },
                "ownership",
                format!(
                    "{count} entr{} in the repository do not belong to its owner {}, whose jobs cannot change them: {}{} — give them back: chown -R {}: {}",
                    if count == 1 { "y" } else { "ies" },
                    found.name,
                    named.join(", "),
                    if count > named.len() { ", …" } else { "" },
                    found.name,
                    root.display()
                ),
            );
        }
    }
    let me = owner::me();
    if me == found.uid {
        report.add(
            Status::Ok,
            "owner",
            format!("{} belongs to {}, as whom pgdr runs", found.by, found.name),
        );
    } else {
        report.add(
            Status::Warn,
            "owner",
            format!(
                "{} belongs to {}, but pgdr runs as {}: {} — run the repository's jobs as {}",
                found.by,
                found.name,
                owner::user_name(me),
                if me == 0 {
                    "backup, expire, copy, key, schedule run and wal-push refuse"
                } else {
                    "it writes only what the repository's modes let it"
                },
                found.name
            ),
        );
    }
}

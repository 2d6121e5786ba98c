//! The start and end of every backup: a label nobody uses, the manifest skeleton, the
//! commit point (manifest last, only under the lock), and tidying after a failure.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;

use crate::postgres::ServerInfo;
use crate::repo::lock::BackupLock;
use crate::repo::manifest::{CompressionInfo, MANIFEST_FORMAT};
use crate::repo::{BackupKind, BackupLabel, Manifest, Repo, layout};

/// A manifest with everything but the backup's contents filled in.
pub(super) fn new_manifest(
    repo: &Repo,
    label: &BackupLabel,
    kind: BackupKind,
    tags: &[String],
    start_time: chrono::DateTime<Utc>,
    server: &ServerInfo,
) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        label: label.clone(),
        kind,
        tags: tags.to_vec(),
        start_time,
        stop_time: Utc::now(),
        pg_version: server.version.clone(),
        pg_version_num: server.version_num,
        system_identifier: server.system_identifier.clone(),
        key_id: repo.keys.primary().id().to_hex(),
        compression: CompressionInfo {
            algorithm: "zstd".into(),
            level: repo.compression.level,
        },
        databases: Vec::new(),
        globals: None,
        objects: Vec::new(),
        physical: None,
        catalog: Vec::new(),
    }
}

/// The commit point: the manifest, written last and never over another, and only
/// while this run still holds the backup lock (renewed right here: a lease that
/// lapsed while the repository was unreachable may be another backup's by now);
/// then the keep mark if asked for.
pub(super) async fn commit(repo: &Repo, manifest: &Manifest, keep: bool, lock: &BackupLock) -> Result<()> {
    let label = &manifest.label;
    lock.confirm()
        .await
        .with_context(|| format!("not committing backup {label}"))?;
    // A manifest is a promise that every object it names can be read back: check
    // they are all there, at their recorded size, before making it.
    for object in &manifest.objects {
        let key = layout::backup_object(label, &object.name)?;
        match repo.storage.head(&key).await? {
            Some(meta) if meta.size == object.stored.size => {}
            Some(meta) => {
                return Err(anyhow::anyhow!(
                    "{key} holds {} bytes, but {} were written — not committing backup {label}",
                    meta.size,
                    object.stored.size
                ));
            }
            None => {
                return Err(anyhow::anyhow!(
                    "{key} is missing from the repository after it was written — not committing backup {label}"
                ));
            }
        }
    }
    crate::repo::catalog::write_manifest(repo, manifest)
        .await
        .with_context(|| format!("writing the manifest of {label}"))?;
    if keep {
        crate::retention::set_keep(repo, label).await?;
    }
    Ok(())
}

/// After a failure: without a manifest nothing is visible anyway; removing the pieces
/// is tidiness. Returns the error to report.
/// Objects are removed only while the label is this run's own: under the backup
/// lock, and never when a manifest is there (that backup is somebody else's).
pub(super) async fn discard(repo: &Repo, label: &BackupLabel, e: anyhow::Error) -> anyhow::Error {
    if let Ok(objects) = repo.storage.list(&layout::backup_prefix(label)).await {
        if objects
            .iter()
            .any(|o| layout::parse_backup_key(&o.key).is_some_and(|(_, n)| layout::is_manifest(n)))
        {
            return e.context(format!(
                "backup {label} failed; a complete backup under the same label was left untouched"
            ));
        }
        let keys: Vec<_> = objects.into_iter().map(|o| o.key).collect();
        let _ = repo.storage.delete(&keys).await;
    }
    e.context(format!("backup {label} failed; nothing was kept"))
}

/// A label no other backup (complete or not) uses yet; `incremental`: a physical
/// incremental's (`-I`).
pub(super) async fn fresh_label(repo: &Repo, kind: BackupKind, incremental: bool) -> Result<BackupLabel> {
    for _ in 0..5 {
        let label = match incremental {
            true => BackupLabel::incremental(Utc::now()),
            false => BackupLabel::new(Utc::now(), kind),
        };
        if repo.storage.list(&layout::backup_prefix(&label)).await?.is_empty() {
            return Ok(label);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    Err(anyhow::anyhow!(
        "could not find a free backup label — is another backup starting right now?"
    ))
}

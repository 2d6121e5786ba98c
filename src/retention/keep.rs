//! Keep marks: `backups/<label>/keep.json`. A marked backup is never expired.

use anyhow::{Context, Result};

use crate::repo::{BackupLabel, Repo};

/// Write the keep mark of a backup.
pub async fn set_keep(repo: &Repo, label: &BackupLabel) -> Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({"keep": true, "marked": chrono::Utc::now()})).expect("json");
    repo.store()
        .bytes(
            &crate::repo::layout::keep_mark(label),
            "keep.json",
            body,
            crate::storage::PutMode::Overwrite,
        )
        .await
        .with_context(|| format!("marking {label} keep"))?;
    Ok(())
}

/// Remove the keep mark of a backup (expire may remove it again).
pub async fn clear_keep(repo: &Repo, label: &BackupLabel) -> Result<()> {
    repo.storage.delete(&[crate::repo::layout::keep_mark(label)]).await?;
    Ok(())
}

//! Claims on a WAL file's name, for stores that ignore `If-None-Match` (Garage; `init`
//! and `check` find out and record it in `repo.json`). There, two pushers of
//! different bytes under one name (a split brain, two clusters sharing an archive)
//! could both look, find nothing, write, and read their own write back: both would
//! tell PostgreSQL "archived" while the archive keeps one. So a pusher first writes
//! a claim under a key of its own (`locks/wal/<name>.<digest>.<random>`), then lists
//! the claims on that name: another claim for other bytes means a rival is storing
//! right now, and the push fails (PostgreSQL retries). Of two rivals, at most one
//! proceeds: the later of the two lists sees the earlier claim, and a claim goes only
//! once its segment is stored, where the next pusher's look finds it. Equal bytes
//! never conflict. This needs a store whose listing shows a completed write at once
//! (S3 has since 2020).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;

use crate::pipeline;
use crate::postgres::WalFile;
use crate::repo::{Repo, layout};
use crate::storage::{ObjectKey, PutMode};

/// A claim older than this is a dead pusher's: ignored and removed. A live pusher
/// holds its claim for one push, bounded by the store's timeouts.
const STALE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

#[must_use = "release the claim once the file is stored"]
pub struct Claim {
    key: ObjectKey,
}

impl Claim {
    pub async fn take(repo: &Repo, file: &WalFile, path: &Path) -> Result<Claim> {
        let sha = pipeline::tally::sha256_file(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        let ours = &sha[..16];
        let key = layout::wal_claim(file, ours);
        repo.storage
            .put(&key, Bytes::new(), PutMode::CreateNew)
            .await
            .with_context(|| format!("claiming the name {file} in {}", repo.storage.describe()))?;
        let claim = Claim { key };
        let listed = match repo.storage.list(&layout::wal_claims_prefix(file)).await {
            Ok(listed) => listed,
            Err(e) => {
                claim.release(repo).await;
                return Err(anyhow::Error::new(e).context(format!("listing the claims on {file}")));
            }
        };
        // "Now" is the store's clock: our own claim's time in the same listing (a
        // host whose clock runs ahead must not take live claims for dead ones).
        let now = listed
            .iter()
            .find(|m| m.key == claim.key)
            .and_then(|m| m.modified)
            .unwrap_or_else(chrono::Utc::now);
        let (mut stale, mut rivals) = (Vec::new(), 0);
        for meta in listed.iter().filter(|m| m.key != claim.key) {
            let Some(theirs) = layout::parse_wal_claim(&meta.key, file) else {
                continue;
            };
            if meta.modified.is_some_and(|t| now - t > STALE) {
                stale.push(meta.key.clone());
            } else if theirs != ours {
                rivals += 1;
            }
        }
        if !stale.is_empty() {
            tracing::info!("removing {} stale claim(s) on {file}", stale.len());
            let _ = repo.storage.delete(&stale).await;
        }
        if rivals > 0 {
            claim.release(repo).await;
            return Err(anyhow!(
                "another pusher is storing different content as {file} right now ({} ignores If-None-Match, so names are claimed first) — two clusters may be archiving into one repository, check [repository] url and cluster; PostgreSQL will retry",
                repo.storage.describe()
            ));
        }
        Ok(claim)
    }

    /// Remove the claim. A claim left behind (the store refused, the process died)
    /// only delays a rival with other bytes for `STALE`.
    pub async fn release(self, repo: &Repo) {
        if let Err(e) = repo.storage.delete(std::slice::from_ref(&self.key)).await {
            tracing::warn!("could not remove the claim {}: {e}", self.key);
        }
    }
}

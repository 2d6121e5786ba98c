//! Leases in the repository (`locks/<name>`): mutual exclusion between processes, and
//! between schedulers on different hosts. A lease names its holder and expires unless
//! renewed, so a holder that dies cannot block the job forever.
//!
//! Acquisition is a create-if-absent put; an expired lease is removed and the put
//! tried again. On a store that ignores If-None-Match (Garage, for one) two
//! acquirers racing in the same instant could both win; the read-back below narrows
//! that to the holder whose write landed last.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{BackupLabel, Repo, layout};
use crate::pipeline;
use crate::storage::{ObjectKey, PutMode};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    pub holder: String,
    pub expires: DateTime<Utc>,
    /// A use lease's backups (`UseLease`); empty for a lock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<BackupLabel>,
    /// What holds a use lease: "restore", "verify", "copy".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

pub struct Lease {
    repo: Repo,
    key: ObjectKey,
    holder: String,
    ttl: Duration,
    uses: Vec<BackupLabel>,
    purpose: Option<String>,
}

/// Who is asking: host, process and a random tag (two schedulers in one process differ).
/// The host part carries the boot id, so "the same host" means the same running
/// kernel: a pid is only meaningful there (not after a reboot, not on a cloned VM
/// that kept the hostname).
pub fn holder_id() -> String {
    format!("{}:{}:{:08x}", host_part(), std::process::id(), rand::random::<u32>())
}

fn host_part() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains(':'))
        .unwrap_or_else(|| "host".into());
    match boot_id() {
        Some(boot) => format!("{host}@{boot}"),
        None => host,
    }
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id: String = id.trim().chars().filter(|c| c.is_ascii_hexdigit()).take(12).collect();
    (id.len() == 12).then_some(id)
}

async fn read(repo: &Repo, key: &ObjectKey) -> Result<Option<LeaseBody>> {
    match pipeline::load_bytes(&repo.storage, key, &repo.keys).await {
        Ok(data) => Ok(serde_json::from_slice(&data).ok()),
        Err(e) if crate::storage::is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Lease {
    /// Try to take the lease `name`; `Ok(Err(holder))` names who has it.
    pub async fn acquire(
        repo: &Repo,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<std::result::Result<Lease, String>> {
        Lease::acquire_for(repo, name, holder, ttl, Vec::new(), None).await
    }

    async fn acquire_for(
        repo: &Repo,
        name: &str,
        holder: &str,
        ttl: Duration,
        uses: Vec<BackupLabel>,
        purpose: Option<String>,
    ) -> Result<std::result::Result<Lease, String>> {
        let key = layout::lock(name);
        for _ in 0..2 {
            let body = LeaseBody {
                holder: holder.to_string(),
                expires: Utc::now() + ttl,
                uses: uses.clone(),
                purpose: purpose.clone(),
            };
            let data = serde_json::to_vec(&body).expect("lease serialises");
            match repo.store().bytes(&key, "lock", data, PutMode::CreateNew).await {
                Ok(_) => {
                    // Read back: on a store that ignores If-None-Match two takers can
                    // both get past `storage::no_overwrite`'s look; the last writer wins.
                    return match read(repo, &key).await? {
                        Some(b) if b.holder == holder => Ok(Ok(Lease {
                            repo: repo.clone(),
                            key,
                            holder: holder.to_string(),
                            ttl,
                            uses,
                            purpose,
                        })),
                        Some(b) => Ok(Err(b.holder)),
                        None => Ok(Err("another process (the lease vanished while acquiring)".into())),
                    };
                }
                Err(e) if crate::storage::is_already_exists(&e) => {}
                Err(e) => return Err(e),
            }
            match read(repo, &key).await? {
                Some(current) if current.expires > Utc::now() => return Ok(Err(current.holder)),
                // Expired (its holder died) or unreadable: clear it and try again.
                _ => {
                    let refused = repo.storage.delete(std::slice::from_ref(&key)).await?;
                    if let Some(r) = refused.first() {
                        return Err(anyhow::anyhow!(
                            "cannot remove the expired lease {}: {}",
                            r.key,
                            r.reason
                        ));
                    }
                }
            }
        }
        Ok(Err("another process (the lease changed hands while acquiring)".into()))
    }

    /// Extend the lease; false if it was lost (expired and taken over).
    pub async fn renew(&self) -> Result<bool> {
        match read(&self.repo, &self.key).await? {
            Some(b) if b.holder == self.holder => {
                let body = LeaseBody {
                    holder: self.holder.clone(),
                    expires: Utc::now() + self.ttl,
                    uses: self.uses.clone(),
                    purpose: self.purpose.clone(),
                };
                let data = serde_json::to_vec(&body).expect("lease serialises");
                self.repo
                    .store()
                    .bytes(&self.key, "lock", data, PutMode::Overwrite)
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub async fn release(&self) -> Result<()> {
        if read(&self.repo, &self.key)
            .await?
            .is_some_and(|b| b.holder == self.holder)
        {
            self.repo.storage.delete(std::slice::from_ref(&self.key)).await?;
        }
        Ok(())
    }
}

/// The name of the lease every backup of a cluster holds while it runs: one backup at
/// a time, so two started in the same second cannot collide on a label, and orphan
/// cleanup can tell a running backup from a dead one.
pub const BACKUP_LOCK: &str = "backup";
const BACKUP_TTL: Duration = Duration::from_secs(120);

/// A held backup lock; renewed in the background until released or dropped.
pub struct BackupLock {
    lease: std::sync::Arc<Lease>,
    renewer: tokio::task::JoinHandle<()>,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Whether `holder` (host@boot:pid:tag) names a dead process on this host, in this
/// boot, so its lease can be taken over at once instead of after its expiry. A
/// holder without a boot id is never judged dead: its pid may be another machine's.
fn holder_is_dead_here(holder: &str) -> bool {
    let mut parts = holder.rsplitn(3, ':');
    let (_tag, pid, host) = (parts.next(), parts.next(), parts.next());
    let here = host_part();
    match (host, pid.and_then(|p| p.parse::<i32>().ok())) {
        (Some(h), Some(pid)) if h == here && h.contains('@') && pid > 0 => !crate::process::exists(pid),
        _ => false,
    }
}

/// Remove the lease `key` if it still names `holder` (read again right before: it may
/// have changed hands since it was judged). A refused delete is an error, never
/// taken for success.
async fn remove_lease_of(repo: &Repo, key: &ObjectKey, holder: &str) -> Result<bool> {
    match read(repo, key).await? {
        Some(b) if b.holder == holder => {}
        _ => return Ok(false),
    }
    let refused = repo.storage.delete(std::slice::from_ref(key)).await?;
    if let Some(r) = refused.first() {
        return Err(anyhow::anyhow!("cannot remove the lease {}: {}", r.key, r.reason));
    }
    Ok(true)
}

impl BackupLock {
    /// Take the cluster's backup lock, waiting up to `wait` for a running backup to
    /// finish; `Ok(Err(holder))` names who still has it.
    pub async fn acquire(repo: &Repo, wait: Duration) -> Result<std::result::Result<BackupLock, String>> {
        let holder = holder_id();
        let deadline = std::time::Instant::now() + wait;
        // A dead holder's lease is removed at once, a bounded number of times: a store
        // whose deletes do not take must not keep this loop spinning past the deadline.
        let mut takeovers = 0;
        loop {
            match Lease::acquire(repo, BACKUP_LOCK, &holder, BACKUP_TTL).await? {
                Ok(lease) => return Ok(Ok(BackupLock::hold(lease))),
                Err(other) if takeovers < 3 && holder_is_dead_here(&other) => {
                    takeovers += 1;
                    if remove_lease_of(repo, &layout::lock(BACKUP_LOCK), &other).await? {
                        tracing::warn!("the backup lock was held by {other}, which is no longer running; took it over");
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(other) if std::time::Instant::now() >= deadline => return Ok(Err(other)),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    fn hold(lease: Lease) -> BackupLock {
        let lease = std::sync::Arc::new(lease);
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewer = {
            let lease = lease.clone();
            let lost = lost.clone();
            tokio::spawn(async move {
                let mut last_renewed = std::time::Instant::now();
                loop {
                    tokio::time::sleep(BACKUP_TTL / 4).await;
                    match lease.renew().await {
                        // Renewed, but only after the lease could have expired: another
                        // backup may have held it meanwhile.
                        Ok(true) if last_renewed.elapsed() >= BACKUP_TTL => {
                            tracing::warn!("the backup lock was renewed only after it had lapsed");
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        Ok(true) => last_renewed = std::time::Instant::now(),
                        Ok(false) => {
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        // Not renewed for a whole TTL: another backup may have taken
                        // the lease; this run must not commit even if it comes back.
                        Err(e) if last_renewed.elapsed() >= BACKUP_TTL => {
                            tracing::warn!("cannot renew the backup lock ({e:#}); it has lapsed");
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        Err(e) => tracing::warn!("cannot renew the backup lock ({e:#}); retrying"),
                    }
                }
            })
        };
        BackupLock { lease, renewer, lost }
    }

    /// False if the lease lapsed or another process took it (the backup must not
    /// commit then: its label is no longer its own).
    pub fn still_held(&self) -> bool {
        !self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Renew now and make sure the lease is still this run's: the check before a
    /// commit. An error if it lapsed, changed hands, or cannot be renewed.
    pub async fn confirm(&self) -> Result<()> {
        if !self.still_held() {
            return Err(anyhow::anyhow!(
                "the backup lock lapsed while the backup ran (repository unreachable for minutes?)"
            ));
        }
        match self.lease.renew().await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(anyhow::anyhow!(
                    "the backup lock was taken over by another process while this backup ran"
                ))
            }
            Err(e) => Err(e.context("renewing the backup lock")),
        }
    }

    pub async fn release(self) {
        self.renewer.abort();
        if let Err(e) = self.lease.release().await {
            tracing::warn!("releasing the backup lock: {e:#} (it expires by itself)");
        }
    }
}

impl Drop for BackupLock {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Use leases: `locks/use-<random>`, one per restore, verify or copy, naming the
/// backups it reads. `expire` keeps those backups — and, for a physical one, every WAL
/// segment from its start — while the lease is renewed; one whose holder died lapses
/// after its TTL (or at once, on the holder's own host).
const USE_PREFIX: &str = "use-";
const USE_TTL: Duration = Duration::from_secs(300);

/// A use lease, renewed in the background; removed by `release` (or lapses). A
/// repository pgdr may only read (read-only credentials at restore time) gets none:
/// the restore goes on, with a warning that an `expire` elsewhere could interfere.
pub struct UseLease {
    held: Option<(std::sync::Arc<Lease>, tokio::task::JoinHandle<()>)>,
}

impl UseLease {
    /// Announce that `labels` are being read for `purpose`, then make sure each is
    /// still there: an `expire` that planned before the announcement may have removed
    /// one, and a restore must not start on a backup that is going away.
    pub async fn acquire(repo: &Repo, labels: &[BackupLabel], purpose: &str) -> Result<UseLease> {
        let name = format!("{USE_PREFIX}{:016x}", rand::random::<u64>());
        let taken = Lease::acquire_for(
            repo,
            &name,
            &holder_id(),
            USE_TTL,
            labels.to_vec(),
            Some(purpose.to_string()),
        )
        .await;
        let held = match taken {
            Ok(Ok(lease)) => {
                let lease = std::sync::Arc::new(lease);
                let renewer = {
                    let lease = lease.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(USE_TTL / 5).await;
                            if let Err(e) = lease.renew().await {
                                tracing::warn!("cannot renew the lease that keeps expire away ({e:#}); retrying");
                            }
                        }
                    })
                };
                Some((lease, renewer))
            }
            Ok(Err(other)) => {
                tracing::warn!(
                    "cannot announce this {purpose} to expire ({other}); an expire running meanwhile could remove what it reads"
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    "cannot announce this {purpose} to expire ({e:#}); an expire running meanwhile could remove what it reads"
                );
                None
            }
        };
        let lease = UseLease { held };
        for label in labels {
            if repo.storage.head(&layout::manifest(label)).await?.is_none() {
                lease.release().await;
                return Err(anyhow::anyhow!(
                    "backup {label} was removed (by expire?) just as this {purpose} began — choose another backup"
                ));
            }
        }
        Ok(lease)
    }

    pub async fn release(mut self) {
        if let Some((lease, renewer)) = self.held.take() {
            renewer.abort();
            if let Err(e) = lease.release().await {
                tracing::warn!("releasing a use lease: {e:#} (it lapses by itself)");
            }
        }
    }
}

impl Drop for UseLease {
    fn drop(&mut self) {
        if let Some((_, renewer)) = &self.held {
            renewer.abort();
        }
    }
}

/// The backups live use leases name, each with who uses it (for expire's report).
pub async fn in_use(repo: &Repo) -> Result<std::collections::BTreeMap<BackupLabel, String>> {
    let mut out = std::collections::BTreeMap::new();
    let prefix = layout::lock(USE_PREFIX);
    for meta in repo.storage.list(prefix.as_str()).await? {
        let Some(body) = read(repo, &meta.key).await? else {
            continue;
        };
        if body.expires <= Utc::now() || holder_is_dead_here(&body.holder) {
            continue;
        }
        let host = body.holder.split(['@', ':']).next().unwrap_or("?").to_string();
        for label in body.uses {
            out.insert(
                label,
                format!(
                    "in use by a {} on {host} (expire leaves it until that ends)",
                    body.purpose.as_deref().unwrap_or("reader")
                ),
            );
        }
    }
    Ok(out)
}

//! `pgdr standby create`: a streaming standby built from the latest backup plus the
//! archived WAL (a physical restore with `standby.signal`), `primary_conninfo` without
//! a password (a password goes into a passfile beside the data directory, mode 0600,
//! never into the data directory, which later backups would copy), `restore_command`
//! for catching up, optionally a replication slot; started, and watched until it
//! streams from the primary. It keeps archiving configured, so once promoted it
//! archives its new timeline as the new primary.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::PgTarget;
use crate::postgres::recovery::{RecoveryTarget, TargetAction};
use crate::restore::physical::{self, Listen, PhysicalRestoreOptions, TargetTimeline};
use crate::restore::report::PhysicalRestoreReport;
use crate::restore::target::Target;
use crate::switch::Endpoint;

#[derive(Debug, Clone)]
pub struct StandbyOptions {
    /// The data directory to create.
    pub to: PathBuf,
    pub primary: Endpoint,
    /// A physical replication slot on the primary (created if missing).
    pub slot: Option<String>,
    pub listen: Listen,
    pub backup: String,
    pub jobs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyReport {
    pub data_dir: PathBuf,
    pub primary: Endpoint,
    pub slot: Option<String>,
    pub restore: PhysicalRestoreReport,
    /// The WAL position the standby had received when it was seen streaming.
    pub streaming_from: String,
    pub seconds: f64,
}

impl fmt::Display for StandbyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "standby {} streams from {} (received up to {}){}; built from {} in {:.1} s",
            self.data_dir.display(),
            self.primary,
            self.streaming_from,
            self.slot
                .as_ref()
                .map(|s| format!(" through slot {s}"))
                .unwrap_or_default(),
            self.restore.backup,
            self.seconds
        )
    }
}

fn conninfo_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

pub async fn create(config: &Config, opts: &StandbyOptions, say: &mut dyn FnMut(String)) -> Result<StandbyReport> {
    let started = Instant::now();
    if let Some(slot) = &opts.slot
        && (slot.is_empty()
            || !slot
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    {
        return Err(crate::usage!(
            "--slot {slot:?}: a replication slot name is lower-case letters, digits and '_'"
        ));
    }
    let primary =
        PgTarget::from_config(config.postgres.url.as_deref())?.with_address(&opts.primary.host, opts.primary.port);
    let mut conninfo = format!(
        "host={} port={} user={} application_name=pgdr_standby",
        conninfo_value(&opts.primary.host),
        opts.primary.port,
        conninfo_value(&primary.user)
    );
    if let Some(password) = primary.password_for_replication() {
        let name = opts
            .to
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "standby".into());
        let passfile = opts.to.with_file_name(format!(".{name}.pgpass"));
        write_passfile(&passfile, &opts.primary, &primary.user, &password)?;
        conninfo.push_str(&format!(" passfile={}", conninfo_value(&passfile.to_string_lossy())));
    }
    let mut slot_created = false;
    if let Some(slot) = &opts.slot {
        let c = primary
            .connect(Some("postgres"))
            .await
            .with_context(|| format!("connecting to the primary {} to create slot {slot}", opts.primary))?;
        slot_created = c
            .execute(
                "SELECT pg_create_physical_replication_slot($1::text, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1::text)",
                &[slot],
            )
            .await
            .with_context(|| format!("creating replication slot {slot} on {}", opts.primary))?
            == 1;
    }
    let restore = PhysicalRestoreOptions {
        backup: opts.backup.clone(),
        to: opts.to.clone(),
        target: Target {
            recovery: RecoveryTarget::Latest,
            time: None,
            lsn: None,
            xid: None,
        },
        action: TargetAction::Promote,
        exclusive: false,
        timeline: TargetTimeline::Latest,
        standby: true,
        primary_conninfo: Some(conninfo),
        primary_slot_name: opts.slot.clone(),
        delta: false,
        tablespace_map: Default::default(),
        archive: true,
        declare: true,
        jobs: opts.jobs,
        start: Some(opts.listen.clone()),
    };
    let built = async {
        let plan = physical::plan(config, &restore).await?;
        say(plan.to_string());
        physical::execute(config, &restore, plan, say).await
    }
    .await;
    let restored = match built {
        Ok(r) => r,
        Err(e) => {
            // A slot nobody uses holds WAL on the primary until its disk fills: the
            // one this run created goes again.
            if let Some(slot) = opts.slot.as_ref().filter(|_| slot_created)
                && let Ok(c) = primary.connect(Some("postgres")).await
            {
                let _ = c
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1::text AND NOT active",
                        &[slot],
                    )
                    .await;
            }
            return Err(e);
        }
    };
    // Streaming, not just replaying from the archive.
    let host = opts
        .listen
        .addresses
        .split(',')
        .next()
        .filter(|h| !h.is_empty() && *h != "*")
        .unwrap_or("127.0.0.1")
        .to_string();
    let standby = PgTarget::from_config(config.postgres.url.as_deref())?.with_address(&host, opts.listen.port);
    let deadline = Instant::now() + Duration::from_secs(120);
    let streaming_from = loop {
        let seen = async {
            let c = standby.connect(Some("postgres")).await?;
            let row = c
                .query_opt(
                    "SELECT status, coalesce(flushed_lsn, '0/0')::text FROM pg_stat_wal_receiver",
                    &[],
                )
                .await?;
            anyhow::Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))))
        }
        .await;
        if let Ok(Some((status, lsn))) = &seen
            && status == "streaming"
        {
            break lsn.clone();
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the standby in {} runs but does not stream from {} after 120 s ({}) — check the primary's pg_hba.conf (a replication line), max_wal_senders, and {}",
                opts.to.display(),
                opts.primary,
                match seen {
                    Ok(Some((status, _))) => format!("WAL receiver {status}"),
                    Ok(None) => "no WAL receiver".to_string(),
                    Err(e) => format!("{e:#}"),
                },
                opts.to.join("pgdr-recovery.log").display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    Ok(StandbyReport {
        data_dir: opts.to.clone(),
        primary: opts.primary.clone(),
        slot: opts.slot.clone(),
        restore: restored,
        streaming_from,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `host:port:*:user:password` for the replication connection, mode 0600, owned by
/// the user the server runs as.
fn write_passfile(path: &std::path::Path, primary: &Endpoint, user: &str, password: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode through `open`: set it.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(
        f,
        "{}:{}:*:{}:{}",
        esc(&primary.host),
        primary.port,
        esc(user),
        esc(password)
    )?;
    if let Some((uid, gid)) = crate::process::postgres_owner() {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    Ok(())
}

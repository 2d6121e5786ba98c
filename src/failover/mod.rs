//! Failover to a standby (`pgdr failover`), as phases:
//! `prepare` (every check that can be made without changing anything: the standby,
//! the fence, the switch) → the plan and a confirmation → `execute`: fence → catch up
//! → promote (the point of no return) → prove writes → switch → declare the new
//! timeline → report the RPO.
//!
//! The rules it keeps: an old primary pgdr cannot reach is unknown, never down (see
//! `fence`); the standby replays everything the old primary wrote before it is
//! promoted, or the failover stops (the fence taken back) unless the DBA accepts the
//! loss; once a promotion is requested, PgBouncer is never sent back to the fenced
//! primary. Building a standby from a backup is `standby`.

pub mod feed;
pub mod fence;
mod prepare;
pub mod standby;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::postgres::{Lsn, PgTarget};
use crate::preflight::Checks;
use crate::steps::{Log, StepLog};
use crate::switch::{self, Endpoint, SwitchReport};

pub use fence::{FencePlan, FenceProof};
pub use prepare::{Prepared, plan_text, prepare};

#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// The standby to promote.
    pub to: Endpoint,
    /// The old primary, as pgdr reaches it.
    pub old: Option<Endpoint>,
    /// The old primary's data directory, when it is on this host: fenced by a fast stop.
    pub old_data_dir: Option<PathBuf>,
    /// The standby's data directory, when it is on this host: given the old primary's
    /// WAL from its `pg_wal` if it falls short.
    pub standby_data_dir: Option<PathBuf>,
    /// The DBA's word that the old primary cannot take writes.
    pub old_primary_is_down: bool,
    /// Promote even when the standby cannot replay all the old primary wrote.
    pub accept_data_loss: bool,
    pub dry_run: bool,
}

/// The data lost at promotion, as far as it can be known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rpo", rename_all = "kebab-case")]
pub enum Rpo {
    /// The standby replayed past the old primary's last record.
    NoneLost,
    /// WAL the old primary wrote and the standby never replayed.
    Lost { bytes: u64 },
    /// The old primary's last position could not be read after the fence.
    Unknown { why: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverReport {
    pub new_primary: Endpoint,
    pub old_primary: Option<Endpoint>,
    pub ok: bool,
    pub dry_run: bool,
    /// What was checked before anything changed.
    #[serde(default)]
    pub checks: Checks,
    /// How the old primary was fenced, in words.
    pub fenced: Option<String>,
    /// The same, as data; `weak` when the old primary could still write somehow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceProof>,
    #[serde(default)]
    pub fence_weak: bool,
    /// The old primary's last WAL position, read after the fence (its shutdown
    /// checkpoint after a clean stop; its position when it still answers).
    pub old_lsn: Option<String>,
    /// The standby's replay position when it was promoted.
    pub promoted_at_lsn: Option<String>,
    /// The data lost; `rpo_bytes` is its byte count when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Rpo>,
    pub rpo_bytes: Option<u64>,
    /// The DBA accepted a loss (`--accept-data-loss`).
    #[serde(default)]
    pub data_loss_accepted: bool,
    /// The newest commit the standby had replayed.
    pub last_replayed_commit: Option<String>,
    /// The timeline the new primary writes on, declared in the repository as the one
    /// `latest` follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub steps: Vec<StepLog>,
    pub switch: Option<SwitchReport>,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in self.steps.iter().chain(self.switch.iter().flat_map(|s| s.steps.iter())) {
            writeln!(f, "{s}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        if self.dry_run {
            return write!(f, "dry run: nothing was changed");
        }
        if let Some(e) = &self.error {
            return write!(f, "failover to {} FAILED: {e}", self.new_primary);
        }
        write!(
            f,
            "failover to {} done in {:.1} s; fence: {}; RPO: {}",
            self.new_primary,
            self.seconds,
            self.fenced.as_deref().unwrap_or("none"),
            match &self.rpo {
                Some(Rpo::NoneLost) => "no data lost (the standby had replayed all the old primary's WAL)".to_string(),
                Some(Rpo::Lost { bytes }) => format!(
                    "{bytes} bytes of WAL LOST (old primary at {}, standby promoted at {}; accepted with --accept-data-loss)",
                    self.old_lsn.as_deref().unwrap_or("?"),
                    self.promoted_at_lsn.as_deref().unwrap_or("?")
                ),
                Some(Rpo::Unknown { why }) => format!(
                    "UNKNOWN ({why}); the standby replayed to {}, last commit {}",
                    self.promoted_at_lsn.as_deref().unwrap_or("?"),
                    self.last_replayed_commit.as_deref().unwrap_or("?")
                ),
                None => "not measured".to_string(),
            }
        )
    }
}

fn target(config: &Config, at: &Endpoint) -> Result<PgTarget> {
    Ok(PgTarget::from_config(config.postgres.url.as_deref())?.with_address(&at.host, at.port))
}

/// How the standby stood when it had caught up (or was given up on).
struct CaughtUp {
    replayed: Lsn,
    last_commit: Option<String>,
    /// Segments copied from the old primary's pg_wal to get there.
    fed: usize,
}

/// Run the failover from a `prepare` whose checks passed. A failure after it started
/// is in the report (`ok: false`) with the state it left behind.
pub async fn execute(config: &Config, opts: &FailoverOptions, prepared: Prepared) -> FailoverReport {
    let started = Instant::now();
    let mut report = FailoverReport::new(opts, &prepared.checks);
    if opts.dry_run {
        report.seconds = started.elapsed().as_secs_f64();
        return report;
    }
    // Never past a failed check, whoever calls (a failed fence check leaves no plan
    // worth acting on).
    if let Err(e) = prepared.checks.require("failover") {
        report.ok = false;
        report.error = Some(format!("{e:#}"));
        return report;
    }
    // Queries through PgBouncer wait from here until the new primary takes them: the
    // old one is fenced meanwhile, and no client sees it refuse.
    let mut session = match prepared
        .switch
        .as_ref()
        .map(|p| switch::Session::new(config, p, false))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => {
            report.ok = false;
            report.error = Some(format!("{e:#}; nothing was fenced or promoted"));
            return report;
        }
    };
    if let Some(s) = &mut session {
        s.pause().await;
        if s.failed() {
            report.ok = false;
            report.error = Some("PgBouncer could not be paused; nothing was fenced or promoted".to_string());
            report.switch = session.map(|s| s.report());
            report.seconds = started.elapsed().as_secs_f64();
            return report;
        }
    }
    let mut log = Log::new("failover");
    let standby = &prepared.standby;
    let Some(fence_plan) = &prepared.fence else {
        report.ok = false;
        report.error = Some("no fence: nothing was fenced or promoted".to_string());
        return report;
    };
    let outcome = before_promotion(
        config,
        opts,
        fence_plan,
        prepared.feed.as_ref(),
        standby,
        &mut log,
        &mut report,
    )
    .await;
    if let Err(e) = outcome {
        stopped_before_promotion(config, opts, fence_plan, e, session, log, &mut report).await;
    } else {
        after_promotion(config, opts, standby, session, log, &mut report).await;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

impl FailoverReport {
    /// The report before anything is done: what was checked, nothing else yet.
    fn new(opts: &FailoverOptions, checks: &Checks) -> Self {
        FailoverReport {
            new_primary: opts.to.clone(),
            old_primary: opts.old.clone(),
            ok: true,
            dry_run: opts.dry_run,
            checks: checks.clone(),
            fenced: None,
            fence: None,
            fence_weak: false,
            old_lsn: None,
            promoted_at_lsn: None,
            rpo: None,
            rpo_bytes: None,
            data_loss_accepted: false,
            last_replayed_commit: None,
            timeline: None,
            warnings: Vec::new(),
            steps: Vec::new(),
            switch: None,
            seconds: 0.0,
            error: None,
        }
    }
}

/// Nothing promoted (`e` says why): the fence is taken back so applications have their
/// old primary again, and PgBouncer resumes there.
async fn stopped_before_promotion(
    config: &Config,
    opts: &FailoverOptions,
    fence_plan: &FencePlan,
    e: anyhow::Error,
    session: Option<switch::Session<'_>>,
    mut log: Log,
    report: &mut FailoverReport,
) {
    let mut why = format!("{e:#}");
    if report.fence.is_some() {
        match log
            .step("take the fence back", async {
                let said = fence::undo(config, fence_plan).await?;
                Ok(((), said))
            })
            .await
        {
            Ok(()) => why.push_str(&format!(" — {} was not promoted and the fence was taken back", opts.to)),
            Err(u) => why.push_str(&format!(
                " — {} was not promoted; the old primary is still fenced ({u:#}): start it again, or fail over with --accept-data-loss",
                opts.to
            )),
        }
    } else {
        why.push_str(" — nothing was fenced or promoted");
    }
    report.steps = log.steps;
    report.ok = false;
    report.error = Some(why.clone());
    if let Some(mut s) = session {
        s.abandon(anyhow!("the failover stopped before the promotion: {why}"))
            .await;
        report.switch = Some(s.report());
    }
}

/// The point of no return is passed (promotion requested): watch the promotion,
/// prove a write, switch connections, declare the new timeline.
async fn after_promotion(
    config: &Config,
    opts: &FailoverOptions,
    standby: &tokio_postgres::Client,
    session: Option<switch::Session<'_>>,
    mut log: Log,
    report: &mut FailoverReport,
) {
    // The point of no return: from the promotion request on, PgBouncer goes only to
    // the new primary, whatever fails later.
    let mut failure = promote(config, opts, standby, &mut log, report).await.err();
    if failure.is_none() {
        failure = verify_writes(standby, &mut log).await.err();
    }
    report.steps = log.steps;
    if let Some(mut s) = session {
        s.complete().await;
        let r = s.report();
        if let Some(e) = &r.error {
            failure.get_or_insert(anyhow!(
                "{} was promoted, but switching connections failed: {e} — run `pgdr switch --to {}`",
                opts.to,
                opts.to
            ));
        }
        report.switch = Some(r);
    }
    if let Some(tli) = report.timeline
        && let Err(e) = declare(config, tli).await
    {
        report.warnings.push(format!(
            "timeline {tli} could not be declared in the repository ({e:#}): until it is, `restore --target latest` may follow the old timeline — run `pgdr check` once the repository answers"
        ));
    }
    if let Some(e) = failure {
        report.ok = false;
        report.error = Some(format!("{e:#}"));
    }
}

/// Fence, then let the standby catch up. Every failure here leaves the standby
/// unpromoted.
async fn before_promotion(
    config: &Config,
    opts: &FailoverOptions,
    plan: &FencePlan,
    feed: Option<&(PathBuf, u64)>,
    standby: &tokio_postgres::Client,
    log: &mut Log,
    report: &mut FailoverReport,
) -> Result<()> {
    let proof = log
        .step("fence", async {
            let proof = fence::fence(config, plan).await?;
            let said = proof.to_string();
            Ok((proof, said))
        })
        .await?;
    report.fenced = Some(proof.to_string());
    report.fence_weak = proof.is_weak();
    report.fence = Some(proof);
    let old_end = fence::end_of_wal(config, plan).await;
    report.old_lsn = old_end.map(|l| l.to_string());
    let budget = Duration::from_secs(config.switch.catch_up_seconds);
    let caught = log
        .step("catch up", async {
            let mut c = catch_up(standby, old_end, budget).await?;
            // Short, and the old primary's pg_wal is on this host, as is the standby's:
            // the segments it lacks are copied over and it replays them from there.
            if let (Some(end), Some((standby_dir, segment_size)), FencePlan::StopDataDir { dir, .. }) =
                (old_end, feed, plan)
                && c.replayed < end
            {
                // A copy that fails leaves the shortfall to the data-loss rule below.
                match feed::copy_segments(dir, standby_dir, c.replayed, end, *segment_size) {
                    Ok(copied) => {
                        tracing::info!(
                            "copied {} from {}/pg_wal to {}/pg_wal",
                            copied.join(", "),
                            dir.display(),
                            standby_dir.display()
                        );
                        c = catch_up(standby, old_end, budget).await?;
                        c.fed = copied.len();
                    }
                    Err(e) => tracing::warn!("the old primary's WAL could not be given to the standby: {e:#}"),
                }
            }
            let detail = match old_end {
                Some(end) if c.replayed >= end && c.fed > 0 => format!(
                    "replayed to {}, past the old primary's {end} ({} segment(s) given from the old primary's pg_wal)",
                    c.replayed, c.fed
                ),
                Some(end) if c.replayed >= end => format!("replayed to {}, past the old primary's {end}", c.replayed),
                Some(end) => format!(
                    "replayed to {} within {} s; the old primary was at {end}",
                    c.replayed,
                    budget.as_secs()
                ),
                None => format!(
                    "replayed to {} (all it received or could fetch); the old primary's last position is unknown",
                    c.replayed
                ),
            };
            Ok((c, detail))
        })
        .await?;
    report.promoted_at_lsn = Some(caught.replayed.to_string());
    report.last_replayed_commit = caught.last_commit.clone();
    let rpo = rpo(old_end, caught.replayed, report.fence.as_ref());
    report.rpo_bytes = match &rpo {
        Rpo::NoneLost => Some(0),
        Rpo::Lost { bytes } => Some(*bytes),
        Rpo::Unknown { .. } => None,
    };
    report.rpo = Some(rpo.clone());
    if let Rpo::Lost { bytes } = rpo {
        if !opts.accept_data_loss {
            return Err(crate::usage!(
                "the standby could not replay {bytes} bytes of WAL the old primary wrote (it reached {}, the old primary ended at {}; last replayed commit {}) — promoting it would lose them: get the WAL to it (archive, streaming; --standby-data-dir when it runs on this host) and run failover again, or pass --accept-data-loss",
                caught.replayed,
                report.old_lsn.as_deref().unwrap_or("?"),
                caught.last_commit.as_deref().unwrap_or("unknown")
            ));
        }
        report.data_loss_accepted = true;
    }
    // The request itself: refused by the server, nothing is promoting and the fence
    // can still be taken back. Once sent, it cannot be called back.
    log.step("request promotion", async {
        match standby.query_one("SELECT pg_promote(wait => false)", &[]).await {
            Ok(row) if row.get::<_, bool>(0) => Ok(((), format!("{} was asked to promote", opts.to))),
            Ok(_) => Err(anyhow!(
                "pg_promote returned false: {} did not take the request",
                opts.to
            )),
            Err(e) if e.as_db_error().is_some() => Err(anyhow!(
                "{} refused pg_promote: {}",
                opts.to,
                crate::postgres::conn::one_line(&e)
            )),
            // The connection broke: the request may have gone out. It is watched.
            Err(e) => Ok((
                (),
                format!("the request may not have arrived ({e}); watching whether it promotes"),
            )),
        }
    })
    .await?;
    Ok(())
}

/// The data lost at promotion: the WAL between what the standby replayed and the old
/// primary's end, when that end is known; else why it is not.
fn rpo(old_end: Option<Lsn>, replayed: Lsn, fence: Option<&FenceProof>) -> Rpo {
    match old_end {
        // A shutdown checkpoint record past what a standby replays is not data.
        Some(end) if replayed >= end => Rpo::NoneLost,
        Some(end) => Rpo::Lost {
            bytes: end.0 - replayed.0,
        },
        None => Rpo::Unknown {
            why: match fence {
                Some(FenceProof::DeclaredByDba) => "the old primary was declared down, not asked".to_string(),
                Some(FenceProof::Command) => {
                    "the old primary was fenced by fence_command and could not be asked".to_string()
                }
                _ => "the old primary's last WAL position could not be read after the fence".to_string(),
            },
        },
    }
}

/// Wait until the standby has replayed `old_end` (or, when it is unknown, all it can:
/// its replay position still for 3 s and at what it received), within `budget`. A
/// paused replay is resumed: a promotion would otherwise drop what it holds.
async fn catch_up(standby: &tokio_postgres::Client, old_end: Option<Lsn>, budget: Duration) -> Result<CaughtUp> {
    let paused: bool = standby.query_one("SELECT pg_is_wal_replay_paused()", &[]).await?.get(0);
    if paused {
        standby.batch_execute("SELECT pg_wal_replay_resume()").await?;
        tracing::info!("the standby's replay was paused; it is resumed");
    }
    let deadline = Instant::now() + budget;
    let mut still_since: Option<(Lsn, Instant)> = None;
    loop {
        let row = standby
            .query_one(
                "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')::text, coalesce(pg_last_wal_receive_lsn(), '0/0')::text, \
                 pg_last_xact_replay_timestamp()::text",
                &[],
            )
            .await?;
        let (replayed, received, at): (String, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
        let replayed = replayed.parse::<Lsn>().map_err(|e| anyhow!("{e}"))?;
        let received = received.parse::<Lsn>().map_err(|e| anyhow!("{e}"))?;
        let done = match old_end {
            Some(end) => replayed >= end,
            None => {
                let still = match still_since {
                    Some((at_lsn, since)) if at_lsn == replayed => since.elapsed() >= Duration::from_secs(3),
                    _ => {
                        still_since = Some((replayed, Instant::now()));
                        false
                    }
                };
                still && replayed >= received
            }
        };
        if done || Instant::now() > deadline {
            return Ok(CaughtUp {
                replayed,
                last_commit: at,
                fed: 0,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a requested promotion is watched before pgdr stops waiting for it (it
/// goes on in the server; applications are sent there regardless).
const PROMOTION_WATCH: Duration = Duration::from_secs(600);

/// Watch the standby the promotion was requested of until it is a primary. A
/// promotion cannot be called back: one that takes long is watched, never taken for
/// "not promoted".
async fn promote(
    config: &Config,
    opts: &FailoverOptions,
    standby: &tokio_postgres::Client,
    log: &mut Log,
    report: &mut FailoverReport,
) -> Result<()> {
    let tli = log
        .step("promote", async {
            let since = Instant::now();
            let mut said = Instant::now();
            let mut fresh: Option<tokio_postgres::Client> = None;
            loop {
                // The session survives the promotion; a new one only if it broke.
                if standby.is_closed() && fresh.as_ref().is_none_or(|c| c.is_closed()) {
                    let to = target(config, &opts.to)?;
                    fresh = tokio::time::timeout(Duration::from_secs(10), to.connect(Some("postgres")))
                        .await
                        .ok()
                        .and_then(|r| r.ok());
                }
                let client = if standby.is_closed() { fresh.as_ref() } else { Some(standby) };
                if let Some(c) = client {
                    let asked = async {
                        let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
                        let tli = match in_recovery {
                            true => None,
                            false => Some(crate::postgres::server::current_timeline(c).await),
                        };
                        anyhow::Ok((in_recovery, tli))
                    };
                    match tokio::time::timeout(Duration::from_secs(10), asked).await {
                        Ok(Ok((false, tli))) => {
                            let detail = match &tli {
                                Some(Ok(t)) => format!("{} is a primary now, on timeline {t}", opts.to),
                                Some(Err(e)) => {
                                    format!("{} is a primary now; its timeline could not be read ({e:#})", opts.to)
                                }
                                None => format!("{} is a primary now", opts.to),
                            };
                            return Ok((tli.and_then(|t| t.ok()), detail));
                        }
                        Ok(Ok((true, _))) => {}
                        Ok(Err(e)) => tracing::warn!("asking {} whether it promoted: {e:#}", opts.to),
                        Err(_) => tracing::warn!("{} did not answer within 10 s", opts.to),
                    }
                }
                if since.elapsed() > PROMOTION_WATCH {
                    return Err(anyhow!(
                        "{} has not finished promoting {} s after the request — it may still: see its log; the old primary stays fenced and applications are sent to {}",
                        opts.to,
                        since.elapsed().as_secs(),
                        opts.to
                    ));
                }
                if said.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "pgdr: {} is still promoting after {:.0} s; watching (see its log); the old primary stays fenced",
                        opts.to,
                        since.elapsed().as_secs_f64()
                    );
                    said = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await?;
    if tli.is_none() {
        report.warnings.push(format!(
            "the timeline {} promoted onto could not be read, so it was not declared in the repository: until it is, `restore --target latest` may not follow it",
            opts.to
        ));
    }
    report.timeline = tli;
    Ok(())
}

/// The new primary takes a write and reads it back.
async fn verify_writes(standby: &tokio_postgres::Client, log: &mut Log) -> Result<()> {
    log.step("verify writes", async {
        standby
            .batch_execute("CREATE TABLE IF NOT EXISTS pgdr_failover_check (at timestamptz PRIMARY KEY, note text)")
            .await?;
        let row = standby
            .query_one(
                "INSERT INTO pgdr_failover_check VALUES (clock_timestamp(), 'pgdr failover') RETURNING at::text",
                &[],
            )
            .await?;
        let at: String = row.get(0);
        let back = standby
            .query_opt(
                "SELECT 1 FROM pgdr_failover_check WHERE at = $1::text::timestamptz",
                &[&at],
            )
            .await?;
        if back.is_none() {
            return Err(anyhow!("the row written to pgdr_failover_check cannot be read back"));
        }
        Ok(((), "wrote and read back a row in pgdr_failover_check".to_string()))
    })
    .await
}

/// The promoted timeline is production's from now on.
async fn declare(config: &Config, tli: u32) -> Result<()> {
    let repo = crate::repo::Repo::open(config).await?;
    repo.declare_primary_timeline(tli, "pgdr failover").await
}

/// The old primary's data directory given to a runbook: a data directory of the
/// repository's cluster (its system identifier), where `pg_ctl status` can tell
/// whether a server runs (the answer). Anything else is a usage error.
pub async fn check_old_data_dir(config: &Config, dir: &std::path::Path) -> Result<bool> {
    let repo = crate::repo::Repo::open(config).await?;
    fence::check_data_dir(config, dir, &repo.info.system_identifier)
        .await
        .map_err(|e| crate::usage!("{e:#}"))
}

/// Fence a primary whose data directory is on this host (the runbooks' fence step):
/// it must be a data directory, and `pg_ctl status` must prove nothing runs there
/// after a fast stop.
pub async fn fence_data_dir(config: &Config, dir: &std::path::Path) -> Result<String> {
    check_old_data_dir(config, dir).await?;
    fence::stop_data_dir(config, dir).await?;
    Ok(format!(
        "stopped {} (fast; pg_ctl status: no server running)",
        dir.display()
    ))
}

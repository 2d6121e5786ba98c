//! Moving application connections to another server (`pgdr switch`, and the last
//! step of `failover` and the recovery runbooks): PgBouncer through its admin console
//! (`pgbouncer`: PAUSE, rewrite `pgbouncer.ini` (`ini`), RELOAD, RESUME; on any failure
//! it is resumed on the old settings, never left paused), and/or a command hook for
//! DNS, a load balancer or a virtual IP. Queries issued during the switch wait; they do
//! not fail.

mod ini;
mod pgbouncer;

pub use ini::WriteMode;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::config::{Config, SwitchConfig};
use crate::preflight::Checks;
use crate::steps::{Log, StepLog};
use crate::usage;

/// `HOST:PORT` (`[::1]:5432` for IPv6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Endpoint {
    type Err = anyhow::Error;

    fn from_str(raw: &str) -> Result<Endpoint> {
        let bad = || usage!("{raw:?} is not HOST:PORT (e.g. 10.0.0.5:5432, [fd00::5]:5432)");
        let (host, port) = match raw.strip_prefix('[') {
            Some(rest) => {
                let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
                (h, p)
            }
            None => raw.rsplit_once(':').ok_or_else(bad)?,
        };
        let ok_host = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
        let port: u16 = port.parse().map_err(|_| bad())?;
        if !ok_host || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SwitchOptions {
    pub to: Endpoint,
    /// The server applications leave; default: where PgBouncer points now.
    pub from: Option<Endpoint>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchReport {
    pub to: Endpoint,
    pub from: Option<Endpoint>,
    pub dry_run: bool,
    pub ok: bool,
    pub steps: Vec<StepLog>,
    /// From the first PAUSE to the last RESUME: how long queries waited.
    pub paused_seconds: Option<f64>,
    pub seconds: f64,
    /// What failed, and what state connections were left in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl fmt::Display for SwitchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        match (&self.error, self.dry_run) {
            (_, true) => write!(f, "dry run: nothing was changed"),
            (Some(e), _) => write!(f, "switch to {} FAILED: {e}", self.to),
            (None, _) => write!(
                f,
                "switched to {} in {:.2} s{}",
                self.to,
                self.seconds,
                self.paused_seconds
                    .map(|p| format!(" (queries waited at most {p:.2} s)"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// What a switch will do, checked before anything changes.
#[derive(Debug, Clone)]
pub struct SwitchPlan {
    pub to: Endpoint,
    pub from: Option<Endpoint>,
    /// PgBouncer: the databases and where each points now.
    pub pgbouncer: Vec<(String, Endpoint)>,
    /// How `pgbouncer.ini` will be written, once `preflight` has found out.
    pub ini_mode: Option<WriteMode>,
    pub hook: Option<String>,
}

impl fmt::Display for SwitchPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "switch application connections from {} to {}:",
            self.from
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "(unknown)".into()),
            self.to
        )?;
        for (db, now) in &self.pgbouncer {
            writeln!(
                f,
                "  PgBouncer database {db}: PAUSE, point {now} → {}, RELOAD, RESUME (queries wait meanwhile)",
                self.to
            )?;
        }
        if self.ini_mode == Some(WriteMode::InPlace) {
            writeln!(
                f,
                "  pgbouncer.ini is rewritten in place (its directory is not pgdr's to write); the old text is kept to put back"
            )?;
        }
        if let Some(hook) = &self.hook {
            writeln!(
                f,
                "  run the switch hook {hook:?} with PGDR_SWITCH_NEW_HOST/PORT and PGDR_SWITCH_OLD_HOST/PORT"
            )?;
        }
        Ok(())
    }
}

fn settings(config: &Config) -> Result<&SwitchConfig> {
    let s = &config.switch;
    if s.pgbouncer_admin_url.is_none() && s.hook.is_none() {
        return Err(usage!(
            "nothing to switch with: configure [switch] pgbouncer_admin_url (with pgbouncer_ini and pgbouncer_databases) and/or [switch] hook in {}",
            config.source
        ));
    }
    Ok(s)
}

/// Check the configuration and read where PgBouncer points now; change nothing.
pub fn plan(config: &Config, opts: &SwitchOptions) -> Result<SwitchPlan> {
    let s = settings(config)?;
    let mut pgbouncer = Vec::new();
    if s.pgbouncer_admin_url.is_some() {
        let ini_path = s.pgbouncer_ini.as_ref().ok_or_else(|| {
            usage!("[switch] pgbouncer_ini: the path of the pgbouncer.ini that pgdr rewrites is not set")
        })?;
        if s.pgbouncer_databases.is_empty() {
            return Err(usage!(
                "[switch] pgbouncer_databases: name the PgBouncer databases to move"
            ));
        }
        let text = std::fs::read_to_string(ini_path)
            .map_err(|e| usage!("cannot read [switch] pgbouncer_ini {}: {e}", ini_path.display()))?;
        let now = ini::endpoints(&text, &s.pgbouncer_databases)?;
        pgbouncer = now.into_iter().collect();
    }
    let from = opts.from.clone().or_else(|| pgbouncer.first().map(|(_, e)| e.clone()));
    Ok(SwitchPlan {
        to: opts.to.clone(),
        from,
        pgbouncer,
        ini_mode: None,
        hook: s.hook.clone(),
    })
}

/// The oldest PgBouncer whose admin console takes what pgdr sends (`PAUSE db`,
/// `RESUME db`, `RELOAD`, `SHOW DATABASES` with host and port columns).
const OLDEST_PGBOUNCER: (u32, u32) = (1, 12);

/// Everything a switch needs, checked without changing anything: PgBouncer's console
/// answers and is new enough, `pgbouncer.ini` can be written by the user pgdr runs as
/// (and how: `plan.ini_mode`), the hook can be run.
pub async fn preflight(config: &Config, plan: &mut SwitchPlan) -> Checks {
    let (checks, mode) = preflight_settings(config).await;
    plan.ini_mode = mode;
    checks
}

/// As `preflight`, from the settings alone (a runbook checks its switch step before
/// the server it switches to exists): the checks, and how `pgbouncer.ini` can be
/// written.
pub async fn preflight_settings(config: &Config) -> (Checks, Option<WriteMode>) {
    let mut checks = Checks::default();
    let mut ini_mode = None;
    let s = &config.switch;
    if let Some(url) = &s.pgbouncer_admin_url {
        let console = async {
            let admin = tokio::time::timeout(Duration::from_secs(10), pgbouncer::Admin::connect(url))
                .await
                .map_err(|_| anyhow!("PgBouncer's admin console did not answer within 10 s"))??;
            let version = admin.version().await?;
            let parsed = parse_pgbouncer_version(&version)
                .ok_or_else(|| anyhow!("cannot read PgBouncer's version from {version:?}"))?;
            if parsed < OLDEST_PGBOUNCER {
                return Err(anyhow!(
                    "{version} is older than PgBouncer {}.{}, the oldest whose console takes PAUSE/RESUME of one database as pgdr sends it: upgrade PgBouncer",
                    OLDEST_PGBOUNCER.0,
                    OLDEST_PGBOUNCER.1
                ));
            }
            for db in &s.pgbouncer_databases {
                admin
                    .target_of(db)
                    .await
                    .with_context(|| format!("[switch] pgbouncer_databases names {db:?}"))?;
            }
            anyhow::Ok(format!("{version} answers at {}", admin.describe()))
        };
        checks.record("PgBouncer admin console", console.await);
        if let Some(path) = &s.pgbouncer_ini {
            match ini::probe(path) {
                Ok(mode) => {
                    ini_mode = Some(mode);
                    checks.pass(
                        "pgbouncer.ini writable",
                        match mode {
                            WriteMode::Replace => format!("{} can be replaced, owner and mode kept", path.display()),
                            WriteMode::InPlace => format!(
                                "{} can be rewritten in place (its directory is not pgdr's to write)",
                                path.display()
                            ),
                        },
                    );
                }
                Err(e) => checks.fail("pgbouncer.ini writable", format!("{e:#}")),
            }
        }
    }
    if let Some(hook) = &s.hook {
        checks.record("switch hook", hook_runnable(hook).await);
    }
    (checks, ini_mode)
}

/// `PgBouncer 1.18.0` → (1, 18).
fn parse_pgbouncer_version(text: &str) -> Option<(u32, u32)> {
    let number = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

/// The hook's command word resolves to something `sh` can run: an executable file, a
/// program on PATH, or a shell builtin.
async fn hook_runnable(hook: &str) -> Result<String> {
    let word = hook
        .split_whitespace()
        .find(|w| {
            // Leading `NAME=value` assignments are not the command.
            !w.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        })
        .ok_or_else(|| anyhow!("[switch] hook is empty"))?;
    if word.contains(['\'', '"', '$', '`', '(', '{']) {
        return Ok(format!(
            "{word} cannot be resolved before it runs (quoting or expansion); it is run as written"
        ));
    }
    let found = tokio::process::Command::new("sh")
        .args(["-c", "command -v -- \"$1\"", "sh", word])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running sh to look up the hook")?;
    let resolved = String::from_utf8_lossy(&found.stdout).trim().to_string();
    if !found.status.success() || resolved.is_empty() {
        return Err(anyhow!(
            "[switch] hook: {word:?} is not an executable file, a program on PATH or a shell builtin"
        ));
    }
    if resolved.starts_with('/') {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&resolved).with_context(|| format!("[switch] hook: {resolved}"))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(anyhow!("[switch] hook: {resolved} is not an executable file"));
        }
    }
    Ok(format!("{word} resolves to {resolved}"))
}

/// Carry out a plan. A failure is in the report (`ok: false`, `error`), after
/// PgBouncer was resumed; only a plan that cannot start at all is an `Err`.
pub async fn run(config: &Config, plan: &SwitchPlan, dry_run: bool) -> Result<SwitchReport> {
    let mut session = Session::new(config, plan, dry_run)?;
    if dry_run {
        return Ok(session.report());
    }
    ready(config, &plan.to).await?;
    session.pause().await;
    session.complete().await;
    Ok(session.report())
}

/// Applications go only to a server that takes writes: reachable with pgdr's
/// credentials, and not in recovery.
async fn ready(config: &Config, to: &Endpoint) -> Result<()> {
    let target =
        crate::postgres::PgTarget::from_config(config.postgres.url.as_deref())?.with_address(&to.host, to.port);
    let check = async {
        let c = target.connect(Some("postgres")).await?;
        let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
        anyhow::Ok(in_recovery)
    };
    match tokio::time::timeout(Duration::from_secs(15), check).await {
        Ok(Ok(false)) => Ok(()),
        Ok(Ok(true)) => Err(usage!(
            "{to} is still in recovery (a standby): promote it first, or use `pgdr failover`"
        )),
        Ok(Err(e)) => Err(e.context(format!("{to} is not reachable; nothing was switched"))),
        Err(_) => Err(anyhow!("{to} did not answer within 15 s; nothing was switched")),
    }
}

/// A switch in steps, for callers that do work while queries wait (`failover`
/// fences and promotes between `pause` and `complete`).
pub struct Session<'a> {
    settings: &'a SwitchConfig,
    plan: &'a SwitchPlan,
    started: Instant,
    log: Log,
    dry_run: bool,
    paused: Option<Paused>,
    paused_seconds: Option<f64>,
    error: Option<anyhow::Error>,
}

/// PgBouncer with queries held: the console, the file as it was, what is paused.
struct Paused {
    admin: pgbouncer::Admin,
    ini_path: std::path::PathBuf,
    mode: WriteMode,
    original: String,
    dbs: Vec<String>,
    since: Instant,
}

impl<'a> Session<'a> {
    /// A session for a plan `preflight` checked: it knows how `pgbouncer.ini` can be
    /// written (a plan it did not check is refused here, whoever the caller).
    pub fn new(config: &'a Config, plan: &'a SwitchPlan, dry_run: bool) -> Result<Session<'a>> {
        let settings = settings(config)?;
        if settings.pgbouncer_admin_url.is_some() && plan.ini_mode.is_none() && !dry_run {
            return Err(anyhow!(
                "the switch was not checked first (switch::preflight): nothing was changed"
            ));
        }
        Ok(Session {
            settings,
            plan,
            started: Instant::now(),
            log: Log::new("switch"),
            dry_run,
            paused: None,
            paused_seconds: None,
            error: None,
        })
    }

    /// Hold new queries (PgBouncer `PAUSE`, within the pause timeout). On failure
    /// nothing stays paused and the session is failed.
    pub async fn pause(&mut self) {
        let Some(url) = self.settings.pgbouncer_admin_url.clone() else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        let ini_path = self.settings.pgbouncer_ini.clone().expect("checked by plan");
        let wait = Duration::from_secs(self.settings.pause_timeout_seconds);
        let dbs = self.settings.pgbouncer_databases.clone();
        let attempt: Result<Paused> = async {
            let admin = self
                .log
                .step("connect", async {
                    let a = pgbouncer::Admin::connect(&url).await?;
                    let d = format!("PgBouncer admin console at {}", a.describe());
                    Ok((a, d))
                })
                .await?;
            let original =
                std::fs::read_to_string(&ini_path).with_context(|| format!("reading {}", ini_path.display()))?;
            let since = Instant::now();
            let mut done: Vec<String> = Vec::new();
            for db in &dbs {
                let r = self
                    .log
                    .step(&format!("pause {db}"), async {
                        admin.pause(db, wait).await?;
                        Ok(((), "queries to it now wait".to_string()))
                    })
                    .await;
                if let Err(e) = r {
                    // Resumed from a connection of their own: the first may still be
                    // waiting on the PAUSE that timed out.
                    let mut undo = Vec::new();
                    match admin.another().await {
                        Ok(other) => {
                            for d in &done {
                                if let Err(r) = other.resume(d).await {
                                    undo.push(format!("RESUME {d} failed: {r:#}"));
                                }
                            }
                        }
                        Err(r) if !done.is_empty() => undo.push(format!("cannot resume {}: {r:#}", done.join(", "))),
                        Err(_) => {}
                    }
                    return Err(if undo.is_empty() {
                        e
                    } else {
                        e.context(format!(
                            "{} — check PgBouncer now: SHOW DATABASES, RESUME",
                            undo.join("; ")
                        ))
                    });
                }
                done.push(db.clone());
            }
            Ok(Paused {
                admin,
                ini_path,
                mode: self
                    .plan
                    .ini_mode
                    .ok_or_else(|| anyhow!("the switch was not checked first"))?,
                original,
                dbs,
                since,
            })
        }
        .await;
        match attempt {
            Ok(p) => self.paused = Some(p),
            Err(e) => self.error = Some(e),
        }
    }

    /// Whether the session failed so far.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Point PgBouncer at the new server and let queries flow (rewrite, RELOAD,
    /// RESUME), then run the hook. On failure PgBouncer is back on the old file,
    /// resumed.
    pub async fn complete(&mut self) {
        if let Some(p) = self.paused.take() {
            match finish_pgbouncer(&mut self.log, &p, self.plan).await {
                Ok(()) => self.paused_seconds = Some(p.since.elapsed().as_secs_f64()),
                Err(e) => self.error = Some(e),
            }
        }
        if self.error.is_some() {
            return;
        }
        if let Some(hook) = &self.settings.hook {
            let wait = Duration::from_secs(self.settings.hook_timeout_seconds);
            let plan = self.plan;
            let hooked = self
                .log
                .step("hook", async {
                    let said = run_hook(hook, plan, wait).await?;
                    Ok(((), said))
                })
                .await;
            if let Err(e) = hooked {
                self.error = Some(if plan.pgbouncer.is_empty() {
                    e
                } else {
                    e.context(format!("PgBouncer already points at {} and is running", plan.to))
                });
            }
        }
    }

    /// Give up: queries flow again to the old server; `why` is the session's error.
    pub async fn abandon(&mut self, why: anyhow::Error) {
        if let Some(p) = self.paused.take() {
            let mut undo = Vec::new();
            for db in &p.dbs {
                if let Err(e) = p.admin.resume(db).await {
                    undo.push(format!("RESUME {db} failed: {e:#}"));
                }
            }
            let _ = self
                .log
                .step("resume on the old settings", async {
                    if undo.is_empty() {
                        Ok(((), "PgBouncer resumed; nothing was switched".to_string()))
                    } else {
                        Err(anyhow!("{}", undo.join("; ")))
                    }
                })
                .await;
        }
        self.error.get_or_insert(why);
    }

    pub fn report(self) -> SwitchReport {
        SwitchReport {
            to: self.plan.to.clone(),
            from: self.plan.from.clone(),
            dry_run: self.dry_run,
            ok: self.error.is_none(),
            steps: self.log.steps,
            paused_seconds: self.paused_seconds,
            seconds: self.started.elapsed().as_secs_f64(),
            error: self.error.map(|e| format!("{e:#}")),
        }
    }
}

/// Rewrite, RELOAD (checked), RESUME. On failure: the old file back, RELOAD, RESUME.
async fn finish_pgbouncer(log: &mut Log, p: &Paused, plan: &SwitchPlan) -> Result<()> {
    let dbs = &p.dbs;
    let mut rewritten = false;
    let mut kept_copy: Option<std::path::PathBuf> = None;
    let kept = &mut kept_copy;
    let outcome: Result<()> = async {
        let new_text = ini::rewrite(&p.original, dbs, &plan.to)?;
        log.step("rewrite pgbouncer.ini", async {
            let how = match p.mode {
                WriteMode::Replace => String::new(),
                WriteMode::InPlace => {
                    let copy = ini::keep_copy(&p.ini_path, &p.original)?;
                    *kept = Some(copy.clone());
                    format!(
                        " (in place; the old text is kept in {} until the switch is done)",
                        copy.display()
                    )
                }
            };
            rewritten = true;
            ini::write(&p.ini_path, &new_text, p.mode)?;
            Ok(((), format!("{} → {}{how}", dbs.join(", "), plan.to)))
        })
        .await?;
        log.step("reload", async {
            p.admin.reload().await?;
            for db in dbs {
                let (host, port) = p.admin.target_of(db).await?;
                if host != plan.to.host || port != plan.to.port {
                    return Err(anyhow!(
                        "after RELOAD PgBouncer still sends {db} to {host}:{port}, not {}",
                        plan.to
                    ));
                }
            }
            Ok(((), format!("PgBouncer sends {} to {}", dbs.join(", "), plan.to)))
        })
        .await?;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        // Never leave PgBouncer paused, and never on a half-done switch.
        let mut undo = Vec::new();
        if rewritten {
            match ini::write(&p.ini_path, &p.original, p.mode) {
                Ok(()) => {
                    if let Err(r) = p.admin.reload().await {
                        undo.push(format!("RELOAD of the old file failed: {r:#}"));
                    }
                }
                Err(r) => undo.push(format!(
                    "restoring pgbouncer.ini failed: {r:#}{}",
                    kept_copy
                        .as_ref()
                        .map(|c| format!(" (its old text is in {})", c.display()))
                        .unwrap_or_default()
                )),
            }
        }
        for db in dbs {
            if let Err(r) = p.admin.resume(db).await {
                undo.push(format!("RESUME {db} failed: {r:#}"));
            }
        }
        let _ = log
            .step("roll back", async {
                if undo.is_empty() {
                    Ok(((), "PgBouncer resumed on the old settings".to_string()))
                } else {
                    Err(anyhow!("{}", undo.join("; ")))
                }
            })
            .await;
        return Err(if undo.is_empty() {
            e.context("PgBouncer was resumed on the old settings")
        } else {
            e.context(format!(
                "rolling back also failed ({}) — check PgBouncer now: SHOW DATABASES, RESUME",
                undo.join("; ")
            ))
        });
    }
    if let Some(copy) = &kept_copy {
        let _ = std::fs::remove_file(copy);
    }
    // Every database is resumed, whatever one of them answers.
    let mut failed = Vec::new();
    for db in dbs {
        let r = log
            .step(&format!("resume {db}"), async {
                p.admin.resume(db).await?;
                Ok(((), format!("queries flow to {}", plan.to)))
            })
            .await;
        if let Err(e) = r {
            failed.push(format!("{e:#}"));
        }
    }
    if !failed.is_empty() {
        return Err(anyhow!(
            "{} — PgBouncer points at {} but is paused there: RESUME by hand",
            failed.join("; "),
            plan.to
        ));
    }
    Ok(())
}

/// The switch hook: `sh -c HOOK` with the new and old endpoints in `PGDR_SWITCH_*`,
/// within `wait`; it must exit 0.
async fn run_hook(hook: &str, plan: &SwitchPlan, wait: Duration) -> Result<String> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(hook)
        .env("PGDR_SWITCH_NEW_HOST", &plan.to.host)
        .env("PGDR_SWITCH_NEW_PORT", plan.to.port.to_string())
        .env(
            "PGDR_SWITCH_OLD_HOST",
            plan.from.as_ref().map(|e| e.host.clone()).unwrap_or_default(),
        )
        .env(
            "PGDR_SWITCH_OLD_PORT",
            plan.from.as_ref().map(|e| e.port.to_string()).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A group of its own: on time-out everything it started goes, not just `sh`.
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| anyhow!("cannot run the switch hook: {e}"))?;
    let group = child.id().map(|pid| pid as i32);
    let out = match tokio::time::timeout(wait, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| anyhow!("the switch hook failed: {e}"))?,
        Err(_) => {
            if let Some(pgid) = group {
                // SAFETY: a signal to the process group this function created.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            return Err(anyhow!(
                "the switch hook did not finish within {} s ([switch] hook_timeout_seconds); it was killed",
                wait.as_secs()
            ));
        }
    };
    let said = |b: &[u8]| {
        let t = String::from_utf8_lossy(b);
        t.lines().last().unwrap_or("").chars().take(300).collect::<String>()
    };
    if !out.status.success() {
        return Err(anyhow!(
            "the switch hook exited with {}{}",
            out.status,
            match said(&out.stderr) {
                s if s.is_empty() => String::new(),
                s => format!(": {s}"),
            }
        ));
    }
    Ok(format!(
        "exited 0{}",
        match said(&out.stdout) {
            s if s.is_empty() => String::new(),
            s => format!(": {s}"),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "10.0.0.5:5432".parse::<Endpoint>().unwrap(),
            Endpoint {
                host: "10.0.0.5".into(),
                port: 5432
            }
        );
        let v6 = "[fd00::5]:6432".parse::<Endpoint>().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("fd00::5", 6432));
        assert_eq!(v6.to_string(), "[fd00::5]:6432");
        for bad in ["db", "db:", ":5432", "db:0", "db:x", "a b:1", "[::1]5432"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}

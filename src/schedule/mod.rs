//! The schedule: jobs with cron expressions (seconds field allowed), a time zone, the
//! pgdr command they run, a timeout, retries with backoff, and catch-up of runs missed
//! while the scheduler was down. `daemon` runs it, `history` remembers it, `metrics`
//! reports it.

pub mod daemon;
pub mod history;
pub mod metrics;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::usage;

/// Commands a job may run.
pub const JOB_COMMANDS: &[&str] = &["backup", "verify", "expire", "check", "copy", "drill"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    job: Vec<RawJob>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    retry_backoff: Option<String>,
    #[serde(default)]
    catch_up: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub cron: String,
    pub schedule: cron::Schedule,
    pub timezone: Tz,
    pub command: String,
    pub args: Vec<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// A run missed by at most this much is made up once at start; older ones are
    /// skipped and reported.
    pub catch_up: Duration,
}

/// "90s", "15m", "4h", "7d", or a plain number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (num, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Job {
    /// The next `n` run times after `after`.
    pub fn next_runs(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .take(n)
            .map(|t| t.with_timezone(&Utc))
            .collect()
    }

    pub fn next_run(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_runs(after, 1).into_iter().next()
    }

    /// The latest scheduled time in (`since`, `now`), if any (searched backwards from
    /// now, so a scheduler down for years costs nothing).
    pub fn last_due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let prev = self
            .schedule
            .after(&now.with_timezone(&self.timezone))
            .next_back()?
            .with_timezone(&Utc);
        (prev > since).then_some(prev)
    }
}

/// Parse and validate a schedule file; errors name the file, the job and the field.
pub fn load(path: &Path) -> Result<Vec<Job>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| usage!("cannot read the schedule file {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, source: &str) -> Result<Vec<Job>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        usage!(
            "{source}: {}",
            e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
        )
    })?;
    if raw.job.is_empty() {
        return Err(usage!("{source}: no [[job]] defined"));
    }
    let mut jobs = Vec::new();
    for (i, j) in raw.job.into_iter().enumerate() {
        let at = format!(
            "{source}: job {:?}",
            if j.name.is_empty() {
                format!("#{}", i + 1)
            } else {
                j.name.clone()
            }
        );
        if j.name.is_empty()
            || !j
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(usage!("{at}: `name` must be letters, digits, '-' or '_'"));
        }
        if jobs.iter().any(|other: &Job| other.name == j.name) {
            return Err(usage!("{at}: the name is used twice"));
        }
        // Five fields are classic cron: seconds default to 0.
        let fields = j.cron.split_whitespace().count();
        let expr = if fields == 5 {
            format!("0 {}", j.cron)
        } else {
            j.cron.clone()
        };
        let schedule = cron::Schedule::from_str(&expr).map_err(|e| {
            let why = e.to_string();
            let why = why.lines().last().unwrap_or("").trim().to_string();
            usage!("{at}: `cron` {:?} is not a cron expression: {why}", j.cron)
        })?;
        let timezone = match &j.timezone {
            None => Tz::UTC,
            Some(tz) => tz
                .parse::<Tz>()
                .map_err(|_| usage!("{at}: `timezone` {tz:?} is not a time zone name (e.g. UTC, Europe/Berlin)"))?,
        };
        if !JOB_COMMANDS.contains(&j.command.as_str()) {
            return Err(usage!(
                "{at}: `command` {:?} must be one of {}",
                j.command,
                JOB_COMMANDS.join(", ")
            ));
        }
        let duration = |field: &str, value: &Option<String>, default: Duration| -> Result<Duration> {
            match value {
                None => Ok(default),
                Some(v) => parse_duration(v)
                    .ok_or_else(|| usage!("{at}: `{field}` {v:?} is not a duration (e.g. 90s, 15m, 4h, 1d)")),
            }
        };
        jobs.push(Job {
            timeout: duration("timeout", &j.timeout, Duration::from_secs(6 * 3600))?,
            retry_backoff: duration("retry_backoff", &j.retry_backoff, Duration::from_secs(60))?,
            catch_up: duration("catch_up", &j.catch_up, Duration::ZERO)?,
            name: j.name,
            cron: j.cron,
            schedule,
            timezone,
            command: j.command,
            args: j.args,
            retries: j.retries,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let jobs = parse(
            "[[job]]\nname = \"daily\"\ncron = \"0 2 * * *\"\ncommand = \"backup\"\nargs = [\"--kind\", \"physical\"]\ntimeout = \"4h\"\ncatch_up = \"6h\"\n",
            "s.toml",
        )
        .unwrap();
        let t: DateTime<Utc> = "2026-11-26T05:00:00Z".parse().unwrap();
        assert_eq!(jobs[0].next_run(t).unwrap().to_rfc3339(), "2026-11-27T02:00:00+00:00");
        assert_eq!(jobs[0].timeout, Duration::from_secs(4 * 3600));
        let due = jobs[0].last_due("2026-11-25T00:00:00Z".parse().unwrap(), t).unwrap();
        assert_eq!(due.to_rfc3339(), "2026-11-26T02:00:00+00:00");

        let bad = |s: &str| format!("{:#}", parse(s, "s.toml").unwrap_err());
        assert!(bad("[[job]]\nname = \"x\"\ncron = \"nope\"\ncommand = \"backup\"\n").contains("cron"));
        assert!(bad("[[job]]\nname = \"x\"\ncron = \"0 2 * * *\"\ncommand = \"dance\"\n").contains("command"));
        assert!(
            bad("[[job]]\nname = \"x\"\ncron = \"0 2 * * *\"\ncommand = \"backup\"\ntimeout = \"soon\"\n")
                .contains("timeout")
        );
        assert!(
            bad("[[job]]\nname = \"x\"\ncron = \"0 2 * * *\"\ncommand = \"backup\"\ncolour = 1\n").contains("colour")
        );
        assert!(
            bad("[[job]]\nname = \"x\"\ncron = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"\ncommand = \"backup\"\n")
                .contains("timezone")
        );
    }

    #[test]
    fn time_zones_shift_runs() {
        let jobs = parse(
            "[[job]]\nname = \"berlin\"\ncron = \"0 0 3 * * Sun\"\ntimezone = \"Europe/Berlin\"\ncommand = \"verify\"\n",
            "s",
        )
        .unwrap();
        let t: DateTime<Utc> = "2026-11-26T00:00:00Z".parse().unwrap();
        // 03:00 in Berlin in winter is 02:00 UTC, on Sunday 29 November 2026.
        assert_eq!(jobs[0].next_run(t).unwrap().to_rfc3339(), "2026-11-29T02:00:00+00:00");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}

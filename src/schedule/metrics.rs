//! Prometheus metrics (text format 0.0.4) and the /metrics + /health endpoint: are
//! backups fresh, is WAL archiving keeping up, was the last restore test good, are the
//! jobs succeeding.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::daemon::SharedState;
use super::history::{JobState, Outcome};
use crate::config::Config;
use crate::postgres::PgTarget;
use crate::repo::{BackupKind, Repo, verification};

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out {
    text: String,
    declared: std::collections::BTreeSet<String>,
}

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        if self.declared.insert(name.to_string()) {
            let _ = writeln!(self.text, "# HELP {name} {help}");
            let _ = writeln!(self.text, "# TYPE {name} {kind}");
        }
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!(
                "{{{}}}",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let _ = writeln!(self.text, "{name}{labels} {value}");
    }
}

/// All metrics, from the job states, the repository and the server.
pub async fn render(config: &Config, repo: &Repo, jobs: &BTreeMap<String, JobState>) -> String {
    let mut out = Out {
        text: String::new(),
        declared: Default::default(),
    };
    let now = Utc::now();
    job_metrics(&mut out, jobs);
    backup_metrics(&mut out, repo, now).await;
    repository_size(&mut out, repo).await;
    // The newest switch, failover, recovery and drill (their reports in verifications/).
    if let Ok(objects) = repo.storage.list(crate::repo::layout::VERIFICATIONS).await {
        events(&mut out, repo, objects).await;
    }
    copy_metrics(&mut out, config, repo).await;
    verify_metrics(&mut out, repo).await;
    archiver_metrics(&mut out, config, now).await;
    out.text
}

/// Each scheduled job's last run and its failures since its last success.
fn job_metrics(out: &mut Out, jobs: &BTreeMap<String, JobState>) {
    for (name, s) in jobs {
        let l = [("job", name.as_str())];
        if let Some(t) = s.last_success {
            out.metric(
                "pgdr_job_last_success_timestamp_seconds",
                "gauge",
                "Time of the job's last successful run.",
                &l,
                t.timestamp() as f64,
            );
        }
        if let Some(o) = &s.last_outcome {
            out.metric(
                "pgdr_job_last_success",
                "gauge",
                "1 if the job's last run succeeded, else 0.",
                &l,
                if *o == Outcome::Success { 1.0 } else { 0.0 },
            );
        }
        if let Some(secs) = s.last_seconds {
            out.metric(
                "pgdr_job_last_duration_seconds",
                "gauge",
                "Duration of the job's last run.",
                &l,
                secs,
            );
        }
        out.metric(
            "pgdr_job_consecutive_failures",
            "gauge",
            "Failed runs of the job since its last success.",
            &l,
            s.consecutive_failures as f64,
        );
    }
}

/// Complete backups of each kind and the newest one's time, age and size; whether the
/// repository could be read.
async fn backup_metrics(out: &mut Out, repo: &Repo, now: chrono::DateTime<Utc>) {
    match repo.manifests().await {
        Ok(manifests) => {
            for kind in [BackupKind::Physical, BackupKind::Logical] {
                let k = kind.to_string();
                let l = [("kind", k.as_str())];
                let of_kind: Vec<_> = manifests.iter().filter(|m| m.kind == kind).collect();
                out.metric(
                    "pgdr_backups",
                    "gauge",
                    "Complete backups in the repository.",
                    &l,
                    of_kind.len() as f64,
                );
                if let Some(m) = of_kind.first() {
                    out.metric(
                        "pgdr_backup_last_timestamp_seconds",
                        "gauge",
                        "End time of the newest backup.",
                        &l,
                        m.stop_time.timestamp() as f64,
                    );
                    out.metric(
                        "pgdr_backup_last_age_seconds",
                        "gauge",
                        "Age of the newest backup.",
                        &l,
                        (now - m.stop_time).num_seconds() as f64,
                    );
                    out.metric(
                        "pgdr_backup_last_size_bytes",
                        "gauge",
                        "Stored size of the newest backup.",
                        &l,
                        m.stored_size() as f64,
                    );
                }
            }
            out.metric(
                "pgdr_repository_up",
                "gauge",
                "1 if the repository could be read.",
                &[],
                1.0,
            );
        }
        Err(e) => {
            tracing::warn!("metrics: reading the catalog: {e:#}");
            out.metric(
                "pgdr_repository_up",
                "gauge",
                "1 if the repository could be read.",
                &[],
                0.0,
            );
        }
    }
}

/// Bytes stored in this cluster's repository area (nothing when it cannot be listed).
async fn repository_size(out: &mut Out, repo: &Repo) {
    if let Ok(objects) = repo.storage.list("").await {
        let size: u64 = objects.iter().map(|o| o.size).sum();
        out.metric(
            "pgdr_repository_size_bytes",
            "gauge",
            "Bytes stored in this cluster's repository area.",
            &[],
            size as f64,
        );
    }
}

/// Each repository copy: whether it could be listed, and how far behind it is.
async fn copy_metrics(out: &mut Out, config: &Config, repo: &Repo) {
    for (name, lag) in crate::copy::lags(config, &repo.storage).await {
        let l = [("copy", name.as_str())];
        out.metric(
            "pgdr_copy_up",
            "gauge",
            "1 if the repository copy could be listed.",
            &l,
            if lag.is_ok() { 1.0 } else { 0.0 },
        );
        if let Ok(lag) = lag {
            out.metric(
                "pgdr_copy_lag_segments",
                "gauge",
                "WAL and history files in the primary repository that the copy lacks.",
                &l,
                lag.segments as f64,
            );
            if let Some(secs) = lag.seconds {
                out.metric(
                    "pgdr_copy_lag_seconds",
                    "gauge",
                    "Seconds since the oldest WAL file the copy lacks reached the primary (0 when it lacks none).",
                    &l,
                    secs,
                );
            }
        }
    }
}

/// The newest restore test: whether it passed, and when it ended.
async fn verify_metrics(out: &mut Out, repo: &Repo) {
    if let Ok(reports) = verification::latest_reports(repo).await
        && let Some(newest) = reports.values().max_by_key(|r| r.finished)
    {
        out.metric(
            "pgdr_verify_last_success",
            "gauge",
            "1 if the newest restore test passed.",
            &[],
            if newest.ok { 1.0 } else { 0.0 },
        );
        out.metric(
            "pgdr_verify_last_timestamp_seconds",
            "gauge",
            "End time of the newest restore test.",
            &[],
            newest.finished.timestamp() as f64,
        );
    }
}

/// The server's archiver (last archived time, lag, files waiting, counters), or
/// `pgdr_postgres_up 0` when the server does not answer.
async fn archiver_metrics(out: &mut Out, config: &Config, now: chrono::DateTime<Utc>) {
    // WAL archiving, as the server sees it.
    let archiver = archiver_stats(config).await;
    match archiver {
        Ok((last, archived, failed, last_failed, ready)) => {
            out.metric("pgdr_postgres_up", "gauge", "1 if PostgreSQL answered.", &[], 1.0);
            if let Some(t) = last {
                out.metric(
                    "pgdr_wal_last_archived_timestamp_seconds",
                    "gauge",
                    "Time of the last archived WAL file.",
                    &[],
                    t,
                );
                // A quiet server archives nothing: lag counts only while files wait.
                let lag = if ready > 0 { now.timestamp() as f64 - t } else { 0.0 };
                out.metric(
                    "pgdr_wal_archive_lag_seconds",
                    "gauge",
                    "Seconds since the last archived WAL file while files wait to be archived.",
                    &[],
                    lag,
                );
            }
            out.metric(
                "pgdr_wal_ready_files",
                "gauge",
                "WAL files waiting to be archived.",
                &[],
                ready as f64,
            );
            out.metric(
                "pgdr_wal_archived_total",
                "counter",
                "WAL files archived (pg_stat_archiver).",
                &[],
                archived as f64,
            );
            out.metric(
                "pgdr_wal_archive_failed_total",
                "counter",
                "Failed archive attempts (pg_stat_archiver).",
                &[],
                failed as f64,
            );
            if let Some(t) = last_failed {
                out.metric(
                    "pgdr_wal_last_failed_timestamp_seconds",
                    "gauge",
                    "Time of the last failed archive attempt.",
                    &[],
                    t,
                );
            }
        }
        Err(_) => out.metric("pgdr_postgres_up", "gauge", "1 if PostgreSQL answered.", &[], 0.0),
    }
}

/// The server's archiver statistics (`postgres::server::archiver_stats`).
async fn archiver_stats(config: &Config) -> anyhow::Result<(Option<f64>, i64, i64, Option<f64>, i64)> {
    let target = PgTarget::from_config(config.postgres.url.as_deref())?;
    crate::postgres::server::archiver_stats(&target).await
}

/// What a request to the metrics endpoint asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Health,
    /// `/`: the report page (`report::html`); `/report.json`: its data.
    Report,
    ReportJson,
    NotFound,
}

/// Read the request line of whatever a client sent (any bytes, possibly cut short):
/// `GET /metrics`, `/health`, `/` (the report page) or `/report.json`; anything else
/// is not found.
pub fn route(request: &[u8]) -> Route {
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
    let (method, path) = (words.next(), words.next());
    match (method, path) {
        (Some(b"GET" | b"HEAD"), Some(b"/metrics")) => Route::Metrics,
        (Some(b"GET" | b"HEAD"), Some(b"/health")) => Route::Health,
        (Some(b"GET" | b"HEAD"), Some(b"/" | b"/index.html")) => Route::Report,
        (Some(b"GET" | b"HEAD"), Some(b"/report.json")) => Route::ReportJson,
        _ => Route::NotFound,
    }
}

/// How long a report stays fresh: a page reloaded in a burst reads the repository
/// once, and a new backup shows within this long.
const REPORT_FRESH: Duration = Duration::from_secs(5);

/// Serve GET /metrics, /health, / (the report page) and /report.json until aborted.
pub async fn serve(listener: tokio::net::TcpListener, config: Config, repo: Repo, shared: SharedState) {
    let cache: std::sync::Arc<tokio::sync::Mutex<Option<(Instant, String)>>> = Default::default();
    let reports: std::sync::Arc<tokio::sync::Mutex<Option<(Instant, crate::report::Report)>>> = Default::default();
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let (config, repo, shared, cache, reports) = (
            config.clone(),
            repo.clone(),
            shared.clone(),
            cache.clone(),
            reports.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            while len < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf[len..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let route = route(&buf[..len]);
            // Prometheus scrapes every few seconds; a person opens the page.
            match route {
                Route::Metrics | Route::Health => tracing::debug!("{route:?} requested"),
                _ => tracing::info!("{route:?} requested"),
            }
            let (status, ctype, body) = match route {
                Route::Metrics => {
                    let mut cached = cache.lock().await;
                    let fresh = cached
                        .as_ref()
                        .is_some_and(|(t, _)| t.elapsed() < Duration::from_secs(10));
                    if !fresh {
                        let jobs = shared.lock().expect("state").jobs.clone();
                        *cached = Some((Instant::now(), render(&config, &repo, &jobs).await));
                    }
                    (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        cached.as_ref().map(|(_, t)| t.clone()).unwrap_or_default(),
                    )
                }
                Route::Health => {
                    let state = shared.lock().expect("state");
                    let running: Vec<&String> = state.running.keys().collect();
                    let body = serde_json::json!({"status": "ok", "running": running}).to_string();
                    ("200 OK", "application/json", body)
                }
                Route::Report | Route::ReportJson => {
                    let mut cached = reports.lock().await;
                    if cached.as_ref().is_none_or(|(t, _)| t.elapsed() >= REPORT_FRESH) {
                        *cached = Some((Instant::now(), crate::report::build(&config).await));
                    }
                    let report = &cached.as_ref().expect("filled above").1;
                    if route == Route::ReportJson {
                        let body = serde_json::to_string_pretty(report).unwrap_or_default();
                        ("200 OK", "application/json", body)
                    } else {
                        match crate::report::html::render(report) {
                            Ok(html) => ("200 OK", "text/html; charset=utf-8", html),
                            Err(e) => (
                                "500 Internal Server Error",
                                "text/plain; charset=utf-8",
                                format!("the report page could not be rendered: {e:#}\n"),
                            ),
                        }
                    }
                }
                Route::NotFound => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            // The page is built from the repository on request: never cached, and it
            // may load nothing beyond itself.
            let extra = match route {
                Route::Report => format!(
                    "Cache-Control: no-cache, max-age=0\r\nContent-Security-Policy: {}\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n",
                    crate::report::html::CONTENT_SECURITY_POLICY
                ),
                Route::ReportJson => {
                    "Cache-Control: no-cache, max-age=0\r\nX-Content-Type-Options: nosniff\r\n".to_string()
                }
                _ => String::new(),
            };
            // HEAD: the headers GET would send, without the body.
            let head = buf[..len].starts_with(b"HEAD ");
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{}",
                body.len(),
                if head { "" } else { body.as_str() }
            );
            let _ = socket.write_all(reply.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Every report says how long it took; drills say more.
#[derive(serde::Deserialize)]
struct Took {
    seconds: f64,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    rto_seconds: Option<f64>,
    #[serde(default)]
    rpo: Option<DrillRpo>,
}

#[derive(serde::Deserialize)]
struct DrillRpo {
    lost: u64,
}

/// An event's reports: when each started, and its key.
type Reports = Vec<(chrono::DateTime<Utc>, crate::storage::ObjectKey)>;

/// Metrics of the event reports: the newest switch/failover and recovery per kind,
/// and per drill scenario the newest drill, its RTO and RPO, and the newest that
/// passed (for "no successful drill in 35 days").
async fn events(out: &mut Out, repo: &Repo, objects: Vec<crate::storage::ObjectMeta>) {
    for (event, mut reports) in by_event(objects) {
        reports.sort_by_key(|r| std::cmp::Reverse(r.0));
        let (at, key) = reports[0].clone();
        let newest = read_report(repo, key).await;
        if let Some(scenario) = event.strip_prefix("drill-") {
            drill_metrics(out, repo, scenario, &reports, newest).await;
        } else if let Some(scenario) = event.strip_prefix("recover-") {
            recover_metrics(out, scenario, at, newest);
        } else {
            switch_metrics(out, &event, at, newest);
        }
    }
}

/// The event reports under verifications/, by event.
fn by_event(objects: Vec<crate::storage::ObjectMeta>) -> BTreeMap<String, Reports> {
    let mut by_event: BTreeMap<String, Reports> = BTreeMap::new();
    for meta in objects {
        if let Some((at, event)) = crate::repo::layout::parse_event_report(&meta.key) {
            by_event
                .entry(event.to_string())
                .or_default()
                .push((at, meta.key.clone()));
        }
    }
    by_event
}

/// A report, or `None` when it cannot be read or parsed.
async fn read_report(repo: &Repo, key: crate::storage::ObjectKey) -> Option<Took> {
    crate::pipeline::load_bytes(&repo.storage, &key, &repo.keys)
        .await
        .ok()
        .and_then(|d| serde_json::from_slice::<Took>(&d).ok())
}

/// A drill scenario: its newest drill (`reports`, newest first; `newest` read), and
/// the newest that passed.
async fn drill_metrics(out: &mut Out, repo: &Repo, scenario: &str, reports: &Reports, newest: Option<Took>) {
    let at = reports[0].0;
    let l = [("scenario", scenario)];
    out.metric(
        "pgdr_drill_last_timestamp_seconds",
        "gauge",
        "Start time of the newest drill of the scenario.",
        &l,
        at.timestamp() as f64,
    );
    let Some(r) = newest else { return };
    out.metric(
        "pgdr_drill_last_success",
        "gauge",
        "1 if the newest drill of the scenario passed, else 0.",
        &l,
        if r.ok == Some(true) { 1.0 } else { 0.0 },
    );
    if let Some(rto) = r.rto_seconds {
        out.metric(
            "pgdr_drill_rto_seconds",
            "gauge",
            "Recovery time measured by the newest drill: failure to service through PgBouncer.",
            &l,
            rto,
        );
    }
    if let Some(rpo) = &r.rpo {
        out.metric(
            "pgdr_drill_rpo_lost_commits",
            "gauge",
            "Acknowledged commits the newest drill's recovery lost.",
            &l,
            rpo.lost as f64,
        );
    }
    // The newest drill that passed (a few reports back at most).
    let mut passed = (r.ok == Some(true)).then_some(at);
    for (t, k) in reports.iter().skip(1).take(20) {
        if passed.is_some() {
            break;
        }
        if read_report(repo, k.clone()).await.is_some_and(|r| r.ok == Some(true)) {
            passed = Some(*t);
        }
    }
    if let Some(t) = passed {
        out.metric(
            "pgdr_drill_last_success_timestamp_seconds",
            "gauge",
            "Start time of the newest drill of the scenario that passed.",
            &l,
            t.timestamp() as f64,
        );
    }
}

/// A recovery scenario's newest run (`pgdr recover`).
fn recover_metrics(out: &mut Out, scenario: &str, at: chrono::DateTime<Utc>, newest: Option<Took>) {
    let l = [("scenario", scenario)];
    out.metric(
        "pgdr_recover_last_timestamp_seconds",
        "gauge",
        "Start time of the newest recovery (pgdr recover) of the scenario.",
        &l,
        at.timestamp() as f64,
    );
    if let Some(r) = newest {
        out.metric(
            "pgdr_recover_last_success",
            "gauge",
            "1 if the newest recovery of the scenario finished, else 0.",
            &l,
            if r.ok == Some(true) { 1.0 } else { 0.0 },
        );
        out.metric(
            "pgdr_recover_last_duration_seconds",
            "gauge",
            "How long the newest run of the recovery took.",
            &l,
            r.seconds,
        );
    }
}

/// The newest connection switch or failover of its kind (`event`).
fn switch_metrics(out: &mut Out, event: &str, at: chrono::DateTime<Utc>, newest: Option<Took>) {
    let l = [("event", event)];
    out.metric(
        "pgdr_switch_last_timestamp_seconds",
        "gauge",
        "Start time of the newest connection switch or failover.",
        &l,
        at.timestamp() as f64,
    );
    if let Some(r) = newest {
        out.metric(
            "pgdr_switch_last_duration_seconds",
            "gauge",
            "How long the newest connection switch or failover took.",
            &l,
            r.seconds,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_their_first_line_only() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /health HTTP/1.0\r\n\r\n"), Route::Health);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n"), Route::NotFound);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Report);
        assert_eq!(route(b"HEAD /report.json HTTP/1.1\r\n\r\n"), Route::ReportJson);
        assert_eq!(route(b"GET /favicon.ico HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET"), Route::NotFound);
        assert_eq!(route(b""), Route::NotFound);
        assert_eq!(route(b"\xff\xfe GET /metrics"), Route::NotFound);
        assert_eq!(route(b"Host: x\r\nGET /metrics HTTP/1.1\r\n"), Route::NotFound);
    }
}

//! The report as one self-contained HTML page: no script, no font, no request beyond
//! the page (its Content-Security-Policy says so to the browser too). The charts are
//! inline SVG; their geometry is worked out here, and the template (`page.html`,
//! rendered by minijinja with HTML escaping) only places it.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{RepoReport, Report};
use crate::progress::human_bytes;

const TEMPLATE: &str = include_str!("page.html");

/// The policy the page is served with (and carries in a meta tag when saved).
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// Chart width in SVG units; rows are `ROW` high.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 110.0;
const ROW: f64 = 46.0;
const TOP: f64 = 26.0;

#[derive(Serialize)]
struct Page<'a> {
    report: &'a Report,
    generated: String,
    csp: &'static str,
    repositories: Vec<RepoView<'a>>,
}

#[derive(Serialize)]
struct RepoView<'a> {
    r: &'a RepoReport,
    earliest: String,
    latest: String,
    chart: Option<Chart>,
    timelines: Vec<TimelineView<'a>>,
    backups: Vec<BackupView>,
    gaps: Vec<GapView>,
    drills: Vec<DrillView>,
    history: Vec<HistoryView>,
    last_archived: String,
    archive_age: String,
}

/// A timeline's row of the table: its fields, and its spans as text.
#[derive(Serialize)]
struct TimelineView<'a> {
    #[serde(flatten)]
    t: &'a super::window::Timeline,
    spans: Vec<String>,
}

#[derive(Serialize)]
struct Chart {
    width: f64,
    height: f64,
    left: f64,
    axis_y: f64,
    ticks: Vec<Tick>,
    rows: Vec<Row>,
    now_x: f64,
}

#[derive(Serialize)]
struct Tick {
    x: f64,
    label: String,
    /// `start`, `middle` or `end`: the outer labels stay inside the chart.
    anchor: &'static str,
}

#[derive(Serialize)]
struct Row {
    y: f64,
    label: String,
    spans: Vec<Rect>,
    gaps: Vec<Rect>,
    marks: Vec<Mark>,
}

#[derive(Serialize)]
struct Rect {
    x: f64,
    w: f64,
    title: String,
}

#[derive(Serialize)]
struct Mark {
    x: f64,
    full: bool,
    title: String,
}

#[derive(Serialize)]
struct BackupView {
    label: String,
    kind: String,
    started: String,
    took: String,
    size: String,
    timeline: String,
    status: String,
    bad: bool,
    keep: bool,
}

#[derive(Serialize)]
struct GapView {
    timeline: u32,
    first: String,
    last: String,
    missing: u64,
    between: String,
}

#[derive(Serialize)]
struct DrillView {
    scenario: String,
    started: String,
    ok: bool,
    rto: String,
    rto_target: String,
    rto_met: bool,
    rpo: String,
    rpo_met: bool,
    lost: String,
    last_passed: String,
    height: f64,
    bars: Vec<Bar>,
}

#[derive(Serialize)]
struct Bar {
    y: f64,
    w: f64,
    label: String,
    /// The label cut to fit beside the bar.
    short: String,
    seconds: String,
    ok: bool,
    recovery: bool,
}

#[derive(Serialize)]
struct HistoryView {
    started: String,
    kind: String,
    subject: String,
    result: String,
    ok: bool,
    took: String,
}

fn when(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn secs(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// The page for `report`.
pub fn render(report: &Report) -> anyhow::Result<String> {
    let page = Page {
        report,
        generated: when(&report.generated_at),
        csp: CONTENT_SECURITY_POLICY,
        repositories: report
            .repositories
            .iter()
            .map(|r| repo_view(r, report.generated_at))
            .collect(),
    };
    let mut env = minijinja::Environment::new();
    env.add_template("page.html", TEMPLATE)?;
    let html = env
        .get_template("page.html")?
        .render(minijinja::Value::from_serialize(&page))?;
    Ok(html)
}

fn repo_view(r: &RepoReport, now: DateTime<Utc>) -> RepoView<'_> {
    let backups = r
        .backups
        .iter()
        .map(|b| BackupView {
            label: b.label.clone(),
            kind: match &b.backup_type {
                Some(t) => format!("{} {t}", b.kind),
                None => b.kind.clone(),
            },
            started: when(&b.start_time),
            took: secs(b.seconds),
            size: human_bytes(b.stored_bytes),
            timeline: b.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            status: b.status.clone(),
            bad: !matches!(b.status.as_str(), "verified" | "not verified"),
            keep: b.keep,
        })
        .collect();
    let gaps = r
        .timelines
        .iter()
        .flat_map(|t| {
            t.gaps.iter().map(|g| GapView {
                timeline: t.timeline,
                first: g.first_missing.clone(),
                last: g.last_missing.clone(),
                missing: g.missing,
                between: match (g.after, g.before) {
                    (Some(a), Some(b)) => format!("{} … {}", when(&a), when(&b)),
                    _ => "-".into(),
                },
            })
        })
        .collect();
    let drills = r
        .drills
        .iter()
        .map(|d| {
            let longest = d.steps.iter().map(|s| s.seconds).fold(0.0_f64, f64::max).max(0.001);
            let bars: Vec<Bar> = d
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| Bar {
                    y: i as f64 * 22.0,
                    w: (s.seconds / longest * 520.0).max(1.0),
                    label: s.step.clone(),
                    short: match s.step.chars().count() {
                        n if n > 42 => format!("{}…", s.step.chars().take(41).collect::<String>()),
                        _ => s.step.clone(),
                    },
                    seconds: secs(s.seconds),
                    ok: s.ok,
                    recovery: s.recovery,
                })
                .collect();
            DrillView {
                scenario: d.scenario.clone(),
                started: when(&d.started),
                ok: d.ok,
                rto: d.rto_seconds.map(secs).unwrap_or_else(|| "-".into()),
                rto_target: secs(d.rto_target_seconds as f64),
                rto_met: d.rto_met,
                rpo: match (d.rpo_seconds, d.rpo_target_seconds) {
                    (Some(s), Some(t)) => format!("{} (target {})", secs(s), secs(t as f64)),
                    _ => "-".into(),
                },
                rpo_met: d.rpo_met.unwrap_or(false),
                lost: d.lost_commits.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                last_passed: d.last_passed.as_ref().map(when).unwrap_or_else(|| "never".into()),
                height: bars.len() as f64 * 22.0 + 4.0,
                bars,
            }
        })
        .collect();
    let history = r
        .history
        .iter()
        .take(30)
        .map(|e| HistoryView {
            started: when(&e.started),
            kind: e.kind.clone(),
            subject: e.subject.clone(),
            result: match e.ok {
                Some(true) => "passed".into(),
                Some(false) => "FAILED".into(),
                None => "unreadable".into(),
            },
            ok: e.ok == Some(true),
            took: e.seconds.map(secs).unwrap_or_else(|| "-".into()),
        })
        .collect();
    let archive = r.archive.as_ref();
    RepoView {
        r,
        earliest: r.earliest.as_ref().map(when).unwrap_or_default(),
        latest: r.latest.as_ref().map(when).unwrap_or_default(),
        chart: chart(r, now),
        timelines: r
            .timelines
            .iter()
            .map(|t| TimelineView {
                t,
                spans: t
                    .restorable
                    .iter()
                    .map(|s| format!("{} … {} (from {})", when(&s.from), when(&s.to), s.from_backup))
                    .collect(),
            })
            .collect(),
        backups,
        gaps,
        drills,
        history,
        last_archived: archive
            .and_then(|a| a.last_archived_at.as_ref())
            .map(when)
            .unwrap_or_else(|| "-".into()),
        archive_age: archive
            .and_then(|a| a.age_seconds)
            .map(secs)
            .unwrap_or_else(|| "-".into()),
    }
}

/// The recoverability window: one row per timeline on a shared time axis.
fn chart(r: &RepoReport, now: DateTime<Utc>) -> Option<Chart> {
    if r.timelines.is_empty() && r.backups.is_empty() {
        return None;
    }
    let mut times: Vec<DateTime<Utc>> = vec![now];
    times.extend(r.backups.iter().filter(|b| b.timeline.is_some()).map(|b| b.start_time));
    for t in &r.timelines {
        times.extend(t.first_archived);
        times.extend(t.restorable.iter().map(|s| s.from));
    }
    let t0 = *times.iter().min()?;
    let t1 = now;
    // A little room on both sides; at least two minutes of axis.
    let span = (t1 - t0).max(Duration::minutes(2));
    // (Checked: a hostile manifest may carry a time at the end of chrono's range.)
    let t0 = t0.checked_sub_signed(span / 40)?;
    let t1 = t1.checked_add_signed(span / 40)?;
    let total = (t1 - t0).num_milliseconds().max(1) as f64;
    let x = |t: &DateTime<Utc>| LEFT + ((*t - t0).num_milliseconds() as f64 / total) * (WIDTH - LEFT - 10.0);
    let rows: Vec<Row> = r
        .timelines
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let y = TOP + i as f64 * ROW;
            Row {
                y,
                label: format!("timeline {}", t.timeline),
                spans: t
                    .restorable
                    .iter()
                    .map(|s| Rect {
                        x: x(&s.from),
                        w: (x(&s.to) - x(&s.from)).max(2.0),
                        title: format!(
                            "restorable {} … {} (from {}, WAL {} … {})",
                            when(&s.from),
                            when(&s.to),
                            s.from_backup,
                            s.from_segment,
                            s.until_segment
                        ),
                    })
                    .collect(),
                gaps: t
                    .gaps
                    .iter()
                    .filter_map(|g| {
                        let (a, b) = (g.after.or(g.before)?, g.before.or(g.after)?);
                        Some(Rect {
                            x: x(&a),
                            w: (x(&b) - x(&a)).max(3.0),
                            title: format!(
                                "GAP: {} segment(s) missing, {} … {}",
                                g.missing, g.first_missing, g.last_missing
                            ),
                        })
                    })
                    .collect(),
                marks: r
                    .backups
                    .iter()
                    .filter(|b| b.timeline == Some(t.timeline))
                    .map(|b| Mark {
                        x: x(&b.stop_time),
                        full: b.backup_type.as_deref() != Some("incr"),
                        title: format!(
                            "{} ({}), consistent at {} — {}",
                            b.label,
                            b.backup_type.as_deref().unwrap_or("full"),
                            when(&b.stop_time),
                            b.status
                        ),
                    })
                    .collect(),
            }
        })
        .collect();
    let axis_y = TOP + rows.len() as f64 * ROW + 4.0;
    let ticks = (0..=6)
        .map(|i| {
            let at = t0
                .checked_add_signed(Duration::milliseconds((total * i as f64 / 6.0) as i64))
                .unwrap_or(t1);
            let fmt = if span > Duration::days(2) {
                "%m-%d %H:%M"
            } else {
                "%H:%M:%S"
            };
            Tick {
                x: x(&at),
                label: at.format(fmt).to_string(),
                anchor: match i {
                    0 => "start",
                    6 => "end",
                    _ => "middle",
                },
            }
        })
        .collect();
    Some(Chart {
        width: WIDTH,
        height: axis_y + 24.0,
        left: LEFT,
        axis_y,
        ticks,
        now_x: x(&now),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page renders for a repository that could not be read (the error said, no
    /// chart) and escapes what it shows: a hostile label is text, not markup.
    #[test]
    fn an_unreadable_repository_and_hostile_text_render_safely() {
        let now = Utc::now();
        let mut bad = super::super::failed("primary", "file:///r".into(), "<script>x</script> damaged".into());
        bad.damaged.push(super::super::Damaged {
            label: "20261206T000000Z-F".into(),
            why: "<img src=http://evil/>".into(),
        });
        let report = Report {
            generated_at: now,
            cluster: "c<b>".into(),
            server: None,
            server_error: Some("connection refused".into()),
            repositories: vec![bad],
        };
        let html = render(&report).unwrap();
        // A manifest's times at the ends of the calendar: no panic, just no chart.
        let mut odd = report.clone();
        odd.repositories[0].backups.push(super::super::BackupRow {
            label: "20261206T000000Z-F".into(),
            kind: "physical".into(),
            backup_type: Some("full".into()),
            parent: None,
            start_time: DateTime::<Utc>::MIN_UTC,
            stop_time: DateTime::<Utc>::MAX_UTC,
            seconds: f64::MAX,
            stored_bytes: u64::MAX,
            plain_bytes: 0,
            timeline: Some(1),
            keep: false,
            status: "not verified".into(),
            verified_at: None,
        });
        render(&odd).unwrap();
        assert!(html.contains("cannot be read in full"), "{html}");
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");
        assert!(!html.contains("<img src=http"), "{html}");
        assert!(html.contains("c&lt;b&gt;"), "{html}");
        assert!(html.contains(CONTENT_SECURITY_POLICY), "{html}");
        assert!(!html.contains("<svg"), "a chart of nothing: {html}");
    }
}
